"""Sparse EASE: EASE's item-item regression restricted to each item's most co-occurring items.

EASE (Steck 2019) solves for a dense items x items ``B``: one dense Gram matrix and its
inverse, 12 bytes per item pair (120 GB at 100k items). :class:`SparseEASE` keeps EASE's
objective but gives each item ``j`` only ``k`` candidate inputs, its neighbourhood
``N_j``: the ``k`` items that co-occur with ``j`` most often (``G_ij = (XᵀX)_ij``, ties
by the lower item index). Column ``j`` of ``B`` is the ridge regression of item ``j`` on
those items alone::

    B[N_j, j] = (G[N_j, N_j] + λI)⁻¹ G[N_j, j],     B_ij = 0 elsewhere (so B_jj = 0),

i.e. EASE's ``min ‖X_j − X b‖² + λ‖b‖²`` with ``b`` zero outside ``N_j``. With ``k`` at
least ``items − 1`` every other item is a neighbour and ``B`` is EASE's exactly (the
constrained column of EASE is that ridge regression on all other items). Like SANSA
(Spišák et al., RecSys 2023) the result is a sparse approximation of EASE; unlike it,
the sparsity is chosen per column from co-occurrence counts rather than by an
approximate sparse factorisation of the inverse (SANSA's ``sansa`` package needs
CHOLMOD through scikit-sparse, which has no wheels here).

Cost: the sparse Gram matrix (its nonzeros are the co-occurring item pairs, at most
``Σ_u n_u²`` for users with ``n_u`` items), then one ``k x k`` solve per item in batches
of similar neighbourhood sizes (float64): time ``O(items · k³)`` and memory ``O(nnz(G) +
items · k)``, never items². Scores are ``x B``, a sparse product.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from recvae.data.csr_arrays import csr_from_arrays, csr_to_arrays
from recvae.models.array_model import ArrayRecommender, check_number, training_matrix
from recvae.runtime.memory import require_memory

logger = logging.getLogger(__name__)

__all__ = ["SparseEASE", "sparse_ease_memory_bytes", "sparse_ease_weights"]

#: float64 working set of one batch of per-item solves (the gathered Gram blocks and their keys).
_SOLVE_BYTES = 1 << 26
#: Gram entries handled at once when choosing neighbourhoods.
_SELECT_ENTRIES = 1 << 23
#: Items whose Gram block is held dense for the solves: those most often a neighbour (float32,
#: 64 MiB at 4096), where most lookups fall.
_HEAD_ITEMS = 4096


def sparse_ease_memory_bytes(matrix: sp.csr_matrix, neighbours: int) -> int:
    """Peak memory :func:`sparse_ease_weights` needs for a training matrix (an upper bound).

    The sparse Gram matrix takes 16 bytes per co-occurring item pair (float32 value,
    int32 column, int64 lookup key), counted as ``min(items², Σ_u n_u²)``; the weights
    24 bytes per kept entry (``items · min(k, items − 1)``: float64 solutions, then the
    float32 CSC and CSR copies); plus one batch of solves and the dense Gram block of the
    items most often a neighbour.
    """
    n_items = matrix.shape[1]
    lengths = np.diff(sp.csr_matrix(matrix).indptr).astype(np.float64)
    pairs = min(float(n_items) ** 2, float((lengths**2).sum()))
    kept = n_items * min(int(neighbours), n_items - 1)
    head = min(n_items, _HEAD_ITEMS)
    return int(16 * pairs + 24 * kept + 4 * _SOLVE_BYTES + 4 * head * head)


def sparse_ease_weights(matrix: sp.csr_matrix, l2: float, neighbours: int, dropout: float = 0.0) -> sp.csr_matrix:
    """Sparse EASE's item-item weights ``B`` ((items, items) float32 CSR, zero diagonal).

    Column ``j`` holds the ridge regression of item ``j`` on its ``neighbours`` most
    co-occurring items (see the module docstring); ``neighbours >= items - 1`` gives
    EASE's ``B``. A user row ``x`` scores ``x B``. ``dropout`` p adds EDLAE's penalty
    ``p / (1 - p) · G_ii`` to each input item's ridge term (Steck 2020), so that with all
    neighbours it gives :func:`recvae.models.ease.edlae_weights`.

    Raises:
        MemoryError: the sparse Gram matrix and the weights do not fit in available RAM.
    """
    matrix, _ = training_matrix(matrix)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout}")
    return _fit_weights(matrix, float(l2), int(neighbours), float(dropout))


class SparseEASE(ArrayRecommender):
    """EASE with each item's weights restricted to its ``neighbours`` most co-occurring items.

    A scalable approximation of EASE in the spirit of SANSA (Spišák et al., RecSys 2023):
    ``B`` is sparse (at most ``neighbours`` entries per column, zero diagonal), fitted from
    the sparse Gram matrix ``XᵀX`` by one small ridge solve per item, and a user row ``x``
    scores ``x B``. ``neighbours >= items - 1`` reproduces :class:`recvae.models.EASE`.
    See :mod:`recvae.models.sparse_ease` for the objective and the costs.

    Memory: :func:`sparse_ease_memory_bytes`, checked before fitting (a
    :class:`MemoryError` names the fix when it does not fit). Saved like EASE, as one
    pickle-free ``.npz`` (``B`` as CSR arrays).

    Args:
        l2: the ridge penalty λ (> 0), as EASE's.
        neighbours: k, the candidate inputs per item (>= 1); time grows as k² to k³ per item.

    The defaults (λ = 200, k = 64): on ML-1M-shaped synthetic data (3,706 items) k = 64
    gave validation NDCG@100 0.343 against EASE's 0.331 (λ = 200; k = 32: 0.328, k = 128:
    0.342): the sparsity regularises as well as saving memory. Tune both on validation users.

    Attributes set by ``fit``: ``weights_`` ((items, items) float32 CSR ``B``; row ``i``
    holds how item ``i`` raises each item's score), ``item_ids_``, ``n_items_``.
    """

    block_scoring = True  # columns of the sparse x B

    def __init__(self, l2: float = 200.0, neighbours: int = 64) -> None:
        check_number("l2", l2, minimum=0.0, strict=True)
        check_number("neighbours", neighbours, minimum=1, integer=True)
        self.l2 = float(l2)
        self.neighbours = int(neighbours)
        self.weights_: sp.csr_matrix | None = None
        self._by_column: sp.csc_matrix | None = None  # B by columns, for block scoring (built on first use)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"l2": self.l2, "neighbours": self.neighbours}

    def fit(self, train, validation=None) -> SparseEASE:
        """Solve for the sparse item-item weights. ``validation`` is ignored. Returns self.

        Raises:
            MemoryError: the sparse Gram matrix and the weights do not fit in available RAM.
        """
        matrix, item_ids = training_matrix(train, validation)
        self.weights_ = _fit_weights(matrix, self.l2, self.neighbours)
        self._by_column = None
        self.item_ids_, self.n_items_ = item_ids, matrix.shape[1]
        return self

    def score(self, user_rows) -> np.ndarray:
        """``x B`` for each user row (a sparse product, densified)."""
        rows = self._rows(user_rows)
        return (rows @ self.weights_).toarray().astype(np.float32, copy=False)

    def item_block_scorer(self, user_rows):
        """Blocks ``x B[:, start:stop]``, bit for bit :meth:`score`'s columns.

        ``B`` is kept a second time by columns (CSC, built on first use), so a block of its
        columns is one contiguous slice. Block by block, not ``x B`` once: an item that is
        everyone's neighbour has a row of ``B`` as long as the catalogue, so ``x B`` is
        close to dense (users x items) however sparse ``B`` is.
        """
        rows = self._rows(user_rows)
        if self._by_column is None or self._by_column.shape != self.weights_.shape:
            self._by_column = self.weights_.tocsc()
        by_column = self._by_column
        return lambda start, stop: (rows @ by_column[:, start:stop]).toarray().astype(np.float32, copy=False)

    def block_score_bytes(self, user_rows) -> float:
        """A block's sparse product before it is densified: a float32 value and an int32 column per cell."""
        return 8.0

    def item_similarities(self, items: np.ndarray) -> np.ndarray:
        """Rows of ``B``: how much having item ``i`` raises each other item's score (0 outside its reach)."""
        self._check_fitted()
        return self.weights_[np.asarray(items)].toarray()

    def _state(self) -> dict[str, np.ndarray]:
        return csr_to_arrays("weights", self.weights_)

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"weights": (self.n_items_, self.n_items_)}

    def _checked_arrays(self) -> dict:
        return {"weights": self.weights_}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.weights_ = csr_from_arrays("weights", arrays)
        self._by_column = None


# =============================================================================== the fit
def _fit_weights(matrix: sp.csr_matrix, l2: float, neighbours: int, dropout: float = 0.0) -> sp.csr_matrix:
    n_items = matrix.shape[1]
    k = min(neighbours, n_items - 1)
    _check_memory(matrix, neighbours)
    started = time.perf_counter()
    gram, keys = _sparse_gram(matrix)
    indptr, indices, targets = _neighbourhoods(gram, k)
    values = _solve_columns(gram, keys, indptr, indices, targets, l2, dropout)
    del gram, keys
    weights = sp.csc_matrix((values, indices, indptr), shape=(n_items, n_items)).tocsr()
    weights.sort_indices()
    logger.info("SparseEASE fitted on %d users x %d items (%d neighbours, %d weights) in %.2fs",
                matrix.shape[0], n_items, k, weights.nnz, time.perf_counter() - started)
    return weights


def _check_memory(matrix: sp.csr_matrix, neighbours: int) -> None:
    """Refuse (one-line :class:`recvae.runtime.memory.InsufficientMemoryError`) a fit whose Gram matrix and
    weights do not fit, before the Gram matrix is made."""
    n_items = matrix.shape[1]
    total = sparse_ease_memory_bytes(matrix, neighbours)
    weights = 24 * n_items * min(int(neighbours), n_items - 1)
    parts = {"sparse Gram matrix and solves": total - weights, "weights": weights}
    require_memory(f"SparseEASE on {n_items:,} items with {neighbours} neighbours", parts,
                   "lower neighbours (--param neighbours=N), or drop rare items and the longest user histories "
                   "first (e.g. Interactions.from_dataframe(..., min_item_interactions=N))")


def _sparse_gram(matrix: sp.csr_matrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """``G = XᵀX`` as float32 CSR with sorted columns, and the sorted lookup keys ``row · items + column``."""
    n = matrix.shape[1]
    gram = sp.csr_matrix(matrix.T.tocsr() @ matrix, dtype=np.float32)
    gram.sum_duplicates()
    gram.sort_indices()
    keys = np.empty(gram.nnz, dtype=np.int64)
    step = max(1, _SELECT_ENTRIES // max(1, gram.nnz // max(1, n)))
    for start in range(0, n, step):
        stop = min(n, start + step)
        lo, hi = gram.indptr[start], gram.indptr[stop]
        rows = np.repeat(np.arange(start, stop, dtype=np.int64), np.diff(gram.indptr[start:stop + 1]))
        keys[lo:hi] = rows * n + gram.indices[lo:hi]
    return gram, keys


def _neighbourhoods(gram: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each item's neighbours as CSR-style ``(indptr, indices, gram values)``, columns ascending.

    Item ``j``'s neighbours are the ``k`` other items with the largest ``G_jb > 0`` (ties by the
    lower index), and the values are those ``G_jb``; with ``k = items − 1``, every other item
    (co-occurring or not), as EASE.
    """
    n = gram.shape[0]
    if k >= n - 1:
        off_diagonal = ~np.eye(n, dtype=bool)
        indices = np.broadcast_to(np.arange(n, dtype=np.int32), (n, n))[off_diagonal]
        return np.arange(n + 1, dtype=np.int64) * (n - 1), indices, gram.toarray()[off_diagonal]
    keep = np.zeros(gram.nnz, dtype=bool)
    counts = np.zeros(n, dtype=np.int64)
    row_start = 0
    while row_start < n:
        # A run of rows holding about _SELECT_ENTRIES entries (at least one row).
        row_stop = int(np.searchsorted(gram.indptr, gram.indptr[row_start] + _SELECT_ENTRIES, side="right")) - 1
        row_stop = min(n, max(row_start + 1, row_stop))
        lo, hi = gram.indptr[row_start], gram.indptr[row_stop]
        rows = np.repeat(np.arange(row_stop - row_start, dtype=np.int64), np.diff(gram.indptr[row_start:row_stop + 1]))
        columns, values = gram.indices[lo:hi], gram.data[lo:hi]
        candidate = (columns != rows + row_start) & (values > 0)
        per_row = np.bincount(rows[candidate], minlength=row_stop - row_start)
        crowded = per_row[rows] > k
        keep[lo:hi] = candidate & ~crowded
        chosen = np.flatnonzero(candidate & crowded)
        if len(chosen):
            # Most co-occurrence counts are the smallest value (pairs seen once): a crowded row with k
            # larger values keeps none of those, so they are dropped before sorting.
            lowest = values[chosen].min()
            above = np.bincount(rows[chosen][values[chosen] > lowest], minlength=row_stop - row_start)
            chosen = chosen[(values[chosen] > lowest) | (above[rows[chosen]] < k)]
            order = _by_row_then_value(rows[chosen], values[chosen])
            ranked_rows = rows[chosen][order]
            rank = np.arange(len(order)) - np.searchsorted(ranked_rows, ranked_rows)
            keep[lo + chosen[order[rank < k]]] = True
        counts[row_start:row_stop] = np.bincount(rows[keep[lo:hi]], minlength=row_stop - row_start)
        row_start = row_stop
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, gram.indices[keep].astype(np.int32), gram.data[keep]


def _by_row_then_value(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The order of entries by row, then value descending, then position (stable: the column order)."""
    top = float(values.max())
    if top < 2**31 and np.array_equal(values, np.rint(values)):  # counts (binary data): one integer key
        key = rows * (int(top) + 1) + (int(top) - values.astype(np.int64))
        return np.argsort(key, kind="stable")
    return np.lexsort((-values, rows))


class _GramLookup:
    """``G`` at arbitrary cells: a dense block for the items most often a neighbour, sorted key search for the rest."""

    def __init__(self, gram: sp.csr_matrix, keys: np.ndarray, indices: np.ndarray) -> None:
        n = gram.shape[0]
        self.gram, self.keys, self.n = gram, keys, n
        often = np.bincount(indices, minlength=n)
        head = np.sort(np.argsort(-often, kind="stable")[: min(n, _HEAD_ITEMS)])
        self.head_position = np.full(n, -1, dtype=np.int64)
        self.head_position[head] = np.arange(len(head))
        self.head = gram[head][:, head].toarray()

    def __call__(self, rows: np.ndarray, columns: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """``G[rows, columns]`` (float64) where ``valid``, else 0."""
        a, b = self.head_position[rows], self.head_position[columns]
        dense = (a >= 0) & (b >= 0)
        out = np.where(dense & valid, self.head[np.maximum(a, 0), np.maximum(b, 0)], 0.0)
        rest = valid & ~dense
        out[rest] = _lookup(self.gram, self.keys, rows[rest] * self.n + columns[rest])
        return out


def _lookup(gram: sp.csr_matrix, keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``G`` at the cells ``wanted`` (keys ``row · items + column``), 0 where ``G`` has no entry.

    The keys are searched in sorted order: the search then walks the key array forwards
    (several times faster than random probes of a large array).
    """
    order = np.argsort(wanted, kind="stable")
    ordered = wanted[order]
    position = np.minimum(np.searchsorted(keys, ordered), len(keys) - 1)
    out = np.empty(len(wanted), dtype=np.float64)
    out[order] = np.where(keys[position] == ordered, gram.data[position], 0.0)
    return out


def _solve_columns(gram: sp.csr_matrix, keys: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
                   targets: np.ndarray, l2: float, dropout: float = 0.0) -> np.ndarray:
    """The weights of every item's neighbours (aligned with ``indices``): batched ridge solves in float64.

    Items are sorted by neighbourhood size and solved in batches of ``c`` items padded to the
    batch's largest size ``w`` (``c · w²`` within the working set). The systems'
    off-diagonal Gram entries are looked up once per pair (they are symmetric; see
    :class:`_GramLookup`); the
    right-hand sides ``G[N_j, j]`` (``targets``) come with the neighbourhoods. Padding is an
    identity block with a zero right-hand side, so it solves to zero and is dropped.
    """
    n = gram.shape[0]
    diagonal = gram.diagonal().astype(np.float64) / (1.0 - dropout)  # G_ii + p / (1 - p) G_ii (EDLAE)
    lookup = _GramLookup(gram, keys, indices)
    sizes = np.diff(indptr)
    order = np.argsort(sizes, kind="stable")
    order = order[sizes[order] > 0]
    out = np.zeros(len(indices), dtype=np.float32)
    cells = _SOLVE_BYTES // 32  # c · w² per batch: the float64 systems, their keys and lookup order
    position = 0
    while position < len(order):
        window = sizes[order[position:position + 65536]].astype(np.int64)
        count = int(max(1, np.searchsorted(np.arange(1, len(window) + 1) * window**2, cells, side="right")))
        items = order[position:position + count]
        width = int(sizes[items[-1]])
        slots = np.arange(width)
        valid = slots[None, :] < sizes[items][:, None]
        where = np.where(valid, indptr[items][:, None] + slots[None, :], 0)
        neighbour = np.where(valid, indices[where], 0).astype(np.int64)
        upper, lower = np.triu_indices(width, 1)
        system = np.zeros((count, width, width), dtype=np.float64)
        system[:, upper, lower] = system[:, lower, upper] = lookup(neighbour[:, upper], neighbour[:, lower],
                                                                    valid[:, upper] & valid[:, lower])
        system[:, slots, slots] = np.where(valid, diagonal[neighbour] + l2, 1.0)
        target = np.where(valid, targets[where], 0.0)
        solution = np.linalg.solve(system, target[:, :, None])[:, :, 0]
        out[where[valid]] = solution[valid]
        position += count
    return out
