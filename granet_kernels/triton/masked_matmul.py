"""Masked matmul ``y = x @ (weight * mask)^T + bias`` and its two backward products, in Triton.

Why a kernel instead of ``x @ (weight * mask).T``: the dense product pays for every weight tile and
needs a materialised masked copy of the weight. Here the mask is applied in registers and whole
``BLOCK_M x BLOCK_K`` weight tiles whose mask tile is all False are skipped (neither loaded nor fed
to ``tl.dot``), so the work falls with the number of occupied tiles, which unstructured pruning at
high sparsity leaves mostly empty.

The three products are one kernel, ``C[P, Q] = A[P, R] @ B[Q, R]^T``, addressed through strides:

* forward  ``y  = x @ (W*mask)^T``:  A = x,    B = W,   mask on B,  P/Q/R = N/M/K
* dx       ``dx = dy @ (W*mask)``:   A = dy,   B = W^T, mask on B,  P/Q/R = N/K/M
* dw       ``dW = (dy^T @ x)*mask``: A = dy^T, B = x^T, mask on C,  P/Q/R = M/K/N

The mask tiles are the same ``BLOCK_M x BLOCK_K`` tiles in all three (forward: output-column x
reduction tile; dx: reduction x output-column tile; dw: output tile), so one occupancy map,
computed once per mask update by :func:`tile_occupancy`, serves the whole training step. Only the
free tile (N rows for forward/dx, the N reduction for dw), warps and stages are tuned, which is why
``BLOCK_M``/``BLOCK_K`` are module constants rather than autotuned.

With the mask on B the kernel does not test the occupancy inside its loop: it loops over a per-row
list of occupied tiles instead (:func:`_live_tiles`), because Triton does not software-pipeline
loads under an ``if`` in the loop body (checked on the sm_80/sm_90 TTGIR: no async copies), while it
does pipeline an indirect loop.

Under ``TRITON_INTERPRET=1`` (CPU testing) the tiles are small and autotuning is off, because the
interpreter is slow and cannot autotune over several configs.
"""

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Mask-tile shape, the granularity at which empty weight tiles are skipped. Occupancy maps passed
# in by callers must have been computed with these.
BLOCK_M, BLOCK_K = (32, 32) if _INTERPRET else (64, 64)
_GROUP = 8


@triton.jit
def _masked_mm_kernel(
    a_ptr, b_ptr, mask_ptr, tiles_ptr, count_ptr, bias_ptr, c_ptr,
    P, Q, R,
    stride_ap, stride_ar, stride_bq, stride_br,
    stride_m0, stride_m1, stride_t0, stride_t1,
    stride_bias, stride_cp, stride_cq,
    MASK_OUT: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_R: tl.constexpr, GROUP: tl.constexpr,
):
    """C = A @ B^T with the mask on B ([Q, R]; tiles = live R tiles per Q tile, count = how many)
    or, with MASK_OUT, on C ([P, Q]; tiles = the occupancy map, so empty C tiles skip the loop)."""
    # Grouped ordering: GROUP consecutive programs share B column tiles, so B stays in L2.
    pid = tl.program_id(0)
    num_p = tl.cdiv(P, BLOCK_P)
    per_group = GROUP * tl.cdiv(Q, BLOCK_Q)
    first_p = (pid // per_group) * GROUP
    group_size = min(num_p - first_p, GROUP)
    pid_p = first_p + (pid % per_group) % group_size
    pid_q = (pid % per_group) // group_size

    # int64 offsets: index * stride can pass 2**31 for large activations.
    offs_p = (pid_p * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    offs_q = (pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)).to(tl.int64)
    p_in = offs_p < P
    q_in = offs_q < Q
    a_rows = a_ptr + offs_p[:, None] * stride_ap
    b_rows = b_ptr + offs_q[:, None] * stride_bq

    if MASK_OUT:
        live = tl.load(tiles_ptr + pid_p * stride_t0 + pid_q * stride_t1) != 0
        num_r = tl.cdiv(R, BLOCK_R) * live.to(tl.int32)
    else:
        num_r = tl.load(count_ptr + pid_q)

    acc = tl.zeros((BLOCK_P, BLOCK_Q), dtype=tl.float32)
    for i in range(0, num_r):
        if MASK_OUT:
            rt = i
        else:
            rt = tl.load(tiles_ptr + pid_q * stride_t0 + i * stride_t1)
        offs_r = (rt * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
        r_in = offs_r < R
        a = tl.load(a_rows + offs_r[None, :] * stride_ar, mask=p_in[:, None] & r_in[None, :], other=0.0)
        b_in = q_in[:, None] & r_in[None, :]
        b = tl.load(b_rows + offs_r[None, :] * stride_br, mask=b_in, other=0.0)
        if not MASK_OUT:
            keep = tl.load(mask_ptr + offs_q[:, None] * stride_m0 + offs_r[None, :] * stride_m1,
                           mask=b_in, other=0)
            b = tl.where(keep != 0, b, tl.zeros_like(b))
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)

    c_in = p_in[:, None] & q_in[None, :]
    if MASK_OUT:
        keep = tl.load(mask_ptr + offs_p[:, None] * stride_m0 + offs_q[None, :] * stride_m1,
                       mask=c_in, other=0)
        acc = tl.where(keep != 0, acc, 0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_q * stride_bias, mask=q_in, other=0.0).to(tl.float32)[None, :]
    c = c_ptr + offs_p[:, None] * stride_cp + offs_q[None, :] * stride_cq
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=c_in)


def _configs(free, sizes):
    if _INTERPRET:  # the interpreter can neither benchmark nor afford big tiles
        return [triton.Config({free: 32}, num_warps=4, num_stages=1)]
    return [triton.Config({free: s}, num_warps=w, num_stages=st) for s, w, st in sizes]


# One kernel, two tuning spaces: forward/dx tune the row tile BLOCK_P; dw, whose P/Q tiles are the
# mask tiles, tunes the reduction tile BLOCK_R.
_row_kernel = triton.autotune(
    _configs("BLOCK_P", [(32, 4, 4), (64, 4, 4), (128, 4, 3), (128, 8, 3)]),
    key=["P", "Q", "R", "PRECISION"],
)(_masked_mm_kernel)
_out_kernel = triton.autotune(
    _configs("BLOCK_R", [(32, 4, 4), (64, 4, 4), (64, 8, 3), (128, 8, 3)]),
    key=["P", "Q", "R", "PRECISION"],
)(_masked_mm_kernel)


def tile_occupancy(mask: torch.Tensor, block_m: int = BLOCK_M, block_k: int = BLOCK_K) -> torch.Tensor:
    """int32 ``[ceil(M/block_m), ceil(K/block_k)]``, 1 where the mask tile has any True.

    Pure torch on the mask's device, so it can be computed once per mask update and cached; the
    kernels only read it. Ragged edge tiles count only their in-bounds part.
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D, got shape {tuple(mask.shape)}")
    m, k = mask.shape
    mt, kt = triton.cdiv(m, block_m), triton.cdiv(k, block_k)
    padded = torch.zeros(mt * block_m, kt * block_k, dtype=torch.bool, device=mask.device)
    padded[:m, :k] = mask
    return padded.view(mt, block_m, kt, block_k).any(dim=3).any(dim=1).to(torch.int32)


def _live_tiles(occupancy):
    """Per row of the occupancy map, the column indices of its occupied tiles first, and how many.

    A stable sort rather than ``nonzero`` so that nothing waits on the device.
    """
    live = (occupancy != 0).to(torch.int8)
    tiles = torch.argsort(live, dim=1, descending=True, stable=True).to(torch.int32)
    return tiles, live.sum(dim=1, dtype=torch.int32)


def _prepare(mask, occupancy):
    """Validate or derive the occupancy map; view the bool mask as bytes (same storage, and Triton
    handles uint8 pointers more predictably than i1)."""
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    expected = (triton.cdiv(mask.shape[0], BLOCK_M), triton.cdiv(mask.shape[1], BLOCK_K))
    if occupancy is None:
        occupancy = tile_occupancy(mask, BLOCK_M, BLOCK_K)
    elif tuple(occupancy.shape) != expected or occupancy.device != mask.device:
        raise ValueError(f"occupancy must be tile_occupancy(mask, BLOCK_M={BLOCK_M}, BLOCK_K={BLOCK_K}): "
                         f"shape {expected} on {mask.device}, got {tuple(occupancy.shape)} on {occupancy.device}")
    return mask.view(torch.uint8), occupancy


def _precision(dtype):
    """fp32 may use TF32 only when torch's own matmul would (allow_tf32)."""
    if dtype == torch.float32 and not _INTERPRET and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


# No fp64: Triton cannot lower an fp64 tl.dot whose operand was masked in registers (MMAv2 asserts
# "fp64 don't support largeK MMA" for sm_80 and sm_90), and a backend that works only under the
# interpreter would be a trap.
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check(name, t, shape, dtype):
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if name != "mask" and dtype not in _DTYPES:
        raise TypeError(f"masked_matmul kernels take {_DTYPES}, got {dtype}")


def _t(strides):
    return strides[1], strides[0]


def _launch(kernel, out, P, Q, R, a, a_strides, b, b_strides, mask, m_strides, tiles, count,
            mask_out, bias=None, **blocks):
    if out.numel() == 0:
        return out
    grid = lambda meta: (triton.cdiv(P, meta["BLOCK_P"]) * triton.cdiv(Q, meta["BLOCK_Q"]),)
    kernel[grid](
        a, b, mask, tiles, count, out if bias is None else bias, out,
        P, Q, R, *a_strides, *b_strides, *m_strides, *tiles.stride(),
        0 if bias is None else bias.stride(0), *out.stride(),
        MASK_OUT=mask_out, HAS_BIAS=bias is not None, PRECISION=_precision(a.dtype),
        GROUP=_GROUP, **blocks,
    )
    return out


def masked_matmul(x, weight, mask, bias=None, occupancy=None):
    """``x @ (weight * mask)^T + bias``: x [N, K], weight/mask [M, K], bias [M] or None -> [N, M].

    ``occupancy`` is ``tile_occupancy(mask, BLOCK_M, BLOCK_K)``; pass it to avoid recomputing it
    every call. Accumulates in fp32, returns x's dtype.
    """
    n, k = x.shape
    m = weight.shape[0]
    _check("weight", weight, (m, k), x.dtype)
    _check("mask", mask, (m, k), torch.bool)
    if bias is not None and tuple(bias.shape) != (m,):
        raise ValueError(f"bias must have shape ({m},), got {tuple(bias.shape)}")
    mask_u8, occupancy = _prepare(mask, occupancy)
    out = torch.empty(n, m, dtype=x.dtype, device=x.device)
    return _launch(_row_kernel, out, n, m, k, x, x.stride(), weight, weight.stride(),
                   mask_u8, mask_u8.stride(), *_live_tiles(occupancy), False, bias,
                   BLOCK_Q=BLOCK_M, BLOCK_R=BLOCK_K)


def masked_matmul_dx(dy, weight, mask, occupancy=None):
    """``dy @ (weight * mask)``: dy [N, M] -> [N, K] in dy's dtype, skipping empty mask tiles along M.

    The forward kernel reading weight and mask transposed, so the forward's occupancy map serves.
    """
    n, m = dy.shape
    k = weight.shape[1]
    _check("weight", weight, (m, k), dy.dtype)
    _check("mask", mask, (m, k), torch.bool)
    mask_u8, occupancy = _prepare(mask, occupancy)
    out = torch.empty(n, k, dtype=dy.dtype, device=dy.device)
    return _launch(_row_kernel, out, n, k, m, dy, dy.stride(), weight, _t(weight.stride()),
                   mask_u8, _t(mask_u8.stride()), *_live_tiles(occupancy.t()), False,
                   BLOCK_Q=BLOCK_K, BLOCK_R=BLOCK_M)


def masked_matmul_dw(dy, x, mask, occupancy=None):
    """``(dy^T @ x) * mask``: dy [N, M], x [N, K] -> [M, K] in dy's dtype.

    Output tiles whose mask tile is empty are written as zeros without reducing over N, so the
    weight gradient's cost also falls with tile sparsity.
    """
    n, m = dy.shape
    k = x.shape[1]
    _check("x", x, (n, k), dy.dtype)
    _check("mask", mask, (m, k), torch.bool)
    mask_u8, occupancy = _prepare(mask, occupancy)
    out = torch.empty(m, k, dtype=dy.dtype, device=dy.device)
    return _launch(_out_kernel, out, m, k, n, dy, _t(dy.stride()), x, _t(x.stride()),
                   mask_u8, mask_u8.stride(), occupancy, None, True,
                   BLOCK_P=BLOCK_M, BLOCK_Q=BLOCK_K)
