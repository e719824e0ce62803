"""What a model answers: top-k lists (:class:`Recommendations`) and user embeddings (:class:`UserEmbeddings`).

The same types for every model; :mod:`recvae.models.base` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Recommendations", "UserEmbeddings"]


@dataclass
class Recommendations:
    """Top-k items per user, best first.

    A user with fewer than ``k`` candidate items (everything else seen,
    excluded or outside the allowed candidates) gets padding at the end of
    the row: item ``-1`` with score ``-inf`` (``valid`` is False there).
    :meth:`to_frame` leaves padding out.

    Attributes:
        items: (users, k) item column indices.
        scores: (users, k) the model's scores of those items.
        item_ids: (users, k) raw item ids, when the model knows the id map.
        uncertainty: (users,) mean posterior sigma, when asked (``recommend(uncertainty=True)``).
        rank_spread: (users,) the spread of posterior samples' lists (``uncertainty_samples``).
    """

    items: np.ndarray
    scores: np.ndarray
    item_ids: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    rank_spread: np.ndarray | None = None

    @property
    def valid(self) -> np.ndarray:
        """(users, k) bool: True where a real item stands (False on padding)."""
        return self.items >= 0

    def to_frame(self):
        """A long pandas DataFrame: user row, rank (1-based), item, raw item id, score (no padding)."""
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
        for name in ("uncertainty", "rank_spread"):
            if getattr(self, name) is not None:
                frame[name] = np.repeat(getattr(self, name), k)
        return frame[self.valid.ravel()].reset_index(drop=True)


@dataclass
class UserEmbeddings:
    """Users' embeddings, the same type for every model.

    Attributes:
        mu: (users, d) float32: the posterior mean of z (VAEs), the user code
            (Mult-DAE), or the user factors folded in from the row (ALS, BPR).
        sigma: (users, d) float32 posterior standard deviation (variational
            models), or None for models with point embeddings.

    Unpacks as ``mu, sigma = model.embed_users(rows)``.
    """

    mu: np.ndarray
    sigma: np.ndarray | None = None

    def __iter__(self):
        return iter((self.mu, self.sigma))

    def __getitem__(self, index: int) -> np.ndarray | None:
        return (self.mu, self.sigma)[index]

    @property
    def dim(self) -> int:
        return int(self.mu.shape[1])

    def to_frame(self, user_ids=None):
        """One row per user: ``user_id`` (when given), ``mu_0..``, and ``sigma_0..`` when present."""
        import pandas as pd

        columns = {} if user_ids is None else {"user_id": np.asarray(user_ids)}
        columns.update({f"mu_{j}": self.mu[:, j] for j in range(self.mu.shape[1])})
        if self.sigma is not None:
            columns.update({f"sigma_{j}": self.sigma[:, j] for j in range(self.sigma.shape[1])})
        return pd.DataFrame(columns)
