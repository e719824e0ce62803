"""EASE (Steck 2019) and full-rank EDLAE (Steck 2020): closed-form item-item weights, one dense solve.

Both models are the same solve with a different penalty on the diagonal of the Gram matrix
(:func:`edlae_weights`; EASE is its ``dropout = 0`` case), preceded by a memory check of the
whole fit's peak (:func:`ease_memory_parts`). The solve is torch's Cholesky factorisation and
inverse (MKL LAPACK), in place in one buffer that ends as the float32 weights; scipy's and
numpy's OpenBLAS ``dpotrf`` segfaulted from ~16k items with 2+ threads (a dead process).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from recvae.models.array_model import ArrayRecommender, check_number, training_matrix
from recvae.nn import hyperparams
from recvae.runtime import memory
from recvae.runtime.memory import available_memory_bytes

logger = logging.getLogger(__name__)

__all__ = ["EASE", "EDLAE", "edlae_weights", "available_memory_bytes", "ease_memory_bytes", "ease_memory_parts"]


# =============================================================================== EASE
class EASE(ArrayRecommender):
    """Embarrassingly Shallow Autoencoder (Steck 2019): closed-form item-item weights.

    ``G = XᵀX + λI``, ``P = G⁻¹``, ``B = I − P·diagMat(1/diag(P))`` (so ``B_ii = 0``),
    and a user row ``x`` scores ``x B``. Equivalently each column ``b_j`` is the
    ridge regression of item ``j`` on all other items. Computed in float64 (torch's
    in-place Cholesky inverse; float32 when float64 would take over half the available
    memory, logged), stored as float32.

    Memory: ``8 · n_items²`` bytes at peak in float64 (``4 · n_items²`` in float32) plus a
    working set (:func:`ease_memory_parts`), checked before allocating: an
    :class:`~recvae.runtime.memory.InsufficientMemoryError` (a :class:`MemoryError`) names
    ``--model sparse-ease`` when it does not fit. The weights keep ``4 · n_items²`` bytes.

    Args:
        l2: the ridge penalty λ (> 0); Steck uses 500 on ML-20M and Netflix.

    Attributes set by ``fit``: ``weights_`` ((items, items) float32 ``B``),
    ``item_ids_``, ``n_items_``.
    """

    block_scoring = True  # x B[:, block]

    def __init__(self, l2: float = 500.0) -> None:
        check_number("l2", l2, minimum=0.0, strict=True)
        self.l2 = float(l2)
        self.weights_: np.ndarray | None = None

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"l2": self.l2}

    def fit(self, train, validation=None) -> EASE:
        """Solve for the item-item weights. ``validation`` is ignored. Returns self.

        Raises:
            MemoryError: the dense item x item matrices do not fit in available RAM.
        """
        matrix, item_ids = training_matrix(train, validation)
        l2, dropout = self._penalty()
        self.weights_ = _closed_form_weights(matrix, l2, dropout, type(self).__name__)
        self.item_ids_, self.n_items_ = item_ids, matrix.shape[1]
        return self

    def _penalty(self) -> tuple[float, float]:
        """``(λ, p)`` of :func:`edlae_weights`: EASE is the ``p = 0`` case."""
        return self.l2, 0.0

    def score(self, user_rows) -> np.ndarray:
        """``x_u B`` for each user row (a sparse-dense product)."""
        rows = self._rows(user_rows)
        return np.asarray(rows @ self.weights_, dtype=np.float32)

    def item_block_scorer(self, user_rows):
        """Blocks ``x B[:, start:stop]``, bit for bit :meth:`score`'s columns.

        Only the rows of ``B`` that the users' items pick are read, and only the block's
        columns of them: a block costs (users + distinct items of the rows) x block floats.
        """
        rows = self._rows(user_rows)
        used = np.unique(rows.indices)
        # The rows with their columns renumbered onto ``used`` (order kept, so each sum runs as in score).
        compact = sp.csr_matrix((rows.data, np.searchsorted(used, rows.indices), rows.indptr),
                                shape=(rows.shape[0], len(used)))

        def scorer(start: int, stop: int) -> np.ndarray:
            if start == 0 and stop == self.n_items_:
                return np.asarray(rows @ self.weights_, dtype=np.float32)
            return np.asarray(compact @ self.weights_[used, start:stop], dtype=np.float32)

        return scorer

    def block_score_bytes(self, user_rows) -> float:
        """The gathered rows of ``B``: 4 bytes x (distinct items <= nnz) per block column, per user."""
        return 4.0 * min(user_rows.nnz, user_rows.shape[1]) / max(1, user_rows.shape[0])

    def item_similarities(self, items: np.ndarray) -> np.ndarray:
        """Rows of ``B``: how much having item ``i`` raises each other item's score (``B_ii = 0``)."""
        self._check_fitted()
        return self.weights_[np.asarray(items)]

    def _state(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights_}

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"weights": (self.n_items_, self.n_items_)}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.weights_ = arrays["weights"]


# =============================================================================== EDLAE
def edlae_weights(matrix: sp.csr_matrix, l2: float, dropout: float) -> np.ndarray:
    """Full-rank EDLAE item-item weights (Steck 2020), in closed form; EASE when ``dropout = 0``.

    With ``G = XᵀX`` and ``Λ = λI + p/(1−p)·diagMat(diag(G))``::

        P = (G + Λ)⁻¹,   B = I − P·diagMat(1/diag(P))    (so B_ii = 0)

    i.e. column ``j`` divided by ``−P_jj`` and a zero diagonal. Each column ``b_j``
    minimises ``‖X_j − X b_j‖² + b_jᵀ Λ b_j`` subject to ``b_jj = 0``: training a
    linear autoencoder under dropout ``p`` of its input emphasised on the dropped
    items penalises each weight ``B_ij`` by ``p/(1−p)·G_ii``, so popular items are
    regularised more. ``p = 0`` leaves ``Λ = λI``: EASE (Steck 2019), bit for bit.

    Computed in float64 (torch's in-place Cholesky inverse; float32 when float64 would
    take over half the available memory), returned as float32. The memory check of
    :class:`EASE` runs first (:func:`ease_memory_parts`: ``8 · items²`` bytes and a working set).

    Reference: H. Steck, "Autoencoders that don't overfit towards the Identity",
    NeurIPS 2020 (the full-rank model).

    Args:
        matrix: users x items training interactions (scipy sparse; binary or weighted).
        l2: λ >= 0 (with ``dropout = 0`` it must be > 0).
        dropout: p in [0, 1).

    Returns:
        ``B``, an (items, items) float32 array with a zero diagonal; scores are ``x B``.

    Raises:
        MemoryError: the dense item x item matrices do not fit in available RAM.
        numpy.linalg.LinAlgError: ``G + Λ`` is singular (e.g. ``l2 = 0`` and an item
            with no interactions); increase l2.
    """
    if not sp.issparse(matrix):
        raise TypeError(f"matrix must be a scipy.sparse CSR matrix (users x items); got {type(matrix).__name__}")
    _check_edlae_params(l2, dropout)
    matrix, _ = training_matrix(matrix)
    return _closed_form_weights(matrix, float(l2), float(dropout), "EDLAE")


class EDLAE(EASE):
    """Full-rank EDLAE (Steck 2020): EASE with dropout-emphasised, popularity-scaled regularisation.

    ``G = XᵀX``, ``Λ = λI + p/(1−p)·diagMat(diag(G))``, ``P = (G + Λ)⁻¹``,
    ``B = I − P·diagMat(1/diag(P))`` (``B_ii = 0``); a user row ``x`` scores ``x B``
    (see :func:`edlae_weights`). ``dropout = 0`` is :class:`EASE`. Scoring,
    :meth:`item_similarities` (rows of ``B``), save/load and the ONNX export are
    EASE's; only the penalty differs.

    Reference: H. Steck, "Autoencoders that don't overfit towards the Identity",
    NeurIPS 2020.

    Memory: as for EASE (:func:`ease_memory_parts`), checked before allocating.

    Args:
        l2: λ >= 0, the uniform ridge (> 0 when ``dropout`` is 0).
        dropout: p in [0, 1), the emphasised-dropout rate; the penalty on the
            weights out of item ``i`` grows as ``p/(1−p)`` times its count.

    The defaults (λ = 500, p = 0.25) were the best of λ ∈ {1, 10, 100, 500} x
    p ∈ {0, 0.1, 0.25, 0.33, 0.5} on ml-1m-half's validation users (NDCG@100 0.443
    against EASE's 0.441 at λ = 500; λ up to 4000 and p up to 0.67 found at most
    0.4435); small λ with dropout alone (λ = 10, p = 0.33: 0.409) regularises too
    little there. Tune both on validation users.

    Attributes set by ``fit``: ``weights_`` ((items, items) float32 ``B``),
    ``item_ids_``, ``n_items_``.
    """

    def __init__(self, l2: float = 500.0, dropout: float = 0.25) -> None:
        _check_edlae_params(l2, dropout)
        self.l2 = float(l2)
        self.dropout = float(dropout)
        self.weights_: np.ndarray | None = None

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"l2": self.l2, "dropout": self.dropout}

    def _penalty(self) -> tuple[float, float]:
        return self.l2, self.dropout


def _check_edlae_params(l2: float, dropout: float) -> None:
    check_number("l2", l2, minimum=0.0)
    hyperparams.DROPOUT("dropout", dropout)
    if l2 == 0 and dropout == 0:
        raise ValueError("l2 must be > 0 when dropout is 0 (EASE's ridge); got l2=0, dropout=0")


# =============================================================================== the shared solve
#: Bytes of one block of the Gram build's sparse product and of the weights' float32 conversion:
#: the working memory on top of the dense item x item matrix.
BLOCK_BYTES = 1 << 26

#: Workspace of torch's (MKL's) in-place Cholesky factorisation and inverse, per item and thread, on
#: top of the matrix itself: measured 2.4-3.1 KB per item and thread at 4k-8k items (float64, 1-2
#: threads), rounded up.
SOLVE_BYTES_PER_ITEM_THREAD = 4096

#: What the libraries keep after the stages (MKL's cached workspace, the threads' malloc arenas,
#: heap not given back): measured 5-20 MiB at 4k-8k items, rounded up.
LIBRARY_BYTES = 32 * 2**20

#: What fits when the dense solve does not: the CLI's model first, then the Python class, then filtering.
EASE_FIX = ("use --model sparse-ease (SparseEASE in Python: each item's top neighbours, sparse), or drop rare "
            "items first (Interactions.from_dataframe(..., min_item_interactions=N))")


def _closed_form_weights(matrix: sp.csr_matrix, l2: float, dropout: float, label: str,
                         dtype: np.dtype | type | None = None) -> np.ndarray:
    """``B`` of :func:`edlae_weights` for a validated training matrix; ``label`` names the model in messages.

    ``dtype`` forces the solve's precision (tests, benchmarks); by default :func:`_check_ease_memory`
    picks float64, or float32 when float64 would take over half the available memory.
    """
    n = matrix.shape[1]
    dtype = _check_ease_memory(matrix, label) if dtype is None else np.dtype(dtype)
    started = time.perf_counter()
    # A bar over the three dense stages (terminals only): the inverse dominates on large catalogues.
    bar = tqdm(total=3, desc=f"{label} {n:,} items", unit="stage", disable=None, leave=False)
    buffer = np.empty(n * n, dtype=dtype)  # owns the memory, so it can shrink to the float32 weights
    gram = _dense_gram(matrix, out=buffer.reshape((n, n), order="F"))
    diagonal = np.arange(n)
    if dropout > 0:
        gram[diagonal, diagonal] += l2 + dropout / (1.0 - dropout) * gram[diagonal, diagonal]
    else:  # EASE: exactly G + λI
        gram[diagonal, diagonal] += l2
    bar.update()
    built = time.perf_counter()
    _spd_inverse_in_place(gram)
    del gram
    bar.update()
    solved = time.perf_counter()
    _weights_in_place(buffer, n)
    if buffer.dtype.itemsize > 4:  # give back the float64 buffer's second half
        try:
            buffer.resize(-(-n * n // 2), refcheck=True)
        except ValueError:  # another reference to it (e.g. a debugger's): keep it whole
            logger.debug("%s: the float64 buffer is referenced elsewhere; not shrunk", label)
    weights = buffer.view(np.float32)[: n * n].reshape(n, n)
    bar.update()
    bar.close()
    done = time.perf_counter()
    logger.info("%s fitted on %d users x %d items in %.2fs (%s: Gram %.2fs, Cholesky inverse %.2fs, weights %.2fs)",
                label, matrix.shape[0], n, done - started, dtype.name, built - started, solved - built, done - solved)
    return weights


def ease_memory_parts(n_items: int, dtype: np.dtype | type | str = np.float64,
                      matrix: sp.spmatrix | None = None) -> dict[str, int]:
    """The peak extra memory of EASE's (and EDLAE's) fit, by part, in bytes.

    The dense item x item matrix (built, factorised, inverted and turned into the float32
    weights in one buffer, shrunk to the weights at the end); the factorisation's workspace
    (MKL keeps it cached, so it stays to the end: per item and thread); and the larger of the
    two other stages' working sets, which never coexist -- the Gram build (a copy of the
    training matrix by rows and one by columns, one block's sparse product: at most the block's
    columns of ``XᵀX`` and never more than all co-occurring pairs) and the float32 conversion's
    block -- plus what the libraries keep. Without ``matrix`` the Gram build assumes every pair
    co-occurs and no copies.

    Measured by ``experiments/bench_dense_solver.py`` (peak RSS over the RSS before the fit;
    power-law logs, 2 x items users, ~10 events each; 2 threads; a shared, loaded machine):

    ======  =======  ===========  ===========  =====
    items   dtype    measured     estimate     ratio
    ======  =======  ===========  ===========  =====
    4,000   float64  ~0.18 GiB    217 MiB      ~1.15
    8,000   float64  ~0.55 GiB    634 MiB      ~1.13
    4,000   float32  73 MiB       140 MiB      1.92  (fixed allowances dominate a 61 MiB matrix)
    20,000  float32  1,547 MiB    1,789 MiB    1.16
    ======  =======  ===========  ===========  =====
    """
    n, item = int(n_items), np.dtype(dtype).itemsize
    entry = item + 4  # a sparse entry: value and int32 index
    if matrix is None:
        nnz, users, pairs = 0, 0, n * n
    else:
        counts = np.asarray(matrix.getnnz(axis=1), dtype=np.float64)  # events per user
        nnz, users, pairs = matrix.nnz, matrix.shape[0], min(n * n, int(np.sum(np.square(counts))))
    columns = _gram_block_columns(n, item)
    copies = 2 * (entry * nnz + 4 * (n + users + 2))
    gram_build = copies + entry * (min(n * columns, pairs) + nnz) + 32 * n
    conversion = (_weights_block_rows(n) * n * 4 if item > 4 else 0) + 8 * n  # a float64 block's float32 copy
    stage, working = max((("Gram build", gram_build), ("float32 conversion", conversion)), key=lambda kv: kv[1])
    return {f"item x item matrix ({np.dtype(dtype).name})": item * n * n,
            "factorisation workspace": SOLVE_BYTES_PER_ITEM_THREAD * n * max(1, torch.get_num_threads()),
            f"working memory ({stage})": working + LIBRARY_BYTES}


def ease_memory_bytes(n_items: int, dtype: np.dtype | type | str = np.float64,
                      matrix: sp.spmatrix | None = None) -> int:
    """Peak extra memory of EASE's (and EDLAE's) fit: the sum of :func:`ease_memory_parts`."""
    return int(sum(ease_memory_parts(n_items, dtype, matrix).values()))


def _check_ease_memory(matrix: sp.spmatrix, label: str = "EASE") -> np.dtype:
    """The solve's precision: float64 when its whole peak fits in half the available memory, else
    float32 if that fits (logged), else the one-line :class:`InsufficientMemoryError` with the fix."""
    n = matrix.shape[1]
    what = f"{label} on {n:,} items"
    have = memory.available_memory_bytes()
    double = ease_memory_parts(n, np.float64, matrix)
    if sum(double.values()) <= memory.WARN_FRACTION * have:
        memory.require_memory(what, double, EASE_FIX, available=have)
        return np.dtype(np.float64)
    single = ease_memory_parts(n, np.float32, matrix)
    memory.require_memory(f"{what} (in float32)", single, EASE_FIX, available=have)
    logger.warning("%s solves in float32: float64 would need about %s, over half of the %s available",
                   what, memory.describe_bytes(sum(double.values())), memory.describe_bytes(have))
    return np.dtype(np.float32)


def _gram_block_columns(n: int, itemsize: int) -> int:
    """Columns of ``XᵀX`` per block of the build: one block's sparse product stays under BLOCK_BYTES."""
    return max(1, min(n, BLOCK_BYTES // ((itemsize + 4) * max(1, n))))


def _weights_block_rows(n: int) -> int:
    """Rows per block of the float32 conversion: a float64 block stays under BLOCK_BYTES."""
    return max(1, min(n, BLOCK_BYTES // (8 * max(1, n))))


def _dense_gram(matrix: sp.csr_matrix, out: np.ndarray | None = None, dtype: np.dtype | type = np.float64) -> np.ndarray:
    """``XᵀX`` as a dense Fortran-ordered array (``out``, or a new one of ``dtype``), a block of columns at a time.

    Each block is the sparse product ``X[:, block]ᵀ X`` (rows of ``XᵀX``, i.e. its columns by
    symmetry) written straight into the block's columns, so no dense temporary is made, and
    blocking bounds the sparse product (entries of the block's columns that co-occur).
    """
    n = matrix.shape[1]
    if out is None:
        out = np.empty((n, n), dtype=dtype, order="F")
    x = matrix.astype(out.dtype).tocsr()
    by_column = x.tocsc()
    columns = _gram_block_columns(n, out.dtype.itemsize)
    for start in range(0, n, columns):
        stop = min(n, start + columns)
        # by_column[:, block].T is CSR (block x users); the product is CSR (block x items) = XᵀX[:, block]ᵀ.
        (by_column[:, start:stop].T @ x).toarray(out=out[:, start:stop].T)
    return out


def _spd_inverse_in_place(a: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite Fortran-ordered float matrix, overwriting it.

    torch's Cholesky factorisation and inverse (MKL LAPACK's ``potrf``/``potri`` in the CPU
    build) on a tensor sharing ``a``'s buffer, each writing its result into it. Not scipy's or
    numpy's OpenBLAS: its multi-threaded ``dpotrf`` segfaults from ~16k items (a dead process,
    no Python error; OpenBLAS 0.3.30/0.3.31 with 2+ threads, cf. OpenMathLib/OpenBLAS#2562).

    Raises:
        numpy.linalg.LinAlgError: ``a`` is not positive definite (increase l2).
    """
    if a.ndim != 2 or a.shape[0] != a.shape[1] or not a.flags.f_contiguous:
        raise ValueError(f"expected a square Fortran-ordered matrix; got shape {a.shape}")
    tensor = torch.from_numpy(a)  # column-major strides: LAPACK's own layout, so nothing is copied
    info = torch.zeros((), dtype=torch.int32)
    torch.linalg.cholesky_ex(tensor, upper=False, out=(tensor, info))
    if int(info) != 0:
        raise np.linalg.LinAlgError(
            f"XᵀX + λI is not positive definite (the Cholesky factorisation failed at column {int(info)}); "
            "increase l2")
    try:
        torch.cholesky_inverse(tensor, upper=False, out=tensor)
    except RuntimeError as err:  # torch.linalg.LinAlgError: a zero on the factor's diagonal
        raise np.linalg.LinAlgError(f"inverting XᵀX + λI failed ({err}); increase l2".replace("\n", " ")) from None
    if tensor.data_ptr() != a.ctypes.data:  # a torch that stopped writing in place: copy the result back
        logger.warning("torch's Cholesky inverse did not write in place; copying its %s result back", tuple(a.shape))
        a[...] = tensor.numpy()
    return a


def _weights_in_place(buffer: np.ndarray, n: int) -> None:
    """Turn the inverse ``P`` in ``buffer`` into the C-ordered float32 ``B`` in its first ``4·n²`` bytes.

    ``B = I − P·diagMat(1/diag(P))``: column ``j`` divided by ``−P_jj``, a zero diagonal. ``P`` is
    symmetric, so its Fortran-ordered buffer also holds it by rows. A block of rows is divided in
    place; in float64 it is then copied to a float32 temporary before being written to B's rows,
    which never reach past the float64 rows still to read (row ``i`` of B ends at byte
    ``4·n·(i+1)``, row ``i+1`` of P starts at ``8·n·(i+1)``). In float32 ``B`` is ``P``'s buffer.
    """
    precision = buffer[: n * n].reshape(n, n)
    scale = -precision.diagonal().copy()
    weights = buffer.view(np.float32)[: n * n].reshape(n, n)
    rows = _weights_block_rows(n)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        block = precision[start:stop]
        np.divide(block, scale[None, :], out=block)
        block[np.arange(stop - start), np.arange(start, stop)] = 0.0
        if block.dtype != np.float32:
            block = block.astype(np.float32)  # read whole before B's rows overwrite any of it
            weights[start:stop] = block
        del block  # the next block's temporary must not coexist with this one
