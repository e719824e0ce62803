"""EDLAE (Steck 2020, full rank): the closed form against a direct constrained solve, EASE as its p = 0 case,
parameter checks, the memory check, save/load and the registry entry."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recvae.data.splits import strong_generalization
from recvae.data.synthetic import SyntheticConfig, synthetic_interactions
from recvae.models import EASE, EDLAE, MODELS, load_model, make_model
from recvae.models.baselines import BASELINES, ease_memory_bytes, edlae_weights, load_baseline
from recvae.models.files import ModelFileError
from recvae.runtime.memory import InsufficientMemoryError


# The test machine's cores are shared: a multi-threaded BLAS only contends for them.
pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module")
def split():
    data = synthetic_interactions(SyntheticConfig(n_users=300, n_items=80, seed=0))
    return strong_generalization(data, 30)


def _random_binary(n_users: int, n_items: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    x = (rng.random((n_users, n_items)) < density).astype(np.float32)
    x[np.arange(n_users), rng.integers(0, n_items, n_users)] = 1.0  # no empty user
    return sp.csr_matrix(x)


def _constrained_solve(x: np.ndarray, l2: float, dropout: float) -> np.ndarray:
    """Each column j: argmin ||X_j - X b||² + bᵀΛb s.t. b_j = 0, from its KKT system (lstsq), no inverse of G."""
    n = x.shape[1]
    gram = x.T @ x
    penalty = l2 * np.eye(n) + dropout / (1 - dropout) * np.diag(np.diag(gram))
    weights = np.empty((n, n))
    for j in range(n):
        e = np.zeros(n)
        e[j] = 1.0
        # Stationarity 2(G + Λ) b - 2 Xᵀ X_j + μ e_j = 0 and the constraint e_jᵀ b = 0.
        kkt = np.block([[2 * (gram + penalty), e[:, None]], [e[None, :], np.zeros((1, 1))]])
        rhs = np.concatenate([2 * x.T @ x[:, j], [0.0]])
        weights[:, j] = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:n]
    return weights


# ----------------------------------------------------------------------------- the closed form
@pytest.mark.parametrize("l2, dropout", [(2.0, 0.0), (2.0, 0.33), (0.5, 0.5), (0.0, 0.25), (10.0, 0.9)])
def test_weights_equal_the_constrained_solve_per_column(l2, dropout):
    x = _random_binary(60, 15, 0.3, seed=1)
    expected = _constrained_solve(x.toarray().astype(np.float64), l2, dropout)
    weights = edlae_weights(x, l2, dropout)
    assert weights.dtype == np.float32 and weights.shape == (15, 15)
    np.testing.assert_allclose(weights, expected, atol=1e-5, rtol=1e-4)
    np.testing.assert_array_equal(EDLAE(l2=l2, dropout=dropout).fit(x).weights_, weights)


def test_weighted_interactions_use_the_weighted_gram():
    x = _random_binary(50, 12, 0.35, seed=4)
    x.data = np.random.default_rng(0).integers(1, 5, x.nnz).astype(np.float32)
    np.testing.assert_allclose(edlae_weights(x, 1.0, 0.4), _constrained_solve(x.toarray().astype(np.float64), 1.0, 0.4),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dropout", [0.1, 0.5, 0.9])
def test_diagonal_is_zero(split, dropout):
    weights = EDLAE(l2=5.0, dropout=dropout).fit(split).weights_
    assert np.all(np.diag(weights) == 0.0) and np.abs(weights).max() > 0


def test_dropout_zero_is_ease_bit_for_bit(split):
    ease = EASE(l2=50.0).fit(split)
    np.testing.assert_array_equal(edlae_weights(split.train, 50.0, 0.0), ease.weights_)
    edlae = EDLAE(l2=50.0, dropout=0.0).fit(split)
    np.testing.assert_array_equal(edlae.weights_, ease.weights_)
    rows = split.test.fold_in
    np.testing.assert_array_equal(edlae.score(rows), ease.score(rows))


def test_dropout_changes_the_weights_as_a_popularity_scaled_penalty(split):
    counts = np.asarray(split.train.sum(axis=0)).ravel()
    low, high = EDLAE(l2=5.0, dropout=0.1).fit(split), EDLAE(l2=5.0, dropout=0.5).fit(split)
    assert not np.allclose(low.weights_, high.weights_, atol=1e-3)
    assert not np.allclose(low.score(split.test.fold_in), high.score(split.test.fold_in), atol=1e-3)
    # More dropout, more shrinkage: the weights out of every item shrink overall.
    assert np.linalg.norm(high.weights_) < np.linalg.norm(low.weights_)
    # The same p with λ replaced by its mean share is a different model: the penalty scales with counts.
    uniform = EDLAE(l2=5.0 + 0.5 / 0.5 * float(counts.mean()), dropout=0.0).fit(split)
    assert not np.allclose(uniform.weights_, high.weights_, atol=1e-3)


# ----------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("params, error, match", [
    ({"dropout": 1.0}, ValueError, r"dropout=1\.0: expected a number in \[0, 1\)"),
    ({"dropout": 1.5}, ValueError, r"dropout=1\.5: expected a number in \[0, 1\)"),
    ({"dropout": -0.1}, ValueError, r"dropout=-0\.1: expected a number in \[0, 1\)"),
    ({"l2": -1.0}, ValueError, "l2=-1.0: expected a finite number >= 0"),
    ({"l2": 0.0, "dropout": 0.0}, ValueError, "l2 must be > 0 when dropout is 0"),
    ({"l2": "big"}, TypeError, "l2='big': expected a finite number >= 0"),
    ({"dropout": float("nan")}, TypeError, r"dropout=nan: expected a number in \[0, 1\)"),
])
def test_invalid_parameters_are_refused(params, error, match):
    full = {"l2": 10.0, "dropout": 0.25, **params}
    with pytest.raises(error, match=match) as info:
        EDLAE(**full)
    assert "\n" not in str(info.value)
    with pytest.raises(error, match=match):
        EDLAE().set_params(**params)
    with pytest.raises(error, match=match):
        edlae_weights(_random_binary(10, 4, 0.5, seed=0), full["l2"], full["dropout"])


def test_edlae_weights_wants_a_sparse_matrix():
    with pytest.raises(TypeError, match="scipy.sparse"):
        edlae_weights(np.ones((3, 4)), 1.0, 0.5)
    with pytest.raises(ValueError, match="no interactions"):
        edlae_weights(sp.csr_matrix((3, 4), dtype=np.float32), 1.0, 0.5)


def test_estimator_conventions(split):
    model = EDLAE(l2=20.0, dropout=0.3)
    assert model.get_params() == {"l2": 20.0, "dropout": 0.3}
    assert repr(model) == "EDLAE(l2=20.0, dropout=0.3)"
    assert model.set_params(dropout=0.4) is model and model.dropout == 0.4 and model.l2 == 20.0
    assert model.weights_ is None
    assert model.fit(split) is model
    rows = split.test.fold_in[:5]
    np.testing.assert_allclose(model.score(rows), rows.toarray() @ model.weights_, rtol=1e-5, atol=1e-6)


def test_similar_items_are_rows_of_b(split):
    model = EDLAE(l2=10.0, dropout=0.3).fit(split)
    found = model.similar_items([0, 7], k=5, by_column=True)
    for row, item in zip(found.items, (0, 7)):
        expected = np.argsort(-np.where(np.arange(model.n_items_) == item, -np.inf, model.weights_[item]))[:5]
        np.testing.assert_array_equal(row, expected)
    ids = model.similar_items(split.item_ids[:1], k=3).item_ids
    assert ids.shape == (1, 3) and split.item_ids[0] not in ids


# ----------------------------------------------------------------------------- memory
def test_refuses_what_does_not_fit_in_memory(split, monkeypatch):
    available = {"bytes": 10_000}
    monkeypatch.setattr("recvae.runtime.memory.available_memory_bytes", lambda: available["bytes"])
    n = split.train.shape[1]
    with pytest.raises(InsufficientMemoryError) as info:
        EDLAE().fit(split)
    message = str(info.value)
    assert message.startswith(f"EDLAE on {n} items (in float32) needs about") and "--model sparse-ease" in message
    assert info.value.needed == ease_memory_bytes(n, np.float32, split.train)
    # The joint model's closed-form start goes through the same check.
    with pytest.raises(InsufficientMemoryError, match="EDLAE on .*--model sparse-ease"):
        edlae_weights(split.train, 10.0, 0.25)
    available["bytes"] = 4 * ease_memory_bytes(n, np.float64, split.train)
    assert EDLAE().fit(split).weights_.shape == (n, n)


# ----------------------------------------------------------------------------- files and the registry
def test_save_and_load_give_identical_scores(split, tmp_path):
    model = EDLAE(l2=30.0, dropout=0.4).fit(split)
    path = model.save(tmp_path / "edlae.npz")
    rows = split.test.fold_in
    for loaded in (EDLAE.load(path), load_baseline(path), load_model(path)):
        assert type(loaded) is EDLAE and loaded.get_params() == model.get_params()
        np.testing.assert_array_equal(loaded.item_ids_, model.item_ids_)
        np.testing.assert_array_equal(loaded.score(rows), model.score(rows))
    with pytest.raises(ModelFileError, match="holds a EDLAE model, not a EASE"):
        EASE.load(path)


def test_registered_by_name(split):
    assert MODELS["edlae"] is EDLAE and BASELINES["edlae"] is EDLAE
    model = make_model("EDLAE", {"l2": 40.0, "dropout": 0.2})
    assert isinstance(model, EDLAE) and model.get_params() == {"l2": 40.0, "dropout": 0.2}
    with pytest.raises(TypeError, match="'edlae'"):
        make_model("edlae", {"bogus": 1})
