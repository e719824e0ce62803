"""The one interface every recvae model implements, VAE or baseline.

CSR rows in, numpy out. A model is fitted on a users x items training matrix and
then scores any user from their interaction row ("fold-in"): held-out users and
brand-new users are served the same way, without retraining.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["Recommender", "Recommendations", "NotFittedError", "as_user_rows", "ids_to_array", "ids_from_array"]


class NotFittedError(RuntimeError):
    """A model was asked for predictions before :meth:`Recommender.fit`."""


@dataclass
class Recommendations:
    """Top-k items per user, best first.

    Attributes:
        items: (users, k) item column indices.
        scores: (users, k) the model's scores of those items.
        item_ids: (users, k) raw item ids, when the model knows the id map.
    """

    items: np.ndarray
    scores: np.ndarray
    item_ids: np.ndarray | None = None

    def to_frame(self):
        """A long pandas DataFrame: user row, rank (1-based), item, raw item id, score."""
        import pandas as pd

        n, k = self.items.shape
        frame = pd.DataFrame(
            {
                "user_row": np.repeat(np.arange(n), k),
                "rank": np.tile(np.arange(1, k + 1), n),
                "item": self.items.ravel(),
                "score": self.scores.ravel(),
            }
        )
        if self.item_ids is not None:
            frame.insert(3, "item_id", self.item_ids.ravel())
        return frame


def as_user_rows(user_rows: Any, n_items: int, *, allow_empty_rows: bool = False) -> sp.csr_matrix:
    """Validate user rows at the API boundary; returns float32 canonical CSR.

    Accepts a scipy sparse matrix/array or a 2-D numpy array (small inputs).
    """
    if sp.issparse(user_rows):
        rows = sp.csr_matrix(user_rows, dtype=np.float32)
    elif isinstance(user_rows, np.ndarray):
        if user_rows.ndim == 1:
            user_rows = user_rows[None, :]
        if user_rows.ndim != 2:
            raise ValueError(f"user rows must be 2-D (users x items); got an array of shape {user_rows.shape}")
        rows = sp.csr_matrix(user_rows, dtype=np.float32)
    else:
        raise TypeError(
            "user rows must be a scipy.sparse CSR matrix (users x items); "
            f"got {type(user_rows).__name__}. Build one with scipy.sparse.csr_matrix(...)"
        )
    if rows.shape[1] != n_items:
        raise ValueError(
            f"user rows have {rows.shape[1]} item columns but the model was fitted on {n_items} items; "
            "use the item index of the training data (Split.item_ids / Interactions.item_ids)"
        )
    if rows.nnz and not np.isfinite(rows.data).all():
        raise ValueError("user rows contain NaN or infinite values")
    if rows.nnz and (rows.data < 0).any():
        raise ValueError("user rows contain negative values; interactions must be >= 0")
    rows.sum_duplicates()
    rows.eliminate_zeros()
    rows.sort_indices()
    if not allow_empty_rows:
        empty = np.flatnonzero(np.diff(rows.indptr) == 0)
        if len(empty):
            raise ValueError(
                f"{len(empty)} user row(s) are empty (first: row {empty[0]}); a model cannot "
                "recommend from no history. Drop them, or use a popularity ranking for cold users"
            )
    return rows


class Recommender(ABC):
    """Base of every recvae model.

    Subclasses implement :meth:`fit`, :meth:`score`, :meth:`save` and
    :meth:`load`; :meth:`recommend` and :meth:`recommend_for_items` build on
    :meth:`score`. Learned state lives in attributes with a trailing
    underscore, set by ``fit``.
    """

    item_ids_: np.ndarray | None = None
    n_items_: int | None = None

    # ---------------------------------------------------------------- to implement
    @abstractmethod
    def fit(self, train, validation=None) -> Recommender:
        """Learn from a users x items training matrix (or an Interactions / Split)."""

    @abstractmethod
    def score(self, user_rows) -> np.ndarray:
        """(users, items) scores for users given by their interaction rows; higher is better."""

    @abstractmethod
    def save(self, path: str | Path) -> Path:
        """Write the fitted model to ``path`` (weights, config and id maps)."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path) -> Recommender:
        """Read a model written by :meth:`save`."""

    # ---------------------------------------------------------------- shared
    def embed_users(self, user_rows):
        """User factors, for models that have them."""
        raise NotImplementedError(f"{type(self).__name__} has no user embeddings")

    def item_embeddings(self) -> np.ndarray:
        """Item factors, for models that have them."""
        raise NotImplementedError(f"{type(self).__name__} has no item embeddings")

    def _check_fitted(self) -> None:
        if self.n_items_ is None:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(train) first")

    def recommend(self, user_rows, k: int = 10, *, filter_seen: bool = True) -> Recommendations:
        """Top-k items for each user row, excluding the row's own items by default."""
        self._check_fitted()
        rows = as_user_rows(user_rows, self.n_items_)
        n_candidates = self.n_items_ - (int(np.diff(rows.indptr).max()) if filter_seen and rows.nnz else 0)
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer; got {k!r}")
        if k > n_candidates:
            raise ValueError(
                f"k={k} exceeds the {n_candidates} items that can be recommended to every user "
                f"({self.n_items_} items{', minus the most active user’s seen items' if filter_seen else ''}); "
                "ask for fewer"
            )
        from recvae.metrics import mask_seen, top_k

        scores = np.asarray(self.score(rows), dtype=np.float32)
        if filter_seen:
            mask_seen(scores, rows)
        items = top_k(scores, k)
        top_scores = np.take_along_axis(scores, items, axis=1)
        item_ids = self.item_ids_[items] if self.item_ids_ is not None else None
        return Recommendations(items=items, scores=top_scores, item_ids=item_ids)

    def rows_from_item_ids(self, raw_item_ids) -> sp.csr_matrix:
        """One user row from raw item ids (the model must hold the item id map)."""
        self._check_fitted()
        if self.item_ids_ is None:
            raise ValueError(
                "this model has no item id map (it was fitted on a bare matrix); fit it on an "
                "Interactions or Split, or build the row yourself and call recommend()"
            )
        raw = np.atleast_1d(np.asarray(raw_item_ids))
        if raw.size == 0:
            raise ValueError("a new user needs at least one item in their history")
        positions = _item_lookup(self.item_ids_).get_indexer(raw)
        if (positions < 0).any():
            unknown = raw[positions < 0][:5].tolist()
            raise KeyError(
                f"unknown item id(s) {unknown}: not in the training catalogue of {self.n_items_} items"
            )
        positions = np.unique(positions)
        return sp.csr_matrix(
            (np.ones(len(positions), np.float32), positions, [0, len(positions)]), shape=(1, self.n_items_)
        )

    def recommend_for_items(self, raw_item_ids, k: int = 10) -> Recommendations:
        """Top-k for a new user given the raw ids of the items they interacted with.

        The user is folded in (no retraining); their items are never recommended back.
        """
        return self.recommend(self.rows_from_item_ids(raw_item_ids), k=k, filter_seen=True)


def _item_lookup(item_ids: np.ndarray):
    import pandas as pd

    return pd.Index(item_ids)


def ids_to_array(ids: np.ndarray | None) -> tuple[str | None, np.ndarray | None]:
    """Raw ids as (kind, plain array) for pickle-free files: int64, float64 or unicode."""
    if ids is None:
        return None, None
    ids = np.asarray(ids)
    if np.issubdtype(ids.dtype, np.integer) or ids.dtype == bool:
        return "int", ids.astype(np.int64)
    if np.issubdtype(ids.dtype, np.floating):
        return "float", ids.astype(np.float64)
    return "str", np.asarray([str(v) for v in ids.tolist()], dtype=str)


def ids_from_array(kind: str | None, values: np.ndarray | None) -> np.ndarray | None:
    """Inverse of :func:`ids_to_array` (string ids come back as an object array)."""
    if kind is None or values is None:
        return None
    return values.astype(object) if kind == "str" else values
