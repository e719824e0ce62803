"""The weighted Gaussian VAE's item-item path (issue 30): its likelihood-fitted scale, its scores in
every scoring path, and its file."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.models import WeightedGaussianVAE
from recvae.models.files import ModelFileError
from recvae.models.registry import load_model
from recvae.models.sparse_ease import sparse_ease_weights
from recvae.nn import VAE, VAEConfig
from recvae.nn.gramian import exact_gaussian_posterior
from recvae.nn.sparse import SparseRows
from recvae.training.refine import item_path_scale

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tastes_split():
    data = synthetic_interactions(SyntheticConfig(n_users=700, n_items=200, n_tastes=5, seed=4,
                                                  mean_events_per_user=10))
    return strong_generalization(data, 100, seed=0)


@pytest.fixture(scope="module")
def fitted(tastes_split):
    return WeightedGaussianVAE(hidden_dims=(16,), latent_dim=4, epochs=3, batch_size=100, refine_steps=1,
                               item_neighbours=24, item_l2=30.0, progress=False, seed=0).fit(tastes_split)


def test_the_scale_is_the_weighted_least_squares_slope_over_every_cell():
    rng = np.random.default_rng(0)
    dense = (rng.random((60, 50)) < 0.15) * rng.integers(1, 3, (60, 50)).astype(np.float64)
    dense[dense.sum(axis=1) == 0, 0] = 1.0
    matrix = sp.csr_matrix(dense)
    net = VAE(50, VAEConfig(hidden_dims=(8,), latent_dim=3, decoder_dims=(), likelihood="gaussian",
                            confidence=7.0, posterior="exact")).double().eval()
    weights = sparse_ease_weights(matrix, l2=5.0, neighbours=10)
    layer = net.decoder[-1]
    mu, _ = exact_gaussian_posterior(net.likelihood, layer.weight.detach(), layer.bias.detach(),
                                     SparseRows.from_scipy(sp.csr_matrix(dense.astype(np.float32))))
    means = mu.numpy() @ layer.weight.detach().numpy().T + layer.bias.detach().numpy()
    o = dense @ weights.toarray()
    c = np.where(dense != 0, 1 + 7.0 * dense, 1.0)
    expected = (c * (dense - means) * o).sum() / (c * o * o).sum()
    assert expected > 0
    for block in (7, 2048):
        assert item_path_scale(net, matrix, weights, block_users=block) == pytest.approx(expected, rel=1e-6)
    # A path that anti-correlates with the residuals is switched off, not subtracted.
    assert item_path_scale(net, matrix, -weights) == 0.0


def test_scores_are_the_exact_posterior_means_plus_the_scaled_path_in_every_scoring_path(fitted, tastes_split,
                                                                                         tmp_path):
    rows = tastes_split.test.fold_in
    assert fitted.item_scale_ > 0 and fitted.item_path_ is not None
    path = fitted.item_path_.to_scipy()
    assert path.diagonal().sum() == 0 and np.diff(path.tocsc().indptr).max() <= 24  # neighbours per item column
    with torch.no_grad():
        means = fitted.net_.scores(SparseRows.from_scipy(rows)).numpy()
    expected = means + fitted.item_scale_ * (rows @ path).toarray()
    scores = fitted.score(rows)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    blocks = fitted.item_block_scorer(rows)
    n_items = fitted.n_items_
    by_block = np.concatenate([blocks(0, 77).cpu().numpy(), blocks(77, n_items).cpu().numpy()], axis=1)
    np.testing.assert_allclose(by_block, scores, rtol=1e-5, atol=1e-6)
    top = fitted.recommend(rows, k=5)  # ranked with the path too
    masked = np.where(rows.toarray() > 0, -np.inf, scores)
    expected_top = np.argsort(-masked, axis=1, kind="stable")[:, :5]
    np.testing.assert_allclose(top.scores, np.take_along_axis(masked, expected_top, axis=1), rtol=1e-5, atol=1e-6)
    loaded = load_model(fitted.save(tmp_path / "wv.pt"), device="cpu")
    assert loaded.item_scale_ == fitted.item_scale_
    np.testing.assert_array_equal(loaded.score(rows), scores)


def test_without_the_path_the_scores_are_the_vaes(tastes_split):
    model = WeightedGaussianVAE(hidden_dims=(16,), latent_dim=4, epochs=2, batch_size=100, refine_steps=0,
                                item_neighbours=0, progress=False).fit(tastes_split)
    rows = tastes_split.test.fold_in
    assert model.item_path_ is None
    with torch.no_grad():
        np.testing.assert_allclose(model.score(rows), model.net_.scores(SparseRows.from_scipy(rows)).numpy())


def test_a_damaged_item_path_in_a_file_is_refused(fitted, tmp_path):
    path = fitted.save(tmp_path / "wv.pt")
    payload = torch.load(path, weights_only=True)
    payload["item_path"]["indices"][0] = payload["n_items"] + 5
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match="item-item"):
        load_model(path, device="cpu")


@pytest.mark.parametrize("params,message", [
    ({"item_neighbours": -1}, "item_neighbours"),
    ({"item_l2": -2.0}, "item_l2"),
    ({"posterior": "encoder"}, "item_neighbours needs posterior='exact'"),
])
def test_bad_path_settings_are_refused_in_one_line(params, message):
    with pytest.raises(ValueError, match=message) as info:
        WeightedGaussianVAE(**params)
    assert "\n" not in str(info.value)


def test_a_refit_validates_its_epochs_without_the_earlier_fits_path(fitted, tastes_split):
    params = fitted.get_params()
    again = WeightedGaussianVAE(**params).fit(tastes_split)
    again.fit(tastes_split)  # a second fit of the same object: its epochs must not score with the first path
    fresh = WeightedGaussianVAE(**params).fit(tastes_split)
    np.testing.assert_allclose(again.history_["val_ndcg@100"], fresh.history_["val_ndcg@100"])
    assert again.item_scale_ == pytest.approx(fresh.item_scale_)


def test_an_item_path_that_would_not_fit_is_refused_before_training(tastes_split, monkeypatch):
    from recvae.runtime import memory
    from recvae.runtime.memory import InsufficientMemoryError

    model = WeightedGaussianVAE(hidden_dims=(16,), latent_dim=4, epochs=1, progress=False, item_neighbours=24)
    need = model.memory_parts(560, 196, 6000)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: int(sum(need.values()) * 1.5))
    import recvae.models.weighted_vae as weighted
    monkeypatch.setattr(weighted, "sparse_ease_memory_bytes", lambda matrix, neighbours: 1 << 40)
    with pytest.raises(InsufficientMemoryError, match="item_neighbours") as info:
        model.fit(tastes_split)
    assert "\n" not in str(info.value) and model.training_ is None


@pytest.mark.precision
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_whole_weighted_vae_learns_and_survives_save_and_load_in_each_precision(precision, tastes_split,
                                                                                    tmp_path):
    from recvae.evaluation import evaluate
    from recvae.models import Popularity

    model = WeightedGaussianVAE(hidden_dims=(32,), latent_dim=8, epochs=6, batch_size=100, refine_steps=2,
                                item_neighbours=24, item_l2=30.0, progress=False, seed=0,
                                precision=precision).fit(tastes_split)
    ndcg = evaluate(model, tastes_split, "test", ks=[20], metrics=["ndcg"])["ndcg@20"]
    popular = evaluate(Popularity().fit(tastes_split), tastes_split, "test", ks=[20], metrics=["ndcg"])["ndcg@20"]
    assert ndcg > popular + 0.05, (ndcg, popular)
    assert model.training_.refinement["val_ndcg@100"].notna().all() and model.item_scale_ > 0
    rows = tastes_split.test.fold_in
    loaded = load_model(model.save(tmp_path / "wv.pt"), device="cpu")
    np.testing.assert_array_equal(loaded.score(rows), model.score(rows))
