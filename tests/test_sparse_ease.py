"""Sparse EASE: EASE restricted to each item's most co-occurring items, solved per item."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.evaluation import evaluate
from recvae.models import EASE, MODELS, Popularity, SparseEASE, load_model, make_model
from recvae.models import sparse_ease as module
from recvae.models.baselines import BASELINES, load_baseline, sparse_ease_memory_bytes


pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module")
def split():
    data = synthetic_interactions(SyntheticConfig(n_users=800, n_items=400, seed=0))
    return strong_generalization(data, 80)


def _random(n_users: int, n_items: int, density: float, seed: int, weighted: bool = False) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    x = (rng.random((n_users, n_items)) < density).astype(np.float32)
    x[np.arange(n_users), rng.integers(0, n_items, n_users)] = 1.0
    if weighted:
        x *= rng.uniform(0.5, 3.0, x.shape).astype(np.float32)
    return sp.csr_matrix(x)


@pytest.mark.parametrize("weighted", [False, True])
def test_every_item_a_neighbour_is_ease(weighted):
    x = _random(300, 70, 0.1, 1, weighted)
    ease = EASE(l2=30.0).fit(x).weights_
    for k in (69, 70, 1000):  # items - 1 and more: every other item
        sparse = SparseEASE(l2=30.0, neighbours=k).fit(x).weights_.toarray()
        if weighted:  # the Gram matrix is float32 here, float64 in EASE
            np.testing.assert_allclose(sparse, ease, rtol=1e-4, atol=1e-6)
        else:  # counts are exact in float32: the same solves
            np.testing.assert_allclose(sparse, ease, rtol=1e-6, atol=1e-7)


def test_columns_are_ridge_regressions_on_the_top_co_occurring_items():
    x = _random(400, 60, 0.12, 2)
    model = SparseEASE(l2=20.0, neighbours=8).fit(x)
    weights = model.weights_.toarray()
    gram = (x.T @ x).toarray().astype(np.float64)
    assert np.count_nonzero(np.diagonal(weights)) == 0
    assert (np.count_nonzero(weights, axis=0) <= 8).all()
    for j in range(60):
        row = gram[j].copy()
        row[j] = -np.inf
        # the 8 largest co-occurrence counts, ties by the lower index (only items that co-occur)
        chosen = sorted(i for i in sorted(range(60), key=lambda i: (-row[i], i))[:8] if row[i] > 0)
        assert set(np.flatnonzero(weights[:, j])) <= set(chosen)
        expected = np.linalg.solve(gram[np.ix_(chosen, chosen)] + 20.0 * np.eye(len(chosen)), gram[chosen, j])
        np.testing.assert_allclose(weights[chosen, j], expected, rtol=1e-5, atol=1e-7)


def test_items_without_co_occurrence_get_no_weights():
    x = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]], np.float32))
    weights = SparseEASE(l2=1.0, neighbours=2).fit(x).weights_.toarray()
    assert (weights[:, 2] == 0).all() and (weights[2] == 0).all() and (weights[:, 3] == 0).all()
    assert weights[0, 1] > 0 and weights[1, 0] > 0


def test_quality_beats_popularity_and_approaches_ease(split):
    ease = evaluate(EASE(l2=200.0).fit(split), split, "validation", ks=(100,))["ndcg@100"]
    pop = evaluate(Popularity().fit(split), split, "validation", ks=(100,))["ndcg@100"]
    sparse = evaluate(SparseEASE(l2=200.0, neighbours=32).fit(split), split, "validation", ks=(100,))["ndcg@100"]
    assert sparse > 1.1 * pop
    assert sparse > 0.95 * ease


def test_save_load_identical_scores(split, tmp_path):
    model = SparseEASE(l2=100.0, neighbours=16).fit(split)
    path = model.save(tmp_path / "sparse.npz")
    for loaded in (SparseEASE.load(path), load_baseline(path), load_model(path)):
        assert type(loaded) is SparseEASE and loaded.get_params() == {"l2": 100.0, "neighbours": 16}
        np.testing.assert_array_equal(loaded.score(split.test.fold_in), model.score(split.test.fold_in))
        np.testing.assert_array_equal(loaded.item_ids_, model.item_ids_)
    with np.load(path, allow_pickle=False) as arrays:  # pickle-free
        assert "meta" in arrays.files


def test_memory_check_refuses_before_any_work(split, monkeypatch):
    monkeypatch.setattr("recvae.runtime.memory.available_memory_bytes", lambda: 1000)
    monkeypatch.setattr(module, "_sparse_gram", lambda *a: pytest.fail("no work before the memory check"))
    with pytest.raises(MemoryError, match="lower neighbours") as err:
        SparseEASE(neighbours=10).fit(split)
    assert "\n" not in str(err.value)


def test_memory_estimate_bounds_the_gram_matrix():
    x = _random(300, 200, 0.05, 3)
    gram = (x.T @ x)
    assert sparse_ease_memory_bytes(x, 10) >= 16 * gram.nnz + 24 * 200 * 10
    # a user of n items gives n² pairs, but there are never more than items² of them
    dense = sp.csr_matrix(np.ones((50, 40), np.float32))
    assert sparse_ease_memory_bytes(dense, 5) == sparse_ease_memory_bytes(sp.vstack([dense] * 10).tocsr(), 5)


def test_registered_and_parameters_checked():
    assert MODELS["sparse-ease"] is SparseEASE and BASELINES["sparse-ease"] is SparseEASE
    model = make_model("sparse-ease", {"l2": 10.0, "neighbours": 5})
    assert model.get_params() == {"l2": 10.0, "neighbours": 5}
    assert model.set_params(neighbours=7).neighbours == 7
    for bad in ({"l2": 0.0}, {"neighbours": 0}, {"neighbours": 2.5}):
        with pytest.raises((TypeError, ValueError)):
            SparseEASE(**bad)


def test_similar_items_are_rows_of_b(split):
    model = SparseEASE(l2=100.0, neighbours=16).fit(split)
    np.testing.assert_array_equal(model.item_similarities(np.array([3, 5])), model.weights_[[3, 5]].toarray())
    recs = model.similar_items([3], k=5, by_column=True)
    assert 3 not in recs.items[0]
