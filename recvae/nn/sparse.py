"""Sparse user rows on the torch device: the training matrix and its batches.

A :class:`DeviceCSR` holds a scipy CSR matrix's three arrays as tensors on the
device (CPU or CUDA) once; :meth:`DeviceCSR.rows` gathers a batch of rows there
with vectorised index arithmetic, so no batch is ever assembled on the host or
densified.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from recvae.data.csr_arrays import csr_from_arrays, csr_to_arrays

__all__ = ["SparseRows", "DeviceCSR", "csr_to_arrays", "csr_from_arrays", "csr_tensor"]


@dataclass
class SparseRows:
    """A batch of user rows on the device, as CSR arrays plus per-entry row ids.

    ``values`` are the raw interaction values (1.0 for binary data), which the
    likelihood scores; the encoder takes its own normalised copy.
    """

    crow_indices: torch.Tensor  # (batch + 1,) int64
    col_indices: torch.Tensor  # (nnz,) int64
    values: torch.Tensor  # (nnz,) float32
    row_of_entry: torch.Tensor  # (nnz,) int64
    n_rows: int
    n_cols: int

    def to_sparse_csr(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """The batch as a torch sparse CSR tensor (optionally with other values)."""
        return csr_tensor(self.crow_indices, self.col_indices, self.values if values is None else values,
                          (self.n_rows, self.n_cols))

    def to_dense(self) -> torch.Tensor:
        """Dense copy: for tests and references only, never on the training path."""
        out = torch.zeros(self.n_rows, self.n_cols, dtype=self.values.dtype, device=self.values.device)
        out[self.row_of_entry, self.col_indices] = self.values
        return out

    def row_sums(self) -> torch.Tensor:
        out = torch.zeros(self.n_rows, dtype=self.values.dtype, device=self.values.device)
        return out.index_add_(0, self.row_of_entry, self.values)

    @classmethod
    def from_scipy(cls, matrix: sp.csr_matrix, device: torch.device | str = "cpu") -> SparseRows:
        """All rows of a (small) scipy CSR matrix."""
        return DeviceCSR(matrix, device).rows(torch.arange(matrix.shape[0], device=device))


class DeviceCSR:
    """A users x items CSR matrix resident on a torch device."""

    def __init__(self, matrix: sp.csr_matrix, device: torch.device | str = "cpu") -> None:
        matrix = sp.csr_matrix(matrix, dtype=np.float32)
        matrix.sort_indices()
        self.shape = matrix.shape
        self.device = torch.device(device)
        pin = self.device.type == "cuda"

        def put(array: np.ndarray, dtype) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))
            return (t.pin_memory() if pin else t).to(self.device, non_blocking=pin)

        self.indptr = put(matrix.indptr, np.int64)
        self.indices = put(matrix.indices, np.int64)
        self.data = put(matrix.data, np.float32)

    @property
    def row_lengths(self) -> torch.Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def rows(self, index: torch.Tensor) -> SparseRows:
        """Rows ``index`` (a 1-D int64 tensor on the device) as a SparseRows batch."""
        starts = self.indptr[index]
        lengths = self.indptr[index + 1] - starts
        crow = torch.zeros(len(index) + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(lengths, 0, out=crow[1:])
        nnz = int(crow[-1])
        row_of_entry = torch.repeat_interleave(torch.arange(len(index), device=self.device), lengths, output_size=nnz)
        positions = starts[row_of_entry] + torch.arange(nnz, device=self.device) - crow[:-1][row_of_entry]
        return SparseRows(
            crow_indices=crow,
            col_indices=self.indices[positions],
            values=self.data[positions],
            row_of_entry=row_of_entry,
            n_rows=len(index),
            n_cols=self.shape[1],
        )


def csr_tensor(crow_indices: torch.Tensor, col_indices: torch.Tensor, values: torch.Tensor,
               size: tuple[int, int]) -> torch.Tensor:
    """A torch sparse CSR tensor from arrays the caller built valid (no invariant checks, no beta warning)."""
    with warnings.catch_warnings():
        # torch flags CSR as beta on every construction; the ops used here are stable.
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow_indices, col_indices, values, size=size, check_invariants=False)
