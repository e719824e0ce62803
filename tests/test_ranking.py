"""Ranking a block of items at a time: the planner, the merge, every model's block scorer, and
recommend / evaluate / Run.recommend_all under a memory budget equal to the unblocked results."""

from __future__ import annotations

import ctypes
import gc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions, synthetic_log
from recvae.evaluation import evaluate, evaluate_heldout, top_k_for_rows
from recvae.evaluation.metrics import mask_seen, top_k
from recvae.evaluation.ranking import (
    DEFAULT_MAX_MEMORY,
    MIN_ITEM_BLOCK,
    SCORE_CELL_BYTES,
    TOP_K_CELL_BYTES,
    BlockPlan,
    check_max_memory,
    ordered_top_k,
    plan_blocks,
    top_k_blocks,
)
from recvae.models import make_model
from recvae.models.base import rank_items
from recvae.runs import Run, SplitSpec

TORCH_SMALL = {"epochs": 1, "batch_size": 100, "progress": False, "seed": 0}
# Every registered model kind, small and fast; several Mult-VAE shapes (one- and two-layer decoders,
# two outputs per item) and the joint model's three paths.
MODELS = {
    "popularity": ("popularity", {}),
    "ease": ("ease", {"l2": 50.0}),
    "edlae": ("edlae", {"l2": 50.0, "dropout": 0.25}),
    "sparse-ease": ("sparse-ease", {"l2": 50.0, "neighbours": 20}),
    "als": ("als", {"factors": 8, "iterations": 3, "regularization": 1.0, "num_threads": 1}),
    "bpr": ("bpr", {"factors": 8, "iterations": 5, "num_threads": 1}),
    "itemknn": ("itemknn", {"k": 20, "num_threads": 1}),
    "mult-vae": ("mult-vae", {"hidden_dims": [24], "latent_dim": 8, **TORCH_SMALL}),
    "mult-vae-gaussian-learned": ("mult-vae", {"hidden_dims": [24], "latent_dim": 8, "likelihood": "gaussian_learned",
                                               **TORCH_SMALL}),
    "mult-dae": ("mult-dae", {"latent_dim": 8, **TORCH_SMALL}),
    "weighted-vae": ("weighted-vae", {"hidden_dims": [24], "latent_dim": 8, **TORCH_SMALL}),
    "recvae": ("recvae", {"hidden_dim": 24, "latent_dim": 8, **TORCH_SMALL}),
    "joint-vae": ("joint-vae", {"hidden_dim": 24, "latent_dim": 8, "linear_l2": 50.0, **TORCH_SMALL}),
    "joint-vae-linear": ("joint-vae", {"hidden_dim": 24, "latent_dim": 8, "paths": "linear", **TORCH_SMALL}),
    "joint-vae-vae": ("joint-vae", {"hidden_dim": 24, "latent_dim": 8, "paths": "vae", **TORCH_SMALL}),
    "blend": ("blend", {"components": [{"name": "ease", "params": {"l2": 50.0}}, {"name": "popularity"}],
                        "weights": [0.7, 0.3]}),
}
#: Scores of these come from sparse products or slices, so blocks are bit for bit the full columns.
EXACT = {"popularity", "ease", "edlae", "sparse-ease", "itemknn", "blend"}


pytestmark = pytest.mark.usefixtures("one_torch_thread", "one_blas_thread")


@pytest.fixture(scope="module")
def split():
    data = synthetic_interactions(SyntheticConfig(n_users=360, n_items=157, seed=3))
    return strong_generalization(data, 40)


@pytest.fixture(scope="module")
def fitted(split):
    return {key: make_model(name, dict(params)).fit(split) for key, (name, params) in MODELS.items()}


def _masks(rows: sp.csr_matrix, n_items: int, seed: int = 0):
    """An extra exclusion mask and per-user candidate lists (restricted for every other user)."""
    rng = np.random.default_rng(seed)
    n = rows.shape[0]
    extra = sp.csr_matrix((rng.random((n, n_items)) < 0.05).astype(np.float32))
    candidates = sp.csr_matrix((rng.random((n, n_items)) < 0.4).astype(np.float32))
    restricted = np.arange(n) % 2 == 0
    return extra, candidates, restricted


# ---------------------------------------------------------------------- the planner
def test_plan_takes_everything_at_once_when_it_fits():
    assert plan_blocks(100, 1000, 10, 2**30) == BlockPlan(100, 1000)
    assert plan_blocks(100, 1000, 10, 2**30).n_blocks(1000) == 1


@pytest.mark.parametrize("n_users,n_items,k,budget", [(1000, 1_000_000, 100, 2**30), (5000, 100_000, 20, 2**28),
                                                      (3, 50_000, 100, 2**20), (1000, 10_000, 10_000, 2**29)])
def test_plan_respects_the_budget(n_users, n_items, k, budget):
    plan = plan_blocks(n_users, n_items, k, budget)
    assert 1 <= plan.user_batch <= n_users and 1 <= plan.item_block <= n_items
    assert plan.user_batch * (plan.item_block * SCORE_CELL_BYTES + min(k, n_items) * TOP_K_CELL_BYTES) <= budget
    # blocks are large (the budget goes to items before users are cut further) ...
    assert plan.item_block >= min(n_items, max(k, MIN_ITEM_BLOCK))
    # ... and one more user would not fit with them
    if plan.user_batch < n_users:
        assert (plan.user_batch + 1) * (min(n_items, max(k, MIN_ITEM_BLOCK)) * SCORE_CELL_BYTES
                                        + min(k, n_items) * TOP_K_CELL_BYTES) > budget


def test_plan_counts_the_models_own_bytes_per_cell():
    lean, heavy = plan_blocks(1000, 1_000_000, 10, 2**30), plan_blocks(1000, 1_000_000, 10, 2**30, cell_bytes=64)
    assert heavy.user_batch * heavy.item_block * 64 <= 2**30
    assert heavy.user_batch * heavy.item_block < lean.user_batch * lean.item_block


def test_plan_without_block_scoring_batches_users_over_the_whole_catalogue():
    plan = plan_blocks(1000, 1_000_000, 100, 2**30, blockwise=False)
    assert plan.item_block == 1_000_000
    assert plan.user_batch * (1_000_000 * SCORE_CELL_BYTES + 100 * TOP_K_CELL_BYTES) <= 2**30


def test_plan_never_goes_below_one_user_and_one_item():
    assert plan_blocks(10, 1000, 5, 1) == BlockPlan(1, 1)
    assert plan_blocks(10, 1000, 5, 1, blockwise=False) == BlockPlan(1, 1000)


def test_max_memory_is_checked():
    assert check_max_memory(None) == DEFAULT_MAX_MEMORY == 2**30
    for bad in (0, -5, 1.5, "1G", True):
        with pytest.raises(ValueError, match="max_memory"):
            check_max_memory(bad)


# ---------------------------------------------------------------------- the merge
def test_ordered_top_k_breaks_ties_as_top_k():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, (50, 40)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    for k in (1, 5, 17, 40):
        values, items = ordered_top_k(torch.from_numpy(scores.copy()), k)
        np.testing.assert_array_equal(items.numpy(), top_k(scores, k))
        np.testing.assert_array_equal(values.numpy(), np.take_along_axis(scores, top_k(scores, k), axis=1))


@pytest.mark.parametrize("block", [1, 3, 7, 16, 39, 40, 41, 1000])
def test_blocked_ranking_equals_rank_items_with_ties_masks_and_candidates(block):
    rng = np.random.default_rng(block)
    n, n_items, k = 30, 41, 12
    scores = rng.integers(0, 5, (n, n_items)).astype(np.float32)  # many ties
    seen = (rng.random((n, n_items)) < 0.3).astype(np.float32)
    seen[0, :] = 1.0  # a user with nothing left: all padding
    seen = sp.csr_matrix(seen)
    extra, candidates, restricted = _masks(seen, n_items, seed=block)
    expected = rank_items(scores.copy(), k, exclude=[seen, extra], candidates=candidates, restricted=restricted)
    got = top_k_blocks(lambda s, e: scores[:, s:e].copy(), n, n_items, k, item_block=block, exclude=[seen, extra],
                       candidates=candidates, restricted=restricted)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert (got[0][0] == -1).all() and np.isneginf(got[1][0]).all()


def test_blocked_ranking_of_the_whole_catalogue_pads_like_rank_items():
    scores = np.arange(12, dtype=np.float32).reshape(2, 6) % 3
    seen = sp.csr_matrix(np.array([[1, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]], np.float32))
    for block in (1, 4, 6):
        got = top_k_blocks(lambda s, e: scores[:, s:e].copy(), 2, 6, 6, item_block=block, exclude=seen)
        expected = rank_items(scores.copy(), 6, exclude=seen)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


def test_nan_scores_are_refused_or_ranked_last():
    scores = np.array([[0.5, np.nan, 0.2, 0.9]], np.float32)
    with pytest.raises(ValueError, match="NaN"):
        top_k_blocks(lambda s, e: scores[:, s:e].copy(), 1, 4, 2, item_block=2)
    with pytest.raises(ValueError, match="NaN"):
        rank_items(scores.copy(), 2)
    items, _ = top_k_blocks(lambda s, e: scores[:, s:e].copy(), 1, 4, 4, item_block=3, nan="lowest")
    assert items.tolist() == [[3, 0, 2, -1]]
    # a masked NaN is no error, as in rank_items
    seen = sp.csr_matrix(np.array([[0, 1, 0, 0]], np.float32))
    top_k_blocks(lambda s, e: scores[:, s:e].copy(), 1, 4, 2, item_block=2, exclude=seen)


def test_a_block_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="block scorer returned shape"):
        top_k_blocks(lambda s, e: np.zeros((2, 3), np.float32), 2, 10, 2, item_block=4)


# ---------------------------------------------------------------------- every model
@pytest.mark.parametrize("key", list(MODELS))
def test_block_scores_are_the_full_scores_columns(fitted, split, key):
    model = fitted[key]
    rows = split.test.fold_in
    full = np.asarray(model.score(rows), dtype=np.float32)
    scorer = model.item_block_scorer(rows)
    n_items = full.shape[1]
    for start, stop in [(0, 7), (7, 64), (64, n_items - 1), (n_items - 1, n_items), (0, n_items)]:
        block = scorer(start, stop)
        block = block.cpu().numpy() if isinstance(block, torch.Tensor) else np.asarray(block)
        if key in EXACT:
            np.testing.assert_array_equal(block, full[:, start:stop])
        else:
            np.testing.assert_allclose(block, full[:, start:stop], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.score_items(rows, 10, 20), full[:, 10:20], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="item block"):
        model.score_items(rows, 5, 5)


@pytest.mark.parametrize("key", list(MODELS))
def test_blocked_top_k_equals_full_top_k_for_every_model(fitted, split, key):
    model = fitted[key]
    rows = split.test.fold_in
    n, n_items = rows.shape
    extra, candidates, restricted = _masks(rows, n_items)
    expected = rank_items(np.array(model.score(rows), dtype=np.float32), 20, exclude=[rows, extra],
                          candidates=candidates, restricted=restricted)
    for block in (1, 7, 50, n_items - 1, n_items):  # 157 items: 7 and 50 do not divide them
        items, scores = top_k_blocks(model.item_block_scorer(rows), n, n_items, 20, item_block=block,
                                     exclude=[rows, extra], candidates=candidates, restricted=restricted)
        np.testing.assert_array_equal(items, expected[0], err_msg=f"{key}, block {block}")
        if key in EXACT:
            np.testing.assert_array_equal(scores, expected[1])
        else:
            np.testing.assert_allclose(scores, expected[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", ["popularity", "ease", "sparse-ease", "mult-vae", "joint-vae", "blend"])
def test_recommend_under_a_tiny_budget_equals_recommend(fitted, split, key):
    model = fitted[key]
    rows = split.test.fold_in
    n_items = rows.shape[1]
    extra, candidates, _ = _masks(rows, n_items)
    full = model.recommend(rows, k=15, seen=extra, exclude=[3, 5], candidates=candidates)
    # 2000 bytes: one user at a time and blocks of (2000 - 15 · 64) / 16 = 65 items (157 = 2 · 65 + 27)
    small = model.recommend(rows, k=15, seen=extra, exclude=[3, 5], candidates=candidates, max_memory=2000)
    np.testing.assert_array_equal(small.items, full.items)
    if key in EXACT:
        np.testing.assert_array_equal(small.scores, full.scores)
    else:  # a matrix product over fewer columns may round differently (last bit)
        np.testing.assert_allclose(small.scores, full.scores, rtol=1e-5, atol=1e-6)
    whole = model.recommend(rows, k=n_items, max_memory=3000)  # every item: the order of the whole catalogue
    np.testing.assert_array_equal(whole.items, model.recommend(rows, k=n_items).items)


def test_popularity_ties_come_in_item_order(fitted, split):
    recs = fitted["popularity"].recommend(split.test.fold_in[:5], k=157, max_memory=2500)
    counts = fitted["popularity"].item_counts_
    for items in recs.items:
        items = items[items >= 0]
        assert list(items) == sorted(items, key=lambda i: (-counts[i], i))


def test_the_block_sizes_used_respect_the_budget(fitted, split):
    """A spy on the block scorer: every block asked for fits the plan's budget."""
    model = fitted["ease"]
    rows = split.test.fold_in
    calls = []
    real = model.item_block_scorer

    def spy(user_rows):
        scorer = real(user_rows)

        def block(start, stop):
            calls.append((user_rows.shape[0], stop - start))
            return scorer(start, stop)

        return block

    model.item_block_scorer = spy
    try:
        budget, k = 4000, 10  # below one user's whole catalogue: one user at a time, in blocks
        model.recommend(rows, k=k, max_memory=budget)
    finally:
        del model.item_block_scorer
    cell = SCORE_CELL_BYTES + model.block_score_bytes(rows)
    assert len(calls) > 2 and len({c[1] for c in calls}) > 1  # several blocks, the last one shorter
    for users, width in calls:
        assert users * (width * cell + k * TOP_K_CELL_BYTES) <= budget
    per_batch, covered = [], 0
    for users, width in calls:
        covered += width
        if covered == rows.shape[1]:
            per_batch.append(users)
            covered = 0
    assert covered == 0 and sum(per_batch) == rows.shape[0]  # each user batch's blocks tile the catalogue


# ---------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("key", ["popularity", "ease", "als", "mult-vae", "recvae", "blend"])
def test_evaluation_under_a_tiny_budget_gives_the_same_metrics(fitted, split, key):
    model = fitted[key]
    full = evaluate(model, split, "test", ks=(5, 20), metrics=("ndcg", "recall", "coverage"))
    small = evaluate(model, split, "test", ks=(5, 20), metrics=("ndcg", "recall", "coverage"), max_memory=3000,
                     batch_size=16)
    pd.testing.assert_frame_equal(small.per_user, full.per_user)
    pd.testing.assert_frame_equal(small.summary, full.summary)


def test_harness_breaks_ties_by_item_index():
    rng = np.random.default_rng(1)
    fold_in = sp.csr_matrix((rng.random((40, 30)) < 0.2).astype(np.float32))
    weights = rng.integers(0, 2, (30, 30)).astype(np.float32)  # small integer scores: many ties

    def scores(rows):
        return np.asarray(rows @ weights, dtype=np.float32)

    expected = top_k(mask_seen(scores(fold_in), fold_in), 10)
    np.testing.assert_array_equal(top_k_for_rows(lambda r: torch.from_numpy(scores(r)), fold_in, 10,
                                                 batch_size=100), expected)
    blocked = top_k_for_rows(lambda r: pytest.fail("the whole-catalogue scorer is not used"), fold_in, 10,
                             batch_size=100, max_memory=1000,
                             block_scorer=lambda r: lambda s, e: scores(r)[:, s:e].copy())
    np.testing.assert_array_equal(blocked, expected)


def test_harness_fills_short_rows_with_masked_items_as_top_k():
    """Metrics need real item columns: past a user's eligible items come the masked ones, lowest first."""
    rng = np.random.default_rng(2)
    fold_in = sp.csr_matrix((rng.random((20, 12)) < 0.6).astype(np.float32))
    weights = rng.random((12, 12)).astype(np.float32)

    def scores(rows):  # each row's scores depend on that row alone
        return np.asarray(rows @ weights, dtype=np.float32)

    expected = top_k(mask_seen(scores(fold_in), fold_in), 12)
    for budget in (10**9, 900):  # everything at once; one user at a time, blocks of 8 and 4 items
        got = top_k_for_rows(scores, fold_in, 12, batch_size=100, max_memory=budget,
                             block_scorer=lambda r: lambda s, e: scores(r)[:, s:e].copy())
        np.testing.assert_array_equal(got, expected)


def test_harness_without_a_block_scorer_cuts_user_batches(split):
    """A score function alone: the memory budget is met with smaller user batches, same metrics."""
    heldout = split.test
    weights = np.random.default_rng(0).random((heldout.fold_in.shape[1],) * 2).astype(np.float32)
    sizes = []

    def score_fn(rows):  # each row's scores depend on that row alone
        sizes.append(rows.shape[0])
        return np.asarray(rows @ weights, dtype=np.float32)

    full = evaluate_heldout(score_fn, heldout, ks=(10,), batch_size=1000)
    assert sizes == [heldout.n_users]
    sizes.clear()
    small = evaluate_heldout(score_fn, heldout, ks=(10,), batch_size=1000,
                             max_memory=10 * (157 * SCORE_CELL_BYTES + 10 * TOP_K_CELL_BYTES))
    assert max(sizes) == 10 and sum(sizes) == heldout.n_users
    pd.testing.assert_frame_equal(small.per_user, full.per_user)


# ---------------------------------------------------------------------- a run directory
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ranking_run")
    synthetic_log(SyntheticConfig(n_users=200, n_items=90, seed=5)).to_csv(folder / "log.csv", index=False)
    return Run.fit(folder / "log.csv", "ease", params={"l2": 50.0}, split=SplitSpec(heldout_users=0),
                   output=folder / "run")


def test_run_recommend_all_under_a_tiny_budget_is_unchanged(run):
    users = list(run.user_ids[:40])
    exclude = {u: list(run.item_ids[i:i + 3]) for i, u in enumerate(users)}
    candidates = {u: list(run.item_ids[::2]) for u in users[::3]}
    full = run.recommend(users, k=12, exclude=exclude, candidates=candidates)
    small = run.recommend(users, k=12, exclude=exclude, candidates=candidates, max_memory=1800)
    pd.testing.assert_frame_equal(small, full)
    pd.testing.assert_frame_equal(run.recommend_all(k=9, max_memory=1500), run.recommend_all(k=9))


# ---------------------------------------------------------------------- peak memory
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _peak_increase_bytes(action) -> int:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory back, so that an earlier peak is not reused
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = _rss_kib("VmRSS")
    action()
    return (_rss_kib("VmHWM") - before) * 1024


def test_peak_memory_follows_max_memory():
    """200 users x 200,000 items: unblocked, the scores alone are 160 MB; under a 16 MiB budget the
    process's peak resident memory grows by far less (blocks of users x items, merged)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _rss_kib("VmHWM")
        ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, KeyError, AttributeError):
        pytest.skip("needs Linux (/proc/self/clear_refs to reset the peak resident memory) and glibc")
    rng = np.random.default_rng(0)
    n_items = 200_000
    train = sp.csr_matrix((np.ones(5000, np.float32), (rng.integers(0, 500, 5000), rng.integers(0, n_items, 5000))),
                          shape=(500, n_items))
    model = make_model("popularity").fit(train)
    rows = sp.csr_matrix((np.ones(1000, np.float32), (np.repeat(np.arange(200), 5), rng.integers(0, n_items, 1000))),
                         shape=(200, n_items))
    budget = 16 * 2**20
    model.recommend(rows[:2], k=10, max_memory=2**16)  # warm up (first-use allocations of the libraries)
    # A peak can only be inflated by what else the process does meanwhile (a loaded machine's allocator,
    # the interpreter), never deflated: the least of three runs is the ranking's own. The bound leaves
    # 3x the budget for allocator slack, still far below the 160 MB an ignored budget costs.
    bounded = min(_peak_increase_bytes(lambda: model.recommend(rows, k=100, max_memory=budget)) for _ in range(3))
    unbounded = _peak_increase_bytes(lambda: model.recommend(rows, k=100, max_memory=2**40))
    assert unbounded > 200 * n_items * 4  # the measurement sees the full score matrix ...
    assert bounded < 3 * budget < unbounded  # ... and the budget holds (with room for allocator slack)
    np.testing.assert_array_equal(model.recommend(rows, k=100, max_memory=budget).items,
                                  model.recommend(rows, k=100, max_memory=2**40).items)
