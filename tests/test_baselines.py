"""Baselines: EASE's closed form, ALS/BPR fold-in, item-KNN, popularity; the shared interface."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse as sp

from recvae.data.splits import strong_generalization
from recvae.data.synthetic import SyntheticConfig, synthetic_interactions
from recvae.evaluation import evaluate
from recvae.models import NotFittedError
from recvae.models import implicit_models
from recvae.models.baselines import ALS, BPR, EASE, ItemKNN, Popularity, ease_memory_bytes, load_baseline
from recvae.runtime.memory import InsufficientMemoryError

# The models compared with popularity. Hyper-parameters are generic small-data
# settings (few factors, firm regularisation), not tuned on these users.
MODELS = {
    "ease": lambda: EASE(l2=500.0),
    "als": lambda: ALS(factors=32, regularization=1.0, alpha=5.0, iterations=15),
    "bpr": lambda: BPR(factors=64, learning_rate=0.01, regularization=0.01, iterations=100, num_threads=1),
    "itemknn_cosine": lambda: ItemKNN(k=100, similarity="cosine"),
    "itemknn_bm25": lambda: ItemKNN(k=100, similarity="bm25"),
    "itemknn_tfidf": lambda: ItemKNN(k=100, similarity="tfidf"),
}
ALL = {"popularity": Popularity, **MODELS}


# The test machine's cores are shared: a multi-threaded BLAS only contends for them.
pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module")
def split():
    data = synthetic_interactions(SyntheticConfig(n_users=800, n_items=400, seed=0))
    return strong_generalization(data, 80)


@pytest.fixture(scope="module")
def fitted(split):
    return {name: make().fit(split) for name, make in ALL.items()}


def _random_binary(n_users: int, n_items: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    x = (rng.random((n_users, n_items)) < density).astype(np.float32)
    x[np.arange(n_users), rng.integers(0, n_items, n_users)] = 1.0  # no empty user
    return sp.csr_matrix(x)


# ----------------------------------------------------------------------------- EASE
def test_ease_weights_equal_constrained_ridge_per_column():
    x = _random_binary(60, 15, 0.3, seed=1)
    l2 = 3.0
    weights = EASE(l2=l2).fit(x).weights_
    dense = x.toarray().astype(np.float64)
    n = dense.shape[1]
    assert np.all(np.diag(weights) == 0)
    for j in range(n):
        others = np.delete(np.arange(n), j)
        a = dense[:, others]
        b = np.linalg.solve(a.T @ a + l2 * np.eye(n - 1), a.T @ dense[:, j])
        np.testing.assert_allclose(weights[others, j], b, atol=1e-5)


def test_ease_scores_are_rows_times_weights(split, fitted):
    model = fitted["ease"]
    rows = split.validation.fold_in[:7]
    np.testing.assert_allclose(model.score(rows), rows.toarray() @ model.weights_, rtol=1e-5, atol=1e-6)
    with pytest.raises(NotImplementedError):
        model.item_embeddings()


def test_ease_refuses_what_does_not_fit_in_memory(split, monkeypatch):
    monkeypatch.setattr("recvae.runtime.memory.available_memory_bytes", lambda: 10_000)
    with pytest.raises(InsufficientMemoryError) as info:
        EASE().fit(split)
    message = str(info.value)
    assert "\n" not in message and message.startswith("EASE on 400 items (in float32) needs about")
    assert info.value.needed == ease_memory_bytes(400, np.float32, split.train) and info.value.available == 10_000
    # The model that fits comes first, for the CLI and for Python, then filtering.
    assert message.index("--model sparse-ease") < message.index("SparseEASE") < message.index("min_item_interactions")


@pytest.mark.parametrize("share, dtype", [(2.5, np.float64), (1.5, np.float32)])
def test_ease_solves_in_float64_unless_that_needs_over_half_the_memory(split, monkeypatch, caplog, share, dtype):
    double = ease_memory_bytes(400, np.float64, split.train)
    monkeypatch.setattr("recvae.runtime.memory.available_memory_bytes", lambda: int(share * double))
    with caplog.at_level(logging.INFO, logger="recvae.models.ease"):
        model = EASE().fit(split)
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"({np.dtype(dtype).name}: Gram" in m for m in messages)
    assert any("solves in float32" in m for m in messages) == (dtype == np.float32)
    assert model.weights_.dtype == np.float32 and model.weights_.flags.c_contiguous


# ----------------------------------------------------------------------------- quality
def test_popularity_scores_training_counts(split, fitted):
    scores = fitted["popularity"].score(split.validation.fold_in[:3])
    counts = split.train.getnnz(axis=0)
    assert scores.dtype == np.float32 and scores.shape == (3, split.n_items)
    np.testing.assert_array_equal(scores, np.tile(counts, (3, 1)))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_beats_popularity_on_validation(split, fitted, name):
    ndcg = {
        n: evaluate(fitted[n], split, "validation", ks=(100,), metrics=("ndcg",))["ndcg@100"]
        for n in ("popularity", name)
    }
    # popularity is ~0.16 here; every structured model lands at 0.3-0.42
    assert ndcg[name] > 1.5 * ndcg["popularity"], ndcg


# ----------------------------------------------------------------------------- fold-in
@pytest.mark.parametrize("name", sorted(ALL))
def test_recommend_never_returns_fold_in_items(split, fitted, name):
    model = fitted[name]
    fold_in = split.test.fold_in
    recs = model.recommend(fold_in, k=20)
    assert recs.items.shape == (fold_in.shape[0], 20)
    seen = np.asarray(fold_in[np.arange(fold_in.shape[0])[:, None], recs.items].todense())
    assert not seen.any()

    history = split.item_ids[[3, 17, 42, 99]]
    new = model.recommend_for_items(history, k=10)
    assert not np.isin(new.item_ids, history).any()
    assert np.array_equal(new.item_ids, split.item_ids[new.items])


@pytest.mark.parametrize("name", ["als", "bpr"])
def test_factor_scores_are_user_times_item_embeddings(split, fitted, name):
    model = fitted[name]
    rows = split.validation.fold_in[:5]
    users, items = model.embed_users(rows).mu, model.item_embeddings()
    assert users.dtype == np.float32 and users.shape[1] == items.shape[1]
    np.testing.assert_allclose(model.score(rows), users @ items.T, rtol=1e-6)


def test_bpr_keeps_the_bias_column(split, fitted):
    model = fitted["bpr"]
    assert model.item_embeddings().shape == (split.n_items, model.factors + 1)
    assert np.allclose(model.user_factors_[:, -1], 1.0)  # implicit fixes the user side of the bias


def test_als_fold_in_is_the_exact_als_user_step(split):
    alpha, reg = 5.0, 1.0
    model = ALS(factors=16, regularization=reg, alpha=alpha, iterations=50, use_cg=False).fit(split.train)
    train = split.train
    folded = model.embed_users(train).mu

    # 1. implicit's own solver, given the same confidences 1 + alpha x, agrees to float precision.
    confidence = train.copy()
    confidence.data = 1.0 + alpha * confidence.data
    reference = model.implicit_model_.recalculate_user(np.arange(train.shape[0]), confidence)
    np.testing.assert_allclose(folded, reference, rtol=1e-4, atol=1e-5)

    # 2. It is the stationary point of the ALS objective (checked densely on a few users).
    y = model.item_factors_.astype(np.float64)
    for u in range(5):
        x = train[u].toarray().ravel()
        c, p = 1.0 + alpha * x, (x > 0).astype(np.float64)
        gradient = -2 * y.T @ (c * (p - y @ folded[u])) + 2 * reg * folded[u]
        assert np.abs(gradient).max() < 1e-3 * np.abs(y.T @ (c * p)).max()

    # 3. A training user's fold-in reproduces the factor implicit learned (the last
    #    sweep updates the items after the users, so they agree once converged).
    learned = model.user_factors_
    relative = np.linalg.norm(folded - learned, axis=1) / np.linalg.norm(learned, axis=1)
    assert np.median(relative) < 2e-2 and relative.max() < 5e-2


def test_als_fold_in_batches_do_not_change_results(split, fitted):
    model = fitted["als"]
    rows = split.test.fold_in
    y = model.item_factors_.astype(np.float64)
    gram = y.T @ y + model.regularization * np.eye(y.shape[1])
    whole = implicit_models._als_fold_in(rows, y, gram, model.alpha)
    tiny = implicit_models._als_fold_in(rows, y, gram, model.alpha, budget=1)  # one user per batch
    np.testing.assert_allclose(whole, tiny, rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore::implicit.utils.ParameterWarning")  # implicit's own fit converts COO -> CSR with a warning
@pytest.mark.parametrize("similarity", ["cosine", "bm25", "tfidf"])
def test_itemknn_scores_equal_implicits_recommend(split, similarity):
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender, TFIDFRecommender

    reference = {"cosine": CosineRecommender, "bm25": BM25Recommender, "tfidf": TFIDFRecommender}[similarity](K=50)
    reference.fit(split.train, show_progress=False)
    model = ItemKNN(k=50, similarity=similarity).fit(split)
    rows = split.train[:10]
    ids, scores = reference.recommend(np.arange(10), rows, N=20)
    ours = np.take_along_axis(model.score(rows), ids, axis=1)
    np.testing.assert_allclose(ours, scores, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("name", sorted(ALL))
def test_save_load_round_trip(split, fitted, tmp_path, name):
    model = fitted[name]
    path = model.save(tmp_path / f"{name}.model")
    assert path == tmp_path / f"{name}.model" and path.exists()
    loaded = type(model).load(path)
    rows = split.test.fold_in
    np.testing.assert_array_equal(loaded.score(rows), model.score(rows))
    assert loaded.get_params() == model.get_params()
    assert np.array_equal(loaded.item_ids_, model.item_ids_) and loaded.n_items_ == model.n_items_
    assert type(load_baseline(path)) is type(model)


def test_load_refuses_another_class(fitted, tmp_path):
    path = fitted["ease"].save(tmp_path / "ease.npz")
    with pytest.raises(ValueError, match="EASE"):
        ALS.load(path)


def test_string_item_ids_round_trip(tmp_path):
    from recvae.data.interactions import Interactions

    x = _random_binary(30, 8, 0.4, seed=2)
    data = Interactions.from_csr(x, item_ids=np.array([f"item-{i}" for i in range(8)], dtype=object))
    model = ItemKNN(k=5).fit(data)
    loaded = ItemKNN.load(model.save(tmp_path / "knn.npz"))
    assert loaded.item_ids_.dtype == object and list(loaded.item_ids_) == list(model.item_ids_)
    assert list(loaded.recommend_for_items(["item-1"], k=3).item_ids[0]) == list(
        model.recommend_for_items(["item-1"], k=3).item_ids[0]
    )


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", sorted(ALL))
def test_not_fitted(name, tmp_path):
    model = ALL[name]()
    rows = sp.csr_matrix(np.ones((1, 5), dtype=np.float32))
    with pytest.raises(NotFittedError, match="fit"):
        model.score(rows)
    with pytest.raises(NotFittedError):
        model.recommend(rows)
    with pytest.raises(NotFittedError):
        model.save(tmp_path / "m.npz")


@pytest.mark.parametrize("name", sorted(ALL))
def test_wrong_item_count(fitted, name):
    rows = sp.csr_matrix(np.ones((2, 399), dtype=np.float32))
    with pytest.raises(ValueError, match="399 item columns but the model was fitted on 400"):
        fitted[name].score(rows)


def test_bare_matrix_has_no_id_map():
    model = EASE(l2=1.0).fit(_random_binary(20, 6, 0.4, seed=3))
    assert model.item_ids_ is None
    with pytest.raises(ValueError, match="no item id map"):
        model.recommend_for_items([1])


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: EASE(l2=0.0), ValueError),
        (lambda: EASE(l2="big"), TypeError),
        (lambda: ALS(factors=0), ValueError),
        (lambda: ALS(factors=2.5), TypeError),
        (lambda: BPR(learning_rate=0.0), ValueError),
        (lambda: ItemKNN(similarity="jaccard"), ValueError),
        (lambda: ItemKNN(B=1.5), ValueError),
    ],
)
def test_bad_hyper_parameters(make, error):
    with pytest.raises(error):
        make()


def test_fit_rejects_empty_and_non_matrix_input():
    with pytest.raises(ValueError, match="no interactions"):
        EASE().fit(sp.csr_matrix((3, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="CSR"):
        Popularity().fit(np.ones((3, 4)))
