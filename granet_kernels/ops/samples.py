"""Fresh random inputs for every op, with awkward shapes: batch 1, sizes that are not multiples of
vector or tile widths, empty rows, all-zero and full patterns, non-contiguous dense operands.

Used by the tests, by `python -m granet_kernels` (the self-check) and by benchmarks; in the spirit
of PyTorch's OpInfo sample inputs. Each sample is the tuple of the op's schema arguments.
"""

from __future__ import annotations

import torch

from granet_kernels.ops._index import dense_to_csr, transpose_index


def _rand(shape, *, gen, dtype, device, noncontiguous=False):
    if noncontiguous and len(shape) == 2:
        return torch.randn(shape[1], shape[0], generator=gen, dtype=torch.float64).to(device=device, dtype=dtype).t()
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


def random_mask(rows, cols, density, *, gen, device="cpu", empty_rows=0, empty_cols=0):
    """Bernoulli(density) bool mask; the first `empty_rows` rows / `empty_cols` columns are cleared."""
    mask = torch.rand(rows, cols, generator=gen) < density
    mask[:empty_rows] = False
    mask[:, :empty_cols] = False
    return mask.to(device)


def random_csr(rows, cols, density, *, gen, dtype=torch.float32, device="cpu", empty_rows=0, empty_cols=0):
    mask = random_mask(rows, cols, density, gen=gen, empty_rows=empty_rows, empty_cols=empty_cols)
    crow, col, _ = dense_to_csr(mask)
    values = _rand((col.numel(),), gen=gen, dtype=dtype, device=device)
    return crow.to(device), col.to(device), values


def random_bsr(block_rows, block_cols, bs, density, *, gen, dtype=torch.float32, device="cpu", empty_rows=0):
    crow, col, _ = random_csr(block_rows, block_cols, density, gen=gen, device=device, empty_rows=empty_rows)
    values = _rand((col.numel(), bs, bs), gen=gen, dtype=dtype, device=device)
    return crow, col, values


# (N, M, K, density, empty rows, empty cols, non-contiguous dense operand)
MATMUL_SHAPES = [
    (1, 1, 1, 1.0, 0, 0, False),
    (1, 7, 9, 0.3, 0, 0, False),
    (3, 33, 17, 0.0, 0, 0, False),  # all-zero pattern
    (37, 16, 65, 1.0, 0, 0, True),  # full pattern, transposed view as operand
    (64, 40, 70, 0.1, 5, 3, False),  # empty rows and columns
    (33, 130, 257, 0.05, 2, 0, True),
]

BSR_SHAPES = [  # (N, block rows, block cols, bs, density, empty rows, non-contiguous)
    (1, 1, 1, 1, 1.0, 0, False),
    (5, 3, 4, 2, 0.5, 1, False),
    (17, 2, 3, 4, 0.0, 0, False),
    (33, 4, 5, 16, 0.4, 1, True),
    (8, 3, 2, 32, 1.0, 0, False),
]

CONV_SHAPES = [  # (N, C_in, C_out, H, W, kernel, stride, padding, dilation, density, bias)
    (1, 1, 1, 1, 1, (1, 1), (1, 1), (0, 0), (1, 1), 1.0, False),
    (2, 3, 5, 7, 6, (3, 3), (1, 1), (1, 1), (1, 1), 0.3, True),
    (3, 4, 6, 9, 11, (3, 2), (2, 1), (0, 2), (2, 1), 0.5, False),
    (1, 16, 8, 5, 5, (1, 1), (1, 1), (0, 0), (1, 1), 0.0, True),
    (4, 8, 16, 14, 14, (3, 3), (1, 1), (1, 1), (1, 1), 0.1, False),
]


def sample_inputs(op: str, *, device="cpu", dtype=torch.float32, seed=0) -> list[tuple]:
    gen = torch.Generator().manual_seed(seed)
    r = dict(gen=gen, dtype=dtype, device=device)
    out: list[tuple] = []
    if op in ("csr_spmm", "csr_spmm_t", "csr_sddmm", "csr_linear", "csr_linear_backward", "masked_matmul"):
        for n, m, k, density, er, ec, nc in MATMUL_SHAPES:
            crow, col, values = random_csr(m, k, density, empty_rows=er, empty_cols=ec, **r)
            if op == "csr_spmm":
                out.append((crow, col, values, _rand((n, k), noncontiguous=nc, **r)))
            elif op == "csr_spmm_t":
                out.append((*transpose_index(crow, col, k), values, _rand((n, m), noncontiguous=nc, **r)))
            elif op == "csr_linear":
                bias = _rand((m,), **r) if n % 2 else None
                x = _rand((n, k), noncontiguous=nc, **r)
                out.append((x, crow, col, *transpose_index(crow, col, k), values, bias))
            elif op == "csr_linear_backward":
                dy, x = _rand((n, m), noncontiguous=nc, **r), _rand((n, k), **r)
                out.append((*transpose_index(crow, col, k), values, dy, x))
            elif op == "csr_sddmm":
                out.append((crow, col, _rand((n, m), noncontiguous=nc, **r), _rand((n, k), **r)))
            else:
                mask = random_mask(m, k, density, gen=gen, device=device, empty_rows=er, empty_cols=ec)
                bias = _rand((m,), **r) if n % 2 else None
                out.append((_rand((n, k), noncontiguous=nc, **r), _rand((m, k), **r), mask, bias))
    elif op in ("bsr_spmm", "bsr_spmm_t", "bsr_sddmm"):
        for n, mb, kb, bs, density, er, nc in BSR_SHAPES:
            crow, col, values = random_bsr(mb, kb, bs, density, empty_rows=er, **r)
            if op == "bsr_spmm":
                out.append((crow, col, values, _rand((n, kb * bs), noncontiguous=nc, **r)))
            elif op == "bsr_spmm_t":
                out.append((*transpose_index(crow, col, kb), values, _rand((n, mb * bs), noncontiguous=nc, **r)))
            else:
                out.append((crow, col, _rand((n, mb * bs), noncontiguous=nc, **r), _rand((n, kb * bs), **r), bs))
    elif op == "masked_conv2d":
        for n, cin, cout, h, w, ks, st, pad, dil, density, has_bias in CONV_SHAPES:
            mask = random_mask(cout, cin * ks[0] * ks[1], density, gen=gen, device=device).reshape(cout, cin, *ks)
            bias = _rand((cout,), **r) if has_bias else None
            weight = _rand((cout, cin, *ks), **r)
            if has_bias:  # half the samples keep the weight zero outside the mask, as the masked layout does
                weight = weight * mask
            out.append((_rand((n, cin, h, w), **r), weight, mask, list(st), list(pad), list(dil), bias))
    elif op in ("sparse_conv2d", "sparse_conv2d_dx", "sparse_conv2d_dw", "sparse_conv2d_backward"):
        from granet_kernels.ops.conv import output_size

        for n, cin, cout, h, w, ks, st, pad, dil, density, has_bias in CONV_SHAPES:
            crow, col, values = random_csr(cout, cin * ks[0] * ks[1], density, **r)
            geometry = (list(ks), list(st), list(pad), list(dil))
            oh, ow = (output_size(s, ks[i], st[i], pad[i], dil[i]) for i, s in enumerate((h, w)))
            if op == "sparse_conv2d":
                bias = _rand((cout,), **r) if has_bias else None
                out.append((_rand((n, cin, h, w), **r), crow, col, values, *geometry, bias))
            elif op == "sparse_conv2d_dx":
                out.append((_rand((n, cout, oh, ow), **r), crow, col, values, [n, cin, h, w], *geometry))
            elif op == "sparse_conv2d_backward":
                out.append((_rand((n, cout, oh, ow), **r), _rand((n, cin, h, w), **r), crow, col, values, *geometry))
            else:
                out.append((_rand((n, cout, oh, ow), **r), _rand((n, cin, h, w), **r), crow, col, *geometry))
    elif op == "topk_threshold":
        shapes = [[(1,)], [(7,), (3, 5)], [(4, 4, 3, 3), (1,), (33,)]]
        for i, group in enumerate(shapes):
            tensors = [_rand(s, **r) for s in group]
            if i == 1:  # ties: small integers
                tensors = [t.round() for t in tensors]
            total = sum(t.numel() for t in tensors)
            for k in sorted({1, (total + 1) // 2, total}):
                out.append((tensors, k))
    elif op == "regrow":
        for rows, cols, density, tie in [(1, 1, 0.0, False), (5, 7, 0.5, False), (16, 33, 0.2, True), (8, 8, 1.0, False)]:
            mask = random_mask(rows, cols, density, gen=gen, device=device)
            score = _rand((rows, cols), **r)
            if tie:
                score = score.round()
            inactive = int((~mask).sum())
            for k in sorted({0, inactive // 2, inactive}):
                out.append((mask, score, k))
    else:
        raise KeyError(f"sample_inputs: unknown op {op!r}")
    return out
