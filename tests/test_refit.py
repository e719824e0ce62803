"""Tuning carries into the refit: the README's own-log recipe (tune -> train --epochs-from) refits the tuned model,
for its chosen epoch, with the KL weight ending where the chosen epoch had it."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from recvae.cli import main
from recvae.nn.annealing import AnnealConfig, BetaSchedule
from recvae.runs import Run, RunError
from recvae.runs.refit import carried_anneal, earlier_record, tuned_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LINEAR = {"kind": "linear", "cap": 0.2, "total_steps": None, "ramp_fraction": 0.5, "cycles": 4, "cycle_ramp": 0.5,
          "auto_patience": 5}


def _record(anneal, planned=10, best=4, best_beta=None, steps_per_epoch=None):
    return {"model": "mult-vae", "model_params": {"anneal": anneal, "epochs": planned}, "best_epoch": best,
            "best_beta": best_beta, "steps_per_epoch": steps_per_epoch}


def _beta_curve(anneal: dict, epochs: int, steps_per_epoch: int) -> list[float]:
    """beta at the end of each epoch, by the schedule itself (the oracle for the carried one)."""
    schedule = BetaSchedule(AnnealConfig(**anneal), epochs * steps_per_epoch)
    return [schedule.beta(e * steps_per_epoch) for e in range(1, epochs + 1)]


@pytest.mark.parametrize("best", [2, 4, 5, 7, 10])
@pytest.mark.parametrize("steps", [(3, 7), (5, 5), (4, 11)])  # (tuning's, refit's steps per epoch): more users
def test_a_carried_linear_ramp_follows_the_tuned_curve_over_epochs(best, steps):
    tuned, refit = steps
    anneal, note = carried_anneal(_record(LINEAR, planned=10, best=best), best)
    expected = _beta_curve(LINEAR, 10, tuned)[:best]
    got = _beta_curve(anneal, best, refit)
    np.testing.assert_allclose(got, expected, atol=1e-12)  # the same beta at every epoch, the last one included
    assert anneal["kind"] == "linear" and anneal["total_steps"] is None and note.startswith("anneal:")


def test_a_ramp_in_absolute_steps_becomes_the_same_curve_over_epochs():
    absolute = {**LINEAR, "total_steps": 30, "ramp_fraction": 0.85}  # beta = min(cap, step / 30)
    anneal, _ = carried_anneal(_record(absolute, planned=10, best=5, steps_per_epoch=2), 5)
    schedule = BetaSchedule(AnnealConfig(**absolute), 20)
    expected = [schedule.beta(2 * e) for e in range(1, 6)]
    np.testing.assert_allclose(_beta_curve(anneal, 5, 9), expected, atol=1e-12)


def test_other_schedules():
    auto = {**LINEAR, "kind": "auto"}
    anneal, note = carried_anneal(_record(auto, best_beta=0.31), 4)
    assert anneal["kind"] == "linear" and anneal["cap"] == 0.31 and "0.310" in note
    assert carried_anneal(_record({**LINEAR, "kind": "constant"}), 4) == (None, "")
    none, note = carried_anneal(_record({**LINEAR, "kind": "cyclical"}), 4)
    assert none is None and "not carried" in note
    assert carried_anneal(_record(LINEAR, best=4), 6) == (None, "")  # the refit is not for the chosen epoch


def test_earlier_record_accepts_runs_tunings_and_their_files(tmp_path):
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "best.json").write_text(json.dumps({"model": "ease", "params": {"l2": 7.0, "progress": 0}}))
    assert tuned_params(tmp_path / "tune") == ("ease", {"l2": 7.0})
    assert tuned_params(tmp_path / "tune" / "best.json") == ("ease", {"l2": 7.0})
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "best.json").write_text("[1, 2]")
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "config.json").write_text(json.dumps({"model": "mult-dae", "best_epoch": 3}))
    (tmp_path / "failed" / "metrics.json").write_text(json.dumps({"status": "failed", "error": "training diverged"}))
    for bad, text in ((tmp_path / "none", "not a run directory"), (tmp_path / "junk", "not a run's config.json"),
                      (tmp_path / "failed", r"that run failed \(training diverged\)")):
        with pytest.raises(RunError, match=text):
            earlier_record(bad)


@pytest.fixture(scope="module")
def log_csv(tmp_path_factory):
    rng = np.random.default_rng(0)
    users, items = 160, 50
    taste = rng.integers(0, 4, users)
    rows = [(f"u{u}", f"m{i}", 5.0) for u in range(users) for i in range(items)
            if rng.random() < (0.35 if i % 4 == taste[u] else 0.04)]
    path = tmp_path_factory.mktemp("log") / "log.csv"
    pd.DataFrame(rows, columns=["customer", "product", "stars"]).to_csv(path, index=False)
    return path


def test_the_readme_recipe_refits_the_tuned_model(log_csv, tmp_path, capsys):
    pytest.importorskip("optuna")
    tune_dir, prod = tmp_path / "tune", tmp_path / "prod"
    cols = ["--user-col", "customer", "--item-col", "product", "--rating-col", "stars"]
    assert main(["tune", str(log_csv), "--model", "mult-vae", "--search", "{lr = [0.1, 0.2]}", "--trials", "2",
                 "--sampler", "random", "--no-prune", "--param", "epochs=12", "--param", "latent_dim=4",
                 "--param", "hidden_dims=[8]", "--param", "anneal={kind = 'linear', cap = 0.3}",
                 "--heldout-users", "25", "-o", str(tune_dir), "-q", *cols]) == 0
    best = json.loads((tune_dir / "best.json").read_text())
    trials = pd.read_csv(tune_dir / "trials.csv")
    assert len(trials) == 2 and best["model"] == "mult-vae"
    assert math.isclose(best["params"]["lr"], trials.loc[trials[best["metric"]].idxmax(), "lr"])
    assert 1 <= best["best_epoch"] < 12, "the fixture needs a chosen epoch before the last one"
    capsys.readouterr()

    assert main(["train", str(log_csv), "-o", str(prod), "--heldout-users", "0", "--epochs-from", str(tune_dir),
                 *cols]) == 0
    printed = capsys.readouterr().out
    assert "anneal: beta ramps to" in printed  # the log says what was carried
    run = Run.load(prod)
    params = json.loads(json.dumps(run.model.get_params(), default=str))
    for key, value in best["params"].items():  # the refit is the tuned model ...
        if key == "anneal":  # ... whose KL schedule is carried, not copied
            assert params[key]["kind"] == value["kind"] and params[key]["cap"] <= value["cap"]
        elif key != "epochs":
            assert params[key] == value, key
    assert params["epochs"] == best["best_epoch"]  # ... for its chosen epoch ...
    history = pd.read_csv(prod / "history.csv")
    assert len(history) == best["best_epoch"]
    assert math.isclose(history["beta"].iloc[-1], best["best_beta"], rel_tol=1e-9)  # ... ending at its beta
    tuned_curve = [0.3 * min(1.0, e / (0.85 * 12)) for e in range(1, best["best_epoch"] + 1)]  # the tuned trial's
    np.testing.assert_allclose(history["beta"], tuned_curve, rtol=1e-9)  # beta at every epoch, as tuned
