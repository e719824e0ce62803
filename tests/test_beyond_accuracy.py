"""Beyond-accuracy metrics (recvae.evaluation.beyond_accuracy): each formula against a plain-Python
computation on tiny data, their properties, and the harness's names, inputs and summaries."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp

from recvae.data.splits import HeldOut
from recvae.evaluation import beyond_accuracy as BA
from recvae.evaluation import evaluate_heldout, evaluate_model, metric_columns
from recvae.evaluation.metrics import coverage_at_k

N_TRAIN, N_ITEMS = 40, 14


def tiny(seed: int = 0):
    """A training matrix (some weights, a stored zero, a duplicate, two unseen items) and top-4 lists."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((N_TRAIN, N_ITEMS)) < rng.random(N_ITEMS) * 0.6).astype(np.float64)
    dense[:, [3, 11]] = 0.0  # items no training user has
    dense *= rng.integers(1, 4, size=dense.shape)  # weights: popularity counts users, not weight
    train = sp.coo_matrix(dense)
    # a stored zero and a duplicate cell: neither adds a user
    rows = np.concatenate([train.row, [0, train.row[0]]])
    cols = np.concatenate([train.col, [3, train.col[0]]])
    data = np.concatenate([train.data, [0.0, 2.0]])
    train = sp.coo_matrix((data, (rows, cols)), shape=dense.shape).tocsr()
    top = np.array([rng.permutation(N_ITEMS)[:4] for _ in range(9)], dtype=np.int64)
    top[0] = [3, 11, 0, 1]  # unseen items listed
    return train, (dense > 0), top


# --------------------------------------------------------------------------- plain-Python references
def counts_by_loop(seen) -> list[int]:
    return [sum(1 for u in range(seen.shape[0]) if seen[u, i]) for i in range(seen.shape[1])]


def novelty_by_loop(top, seen) -> list[float]:
    counts, n = counts_by_loop(seen), seen.shape[0]
    out = []
    for row in top:
        bits = [-math.log2((counts[i] if counts[i] else 0.5) / n) for i in row]
        out.append(sum(bits) / len(bits))
    return out


def head_by_loop(seen, share=0.8) -> set[int]:
    counts = counts_by_loop(seen)
    total = sum(counts)
    ordered = sorted(range(len(counts)), key=lambda i: -counts[i])
    running, threshold = 0, None
    for i in ordered:
        running += counts[i]
        if running >= share * total - 1e-9:
            threshold = counts[i]
            break
    return {i for i, c in enumerate(counts) if c >= threshold and c > 0}


def cosine(a, b) -> float:
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    return 0.0 if na == 0 or nb == 0 else sum(x * y for x, y in zip(a, b)) / (na * nb)


def ild_by_loop(top, vectors) -> list[float]:
    out = []
    for row in top:
        pairs = list(itertools.combinations(row, 2))
        out.append(sum(1 - cosine(vectors[i], vectors[j]) for i, j in pairs) / len(pairs))
    return out


def gini_by_mean_difference(values) -> float:
    """Gini as half the relative mean absolute difference (an independent formula)."""
    n, mean = len(values), sum(values) / len(values)
    return sum(abs(a - b) for a in values for b in values) / (2 * n * n * mean)


# --------------------------------------------------------------------------- formulas
def test_popularity_counts_distinct_training_users():
    train, seen, _ = tiny()
    pop = BA.ItemPopularity.from_train(train)
    assert pop.counts.tolist() == counts_by_loop(seen) and pop.n_users == N_TRAIN
    assert pop.counts[3] == 0 and pop.counts[11] == 0


@pytest.mark.parametrize("k", [1, 3, 4])
def test_novelty_is_mean_self_information_with_half_a_user_for_unseen_items(k):
    train, seen, top = tiny()
    got = BA.novelty_at_k(top, train, k)
    assert got == pytest.approx(novelty_by_loop(top[:, :k], seen), rel=1e-12)
    # an unseen item: one bit above an item one user of N has
    assert BA.ItemPopularity.from_train(train).self_information()[3] == pytest.approx(math.log2(N_TRAIN) + 1)


@pytest.mark.parametrize("k", [2, 4])
def test_arp_is_mean_share_of_training_users(k):
    train, seen, top = tiny()
    counts = counts_by_loop(seen)
    expected = [sum(counts[i] / N_TRAIN for i in row[:k]) / k for row in top]
    assert BA.arp_at_k(top, train, k) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_long_tail_share_is_the_fraction_outside_the_80_percent_head(seed):
    train, seen, top = tiny(seed)
    head = head_by_loop(seen)
    assert set(np.flatnonzero(BA.ItemPopularity.from_train(train).head())) == head
    expected = [sum(i not in head for i in row) / 4 for row in top]
    assert BA.long_tail_at_k(top, train, 4) == pytest.approx(expected)


def test_the_head_takes_every_item_tied_at_the_threshold():
    # counts 5, 3, 3, 1, 0: 80% of 12 = 9.6 is reached within the 3s -> both 3s in the head, whatever their order
    pop = BA.ItemPopularity(counts=np.array([3, 0, 5, 1, 3]), n_users=6)
    assert pop.head().tolist() == [True, False, True, False, True]
    assert BA.ItemPopularity(counts=np.zeros(3, dtype=np.int64), n_users=2).head().tolist() == [False] * 3


@pytest.mark.parametrize("k", [2, 4])
def test_diversity_over_embeddings_is_the_mean_pairwise_cosine_distance(k):
    _, _, top = tiny()
    vectors = np.random.default_rng(5).normal(size=(N_ITEMS, 3))
    vectors[7] = 0.0  # a zero vector: cosine 0 with everything
    top[1, :2] = [7, 2]
    got = BA.intra_list_diversity_at_k(top, k, item_embeddings=vectors)
    assert got == pytest.approx(ild_by_loop(top[:, :k], vectors.tolist()), abs=1e-12)
    got32 = BA.intra_list_diversity_at_k(top, k, item_embeddings=vectors.astype(np.float32))
    assert got32 == pytest.approx(got, abs=1e-5)


@pytest.mark.parametrize("batch_cells", [1, 3 * N_TRAIN, 1 << 24])  # one list, three, all at once
def test_diversity_over_cooccurrence_is_the_cosine_of_training_columns(batch_cells):
    train, seen, top = tiny()
    columns = seen.T.astype(float).tolist()  # each item's binary column over the training users
    got = BA.intra_list_diversity_at_k(top, 4, train=train, batch_cells=batch_cells)
    assert got == pytest.approx(ild_by_loop(top, columns), abs=1e-6)


def test_gini_matches_the_mean_difference_formula_and_counts_unlisted_items():
    _, _, top = tiny()
    exposure = BA.item_exposure(top, N_ITEMS, 3)
    assert exposure.tolist() == [sum(int(i in row[:3]) for row in top) for i in range(N_ITEMS)]
    assert BA.gini_at_k(top, N_ITEMS, 3) == pytest.approx(gini_by_mean_difference(exposure.tolist()))
    # items nobody lists are part of the catalogue: a larger catalogue is less equal
    assert BA.gini_at_k(top, N_ITEMS + 10, 3) > BA.gini_at_k(top, N_ITEMS, 3)


# --------------------------------------------------------------------------- properties
def test_gini_is_zero_for_uniform_exposure_and_near_one_for_a_single_item():
    rotations = np.array([[(u + j) % 10 for j in range(3)] for u in range(10)])  # each item in 3 lists
    assert BA.gini_at_k(rotations, 10, 3) == pytest.approx(0.0, abs=1e-12)
    one = np.zeros((50, 1), dtype=np.int64)
    assert BA.gini_at_k(one, 1000, 1) == pytest.approx(999 / 1000)
    assert math.isnan(BA.gini_index(np.zeros(4)))


def test_diversity_is_zero_for_identical_items():
    top = np.array([[0, 1, 2], [3, 4, 5]])
    same = np.tile([[1.0, -2.0, 0.5]], (6, 1)) * np.arange(1, 7)[:, None]  # parallel vectors, different lengths
    assert BA.intra_list_diversity_at_k(top, 3, item_embeddings=same) == pytest.approx([0.0, 0.0], abs=1e-12)
    identical_columns = sp.csr_matrix(np.repeat([[1], [0], [1], [1]], 6, axis=1))
    assert BA.intra_list_diversity_at_k(top, 3, train=identical_columns) == pytest.approx([0.0, 0.0], abs=1e-6)
    orthogonal = sp.identity(6, format="csr")  # no two items share a user
    assert BA.intra_list_diversity_at_k(top, 3, train=orthogonal) == pytest.approx([1.0, 1.0])


def test_rarer_items_raise_novelty_and_long_tail_and_lower_arp():
    train, _, _ = tiny()
    pop = BA.ItemPopularity.from_train(train)
    order = np.argsort(-pop.counts, kind="stable")
    popular = order[:3][None, :]
    swapped = np.array([[order[0], order[1], order[-1]]])  # the least popular for the third
    assert BA.novelty_at_k(swapped, pop, 3)[0] > BA.novelty_at_k(popular, pop, 3)[0]
    assert BA.arp_at_k(swapped, pop, 3)[0] < BA.arp_at_k(popular, pop, 3)[0]
    assert BA.long_tail_at_k(swapped, pop, 3)[0] > BA.long_tail_at_k(popular, pop, 3)[0] == 0.0


def test_inputs_are_checked():
    train, _, top = tiny()
    with pytest.raises(ValueError, match="k >= 2"):
        BA.intra_list_diversity_at_k(top, 1, train=train)
    with pytest.raises(ValueError, match="exactly one"):
        BA.intra_list_diversity_at_k(top, 2)
    with pytest.raises(ValueError, match="outside the catalogue"):
        BA.novelty_at_k(top + N_ITEMS, train, 2)
    with pytest.raises(TypeError, match="ItemPopularity"):
        BA.arp_at_k(top, np.ones(N_ITEMS), 2)
    with pytest.raises(ValueError, match="at least one training user"):
        BA.novelty_at_k(top, sp.csr_matrix((0, N_ITEMS)), 2)


# --------------------------------------------------------------------------- the harness
def heldout_and_scores(seed: int = 0):
    train, _, _ = tiny(seed)
    rng = np.random.default_rng(seed + 10)
    fold_in = sp.csr_matrix((rng.random((12, N_ITEMS)) < 0.2).astype(np.float32))
    target = (rng.random((12, N_ITEMS)) < 0.3).astype(np.float32)
    target[0] = 0  # a user without target still has a list
    scores = rng.normal(size=(12, N_ITEMS)).astype(np.float32)
    held = HeldOut(fold_in, sp.csr_matrix(target), np.arange(100, 112))
    return train, held, scores


def ranked(scores, fold_in, k):
    masked = scores.copy()
    masked[fold_in.toarray() > 0] = -np.inf
    return np.argsort(-masked, axis=1, kind="stable")[:, :k]


def test_metric_columns_take_bare_names_and_name_at_k():
    assert metric_columns(["ndcg", "novelty@10", "ndcg@20"], [20, 5]) == [
        ("ndcg", 20), ("ndcg", 5), ("novelty", 10)]
    assert metric_columns("gini@3", []) == [("gini", 3)]
    for bad, match in (("nov@3", "unknown metric"), ("arp@0", "k >= 1"), ("arp@x", "k >= 1"), ("arp", "no cut-off")):
        with pytest.raises(ValueError, match=match):
            metric_columns([bad], [])


def test_harness_reports_every_beyond_accuracy_metric_per_user_and_globally():
    train, held, scores = heldout_and_scores()
    names = ["ndcg@4", "novelty@4", "diversity@4", "arp@4", "long_tail@4", "gini@4", "coverage@4", "novelty"]
    result = evaluate_heldout(lambda rows: scores.copy(), held, ks=(3,), metrics=names, train=train)
    top = ranked(scores, held.fold_in, 4)
    per_user = result.per_user
    assert per_user["novelty@4"].to_numpy() == pytest.approx(BA.novelty_at_k(top, train, 4))
    assert per_user["novelty@3"].to_numpy() == pytest.approx(BA.novelty_at_k(top, train, 3))
    assert per_user["diversity@4"].to_numpy() == pytest.approx(BA.intra_list_diversity_at_k(top, 4, train=train))
    assert per_user["arp@4"].to_numpy() == pytest.approx(BA.arp_at_k(top, train, 4))
    assert per_user["long_tail@4"].to_numpy() == pytest.approx(BA.long_tail_at_k(top, train, 4))
    s = result.summary
    # per user: every user counts (lists have no target to miss), with a CI like the accuracy metrics
    assert s.loc["novelty@4", "n_users"] == 12 and s.loc["ndcg@4", "n_users"] == 11
    values = per_user["arp@4"].to_numpy()
    assert s.loc["arp@4", "std_err"] == pytest.approx(values.std() / np.sqrt(12))
    # global: one number, no CI
    assert s.loc["gini@4", "mean"] == pytest.approx(BA.gini_at_k(top, N_ITEMS, 4))
    assert s.loc["coverage@4", "mean"] == pytest.approx(coverage_at_k(top, N_ITEMS, 4))
    assert np.isnan(s.loc["gini@4", "std_err"]) and "gini@4" not in per_user.columns
    assert list(s.index) == ["ndcg@4", "novelty@4", "diversity@4", "arp@4", "long_tail@4", "gini@4", "coverage@4",
                             "novelty@3"]


def test_harness_needs_the_training_matrix_for_popularity_and_cooccurrence():
    train, held, scores = heldout_and_scores()
    score = lambda rows: scores.copy()  # noqa: E731
    for metric in ("novelty@3", "arp@3", "long_tail@3", "diversity@3"):
        with pytest.raises(ValueError, match="need the training matrix: pass train="):
            evaluate_heldout(score, held, metrics=[metric])
    # diversity over given embeddings, gini and coverage need no training matrix
    vectors = np.random.default_rng(1).normal(size=(N_ITEMS, 4))
    result = evaluate_heldout(score, held, metrics=["diversity@3", "gini@3", "coverage@3"], item_embeddings=vectors)
    top = ranked(scores, held.fold_in, 3)
    assert result.per_user["diversity@3"].to_numpy() == pytest.approx(
        BA.intra_list_diversity_at_k(top, 3, item_embeddings=vectors))
    with pytest.raises(ValueError, match="diversity@1"):
        evaluate_heldout(score, held, metrics=["diversity@1"], train=train)
    with pytest.raises(ValueError, match="train must be"):
        evaluate_heldout(score, held, metrics=["arp@3"], train=train[:, :5])


class _Scorer:
    """A model with fixed scores and, optionally, item embeddings."""

    def __init__(self, scores, embeddings=None):
        self.scores, self.embeddings = scores, embeddings

    def score(self, rows):
        return self.scores.copy()

    def item_embeddings(self):
        if self.embeddings is None:
            raise NotImplementedError("no item embeddings")
        return self.embeddings


def test_diversity_space_picks_embeddings_or_cooccurrence():
    train, held, scores = heldout_and_scores()
    vectors = np.random.default_rng(2).normal(size=(N_ITEMS, 4))
    top = ranked(scores, held.fold_in, 3)
    by_embeddings = BA.intra_list_diversity_at_k(top, 3, item_embeddings=vectors)
    by_cooccurrence = BA.intra_list_diversity_at_k(top, 3, train=train)

    def diversity(model, space):
        result = evaluate_model(model, held, metrics=["diversity@3"], train=train, diversity_space=space)
        return result.per_user["diversity@3"].to_numpy()

    assert diversity(_Scorer(scores, vectors), "auto") == pytest.approx(by_embeddings)
    assert diversity(_Scorer(scores, vectors), "embeddings") == pytest.approx(by_embeddings)
    assert diversity(_Scorer(scores, vectors), "cooccurrence") == pytest.approx(by_cooccurrence)
    assert diversity(_Scorer(scores), "auto") == pytest.approx(by_cooccurrence)
    with pytest.raises(ValueError, match="no item embeddings"):
        diversity(_Scorer(scores), "embeddings")
    with pytest.raises(ValueError, match="diversity_space must be one of"):
        diversity(_Scorer(scores), "euclid")


def test_a_result_of_global_metrics_alone_prints():
    train, held, scores = heldout_and_scores()
    result = evaluate_heldout(lambda rows: scores.copy(), held, metrics=["gini@3", "novelty@3"], train=train)
    text = repr(result)
    assert text.startswith("EvaluationResult(gini@3=") and "±" not in text.split(",")[0] and "12 users" in text
