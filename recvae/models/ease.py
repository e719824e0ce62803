"""EASE (Steck 2019) and full-rank EDLAE (Steck 2020): closed-form item-item weights, one dense solve.

Both models are the same solve with a different penalty on the diagonal of the Gram matrix
(:func:`edlae_weights`; EASE is its ``dropout = 0`` case), preceded by a memory check.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from recvae.models.array_model import ArrayRecommender, check_number, training_matrix
from recvae.nn import hyperparams
from recvae.runtime.memory import available_memory_bytes

logger = logging.getLogger(__name__)

__all__ = ["EASE", "EDLAE", "edlae_weights", "available_memory_bytes", "ease_memory_bytes"]


# =============================================================================== EASE
def ease_memory_bytes(n_items: int) -> int:
    """Peak extra memory EASE's (and EDLAE's) fit needs for ``n_items`` items.

    One dense float64 item x item matrix (the Gram matrix, inverted in place by
    Cholesky) plus the float32 weights: 12 bytes per item pair.
    """
    return 12 * int(n_items) ** 2


class EASE(ArrayRecommender):
    """Embarrassingly Shallow Autoencoder (Steck 2019): closed-form item-item weights.

    ``G = XᵀX + λI``, ``P = G⁻¹``, ``B = I − P·diagMat(1/diag(P))`` (so ``B_ii = 0``),
    and a user row ``x`` scores ``x B``. Equivalently each column ``b_j`` is the
    ridge regression of item ``j`` on all other items. Computed in float64 (an
    in-place Cholesky inverse), stored as float32.

    Memory: ``12 · n_items²`` bytes at peak (checked before allocating: a
    :class:`MemoryError` names the fix when it does not fit).

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

    Computed in float64 (an in-place Cholesky inverse), returned as float32. The
    memory check of :class:`EASE` runs first (``12 · items²`` bytes at peak).

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

    Memory: ``12 · n_items²`` bytes at peak, checked before allocating, as for EASE.

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
def _closed_form_weights(matrix: sp.csr_matrix, l2: float, dropout: float, label: str) -> np.ndarray:
    """``B`` of :func:`edlae_weights` for a validated training matrix; ``label`` names the model in messages."""
    n = matrix.shape[1]
    _check_ease_memory(n, label)
    started = time.perf_counter()
    # A bar over the three dense stages (terminals only): the inverse dominates on large catalogues.
    bar = tqdm(total=3, desc=f"{label} {n:,} items", unit="stage", disable=None, leave=False)
    gram = _dense_gram(matrix)
    diagonal = np.arange(n)
    if dropout > 0:
        gram[diagonal, diagonal] += l2 + dropout / (1.0 - dropout) * gram[diagonal, diagonal]
    else:  # EASE: exactly G + λI
        gram[diagonal, diagonal] += l2
    bar.update()
    precision = _spd_inverse_in_place(gram)
    del gram
    bar.update()
    diag = precision.diagonal().copy()
    precision /= -diag[None, :]  # column j divided by -P_jj: B = I - P diagMat(1/diag(P))
    precision[diagonal, diagonal] = 0.0
    weights = np.ascontiguousarray(precision, dtype=np.float32)
    del precision
    bar.update()
    bar.close()
    logger.info("%s fitted on %d users x %d items in %.2fs", label, matrix.shape[0], n, time.perf_counter() - started)
    return weights


def _check_ease_memory(n_items: int, label: str = "EASE") -> None:
    needed = ease_memory_bytes(n_items)
    available = available_memory_bytes()
    gib = 2**30
    if needed > available:
        raise MemoryError(
            f"{label} on {n_items:,} items needs about {needed / gib:.2f} GiB ({needed:,} bytes: dense "
            f"{n_items:,} x {n_items:,} item matrices) but only {available / gib:.2f} GiB is available; "
            "drop rare items first (e.g. Interactions.from_dataframe(..., min_item_interactions=N)) "
            "or use a factor model (ALS)"
        )
    if needed > 0.5 * available:
        logger.warning(
            "%s on %d items needs about %.2f GiB, more than half of the %.2f GiB available",
            label, n_items, needed / gib, available / gib,
        )


def _dense_gram(matrix: sp.csr_matrix, block_bytes: int = 1 << 28) -> np.ndarray:
    """``XᵀX`` as a dense float64 Fortran-ordered array, built a block of columns at a time.

    Blocking bounds the sparse intermediate (a dense-ish sparse product would
    need 12 bytes per entry on top of the dense result).
    """
    n = matrix.shape[1]
    x = matrix.astype(np.float64)
    xt = x.T.tocsr()
    xc = x.tocsc()
    gram = np.empty((n, n), dtype=np.float64, order="F")
    block = max(1, block_bytes // (8 * n))
    for start in range(0, n, block):
        stop = min(n, start + block)
        gram[:, start:stop] = (xt @ xc[:, start:stop]).toarray()
    return gram


def _spd_inverse_in_place(a: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite Fortran-ordered matrix, overwriting it."""
    from scipy.linalg import lapack

    factor, info = lapack.dpotrf(a, lower=False, clean=False, overwrite_a=True)
    if info != 0:
        raise np.linalg.LinAlgError(
            f"XᵀX + λI is not positive definite (LAPACK dpotrf info={info}); increase l2"
        )
    inverse, info = lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"inverting XᵀX + λI failed (LAPACK dpotri info={info}); increase l2")
    # dpotri fills the upper triangle: mirror it into the lower one, a block of rows at a time.
    n = inverse.shape[0]
    block = max(1, (1 << 26) // max(1, 8 * n))
    for start in range(0, n, block):
        stop = min(n, start + block)
        inverse[start:stop, :start] = inverse[:start, start:stop].T
        diag_block = inverse[start:stop, start:stop]
        inverse[start:stop, start:stop] = np.triu(diag_block) + np.triu(diag_block, 1).T
    return inverse
