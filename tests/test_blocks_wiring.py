"""Blocked algorithms against oracles of their own: every path that cuts work into blocks (sparse EASE's
fit, each model's item block scorer, the ranking's user batches and item blocks) at sizes where it takes
several blocks, on weighted (non-binary) rows, equal to the unblocked result and to a dense numpy
reference written here; a refit leaves no cached derivative behind.

Oracles: sparse EASE's weights by a per-item loop (the k largest co-occurrence counts, ties to the lower
item, then the ridge solve), EASE / EDLAE's closed form, ALS's and BPR's fold-in formulas, popularity's
counts of users and the joint model's linear path ``s · x W``, all in float64 numpy; rankings by a
per-row ``np.lexsort`` (score descending, ties to the lower item, masked items last and padded with -1).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recvae.evaluation.ranking import SCORE_CELL_BYTES, TOP_K_CELL_BYTES, BlockPlan, plan_blocks
from recvae.models import SparseEASE, make_model
from recvae.models import sparse_ease as sparse_module
from recvae.models.base import rank_in_blocks

pytestmark = pytest.mark.usefixtures("one_torch_thread", "one_blas_thread")

#: Interaction weights: multiples of 0.5, so every Gram entry is exact in float32 as in float64 (the
#: oracle and the model then pick the same neighbours, ties included), and never all integers.
LEVELS = np.array([0.5, 1.0, 1.5, 2.0, 3.0], np.float32)
N_ITEMS = 61  # prime: no block size divides it
K = 5
#: With k = 5 and 61 items this budget ranks one user at a time in blocks of at most 23 items (>= 3 blocks).
TINY = 700

TORCH = {"epochs": 1, "batch_size": 50, "progress": False, "seed": 0}
MODELS = {
    "popularity": ("popularity", {}),
    "ease": ("ease", {"l2": 20.0}),
    "edlae": ("edlae", {"l2": 20.0, "dropout": 0.25}),
    "sparse-ease": ("sparse-ease", {"l2": 20.0, "neighbours": 8}),
    "itemknn": ("itemknn", {"k": 10, "num_threads": 1}),
    "als": ("als", {"factors": 6, "iterations": 3, "regularization": 1.0, "alpha": 2.0, "num_threads": 1}),
    "bpr": ("bpr", {"factors": 6, "iterations": 5, "num_threads": 1, "fold_in_l2": 2.0}),
    "mult-vae": ("mult-vae", {"hidden_dims": [16], "latent_dim": 6, **TORCH}),
    "weighted-vae": ("weighted-vae", {"hidden_dims": [16], "latent_dim": 6, **TORCH}),
    "joint-vae": ("joint-vae", {"hidden_dim": 16, "latent_dim": 6, "linear_l2": 20.0, **TORCH}),
    "joint-vae-linear": ("joint-vae", {"hidden_dim": 16, "latent_dim": 6, "linear_l2": 20.0, "paths": "linear",
                                       **TORCH}),
}
#: Sparse products and slices: a block is bit for bit the full scores' columns (documented).
EXACT = {"popularity", "ease", "edlae", "sparse-ease", "itemknn"}


def weighted_rows(n_users: int, n_items: int, density: float, seed: int) -> sp.csr_matrix:
    """Random rows holding the weights of LEVELS (no empty row)."""
    rng = np.random.default_rng(seed)
    x = np.where(rng.random((n_users, n_items)) < density, rng.choice(LEVELS, (n_users, n_items)), 0)
    x[np.arange(n_users), rng.integers(0, n_items, n_users)] = rng.choice(LEVELS, n_users)
    return sp.csr_matrix(x.astype(np.float32))


TRAIN = weighted_rows(150, N_ITEMS, 0.15, seed=0)
OTHER_TRAIN = weighted_rows(150, N_ITEMS, 0.15, seed=7)  # the same shape, other data: for refits
USERS = weighted_rows(24, N_ITEMS, 0.12, seed=1)


# ---------------------------------------------------------------------- oracles
def dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def naive_sparse_ease(x: sp.csr_matrix, l2: float, k: int) -> np.ndarray:
    """Column j: the ridge regression of item j on its k largest co-occurrence counts G_jb > 0 (ties to
    the lower b), as sparse_ease's module docstring states; every other entry 0."""
    g = dense(x).T @ dense(x)
    n = g.shape[0]
    b = np.zeros((n, n))
    for j in range(n):
        row = g[j].copy()
        row[j] = 0.0
        candidates = np.flatnonzero(row > 0)
        chosen = np.sort(candidates[np.lexsort((candidates, -row[candidates]))][:k])
        if len(chosen):
            b[chosen, j] = np.linalg.solve(g[np.ix_(chosen, chosen)] + l2 * np.eye(len(chosen)), g[chosen, j])
    return b


def naive_edlae(x: sp.csr_matrix, l2: float, dropout: float = 0.0) -> np.ndarray:
    """B = I - P diagMat(1/diag(P)), P = (G + λI + p/(1-p) diagMat(diag G))⁻¹ (EASE when p = 0)."""
    g = dense(x).T @ dense(x)
    p = np.linalg.inv(g + np.diag(l2 + dropout / (1.0 - dropout) * np.diag(g)))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def naive_als_scores(y: np.ndarray, rows: sp.csr_matrix, l2: float, alpha: float) -> np.ndarray:
    """Per user: u = (YᵀY + λI + Y_uᵀ diag(α x_u) Y_u)⁻¹ Y_uᵀ (1 + α x_u); scores Y u (ALS's docstring)."""
    y = np.asarray(y, np.float64)
    out = []
    for row in dense(rows):
        items = np.flatnonzero(row)
        yu = y[items]
        a = y.T @ y + l2 * np.eye(y.shape[1]) + yu.T @ (alpha * row[items, None] * yu)
        out.append(y @ np.linalg.solve(a, yu.T @ (1.0 + alpha * row[items])))
    return np.array(out)


def oracle_scores(key: str, model, rows: sp.csr_matrix, train: sp.csr_matrix = TRAIN) -> np.ndarray | None:
    """A float64 numpy reference of ``model.score(rows)``; None where the model has none here."""
    params = MODELS[key][1]
    x = dense(rows)
    if key == "popularity":  # how many training users have each item (weights do not count)
        return np.tile((dense(train) != 0).sum(axis=0), (len(x), 1))
    if key in ("ease", "edlae"):
        return x @ naive_edlae(train, params["l2"], params.get("dropout", 0.0))
    if key == "sparse-ease":
        return x @ naive_sparse_ease(train, model.l2, model.neighbours)
    if key == "itemknn":
        return x @ dense(model.similarity_)
    if key == "als":
        return naive_als_scores(model.item_factors_, rows, params["regularization"], params["alpha"])
    if key == "bpr":  # u = (YᵀY + λ_f I)⁻¹ Yᵀ x, scores Y u
        y = np.asarray(model.item_factors_, np.float64)
        return (np.linalg.solve(y.T @ y + params["fold_in_l2"] * np.eye(y.shape[1]), y.T @ x.T)).T @ y.T
    if key == "joint-vae-linear":  # s · x W
        decoder = model.net_.decoder
        return float(decoder.scale.detach()) * x @ decoder.item_item.weight.detach().double().numpy()
    return None


def naive_top_k(scores, k: int, exclude=(), candidates=None, restricted=None):
    """Each row's k best items (score descending, ties to the lower item); excluded items and, on the
    restricted rows, items outside the candidates never come; places with no eligible item are -1."""
    s = np.array(scores, dtype=np.float64)
    for mask in exclude:
        s[dense(mask) != 0] = -np.inf
    if candidates is not None:
        off = dense(candidates) == 0
        off[~np.asarray(restricted, bool)] = False
        s[off] = -np.inf
    items = np.array([np.lexsort((np.arange(len(r)), -r))[:k] for r in s])
    top = np.take_along_axis(s, items, axis=1)
    items[np.isneginf(top)] = -1
    return items, top


def as_array(block) -> np.ndarray:
    return block.cpu().numpy() if isinstance(block, torch.Tensor) else np.asarray(block)


def spy_blocks(model, monkeypatch) -> list[tuple[int, int, int]]:
    """(users, start, stop) of every block the model's scorer is asked for from now on."""
    calls: list[tuple[int, int, int]] = []
    real = model.item_block_scorer

    def scorer(rows):
        inner = real(rows)

        def block(start, stop):
            calls.append((rows.shape[0], start, stop))
            return inner(start, stop)

        return block

    monkeypatch.setattr(model, "item_block_scorer", scorer)
    return calls


def make(key: str):
    name, params = MODELS[key]
    return make_model(name, dict(params))


@pytest.fixture(scope="module")
def fitted():
    return {key: make(key).fit(TRAIN) for key in MODELS}


def test_the_rows_are_weighted():
    assert len(np.unique(USERS.data)) > 2 and len(np.unique(TRAIN.data)) > 2 and USERS.data.max() > 1


# ---------------------------------------------------------------------- every model's block scorer
@pytest.mark.parametrize("key", list(MODELS))
def test_blocks_of_weighted_rows_equal_the_scores_and_a_numpy_reference(fitted, key):
    model = fitted[key]
    assert model.block_scoring
    full = np.asarray(model.score(USERS), dtype=np.float32)
    scorer = model.item_block_scorer(USERS)
    blocks = np.concatenate([as_array(scorer(a, b)) for a, b in [(0, 7), (7, 30), (30, 60), (60, N_ITEMS)]], axis=1)
    if key in EXACT:
        np.testing.assert_array_equal(blocks, full)
    else:
        np.testing.assert_allclose(blocks, full, rtol=1e-5, atol=1e-5)
    reference = oracle_scores(key, model, USERS)
    if reference is not None:
        np.testing.assert_allclose(blocks, reference, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(full, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("key", list(MODELS))
def test_recommend_in_several_blocks_equals_a_naive_ranking(fitted, key, monkeypatch):
    model = fitted[key]
    expected_items, expected_scores = naive_top_k(model.score(USERS), K, exclude=[USERS, _columns([3, 5])])
    calls = spy_blocks(model, monkeypatch)
    recs = model.recommend(USERS, k=K, exclude=[3, 5], max_memory=TINY)
    assert {users for users, _, _ in calls} == {1}  # one user at a time ...
    assert len(calls) >= 3 * USERS.shape[0]  # ... in at least three blocks each
    np.testing.assert_array_equal(recs.items, expected_items)
    if key in EXACT:
        np.testing.assert_array_equal(recs.scores, expected_scores.astype(np.float32))
    else:
        np.testing.assert_allclose(recs.scores, expected_scores, rtol=1e-5, atol=1e-5)


def _columns(items) -> sp.csr_matrix:
    """A (users, items) mask of the same items for every user of USERS."""
    mask = np.zeros(USERS.shape, np.float32)
    mask[:, items] = 1.0
    return sp.csr_matrix(mask)


def test_rank_in_blocks_applies_each_batchs_own_candidate_rows(fitted):
    """Several user batches: the candidate lists and the rows they restrict follow each batch's users."""
    model = fitted["ease"]
    rng = np.random.default_rng(3)
    candidates = sp.csr_matrix((rng.random(USERS.shape) < 0.4).astype(np.float32))
    restricted = np.arange(USERS.shape[0]) % 3 == 1  # the first batch's rows are unrestricted
    for budget in (TINY, 4 * TINY):  # one user per batch; a few users per batch
        items, scores = rank_in_blocks(model, USERS, K, exclude=[USERS], candidates=candidates,
                                       restricted=restricted, max_memory=budget)
        expected = naive_top_k(model.score(USERS), K, exclude=[USERS], candidates=candidates, restricted=restricted)
        np.testing.assert_array_equal(items, expected[0])
        np.testing.assert_array_equal(scores, expected[1].astype(np.float32))


def test_ties_across_blocks_go_to_the_lower_item(fitted):
    """Popularity scores every user alike, with many tied counts: the whole catalogue in blocks of 7 ... 23
    items comes in count order, ties by the lower item (the documented rule), as the naive ranking."""
    model = fitted["popularity"]
    counts = (dense(TRAIN) != 0).sum(axis=0)
    assert len(np.unique(counts)) < N_ITEMS - 10  # many ties
    expected = sorted(range(N_ITEMS), key=lambda i: (-counts[i], i))
    for budget in (1000, 2000, 3000):
        recs = model.recommend(USERS[:2], k=N_ITEMS, filter_seen=False, max_memory=budget)
        for row in recs.items:
            assert list(row) == expected


def test_the_blocks_asked_for_fit_the_budget_with_the_models_own_bytes(fitted, monkeypatch):
    """Sparse EASE's block is a sparse product before it is densified: 8 more bytes per cell (its
    docstring) on top of the 16 of a scored cell; with the running top-k every step fits max_memory."""
    model = fitted["sparse-ease"]
    calls = spy_blocks(model, monkeypatch)
    budget = 1000
    model.recommend(USERS, k=K, max_memory=budget)
    assert len(calls) >= 3 * USERS.shape[0]
    for users, start, stop in calls:
        assert users * ((stop - start) * (SCORE_CELL_BYTES + 8) + K * TOP_K_CELL_BYTES) <= budget
    assert sum(users for users, start, _ in calls if start == 0) == USERS.shape[0]


# ---------------------------------------------------------------------- the planner's edge
def test_the_plan_takes_everything_at_once_exactly_at_the_budget():
    n_users, n_items, k = 4, 100, 5
    exact = n_users * (n_items * SCORE_CELL_BYTES + k * TOP_K_CELL_BYTES)  # 4 · (1600 + 320) = 7680
    assert exact == 7680
    assert plan_blocks(n_users, n_items, k, exact) == BlockPlan(4, 100)
    below = plan_blocks(n_users, n_items, k, exact - 1)
    assert below != BlockPlan(4, 100)
    # one byte short: three users fit the whole catalogue (3 · 1920 = 5760 bytes)
    assert below == BlockPlan(3, 100) == plan_blocks(n_users, n_items, k, exact - 1, blockwise=False)
    # blocks: 10 users x 10,000 items need 10 · (160,000 + 640) bytes; in 10⁶ the 10 users take blocks of
    # (10⁶ / 10 - 640) // 16 = 6210 items (above the smallest block, 4096, that must fit first)
    assert plan_blocks(10, 10_000, 10, 1_000_000) == BlockPlan(10, 6210)
    assert plan_blocks(10, 10_000, 10, 10 * 160_640) == BlockPlan(10, 10_000)
    assert plan_blocks(10, 10_000, 10, 10 * 160_640 - 1) == BlockPlan(10, 9_999)  # one item short


# ---------------------------------------------------------------------- sparse EASE's own blocks
def _counting(function, counter: list):
    def wrapper(*args, **kwargs):
        counter.append(1)
        return function(*args, **kwargs)

    return wrapper


def _sparse_train() -> sp.csr_matrix:
    """TRAIN with a few rare items: their rows of G have fewer than k co-occurring items (not crowded)."""
    x = TRAIN.toarray()
    x[:, 55:] = 0.0
    for j in range(55, N_ITEMS):
        x[j - 55, j] = LEVELS[j % len(LEVELS)]
    x[:, 56] = 0.0  # item 56: no user at all (no neighbours, no weights)
    return sp.csr_matrix(x)


@pytest.mark.parametrize("chunks", ["default", "tiny"])
def test_sparse_ease_fit_in_blocks_equals_the_naive_solve(chunks, monkeypatch):
    """Small working sets cut every stage of the fit into many blocks: the Gram lookup keys (several row
    ranges), the neighbour choice (several runs of rows, crowded and not), the batched solves (many
    batches), and the lookups (most items outside the dense head, searched by key)."""
    gram_lookups, key_searches, rankings = [], [], []
    if chunks == "tiny":
        monkeypatch.setattr(sparse_module, "_SELECT_ENTRIES", 150)
        monkeypatch.setattr(sparse_module, "_SOLVE_BYTES", 32 * 8 * 64)  # 8 systems of 8 x 8 per batch
        monkeypatch.setattr(sparse_module, "_HEAD_ITEMS", 10)
    monkeypatch.setattr(sparse_module._GramLookup, "__call__", _counting(sparse_module._GramLookup.__call__,
                                                                         gram_lookups))
    monkeypatch.setattr(sparse_module, "_lookup", _counting(sparse_module._lookup, key_searches))
    monkeypatch.setattr(sparse_module, "_by_row_then_value", _counting(sparse_module._by_row_then_value, rankings))
    x = _sparse_train()
    model = SparseEASE(l2=20.0, neighbours=8).fit(x)
    if chunks == "tiny":
        assert len(gram_lookups) >= 3 and len(key_searches) >= 3 and len(rankings) >= 3
    expected = naive_sparse_ease(x, 20.0, 8)
    weights = model.weights_.toarray()
    np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-6)
    assert set(zip(*np.nonzero(weights))) <= set(zip(*np.nonzero(expected)))
    assert (np.diagonal(weights) == 0).all() and (weights[:, 56] == 0).all() and (weights[56] == 0).all()
    # and its blocks score as a dense product
    reference = dense(USERS) @ expected
    scorer = model.item_block_scorer(USERS)
    blocks = np.concatenate([scorer(a, min(a + 13, N_ITEMS)) for a in range(0, N_ITEMS, 13)], axis=1)
    np.testing.assert_array_equal(blocks, model.score(USERS))
    np.testing.assert_allclose(blocks, reference, rtol=1e-5, atol=1e-5)


def test_sparse_ease_solves_in_several_batches_at_its_own_sizes(monkeypatch):
    """No constant changed: with 128 neighbours a batch holds 2²⁶ / 32 / 128² = 128 systems, so 300 items
    take at least three batches."""
    batches = []
    monkeypatch.setattr(sparse_module._GramLookup, "__call__", _counting(sparse_module._GramLookup.__call__, batches))
    x = weighted_rows(150, 300, 0.12, seed=5)
    model = SparseEASE(l2=20.0, neighbours=128).fit(x)
    assert len(batches) >= 3
    np.testing.assert_allclose(model.weights_.toarray(), naive_sparse_ease(x, 20.0, 128), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- a refit leaves nothing stale
@pytest.mark.parametrize("key", list(MODELS))
def test_a_refit_equals_a_fresh_fit_after_blocks_were_scored(key):
    model = make(key).fit(TRAIN)
    before = model.recommend(USERS, k=K, max_memory=TINY)  # builds whatever the blocks cache
    as_array(model.item_block_scorer(USERS)(0, N_ITEMS))
    model.fit(OTHER_TRAIN)
    fresh = make(key).fit(OTHER_TRAIN)
    after = model.recommend(USERS, k=K, max_memory=TINY)
    np.testing.assert_array_equal(after.items, fresh.recommend(USERS, k=K, max_memory=TINY).items)
    np.testing.assert_array_equal(np.asarray(model.score(USERS)), np.asarray(fresh.score(USERS)))
    np.testing.assert_array_equal(model.score_items(USERS, 7, 30), fresh.score_items(USERS, 7, 30))
    reference = oracle_scores(key, fresh, USERS, train=OTHER_TRAIN)
    if reference is not None:
        np.testing.assert_allclose(model.score_items(USERS, 0, N_ITEMS), reference, rtol=1e-4, atol=1e-4)
    assert not np.array_equal(before.items, after.items)  # the refit changed the rankings


@pytest.mark.parametrize("key, change", [("sparse-ease", {"neighbours": 4}), ("sparse-ease", {"l2": 200.0}),
                                         ("ease", {"l2": 200.0}), ("als", {"regularization": 20.0}),
                                         ("itemknn", {"k": 3})])
def test_set_params_then_fit_equals_a_fresh_model(key, change):
    name, params = MODELS[key]
    model = make(key).fit(TRAIN)
    model.recommend(USERS, k=K, max_memory=TINY)
    model.set_params(**change).fit(TRAIN)
    fresh = make_model(name, {**params, **change}).fit(TRAIN)
    np.testing.assert_array_equal(model.score_items(USERS, 0, N_ITEMS), fresh.score_items(USERS, 0, N_ITEMS))
    np.testing.assert_array_equal(model.score_items(USERS, 10, 40), fresh.score(USERS)[:, 10:40])
    np.testing.assert_array_equal(model.recommend(USERS, k=K, max_memory=TINY).items,
                                  fresh.recommend(USERS, k=K).items)
