"""Beyond-accuracy metrics of top-k lists: novelty, intra-list diversity, popularity bias, exposure.

Accuracy (:mod:`recvae.evaluation.metrics`) asks whether a list holds the items a user went on
to choose; these ask what kind of list it is. Each takes the top-k lists (users x k item
columns, as :func:`recvae.evaluation.metrics.top_k` returns them) and the training data the
model learned from; the definitions, with formulas and references, are in ``docs/metrics.md``.

Per user (one value per list; the harness averages them with a 95% CI as it does accuracy):

- :func:`novelty_at_k`: mean self-information ``-log2 p_i`` of the listed items, ``p_i`` the
  share of training users who interacted with item ``i`` (Vargas & Castells 2011);
- :func:`intra_list_diversity_at_k`: mean pairwise cosine distance within the list, over item
  embeddings or over the item columns of the training matrix (co-occurrence);
- :func:`arp_at_k`: average recommendation popularity, the mean ``p_i`` of the listed items
  (Abdollahpouri et al. 2019, popularity as a share of training users);
- :func:`long_tail_at_k`: share of the listed items outside the popularity head, the most
  popular items that together hold :data:`HEAD_SHARE` of the training interactions.

Over every list at once (one number per evaluation, no CI): :func:`gini_at_k` (the Gini index
of item exposure over the whole catalogue) and catalogue coverage
(:func:`recvae.evaluation.metrics.coverage_at_k`).

Popularity counts *distinct training users* per item (a row of the training matrix with a
nonzero cell), so repeated or weighted events count once. Everything is vectorised over users:
diversity sums each batch of lists' item vectors through one sparse product, never a per-user
loop, never a pair list and never an items x items matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recvae.evaluation.metrics import _check_item_range, _check_k, _check_top_items, _to_csr, coverage_at_k

__all__ = [
    "UNSEEN_COUNT",
    "HEAD_SHARE",
    "ItemPopularity",
    "novelty_at_k",
    "intra_list_diversity_at_k",
    "arp_at_k",
    "long_tail_at_k",
    "item_exposure",
    "gini_index",
    "gini_at_k",
    "coverage_at_k",
    "PER_USER",
    "GLOBAL",
    "NEEDS_POPULARITY",
]

#: The user count novelty gives an item no training user interacted with: half a user, so its
#: self-information ``log2(N) + 1`` is one bit above that of an item seen by one user of ``N``.
UNSEEN_COUNT = 0.5
#: The popularity head holds this share of the training interactions (the long tail the rest).
HEAD_SHARE = 0.8
#: (list, training user) cells of one co-occurrence batch's product, at most (float32, sparse).
_BATCH_CELLS = 1 << 24
#: Users per batch of the embedding path (a batch x dimensions product).
_EMBEDDING_BATCH = 4096

#: Per-user beyond-accuracy metrics by name (see :func:`per_user_values`).
PER_USER = ("novelty", "diversity", "arp", "long_tail")
#: Metrics with one value per evaluation, computed from every list's item exposure.
GLOBAL = ("gini", "coverage")
#: The metrics that need the training matrix (diversity only without item embeddings).
NEEDS_POPULARITY = ("novelty", "arp", "long_tail")


@dataclass(frozen=True)
class ItemPopularity:
    """How many distinct training users interacted with each item.

    Attributes:
        counts: (n_items,) int64, the training users with a nonzero cell in each item's column.
        n_users: the number of training users (rows of the training matrix).
    """

    counts: np.ndarray
    n_users: int

    @classmethod
    def from_train(cls, train: sp.spmatrix) -> ItemPopularity:
        """Counts from a (training users x items) scipy sparse matrix; stored zeros do not count."""
        csr = _to_csr(train, name="train")
        binary = _binary(csr)
        counts = np.bincount(binary.indices, minlength=csr.shape[1]).astype(np.int64)
        return cls(counts=counts, n_users=int(csr.shape[0]))

    @property
    def n_items(self) -> int:
        """The catalogue size."""
        return int(self.counts.size)

    def share(self) -> np.ndarray:
        """``p_i = counts_i / n_users`` per item (0 for every item when there are no training users)."""
        return self.counts / max(self.n_users, 1)

    def self_information(self) -> np.ndarray:
        """``-log2 p_i`` per item, an item with no training user counted as :data:`UNSEEN_COUNT` users."""
        if self.n_users < 1:
            raise ValueError("novelty needs at least one training user; the training matrix has no rows")
        counts = np.where(self.counts > 0, self.counts, UNSEEN_COUNT).astype(np.float64)
        return -np.log2(counts / self.n_users)

    def head(self, share: float = HEAD_SHARE) -> np.ndarray:
        """(n_items,) bool: the popularity head, the items that together hold ``share`` of the interactions.

        Items are taken by decreasing count until their counts reach ``share`` of the total; every
        item with the count at which that happens is in the head too (ties never split by item
        index). An item no training user interacted with is never in the head.
        """
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must lie in (0, 1]; got {share!r}")
        total = int(self.counts.sum())
        if total == 0:
            return np.zeros(self.n_items, dtype=bool)
        ordered = np.sort(self.counts)[::-1]
        # integer counts against share * total, less a rounding margin (0.7 * 10 is 7.000000000000001)
        reached = int(np.searchsorted(np.cumsum(ordered), share * total * (1 - 1e-12), side="left"))
        threshold = ordered[min(reached, ordered.size - 1)]
        return (self.counts >= threshold) & (self.counts > 0)


def _binary(csr: sp.csr_matrix) -> sp.csr_matrix:
    """A canonical copy holding a 1 at each nonzero cell (duplicates merged, stored zeros dropped)."""
    out = csr.copy()
    out.sum_duplicates()
    out.eliminate_zeros()
    out.data = np.ones(out.nnz, dtype=np.float32)
    return out


def _popularity(popularity: ItemPopularity | sp.spmatrix) -> ItemPopularity:
    if isinstance(popularity, ItemPopularity):
        return popularity
    if sp.issparse(popularity):
        return ItemPopularity.from_train(popularity)
    raise TypeError(f"popularity must be an ItemPopularity or the (training users x items) scipy sparse matrix; "
                    f"got {type(popularity).__name__}")


def _lists(top_items: np.ndarray, k: int, n_items: int) -> np.ndarray:
    k = _check_k(k)
    top = _check_top_items(top_items, k).astype(np.int64, copy=False)
    _check_item_range(top, n_items)
    return top


# --------------------------------------------------------------------------- per-user metrics
def novelty_at_k(top_items: np.ndarray, popularity: ItemPopularity | sp.spmatrix, k: int) -> np.ndarray:
    """Mean self-information of each user's top k: ``(1/k) sum_{i in L_u} -log2 p_i`` (Vargas & Castells 2011).

    ``p_i`` is the share of training users who interacted with item ``i``; an item none did counts
    as :data:`UNSEEN_COUNT` users. Higher: rarer items.

    Args:
        top_items: (n_users, K >= k) int array from :func:`recvae.evaluation.metrics.top_k`.
        popularity: an :class:`ItemPopularity` or the training matrix to count it from.
        k: cut-off, >= 1.

    Returns:
        (n_users,) float64 bits, in ``[0, log2(n_train_users) + 1]``.
    """
    pop = _popularity(popularity)
    top = _lists(top_items, k, pop.n_items)
    return pop.self_information()[top].mean(axis=1) if top.size else np.zeros(top.shape[0])


def arp_at_k(top_items: np.ndarray, popularity: ItemPopularity | sp.spmatrix, k: int) -> np.ndarray:
    """Average recommendation popularity: ``(1/k) sum_{i in L_u} p_i`` (Abdollahpouri et al. 2019).

    ``p_i`` is the share of training users who interacted with item ``i`` (the paper's count of
    item ratings divided by the number of training users, so that datasets compare). Lower: less
    popular items.

    Returns:
        (n_users,) float64 in [0, 1].
    """
    pop = _popularity(popularity)
    top = _lists(top_items, k, pop.n_items)
    return pop.share()[top].mean(axis=1) if top.size else np.zeros(top.shape[0])


def long_tail_at_k(top_items: np.ndarray, popularity: ItemPopularity | sp.spmatrix, k: int,
                   *, head_share: float = HEAD_SHARE) -> np.ndarray:
    """Long-tail share: the fraction of each user's top k outside the popularity head.

    The head (:meth:`ItemPopularity.head`) is the most popular items that together hold
    ``head_share`` (80%) of the training interactions; every other item, those no training user
    interacted with included, is in the long tail. Abdollahpouri et al. (2019) call its mean APLT.

    Returns:
        (n_users,) float64 in [0, 1].
    """
    pop = _popularity(popularity)
    top = _lists(top_items, k, pop.n_items)
    tail = ~pop.head(head_share)
    return tail[top].mean(axis=1) if top.size else np.zeros(top.shape[0])


def intra_list_diversity_at_k(top_items: np.ndarray, k: int, *, item_embeddings: np.ndarray | None = None,
                              train: sp.spmatrix | None = None, batch_cells: int = _BATCH_CELLS) -> np.ndarray:
    """Intra-list diversity: the mean cosine distance over the pairs of each user's top k.

    ``ILD_u = 2 / (k (k - 1)) sum_{i < j in L_u} (1 - cos(v_i, v_j))`` (Ziegler et al. 2005; Vargas &
    Castells 2011), with ``v_i`` item ``i``'s row of ``item_embeddings`` or, given ``train``
    instead, its column of the binarised training matrix (item co-occurrence: ``cos`` is the number
    of training users who interacted with both items over the geometric mean of their counts). A
    zero vector (an item no training user interacted with) has cosine 0 with every item.

    Both use ``sum_{i != j} u_i . u_j = |sum_i u_i|^2 - sum_i |u_i|^2`` over the unit vectors
    ``u_i``: one sparse (lists x items) product per batch of lists sums each list's vectors, so no
    pair is formed and no items x items matrix is built. Over co-occurrence the sums are sparse
    vectors over the training users: a batch holds ``batch_cells / n_train_users`` lists and costs
    time proportional to the summed popularity of their items.

    Args:
        top_items: (n_users, K >= k) int array from :func:`recvae.evaluation.metrics.top_k`.
        k: cut-off, >= 2 (a single item has no pair).
        item_embeddings: (n_items, d) item vectors (a model's ``item_embeddings()``).
        train: (training users x items) scipy sparse matrix; exactly one of the two is given.
        batch_cells: (list, training user) cells of one co-occurrence batch, at most.

    Returns:
        (n_users,) float64; in [0, 1] for co-occurrence (nonnegative vectors), [0, 2] for embeddings.
    """
    k = _check_k(k)
    if k < 2:
        raise ValueError(f"diversity@{k}: intra-list diversity compares pairs of items; choose k >= 2")
    if (item_embeddings is None) == (train is None):
        raise ValueError("give exactly one of item_embeddings (the model's item vectors) and train "
                         "(the training matrix, for item co-occurrence)")
    if item_embeddings is not None:
        vectors = np.asarray(item_embeddings)
        if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.number):
            raise ValueError(f"item_embeddings must be a 2-D numeric (items x dimensions) array; got shape "
                             f"{vectors.shape} of {vectors.dtype}")
        top = _lists(top_items, k, vectors.shape[0])
        return _embedding_diversity(top, vectors)
    csr = _to_csr(train, name="train")
    top = _lists(top_items, k, csr.shape[1])
    return _cooccurrence_diversity(top, _binary(csr), max(int(batch_cells), 1))


def _embedding_diversity(top: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    n_users, k = top.shape
    dtype = np.float64 if vectors.dtype == np.float64 else np.float32
    vectors = vectors.astype(dtype, copy=False)
    norms = np.linalg.norm(vectors, axis=1)
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(dtype)
    out = np.empty(n_users, dtype=np.float64)
    for start in range(0, n_users, _EMBEDDING_BATCH):
        rows = top[start:start + _EMBEDDING_BATCH]
        b = rows.shape[0]
        # one row per list, a 1/|v_i| at each listed item: (lists @ vectors) sums the unit vectors
        lists = sp.csr_matrix((inverse[rows].ravel(), rows.ravel(), np.arange(0, b * k + 1, k)),
                              shape=(b, vectors.shape[0]))
        summed = np.asarray(lists @ vectors, dtype=np.float64)
        own = (inverse[rows] > 0).sum(axis=1)  # |unit v_i|^2: 1, or 0 for a zero vector
        pairs = (summed * summed).sum(axis=1) - own
        out[start:start + b] = 1.0 - pairs / (k * (k - 1))
    return out


def _cooccurrence_diversity(top: np.ndarray, csr: sp.csr_matrix, batch_cells: int) -> np.ndarray:
    n_users, k = top.shape
    n_train, n_items = csr.shape
    counts = np.bincount(csr.indices, minlength=n_items)
    inverse = np.divide(1.0, np.sqrt(counts), out=np.zeros(n_items), where=counts > 0).astype(np.float32)
    by_item = csr.T.tocsr()  # items x training users: row i is item i's column
    out = np.empty(n_users, dtype=np.float64)
    step = max(1, batch_cells // max(n_train, 1))
    for start in range(0, n_users, step):
        rows = top[start:start + step]
        b = rows.shape[0]
        lists = sp.csr_matrix((inverse[rows].ravel(), rows.ravel(), np.arange(0, b * k + 1, k)), shape=(b, n_items))
        summed = lists @ by_item  # (lists x training users): the sum of each list's unit columns
        pairs = np.asarray(summed.multiply(summed).sum(axis=1), dtype=np.float64).ravel() - (inverse[rows] > 0).sum(1)
        out[start:start + b] = 1.0 - pairs / (k * (k - 1))
    return out


# --------------------------------------------------------------------------- over every list
def item_exposure(top_items: np.ndarray, n_items: int, k: int) -> np.ndarray:
    """(n_items,) int64: in how many users' top k each item appears."""
    n_items = _check_k(n_items, name="n_items")
    top = _lists(top_items, k, n_items)
    return np.bincount(top.ravel(), minlength=n_items).astype(np.int64)


def gini_index(exposure: np.ndarray) -> float:
    """Gini index of nonnegative values: ``sum_j (2j - n - 1) e_(j) / (n sum_j e_j)``, ``e`` sorted ascending.

    0 when every item has the same exposure; ``(n - 1) / n`` when one item has all of it. NaN when
    the total is 0 (no lists).
    """
    values = np.sort(np.asarray(exposure, dtype=np.float64).ravel())
    n, total = values.size, float(values.sum())
    if n == 0 or total <= 0:
        return float("nan")
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(((2 * ranks - n - 1) * values).sum() / (n * total))


def gini_at_k(top_items: np.ndarray, n_items: int, k: int) -> float:
    """Gini index of item exposure over the whole catalogue (items never listed included), across
    every user's top k (Fleder & Hosanagar 2009). 0: every item as exposed; near 1: one item only.
    One number per evaluation."""
    return gini_index(item_exposure(top_items, n_items, k))


# --------------------------------------------------------------------------- by name
def per_user_values(name: str, top_items: np.ndarray, k: int, *, popularity: ItemPopularity | None,
                    item_embeddings: np.ndarray | None = None, train: sp.spmatrix | None = None) -> np.ndarray:
    """The per-user metric ``name`` (one of :data:`PER_USER`) of each list, by the harness.

    ``diversity`` uses ``item_embeddings`` when given, else the co-occurrence of ``train``.
    """
    if name == "diversity":
        if item_embeddings is not None:
            return intra_list_diversity_at_k(top_items, k, item_embeddings=item_embeddings)
        return intra_list_diversity_at_k(top_items, k, train=train)
    functions = {"novelty": novelty_at_k, "arp": arp_at_k, "long_tail": long_tail_at_k}
    if name not in functions:
        raise ValueError(f"unknown beyond-accuracy metric {name!r}; choose from {list(PER_USER)}")
    return functions[name](top_items, popularity, k)
