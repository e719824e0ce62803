"""The joint model's item-item path with a fixed-sparsity W: x W over CSR arrays, never items x items.

``W`` is held as CSR arrays: ``indptr`` (items + 1) and ``indices`` (nnz) as buffers, and
``values`` (nnz) as a 1-D parameter (trained) or a buffer (frozen). Row ``i`` of ``W`` holds
how item ``i`` raises each item's score, so a user row ``x`` scores ``x W``: each of the
user's entries ``(i, x_ui)`` adds ``x_ui · W[i, :]``. The product for a batch is built from
"terms" -- one per (user entry, stored weight of that entry's row) -- scattered into the
output, so its cost is the number of terms, ``Σ_entries len(W[i, :])``, never items².

Columns ``[start, stop)`` of ``x W`` (a block of the chunked loss, or of block scoring) take
only the terms whose column falls in the block: each row's columns are sorted, so its run
inside the block is found by a binary search over the keys ``row · items + column`` (sorted
over the whole matrix). ``x W`` at a list of items (sampled softmax's candidates) filters the
row terms by a slot map. A trained W learns its stored values only; its sparsity stays.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn

from recvae.nn.sparse import SparseRows

__all__ = ["SparseItemItem", "check_item_item_csr"]


def check_item_item_csr(n_items: int, indptr: np.ndarray, indices: np.ndarray, n_values: int) -> str | None:
    """What is wrong with CSR arrays of an (items x items) W of zero diagonal, or None when nothing is.

    Checked: ``indptr`` has items + 1 non-decreasing entries from 0 to nnz, ``indices`` and the
    values have nnz entries, each row's columns are strictly increasing, within [0, items),
    and none is the row's own item (a stored diagonal).
    """
    indptr, indices = np.asarray(indptr), np.asarray(indices)
    if indptr.ndim != 1 or len(indptr) != n_items + 1:
        return f"its item-item row pointers have {indptr.size} entries, expected {n_items + 1}"
    nnz = len(indices)
    if indptr[0] != 0 or indptr[-1] != nnz or (np.diff(indptr) < 0).any():
        return "its item-item row pointers are not a CSR index (from 0, non-decreasing, to the number of weights)"
    if n_values != nnz:
        return f"it holds {n_values} item-item weights for {nnz} stored positions"
    if nnz and (indices.min() < 0 or indices.max() >= n_items):
        return f"its item-item column indices leave [0, {n_items})"
    rows = np.repeat(np.arange(n_items, dtype=np.int64), np.diff(indptr))
    if (indices == rows).any():
        return "its item-item matrix stores a diagonal weight (an item predicting itself)"
    keys = rows * n_items + indices.astype(np.int64)
    if nnz > 1 and (np.diff(keys) <= 0).any():
        return "its item-item columns are not sorted within their rows"
    return None


def _ranges(starts: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions ``starts[r] + 0 .. lengths[r] - 1`` for every r, and the r of each."""
    owner = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
    first = torch.cumsum(lengths, 0) - lengths
    offset = torch.arange(len(owner), device=lengths.device) - first[owner]
    return starts[owner] + offset, owner


def _scatter(n_rows: int, n_columns: int, rows: torch.Tensor, columns: torch.Tensor,
             values: torch.Tensor) -> torch.Tensor:
    """A dense (n_rows, n_columns) matrix summing ``values`` at (rows, columns) (a flat index_add:
    on CPU about twice as fast as ``index_put(accumulate=True)``); differentiable in ``values``."""
    out = torch.zeros(n_rows * n_columns, dtype=values.dtype, device=values.device)
    return out.index_add(0, rows * n_columns + columns, values).view(n_rows, n_columns)


class SparseItemItem(nn.Module):
    """x W for sparse rows x and a CSR W of fixed sparsity and zero diagonal; no bias.

    Starts empty (no stored weight): :meth:`set_weight` gives it W (e.g. sparse EASE's),
    :meth:`resize` makes room for a saved one before ``load_state_dict``. With
    ``trainable`` the stored values are a parameter (its own L2 ``weight_decay``, read by
    :func:`recvae.training.make_optimizer`); the positions never change, so the diagonal
    stays zero and the memory stays ``12 · nnz`` bytes (and Adam's ``8 · nnz``).
    """

    def __init__(self, n_items: int, trainable: bool, weight_decay: float = 0.0) -> None:
        super().__init__()
        self.n_items = n_items
        self.trainable = trainable
        self.weight_decay = float(weight_decay)
        self.register_buffer("indptr", torch.zeros(n_items + 1, dtype=torch.int64))
        self.register_buffer("indices", torch.zeros(0, dtype=torch.int64))
        self._set_values(torch.zeros(0))
        self.register_buffer("keys", torch.zeros(0, dtype=torch.int64), persistent=False)

    def _set_values(self, values: torch.Tensor) -> None:
        if self.trainable:
            self.values = nn.Parameter(values)
            self.values.weight_decay = self.weight_decay
        else:
            self.register_buffer("values", values)

    @property
    def nnz(self) -> int:
        return int(self.indices.numel())

    @torch.no_grad()
    def resize(self, nnz: int) -> None:
        """Empty arrays for ``nnz`` stored weights (then ``load_state_dict`` fills them)."""
        device = self.indptr.device
        self.indices = torch.zeros(nnz, dtype=torch.int64, device=device)
        self._set_values(torch.zeros(nnz, device=device))
        self.keys = torch.zeros(0, dtype=torch.int64, device=device)

    @torch.no_grad()
    def set_weight(self, weight: sp.spmatrix) -> None:
        """Take ``weight`` ((items, items), any scipy sparse) as W: its diagonal and explicit zeros are left out."""
        if weight.shape != (self.n_items, self.n_items):
            raise ValueError(f"item-item weight must be {(self.n_items, self.n_items)}; got {tuple(weight.shape)}")
        weight = sp.csr_matrix(weight, dtype=np.float32, copy=True)
        weight.setdiag(0.0)
        weight.eliminate_zeros()
        weight.sum_duplicates()
        weight.sort_indices()
        device = self.indptr.device
        self.indptr = torch.from_numpy(weight.indptr.astype(np.int64)).to(device)
        self.indices = torch.from_numpy(weight.indices.astype(np.int64)).to(device)
        self._set_values(torch.from_numpy(weight.data.copy()).to(device))
        self.keys = torch.zeros(0, dtype=torch.int64, device=device)

    def to_scipy(self) -> sp.csr_matrix:
        """W as a scipy CSR matrix (float32, on the host)."""
        return sp.csr_matrix((self.values.detach().cpu().numpy(), self.indices.cpu().numpy(),
                              self.indptr.cpu().numpy()), shape=(self.n_items, self.n_items))

    def _keys(self) -> torch.Tensor:
        """``row · items + column`` of every stored weight: sorted, since rows and their columns are."""
        if self.keys.numel() != self.nnz:
            rows = torch.repeat_interleave(torch.arange(self.n_items, device=self.indptr.device),
                                           torch.diff(self.indptr))
            self.keys = rows * self.n_items + self.indices
        return self.keys

    def _terms(self, x: SparseRows, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For columns [start, stop): (the entry of x, the stored weight's position) of every term."""
        items = x.col_indices
        if start == 0 and stop == self.n_items:
            lo, hi = self.indptr[items], self.indptr[items + 1]
        else:
            keys = self._keys()
            lo = torch.searchsorted(keys, items * self.n_items + start)
            hi = torch.searchsorted(keys, items * self.n_items + stop)
        position, entry = _ranges(lo, hi - lo)
        return entry, position

    def block(self, x: SparseRows, values: torch.Tensor | None, start: int, stop: int) -> torch.Tensor:
        """Columns [start, stop) of x W, (batch, stop - start); ``values`` replace x's (e.g. after dropout)."""
        values = x.values if values is None else values
        entry, position = self._terms(x, start, stop)
        contribution = values[entry].to(self.values.dtype) * self.values[position]
        return _scatter(x.n_rows, stop - start, x.row_of_entry[entry], self.indices[position] - start, contribution)

    def forward(self, x: SparseRows, values: torch.Tensor | None = None) -> torch.Tensor:
        """x W, (batch, items)."""
        return self.block(x, values, 0, self.n_items)

    def at(self, x: SparseRows, values: torch.Tensor | None, items: torch.Tensor) -> torch.Tensor:
        """x W at the columns ``items`` (distinct), (batch, len(items)): sampled softmax's candidates."""
        values = x.values if values is None else values
        slot = torch.full((self.n_items,), -1, dtype=torch.int64, device=items.device)
        slot[items] = torch.arange(len(items), device=items.device)
        entry, position = self._terms(x, 0, self.n_items)
        column = slot[self.indices[position]]
        keep = column >= 0
        entry, position, column = entry[keep], position[keep], column[keep]
        contribution = values[entry].to(self.values.dtype) * self.values[position]
        return _scatter(x.n_rows, len(items), x.row_of_entry[entry], column, contribution)

    def term_count(self, rows: sp.csr_matrix) -> int:
        """How many terms x W takes for these (host) rows: the sum of W's row lengths over their entries."""
        lengths = np.diff(self.indptr.cpu().numpy())
        return int(lengths[np.asarray(rows.indices)].sum())

    def extra_repr(self) -> str:
        return f"n_items={self.n_items}, nnz={self.nnz}, trainable={self.trainable}"
