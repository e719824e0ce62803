"""Tests for recvae.evaluation.metrics: hand-computed cases, a naive reference, properties."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from recvae.evaluation import metrics
from recvae.evaluation.metrics import (
    METRICS,
    coverage_at_k,
    hit_rate_at_k,
    map_at_k,
    mask_seen,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    summarize,
    top_k,
)


def csr_from_sets(rows: list[set[int]], n_items: int) -> sp.csr_matrix:
    dense = np.zeros((len(rows), n_items))
    for u, items in enumerate(rows):
        dense[u, list(items)] = 1.0
    return sp.csr_matrix(dense)


# --------------------------------------------------------------------------- hand-computed cases
# Four users over 6 items; the rankings are given directly.
TOP = np.array(
    [
        [0, 1, 2, 3],  # user 0: targets {0, 2}        -> hits at ranks 1 and 3
        [4, 5, 0, 1],  # user 1: targets {1,2,3,4,5}   -> hits at ranks 1, 2, 4
        [0, 1, 2, 3],  # user 2: no targets            -> NaN everywhere
        [0, 1, 2, 3],  # user 3: targets {3}           -> hit at rank 4 only
    ],
    dtype=np.int64,
)
TARGET = csr_from_sets([{0, 2}, {1, 2, 3, 4, 5}, set(), {3}], 6)
L2 = math.log2


def test_ndcg_hand_computed():
    got = ndcg_at_k(TOP, TARGET, 3)
    # user 0: DCG = 1/log2(2) + 1/log2(4); ideal over min(3, 2) = 2 positions: 1 + 1/log2(3)
    assert got[0] == pytest.approx((1 + 1 / L2(4)) / (1 + 1 / L2(3)))
    # user 1, k=3: hits at ranks 1, 2 -> DCG = 1 + 1/log2(3); ideal = 1 + 1/log2(3) + 1/log2(4)
    assert got[1] == pytest.approx((1 + 1 / L2(3)) / (1 + 1 / L2(3) + 1 / L2(4)))
    assert np.isnan(got[2])
    assert got[3] == 0.0  # no hit in the top 3
    got4 = ndcg_at_k(TOP, TARGET, 4)
    # user 1, k=4: DCG = 1 + 1/log2(3) + 1/log2(5); ideal = 1 + 1/log2(3) + 1/log2(4) + 1/log2(5)
    assert got4[1] == pytest.approx((1 + 1 / L2(3) + 1 / L2(5)) / (1 + 1 / L2(3) + 1 / L2(4) + 1 / L2(5)))
    # user 3, k=4: DCG = 1/log2(5); ideal over min(4, 1) = 1 position = 1
    assert got4[3] == pytest.approx(1 / L2(5))
    # k=1: user 0's first item is a hit -> 1/1
    assert ndcg_at_k(TOP, TARGET, 1)[0] == 1.0


def test_recall_hand_computed():
    # user 0, k=3: 2 hits / min(3, 2) = 1;  user 1: 2 hits / min(3, 5) = 2/3;  user 3: 0 / 1
    np.testing.assert_allclose(recall_at_k(TOP, TARGET, 3), [1.0, 2 / 3, np.nan, 0.0])
    # k=2: user 0: 1 hit / min(2, 2) = 1/2; user 1: 5 targets, both top-2 are hits -> 2 / min(2, 5) = 1.0
    np.testing.assert_allclose(recall_at_k(TOP, TARGET, 2), [0.5, 1.0, np.nan, 0.0])
    # k=4: user 1: 3 / min(4, 5) = 3/4 (dividing by |target| would give 3/5)
    np.testing.assert_allclose(recall_at_k(TOP, TARGET, 4), [1.0, 0.75, np.nan, 1.0])


def test_recall_uses_min_k_target_not_target_size():
    # 5 targets, k=2, both hits -> 2 / min(2, 5) = 1.0 (libraries dividing by |target| give 0.4)
    target = csr_from_sets([{0, 1, 2, 3, 4}], 8)
    assert recall_at_k(np.array([[0, 1]]), target, 2)[0] == 1.0


def test_precision_hand_computed():
    # hits / k: k=3 -> [2/3, 2/3, nan, 0]; k=4 -> [2/4, 3/4, nan, 1/4]
    np.testing.assert_allclose(precision_at_k(TOP, TARGET, 3), [2 / 3, 2 / 3, np.nan, 0.0])
    np.testing.assert_allclose(precision_at_k(TOP, TARGET, 4), [0.5, 0.75, np.nan, 0.25])


def test_hit_rate_hand_computed():
    np.testing.assert_array_equal(hit_rate_at_k(TOP, TARGET, 3), [1.0, 1.0, np.nan, 0.0])
    np.testing.assert_array_equal(hit_rate_at_k(TOP, TARGET, 4), [1.0, 1.0, np.nan, 1.0])


def test_map_hand_computed():
    # user 0, k=3: hits at ranks 1, 3: (P@1 * 1 + P@3 * 1) / min(3, 2) = (1 + 2/3) / 2 = 5/6
    # user 1, k=4: hits at ranks 1, 2, 4: (1 + 2/2 + 3/4) / min(4, 5) = 2.75 / 4 = 0.6875
    # user 3, k=4: hit at rank 4: (1/4) / min(4, 1) = 0.25
    got = map_at_k(TOP, TARGET, 4)
    np.testing.assert_allclose(got, [5 / 6, 0.6875, np.nan, 0.25])
    # k=2, user 0: (1 * 1 + (1/2) * 0) / min(2, 2) = 1/2
    assert map_at_k(TOP, TARGET, 2)[0] == pytest.approx(0.5)


def test_mrr_hand_computed():
    # first hit rank: user 0 -> 1, user 1 -> 1, user 3 -> 4 (k=4) / none within k=3
    np.testing.assert_allclose(mrr_at_k(TOP, TARGET, 4), [1.0, 1.0, np.nan, 0.25])
    np.testing.assert_allclose(mrr_at_k(TOP, TARGET, 3), [1.0, 1.0, np.nan, 0.0])
    # first hit at rank 2 -> 1/2
    assert mrr_at_k(np.array([[5, 3, 0]]), csr_from_sets([{3, 0}], 6), 3)[0] == 0.5


def test_only_first_k_columns_used():
    # user 3's only hit is at rank 4; with k=3 the 4th column must be ignored
    for fn in METRICS.values():
        assert fn(TOP, TARGET, 3)[3] == 0.0


def test_coverage_hand_computed():
    top = np.array([[0, 1, 4], [1, 2, 4]])
    # k=2: {0, 1, 2} -> 3/5;  k=1: {0, 1} -> 2/5;  k=3: {0, 1, 2, 4} -> 4/5
    assert coverage_at_k(top, 5, 2) == pytest.approx(0.6)
    assert coverage_at_k(top, 5, 1) == pytest.approx(0.4)
    assert coverage_at_k(top, 5, 3) == pytest.approx(0.8)
    assert isinstance(coverage_at_k(top, 5, 3), float)


def test_metrics_registry():
    assert set(METRICS) == {"ndcg", "recall", "precision", "hit_rate", "map", "mrr"}
    assert METRICS["ndcg"] is ndcg_at_k and METRICS["recall"] is recall_at_k
    for fn in METRICS.values():
        out = fn(TOP, TARGET, 2)
        assert out.shape == (4,) and out.dtype == np.float64


# --------------------------------------------------------------------------- target handling
def test_explicit_zeros_are_not_relevant_and_input_untouched():
    # user 0 stores an explicit 0 at item 0 (ranked first) and a 1 at item 2
    target = sp.csr_matrix((np.array([0.0, 1.0]), np.array([0, 2]), np.array([0, 2])), shape=(1, 4))
    top = np.array([[0, 1, 2, 3]])
    # only item 2 (rank 3) is relevant: recall@2 = 0, mrr = 1/3
    assert recall_at_k(top, target, 2)[0] == 0.0
    assert mrr_at_k(top, target, 4)[0] == pytest.approx(1 / 3)
    assert target.nnz == 2  # the caller's matrix is not modified


def test_row_of_only_explicit_zeros_counts_as_empty():
    target = sp.csr_matrix((np.array([0.0]), np.array([1]), np.array([0, 1])), shape=(1, 3))
    assert np.isnan(ndcg_at_k(np.array([[1, 0]]), target, 2)[0])


def test_duplicates_and_unsorted_indices_and_other_formats():
    # COO with a duplicated (0, 3) entry and out-of-order columns
    coo = sp.coo_matrix((np.ones(4), (np.array([0, 0, 0, 1]), np.array([3, 1, 3, 0]))), shape=(2, 5))
    top = np.array([[3, 1, 0], [2, 0, 1]])
    # user 0: targets {1, 3}, ranks 1, 2 -> recall@3 = 2/2; user 1: target {0} at rank 2
    np.testing.assert_allclose(recall_at_k(top, coo, 3), [1.0, 1.0])
    np.testing.assert_allclose(mrr_at_k(top, coo, 3), [1.0, 0.5])
    # unsorted CSR indices
    unsorted = sp.csr_matrix((np.ones(2), np.array([3, 1]), np.array([0, 2, 2])), shape=(2, 5))
    assert not unsorted.has_sorted_indices
    np.testing.assert_allclose(precision_at_k(top, unsorted, 2), [1.0, np.nan])
    # sparse arrays are accepted too
    np.testing.assert_allclose(recall_at_k(top, sp.csr_array(coo), 3), [1.0, 1.0])


# --------------------------------------------------------------------------- mask_seen
def test_mask_seen_sets_minus_inf_exactly_at_seen_entries():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(7, 9))
    original = scores.copy()
    seen_dense = rng.random((7, 9)) < 0.3
    seen = sp.csr_matrix(seen_dense.astype(np.float32))
    out = mask_seen(scores, seen)
    assert out is scores
    assert np.array_equal(np.isneginf(scores), seen_dense)
    np.testing.assert_array_equal(scores[~seen_dense], original[~seen_dense])


def test_mask_seen_accepts_other_sparse_formats_and_ignores_explicit_zeros():
    scores = np.zeros((2, 3))
    seen = sp.coo_array((np.array([1.0, 0.0]), (np.array([0, 1]), np.array([2, 0]))), shape=(2, 3))
    mask_seen(scores, seen)
    assert np.isneginf(scores[0, 2])
    assert np.isneginf(scores).sum() == 1  # the explicit zero at (1, 0) is not a seen item


def test_mask_seen_errors():
    with pytest.raises(ValueError, match=r"scores has shape \(2, 3\) but seen has shape \(2, 4\)"):
        mask_seen(np.zeros((2, 3)), sp.csr_matrix((2, 4)))
    with pytest.raises(TypeError, match="scipy.sparse CSR matrix"):
        mask_seen(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(TypeError, match="floating-point"):
        mask_seen(np.zeros((2, 3), dtype=np.int64), sp.csr_matrix((2, 3)))
    with pytest.raises(TypeError, match="numpy array"):
        mask_seen([[0.0, 1.0]], sp.csr_matrix((1, 2)))


# --------------------------------------------------------------------------- top_k
def test_top_k_order_and_ties():
    scores = np.array([[3.0, 1.0, 3.0, 2.0], [0.0, 5.0, -1.0, 5.0]])
    np.testing.assert_array_equal(top_k(scores, 2), [[0, 2], [1, 3]])
    np.testing.assert_array_equal(top_k(scores, 4), [[0, 2, 3, 1], [1, 3, 0, 2]])
    assert top_k(scores, 1).dtype == np.int64


def test_top_k_boundary_ties_keep_lowest_indices():
    # 100 tied items plus one winner: after the winner, the tied items come in index order
    row = np.zeros(101)
    row[50] = 1.0
    scores = np.vstack([row, -np.ones(101), np.full(101, -np.inf)])
    got = top_k(scores, 4)
    np.testing.assert_array_equal(got, [[50, 0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3]])


def test_top_k_with_masked_items_and_integer_scores():
    scores = np.arange(6, dtype=np.float64)[None, :].repeat(2, axis=0)
    mask_seen(scores, sp.csr_matrix(np.array([[0, 0, 0, 0, 1, 1], [1, 0, 0, 0, 0, 0]])))
    # user 0: 3 > 2 > 1 > 0 then the two -inf items, lower index first
    np.testing.assert_array_equal(top_k(scores, 6), [[3, 2, 1, 0, 4, 5], [5, 4, 3, 2, 1, 0]])
    ints = np.array([[np.iinfo(np.int64).min, 7, 7, 2]])
    np.testing.assert_array_equal(top_k(ints, 4), [[1, 2, 3, 0]])


def test_top_k_matches_full_sort_on_random_data():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, size=(30, 25)).astype(np.float32)  # many ties
    for k in (1, 7, 25):
        # reference: lexsort by (index, -score): primary key is the last one
        ref = np.array([np.lexsort((np.arange(25), -s))[:k] for s in scores])
        np.testing.assert_array_equal(top_k(scores, k), ref)


def test_top_k_errors():
    with pytest.raises(ValueError, match=r"1 <= k <= n_items = 5; got k=0"):
        top_k(np.zeros((2, 5)), 0)
    with pytest.raises(ValueError, match=r"1 <= k <= n_items = 5; got k=6"):
        top_k(np.zeros((2, 5)), 6)
    with pytest.raises(TypeError, match="k must be an integer"):
        top_k(np.zeros((2, 5)), 2.0)
    with pytest.raises(ValueError, match="NaN"):
        top_k(np.array([[0.0, np.nan]]), 1)
    with pytest.raises(ValueError, match="2-D"):
        top_k(np.zeros(5), 1)
    with pytest.raises(TypeError, match="numpy array"):
        top_k([[1.0, 2.0]], 1)


def test_top_k_no_users():
    assert top_k(np.zeros((0, 4)), 2).shape == (0, 2)


# --------------------------------------------------------------------------- metric input errors
@pytest.mark.parametrize("fn", list(METRICS.values()))
def test_metric_input_errors(fn):
    top = np.array([[0, 1], [1, 2]])
    target = csr_from_sets([{0}, {2}], 4)
    with pytest.raises(TypeError, match=r"target must be a scipy.sparse CSR matrix .*got ndarray.*csr_matrix\(\.\.\.\)"):
        fn(top, target.toarray(), 2)
    with pytest.raises(TypeError, match="integer item indices; got dtype float64"):
        fn(top.astype(np.float64), target, 2)
    with pytest.raises(ValueError, match=r"shape \(2, 2\), fewer than k=3 columns"):
        fn(top, target, 3)
    with pytest.raises(ValueError, match=r"shape \(2, 2\) but target has 3 rows"):
        fn(top, csr_from_sets([{0}, {1}, {2}], 4), 2)
    with pytest.raises(ValueError, match="k must be >= 1"):
        fn(top, target, 0)
    with pytest.raises(ValueError, match=r"outside the catalogue \[0, 4\)"):
        fn(np.array([[0, 4], [1, 2]]), target, 2)
    with pytest.raises(ValueError, match="repeats an item"):
        fn(np.array([[1, 1], [1, 2]]), target, 2)


def test_coverage_errors():
    with pytest.raises(ValueError, match=r"outside the catalogue \[0, 3\)"):
        coverage_at_k(np.array([[0, 3]]), 3, 2)
    with pytest.raises(ValueError, match="n_items must be >= 1"):
        coverage_at_k(np.array([[0, 1]]), 0, 2)


# --------------------------------------------------------------------------- summarize
def test_summarize_excludes_and_counts_nan():
    s = summarize(np.array([1.0, np.nan, 0.0, np.nan, 0.5]))
    # kept [1, 0, 0.5]: mean 0.5; population std = sqrt((0.25 + 0.25 + 0) / 3) = sqrt(1/6)
    std_err = math.sqrt(1 / 6) / math.sqrt(3)
    assert s["mean"] == pytest.approx(0.5)
    assert s["std_err"] == pytest.approx(std_err)
    assert s["ci95_low"] == pytest.approx(0.5 - 1.96 * std_err)
    assert s["ci95_high"] == pytest.approx(0.5 + 1.96 * std_err)
    assert s["n_users"] == 3 and s["n_excluded"] == 2


def test_summarize_of_metric_with_empty_target_rows():
    s = summarize(recall_at_k(TOP, TARGET, 3))  # [1, 2/3, nan, 0]
    assert s["n_users"] == 3 and s["n_excluded"] == 1
    assert s["mean"] == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_summarize_all_nan_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = summarize(np.full(4, np.nan))
        s_empty = summarize(np.array([]))
    for key in ("mean", "std_err", "ci95_low", "ci95_high"):
        assert math.isnan(s[key])
    assert s["n_users"] == 0 and s["n_excluded"] == 4
    assert s_empty["n_users"] == 0 and s_empty["n_excluded"] == 0


# --------------------------------------------------------------------------- naive reference
def ref_rankings(scores: np.ndarray, seen: np.ndarray) -> list[list[int]]:
    out = []
    for u in range(scores.shape[0]):
        s = [(-math.inf if seen[u, i] else float(scores[u, i])) for i in range(scores.shape[1])]
        out.append(sorted(range(len(s)), key=lambda i: (-s[i], i)))
    return out


def ref_metric(name: str, ranking: list[int], targets: set[int], k: int) -> float:
    if not targets:
        return math.nan
    rel = [1 if item in targets else 0 for item in ranking[:k]]
    hits = sum(rel)
    denom = min(k, len(targets))
    if name == "ndcg":
        dcg = 0.0
        for i, r in enumerate(rel):
            dcg += r / math.log2(i + 2)
        idcg = 0.0
        for i in range(denom):
            idcg += 1 / math.log2(i + 2)
        return dcg / idcg
    if name == "recall":
        return hits / denom
    if name == "precision":
        return hits / k
    if name == "hit_rate":
        return 1.0 if hits else 0.0
    if name == "map":
        total, seen_hits = 0.0, 0
        for i, r in enumerate(rel):
            if r:
                seen_hits += 1
                total += seen_hits / (i + 1)
        return total / denom
    if name == "mrr":
        for i, r in enumerate(rel):
            if r:
                return 1 / (i + 1)
        return 0.0
    raise KeyError(name)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_agreement_with_naive_reference(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items = 50, 40
    scores = rng.normal(size=(n_users, n_items))
    if seed % 2:
        scores = np.round(scores, 1)  # force ties
    seen = rng.random((n_users, n_items)) < 0.2
    target = (rng.random((n_users, n_items)) < 0.15) & ~seen
    target[rng.choice(n_users, 6, replace=False)] = False  # empty target rows
    target_csr = sp.csr_matrix(target.astype(np.float64))
    rankings = ref_rankings(scores, seen)
    target_sets = [set(np.flatnonzero(row).tolist()) for row in target]

    masked = mask_seen(scores.copy(), sp.csr_matrix(seen.astype(np.float32)))
    top_all = top_k(masked, 40)
    np.testing.assert_array_equal(top_all, np.array(rankings))
    for k in (1, 5, 10, 40):
        top = top_k(masked, k)
        np.testing.assert_array_equal(top, top_all[:, :k])
        for name, fn in METRICS.items():
            expected = np.array([ref_metric(name, rankings[u], target_sets[u], k) for u in range(n_users)])
            np.testing.assert_allclose(fn(top, target_csr, k), expected, atol=1e-6, rtol=0, equal_nan=True)
            # passing the wider array (K > k) must give the same values
            np.testing.assert_allclose(fn(top_all, target_csr, k), expected, atol=1e-6, rtol=0, equal_nan=True)
        expected_cov = len({i for r in rankings for i in r[:k]}) / n_items
        assert coverage_at_k(top_all, n_items, k) == pytest.approx(expected_cov)


# --------------------------------------------------------------------------- properties
@st.composite
def problems(draw):
    n_users = draw(st.integers(1, 8))
    n_items = draw(st.integers(1, 10))
    scores = draw(
        hnp.arrays(np.float64, (n_users, n_items), elements=st.floats(-3, 3, allow_nan=False, width=16))
    )
    target = draw(hnp.arrays(np.bool_, (n_users, n_items)))
    k = draw(st.integers(1, n_items))
    return scores, target, k


@settings(max_examples=40, deadline=None)
@given(problems())
def test_property_metrics_in_unit_interval_and_nan_iff_empty(problem):
    scores, target, k = problem
    target_csr = sp.csr_matrix(target.astype(np.float64))
    top = top_k(scores, k)
    empty = ~target.any(axis=1)
    values = {name: fn(top, target_csr, k) for name, fn in METRICS.items()}
    for name, v in values.items():
        assert np.array_equal(np.isnan(v), empty), name
        assert np.all((v[~empty] >= 0) & (v[~empty] <= 1 + 1e-12)), name
    ok = ~empty
    # orderings implied by the definitions
    assert np.all(values["recall"][ok] >= values["precision"][ok] - 1e-12)
    assert np.all(values["hit_rate"][ok] >= values["mrr"][ok])
    assert np.all((values["hit_rate"][ok] == 0) == (values["ndcg"][ok] == 0))


@settings(max_examples=40, deadline=None)
@given(problems())
def test_property_perfect_ranking_scores_one(problem):
    scores, target, k = problem
    # targets strictly above everything else: the top min(k, |target|) are exactly targets
    perfect = target.astype(np.float64) * 10.0 + (scores + 3.0) / 7.0  # noise in [0, 6/7]
    target_csr = sp.csr_matrix(target.astype(np.float64))
    top = top_k(perfect, k)
    ok = target.any(axis=1)
    for name in ("ndcg", "recall", "map", "mrr", "hit_rate"):
        np.testing.assert_allclose(METRICS[name](top, target_csr, k)[ok], 1.0, atol=1e-12, err_msg=name)
    # precision is 1 exactly when the user has at least k targets
    full = target.sum(axis=1) >= k
    np.testing.assert_allclose(precision_at_k(top, target_csr, k)[full], 1.0)


def test_module_exports():
    assert set(metrics.__all__) >= {"mask_seen", "top_k", "summarize", "METRICS", "coverage_at_k"}
