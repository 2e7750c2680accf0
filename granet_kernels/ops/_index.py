"""Helpers on compressed (CSR / BSR) indices, shared by the ops, the references and the layouts."""

from __future__ import annotations

import torch


def csr_rows(crow: torch.Tensor, nnz: int) -> torch.Tensor:
    """Row index (int64) of every nonzero of a compressed index."""
    counts = (crow[1:] - crow[:-1]).long()
    return torch.repeat_interleave(torch.arange(crow.numel() - 1, device=crow.device), counts, output_size=nnz)


def transpose_index(crow: torch.Tensor, col: torch.Tensor, n_cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CSC index of a CSR (or BSR) pattern: (ccol [n_cols+1], row [nnz], perm [nnz]), int32.

    perm[s] is the CSR position of CSC slot s, so the values stay in CSR order and are reached
    through perm: nothing is copied per step. Within a column, rows ascend. Built once per mask
    change by the layouts; fixed output shapes keep it traceable by torch.compile.
    """
    nnz = col.numel()
    perm = torch.argsort(col, stable=True)
    row = csr_rows(crow, nnz)[perm]
    sorted_col = col[perm]
    bounds = torch.arange(n_cols + 1, device=col.device, dtype=col.dtype)
    ccol = torch.searchsorted(sorted_col, bounds)
    return ccol.to(torch.int32), row.to(torch.int32), perm.to(torch.int32)


def dense_to_csr(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(crow int32, col int32, values) of the nonzeros of a 2-D tensor (a mask or a masked weight)."""
    if dense.dim() != 2:
        raise ValueError(f"dense_to_csr: dense must be 2-D, got shape {tuple(dense.shape)}")
    rows, cols = torch.nonzero(dense, as_tuple=True)
    counts = torch.bincount(rows, minlength=dense.shape[0])
    crow = torch.zeros(dense.shape[0] + 1, dtype=torch.int32, device=dense.device)
    crow[1:] = torch.cumsum(counts, 0)
    return crow, cols.to(torch.int32), dense[rows, cols]
