"""Masked matmul ``y = x @ (weight * mask)^T + bias`` and its two backward products, in Triton.

Why a kernel instead of ``x @ (weight * mask).T``: the dense product pays for every weight tile and
needs a materialised masked copy of the weight. Here the mask is applied in registers and whole
``BLOCK_M x BLOCK_K`` weight tiles whose mask tile is all False are skipped (neither loaded nor fed
to ``tl.dot``), so the work falls with the number of occupied tiles, which is what unstructured
pruning at high sparsity leaves mostly empty.

The three products are one kernel, ``C[P, Q] = A[P, R] @ B[Q, R]^T``, addressed through strides:

* forward  ``y  = x @ (W*mask)^T``:  A = x,    B = W,      mask on B, P/Q/R = N/M/K
* dx       ``dx = dy @ (W*mask)``:   A = dy,   B = W^T,    mask on B, P/Q/R = N/K/M
* dw       ``dW = (dy^T @ x)*mask``: A = dy^T, B = x^T,    mask on C, P/Q/R = M/K/N

The mask tiles are the same ``BLOCK_M x BLOCK_K`` tiles in all three (forward: output-column x
reduction tile; dx: reduction x output-column tile; dw: output tile), so a single occupancy map,
computed once per mask update by :func:`tile_occupancy`, serves the whole training step. Only the
tile along the free dimension (N rows for forward/dx, the N reduction for dw), warps and stages are
tuned, which is why ``BLOCK_M``/``BLOCK_K`` are module constants rather than autotuned.

Under ``TRITON_INTERPRET=1`` (CPU testing) the tiles are small and autotuning is off, because the
interpreter is slow and cannot autotune over several configs.
"""

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Mask-tile shape: the granularity at which empty weight tiles are skipped. Occupancy maps passed in
# by callers must have been computed with these.
BLOCK_M, BLOCK_K = (32, 32) if _INTERPRET else (64, 64)
_GROUP = 8


@triton.jit
def _masked_mm_kernel(
    a_ptr, b_ptr, mask_ptr, occ_ptr, cnt_ptr, bias_ptr, c_ptr,
    P, Q, R,
    stride_ap, stride_ar, stride_bq, stride_br,
    stride_m0, stride_m1, stride_o0, stride_o1,
    stride_bias, stride_cp, stride_cq,
    MASK_OUT: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_R: tl.constexpr, GROUP: tl.constexpr,
):
    """C = A @ B^T with the mask either on B ([Q, R], skip per R tile) or on C ([P, Q], skip the
    whole program); the occupancy map is indexed (Q tile, R tile) or (P tile, Q tile) to match."""
    # Grouped ordering: GROUP consecutive programs share B column tiles, so B stays in L2.
    pid = tl.program_id(0)
    num_p = tl.cdiv(P, BLOCK_P)
    num_q = tl.cdiv(Q, BLOCK_Q)
    per_group = GROUP * num_q
    first_p = (pid // per_group) * GROUP
    group_size = min(num_p - first_p, GROUP)
    pid_p = first_p + (pid % per_group) % group_size
    pid_q = (pid % per_group) // group_size

    # int64 offsets: P*stride can pass 2**31 for large activations.
    offs_p = (pid_p * BLOCK_P + tl.arange(0, BLOCK_P)).to(tl.int64)
    offs_q = (pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R)
    p_in = offs_p < P
    q_in = offs_q < Q
    a_rows = a_ptr + offs_p[:, None] * stride_ap
    b_rows = b_ptr + offs_q[:, None] * stride_bq

    num_r = tl.cdiv(R, BLOCK_R)
    if MASK_OUT:
        # An empty output tile needs no reduction at all: run the loop zero times.
        live = tl.load(occ_ptr + pid_p * stride_o0 + pid_q * stride_o1)
        num_r = num_r * (live != 0).to(tl.int32)

    else:
        num_r = tl.load(cnt_ptr + pid_q)

    acc = tl.zeros((BLOCK_P, BLOCK_Q), dtype=tl.float32)
    for i in range(0, num_r):
        if MASK_OUT:
            rt = i
        else:
            rt = tl.load(occ_ptr + pid_q * stride_o0 + i * stride_o1)
        offs = rt * BLOCK_R + offs_r
        r_in = offs < R
        a = tl.load(a_rows + offs[None, :] * stride_ar, mask=p_in[:, None] & r_in[None, :], other=0.0)
        b_in = q_in[:, None] & r_in[None, :]
        b = tl.load(b_rows + offs[None, :] * stride_br, mask=b_in, other=0.0)
        if not MASK_OUT:
            keep = tl.load(mask_ptr + offs_q[:, None] * stride_m0 + offs[None, :] * stride_m1,
                           mask=b_in, other=0)
            b = tl.where(keep != 0, b, tl.zeros_like(b))
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)

    if MASK_OUT:
        keep = tl.load(mask_ptr + offs_p[:, None] * stride_m0 + offs_q[None, :] * stride_m1,
                       mask=p_in[:, None] & q_in[None, :], other=0)
        acc = tl.where(keep != 0, acc, 0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_q * stride_bias, mask=q_in, other=0.0).to(tl.float32)[None, :]
    c = c_ptr + offs_p[:, None] * stride_cp + offs_q[None, :] * stride_cq
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=p_in[:, None] & q_in[None, :])


def _configs(free, sizes):
    if _INTERPRET:  # the interpreter can neither benchmark nor afford big tiles
        return [triton.Config({free: 32}, num_warps=4, num_stages=1)]
    return [triton.Config({free: s}, num_warps=w, num_stages=st) for s, w, st in sizes]


# Same kernel, two tuning spaces: forward/dx tune the row tile BLOCK_P, dw (whose P/Q tiles are the
# mask tiles) tunes the reduction tile BLOCK_R.
_row_kernel = triton.autotune(
    _configs("BLOCK_P", [(64, 4, 4), (128, 4, 4), (128, 8, 3), (32, 4, 4)]),
    key=["P", "Q", "R", "PRECISION"],
)(_masked_mm_kernel)
_out_kernel = triton.autotune(
    _configs("BLOCK_R", [(32, 4, 4), (64, 4, 4), (64, 8, 3), (128, 8, 3)]),
    key=["P", "Q", "R", "PRECISION"],
)(_masked_mm_kernel)


def tile_occupancy(mask: torch.Tensor, block_m: int = BLOCK_M, block_k: int = BLOCK_K) -> torch.Tensor:
    """int32 ``[ceil(M/block_m), ceil(K/block_k)]``, 1 where the mask tile has any True.

    Pure torch on the mask's device, so it can be computed once per mask update and cached; the
    kernels only read it. Ragged edge tiles are padded with False.
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must be 2-D, got shape {tuple(mask.shape)}")
    m, k = mask.shape
    mt, kt = triton.cdiv(m, block_m), triton.cdiv(k, block_k)
    padded = torch.zeros(mt * block_m, kt * block_k, dtype=torch.bool, device=mask.device)
    padded[:m, :k] = mask
    return padded.view(mt, block_m, kt, block_k).any(dim=3).any(dim=1).to(torch.int32)


def _prepare(mask, occupancy):
    """Validate/derive the occupancy map and view the bool mask as bytes (Triton's i1 pointers
    are awkward; uint8 is the same storage)."""
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be bool, got {mask.dtype}")
    expected = (triton.cdiv(mask.shape[0], BLOCK_M), triton.cdiv(mask.shape[1], BLOCK_K))
    if occupancy is None:
        occupancy = tile_occupancy(mask, BLOCK_M, BLOCK_K)
    elif tuple(occupancy.shape) != expected:
        raise ValueError(f"occupancy has shape {tuple(occupancy.shape)}, expected {expected} "
                         f"(tile_occupancy(mask, BLOCK_M={BLOCK_M}, BLOCK_K={BLOCK_K}))")
    elif occupancy.device != mask.device:
        raise ValueError("occupancy must be on the mask's device")
    return mask.view(torch.uint8), occupancy


def _precision(dtype):
    """fp32 may use TF32 only when torch would (allow_tf32), so results match torch's matmul."""
    if dtype == torch.float32 and not _INTERPRET and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _check(name, t, shape, dtype):
    if t.dim() != 2 or tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {t.dtype}")


def _launch(kernel, a, a_strides, b, b_strides, mask, m_strides, occ, o_strides, out, P, Q, R,
            mask_out, bias=None, **tiles):
    if out.numel() == 0:
        return out
    grid = lambda meta: (triton.cdiv(P, meta["BLOCK_P"]) * triton.cdiv(Q, meta["BLOCK_Q"]),)
    kernel[grid](
        a, b, mask, occ, bias if bias is not None else out, out,
        P, Q, R, *a_strides, *b_strides, *m_strides, *o_strides,
        bias.stride(0) if bias is not None else 0, out.stride(0), out.stride(1),
        MASK_OUT=mask_out, HAS_BIAS=bias is not None, PRECISION=_precision(a.dtype),
        GROUP=_GROUP, **tiles,
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
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != m):
        raise ValueError(f"bias must have shape ({m},), got {tuple(bias.shape)}")
    mask_u8, occ = _prepare(mask, occupancy)
    out = torch.empty(n, m, dtype=x.dtype, device=x.device)
    return _launch(_row_kernel, x, x.stride(), weight, weight.stride(), mask_u8, mask_u8.stride(),
                   occ, occ.stride(), out, n, m, k, False, bias, BLOCK_Q=BLOCK_M, BLOCK_R=BLOCK_K)


def masked_matmul_dx(dy, weight, mask, occupancy=None):
    """``dy @ (weight * mask)``: dy [N, M] -> [N, K], skipping empty mask tiles along M.

    The forward kernel with weight, mask and occupancy read transposed (swapped strides), so the
    forward's occupancy map is reused as is.
    """
    n, m = dy.shape
    k = weight.shape[1]
    _check("weight", weight, (m, k), dy.dtype)
    _check("mask", mask, (m, k), torch.bool)
    mask_u8, occ = _prepare(mask, occupancy)
    out = torch.empty(n, k, dtype=dy.dtype, device=dy.device)
    t = lambda s: (s[1], s[0])
    return _launch(_row_kernel, dy, dy.stride(), weight, t(weight.stride()), mask_u8,
                   t(mask_u8.stride()), occ, t(occ.stride()), out, n, k, m, False,
                   BLOCK_Q=BLOCK_K, BLOCK_R=BLOCK_M)


def masked_matmul_dw(dy, x, mask, occupancy=None):
    """``(dy^T @ x) * mask``: dy [N, M], x [N, K] -> [M, K] in dy's dtype.

    Output tiles whose mask tile is empty are written as zeros without reducing over N, so the
    cost of the weight gradient also falls with tile sparsity.
    """
    n, m = dy.shape
    k = x.shape[1]
    _check("x", x, (n, k), dy.dtype)
    _check("mask", mask, (m, k), torch.bool)
    mask_u8, occ = _prepare(mask, occupancy)
    out = torch.empty(m, k, dtype=dy.dtype, device=dy.device)
    t = lambda s: (s[1], s[0])
    return _launch(_out_kernel, dy, t(dy.stride()), x, t(x.stride()), mask_u8, mask_u8.stride(),
                   occ, occ.stride(), out, m, k, n, True, BLOCK_P=BLOCK_M, BLOCK_Q=BLOCK_K)
