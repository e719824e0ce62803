"""Interaction logs as a users x items CSR matrix with id maps.

Data flows one way through recvae: raw log -> :class:`Interactions` -> split ->
model. This module owns the first arrow: it validates a raw log, applies the
preprocessing of Liang et al. (2018) and reports, in counts, everything it
dropped or merged.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recvae.data.ids import lookup_ids, normalise_ids

logger = logging.getLogger(__name__)

__all__ = ["Interactions", "PreprocessingReport"]


@dataclass(frozen=True)
class PreprocessingReport:
    """What preprocessing kept and dropped, in counts. Nothing is dropped silently.

    The order of the steps is the order of the fields: ratings that are negative
    or outside the declared scale are dropped (never positives), events at or
    below the rating threshold are dropped, duplicate (user, item) events are merged, then
    one pass of the item filter followed by one pass of the user filter (as in
    Liang et al.'s published code; the filters are not iterated to a fixed point).
    """

    raw_events: int
    invalid_ratings: int
    below_rating_threshold: int
    duplicates_merged: int
    dropped_by_item_filter: int
    dropped_by_user_filter: int
    dropped_items: int
    dropped_users: int
    events: int
    users: int
    items: int
    rating_threshold: float | None = None
    min_user_events: int | None = None

    @property
    def density(self) -> float:
        """Fraction of the users x items matrix that holds an interaction."""
        cells = self.users * self.items
        return self.events / cells if cells else 0.0

    def as_dict(self) -> dict:
        """All counts and the density, for logging or JSON."""
        return {**asdict(self), "density": self.density}

    def __str__(self) -> str:
        return (
            f"{self.raw_events:,} raw events -> {self.events:,} kept "
            f"({self.users:,} users x {self.items:,} items, density {self.density:.4%}); "
            f"dropped: {self.below_rating_threshold:,}{self._share(self.below_rating_threshold)} at or below the "
            + ("rating threshold, " if self.rating_threshold is None else f"rating threshold {self.rating_threshold:g}, ")
            + (f"{self.invalid_ratings:,} negative or out-of-scale ratings, " if self.invalid_ratings else "")
            + f"{self.duplicates_merged:,} duplicates merged, "
            f"{self.dropped_by_item_filter:,} events of {self.dropped_items:,} rare items, "
            f"{self.dropped_by_user_filter:,}{self._share(self.dropped_by_user_filter)} events of "
            f"{self.dropped_users:,} inactive users"
            + ("" if self.min_user_events is None else f" (fewer than {self.min_user_events} kept events)")
        )

    def _share(self, count: int) -> str:
        return f" ({count / self.raw_events:.1%})" if count and self.raw_events else ""


class Interactions:
    """Binary implicit feedback: a users x items CSR matrix plus raw-id maps.

    Row ``u`` belongs to the raw user id ``user_ids[u]`` and column ``i`` to the
    raw item id ``item_ids[i]``; both id arrays are sorted. The matrix is
    float32, canonical (sorted indices, no duplicates) and holds 1.0 for every
    kept event (or its weight, when built with ``weight_col``).

    ``timestamps`` and ``event_order`` (when present) are aligned with
    ``matrix.data``: the time of each kept event, and its position in the raw
    log. The split of Liang et al. draws each held-out user's target from the
    user's events in log order, so keeping that order is what lets recvae
    reproduce their splits exactly.

    Build one with :meth:`from_dataframe`, :meth:`from_path` or :meth:`from_csr`.
    """

    def __init__(
        self,
        matrix: sp.csr_matrix,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        *,
        timestamps: np.ndarray | None = None,
        event_order: np.ndarray | None = None,
        report: PreprocessingReport | None = None,
    ) -> None:
        if not sp.issparse(matrix):
            raise TypeError(
                f"matrix must be a scipy.sparse CSR matrix (users x items); got {type(matrix).__name__}"
            )
        matrix = sp.csr_matrix(matrix, dtype=np.float32)
        matrix.sum_duplicates()
        matrix.sort_indices()
        n_users, n_items = matrix.shape
        user_ids = normalise_ids(user_ids, "user")
        item_ids = normalise_ids(item_ids, "item")
        if user_ids.shape != (n_users,) or item_ids.shape != (n_items,):
            raise ValueError(
                f"id maps do not match the matrix: matrix is {n_users} x {n_items}, "
                f"got {user_ids.shape[0] if user_ids.ndim else 0} user ids and "
                f"{item_ids.shape[0] if item_ids.ndim else 0} item ids"
            )
        for name, extra in (("timestamps", timestamps), ("event_order", event_order)):
            if extra is not None and np.shape(extra) != matrix.data.shape:
                raise ValueError(
                    f"{name} must have one entry per stored event ({matrix.nnz}); got shape {np.shape(extra)}"
                )
        self.matrix: sp.csr_matrix = matrix
        self.user_ids: np.ndarray = user_ids
        self.item_ids: np.ndarray = item_ids
        self.timestamps: np.ndarray | None = None if timestamps is None else np.asarray(timestamps)
        self.event_order: np.ndarray | None = None if event_order is None else np.asarray(event_order)
        self.report: PreprocessingReport | None = report
        self._user_index = pd.Index(user_ids)
        self._item_index = pd.Index(item_ids)

    # ------------------------------------------------------------------ shape
    @property
    def shape(self) -> tuple[int, int]:
        """(users, items)."""
        return self.matrix.shape

    @property
    def n_users(self) -> int:
        return self.matrix.shape[0]

    @property
    def n_items(self) -> int:
        return self.matrix.shape[1]

    @property
    def nnz(self) -> int:
        """Number of (user, item) interactions."""
        return self.matrix.nnz

    @property
    def density(self) -> float:
        cells = self.n_users * self.n_items
        return self.nnz / cells if cells else 0.0

    def __repr__(self) -> str:
        return (
            f"Interactions({self.n_users:,} users x {self.n_items:,} items, "
            f"{self.nnz:,} events, density {self.density:.4%})"
        )

    # ------------------------------------------------------------------ id maps
    def user_index(self, raw_ids) -> np.ndarray:
        """Row indices of raw user ids; raises KeyError naming unknown ids."""
        return _lookup(self._user_index, raw_ids, "user")

    def item_index(self, raw_ids) -> np.ndarray:
        """Column indices of raw item ids; raises KeyError naming unknown ids."""
        return _lookup(self._item_index, raw_ids, "item")

    def events_in_log_order(self) -> np.ndarray:
        """Permutation of ``matrix.data`` that lists each user's events in raw-log order.

        Within a row the returned positions are ordered by ``event_order`` (or by
        item index when the log order is unknown); rows follow each other.
        """
        rows = np.repeat(np.arange(self.n_users), np.diff(self.matrix.indptr))
        if self.event_order is None:
            return np.arange(self.nnz)
        return np.lexsort((self.event_order, rows))

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_csr(cls, matrix: sp.spmatrix, user_ids=None, item_ids=None) -> Interactions:
        """Wrap an existing users x items matrix; nonzero entries become 1.0.

        Ids default to ``0..n-1``.
        """
        if not sp.issparse(matrix):
            raise TypeError(
                "from_csr expects a scipy.sparse matrix (users x items); "
                f"got {type(matrix).__name__}. Use scipy.sparse.csr_matrix(array) first."
            )
        matrix = sp.csr_matrix(matrix, dtype=np.float32)
        matrix.sum_duplicates()
        matrix.eliminate_zeros()
        matrix.data[:] = 1.0
        n_users, n_items = matrix.shape
        return cls(
            matrix,
            np.arange(n_users) if user_ids is None else user_ids,
            np.arange(n_items) if item_ids is None else item_ids,
        )

    @classmethod
    def from_dataframe(
        cls,
        df: pd.DataFrame,
        *,
        user_col: str = "user",
        item_col: str = "item",
        rating_col: str | None = "rating",
        timestamp_col: str | None = "timestamp",
        rating_threshold: float | None = 3.5,
        min_user_interactions: int = 5,
        min_item_interactions: int = 0,
        rating_scale: tuple[float, float] | None = None,
        strict: bool = False,
        weight_col: str | None = None,
    ) -> Interactions:
        """Build binary interactions from a log, with Liang et al.'s preprocessing.

        Args:
            df: one row per event.
            user_col, item_col: raw id columns (any hashable, sortable values).
            rating_col: rating column; when it is absent from ``df`` (or None)
                every row is a positive event and ``rating_threshold`` is unused.
            timestamp_col: optional event times, kept for temporal splits.
            rating_threshold: keep events whose rating is strictly greater
                (Liang et al.: 3.5 on MovieLens). None keeps every rating.
            min_user_interactions: drop users with fewer kept events (default 5).
            min_item_interactions: drop items with fewer kept events, applied
                before the user filter (default 0: the published code has no
                item filter, although the paper's text mentions 5).
            rating_scale: (lowest, highest) valid rating, e.g. (0.5, 5.0) for
                MovieLens. Ratings outside it, and negative ratings whatever the
                scale, are never positives: they are dropped, counted in
                ``report.invalid_ratings`` and logged as a warning.
            strict: refuse (``ValueError``) a log with such ratings instead.
            weight_col: a column of positive interaction weights (counts, play
                time, or the rating column itself): the matrix holds each kept
                pair's weight, summed over its duplicate events, instead of 1.0.
                Models that read values use them as confidence (ALS: 1 + alpha*w;
                the multinomial/Gaussian likelihoods and the encoders of the VAEs;
                EASE, item-KNN, popularity); BPR uses only which pairs exist.

        Duplicate (user, item) events are merged into one, keeping the earliest
        log position and the earliest time. :attr:`report` counts every drop.
        """
        use_rating, use_time = _check_log(df, user_col, item_col, rating_col, timestamp_col)
        if min_user_interactions < 0 or min_item_interactions < 0:
            raise ValueError("min_user_interactions and min_item_interactions must be >= 0")
        raw_events = len(df)
        weights = None if weight_col is None else _positive_weights(df, weight_col)
        events = _Events(normalise_ids(df[user_col].to_numpy(), "user"), normalise_ids(df[item_col].to_numpy(), "item"),
                         np.arange(raw_events, dtype=np.int64), df[timestamp_col].to_numpy() if use_time else None,
                         weights)
        below = invalid = 0
        if use_rating:
            keep, invalid, below = _rating_filter(df[rating_col].to_numpy(), rating_col, rating_threshold,
                                                  rating_scale, strict)
            events = events.take(keep)
        user_codes, user_ids = _factorize_sorted(events.users, "user")
        item_codes, item_ids = _factorize_sorted(events.items, "item")
        events, duplicates = _merge_duplicates(replace(events, users=user_codes, items=item_codes))
        events, dropped_by_item, dropped_by_user = _activity_filters(
            events, len(user_ids), len(item_ids), min_user_interactions, min_item_interactions)
        if len(events.users) == 0:
            raise ValueError(
                f"no events left after preprocessing ({raw_events:,} raw, "
                + (f"{invalid:,} negative or out-of-scale ratings, " if invalid else "")
                + f"{below:,} at or below rating_threshold={rating_threshold}, then min_user_interactions="
                f"{min_user_interactions}, min_item_interactions={min_item_interactions}); relax the filters")
        matrix, kept_users, kept_items = _csr(events, len(user_ids), len(item_ids))
        report = PreprocessingReport(
            raw_events=raw_events, invalid_ratings=invalid, below_rating_threshold=below, duplicates_merged=duplicates,
            dropped_by_item_filter=dropped_by_item, dropped_by_user_filter=dropped_by_user,
            dropped_items=int(len(item_ids) - len(kept_items)), dropped_users=int(len(user_ids) - len(kept_users)),
            events=int(matrix.nnz), users=len(kept_users), items=len(kept_items),
            rating_threshold=rating_threshold if use_rating else None, min_user_events=min_user_interactions,
        )
        logger.info("preprocessing: %s", report)
        return cls(matrix, user_ids[kept_users], item_ids[kept_items], timestamps=events.times,
                   event_order=events.position, report=report)


# ---------------------------------------------------------------------- the preprocessing steps
@dataclass(frozen=True)
class _Events:
    """The log's events as parallel arrays, narrowed step by step: user and item (raw ids, then codes),
    position in the raw log, time and weight (None when the log has none)."""

    users: np.ndarray
    items: np.ndarray
    position: np.ndarray
    times: np.ndarray | None
    weights: np.ndarray | None

    def take(self, keep: np.ndarray) -> _Events:
        """The events ``keep`` selects (a mask or positions), every array alike."""
        return _Events(self.users[keep], self.items[keep], self.position[keep],
                       self.times[keep] if self.times is not None else None,
                       self.weights[keep] if self.weights is not None else None)


def _check_log(df: pd.DataFrame, user_col: str, item_col: str, rating_col: str | None,
               timestamp_col: str | None) -> tuple[bool, bool]:
    """Refuse what cannot be a log: not a DataFrame, id columns missing, no rows, missing values.

    Returns whether the rating and the timestamp columns are there (and so used).
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame; got {type(df).__name__}")
    missing = [c for c in (user_col, item_col) if c not in df.columns]
    if missing:
        raise ValueError(
            f"missing column(s) {missing}; the frame has {list(df.columns)}. "
            "Pass user_col=... and item_col=... to name the id columns."
        )
    if len(df) == 0:
        raise ValueError("the interaction log is empty: there is nothing to build a matrix from")
    use_rating = rating_col is not None and rating_col in df.columns
    use_time = timestamp_col is not None and timestamp_col in df.columns
    for col in [user_col, item_col] + ([rating_col] if use_rating else []) + ([timestamp_col] if use_time else []):
        n_bad = int(df[col].isna().sum())
        if n_bad:
            first = int(np.flatnonzero(df[col].isna().to_numpy())[0])
            raise ValueError(
                f"column {col!r} has {n_bad:,} missing (NaN) values, the first at row {first}; "
                "drop or fill them before building Interactions (e.g. df.dropna(subset=[...]))"
            )
    return use_rating, use_time


def _positive_weights(df: pd.DataFrame, weight_col: str) -> np.ndarray:
    """The weight column as float64; refuses a missing column and any missing, non-numeric or non-positive weight."""
    if weight_col not in df.columns:
        raise ValueError(f"no weight column {weight_col!r}; the frame has {list(df.columns)}")
    weights = pd.to_numeric(df[weight_col], errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(weights) | (weights <= 0)
    if bad.any():
        raise ValueError(
            f"weight column {weight_col!r} has {int(bad.sum()):,} missing, non-numeric or non-positive "
            f"value(s), the first at row {int(np.flatnonzero(bad)[0])}; weights must be positive numbers"
        )
    return weights


def _rating_filter(ratings: np.ndarray, rating_col: str, rating_threshold: float | None,
                   rating_scale: tuple[float, float] | None, strict: bool) -> tuple[np.ndarray, int, int]:
    """Which events are positives: a valid rating (not negative, on ``rating_scale``) strictly above the threshold.

    Invalid ratings are dropped with a warning (refused with ``strict``). Returns the mask of positives,
    the count of invalid ratings and that of valid ones at or below the threshold.
    """
    if not np.issubdtype(ratings.dtype, np.number) or ratings.dtype == bool:
        raise ValueError(
            f"rating column {rating_col!r} is not numeric (dtype {ratings.dtype}); "
            "convert it with pd.to_numeric or pass rating_col=None for implicit data"
        )
    valid = ratings >= 0
    if rating_scale is not None:
        low, high = rating_scale
        valid &= (ratings >= low) & (ratings <= high)
    invalid = int(len(ratings) - valid.sum())
    if invalid:
        bad = ratings[~valid]
        scale = f" on the scale {rating_scale[0]:g}-{rating_scale[1]:g}" if rating_scale else ""
        message = (
            f"{invalid:,} rating(s) in column {rating_col!r} are negative or out of range{scale} "
            f"(e.g. {', '.join(f'{v:g}' for v in np.unique(bad)[:3])})"
        )
        if strict:
            raise ValueError(f"{message}; fix the log or drop --strict to skip them")
        logger.warning("%s; they are dropped, never positives", message)
    keep = valid if rating_threshold is None else valid & (ratings > rating_threshold)
    return keep, invalid, int(valid.sum() - keep.sum())


def _merge_duplicates(events: _Events) -> tuple[_Events, int]:
    """One event per (user, item) pair: its earliest in the log, at its earliest time, weighing its events' sum.

    Returns the merged events, sorted by user then item, and how many events were merged away.
    """
    order = np.lexsort((events.position, events.items, events.users))
    user_codes, item_codes, position = events.users[order], events.items[order], events.position[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (user_codes[1:] != user_codes[:-1]) | (item_codes[1:] != item_codes[:-1])
    duplicates = int(len(order) - first.sum())
    times = weights = None
    if events.times is not None:
        # a merged pair keeps the earliest time of its events
        times = np.minimum.reduceat(events.times[order], np.flatnonzero(first))
    if events.weights is not None:
        # a merged pair's weight is the sum of its events' (play counts add up)
        weights = np.add.reduceat(events.weights[order], np.flatnonzero(first))
    return _Events(user_codes[first], item_codes[first], position[first], times, weights), duplicates


def _activity_filters(events: _Events, n_users: int, n_items: int, min_user_interactions: int,
                      min_item_interactions: int) -> tuple[_Events, int, int]:
    """One pass of the item filter, then one of the user filter on what it kept (Liang et al.'s published
    code; not iterated to a fixed point). Returns the kept events and how many events each filter dropped."""
    n_events_before_filters = len(events.users)
    keep = np.ones(n_events_before_filters, dtype=bool)
    item_counts = np.bincount(events.items, minlength=n_items)
    keep_item = item_counts >= min_item_interactions
    keep &= keep_item[events.items]
    dropped_by_item = int(n_events_before_filters - keep.sum())
    user_counts = np.bincount(events.users[keep], minlength=n_users)
    keep_user = user_counts >= min_user_interactions
    after_items = keep.sum()
    keep &= keep_user[events.users]
    dropped_by_user = int(after_items - keep.sum())
    return events.take(keep), dropped_by_item, dropped_by_user


def _csr(events: _Events, n_users: int, n_items: int) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """The events as a CSR matrix over the users and items that kept any; returns it with their (sorted) codes."""
    kept_users = np.unique(events.users)
    kept_items = np.unique(events.items)
    user_remap = np.full(n_users, -1, dtype=np.int64)
    user_remap[kept_users] = np.arange(len(kept_users))
    item_remap = np.full(n_items, -1, dtype=np.int64)
    item_remap[kept_items] = np.arange(len(kept_items))
    rows, cols = user_remap[events.users], item_remap[events.items]
    # (rows, cols) are already sorted by row then column: CSR assembles directly.
    indptr = np.zeros(len(kept_users) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(kept_users)), out=indptr[1:])
    matrix = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32) if events.weights is None else events.weights.astype(np.float32),
         cols.astype(np.int32), indptr),
        shape=(len(kept_users), len(kept_items)),
    )
    return matrix, kept_users, kept_items


def _factorize_sorted(values: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Codes into the sorted unique values (sorted raw ids keep Liang's user order)."""
    try:
        uniques, codes = np.unique(values, return_inverse=True)
    except TypeError as err:
        raise ValueError(
            f"{what} ids mix types that cannot be sorted ({err}); convert the column to one type"
        ) from err
    return codes.astype(np.int64).reshape(-1), uniques


def _lookup(index: pd.Index, raw_ids, what: str) -> np.ndarray:
    return lookup_ids(index, raw_ids, what)
