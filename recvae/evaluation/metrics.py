"""Top-k ranking metrics for held-out users, following Liang et al. (2018).

The evaluation protocol of Mult-VAE (Liang, Krishnan, Hoffman and Jebara,
"Variational Autoencoders for Collaborative Filtering", WWW 2018) is:

1. score every item for every held-out user from the user's fold-in events;
2. :func:`mask_seen`: set the fold-in items' scores to ``-inf`` so they are
   never recommended;
3. :func:`top_k`: rank the items by descending score;
4. compare the top ``k`` against the user's target items with a metric
   (:data:`METRICS`), one value per user;
5. :func:`summarize`: average over users.

Relevance is binary: an item is relevant to a user iff the target matrix holds
a *nonzero* value at that cell. Explicitly stored zeros are not relevant, and
duplicate stored entries are summed first (as scipy does on conversion), so a
cell is counted at most once and magnitudes are otherwise ignored.

Users whose target row is empty get ``NaN`` from every per-user metric: they
have nothing to retrieve, so no metric is defined for them. :func:`summarize`
excludes them from the mean and reports how many there were.

Everything is vectorised over users (no per-user Python loops): hits for all
(user, rank) pairs are found at once by encoding cells as
``row * n_items + item`` keys and binary-searching the (globally sorted) keys
of the canonical-format target CSR matrix.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import scipy.sparse as sp

__all__ = [
    "mask_seen",
    "top_k",
    "ndcg_at_k",
    "recall_at_k",
    "precision_at_k",
    "hit_rate_at_k",
    "map_at_k",
    "mrr_at_k",
    "coverage_at_k",
    "METRICS",
    "summarize",
]


# --------------------------------------------------------------------------- validation helpers
def _check_k(k: object, *, name: str = "k") -> int:
    """Return ``k`` as an int, or raise TypeError/ValueError if it is not an integer >= 1."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= 1; got {type(k).__name__} {k!r}")
    k = int(k)
    if k < 1:
        raise ValueError(f"{name} must be >= 1; got {k}")
    return k


def _to_csr(matrix: object, *, name: str) -> sp.csr_matrix:
    """Convert any scipy sparse matrix/array to a CSR matrix (no copy if already CSR)."""
    if not sp.issparse(matrix):
        raise TypeError(
            f"{name} must be a scipy.sparse CSR matrix (users x items); got {type(matrix).__name__}; "
            f"convert with scipy.sparse.csr_matrix(...)"
        )
    if matrix.ndim != 2:  # pragma: no cover - scipy sparse arrays are 2-D in practice
        raise ValueError(f"{name} must be 2-D (users x items); got shape {matrix.shape}")
    return matrix if isinstance(matrix, sp.csr_matrix) else sp.csr_matrix(matrix)


def _relevant(target: object) -> sp.csr_matrix:
    """Target as a canonical CSR matrix holding only nonzero (relevant) cells.

    Works on a copy: duplicates are summed, indices sorted, and explicitly
    stored zeros (including duplicates that sum to zero) removed. The caller's
    matrix is never modified.
    """
    csr = _to_csr(target, name="target")
    csr = csr.copy()
    csr.sum_duplicates()  # also sorts indices -> canonical format
    csr.eliminate_zeros()
    return csr


def _check_scores(scores: object, *, name: str = "scores") -> np.ndarray:
    if not isinstance(scores, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy array (users x items); got {type(scores).__name__}; "
            f"convert a torch tensor with tensor.detach().cpu().numpy()"
        )
    if scores.ndim != 2:
        raise ValueError(f"{name} must be 2-D (users x items); got shape {scores.shape}")
    if scores.dtype == np.bool_ or not (
        np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)
    ):
        raise TypeError(f"{name} must hold real numbers (float or int); got dtype {scores.dtype}")
    return scores


def _check_top_items(top_items: object, k: int, n_rows: int | None = None) -> np.ndarray:
    """Validate a (n_users, K >= k) integer array and return its first k columns."""
    if not isinstance(top_items, np.ndarray):
        raise TypeError(
            f"top_items must be a numpy integer array (users x K) as returned by top_k; "
            f"got {type(top_items).__name__}"
        )
    if top_items.ndim != 2:
        raise ValueError(f"top_items must be 2-D (users x K); got shape {top_items.shape}")
    if top_items.dtype == np.bool_ or not np.issubdtype(top_items.dtype, np.integer):
        raise TypeError(
            f"top_items must hold integer item indices; got dtype {top_items.dtype}; "
            f"use the output of top_k (or .astype(np.int64) if the values are whole numbers)"
        )
    if top_items.shape[1] < k:
        raise ValueError(
            f"top_items has shape {top_items.shape}, fewer than k={k} columns; "
            f"call top_k(scores, k) with k >= {k}"
        )
    if n_rows is not None and top_items.shape[0] != n_rows:
        raise ValueError(
            f"top_items has shape {top_items.shape} but target has {n_rows} rows; "
            f"both must describe the same users in the same order"
        )
    return top_items[:, :k]


def _check_item_range(top: np.ndarray, n_items: int) -> None:
    if top.size and (top.min() < 0 or top.max() >= n_items):
        raise ValueError(
            f"top_items holds item indices in [{int(top.min())}, {int(top.max())}], "
            f"outside the catalogue [0, {n_items})"
        )
    if top.shape[1] > 1 and top.size:
        ordered = np.sort(top, axis=1)
        if (ordered[:, 1:] == ordered[:, :-1]).any():
            raise ValueError(
                "top_items repeats an item within a user's row; each row must list distinct items "
                "(use the output of top_k)"
            )


def _hits(top_items: np.ndarray, target: object, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Binary relevance of the top-k items and each user's number of relevant items.

    Returns:
        hits: (n_users, k) bool, ``hits[u, r]`` is True iff the item at rank
            ``r`` (0-based) of user ``u`` is in the user's target.
        n_target: (n_users,) int64, number of relevant items per user.
    """
    k = _check_k(k)
    rel = _relevant(target)
    n_users, n_items = rel.shape
    top = _check_top_items(top_items, k, n_rows=n_users).astype(np.int64, copy=False)
    _check_item_range(top, n_items)

    n_target = np.diff(rel.indptr).astype(np.int64)
    # Canonical CSR: rows in order, column indices sorted within a row, no
    # duplicates -> the keys row * n_items + col are strictly increasing.
    keys = np.repeat(np.arange(n_users, dtype=np.int64), n_target) * n_items + rel.indices.astype(np.int64)
    queries = np.arange(n_users, dtype=np.int64)[:, None] * n_items + top
    if keys.size == 0:
        return np.zeros(top.shape, dtype=bool), n_target
    pos = np.searchsorted(keys, queries)
    hits = keys[np.minimum(pos, keys.size - 1)] == queries
    return hits, n_target


def _per_user(numerator: np.ndarray, denominator: np.ndarray, n_target: np.ndarray) -> np.ndarray:
    """numerator / denominator as float64, NaN where the user has no target."""
    out = np.full(n_target.shape, np.nan, dtype=np.float64)
    ok = n_target > 0
    out[ok] = numerator[ok] / denominator[ok]
    return out


# --------------------------------------------------------------------------- ranking
def mask_seen(scores: np.ndarray, seen: sp.csr_matrix) -> np.ndarray:
    """Set the scores of each user's fold-in items to ``-inf``, in place.

    As in Liang et al.'s code (``X_pred[data_tr.nonzero()] = -np.inf``), every
    cell of ``seen`` that holds a *nonzero* value is masked; explicitly stored
    zeros are not treated as seen (consistent with target relevance).

    Args:
        scores: (n_users, n_items) float array of model scores; modified in place.
        seen: (n_users, n_items) scipy sparse matrix of fold-in events (any
            sparse format; converted to CSR).

    Returns:
        ``scores`` itself, for chaining.

    Raises:
        TypeError: ``scores`` is not a float numpy array (it must be able to
            hold ``-inf``) or ``seen`` is not scipy sparse.
        ValueError: the shapes differ.
    """
    _check_scores(scores)
    if not np.issubdtype(scores.dtype, np.floating):
        raise TypeError(
            f"scores must be a floating-point array to hold -inf; got dtype {scores.dtype}; "
            f"convert with scores.astype(np.float32)"
        )
    csr = _to_csr(seen, name="seen")
    if csr.shape != scores.shape:
        raise ValueError(
            f"scores has shape {scores.shape} but seen has shape {csr.shape}; "
            f"both must be users x items over the same users and item index"
        )
    rows = np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(csr.indptr))
    nonzero = csr.data != 0
    scores[rows[nonzero], csr.indices[nonzero]] = -np.inf
    return scores


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of each user's ``k`` highest-scoring items, best first.

    Uses ``np.argpartition`` to find the k candidates, then sorts only those.

    Ties are broken deterministically by lower item index first, both in the
    order of the returned items and in which items are kept when several items
    tie at the k-th score (e.g. many ``-inf`` masked items when ``k`` is close
    to ``n_items``).

    Args:
        scores: (n_users, n_items) real-valued array (NaN is rejected: a NaN
            score is almost always a model bug and has no rank).
        k: number of items to return, ``1 <= k <= n_items``.

    Returns:
        (n_users, k) int64 array; row ``u`` lists item indices by descending score.

    Raises:
        TypeError: ``scores`` is not a real numeric numpy array, or ``k`` not an int.
        ValueError: ``scores`` is not 2-D, contains NaN, or ``k`` is out of range.
    """
    _check_scores(scores)
    n_users, n_items = scores.shape
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer in [1, {n_items}] (n_items); got {type(k).__name__} {k!r}")
    k = int(k)
    if not 1 <= k <= n_items:
        raise ValueError(f"k must satisfy 1 <= k <= n_items = {n_items}; got k={k}")
    if np.issubdtype(scores.dtype, np.floating):
        n_nan = int(np.isnan(scores).sum())
        if n_nan:
            raise ValueError(
                f"scores contains {n_nan} NaN value(s); NaN has no rank. Check the model output "
                f"(or replace them, e.g. np.nan_to_num(scores, nan=-np.inf))"
            )
    if n_users == 0:
        return np.empty((0, k), dtype=np.int64)

    # The k largest end up in the last k positions; no negation (safe for ints).
    part = np.argpartition(scores, n_items - k, axis=1)
    cand = part[:, n_items - k:]
    kth = np.take_along_axis(scores, part[:, n_items - k:n_items - k + 1], axis=1)  # (n_users, 1)

    # argpartition picks arbitrarily among items tied at the k-th score. Fix
    # the rows where some tied item was left out: keep the lowest indices.
    cand_scores = np.take_along_axis(scores, cand, axis=1)
    n_eq_kept = (cand_scores == kth).sum(axis=1)
    n_eq_all = (scores == kth).sum(axis=1)
    fix = np.flatnonzero(n_eq_all > n_eq_kept)
    if fix.size:
        sub, v = scores[fix], kth[fix]
        eq = sub == v
        need = k - (sub > v).sum(axis=1, keepdims=True)
        keep = (sub > v) | (eq & (np.cumsum(eq, axis=1) <= need))
        cand = cand.copy()
        cand[fix] = np.nonzero(keep)[1].reshape(fix.size, k)

    # Sort candidates by descending score, lower index first among ties: order
    # them by descending index, stable-sort by ascending score, then reverse.
    cand = np.sort(cand, axis=1)[:, ::-1]
    order = np.argsort(np.take_along_axis(scores, cand, axis=1), axis=1, kind="stable")[:, ::-1]
    return np.take_along_axis(cand, order, axis=1).astype(np.int64, copy=False)


# --------------------------------------------------------------------------- per-user metrics
def ndcg_at_k(top_items: np.ndarray, target: sp.csr_matrix, k: int) -> np.ndarray:
    """Normalised discounted cumulative gain at k, binary relevance (Liang et al. 2018).

    ``DCG@k = sum_{i=0}^{k-1} rel_i / log2(i + 2)`` (rank ``i`` is 0-based, so
    the first item has discount 1), divided by the ideal DCG, i.e. the DCG of
    a ranking with all ``min(k, |target|)`` first positions relevant.

    Args:
        top_items: (n_users, K >= k) int array from :func:`top_k`; only the
            first k columns are used.
        target: (n_users, n_items) scipy sparse matrix; nonzero cells are relevant.
        k: cut-off, >= 1.

    Returns:
        (n_users,) float64 in [0, 1]; NaN for users with an empty target.
    """
    hits, n_target = _hits(top_items, target, k)
    k = hits.shape[1]
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    dcg = hits @ discounts
    ideal = np.concatenate(([0.0], np.cumsum(discounts)))[np.minimum(n_target, k)]
    return _per_user(dcg, ideal, n_target)


def recall_at_k(top_items: np.ndarray, target: sp.csr_matrix, k: int) -> np.ndarray:
    """Recall at k as defined by Liang et al. (2018): ``hits@k / min(k, |target|)``.

    The denominator is ``min(k, |target|)``, so a user with more than k targets
    can still reach 1. Note that many other libraries divide by ``|target|``
    instead; values from the two definitions differ whenever ``|target| > k``.

    Args:
        top_items: (n_users, K >= k) int array from :func:`top_k`.
        target: (n_users, n_items) scipy sparse matrix; nonzero cells are relevant.
        k: cut-off, >= 1.

    Returns:
        (n_users,) float64 in [0, 1]; NaN for users with an empty target.
    """
    hits, n_target = _hits(top_items, target, k)
    return _per_user(hits.sum(axis=1), np.minimum(n_target, hits.shape[1]), n_target)


def precision_at_k(top_items: np.ndarray, target: sp.csr_matrix, k: int) -> np.ndarray:
    """Precision at k: ``hits@k / k`` (the denominator is always k).

    Args:
        top_items: (n_users, K >= k) int array from :func:`top_k`.
        target: (n_users, n_items) scipy sparse matrix; nonzero cells are relevant.
        k: cut-off, >= 1.

    Returns:
        (n_users,) float64 in [0, 1]; NaN for users with an empty target.
    """
    hits, n_target = _hits(top_items, target, k)
    return _per_user(hits.sum(axis=1), np.full(n_target.shape, hits.shape[1]), n_target)


def hit_rate_at_k(top_items: np.ndarray, target: sp.csr_matrix, k: int) -> np.ndarray:
    """Hit rate at k: 1.0 if at least one of the top k items is relevant, else 0.0.

    Args:
        top_items: (n_users, K >= k) int array from :func:`top_k`.
        target: (n_users, n_items) scipy sparse matrix; nonzero cells are relevant.
        k: cut-off, >= 1.

    Returns:
        (n_users,) float64 in {0, 1}; NaN for users with an empty target.
    """
    hits, n_target = _hits(top_items, target, k)
    return _per_user(hits.any(axis=1).astype(np.float64), np.ones(n_target.shape), n_target)


def map_at_k(top_items: np.ndarray, target: sp.csr_matrix, k: int) -> np.ndarray:
    """Average precision at k (per user; the caller's mean over users is MAP@k).

    ``AP@k = sum_{i=0}^{k-1} precision@(i+1) * rel_i / min(k, |target|)``, where
    ``precision@(i+1)`` is the fraction of relevant items among the first
    ``i + 1``. The ``min(k, |target|)`` normaliser matches the recall
    definition, so a perfect top k scores 1.

    Args:
        top_items: (n_users, K >= k) int array from :func:`top_k`.
        target: (n_users, n_items) scipy sparse matrix; nonzero cells are relevant.
        k: cut-off, >= 1.

    Returns:
        (n_users,) float64 in [0, 1]; NaN for users with an empty target.
    """
    hits, n_target = _hits(top_items, target, k)
    k = hits.shape[1]
    precision_at_rank = np.cumsum(hits, axis=1) / np.arange(1, k + 1, dtype=np.float64)
    ap_sum = (precision_at_rank * hits).sum(axis=1)
    return _per_user(ap_sum, np.minimum(n_target, k), n_target)


def mrr_at_k(top_items: np.ndarray, target: sp.csr_matrix, k: int) -> np.ndarray:
    """Reciprocal rank at k (per user; the caller's mean over users is MRR@k).

    ``1 / rank`` of the first relevant item within the top k, ranks starting
    at 1; 0.0 when none of the top k is relevant.

    Args:
        top_items: (n_users, K >= k) int array from :func:`top_k`.
        target: (n_users, n_items) scipy sparse matrix; nonzero cells are relevant.
        k: cut-off, >= 1.

    Returns:
        (n_users,) float64 in [0, 1]; NaN for users with an empty target.
    """
    hits, n_target = _hits(top_items, target, k)
    any_hit = hits.any(axis=1)
    reciprocal = np.where(any_hit, 1.0 / (np.argmax(hits, axis=1) + 1.0), 0.0)
    return _per_user(reciprocal, np.ones(n_target.shape), n_target)


def coverage_at_k(top_items: np.ndarray, n_items: int, k: int) -> float:
    """Catalogue coverage at k: fraction of the ``n_items`` items that appear
    in at least one user's top k.

    Args:
        top_items: (n_users, K >= k) int array from :func:`top_k`.
        n_items: catalogue size (number of columns of the score matrix), >= 1.
        k: cut-off, >= 1.

    Returns:
        A float in [0, 1]; 0.0 when there are no users.
    """
    k = _check_k(k)
    n_items = _check_k(n_items, name="n_items")
    top = _check_top_items(top_items, k)
    _check_item_range(top, n_items)
    return float(np.unique(top).size / n_items)


MetricFn = Callable[[np.ndarray, sp.csr_matrix, int], np.ndarray]

METRICS: dict[str, MetricFn] = {
    "ndcg": ndcg_at_k,
    "recall": recall_at_k,
    "precision": precision_at_k,
    "hit_rate": hit_rate_at_k,
    "map": map_at_k,
    "mrr": mrr_at_k,
}
"""Per-user metrics by name; each is ``f(top_items, target, k) -> (n_users,) float64``."""


# --------------------------------------------------------------------------- aggregation
def summarize(values: np.ndarray) -> dict:
    """Mean of per-user metric values with its standard error and a 95% interval.

    NaN entries (users with an empty target) are excluded and counted.

    ``std_err = np.std(values, ddof=0) / sqrt(n)``: the population standard
    deviation (ddof=0), exactly as in Liang et al.'s published code
    (``np.std(x) / np.sqrt(len(x))``), not the sample one (ddof=1); the
    difference is a factor ``sqrt(n / (n - 1))``, negligible for thousands of users.
    The interval is the normal approximation ``mean +/- 1.96 * std_err``.

    Args:
        values: per-user metric values (any shape; flattened), NaN = excluded.

    Returns:
        dict with ``mean``, ``std_err``, ``ci95_low``, ``ci95_high`` (floats;
        all NaN when every value is NaN),
        ``n_users`` (number of non-NaN values) and ``n_excluded`` (number of NaN
        values). No warnings are emitted for the all-NaN case.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    nan = np.isnan(arr)
    kept = arr[~nan]
    n = int(kept.size)
    if n == 0:
        mean = std_err = float("nan")
    else:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = float(kept.mean())
            std_err = float(kept.std(ddof=0) / np.sqrt(n))
    return {
        "mean": mean,
        "std_err": std_err,
        "ci95_low": mean - 1.96 * std_err,
        "ci95_high": mean + 1.96 * std_err,
        "n_users": n,
        "n_excluded": int(nan.sum()),
    }
