"""Ranking a model's scores into each user's top-k: exclusions, candidate lists, a memory budget.

:func:`item_mask` turns an exclusion or candidate list (item columns for every user, or a
per-user sparse matrix) into a (users, items) mask; :func:`rank_items` ranks a full score
matrix with those masks applied; :func:`rank_in_blocks` ranks a model's scores of user rows
within ``max_memory`` bytes, user batch by user batch and item block by item block
(:mod:`recvae.evaluation.ranking`), with the same result. :meth:`Recommender.recommend
<recvae.models.base.Recommender.recommend>` and :class:`recvae.runs.Run` rank through them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from recvae.evaluation.metrics import mask_seen, top_k
from recvae.evaluation.ranking import SCORE_CELL_BYTES, check_max_memory, plan_blocks, top_k_blocks

__all__ = ["item_mask", "rank_items", "rank_in_blocks"]


class BlockScored(Protocol):
    """What :func:`rank_in_blocks` asks of a model; every :class:`~recvae.models.base.Recommender` has it
    (stated here so that base.py, which ranks through this module, is not imported back)."""

    block_scoring: bool

    def block_score_bytes(self, user_rows: sp.csr_matrix) -> float: ...

    def item_block_scorer(self, user_rows: sp.csr_matrix) -> Callable[[int, int], np.ndarray]: ...


def item_mask(spec, n_users: int, n_items: int, what: str) -> sp.csr_matrix | None:
    """Exclusion or candidate items as a (users, items) 0/1 CSR: from column indices for every user,
    a per-user sparse matrix, or None."""
    if spec is None:
        return None
    if sp.issparse(spec):
        mask = sp.csr_matrix(spec, dtype=np.float32)
        if mask.shape != (n_users, n_items):
            raise ValueError(f"{what} must be ({n_users}, {n_items}) (users x items); got {mask.shape}")
        mask.eliminate_zeros()
        mask.data[:] = 1.0
        return mask
    columns = np.unique(np.asarray(spec, dtype=np.int64).ravel())
    if len(columns) and (columns.min() < 0 or columns.max() >= n_items):
        raise ValueError(f"{what} holds item columns outside 0..{n_items - 1}")
    indptr = np.arange(n_users + 1, dtype=np.int64) * len(columns)
    return sp.csr_matrix((np.ones(n_users * len(columns), np.float32), np.tile(columns, n_users), indptr),
                         shape=(n_users, n_items))


def rank_items(
    scores: np.ndarray,
    k: int,
    *,
    exclude: sp.csr_matrix | Sequence[sp.csr_matrix | None] | None = None,
    candidates: sp.csr_matrix | None = None,
    restricted: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(items, scores) of each row's top ``k``, excluded items removed and only candidates kept.

    ``exclude`` is one (rows, items) sparse mask or several (None entries are
    skipped): seen items, exclusion lists ... each masked in turn. ``restricted`` (bool per row, default all) says which rows the candidate
    lists apply to; the other rows may get any item. ``scores`` is modified in
    place. Rows with fewer than ``k`` eligible items are padded with item -1 and
    score -inf.
    """
    scores = np.asarray(scores, dtype=np.float32)
    if candidates is not None:
        allowed = np.zeros(scores.shape, dtype=bool)
        rows = np.repeat(np.arange(scores.shape[0]), np.diff(candidates.indptr))
        allowed[rows, candidates.indices] = True
        if restricted is not None:
            allowed[~np.asarray(restricted, dtype=bool)] = True
        scores[~allowed] = -np.inf
    for mask in [exclude] if sp.issparse(exclude) else exclude or ():
        if mask is not None and mask.nnz:
            mask_seen(scores, mask)
    k = min(int(k), scores.shape[1])
    items = top_k(scores, k)
    top_scores = np.take_along_axis(scores, items, axis=1)
    items[~np.isfinite(top_scores) & (top_scores < 0)] = -1
    return items, top_scores


def rank_in_blocks(
    model: BlockScored,
    user_rows: sp.csr_matrix,
    k: int,
    *,
    exclude: Sequence[sp.csr_matrix | None] | sp.csr_matrix | None = None,
    candidates: sp.csr_matrix | None = None,
    restricted: np.ndarray | None = None,
    max_memory: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rank_items` of ``model``'s scores of ``user_rows``, within ``max_memory`` bytes.

    :func:`recvae.evaluation.ranking.plan_blocks` picks a user batch and an item block
    (everything at once when it fits; None: 1 GiB). For each user batch the model's
    :meth:`Recommender.item_block_scorer` is built once and asked for each block; masks
    and candidate lists are applied per block and a running top-k is merged, with ties
    broken by the lower item index, so the items, their order and their scores are those
    of :func:`rank_items` on the full score matrix (up to the float rounding of a blocked
    matrix product). Models without block scoring are ranked a user batch at a time.

    Args:
        model: a fitted recommender.
        user_rows: validated (users, items) CSR rows (see :func:`as_user_rows`).
        k: items per user (at most the number of items).
        exclude, candidates, restricted: as :func:`rank_items` (sparse, users x items).
    """
    n, n_items = user_rows.shape
    k = min(int(k), n_items)
    max_memory = check_max_memory(max_memory)
    masks = [m for m in ([exclude] if sp.issparse(exclude) else exclude or ()) if m is not None]
    plan = plan_blocks(n, n_items, k, max_memory, blockwise=model.block_scoring,
                       cell_bytes=SCORE_CELL_BYTES + (model.block_score_bytes(user_rows) if model.block_scoring else 0))
    items = np.empty((n, k), dtype=np.int64)
    scores = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, plan.user_batch):
        stop = min(n, start + plan.user_batch)
        part = slice(start, stop)
        whole = start == 0 and stop == n
        rows = user_rows if whole else user_rows[part]
        items[part], scores[part] = top_k_blocks(
            model.item_block_scorer(rows), stop - start, n_items, k, item_block=plan.item_block,
            exclude=[m if whole else m[part] for m in masks],
            candidates=None if candidates is None else candidates if whole else candidates[part],
            restricted=None if restricted is None else np.asarray(restricted, dtype=bool)[part])
    return items, scores
