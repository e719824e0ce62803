"""Top-k over the catalogue a block of items at a time, so that memory is bounded by a budget.

Ranking a batch of users over the full catalogue needs their users x items scores. At a
million items that is 4 GB per thousand users (float32) before any temporaries. Here the
items are scored in blocks ``[start, stop)`` and a running top-k is merged block by block:
peak memory is about ``users x block`` cells, whatever the catalogue size.

- :func:`plan_blocks` picks the user batch and the item block from a memory budget
  (``max_memory`` bytes; :data:`DEFAULT_MAX_MEMORY` is 1 GiB).
- :func:`top_k_blocks` ranks one user batch: it asks a *block scorer* ``(start, stop) ->
  scores`` for each block, masks excluded items and keeps only candidate items within the
  block, and merges the block's top-k into the running one.
- :func:`ordered_top_k` is the per-block top-k on a torch tensor (any device).

Ties are broken exactly as :func:`recvae.evaluation.metrics.top_k` (and so
``recvae.models.ranking.rank_items``) breaks them: by the lower item index, both in which
items are kept and in their order. Blocks are merged in item order with a stable sort, so
the result does not depend on the block size: blocked and unblocked rankings of the same
scores are identical, item for item.

Block scorers may return numpy arrays or torch tensors (on any device: masking and top-k
run there); the arrays they return are modified in place, so they must be fresh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from recvae.runtime import memory
from recvae.runtime.memory import require_memory

__all__ = ["DEFAULT_MAX_MEMORY", "SCORE_CELL_BYTES", "TOP_K_CELL_BYTES", "MIN_ITEM_BLOCK", "BlockPlan",
           "plan_blocks", "top_k_blocks", "ordered_top_k", "check_max_memory"]

#: The default memory budget of one ranking step (bytes): 1 GiB.
DEFAULT_MAX_MEMORY = 1 << 30
#: Bytes per (user, item) cell of a scored block: the float32 score (4) plus the ranking's
#: temporaries (comparison and candidate masks, the top-k's per-row buffers), with room to spare.
SCORE_CELL_BYTES = 16
#: Bytes per (user, rank) of the running top-k: values and indices of the running and the
#: block's top-k, their concatenation and the merge sort's output.
TOP_K_CELL_BYTES = 64
#: Blocks are at least this many items (or the catalogue) before users are batched further.
MIN_ITEM_BLOCK = 4096
#: Cells of a block re-ranked at once where ties straddle the k-th place (popularity: every row).
_TIE_CELLS = 1 << 18

BlockScorer = Callable[[int, int], "np.ndarray | torch.Tensor"]


@dataclass(frozen=True)
class BlockPlan:
    """How a ranking step is cut: users ``user_batch`` at a time, items ``item_block`` at a time.

    ``item_block`` equal to the number of items means one block (the unblocked path).
    """

    user_batch: int
    item_block: int

    def n_blocks(self, n_items: int) -> int:
        """How many item blocks cover ``n_items`` items."""
        return -(-int(n_items) // self.item_block)


def check_max_memory(max_memory) -> int:
    """``max_memory`` as an int of bytes (None: :data:`DEFAULT_MAX_MEMORY`); raises on anything else."""
    if max_memory is None:
        return DEFAULT_MAX_MEMORY
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, np.integer)) or max_memory < 1:
        raise ValueError(f"max_memory must be a positive number of bytes (e.g. 2**30 for 1 GiB); got {max_memory!r}")
    return int(max_memory)


def plan_blocks(n_users: int, n_items: int, k: int, max_memory: int | None = None, *, blockwise: bool = True,
                cell_bytes: float = SCORE_CELL_BYTES, available: int | None = None) -> BlockPlan:
    """The user batch and item block whose ranking fits in ``max_memory`` bytes.

    A step over ``u`` users and a block of ``b`` items takes about
    ``u · (b · cell_bytes + k · TOP_K_CELL_BYTES)`` bytes: ``cell_bytes`` per scored cell
    (:data:`SCORE_CELL_BYTES` plus whatever the model's block scorer allocates per cell) and
    the running top-k. The rule:

    1. everything at once (``n_users`` users, one block) when it fits;
    2. a model that scores in blocks (``blockwise``): users are batched so that a block of
       ``min(n_items, max(k, MIN_ITEM_BLOCK))`` items fits, then the block takes the rest of
       the budget (never more than the catalogue);
    3. a model that scores the whole catalogue at once: users are batched to fit, one block.

    At least one user and one item always make a step: a budget below one user's needs is
    exceeded rather than refused (with one block per item at worst). The budget never exceeds
    the memory available; a step that does not fit in it even at one user is refused.

    Args:
        n_users, n_items: the users to rank and the catalogue size (>= 1).
        k: items kept per user.
        max_memory: the budget in bytes (None: :data:`DEFAULT_MAX_MEMORY`).
        blockwise: whether the model scores a block of items in memory proportional to the block.
        cell_bytes: bytes per scored (user, item) cell.
        available: the bytes available (default: :func:`recvae.runtime.memory.available_memory_bytes` now).

    Raises:
        recvae.runtime.memory.InsufficientMemoryError: one user's step does not fit in the available memory.
    """
    max_memory = check_max_memory(max_memory)
    have = memory.available_memory_bytes() if available is None else int(available)
    plan = _plan(n_users, n_items, k, min(max_memory, max(1, have)), blockwise, cell_bytes)
    k = max(1, min(int(k), int(n_items)))
    score, top = plan.user_batch * plan.item_block * cell_bytes, plan.user_batch * k * TOP_K_CELL_BYTES
    if score + top > have:  # only when even one user's step does not fit
        require_memory(f"ranking {plan.user_batch:,} user(s) over {int(n_items):,} items",
                       {"score block": score, "running top-k": top},
                       "free memory, or score with a model that ranks blocks of items (one block per user)",
                       available=have)
    return plan


def _plan(n_users: int, n_items: int, k: int, max_memory: int, blockwise: bool, cell_bytes: float) -> BlockPlan:
    n_users, n_items = max(1, int(n_users)), int(n_items)
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1; got {n_items}")
    k = max(1, min(int(k), n_items))
    per_user_topk = k * TOP_K_CELL_BYTES
    if n_users * (n_items * cell_bytes + per_user_topk) <= max_memory:
        return BlockPlan(n_users, n_items)
    if not blockwise:
        return BlockPlan(int(min(n_users, max(1, max_memory // (n_items * cell_bytes + per_user_topk)))), n_items)
    min_block = min(n_items, max(k, MIN_ITEM_BLOCK))
    users = int(min(n_users, max(1, max_memory // (min_block * cell_bytes + per_user_topk))))
    block = int((max_memory / users - per_user_topk) // cell_bytes)
    return BlockPlan(users, int(min(n_items, max(1, block))))


def ordered_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of each row's ``k`` largest scores, best first, ties by the lower index.

    The tie rule of :func:`recvae.evaluation.metrics.top_k`, on a torch tensor of any device.
    ``torch.topk`` picks arbitrarily among items tied at the k-th score; asking it for ``k + 1``
    shows which rows have such a tie (their ``k + 1``-th score equals the k-th), and only
    those rows are redone, keeping the lowest indices (in slices of rows, so that the extra
    memory stays small). Then each row is ordered by descending score, ascending index among
    equal scores. ``scores`` must hold no NaN.
    """
    n, width = scores.shape
    k = int(k)
    if n == 0 or k == 0:
        return scores.new_empty((n, k)), torch.empty((n, k), dtype=torch.int64, device=scores.device)
    if k < width:
        values, indices = torch.topk(scores, k + 1, dim=1, sorted=True)
        tied = torch.nonzero(values[:, k] == values[:, k - 1]).flatten()
        values, indices = values[:, :k].contiguous(), indices[:, :k].contiguous()
        step = max(1, _TIE_CELLS // width)
        for first in range(0, len(tied), step):
            rows = tied[first:first + step]
            sub = scores[rows]
            level = values[rows, k - 1 :]
            above, equal = sub > level, sub == level
            need = k - above.sum(dim=1, keepdim=True, dtype=torch.int32)
            keep = above | (equal & (torch.cumsum(equal, dim=1, dtype=torch.int32) <= need))
            indices[rows] = torch.nonzero(keep)[:, 1].view(len(rows), k)
            values[rows] = torch.gather(sub, 1, indices[rows])
    else:
        values, indices = torch.topk(scores, k, dim=1, sorted=True)
    indices, order = torch.sort(indices, dim=1)
    values = torch.gather(values, 1, order)
    values, order = torch.sort(values, dim=1, descending=True, stable=True)
    return values, torch.gather(indices, 1, order)


def top_k_blocks(
    score_block: BlockScorer,
    n_users: int,
    n_items: int,
    k: int,
    *,
    item_block: int | None = None,
    exclude: sp.spmatrix | Sequence[sp.spmatrix | None] | None = None,
    candidates: sp.spmatrix | None = None,
    restricted: np.ndarray | None = None,
    nan: str = "raise",
    pad: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(items, scores) of each user's top ``k``, scoring ``item_block`` items at a time.

    Semantics are those of ``recvae.models.ranking.rank_items`` over the full score matrix:
    excluded items (each mask of ``exclude``, (users, items) sparse, nonzero cells) are
    never returned; with ``candidates`` ((users, items) sparse) only its items may be,
    for the rows ``restricted`` selects (bool per row; default all); rows with fewer than
    ``k`` eligible items are padded with item -1 and score -inf.

    Args:
        score_block: ``(start, stop) -> (n_users, stop - start)`` float scores of item
            columns ``[start, stop)`` (numpy or torch; modified in place).
        n_users, n_items: the batch's users and the catalogue size.
        k: items per user (at most ``n_items``).
        item_block: items per block (None: the whole catalogue in one block).
        nan: ``"raise"`` (as :func:`recvae.evaluation.metrics.top_k`: a NaN score that
            survives masking is a model bug) or ``"lowest"`` (rank NaN below every item).
        pad: mark places holding a masked (-inf) item with item -1, as ``rank_items``; False
            keeps those items' columns (lowest first), as ``metrics.top_k`` after
            ``mask_seen`` (the evaluation harness: metrics need real item columns).

    Returns:
        ``(n_users, k)`` int64 item columns and float32 scores (numpy).
    """
    if nan not in ("raise", "lowest"):
        raise ValueError(f"nan must be 'raise' or 'lowest'; got {nan!r}")
    k = int(k)
    if not 1 <= k <= n_items:
        raise ValueError(f"k must lie in [1, {n_items}] (the number of items); got {k}")
    item_block = n_items if item_block is None else max(1, min(int(item_block), n_items))
    masks = [_by_column(m, n_users, n_items) for m in ([exclude] if sp.issparse(exclude) else exclude or ())
             if m is not None and m.nnz]
    allowed = None if candidates is None else _by_column(candidates, n_users, n_items, drop_zeros=False)
    if n_users == 0:
        return np.empty((0, k), dtype=np.int64), np.empty((0, k), dtype=np.float32)
    best_values = best_items = None
    for start in range(0, n_items, item_block):
        stop = min(n_items, start + item_block)
        block = _as_tensor(score_block(start, stop))
        if tuple(block.shape) != (n_users, stop - start):
            raise ValueError(f"the block scorer returned shape {tuple(block.shape)} for {n_users} users and items "
                             f"[{start}, {stop}); expected {(n_users, stop - start)}")
        _mask_block(block, start, stop, allowed, restricted, masks, nan)
        values, items = ordered_top_k(block, min(k, stop - start))
        items += start
        del block
        if best_values is None:
            best_values, best_items = values, items
        else:
            best_values, best_items = _merge_top_k(best_values, best_items, values, items, k)
    if pad:
        best_items[torch.isneginf(best_values)] = -1
    return best_items.cpu().numpy().astype(np.int64, copy=False), best_values.cpu().numpy().astype(np.float32,
                                                                                                   copy=False)


# ---------------------------------------------------------------------- helpers
def _mask_block(block: torch.Tensor, start: int, stop: int, allowed: sp.csc_matrix | None,
                restricted: np.ndarray | None, masks: list[sp.csc_matrix], nan: str) -> None:
    """Set to -inf, in place, the block's cells (item columns ``[start, stop)``) that may not be returned:
    outside the candidates (on the ``restricted`` rows), excluded, or NaN (``nan="lowest"``; else refused)."""
    if allowed is not None:
        keep = torch.zeros(block.shape, dtype=torch.bool, device=block.device)
        rows, columns = _cells(allowed, start, stop, block.device)
        keep[rows, columns] = True
        if restricted is not None:
            keep[torch.from_numpy(~np.asarray(restricted, dtype=bool)).to(block.device)] = True
        block.masked_fill_(~keep, float("-inf"))
    for mask in masks:
        rows, columns = _cells(mask, start, stop, block.device)
        block[rows, columns] = float("-inf")
    nans = torch.isnan(block)
    if nans.any():
        if nan == "raise":
            raise ValueError(
                f"scores contains {int(nans.sum())} NaN value(s); NaN has no rank. Check the model output "
                "(or replace them, e.g. np.nan_to_num(scores, nan=-np.inf))")
        block.masked_fill_(nans, float("-inf"))


def _merge_top_k(best_values: torch.Tensor, best_items: torch.Tensor, values: torch.Tensor, items: torch.Tensor,
                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The running top-k merged with a later block's: the best ``k`` of both, by (score desc, index asc)."""
    # Running items all have lower indices than the block's, and each list is ordered by (score desc,
    # index asc): a stable sort of the concatenation is that order over both.
    values, items = torch.cat([best_values, values], dim=1), torch.cat([best_items, items], dim=1)
    values, order = torch.sort(values, dim=1, descending=True, stable=True)
    return values[:, :k], torch.gather(items, 1, order[:, :k])


def _as_tensor(scores) -> torch.Tensor:
    if isinstance(scores, torch.Tensor):
        return scores if scores.dtype == torch.float32 else scores.float()
    return torch.from_numpy(np.asarray(scores, dtype=np.float32))


def _by_column(mask: sp.spmatrix, n_users: int, n_items: int, drop_zeros: bool = True) -> sp.csc_matrix:
    """A mask's cells as CSC (a block's cells are then one contiguous slice); with ``drop_zeros``
    only its nonzero cells (exclusions mask nonzero cells, as ``mask_seen``; candidates are every
    stored cell, as ``rank_items``)."""
    if mask.shape != (n_users, n_items):
        raise ValueError(f"a mask of shape {mask.shape} for {n_users} users x {n_items} items")
    csc = sp.csc_matrix(mask)
    if drop_zeros and csc.nnz:
        csc = csc.copy()
        csc.eliminate_zeros()
    return csc


def _cells(mask: sp.csc_matrix, start: int, stop: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, columns - start) of the mask's cells in item columns [start, stop)."""
    lo, hi = mask.indptr[start], mask.indptr[stop]
    rows = mask.indices[lo:hi].astype(np.int64)
    columns = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(mask.indptr[start:stop + 1]))
    return torch.from_numpy(rows).to(device), torch.from_numpy(columns).to(device)
