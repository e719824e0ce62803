"""The training loops' bookkeeping (``train_vae`` and ``train_recvae``): best epoch, best weights,
patience and min_epochs, eval_every, checkpoints and resume, divergence -- with the best epoch
never the last one.

Oracles of their own: validation scores are scripted per epoch (``recvae.training.validation.evaluate_model``
is replaced, and the epoch is read from the gradient steps the net has taken, not from the loop's
counters), so the best epoch, its score and where patience must stop are known by hand; the
weights a run must return are those of a twin trained for exactly the best epoch's number of
epochs without validation, compared bit for bit.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch

import recvae.training.loop as loop
import recvae.training.rec_vae as rec_vae_loop
import recvae.training.validation as validation
from recvae.data import SyntheticConfig, strong_generalization, synthetic_interactions
from recvae.models import VAE, AnnealConfig, VAEConfig
from recvae.models.rec_vae import RecVAEConfig, RecVAENet, train_recvae
from recvae.training import DIVERGENCE_FACTOR, TrainingConfig, TrainingDivergedError, divergence, train_vae

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = torch.device("cpu")
BATCH = 50
BASE = TrainingConfig(epochs=4, batch_size=BATCH, lr=1e-2, progress=False, seed=0, device="cpu", eval_k=20,
                      precision="fp32", anneal=AnnealConfig(kind="constant", cap=0.2))


@pytest.fixture(scope="module")
def split():
    return strong_generalization(synthetic_interactions(SyntheticConfig(n_users=200, n_items=60, seed=5)), 20)


@dataclass(frozen=True)
class Trainer:
    name: str
    build: Callable[[int], torch.nn.Module]
    train: Callable
    passes: int  # gradient passes over the users per epoch

    def net(self, n_items: int) -> torch.nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return self.build(n_items)


MULT_VAE = Trainer("mult-vae", lambda n: VAE(n, VAEConfig(hidden_dims=(8,), latent_dim=4)), train_vae, 1)
RECVAE = Trainer("recvae", lambda n: RecVAENet(n, RecVAEConfig(hidden_dim=8, n_layers=2, latent_dim=4,
                                                                 encoder_epochs=1, decoder_epochs=1)),
                 train_recvae, 2)
TRAINERS = [pytest.param(MULT_VAE, id="mult-vae"), pytest.param(RECVAE, id="recvae")]


def _steps_per_epoch(split, trainer: Trainer) -> int:
    return math.ceil(int((np.diff(split.train.indptr) > 0).sum()) / BATCH) * trainer.passes


class Scripted:
    """Validation NDCG scripted per epoch for one net: ``scores[epoch]``.

    The epoch is the number of gradient steps the net has taken (its ``loss`` calls) over the
    steps of an epoch, plus ``done`` epochs (a resumed run's checkpoint); ``validated`` lists
    the epochs validation ran after.
    """

    def __init__(self, monkeypatch, net, split, trainer: Trainer, scores: dict[int, float], done: int = 0) -> None:
        self.per_epoch = _steps_per_epoch(split, trainer)
        self.steps = done * self.per_epoch
        self.scores = scores
        self.validated: list[int] = []
        real = net.loss

        def counting(*args, **kwargs):
            self.steps += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(net, "loss", counting)
        monkeypatch.setattr(validation, "evaluate_model", self.evaluate)

    def evaluate(self, scorer, held, *, ks, metrics, batch_size):
        assert self.steps % self.per_epoch == 0, "validation ran inside an epoch"
        epoch = self.steps // self.per_epoch
        self.validated.append(epoch)
        return {f"ndcg@{ks[0]}": self.scores[epoch]}


def _state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _twin(trainer: Trainer, split, config: TrainingConfig, epochs: int) -> dict[str, torch.Tensor]:
    """The weights after exactly ``epochs`` epochs of the same run, trained without validation."""
    net = trainer.net(split.n_items)
    plain = dataclasses.replace(config, epochs=epochs, patience=None, min_epochs=0, checkpoint=None, resume=False,
                                history_csv=None)
    trainer.train(net, split.train, None, plain, CPU)
    return _state(net)


def _assert_weights(net: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    got = _state(net)
    assert got.keys() == expected.keys()
    for name in got:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)


def _run(monkeypatch, trainer, split, config, scores, done=0, **kwargs):
    """Train a fresh net under scripted scores: (net, result, script)."""
    net = trainer.net(split.n_items)
    script = Scripted(monkeypatch, net, split, trainer, scores, done)
    result = trainer.train(net, split.train, split.validation, config, CPU, **kwargs)
    return net, result, script


def _validated(result, config) -> list[int]:
    history = result.history
    return [int(e) for e in history.loc[history[f"val_ndcg@{config.eval_k}"].notna(), "epoch"]]


# ---------------------------------------------------------------------- the best epoch's weights, not the last
@pytest.mark.parametrize("trainer", TRAINERS)
def test_the_best_epoch_in_the_middle_is_returned_with_its_weights(monkeypatch, split, trainer):
    scores = {1: 0.10, 2: 0.30, 3: 0.20, 4: 0.25}
    net, result, script = _run(monkeypatch, trainer, split, BASE, scores)
    assert script.validated == [1, 2, 3, 4]
    assert result.best_epoch == 2 and result.best_score == 0.30 and not result.stopped_early
    assert list(result.history["epoch"]) == [1, 2, 3, 4]
    assert list(result.history["val_ndcg@20"]) == [0.10, 0.30, 0.20, 0.25]
    _assert_weights(net, _twin(trainer, split, BASE, 2))
    assert not net.training


# ---------------------------------------------------------------------- checkpoints and resume
@pytest.mark.parametrize("trainer", TRAINERS)
def test_resume_after_the_peak_returns_the_peaks_weights(monkeypatch, split, trainer, tmp_path, caplog):
    """A checkpoint taken at epoch 3, after the peak at epoch 2: resuming to 4 epochs returns epoch 2's weights and
    score; resuming with epochs equal to the checkpoint's trains nothing and says so; one more epoch trains it."""
    scores = {1: 0.10, 2: 0.30, 3: 0.20, 4: 0.25, 5: 0.05}
    config = dataclasses.replace(BASE, epochs=3, checkpoint=str(tmp_path / "run.pt"))
    _run(monkeypatch, trainer, split, config, scores)
    peak = _twin(trainer, split, BASE, 2)

    resumed = dataclasses.replace(config, resume=True)
    with caplog.at_level(logging.WARNING):
        net, result, script = _run(monkeypatch, trainer, split, resumed, scores, done=3)  # epochs == the checkpoint's
    assert "already reached epoch 3" in caplog.text and "nothing is trained" in caplog.text
    assert script.validated == [] and list(result.history["epoch"]) == [1, 2, 3]
    assert result.best_epoch == 2 and result.best_score == 0.30
    _assert_weights(net, peak)

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        net, result, script = _run(monkeypatch, trainer, split, dataclasses.replace(resumed, epochs=4), scores,
                                   done=3)
    assert "nothing is trained" not in caplog.text
    assert script.validated == [4]
    assert list(result.history["epoch"]) == [1, 2, 3, 4]
    assert list(result.history["val_ndcg@20"]) == [0.10, 0.30, 0.20, 0.25]
    assert result.best_epoch == 2 and result.best_score == 0.30 and not result.stopped_early
    _assert_weights(net, peak)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_a_resumed_run_keeps_counting_patience_from_the_checkpoint(monkeypatch, split, trainer, tmp_path):
    """Best at epoch 1, patience 3: the uninterrupted run stops after epoch 4. Checkpointed at epoch 3 (two
    evaluations without improvement) and resumed, it must stop at epoch 4 too, not count patience afresh."""
    scores = {1: 0.30, 2: 0.10, 3: 0.20, 4: 0.15, 5: 0.12, 6: 0.11, 7: 0.10}
    config = dataclasses.replace(BASE, epochs=7, patience=3, checkpoint=str(tmp_path / "run.pt"))
    _run(monkeypatch, trainer, split, dataclasses.replace(config, epochs=3), scores)
    net, result, script = _run(monkeypatch, trainer, split, dataclasses.replace(config, resume=True), scores, done=3)
    assert script.validated == [4]
    assert list(result.history["epoch"]) == [1, 2, 3, 4]
    assert result.stopped_early and result.best_epoch == 1 and result.best_score == 0.30
    _assert_weights(net, _twin(trainer, split, BASE, 1))


@pytest.mark.parametrize("trainer", TRAINERS)
def test_resuming_an_early_stopped_run_trains_nothing(monkeypatch, split, trainer, tmp_path, caplog):
    scores = {e: s for e, s in enumerate([0.10, 0.30, 0.20, 0.20, 0.90, 0.90, 0.90, 0.90], start=1)}
    config = dataclasses.replace(BASE, epochs=6, patience=2, checkpoint=str(tmp_path / "run.pt"))
    _, first, _ = _run(monkeypatch, trainer, split, config, scores)
    assert first.stopped_early and list(first.history["epoch"]) == [1, 2, 3, 4]
    with caplog.at_level(logging.WARNING):
        net, result, script = _run(monkeypatch, trainer, split, dataclasses.replace(config, epochs=8, resume=True),
                                   scores, done=4)
    assert "stopped early at epoch 4" in caplog.text
    assert script.validated == [] and list(result.history["epoch"]) == [1, 2, 3, 4]
    assert result.stopped_early and result.best_epoch == 2 and result.best_score == 0.30
    _assert_weights(net, _twin(trainer, split, BASE, 2))


@pytest.mark.parametrize("trainer", TRAINERS)
def test_the_checkpoint_holds_an_epoch_before_on_epoch_can_stop_the_run(monkeypatch, split, trainer, tmp_path):
    """``on_epoch`` runs once the epoch is in the history and the checkpoint: a tuner that prunes (raises) at
    epoch 2 leaves a checkpoint of epoch 2, and resuming continues from epoch 3."""
    scores = {1: 0.10, 2: 0.30, 3: 0.20, 4: 0.25}
    csv = tmp_path / "history.csv"
    config = dataclasses.replace(BASE, checkpoint=str(tmp_path / "run.pt"), history_csv=str(csv))

    class Pruned(Exception):
        pass

    def prune_at_two(epoch, score):
        if epoch == 2:
            raise Pruned

    with pytest.raises(Pruned):
        _run(monkeypatch, trainer, split, config, scores, on_epoch=prune_at_two)
    saved = torch.load(config.checkpoint, weights_only=True)
    assert saved["state"]["epoch"] == 2 and saved["state"]["best_epoch"] == 2
    assert len(csv.read_text().strip().splitlines()) == 1 + 2
    net, result, script = _run(monkeypatch, trainer, split, dataclasses.replace(config, resume=True), scores, done=2)
    assert script.validated == [3, 4] and list(result.history["epoch"]) == [1, 2, 3, 4]
    assert result.best_epoch == 2
    _assert_weights(net, _twin(trainer, split, BASE, 2))


# ---------------------------------------------------------------------- patience, min_epochs, ties: both sides
# Best at epoch 2; every later epoch scores below it, epoch 5 would be the best of all.
PATIENCE_SCORES = {1: 0.10, 2: 0.30, 3: 0.20, 4: 0.20, 5: 0.90, 6: 0.90}


@pytest.mark.parametrize("epochs, stops", [(3, False), (4, True)], ids=["one-before-the-limit", "at-the-limit"])
def test_patience_stops_exactly_at_its_limit(monkeypatch, split, epochs, stops):
    """Patience 2 after the best epoch 2: epoch 3 is one evaluation without improvement (goes on), epoch 4 the
    second (stops, even when it is the last planned epoch)."""
    config = dataclasses.replace(BASE, epochs=epochs, patience=2)
    net, result, _ = _run(monkeypatch, MULT_VAE, split, config, PATIENCE_SCORES)
    assert list(result.history["epoch"]) == list(range(1, epochs + 1))
    assert result.stopped_early is stops and result.best_epoch == 2 and result.best_score == 0.30
    _assert_weights(net, _twin(MULT_VAE, split, BASE, 2))


def test_patience_stops_before_a_later_better_epoch(monkeypatch, split):
    config = dataclasses.replace(BASE, epochs=6, patience=2)
    _, result, script = _run(monkeypatch, MULT_VAE, split, config, PATIENCE_SCORES)
    assert script.validated == [1, 2, 3, 4] and result.stopped_early and result.best_epoch == 2


@pytest.mark.parametrize("min_epochs", [2, 3, 4])
def test_min_epochs_holds_patience_off_until_exactly_that_epoch(monkeypatch, split, min_epochs):
    """Best at epoch 1, patience 1: patience alone stops after epoch 2. min_epochs 2 lets it (the limit is met at
    epoch 2 exactly); min_epochs 3 and 4 keep training to exactly that epoch, not one more."""
    scores = {1: 0.30, **{e: 0.10 for e in range(2, 8)}}
    config = dataclasses.replace(BASE, epochs=7, patience=1, min_epochs=min_epochs)
    net, result, _ = _run(monkeypatch, MULT_VAE, split, config, scores)
    assert list(result.history["epoch"]) == list(range(1, min_epochs + 1))
    assert result.stopped_early and result.best_epoch == 1 and result.best_score == 0.30
    _assert_weights(net, _twin(MULT_VAE, split, BASE, 1))


def test_an_equal_score_is_not_an_improvement(monkeypatch, split):
    """Epochs 3 and 4 tie the best (epoch 2): no improvement, so patience 2 stops at 4 and epoch 2's weights stay."""
    scores = {1: 0.10, 2: 0.30, 3: 0.30, 4: 0.30, 5: 0.30}
    config = dataclasses.replace(BASE, epochs=5, patience=2)
    net, result, _ = _run(monkeypatch, MULT_VAE, split, config, scores)
    assert list(result.history["epoch"]) == [1, 2, 3, 4]
    assert result.stopped_early and result.best_epoch == 2
    _assert_weights(net, _twin(MULT_VAE, split, BASE, 2))


# ---------------------------------------------------------------------- eval_every and the last epoch
@pytest.mark.parametrize("trainer", TRAINERS)
@pytest.mark.parametrize("epochs, every, validated", [(5, 2, [2, 4, 5]), (4, 2, [2, 4]), (1, 3, [1])],
                         ids=["last-epoch-off-the-cycle", "last-epoch-on-the-cycle", "one-epoch"])
def test_validation_runs_every_eval_every_epochs_and_after_the_last(monkeypatch, split, trainer, epochs, every,
                                                                    validated):
    scores = {1: 0.40, 2: 0.30, 3: 0.99, 4: 0.10, 5: 0.20}  # 3 is never validated, 1 only in a one-epoch run
    config = dataclasses.replace(BASE, epochs=epochs, eval_every=every)
    calls = []
    net, result, script = _run(monkeypatch, trainer, split, config, scores,
                               on_epoch=lambda e, s: calls.append((e, s)))
    assert script.validated == validated == _validated(result, config) == [e for e, _ in calls]
    assert [s for _, s in calls] == [scores[e] for e in validated]
    best = max(validated, key=scores.__getitem__)
    assert result.best_epoch == best and result.best_score == scores[best]
    _assert_weights(net, _twin(trainer, split, BASE, best))


def test_patience_counts_evaluations_not_epochs(monkeypatch, split):
    """eval_every 2, patience 2, best at epoch 2: evaluations at 4 and 6 are the two without improvement."""
    scores = {2: 0.30, 4: 0.20, 6: 0.20, 8: 0.90}
    config = dataclasses.replace(BASE, epochs=8, eval_every=2, patience=2)
    _, result, script = _run(monkeypatch, MULT_VAE, split, config, scores)
    assert script.validated == [2, 4, 6] and list(result.history["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert result.stopped_early and result.best_epoch == 2


# ---------------------------------------------------------------------- divergence
def test_divergence_is_more_than_the_factor_times_the_first_batch_loss():
    factor = DIVERGENCE_FACTOR
    assert divergence(factor * 2.0, 2.0) is None  # exactly the factor: not more
    assert divergence(factor * 2.0 + 0.5, 2.0) is not None
    assert divergence(1.0, 2.0) is None
    # A negative reference (a Gaussian likelihood with learned variance): the scale is |reference|.
    limit = -10.0 + (factor - 1.0) * 10.0
    assert divergence(-15.0, -10.0) is None and divergence(-5.0, -10.0) is None
    assert divergence(limit, -10.0) is None and divergence(limit + 1.0, -10.0) is not None
    assert divergence(float("nan"), 2.0) is not None and divergence(float("inf"), None) is not None
    assert divergence(1e9, None) is None and divergence(1e9, 0.0) is None


@pytest.mark.parametrize("trainer", TRAINERS)
def test_a_diverging_epoch_restores_the_best_epoch_before_it(monkeypatch, split, trainer):
    """The loss (RecVAE: the encoder phase's) explodes at epoch 3; the best validated epoch is 1, not 2."""
    steps = [0]
    if trainer is MULT_VAE:
        real_step = loop.train_step
        per_epoch = _steps_per_epoch(split, trainer)

        def step(*args, **kwargs):
            parts = real_step(*args, **kwargs)
            steps[0] += 1
            late = (steps[0] - 1) // per_epoch + 1 >= 3
            return {k: v * 1e6 for k, v in parts.items()} if late else parts

        monkeypatch.setattr(loop, "train_step", step)
    else:
        real_phase = rec_vae_loop._train_phase

        def phase(net, part, *args, **kwargs):
            means = real_phase(net, part, *args, **kwargs)
            if part == "encoder":
                steps[0] += 1
                if steps[0] >= 3:
                    return means * 1e6
            return means

        monkeypatch.setattr(rec_vae_loop, "_train_phase", phase)
    config = dataclasses.replace(BASE, epochs=4)
    net = trainer.net(split.n_items)
    Scripted(monkeypatch, net, split, trainer, {1: 0.30, 2: 0.20, 3: 0.90, 4: 0.90})
    with pytest.raises(TrainingDivergedError) as info:
        trainer.train(net, split.train, split.validation, config, CPU)
    assert "at epoch 3" in str(info.value)
    if trainer is RECVAE:
        assert "encoder" in str(info.value)
    result = info.value.result
    assert list(result.history["epoch"]) == [1, 2] and result.best_epoch == 1 and result.best_score == 0.30
    monkeypatch.undo()
    _assert_weights(net, _twin(trainer, split, BASE, 1))


def test_early_stopping_is_on_by_default_and_short_runs_never_stop(monkeypatch, split):
    """The default patience (20 evaluations): best at epoch 2 of 40 planned stops at epoch 22; a run of 20
    epochs or fewer trains them all."""
    assert TrainingConfig().patience == 20
    scores = {1: 0.1, 2: 0.5, **{e: 0.2 for e in range(3, 41)}}
    default = dataclasses.replace(BASE, patience=TrainingConfig().patience)
    _, result, _ = _run(monkeypatch, MULT_VAE, split, dataclasses.replace(default, epochs=40), scores)
    assert result.stopped_early and result.best_epoch == 2 and list(result.history["epoch"]) == list(range(1, 23))
    _, short, _ = _run(monkeypatch, MULT_VAE, split, dataclasses.replace(default, epochs=20), scores)
    assert not short.stopped_early and len(short.history) == 20
