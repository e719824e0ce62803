"""RecVAE's training recipe (``train_recvae``), pinned by computations of its own.

What the recipe says (Shenbin et al.; the authors' code) and these tests check:
the noise of z has variance exp(log_var); the KL is log q(z|x) minus the log-density
of the composite prior *as configured* (weights, wide variance, mixture); each epoch
runs the encoder passes with input dropout, then refreshes the prior's frozen
encoder, then the decoder passes without dropout; the kept weights are the best
validation epoch's, with patience counted from the last improvement.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.distributions as D
from conftest import random_rows
from test_training import LEVELS, SEQUENCE, scripted_run

from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.models.rec_vae import RecVAEConfig, RecVAENet, train_recvae
from recvae.nn.sparse import SparseRows
from recvae.training import TrainingConfig

CPU = torch.device("cpu")
ARCH = RecVAEConfig(hidden_dim=32, n_layers=2, latent_dim=8, encoder_epochs=2, decoder_epochs=1)
BASE = TrainingConfig(epochs=2, batch_size=50, lr=1e-2, progress=False, seed=0, device="cpu", eval_k=20)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def split():
    data = synthetic_interactions(SyntheticConfig(n_users=300, n_items=120, seed=3))
    return strong_generalization(data, 40)


def _net(n_items: int, config: RecVAEConfig = ARCH) -> RecVAENet:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return RecVAENet(n_items, config)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_reparameterisation_noise_has_variance_exp_log_var():
    net = _net(50).train()
    n = 20_000
    log_var = torch.tensor([-2.0, -0.5, 0.0, 1.0, 2.0]).expand(n, 5)
    mu = torch.linspace(-1.0, 1.0, 5).expand(n, 5)
    noise = net.reparameterize(mu, log_var, torch.Generator().manual_seed(0)) - mu
    expected = log_var[0].exp()
    torch.testing.assert_close(noise.var(dim=0), expected, rtol=0.05, atol=0.0)  # sd of the estimate: 1%
    assert (noise.mean(dim=0).abs() < 4 * (expected / n).sqrt()).all()
    assert torch.equal(net.eval().reparameterize(mu, log_var), mu)


@pytest.mark.parametrize("mixture", ["per_dim", "joint"])
def test_the_configured_composite_prior_is_the_one_in_the_kl(mixture):
    # Asymmetric weights and a non-default wide variance: swapping, reversing or dropping either shows.
    config = RecVAEConfig(hidden_dim=16, n_layers=2, latent_dim=4, prior_weights=(0.6, 0.3, 0.1),
                          wide_prior_log_var=4.0, prior_mixture=mixture)
    net = _net(50, config)
    with torch.no_grad():  # the live encoder moves away from the prior's frozen copy
        for p in net.encoder.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    net.eval()  # z = mu: the single-sample KL estimate is deterministic
    rows = random_rows()
    x = SparseRows.from_scipy(rows)
    nll, kl = net.terms(x)
    with torch.no_grad():
        normalised = x.to_sparse_csr(x.values / x.row_sums().sqrt()[x.row_of_entry])  # binary rows: L2 norm
        mu, log_var = net.encoder(normalised)
        prior_mu, prior_log_var = net.prior_encoder(normalised)
        zeros, ones = torch.zeros_like(mu), torch.ones_like(mu)
        locs = torch.stack([zeros, prior_mu, zeros], dim=-1)
        scales = torch.stack([ones, torch.exp(0.5 * prior_log_var), torch.full_like(mu, math.exp(2.0))], dim=-1)
        mix = D.Categorical(probs=torch.tensor([0.6, 0.3, 0.1]))
        if mixture == "per_dim":
            log_prior = D.MixtureSameFamily(mix, D.Normal(locs, scales)).log_prob(mu).sum(-1)
        else:
            comps = D.Independent(D.Normal(locs.transpose(-1, -2), scales.transpose(-1, -2)), 1)
            log_prior = D.MixtureSameFamily(mix, comps).log_prob(mu)
        log_q = D.Normal(mu, torch.exp(0.5 * log_var)).log_prob(mu).sum(-1)
        logits = net.decoder(mu)
        expected_nll = -(torch.from_numpy(rows.toarray()) * torch.log_softmax(logits, dim=1)).sum(dim=1)
    torch.testing.assert_close(kl, log_q - log_prior, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(nll, expected_nll, rtol=1e-5, atol=1e-4)


def test_each_epoch_trains_encoder_with_dropout_refreshes_prior_then_trains_decoder(split, monkeypatch):
    net = _net(split.n_items)
    initial_encoder = _state(net.encoder)
    events = []
    real_loss, real_update = net.loss, net.update_prior

    def loss(x, generator=None, *, dropout=None):
        encoder_trains = all(p.requires_grad for p in net.encoder.parameters())
        decoder_trains = all(p.requires_grad for p in net.decoder.parameters())
        assert encoder_trains != decoder_trains, "exactly one part trains in a phase"
        phase = "encoder" if encoder_trains else "decoder"
        if phase == "decoder":  # the prior the decoder phase sees is the refreshed encoder
            assert _same(_state(net.prior_encoder), _state(net.encoder))
        events.append((phase, dropout))
        return real_loss(x, generator, dropout=dropout)

    def update_prior():
        events.append(("refresh", None))
        real_update()

    monkeypatch.setattr(net, "loss", loss)
    monkeypatch.setattr(net, "update_prior", update_prior)
    result = train_recvae(net, split.train, None, BASE, CPU)
    batches = math.ceil(int((np.diff(split.train.indptr) > 0).sum()) / BASE.batch_size)
    epoch = ([("encoder", True)] * (ARCH.encoder_epochs * batches) + [("refresh", None)]
             + [("decoder", False)] * (ARCH.decoder_epochs * batches))
    assert events == epoch * BASE.epochs
    assert result.steps == BASE.epochs * batches * (ARCH.encoder_epochs + ARCH.decoder_epochs)
    # After training the frozen prior holds the final encoder, not the initial one.
    assert _same(_state(net.prior_encoder), _state(net.encoder))
    assert not _same(_state(net.prior_encoder), initial_encoder)


def test_training_refreshes_the_prior_every_epoch_without_spies(split):
    # The same property seen from outside: with the prior's encoder snapshot after each epoch.
    net = _net(split.n_items)
    snapshots = []
    real_decode = net.decode

    def decode(z):
        if not any(p.requires_grad for p in net.encoder.parameters()):  # decoder phase
            snapshots.append(_same(_state(net.prior_encoder), _state(net.encoder)))
        return real_decode(z)

    net.decode = decode
    train_recvae(net, split.train, None, dataclasses.replace(BASE, epochs=2), CPU)
    assert snapshots and all(snapshots)


def test_patience_and_best_weights_with_a_best_epoch_before_the_last(split):
    cfg = dataclasses.replace(BASE, epochs=len(SEQUENCE), patience=2, eval_batch_size=10_000)
    net = _net(split.n_items)
    result, scorer = scripted_run(net, train_recvae, split, cfg)
    assert list(result.history["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert result.stopped_early and result.best_epoch == 4
    assert result.best_score == pytest.approx(scorer.ndcg(LEVELS[3], cfg.eval_k))
    twin = _net(split.n_items)
    train_recvae(twin, split.train, None, dataclasses.replace(cfg, epochs=4, patience=None), CPU)
    assert _same(_state(net), _state(twin))  # encoder, decoder and the prior's copy: epoch 4's
    assert not net.training


def test_embedded_users_are_the_posterior_mean_and_standard_deviation(split):
    from recvae.models import RecVAE

    model = RecVAE(ARCH, dataclasses.replace(BASE, epochs=1)).fit(split.train)
    rows = split.test.fold_in[:10]
    embedding = model.embed_users(rows)
    x = SparseRows.from_scipy(rows)
    with torch.no_grad():  # binary rows: the L2 norm is the square root of the row sum; no dropout
        mu, log_var = model.net_.encoder(x.to_sparse_csr(x.values / x.row_sums().sqrt()[x.row_of_entry]))
    np.testing.assert_allclose(embedding.mu, mu.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embedding.sigma, torch.exp(0.5 * log_var).numpy(), rtol=1e-5, atol=1e-6)
