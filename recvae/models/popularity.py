"""Popularity: every user gets the training item counts (weights summed)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from recvae.models.array_model import ArrayRecommender, training_matrix
from recvae.models.base import as_user_rows

logger = logging.getLogger(__name__)

__all__ = ["Popularity"]


# =============================================================================== popularity
class Popularity(ArrayRecommender):
    """Ranks items by how many training users interacted with them; the same for every user.

    Attributes set by ``fit``: ``item_counts_`` (float32, one per item),
    ``item_ids_``, ``n_items_``.
    """

    block_scoring = True  # a block is the counts' slice

    def __init__(self) -> None:
        self.item_counts_: np.ndarray | None = None

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {}

    def fit(self, train, validation=None) -> Popularity:
        """Count each item's training users. ``validation`` is ignored. Returns self."""
        matrix, item_ids = training_matrix(train, validation)
        self.item_counts_ = matrix.getnnz(axis=0).astype(np.float32)
        self.item_ids_, self.n_items_ = item_ids, matrix.shape[1]
        return self

    def score(self, user_rows) -> np.ndarray:
        """The training counts, repeated for every user row (a fresh, writable array).

        Empty rows are accepted: popularity is what a cold user can be served.
        """
        self._check_fitted()
        rows = as_user_rows(user_rows, self.n_items_, allow_empty_rows=True)
        return np.tile(self.item_counts_, (rows.shape[0], 1))

    def item_block_scorer(self, user_rows):
        """Blocks of :meth:`score`: the counts of items [start, stop) for every row."""
        self._check_fitted()
        n = as_user_rows(user_rows, self.n_items_, allow_empty_rows=True).shape[0]
        return lambda start, stop: np.tile(self.item_counts_[start:stop], (n, 1))

    def _state(self) -> dict[str, np.ndarray]:
        return {"item_counts": self.item_counts_}

    def _expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"item_counts": (self.n_items_,)}

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        self.item_counts_ = arrays["item_counts"]
