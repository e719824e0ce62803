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
from recvae.models.rec_vae import RecVAEConfig, RecVAENet, gaussian_log_density, train_recvae
from recvae.nn.joint import JointVAEConfig, JointVAENet
from recvae.nn.sparse import DeviceCSR, SparseRows
from recvae.nn.vae import l2_normalised_values
from recvae.training import TrainingConfig, make_optimizer
from recvae.training.rec_vae import PriorPosteriors, _train_phase

CPU = torch.device("cpu")
ARCH = RecVAEConfig(hidden_dim=32, n_layers=2, latent_dim=8, encoder_epochs=2, decoder_epochs=1)
BASE = TrainingConfig(epochs=2, batch_size=50, lr=1e-2, progress=False, seed=0, device="cpu", eval_k=20)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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

    def loss(x, generator=None, *, dropout=None, **known):  # known: what the phase passes precomputed
        encoder_trains = all(p.requires_grad for p in net.encoder.parameters())
        decoder_trains = all(p.requires_grad for p in net.decoder.parameters())
        assert encoder_trains != decoder_trains, "exactly one part trains in a phase"
        phase = "encoder" if encoder_trains else "decoder"
        if phase == "decoder":  # the prior the decoder phase sees is the refreshed encoder
            assert _same(_state(net.prior_encoder), _state(net.encoder))
        events.append((phase, dropout))
        return real_loss(x, generator, dropout=dropout, **known)

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


# ---------------------------------------------------------------------- computed once, not every pass
# The trainer keeps the prior's posterior of each user for an epoch (PriorPosteriors), runs the
# frozen encoder of the decoder phase once per user without a graph, and takes that posterior as
# the prior's too (the prior was just refreshed from it). These tests hold it to the step that
# computed everything in every pass.


class _EveryPass:
    """The step before the prior cache (recvae e679f1a): each pass encodes and runs the prior's encoder,
    and the composite prior is built from stacked Gaussian densities. Ignores what the trainer passes in."""

    def terms(self, x, generator=None, *, dropout=None, posterior=None, prior=None):
        normalised = l2_normalised_values(x)
        mu, log_var = self._encode(x, normalised, generator, dropout)
        z = self.reparameterize(mu, log_var, generator)
        nll = self.reconstruction_nll(z, x, generator)
        with torch.no_grad():
            prior_mu, prior_log_var = self.prior_encoder(x.to_sparse_csr(normalised))
        z, mu, log_var, prior_mu, prior_log_var = (t.float() for t in (z, mu, log_var, prior_mu, prior_log_var))
        c = self.config
        zeros = torch.zeros_like(z)
        components = torch.stack([gaussian_log_density(z, zeros, zeros),
                                  gaussian_log_density(z, prior_mu, prior_log_var),
                                  gaussian_log_density(z, zeros, torch.full_like(z, c.wide_prior_log_var))])
        log_w = torch.log(torch.tensor(c.prior_weights))
        if c.prior_mixture == "per_dim":
            log_p = torch.logsumexp(components + log_w[:, None, None], dim=0).sum(dim=-1)
        else:
            log_p = torch.logsumexp(components.sum(dim=-1) + log_w[:, None], dim=0)
        return nll, gaussian_log_density(z, mu, log_var).sum(dim=-1) - log_p


class _EveryPassRecVAE(_EveryPass, RecVAENet):
    pass


class _EveryPassJoint(_EveryPass, JointVAENet):
    pass


_CACHE_CASES = {  # two encoder and two decoder passes: the second decoder pass reads back the first's
    "recvae": (RecVAENet, _EveryPassRecVAE,
               RecVAEConfig(hidden_dim=32, n_layers=3, latent_dim=8, encoder_epochs=2, decoder_epochs=2)),
    "joint-mixture-beta": (RecVAENet, _EveryPassRecVAE,
                           RecVAEConfig(hidden_dim=32, n_layers=2, latent_dim=8, prior_mixture="joint", gamma=None,
                                        beta=0.3, decoder_epochs=2)),
    "joint-vae": (JointVAENet, _EveryPassJoint,
                  JointVAEConfig(hidden_dim=32, n_layers=2, latent_dim=8, linear_init="zeros", train_linear=True,
                                 linear_input_dropout=0.25)),
}


def _seeded(cls, n_items, config):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return cls(n_items, config)


def _fit(net, split, epochs=3):
    config = dataclasses.replace(BASE, epochs=epochs, precision="fp32")
    result = train_recvae(net, split.train, split.validation, config, CPU)
    return result.history, net.scores(SparseRows.from_scipy(split.test.fold_in)).numpy()


@pytest.mark.parametrize("case", sorted(_CACHE_CASES))
def test_fit_equals_computing_everything_in_every_pass(split, case):
    cls, reference_cls, config = _CACHE_CASES[case]
    history, scores = _fit(_seeded(cls, split.n_items, config), split)
    expected_history, expected_scores = _fit(_seeded(reference_cls, split.n_items, config), split)
    for column in ("loss", "nll", "kl", "encoder_loss", "val_ndcg@20"):
        np.testing.assert_allclose(history[column], expected_history[column], rtol=1e-5, err_msg=column)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_fit_matches_numbers_pinned_before_the_prior_cache(split):
    # Computed with recvae e679f1a (the prior's encoder run in every pass), fp32, one thread, on this data.
    history, scores = _fit(_seeded(RecVAENet, split.n_items, RecVAEConfig(hidden_dim=32, n_layers=3, latent_dim=8)),
                           split)
    expected = {
        "loss": [51.061510319612466, 49.11486154673051, 47.71380066385075],
        "nll": [50.98862718076122, 49.02282613637496, 47.622467547046895],
        "kl": [1.338421533302385, 1.7053789642392372, 1.6751630196765976],
        "encoder_loss": [52.797162529562605, 50.55986506922715, 49.33026047790943],
        "val_ndcg@20": [0.14763568339401234, 0.16176738392116857, 0.1915274727054474],
    }
    for column, values in expected.items():
        np.testing.assert_allclose(history[column], values, rtol=1e-5, err_msg=column)
    np.testing.assert_allclose(scores[:3, :6], [[-0.0931171, -0.0151287, 0.3803069, 0.1307704, -0.2387301, -0.2660993],
                                                [-0.6504624, 1.5930444, -1.2223681, -1.3524516, 0.5670606, 0.2735797],
                                                [-0.396787, 1.140891, -0.877164, -0.8163217, 0.7477934, 0.1252964]],
                               rtol=1e-5, atol=1e-5)


def _count_rows(module: torch.nn.Module, counts: list) -> None:
    """Append the number of rows of each forward of ``module`` to ``counts``."""
    def hook(mod, inputs, output):
        counts.append(output[0].shape[0])
    module.register_forward_hook(hook)


def test_the_prior_encoder_runs_once_per_user_and_the_decoder_phase_encodes_once_per_user(split):
    config = dataclasses.replace(ARCH, encoder_epochs=2, decoder_epochs=2)
    net = _net(split.n_items, config)
    prior_rows, encoder_rows = [], {"encoder": 0, "decoder": 0}
    _count_rows(net.prior_encoder, prior_rows)

    def hook(mod, inputs, output):
        phase = "encoder" if any(p.requires_grad for p in net.encoder.parameters()) else "decoder"
        encoder_rows[phase] += output[0].shape[0]

    net.encoder.register_forward_hook(hook)
    epochs = 3
    train_recvae(net, split.train, None, dataclasses.replace(BASE, epochs=epochs), CPU)
    users = int((np.diff(split.train.indptr) > 0).sum())
    assert sum(prior_rows) == users  # the first epoch's prior, once; later ones come from the decoder passes
    assert encoder_rows == {"encoder": epochs * config.encoder_epochs * users, "decoder": epochs * users}


def test_prior_posteriors_belong_to_one_prior_and_are_refilled_after_update_prior(split):
    net = _net(split.n_items)
    data = DeviceCSR(split.train)
    users = torch.from_numpy(np.flatnonzero(np.diff(split.train.indptr) > 0))
    cache = PriorPosteriors(split.train.shape[0])
    computed = []
    _count_rows(net.prior_encoder, computed)
    assert not cache.covers(net, users)
    cache.fill(net, data, users, batch_size=64)
    assert cache.covers(net, users) and sum(computed) == len(users)
    cache.fill(net, data, users, batch_size=64)
    assert sum(computed) == len(users)  # nothing to refill
    first = net.prior_posterior(data.rows(users))
    torch.testing.assert_close(cache.rows(users), first)

    with torch.no_grad():  # the encoder moves on; the prior follows it only at update_prior()
        for p in net.encoder.parameters():
            p.add_(0.05)
    assert cache.covers(net, users)
    net.update_prior()
    assert not cache.covers(net, users)
    cache.fill(net, data, users[:10], batch_size=64)  # only the rows asked for are refreshed
    assert cache.covers(net, users[:10]) and not cache.covers(net, users)
    cache.fill(net, data, users, batch_size=64)
    assert cache.covers(net, users) and sum(computed) == 3 * len(users)  # (with the check's forward above)
    refreshed = net.prior_posterior(data.rows(users))
    torch.testing.assert_close(cache.rows(users), refreshed)
    assert not torch.allclose(refreshed[0], first[0])


def test_a_decoder_phase_whose_encoder_is_not_the_prior_computes_the_prior(split):
    # The epoch refreshes the prior between the phases; called in another order, the phase must
    # neither take the posterior for the prior's nor keep it as the prior's.
    nets = {kind: _seeded(cls, split.n_items, ARCH) for kind, cls in (("new", RecVAENet), ("old", _EveryPassRecVAE))}
    data = DeviceCSR(split.train)
    users = torch.from_numpy(np.flatnonzero(np.diff(split.train.indptr) > 0))
    cache = PriorPosteriors(split.train.shape[0])
    out = {}
    for kind, net in nets.items():
        optimizers = {part: make_optimizer(getattr(net, part).parameters(), BASE) for part in ("encoder", "decoder")}
        g = torch.Generator().manual_seed(0)
        known = {"prior": cache} if kind == "new" else {}
        out[kind] = [_train_phase(net, part, optimizers[part], data, users, g, passes=1, batch_size=50, **known)
                     for part in ("encoder", "decoder", "encoder")]  # no update_prior() between
    for new, old in zip(out["new"], out["old"]):  # (loss, nll, kl) of each phase
        torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6)
    expected = _state(nets["old"])
    for name, value in _state(nets["new"]).items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)
