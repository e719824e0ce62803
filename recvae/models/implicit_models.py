"""Models trained by the ``implicit`` library: ALS, BPR and item-KNN, folded in for any user row."""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from recvae.models.array_model import ArrayRecommender, check_number, single_threaded_blas, training_matrix
from recvae.models.base import UserEmbeddings
from recvae.models.warm_start import grown_rows, take_warm_start
from recvae.runtime.memory import describe_bytes, require_memory
from recvae.nn import hyperparams
from recvae.training import RecvaeWarning
from recvae.data.csr_arrays import csr_from_arrays, csr_to_arrays

logger = logging.getLogger(__name__)

__all__ = ["ALS", "BPR", "ItemKNN", "sparse_block_scorer", "factor_memory_bytes", "check_factor_memory"]


# =============================================================================== ALS
class ALS(ArrayRecommender):
    """Implicit-feedback ALS (Hu, Koren & Volinsky 2008), trained by ``implicit`` on CPU.

    Confidence: an observed value ``x_ui`` (1 for binarised data) has confidence
    ``c_ui = 1 + alpha · x_ui`` and preference 1; unobserved cells have
    confidence 1 and preference 0. ``implicit`` >= 0.5 instead reads the matrix
    values themselves as confidences (its own ``alpha`` multiplies them), so
    recvae passes it ``1 + alpha · X`` and sets its ``alpha`` to 1: on binary
    data ``ALS(alpha=a)`` equals implicit's ``alpha=1+a``.

    Fold-in (held-out and new users, and ``embed_users``): with the item factors
    ``Y`` fixed, the exact ALS user step in closed form, batched in numpy (float64)::

        u = (YᵀY + λI + Y_uᵀ diag(alpha · x_u) Y_u)⁻¹ Y_uᵀ (1 + alpha · x_u)

    where ``Y_u`` are the user's items' factors. For a training user this
    reproduces the factor implicit learned, once training has converged.

    Args:
        factors: latent dimension.
        regularization: λ, the L2 penalty on factors (not scaled by counts, as in implicit).
        alpha: confidence slope (>= 0; 0 gives unweighted least squares).
        iterations: ALS sweeps.
        seed: seeds implicit's factor initialisation.
        use_cg: conjugate-gradient user/item steps in training (implicit's fast
            default); False solves each step exactly (Cholesky). Fold-in is always exact.
        num_threads: implicit's training threads (0 = all cores).

    Memory: about :func:`factor_memory_bytes`, checked before fitting (a :class:`MemoryError`
    names the fix when the factors cannot fit).

    Attributes set by ``fit``: ``item_factors_`` ((items, factors) float32),
    ``user_factors_`` (the training users', float32; not saved),
    ``implicit_model_`` (the trained implicit object; not saved), ``item_ids_``, ``n_items_``.
    """

    seeded = True  # ``seed``: implicit's random factor initialisation
    block_scoring = True  # U Y[block]ᵀ

    def __init__(
        self,
        factors: int = 128,
        regularization: float = 0.01,
        alpha: float = 1.0,
        iterations: int = 15,
        seed: int = 0,
        *,
        use_cg: bool = True,
        num_threads: int = 0,
    ) -> None:
        check_number("factors", factors, minimum=1, integer=True)
        check_number("regularization", regularization, minimum=0.0)
        check_number("alpha", alpha, minimum=0.0)
        check_number("iterations", iterations, minimum=1, integer=True)
        check_number("seed", seed, minimum=0, integer=True)
        check_number("num_threads", num_threads, minimum=0, integer=True)
        self.factors, self.regularization, self.alpha = int(factors), float(regularization), float(alpha)
        self.iterations, self.seed = int(iterations), int(seed)
        self.use_cg, self.num_threads = hyperparams.flag("use_cg", use_cg), int(num_threads)
        self.item_factors_: np.ndarray | None = None
        self.user_factors_: np.ndarray | None = None
        self.implicit_model_ = None

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
            "seed": self.seed,
            "use_cg": self.use_cg,
            "num_threads": self.num_threads,
        }

    def fit(self, train, validation=None) -> ALS:
        """Train with implicit's ALS. ``validation`` is ignored. Returns self."""
        from implicit.cpu.als import AlternatingLeastSquares

        matrix, item_ids = training_matrix(train, validation)
        check_factor_memory("ALS", matrix.shape, self.factors)
        _warn_degenerate_als(self.factors, self.regularization, matrix.shape[1])
        confidence = matrix.copy()
        confidence.data = (1.0 + self.alpha * confidence.data).astype(np.float32)
        started = time.perf_counter()
        with single_threaded_blas():
            model = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=1.0,
                dtype=np.float32,
                use_cg=self.use_cg,
                iterations=self.iterations,
                num_threads=self.num_threads,
                random_state=self.seed,
            )
            self._warm_factors(model, matrix)
            model.fit(confidence, show_progress=False)
        self.implicit_model_ = model
        self.item_factors_ = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        self.user_factors_ = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_ids_, self.n_items_ = item_ids, matrix.shape[1]
        logger.info(
            "ALS fitted on %d users x %d items (%d factors, %d iterations) in %.2fs",
            matrix.shape[0], matrix.shape[1], self.factors, self.iterations, time.perf_counter() - started,
        )
        return self

    def _warm_factors(self, model, matrix: sp.csr_matrix) -> None:
        """A warm start (:mod:`recvae.models.warm_start`): implicit starts from the earlier item factors (new
        items: implicit's own ``0.01 * uniform`` draw) and the training users' exact ALS step on them."""
        warm = take_warm_start(self)
        if warm is None:
            return
        rng = np.random.default_rng(self.seed)
        fresh = (rng.random((matrix.shape[1], self.factors)) * 0.01).astype(np.float32)
        y = grown_rows(warm.previous.item_factors_, warm.positions, fresh)
        gram = y.astype(np.float64).T @ y.astype(np.float64)
        gram[np.diag_indices_from(gram)] += self.regularization
        users = _als_fold_in(matrix, y.astype(np.float64), gram, self.alpha)
        model.item_factors = np.ascontiguousarray(y, dtype=np.float32)
        model.user_factors = np.ascontiguousarray(users, dtype=np.float32)

    def embed_users(self, user_rows) -> UserEmbeddings:
        """``mu``: (users, factors) float32 factors solved from the rows (exact ALS user step); no sigma."""
        return UserEmbeddings(self._user_factors(user_rows))

    def _user_factors(self, user_rows) -> np.ndarray:
        rows = self._rows(user_rows)
        y = self.item_factors_.astype(np.float64)
        gram = y.T @ y
        gram[np.diag_indices_from(gram)] += self.regularization
        return _als_fold_in(rows, y, gram, self.alpha).astype(np.float32)

    def item_embeddings(self) -> np.ndarray:
        """(items, factors) float32 item factors; ``score = embed_users(x) @ item_embeddings().T``."""
        self._check_fitted()
        return self.item_factors_

    def score(self, user_rows) -> np.ndarray:
        """Folded-in user factors times the item factors."""
        return self._user_factors(user_rows) @ self.item_factors_.T

    def item_block_scorer(self, user_rows):
        """The users' factors solved once; a block is ``U Y[start:stop]ᵀ``."""
        return _factor_block_scorer(self._user_factors(user_rows), self.item_factors_)

    def _state(self) -> dict[str, np.ndarray]:
        return {"item_factors": self.item_factors_}

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"item_factors": (self.n_items_, self.factors)}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.item_factors_ = arrays["item_factors"]


def factor_memory_bytes(n_users: int, n_items: int, factors: int) -> int:
    """About the peak memory of fitting a factor model (ALS, BPR) and folding users in.

    float32 user and item factors (implicit's), the float64 item factors and ``factors x factors``
    Gram matrix of the fold-in, and implicit's float32 ``YᵀY``: ``4 (users + items) f + 8 items f + 12 f²``.
    """
    users, items, f = int(n_users), int(n_items), int(factors)
    return 4 * (users + items) * f + 8 * items * f + 12 * f * f


def check_factor_memory(label: str, shape: tuple[int, int], factors: int, extra_columns: int = 0) -> None:
    """Refuse, before anything is allocated, a factor model whose matrices cannot fit in available RAM
    (``shape``: users x items; ``extra_columns``: factor columns beyond ``factors``, BPR's item bias).

    Raises:
        recvae.runtime.memory.InsufficientMemoryError: a :class:`MemoryError`, one line naming the need,
            what is available and the fix (``recvae train`` prints it as ``recvae: error: out of memory: ...``).
    """
    users, items, f = int(shape[0]), int(shape[1]), int(factors) + int(extra_columns)
    parts = {"user factors": 4 * users * f, "item factors": 12 * items * f, "Gram matrices": 12 * f * f}
    fewer = max(8, int(factors) // 4)
    fix = (f"use fewer factors (--param factors={fewer} would need "
           f"{describe_bytes(factor_memory_bytes(users, items, fewer + extra_columns))})")
    require_memory(f"{label} with factors={factors:,} on {users:,} users x {items:,} items", parts, fix)


def _factor_block_scorer(user_factors: np.ndarray, item_factors: np.ndarray):
    """Blocks of ``U Yᵀ``: the scores of items [start, stop) are ``U Y[start:stop]ᵀ``."""
    return lambda start, stop: user_factors @ item_factors[start:stop].T


def sparse_block_scorer(product: sp.spmatrix):
    """Blocks of a sparse users x items score matrix (e.g. ``x S``): columns [start, stop), dense float32.

    The product is held once as CSC, so each block is a contiguous slice; its size is the
    product's nonzeros (users' items x their neighbours), not users x items.
    """
    by_column = sp.csc_matrix(product, dtype=np.float32)
    return lambda start, stop: by_column[:, start:stop].toarray()


def _warn_degenerate_als(factors: int, regularization: float, n_items: int) -> None:
    """Warn about ALS settings that fit but cannot generalise (an exact interpolation of the data)."""
    if factors >= n_items:
        warnings.warn(f"ALS with factors={factors} >= {n_items} items can reproduce the training matrix exactly "
                      f"and rank unseen items arbitrarily; use fewer factors (< {n_items})", RecvaeWarning,
                      stacklevel=3)
    if regularization == 0:
        warnings.warn("ALS with regularization=0 is unregularised: the factors overfit and the fold-in solve can be "
                      "singular; use regularization > 0 (e.g. 0.01)", RecvaeWarning, stacklevel=3)


def _als_fold_in(
    rows: sp.csr_matrix, y: np.ndarray, gram_reg: np.ndarray, alpha: float, budget: int = 1 << 23
) -> np.ndarray:
    """Batched exact ALS user solve: ``(YᵀY + λI + Y_uᵀ diag(αx_u) Y_u)⁻¹ Y_uᵀ (1 + αx_u)``.

    Users are sorted by row length and solved in batches whose padded
    (users, longest row, factors) gather stays under ``budget`` elements; each
    batch is one batched matmul and one batched ``np.linalg.solve``.
    """
    # Many small gemms and solves: a multi-threaded BLAS on a busy machine ran this 9x
    # slower (15.8 s vs 1.75 s for 300 ml-1m users at 256 factors), so use one thread.
    with single_threaded_blas():
        return _als_fold_in_batched(rows, y, gram_reg, alpha, budget)


def _als_fold_in_batched(
    rows: sp.csr_matrix, y: np.ndarray, gram_reg: np.ndarray, alpha: float, budget: int
) -> np.ndarray:
    n_users, f = rows.shape[0], y.shape[1]
    confidence = rows.astype(np.float64)
    confidence.data = 1.0 + alpha * confidence.data
    rhs = np.asarray(confidence @ y)  # (users, f): sum over the user's items of c_ui y_i
    if alpha == 0.0:
        return np.linalg.solve(gram_reg, rhs.T).T
    lengths = np.diff(rows.indptr)
    order = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[order]
    max_batch = max(1, budget // (f * f))
    out = np.empty((n_users, f), dtype=np.float64)
    start = 0
    while start < n_users:
        # Largest batch (ascending lengths, so the last user is the longest) within budget.
        cost = np.arange(1, n_users - start + 1) * np.maximum(sorted_lengths[start:], 1) * f
        size = int(min(max(1, np.searchsorted(cost, budget, side="right")), max_batch))
        users = order[start : start + size]
        sub = rows[users]
        sub_lengths = np.diff(sub.indptr)
        width = max(1, int(sub_lengths.max()))
        mask = np.arange(width)[None, :] < sub_lengths[:, None]
        index = np.zeros((size, width), dtype=np.int64)
        index[mask] = sub.indices  # CSR order is row-major, as is boolean-mask assignment
        weight = np.zeros((size, width), dtype=np.float64)
        weight[mask] = np.sqrt(alpha * sub.data.astype(np.float64))
        z = y[index] * weight[:, :, None]  # (size, width, f): sqrt(alpha x_ui) y_i, zero padded
        a = np.matmul(z.transpose(0, 2, 1), z)
        a += gram_reg
        out[users] = np.linalg.solve(a, rhs[users][:, :, None])[:, :, 0]
        start += size
    return out


# =============================================================================== BPR
class BPR(ArrayRecommender):
    """Bayesian Personalised Ranking (Rendle et al. 2009), trained by ``implicit`` on CPU.

    implicit's CPU BPR learns ``factors + 1`` columns: the last item column is an
    item bias and the last user column is fixed at 1.

    Fold-in (held-out and new users): BPR has no closed-form user step, so a user
    row ``x`` is projected onto the span of the item factors (bias column
    included) by ridge regression, ``u = (YᵀY + λ_f I)⁻¹ Yᵀ x`` with
    ``λ_f = fold_in_l2``, and scored ``Y u``: the best linear reconstruction of
    the row in BPR's item space. Training users are scored the same way (their
    BPR-learned factors are kept in ``user_factors_`` but not used by ``score``).

    Args:
        factors: latent dimension (without the bias column).
        learning_rate, regularization, iterations: implicit's SGD settings.
        seed: seeds implicit's initialisation and sampling.
        fold_in_l2: the ridge penalty λ_f of the fold-in projection.
        num_threads: implicit's training threads (0 = all cores; >1 makes SGD
            updates race, so results vary slightly between runs).

    Memory: about :func:`factor_memory_bytes` of ``factors + 1``, checked before fitting, as for ALS.

    Attributes set by ``fit``: ``item_factors_`` ((items, factors + 1) float32,
    the last column the item bias), ``user_factors_`` (training users; not
    saved), ``item_ids_``, ``n_items_``.
    """

    seeded = True  # ``seed``: implicit's initialisation and sampling
    block_scoring = True  # U Y[block]ᵀ

    def __init__(
        self,
        factors: int = 128,
        learning_rate: float = 0.01,
        regularization: float = 0.01,
        iterations: int = 100,
        seed: int = 0,
        *,
        fold_in_l2: float = 1.0,
        num_threads: int = 0,
    ) -> None:
        check_number("factors", factors, minimum=1, integer=True)
        check_number("learning_rate", learning_rate, minimum=0.0, strict=True)
        check_number("regularization", regularization, minimum=0.0)
        check_number("iterations", iterations, minimum=1, integer=True)
        check_number("seed", seed, minimum=0, integer=True)
        check_number("fold_in_l2", fold_in_l2, minimum=0.0, strict=True)
        check_number("num_threads", num_threads, minimum=0, integer=True)
        self.factors, self.learning_rate, self.regularization = int(factors), float(learning_rate), float(regularization)
        self.iterations, self.seed = int(iterations), int(seed)
        self.fold_in_l2, self.num_threads = float(fold_in_l2), int(num_threads)
        self.item_factors_: np.ndarray | None = None
        self.user_factors_: np.ndarray | None = None

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "learning_rate": self.learning_rate,
            "regularization": self.regularization,
            "iterations": self.iterations,
            "seed": self.seed,
            "fold_in_l2": self.fold_in_l2,
            "num_threads": self.num_threads,
        }

    def fit(self, train, validation=None) -> BPR:
        """Train with implicit's BPR. ``validation`` is ignored. Returns self."""
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        matrix, item_ids = training_matrix(train, validation)
        check_factor_memory("BPR", matrix.shape, self.factors, extra_columns=1)  # + the item bias column
        started = time.perf_counter()
        with single_threaded_blas():
            model = BayesianPersonalizedRanking(
                factors=self.factors,
                learning_rate=self.learning_rate,
                regularization=self.regularization,
                dtype=np.float32,
                iterations=self.iterations,
                num_threads=self.num_threads,
                random_state=self.seed,
            )
            model.fit(matrix, show_progress=False)
        item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        if item_factors.shape != (matrix.shape[1], self.factors + 1):
            raise RuntimeError(
                f"implicit BPR returned item factors of shape {item_factors.shape}; expected "
                f"{(matrix.shape[1], self.factors + 1)} (factors + a bias column): unsupported implicit version"
            )
        self.item_factors_ = item_factors
        self.user_factors_ = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_ids_, self.n_items_ = item_ids, matrix.shape[1]
        logger.info(
            "BPR fitted on %d users x %d items (%d factors, %d iterations) in %.2fs",
            matrix.shape[0], matrix.shape[1], self.factors, self.iterations, time.perf_counter() - started,
        )
        return self

    def embed_users(self, user_rows) -> UserEmbeddings:
        """``mu``: (users, factors + 1) float32 ridge fold-in coefficients (last: the bias coefficient); no sigma."""
        return UserEmbeddings(self._user_factors(user_rows))

    def _user_factors(self, user_rows) -> np.ndarray:
        rows = self._rows(user_rows)
        y = self.item_factors_.astype(np.float64)
        gram = y.T @ y
        gram[np.diag_indices_from(gram)] += self.fold_in_l2
        rhs = np.asarray(rows.astype(np.float64) @ y)
        return np.linalg.solve(gram, rhs.T).T.astype(np.float32)

    def item_embeddings(self) -> np.ndarray:
        """(items, factors + 1) float32 item factors, the last column the item bias."""
        self._check_fitted()
        return self.item_factors_

    def score(self, user_rows) -> np.ndarray:
        """Ridge fold-in coefficients times the item factors (bias column included)."""
        return self._user_factors(user_rows) @ self.item_factors_.T

    def item_block_scorer(self, user_rows):
        """The users' fold-in coefficients solved once; a block is ``U Y[start:stop]ᵀ``."""
        return _factor_block_scorer(self._user_factors(user_rows), self.item_factors_)

    def _state(self) -> dict[str, np.ndarray]:
        return {"item_factors": self.item_factors_}

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"item_factors": (self.n_items_, self.factors + 1)}  # the last column is the item bias

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.item_factors_ = arrays["item_factors"]


# =============================================================================== item KNN
_SIMILARITIES = ("cosine", "bm25", "tfidf")


class ItemKNN(ArrayRecommender):
    """Item-item nearest neighbours from ``implicit`` (cosine, BM25 or TF-IDF weighting).

    ``fit`` keeps each item's ``k`` most similar items in a sparse item x item
    matrix ``S`` (row ``i``: the neighbours of item ``i``, as implicit computes
    it); a user row ``x`` scores ``x S``, one sparse product for a whole batch,
    so held-out users need no retraining. This equals implicit's own
    ``recommend`` scores.

    Args:
        k: neighbours kept per item.
        similarity: "cosine" (L2-normalised item columns), "bm25" or "tfidf"
            (implicit's weightings of the item x user matrix).
        K1, B: BM25 parameters (used with ``similarity="bm25"`` only).
        num_threads: implicit's threads (0 = all cores).

    Attributes set by ``fit``: ``similarity_`` ((items, items) float32 CSR),
    ``item_ids_``, ``n_items_``.
    """

    block_scoring = True  # columns of the sparse x S

    def __init__(
        self, k: int = 100, similarity: str = "cosine", K1: float = 1.2, B: float = 0.75, *, num_threads: int = 0
    ) -> None:
        check_number("k", k, minimum=1, integer=True)
        hyperparams.choice("similarity", similarity, _SIMILARITIES)
        check_number("K1", K1, minimum=0.0)
        hyperparams.number("B", B, minimum=0.0, maximum=1.0)
        check_number("num_threads", num_threads, minimum=0, integer=True)
        self.k, self.similarity, self.K1, self.B = int(k), similarity, float(K1), float(B)
        self.num_threads = int(num_threads)
        self.similarity_: sp.csr_matrix | None = None

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {"k": self.k, "similarity": self.similarity, "K1": self.K1, "B": self.B, "num_threads": self.num_threads}

    def fit(self, train, validation=None) -> ItemKNN:
        """Compute the k-nearest-neighbour item similarities. ``validation`` is ignored. Returns self."""
        from implicit.nearest_neighbours import ItemItemRecommender, bm25_weight, normalize, tfidf_weight

        matrix, item_ids = training_matrix(train, validation)
        items_users = matrix.T
        # implicit's Cosine/BM25/TFIDFRecommender.fit apply these weightings but hand a COO
        # matrix on (with a conversion warning); weighting here keeps it CSR.
        if self.similarity == "cosine":
            weighted = normalize(items_users).T
        elif self.similarity == "bm25":
            weighted = bm25_weight(items_users, self.K1, self.B).T
        else:
            weighted = normalize(tfidf_weight(items_users)).T
        started = time.perf_counter()
        with single_threaded_blas():
            model = ItemItemRecommender(K=self.k, num_threads=self.num_threads)
            model.fit(sp.csr_matrix(weighted), show_progress=False)
        similarity = sp.csr_matrix(model.similarity, dtype=np.float32)
        similarity.sort_indices()
        self.similarity_ = similarity
        self.item_ids_, self.n_items_ = item_ids, matrix.shape[1]
        logger.info(
            "ItemKNN (%s, k=%d) fitted on %d users x %d items in %.2fs",
            self.similarity, self.k, matrix.shape[0], matrix.shape[1], time.perf_counter() - started,
        )
        return self

    def item_similarities(self, items: np.ndarray) -> np.ndarray:
        """Rows of the neighbour matrix ``S``: item ``i``'s k nearest neighbours, 0 elsewhere."""
        self._check_fitted()
        return self.similarity_[np.asarray(items)].toarray()

    def score(self, user_rows) -> np.ndarray:
        """``x S`` for each user row (a sparse product, densified per batch)."""
        rows = self._rows(user_rows)
        return (rows @ self.similarity_).toarray().astype(np.float32, copy=False)

    def item_block_scorer(self, user_rows):
        """``x S`` once as a sparse matrix; a block is its columns [start, stop), densified."""
        return sparse_block_scorer(self._rows(user_rows) @ self.similarity_)

    def _state(self) -> dict[str, np.ndarray]:
        return csr_to_arrays("similarity", self.similarity_)

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"similarity": (self.n_items_, self.n_items_)}

    def _checked_arrays(self) -> dict:
        return {"similarity": self.similarity_}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.similarity_ = csr_from_arrays("similarity", arrays)
