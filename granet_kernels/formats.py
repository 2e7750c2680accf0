"""Sparse layouts of a 2-D weight [rows, cols] (conv filter banks flattened to [C_out, C_in*kh*kw]).

- masked: the dense weight and a bool mask (dense BLAS; used above the density where sparse
  kernels stop winning),
- csr: the nonzero values in CSR order plus the CSR index and its transposed (CSC) index, built
  once per mask change so the backward pass does no index work,
- bsr: square blocks bs x bs holding any nonzero, with the in-block mask (exact unstructured
  semantics; structured block masks make it dense inside the blocks).

Everything here is pure index bookkeeping: packing a dense weight into a layout and back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from granet_kernels.ops._index import csr_rows, transpose_index

LAYOUTS = ("masked", "csr", "bsr")


def check_mask(mask: torch.Tensor, shape, name: str = "mask") -> torch.Tensor:
    """A bool tensor of the weight's shape (any 0/1 tensor is accepted and converted)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have the weight's shape {tuple(shape)}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{name} must hold only 0 and 1 (or be a bool tensor)")
        mask = mask != 0
    return mask


@dataclass
class CSRIndex:
    """CSR index of a [rows, cols] pattern and its transposed index (int32 tensors)."""

    crow: torch.Tensor
    col: torch.Tensor
    ccol: torch.Tensor
    row: torch.Tensor
    perm: torch.Tensor

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> "CSRIndex":
        rows, cols = torch.nonzero(mask, as_tuple=True)
        counts = torch.bincount(rows, minlength=mask.shape[0])
        crow = torch.zeros(mask.shape[0] + 1, dtype=torch.int32, device=mask.device)
        crow[1:] = torch.cumsum(counts, 0)
        col = cols.to(torch.int32)
        return cls(crow, col, *transpose_index(crow, col, mask.shape[1]))

    @property
    def nnz(self) -> int:
        return self.col.numel()

    def rows(self) -> torch.Tensor:
        return csr_rows(self.crow, self.nnz)

    def gather(self, dense: torch.Tensor) -> torch.Tensor:
        """The values of `dense` at the pattern's nonzeros, in CSR order."""
        return dense[self.rows(), self.col.long()]

    def scatter(self, values: torch.Tensor, shape) -> torch.Tensor:
        dense = values.new_zeros(shape)
        dense[self.rows(), self.col.long()] = values
        return dense

    def mask(self, shape) -> torch.Tensor:
        out = torch.zeros(shape, dtype=torch.bool, device=self.col.device)
        out[self.rows(), self.col.long()] = True
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"crow_indices": self.crow, "col_indices": self.col, "ccol_indices": self.ccol,
                "row_indices": self.row, "perm": self.perm}


def padded(size: int, blocksize: int) -> int:
    return -(-size // blocksize) * blocksize


@dataclass
class BSRIndex:
    """Blocks (bs x bs) holding any nonzero of a [rows, cols] pattern, padded up to whole blocks."""

    index: CSRIndex  # over the grid of blocks
    blocksize: int
    block_mask: torch.Tensor  # [nnzb, bs, bs] bool: the pattern inside each stored block

    @classmethod
    def from_mask(cls, mask: torch.Tensor, blocksize: int) -> "BSRIndex":
        bs = int(blocksize)
        if bs < 1:
            raise ValueError(f"blocksize must be a positive integer, got {blocksize!r}")
        rows, cols = mask.shape
        full = torch.zeros(padded(rows, bs), padded(cols, bs), dtype=torch.bool, device=mask.device)
        full[:rows, :cols] = mask
        blocks = full.reshape(full.shape[0] // bs, bs, full.shape[1] // bs, bs).permute(0, 2, 1, 3)
        occupied = blocks.any(dim=(2, 3))
        index = CSRIndex.from_mask(occupied)
        block_mask = blocks[index.rows(), index.col.long()]
        return cls(index, bs, block_mask)

    def _grid(self, dense: torch.Tensor) -> torch.Tensor:
        bs = self.blocksize
        return dense.reshape(dense.shape[0] // bs, bs, dense.shape[1] // bs, bs).permute(0, 2, 1, 3)

    def gather(self, dense: torch.Tensor) -> torch.Tensor:
        """[nnzb, bs, bs] blocks of `dense` (zero outside the pattern)."""
        rows, cols = dense.shape
        full = dense.new_zeros(padded(rows, self.blocksize), padded(cols, self.blocksize))
        full[:rows, :cols] = dense
        return self._grid(full)[self.index.rows(), self.index.col.long()] * self.block_mask

    def scatter(self, values: torch.Tensor, shape) -> torch.Tensor:
        rows, cols = shape
        full = values.new_zeros(padded(rows, self.blocksize), padded(cols, self.blocksize))
        self._grid(full)[self.index.rows(), self.index.col.long()] = values * self.block_mask
        return full[:rows, :cols]

    def mask(self, shape) -> torch.Tensor:
        rows, cols = shape
        full = torch.zeros(padded(rows, self.blocksize), padded(cols, self.blocksize), dtype=torch.bool,
                           device=self.block_mask.device)
        self._grid(full)[self.index.rows(), self.index.col.long()] = self.block_mask
        return full[:rows, :cols]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**self.index.tensors(), "block_mask": self.block_mask}
