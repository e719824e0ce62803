"""The confidence-weighted Gaussian likelihood and its Gramian form (no batch x items means).

The weighted NLL is pinned against a dense numpy formula written from the definition; the
Gramian form against the full means' NLL (loss and the gradients of h, W, b), in fp64 and
under a bf16 autocast; the VAE's routing, its config checks and a fit that saves and loads.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.evaluation import evaluate
from recvae.models import MultVAE, Popularity, WeightedGaussianVAE
from recvae.models.registry import load_model
from recvae.nn import VAE, VAEConfig
from recvae.nn.chunked import chunked_output_nll
from recvae.nn.gramian import exact_decoder_update, exact_gaussian_posterior, gramian_gaussian_nll
from recvae.nn.likelihoods import Gaussian, make_likelihood
from recvae.nn.sparse import SparseRows
from recvae.training import TrainingConfig, make_optimizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(seed: int = 0, n: int = 11, items: int = 157) -> tuple[np.ndarray, SparseRows]:
    """Count-valued rows with an empty one and a single-item one."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((n, items)) < 0.06) * rng.integers(1, 4, (n, items)).astype(np.float64)
    dense[3] = 0
    dense[5] = 0
    dense[5, 11] = 2
    return dense, SparseRows.from_scipy(sp.csr_matrix(dense.astype(np.float32)))


def _layer(n_rows: int, items: int, d: int, dtype=torch.float64, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return [t.requires_grad_() for t in (torch.randn(n_rows, d, generator=g, dtype=dtype),
                                         torch.randn(items, d, generator=g, dtype=dtype) * 0.3,
                                         torch.randn(items, generator=g, dtype=dtype) * 0.1)]


@pytest.mark.parametrize("confidence,variance", [(0.0, 1.0), (40.0, 1.0), (3.0, 0.7)])
def test_weighted_gaussian_nll_is_the_definition(confidence, variance):
    dense, x = _rows()
    means = np.random.default_rng(1).normal(size=dense.shape)
    weight = np.where(dense != 0, 1.0 + confidence * dense, 1.0)
    # -log N(x; m, variance / w) summed over every item, written out.
    expected = 0.5 * (weight * (dense - means) ** 2 / variance
                      + np.log(2 * math.pi * variance / weight)).sum(axis=1)
    got = Gaussian(variance=variance, confidence=confidence).nll(torch.from_numpy(means), x)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("confidence", [0.0, 40.0])
def test_gramian_form_equals_the_full_means_nll_and_gradients(confidence):
    _, x = _rows()
    likelihood = Gaussian(variance=0.8, confidence=confidence)
    h, w, b = _layer(x.n_rows, x.n_cols, d=6)
    weights = torch.randn(x.n_rows, dtype=torch.float64)  # a weighted sum, so each row's gradient is checked
    full = likelihood.nll(F.linear(h, w, b), x)
    full_grads = torch.autograd.grad((full * weights).sum(), (h, w, b))
    gram = gramian_gaussian_nll(likelihood, h, w, b, x)
    gram_grads = torch.autograd.grad((gram * weights).sum(), (h, w, b))
    torch.testing.assert_close(gram, full, rtol=1e-10, atol=1e-9)
    for a, e in zip(gram_grads, full_grads):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


@pytest.mark.precision
def test_gramian_form_stays_fp32_under_a_bf16_autocast():
    _, x = _rows(n=40, items=400)
    likelihood = Gaussian(confidence=40.0)
    h, w, b = (t.detach().float() for t in _layer(x.n_rows, x.n_cols, d=16))
    exact = likelihood.nll(F.linear(h.double(), w.double(), b.double()), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = gramian_gaussian_nll(likelihood, h, w, b, x)
    assert inside.dtype == torch.float32
    # A bf16 Gramian would miss by ~1e-2 relative; the fp32 one by ~1e-6.
    torch.testing.assert_close(inside.double(), exact, rtol=1e-5, atol=1e-3)


def test_vae_routes_the_gaussian_through_the_gramian_only_when_it_is_exact_and_cheaper(monkeypatch):
    _, x = _rows(n=12)
    config = VAEConfig(hidden_dims=(8,), latent_dim=4, decoder_dims=(), likelihood="gaussian", confidence=5.0)
    net = VAE(x.n_cols, config)
    assert len(net.decoder) == 1 and net.decoder[0].in_features == 4  # linear decoder: z -> items
    z = torch.randn(x.n_rows, 4)
    full = net.likelihood.nll(net.decode(z), x)
    calls = []
    import recvae.nn.vae as vae_module
    real = vae_module.gramian_gaussian_nll
    monkeypatch.setattr(vae_module, "gramian_gaussian_nll", lambda *a: calls.append(1) or real(*a))
    torch.testing.assert_close(net.reconstruction_nll(z, x), full, rtol=1e-5, atol=1e-3)
    assert calls == [1]  # 12 rows > 4 latent dims: the Gramian
    narrow = SparseRows.from_scipy(sp.csr_matrix(x.to_dense()[:3].numpy()))
    torch.testing.assert_close(net.reconstruction_nll(z[:3], narrow), net.likelihood.nll(net.decode(z[:3]), narrow))
    assert calls == [1]  # 3 rows < 4 dims: the full means


def test_decoder_dims_default_mirrors_the_encoder():
    net = VAE(50, VAEConfig(hidden_dims=(32, 16), latent_dim=4))
    assert [layer.out_features for layer in net.decoder] == [16, 32, 50]
    net = VAE(50, VAEConfig(hidden_dims=(32, 16), latent_dim=4, decoder_dims=(24,)))
    assert [layer.out_features for layer in net.decoder] == [24, 50]


@pytest.mark.parametrize("params,message", [
    ({"confidence": 5.0}, "confidence weights the gaussian likelihood only"),
    ({"likelihood": "gaussian", "confidence": -1.0}, "confidence"),
    ({"decoder_dims": [0]}, "decoder_dims"),
    ({"refine_steps": 2}, "refine_steps needs a linear decoder"),
    ({"likelihood": "gaussian", "decoder_dims": [], "refine_steps": -1}, "refine_steps"),
    ({"likelihood": "gaussian", "decoder_dims": [], "refine_l2": -1.0}, "refine_l2"),
])
def test_bad_settings_are_refused_in_one_line(params, message):
    with pytest.raises(ValueError, match=message) as info:
        MultVAE(**params)
    assert "\n" not in str(info.value)


def test_other_paths_refuse_a_confidence_they_would_ignore():
    with pytest.raises(ValueError, match="gaussian likelihood only"):
        make_likelihood("multinomial", confidence=2.0)
    _, x = _rows()
    h, w, b = _layer(x.n_rows, x.n_cols, d=4)
    with pytest.raises(ValueError, match="gramian"):
        chunked_output_nll(Gaussian(confidence=2.0), h, w, b, x, 50)


@pytest.fixture(scope="module")
def tastes_split():
    data = synthetic_interactions(SyntheticConfig(n_users=900, n_items=240, n_tastes=6, seed=2,
                                                  mean_events_per_user=12))
    return strong_generalization(data, 120, seed=0)


@pytest.mark.precision
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_weighted_gaussian_vae_learns_tastes_and_survives_save_and_load(precision, tastes_split, tmp_path):
    model = MultVAE(hidden_dims=(64,), latent_dim=16, decoder_dims=(), likelihood="gaussian", confidence=20.0,
                    epochs=12, batch_size=100, lr=3e-3, progress=False, seed=0, precision=precision).fit(tastes_split)
    ndcg = evaluate(model, tastes_split, "test", ks=[20], metrics=["ndcg"])["ndcg@20"]
    popular = evaluate(Popularity().fit(tastes_split), tastes_split, "test", ks=[20], metrics=["ndcg"])["ndcg@20"]
    assert ndcg > popular + 0.05, (ndcg, popular)
    loaded = load_model(model.save(tmp_path / "wg.pt"), device="cpu")
    assert loaded.get_params()["confidence"] == 20.0 and list(loaded.get_params()["decoder_dims"]) == []
    rows = tastes_split.test.fold_in
    np.testing.assert_array_equal(loaded.score(rows), model.score(rows))


# ---------------------------------------------------------------------- the exact posterior
def _dense_posterior(dense: np.ndarray, w: np.ndarray, b: np.ndarray, confidence: float, variance: float):
    """p(z | x) of x ~ N(W z + b, variance / c), z ~ N(0, I), written out over every item."""
    mus, variances = [], []
    for row in dense:
        c = np.where(row != 0, 1.0 + confidence * row, 1.0)
        precision = np.eye(w.shape[1]) + (w.T * c) @ w / variance
        cov = np.linalg.inv(precision)
        mus.append(cov @ (w.T @ (c * (row - b))) / variance)
        variances.append(np.diag(cov))
    return np.array(mus), np.array(variances)


@pytest.mark.parametrize("confidence,variance,budget", [(40.0, 1.0, 1 << 24), (3.0, 0.5, 1)])
def test_exact_posterior_is_the_closed_form_and_solves_the_log_joint(confidence, variance, budget):
    dense, x = _rows()
    _, w, b = (t.detach() for t in _layer(x.n_rows, x.n_cols, d=5))
    likelihood = Gaussian(variance=variance, confidence=confidence)
    mu, log_var = exact_gaussian_posterior(likelihood, w, b, x, budget=budget)  # budget 1: a block per user
    expected_mu, expected_var = _dense_posterior(dense, w.numpy(), b.numpy(), confidence, variance)
    np.testing.assert_allclose(mu.numpy(), expected_mu, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(log_var.exp().numpy(), expected_var, rtol=1e-9)
    # The mean maximises log p(x | z) + log p(z): its gradient vanishes there.
    z = mu.clone().requires_grad_()
    (likelihood.nll(F.linear(z, w, b), x) + 0.5 * z.square().sum(dim=1)).sum().backward()
    assert z.grad.abs().max() < 1e-8


def test_exact_posterior_scores_out_of_training_and_the_encoder_trains():
    _, x = _rows()
    config = VAEConfig(hidden_dims=(8,), latent_dim=4, decoder_dims=(), likelihood="gaussian", confidence=5.0,
                       posterior="exact")
    net = VAE(x.n_cols, config)
    encoder = VAE(x.n_cols, dataclasses.replace(config, posterior="encoder"))
    encoder.load_state_dict(net.state_dict())
    net.eval()
    layer = net.decoder[-1]
    mu, log_var = net.encode(x)
    expected = exact_gaussian_posterior(net.likelihood, layer.weight, layer.bias, x)
    torch.testing.assert_close((mu, log_var), expected)
    assert not torch.allclose(mu, encoder.eval().encode(x)[0])
    net.train()  # training: the encoder's q(z | x), dropout drawn from the same seed
    torch.testing.assert_close(net.encode(x, torch.Generator().manual_seed(0)),
                               encoder.train().encode(x, torch.Generator().manual_seed(0)))


def test_exact_posterior_models_refuse_onnx_export_in_one_line(tastes_split):
    from recvae.serving.onnx_export import scorer_module

    model = WeightedGaussianVAE(hidden_dims=(16,), latent_dim=4, epochs=1, progress=False).fit(tastes_split)
    with pytest.raises(ValueError, match="posterior='encoder'") as info:
        scorer_module(model)
    assert "\n" not in str(info.value)


def test_a_kept_gramian_follows_every_change_of_the_weights():
    _, x = _rows()
    config = VAEConfig(hidden_dims=(8,), latent_dim=4, decoder_dims=(), likelihood="gaussian", confidence=5.0,
                       posterior="exact")
    net = VAE(x.n_cols, config).eval()
    layer = net.decoder[-1]

    def fresh():
        return exact_gaussian_posterior(net.likelihood, layer.weight, layer.bias, x)

    torch.testing.assert_close(net.encode(x), fresh())
    # The trainers' optimizer: fused Adam updates in place without bumping the version counters.
    optimizer = make_optimizer(net.parameters(), TrainingConfig(lr=0.1))
    net.train()
    net.loss(x, beta=0.1)["loss"].backward()
    optimizer.step()
    net.eval()
    torch.testing.assert_close(net.encode(x), fresh())
    other = VAE(x.n_cols, config)
    net.load_state_dict(other.state_dict())  # copied in place
    torch.testing.assert_close(net.encode(x), fresh())
    with torch.no_grad():
        layer.bias.add_(1.0)
    torch.testing.assert_close(net.encode(x), fresh())


# ---------------------------------------------------------------------- exact refinement of the decoder
def _dense_decoder_update(dense, w, b, confidence, variance, l2):
    """The M-step written out: each item's ridge solve over every user's posterior second moment."""
    moments, mus = [], []
    for row in dense:
        c = np.where(row != 0, 1.0 + confidence * row, 1.0)
        cov = np.linalg.inv(np.eye(w.shape[1]) + (w.T * c) @ w / variance)
        mu = cov @ (w.T @ (c * (row - b))) / variance
        mus.append(mu)
        moments.append(cov + np.outer(mu, mu))
    new = np.empty_like(w)
    for i in range(w.shape[0]):
        c = np.where(dense[:, i] != 0, 1.0 + confidence * dense[:, i], 1.0)
        system = sum(cu * m for cu, m in zip(c, moments)) + variance * l2 * np.eye(w.shape[1])
        rhs = sum(cu * (x - b[i]) * mu for cu, x, mu in zip(c, dense[:, i], mus))
        new[i] = np.linalg.solve(system, rhs)
    return new


def _log_evidence(dense, w, b, confidence, variance, l2):
    """log p(X | W, b) - l2/2 ||W||^2: each row's marginal N(b, W W^T + variance C_u^-1), written out."""
    total = -0.5 * l2 * np.square(w).sum()
    for row in dense:
        c = np.where(row != 0, 1.0 + confidence * row, 1.0)
        cov = w @ w.T + np.diag(variance / c)
        _, logdet = np.linalg.slogdet(cov)
        r = row - b
        total -= 0.5 * (logdet + r @ np.linalg.solve(cov, r) + len(row) * math.log(2 * math.pi))
    return total


@pytest.mark.parametrize("confidence,variance,l2,budget", [(40.0, 1.0, 1.0, 1 << 24), (3.0, 0.5, 0.0, 1),
                                                            (0.0, 2.0, 10.0, 200)])
def test_exact_decoder_update_is_each_items_ridge_solve_over_the_posterior_moments(confidence, variance, l2,
                                                                                   budget):
    dense, x = _rows()
    _, w, b = (t.detach() for t in _layer(x.n_rows, x.n_cols, d=5))
    likelihood = Gaussian(variance=variance, confidence=confidence)
    new = exact_decoder_update(likelihood, w, b, x, l2=l2, budget=budget)
    expected = _dense_decoder_update(dense, w.numpy(), b.numpy(), confidence, variance, l2)
    np.testing.assert_allclose(new.numpy(), expected, rtol=1e-8, atol=1e-10)
    assert new.dtype == w.dtype and new.shape == w.shape


@pytest.mark.parametrize("l2", [0.0, 3.0])
def test_exact_decoder_updates_never_lower_the_penalised_marginal_likelihood(l2):
    dense, x = _rows(n=40, items=60)
    _, w, b = (t.detach() for t in _layer(x.n_rows, x.n_cols, d=4))
    likelihood = Gaussian(variance=1.0, confidence=10.0)
    evidence = [_log_evidence(dense, w.numpy(), b.numpy(), 10.0, 1.0, l2)]
    for _ in range(5):
        w = exact_decoder_update(likelihood, w, b, x, l2=l2)
        evidence.append(_log_evidence(dense, w.numpy(), b.numpy(), 10.0, 1.0, l2))
    steps = np.diff(evidence)
    assert (steps > -1e-8).all(), evidence
    assert steps[0] > 1.0  # from random weights the first step gains


def test_exact_decoder_update_stays_fp32_under_a_bf16_autocast_and_refuses_bad_input():
    _, x = _rows()
    _, w, b = (t.detach() for t in _layer(x.n_rows, x.n_cols, d=5, dtype=torch.float32))
    likelihood = Gaussian(confidence=5.0)
    reference = exact_decoder_update(likelihood, w.double(), b.double(), x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        new = exact_decoder_update(likelihood, w, b, x)
    assert new.dtype == torch.float32
    torch.testing.assert_close(new.double(), reference, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        exact_decoder_update(likelihood, w, b, x, l2=-1.0)
    with pytest.raises(ValueError, match="gaussian"):
        exact_decoder_update(make_likelihood("multinomial"), w, b, x)


def test_refinement_applies_its_steps_to_the_trained_decoder_on_the_training_users(tastes_split):
    from recvae.models.mult_vae import training_inputs

    params = dict(hidden_dims=(16,), latent_dim=4, epochs=2, batch_size=100, progress=False, seed=0,
                  item_neighbours=0)
    trained = WeightedGaussianVAE(refine_steps=0, **params).fit(tastes_split)
    refined = WeightedGaussianVAE(refine_steps=2, refine_l2=3.0, **params).fit(tastes_split)
    assert trained.training_.refinement is None
    steps = refined.training_.refinement
    assert list(steps["step"]) == [1, 2] and steps["val_ndcg@100"].between(0, 1).all()
    # The same amortised training, then two exact steps on the training users with that penalty.
    matrix = training_inputs(tastes_split, None)[0]
    x = SparseRows.from_scipy(matrix[matrix.getnnz(axis=1) > 0])
    layer = trained.net_.decoder[-1]
    weight = layer.weight.detach()
    for _ in range(2):
        weight = exact_decoder_update(trained.net_.likelihood, weight, layer.bias.detach(), x, l2=3.0)
    torch.testing.assert_close(refined.net_.decoder[-1].weight.detach(), weight)
    torch.testing.assert_close(refined.net_.decoder[-1].bias, layer.bias)
    # Scoring follows the new weights (the kept Gramian was dropped).
    with torch.no_grad():
        layer.weight.copy_(weight)
    trained.net_.train()
    trained.net_.eval()
    rows = tastes_split.test.fold_in
    np.testing.assert_allclose(refined.score(rows), trained.score(rows), rtol=1e-5, atol=1e-6)
    assert "exact refinement (users x latent^2 second moments)" in refined.memory_parts(100, 50, 500)
    assert not any("refinement" in part for part in trained.memory_parts(100, 50, 500))


@pytest.mark.parametrize("confidence,variance,l2", [(10.0, 1.0, 3.0), (2.0, 0.5, 2.0)])
def test_exact_decoder_update_zeroes_the_gradient_of_the_expected_log_likelihood(confidence, variance, l2):
    """The M-step's new W is where d/dW of E_q[log p(X | Z, W)] - l2/2 ||W||^2 vanishes, q the exact
    posteriors under the old W: the gradient written out here, with each user's covariance (an ALS step,
    which drops it, or a target without the unobserved cells' -b_i, would leave a gradient)."""
    dense, x = _rows(n=30, items=40)
    _, w, b = (t.detach() for t in _layer(x.n_rows, x.n_cols, d=4))
    b = b * 20  # a bias large enough that its terms matter
    likelihood = Gaussian(variance=variance, confidence=confidence)
    new = exact_decoder_update(likelihood, w, b, x, l2=l2).numpy()
    w, b = w.numpy(), b.numpy()
    gradient = -l2 * new
    for row in dense:
        c = np.where(row != 0, 1.0 + confidence * row, 1.0)
        cov = np.linalg.inv(np.eye(4) + (w.T * c) @ w / variance)
        mu = cov @ (w.T @ (c * (row - b))) / variance
        residual = row - b - new @ mu
        gradient += (c[:, None] * (residual[:, None] * mu[None, :] - new @ cov)) / variance
    assert np.abs(gradient).max() < 1e-8 * max(1.0, np.abs(new).max()), np.abs(gradient).max()
