"""The Mult-VAE training loop (``recvae.training.train_vae``), pinned by computations of its own.

Each test derives what the loop must do from the documented recipe, not by
running the code under test a second time: the noise of z has variance
exp(log_var); the beta multiplying the KL at gradient step s is the schedule's
beta(s); patience counts evaluations since the last improvement; the weights
kept are those of the best epoch (a twin run stopped at that epoch has them).
Validation scores are scripted where a test needs a known sequence of them.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.distributions as D
from conftest import random_rows

from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.data.splits import HeldOut
from recvae.evaluation import evaluate_heldout
from recvae.models import VAE, AnnealConfig, VAEConfig
from recvae.nn.sparse import SparseRows
from recvae.training import TrainingConfig, make_optimizer, train_vae

CPU = torch.device("cpu")
ARCH = VAEConfig(hidden_dims=(32,), latent_dim=8)
BASE = TrainingConfig(epochs=3, batch_size=50, lr=1e-2, progress=False, seed=0, device="cpu", eval_k=20,
                      anneal=AnnealConfig(kind="constant", cap=0.2))


# On 2 shared cores one thread is faster, and the twin runs below compare weights exactly.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def split():
    data = synthetic_interactions(SyntheticConfig(n_users=300, n_items=120, seed=3))
    return strong_generalization(data, 40)


def _net(n_items: int, seed: int = 0, config: VAEConfig = ARCH) -> VAE:
    """A freshly initialised network; the same seed gives the same weights (global RNG left alone)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return VAE(n_items, config)


def _steps_per_epoch(train: sp.csr_matrix, batch_size: int) -> int:
    return math.ceil(int((np.diff(train.indptr) > 0).sum()) / batch_size)


def _state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


# ---------------------------------------------------------------------- the network's noise and loss
def test_reparameterisation_noise_has_variance_exp_log_var():
    net = _net(50).train()
    n = 20_000
    log_var = torch.tensor([-2.0, -0.5, 0.0, 1.0, 2.0]).expand(n, 5)
    mu = torch.linspace(-1.0, 1.0, 5).expand(n, 5)
    noise = net.reparameterize(mu, log_var, torch.Generator().manual_seed(0)) - mu
    expected = log_var[0].exp()
    # The sample variance of n normal draws has relative sd sqrt(2 / n) = 1%; 5% is a wide margin,
    # and a standard deviation of exp(log_var) instead (variance exp(2 log_var)) misses by >= 40%.
    torch.testing.assert_close(noise.var(dim=0), expected, rtol=0.05, atol=0.0)
    assert (noise.mean(dim=0).abs() < 4 * (expected / n).sqrt()).all()
    net.eval()
    assert torch.equal(net.reparameterize(mu, log_var), mu)  # inference uses the posterior mean


def test_loss_is_nll_plus_beta_times_closed_form_kl():
    torch.manual_seed(0)
    net = VAE(50, VAEConfig(hidden_dims=(16,), latent_dim=4, input_dropout=0.0)).train()
    x = SparseRows.from_scipy(random_rows())
    beta = 0.37
    parts = net.loss(x, beta, torch.Generator().manual_seed(3))
    with torch.no_grad():
        mu, log_var = net.encode(x)  # no dropout: the generator's first draw is the noise
        sigma = torch.exp(0.5 * log_var)
        z = mu + sigma * torch.randn(mu.shape, generator=torch.Generator().manual_seed(3))
        logits = net.decode(z)
        nll = -(torch.from_numpy(random_rows().toarray()) * torch.log_softmax(logits, dim=1)).sum(dim=1)
        kl = D.kl_divergence(D.Normal(mu, sigma), D.Normal(0.0, 1.0)).sum(dim=1)
    torch.testing.assert_close(parts["nll"], nll.mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts["kl"], kl.mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(parts["loss"], nll.mean() + beta * kl.mean(), rtol=1e-5, atol=1e-5)


def test_decoder_applies_the_activation_between_layers_only():
    # I-600-200-600-I: z enters the first decoder layer as it is (no activation on the code).
    net = _net(50)
    z = torch.randn(5, ARCH.latent_dim, generator=torch.Generator().manual_seed(1)) * 2
    first, last = net.decoder
    torch.testing.assert_close(net.decode(z), last(torch.tanh(first(z))))


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_scores_are_deterministic_and_dropout_free_in_training_mode(dropout):
    # Validation scores the network while it is in training mode; they must not carry dropout or noise.
    net = _net(50, config=dataclasses.replace(ARCH, input_dropout=dropout))
    x = SparseRows.from_scipy(random_rows())
    net.eval()
    with torch.no_grad():
        mu, _ = net.encode(x)
        expected = net.decode(mu)
    net.train()
    torch.testing.assert_close(net.scores(x), expected)
    assert net.training  # the caller's mode is restored


# ---------------------------------------------------------------------- beta at each step
@pytest.mark.parametrize("anneal", [
    AnnealConfig(kind="linear", cap=0.2, total_steps=100),
    AnnealConfig(kind="linear", cap=0.2, ramp_fraction=0.5),
    AnnealConfig(kind="cyclical", cap=0.3, cycles=2, cycle_ramp=0.5),
], ids=["liang-ramp", "ramp-scaled-to-run", "cyclical"])
def test_each_step_uses_the_beta_of_its_global_step(split, monkeypatch, anneal):
    net = _net(split.n_items)
    used = []
    real_loss = net.loss

    def spy(x, beta, generator=None):  # the beta that actually multiplies the KL in this step's loss
        used.append(float(beta))
        return real_loss(x, beta, generator)

    monkeypatch.setattr(net, "loss", spy)
    cfg = dataclasses.replace(BASE, epochs=3, lr=1e-3, anneal=anneal)
    result = train_vae(net, split.train, None, cfg, CPU)
    per_epoch = _steps_per_epoch(split.train, cfg.batch_size)
    planned = cfg.epochs * per_epoch

    def beta(step: int) -> float:  # the schedules of AnnealConfig's docstring, written out
        if anneal.kind == "cyclical":
            period = planned / anneal.cycles
            return anneal.cap * min(1.0, ((step % period) / period) / anneal.cycle_ramp)
        ramp = anneal.total_steps if anneal.total_steps is not None else anneal.ramp_fraction * planned / anneal.cap
        return min(anneal.cap, step / ramp)

    assert result.steps == planned == len(used)
    assert used == pytest.approx([beta(s) for s in range(planned)], abs=1e-12)
    assert max(used) > 0.05  # the schedule really moved (a beta stuck near 0 would pass a loose check)
    # The history reports the beta after each epoch's last step.
    assert list(result.history["beta"]) == pytest.approx([beta(e * per_epoch) for e in (1, 2, 3)], abs=1e-12)


def test_weight_decay_applies_to_weight_matrices_only():
    net = _net(50)
    optimizer = make_optimizer(net.parameters(), dataclasses.replace(BASE, weight_decay=0.1))
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    for name, p in net.named_parameters():
        assert decay[id(p)] == (0.1 if name.endswith("weight") else 0.0), name


def test_seed_drives_shuffling_dropout_and_noise(split):
    cfg = dataclasses.replace(BASE, epochs=1)
    runs = {}
    for seed in (0, 0, 1):
        net = _net(split.n_items)  # identical initial weights every time
        train_vae(net, split.train, None, dataclasses.replace(cfg, seed=seed), CPU)
        runs.setdefault(seed, []).append(_state(net))
    _assert_same_weights(runs[0][0], runs[0][1])
    assert not torch.equal(runs[0][0]["decoder.0.weight"], runs[1][0]["decoder.0.weight"])


# ---------------------------------------------------------------------- validation, patience, best weights
class ScriptedScores:
    """Stands in for ``net.scores`` during validation: epoch e ranks the targets with strength levels[e].

    Scores are fixed noise plus ``level`` on each target item, so a larger level only moves
    target items up: validation NDCG is non-decreasing in the level (checked strictly below).
    """

    def __init__(self, held: HeldOut, levels: list[float]) -> None:
        self.held, self.levels, self.calls = held, levels, 0
        self.noise = np.random.default_rng(0).random(held.target.shape).astype(np.float32)
        self.target = held.target.toarray().astype(np.float32)

    def at(self, level: float) -> np.ndarray:
        return self.noise + level * self.target

    def __call__(self, x: SparseRows) -> torch.Tensor:
        assert x.n_rows == self.held.n_users, "validation must score all users in one batch here"
        level = self.levels[min(self.calls, len(self.levels) - 1)]
        self.calls += 1
        return torch.from_numpy(self.at(level))

    def ndcg(self, level: float, k: int) -> float:
        return evaluate_heldout(lambda rows: self.at(level), self.held, ks=(k,), metrics=("ndcg",))[f"ndcg@{k}"]


LEVELS = [0.0, 0.15, 0.3, 0.5, 0.8]  # strictly increasing validation NDCG (asserted)
# Epoch-by-epoch quality: improves at epochs 1, 2 and 4; epochs 5 and 6 tie below the best;
# epoch 7 would be the best of all, but patience 2 must stop training at epoch 6.
SEQUENCE = [LEVELS[i] for i in (0, 2, 1, 3, 2, 2, 4, 4, 4, 4)]


def scripted_run(net, train_fn, split, cfg):
    """Train with scripted validation scores; returns (result, the scripted scorer)."""
    scorer = ScriptedScores(split.validation, SEQUENCE)
    ndcgs = [scorer.ndcg(level, cfg.eval_k) for level in LEVELS]
    assert all(a < b for a, b in zip(ndcgs, ndcgs[1:])), ndcgs
    net.scores = scorer
    result = train_fn(net, split.train, split.validation, cfg, CPU)
    del net.scores
    return result, scorer


def test_patience_counts_from_the_last_improvement_and_best_weights_are_kept(split):
    cfg = dataclasses.replace(BASE, epochs=len(SEQUENCE), patience=2, eval_batch_size=10_000)
    net = _net(split.n_items)
    result, scorer = scripted_run(net, train_vae, split, cfg)
    # Evaluations since the best: 0, 0, 1, 0, 1, 2 -> stop after epoch 6; the best is epoch 4.
    assert list(result.history["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert result.stopped_early and result.best_epoch == 4
    assert result.best_score == pytest.approx(scorer.ndcg(LEVELS[3], cfg.eval_k))
    np.testing.assert_allclose(result.history["val_ndcg@20"],
                               [scorer.ndcg(level, cfg.eval_k) for level in SEQUENCE[:6]])
    # The kept weights are epoch 4's: a twin trained for exactly 4 epochs from the same start has them.
    twin = _net(split.n_items)
    train_vae(twin, split.train, None, dataclasses.replace(cfg, epochs=4, patience=None), CPU)
    _assert_same_weights(_state(net), _state(twin))
    assert not net.training


def test_patience_does_not_stop_before_min_epochs(split):
    # The same scores: patience 2 alone stops after epoch 6; with min_epochs 8 the run goes on to
    # epoch 8 and finds epoch 7's better score, then stops (two evaluations without improvement).
    cfg = dataclasses.replace(BASE, epochs=len(SEQUENCE), patience=2, min_epochs=8, eval_batch_size=10_000)
    result, scorer = scripted_run(_net(split.n_items), train_vae, split, cfg)
    assert list(result.history["epoch"]) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert result.stopped_early and result.best_epoch == 7
    with pytest.raises(ValueError, match="min_epochs=-1: expected an integer >= 0"):
        dataclasses.replace(BASE, min_epochs=-1)


def test_without_patience_all_epochs_run_and_the_best_epoch_is_restored(split):
    cfg = dataclasses.replace(BASE, epochs=5, eval_batch_size=10_000)
    net = _net(split.n_items)
    result, _ = scripted_run(net, train_vae, split, cfg)
    assert len(result.history) == 5 and not result.stopped_early and result.best_epoch == 4
    twin = _net(split.n_items)
    train_vae(twin, split.train, None, dataclasses.replace(cfg, epochs=4), CPU)
    _assert_same_weights(_state(net), _state(twin))


def test_validation_runs_every_eval_every_epochs_and_after_the_last(split):
    cfg = dataclasses.replace(BASE, epochs=5, eval_every=2)
    result = train_vae(_net(split.n_items), split.train, split.validation, cfg, CPU)
    validated = result.history.loc[result.history["val_ndcg@20"].notna(), "epoch"]
    assert list(validated) == [2, 4, 5]


# ----------------------------------------------------------------------------- precision chosen for the hardware
def test_auto_precision_picks_bf16_only_where_the_hardware_has_it(monkeypatch):
    from recvae.training import AUTO_PRECISION_ENV, PRECISIONS, TrainingConfig, cpu_has_native_bf16, resolve_precision

    monkeypatch.delenv(AUTO_PRECISION_ENV, raising=False)  # the hardware decides (a suite run may force bf16)
    cpu = torch.device("cpu")
    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    bf16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    amx = "flags : avx2 amx_tile amx_bf16\n"
    assert not cpu_has_native_bf16(avx2) and cpu_has_native_bf16(bf16) and cpu_has_native_bf16(amx)
    assert resolve_precision("auto", cpu, cpuinfo=avx2) == "fp32"
    assert resolve_precision("auto", cpu, cpuinfo=bf16) == "bf16"
    assert resolve_precision("fp32", cpu, cpuinfo=bf16) == "fp32" and resolve_precision("bf16", cpu, cpuinfo=avx2) == "bf16"
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", cuda) == "fp32"
    assert TrainingConfig().precision == "auto" and set(PRECISIONS) == {"auto", "fp32", "bf16"}
    with pytest.raises(ValueError, match="precision='fp16': expected one of 'auto', 'fp32', 'bf16'"):
        TrainingConfig(precision="fp16")


def test_the_chosen_precision_is_recorded_in_the_history(monkeypatch):
    import recvae.training.device as device_module
    from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
    from recvae.models import MultVAE

    monkeypatch.delenv(device_module.AUTO_PRECISION_ENV, raising=False)  # the hardware decides
    split = strong_generalization(synthetic_interactions(SyntheticConfig(n_users=150, n_items=40, seed=4)), 15)
    for native, expected in ((False, "fp32"), (True, "bf16")):
        monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda cpuinfo=None, native=native: native)
        model = MultVAE(latent_dim=4, hidden_dims=[8], epochs=1, progress=False, eval_k=20, device="cpu").fit(split)
        assert list(model.history_["precision"]) == [expected]


@pytest.mark.parametrize("model_name", ["mult-vae", "recvae", "joint-vae"])
def test_a_fitted_model_keeps_no_gradients(split, model_name):
    # The last step's gradients are a second copy of every weight (GBs at a million items) that
    # nothing reads after fit; the loops drop them with the best weights' restore.
    from recvae.models.registry import make_model

    model = make_model(model_name, {"epochs": 2, "progress": False, "device": "cpu"}).fit(split)
    params = list(model.net_.parameters())
    assert params and all(p.grad is None for p in params)
