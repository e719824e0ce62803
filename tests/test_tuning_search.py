"""optuna_search and the per-epoch hook: search spaces, edges, samplers, pruning, config, runner and CLI.

Small seeded data, one BLAS and one torch thread (the searches fit many tiny models).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import recvae.training.loop as loop
import recvae.tuning as tuning
import recvae.tuning.search as tuning_search
from recvae.data.splits import strong_generalization
from recvae.data.synthetic import SyntheticConfig, synthetic_interactions, synthetic_log
from recvae.evaluation import evaluate
from recvae.models import EASE, MultVAE, Popularity, RecVAE
from recvae.tuning import (
    Choices,
    Range,
    SearchResult,
    SearchSpaceError,
    edge_note,
    grid_edges,
    grid_search,
    optuna_search,
    search_space,
    space_edges,
)

optuna = pytest.importorskip("optuna")

TINY_VAE = {"epochs": 6, "hidden_dims": (), "latent_dim": 16, "batch_size": 100, "eval_k": 50, "device": "cpu",
            "progress": False}


pytestmark = pytest.mark.usefixtures("one_torch_thread", "one_blas_thread")


@pytest.fixture(scope="module")
def split():
    return strong_generalization(synthetic_interactions(SyntheticConfig(n_users=400, n_items=120, seed=1)), 50)


# ------------------------------------------------------------------ search spaces
def test_search_space_forms():
    space = search_space({"lr": {"low": 1e-4, "high": 3e-3, "log": True},
                          "latent_dim": {"low": 64, "high": 400, "step": 8},
                          "beta": {"low": 0, "high": 0.5},
                          "dropout": [0.2, 0.5, 0.7]})
    assert space["lr"] == Range(1e-4, 3e-3, log=True)
    assert space["latent_dim"] == Range(64, 400, step=8) and space["latent_dim"].is_int
    assert space["beta"] == Range(0.0, 0.5) and not space["beta"].is_int
    assert space["dropout"] == Choices((0.2, 0.5, 0.7))


@pytest.mark.parametrize("spec, words", [
    ({"lr": 0.1}, ["'lr'", "range", "params"]),
    ({"lr": {"low": 1e-4}}, ["'lr'", "needs high"]),
    ({"lr": {"low": 1e-4, "max": 1e-2}}, ["'lr'", "'max'", "'high'"]),
    ({"lr": {"low": 0.0, "high": 1.0, "log": True}}, ["'lr'", "low > 0"]),
    ({"lr": {"low": 1.0, "high": 0.1}}, ["'lr'", "below high"]),
    ({"lr": {"low": 1e-4, "high": 1e-2, "log": "yes"}}, ["'lr'", "log must be true or false"]),
    ({"d": {"low": 64, "high": 400, "step": 10}}, ["'d'", "multiple of step", "high = 394"]),
    ({"d": {"low": 64, "high": 400, "step": 0.5}}, ["'d'", "integer"]),
    ({"d": {"low": 1.0, "high": 10.0, "step": 1.0, "log": True}}, ["'d'", "log and step"]),
    ({"d": []}, ["'d'", "empty"]),
    ({}, ["empty"]),
    ([1, 2], ["table"]),
])
def test_search_space_errors_are_one_line_naming_the_key(spec, words):
    with pytest.raises(SearchSpaceError) as info:
        search_space(spec)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


# ------------------------------------------------------------------ edges
def test_space_edges_on_log_int_and_choice_dimensions():
    space = {"lr": {"low": 1e-4, "high": 1e-2, "log": True}, "d": {"low": 0, "high": 100},
             "p": [0.1, 0.5, 0.9], "kind": ["a", "b", "c"]}
    # 10^-2.15 lies in the top 10% of the log range [-4, -2]; linearly it would be far from the end
    edges = space_edges(space, {"lr": 10 ** -2.15, "d": 50, "p": 0.1, "kind": "c"})
    assert edges == {"lr": "high", "d": None, "p": "low"}  # unordered strings have no edge
    assert space_edges(space, {"lr": 10 ** -2.3, "d": 9, "p": 0.5, "kind": "a"}) == {"lr": None, "d": "low", "p": None}
    assert edge_note(edges) == "edge: lr=high, p=low"
    assert edge_note({"lr": None}) == ""


def test_grid_edges_and_grid_search_flags_them(split):
    grid = {"l2": [1e6, 1.0, 300.0], "flag": [True, False], "kind": ["x", "y", "z"], "one": [5.0]}
    assert grid_edges(grid, {"l2": 1.0, "flag": True, "kind": "z", "one": 5.0}) == {"l2": "low"}
    assert grid_edges(grid, {"l2": 300.0}) == {"l2": None}
    result = grid_search(EASE, {"l2": [0.01, 300.0]}, split, progress=False)
    assert result.best_params == {"l2": 300.0}
    assert result.edges == {"l2": "high"} and result.edge_note() == "edge: l2=high"
    assert result.seconds > 0


# ------------------------------------------------------------------ the search
def test_search_finds_the_better_region_and_keeps_the_best_model(split):
    space = {"l2": {"low": 0.01, "high": 1e6, "log": True}}
    result = optuna_search(EASE, space, split, n_trials=12, sampler="tpe", seed=0, progress=False)
    assert isinstance(result, SearchResult)
    ends = [evaluate(EASE(l2=l2).fit(split), split, "validation", ks=(100,), metrics=("ndcg",))["ndcg@100"]
            for l2 in (0.01, 1e6)]
    assert 30 <= result.best_params["l2"] <= 3000  # the optimum of this data lies near l2 = 100..1000
    assert result.best_score > max(ends)
    assert result.best_model.l2 == result.best_params["l2"]
    again = evaluate(result.best_model, split, "validation", ks=(100,), metrics=("ndcg",))["ndcg@100"]
    assert again == pytest.approx(result.best_score)
    trials = result.trials
    assert list(trials["trial"]) == list(range(12)) and set(trials["state"]) == {"complete"}
    assert {"l2", "ndcg@100", "std_err", "n_users", "epochs", "fit_seconds", "eval_seconds", "error"} <= set(trials)
    assert result.counts == {"complete": 12, "pruned": 0, "failed": 0}
    assert result.edges == {"l2": None}


def test_a_categorical_choice_between_models(split):
    def factory(kind: str):
        return Popularity() if kind == "popularity" else EASE(l2=300.0)

    result = optuna_search(factory, {"kind": ["popularity", "ease"]}, split, n_trials=4, sampler="random",
                           progress=False)
    assert result.best_params == {"kind": "ease"} and result.edges == {}


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_samplers_are_reproducible_with_a_seed(split, sampler):
    space = {"l2": {"low": 1.0, "high": 1e5, "log": True}, "k": {"low": 1, "high": 9, "step": 2}}

    def run(seed):
        result = optuna_search(lambda l2, k: EASE(l2=l2), space, split, n_trials=7, sampler=sampler, seed=seed,
                               progress=False)
        return result.trials[["l2", "k", "ndcg@100"]]

    first = run(0)
    pd.testing.assert_frame_equal(first, run(0))
    assert not first[["l2", "k"]].equals(run(1)[["l2", "k"]])
    assert set(first["k"]) <= {1, 3, 5, 7, 9} and all(isinstance(k, (int, np.integer)) for k in first["k"])


def test_a_failed_trial_is_recorded_and_the_search_goes_on(split):
    class Unstable(Popularity):
        def __init__(self, lr: float) -> None:
            super().__init__()
            self.lr = lr

        def fit(self, train, validation=None):
            if self.lr > 0.5:
                raise FloatingPointError("training diverged at epoch 1 (loss nan): lower lr")
            return super().fit(train, validation)

    result = optuna_search(Unstable, {"lr": [0.1, 0.9]}, split, n_trials=6, sampler="random", progress=False)
    failed = result.trials[result.trials["state"] == "failed"]
    assert len(failed) >= 1 and (failed["lr"] == 0.9).all()
    assert failed["error"].str.contains("diverged").all() and failed["ndcg@100"].isna().all()
    assert result.best_params == {"lr": 0.1}


def test_timeout_stops_starting_trials_after_the_first(split):
    result = optuna_search(EASE, {"l2": {"low": 1.0, "high": 1e3}}, split, n_trials=50, timeout_s=1e-6,
                           progress=False)
    assert len(result.trials) == 1 and result.stopped_by_timeout


def test_bad_arguments(split):
    with pytest.raises(ValueError, match="both fixed and searched"):
        optuna_search(EASE, {"l2": [1.0]}, split, n_trials=1, fixed={"l2": 2.0}, progress=False)
    with pytest.raises(ValueError, match="sampler"):
        optuna_search(EASE, {"l2": [1.0]}, split, n_trials=1, sampler="grid", progress=False)
    with pytest.raises(ValueError, match="n_trials"):
        optuna_search(EASE, {"l2": [1.0]}, split, n_trials=0, progress=False)


# ------------------------------------------------------------------ torch: the epoch hook and pruning
def test_on_epoch_is_called_once_per_validated_epoch(split):
    calls = []
    model = MultVAE(**{**TINY_VAE, "epochs": 5, "eval_every": 2}).fit(split, on_epoch=lambda e, s: calls.append((e, s)))
    history = model.history_.dropna(subset=["val_ndcg@50"])
    assert [e for e, _ in calls] == [2, 4, 5] == list(history["epoch"])
    assert [s for _, s in calls] == pytest.approx(list(history["val_ndcg@50"]))
    rec = []
    RecVAE(epochs=2, hidden_dim=32, latent_dim=8, batch_size=100, eval_k=50, device="cpu",
           progress=False).fit(split, on_epoch=lambda e, s: rec.append(e))
    assert rec == [1, 2]


def test_an_exception_from_on_epoch_stops_training_and_closes_the_bar(split, monkeypatch):
    closed = []

    class Bar(loop.tqdm):
        def close(self):
            closed.append(True)
            super().close()

    monkeypatch.setattr(loop, "tqdm", Bar)

    class Stop(Exception):
        pass

    def stop_at_two(epoch, score):
        if epoch == 2:
            raise Stop

    model = MultVAE(**TINY_VAE)
    with pytest.raises(Stop) as info:
        model.fit(split, on_epoch=stop_at_two)
    # info's traceback keeps the loop's frame (and its bar) alive: the close came from the loop, not from GC
    assert info.value is not None and closed and model.training_ is None


def test_pruning_stops_torch_trials_early(split):
    fixed = {**TINY_VAE, "epochs": 8}
    result = optuna_search(MultVAE, {"lr": {"low": 1e-5, "high": 3e-2, "log": True}}, split, n_trials=8,
                           sampler="random", seed=0, fixed=fixed, prune_warmup_epochs=1, prune_startup_trials=2,
                           progress=False)
    trials = result.trials
    pruned, complete = trials[trials["state"] == "pruned"], trials[trials["state"] == "complete"]
    assert len(pruned) >= 1 and len(complete) >= 2
    assert (pruned["epochs"] < 8).all() and (complete["epochs"] == 8).all()
    assert pruned["ndcg@100"].isna().all() and complete["ndcg@100"].notna().all()
    assert result.best_model.history_ is not None and result.counts["pruned"] == len(pruned)
    assert result.best_score == complete["ndcg@100"].max()


# ------------------------------------------------------------------ optuna is optional
def test_recvae_imports_without_optuna_and_the_search_names_the_extra(monkeypatch, split):
    code = ("import sys; sys.modules['optuna'] = None\n"
            "import recvae, recvae.tuning, recvae.runs, recvae.experiment, recvae.cli\n"
            "from recvae.experiment import config\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ImportError, match=r'pip install "recvae\[tune\]"'):
        optuna_search(EASE, {"l2": [1.0]}, split, n_trials=1, progress=False)
    monkeypatch.setattr(tuning_search.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"recvae\[tune\]"):
        tuning.check_optuna()


# ------------------------------------------------------------------ experiment configs
def _config(tmp_path: Path, model_lines: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(
        'name = "s"\n[dataset]\nsynthetic = { n_users = 300, n_items = 100, seed = 0 }\n'
        '[split]\nheldout_users = 40\n[[models]]\nname = "popularity"\n'
        f'[[models]]\n{model_lines}\n', encoding="utf-8")
    return path


def test_config_search_and_budget_parse(tmp_path):
    from recvae.experiment.config import SearchBudget, load_config

    config = load_config(_config(tmp_path, 'name = "mult-vae"\nparams = { epochs = 3 }\n'
                                           'search = { lr = { low = 1e-4, high = 3e-3, log = true }, '
                                           'input_dropout = [0.2, 0.5] }\n'
                                           'budget = { trials = 20, sampler = "random", timeout_s = 1800 }'))
    spec = config.models[1]
    assert spec.search == {"lr": {"low": 1e-4, "high": 3e-3, "log": True}, "input_dropout": [0.2, 0.5]}
    assert spec.budget == SearchBudget(trials=20, sampler="random", timeout_s=1800)
    assert spec.grid == {} and config.models[0].budget is None and config.models[0].search == {}


@pytest.mark.parametrize("lines, words", [
    ('name = "ease"\ngrid = { l2 = [1.0] }\nsearch = { l2 = [1.0] }\nbudget = { trials = 2 }', ["grid and search"]),
    ('name = "ease"\nsearch = { l2 = [1.0] }', ["no budget", "trials = 20"]),
    ('name = "ease"\nbudget = { trials = 2 }', ["no search"]),
    ('name = "ease"\nparams = { l2 = 1.0 }\nsearch = { l2 = [1.0] }\nbudget = { trials = 2 }', ["both params and search"]),
    ('name = "ease"\nsearch = { l2 = { low = 1.0 } }\nbudget = { trials = 2 }', ["models[1].search.l2", "needs high"]),
    ('name = "ease"\nsearch = { lr = [1.0] }\nbudget = { trials = 2 }', ["models[1]", "'lr'"]),
    ('name = "ease"\nsearch = { l2 = [1.0] }\nbudget = { trials = 2, sampler = "grid" }', ["models[1].budget.sampler"]),
    ('name = "ease"\nsearch = { l2 = [1.0] }\nbudget = { trails = 2 }', ["models[1].budget", "'trails'"]),
])
def test_config_refuses_bad_searches_in_one_line(tmp_path, lines, words):
    from recvae.experiment.config import load_config

    with pytest.raises(ValueError) as info:
        load_config(_config(tmp_path, lines))
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_runner_records_every_trial_with_its_state(tmp_path):
    from recvae.experiment import run_experiment

    config = _config(tmp_path, 'name = "ease"\nlabel = "EASE"\n'
                               'search = { l2 = { low = 1.0, high = 1e5, log = true } }\n'
                               'budget = { trials = 4, sampler = "tpe", seed = 3 }')
    report = run_experiment(config, output_dir=tmp_path / "out", progress=False)
    trials = pd.read_csv(tmp_path / "out" / "s_trials.csv")
    ease = trials[trials["model"] == "EASE"]
    assert list(ease["state"]) == ["complete"] * 4 and list(ease["trial"]) == [0, 1, 2, 3]
    table = pd.read_csv(tmp_path / "out" / "s.csv")
    row = table.set_index("model").loc["EASE"]
    assert row["search"] == "tpe" and row["trial_budget"] == 4 and row["trials_complete"] == 4
    assert row["search_seconds"] > 0
    text = report.read_text()
    assert "## Tuning budget" in text and "TPE search, seed 3" in text and "4 trials" in text
    assert "| popularity | grid | every combination | 1 (1 / 0 / 0)" in text


# ------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def log_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("tune") / "log.csv"
    synthetic_log(SyntheticConfig(n_users=300, n_items=80, seed=0)).to_csv(path, index=False)
    return path


def test_cli_tune_end_to_end(log_csv, tmp_path, capsys):
    from recvae.cli import main

    out = tmp_path / "trials.csv"
    code = main(["tune", str(log_csv), "--model", "ease", "--search", "{l2 = {low = 1.0, high = 1e4, log = true}}",
                 "--trials", "4", "--heldout-users", "30", "-o", str(out), "-q"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Best parameters (validation ndcg@80" in printed and f"written to {out}" in printed
    best = json.loads(printed.split(": ", 1)[1].split("\n")[0].split(" [")[0])
    trials = pd.read_csv(out)
    assert len(trials) == 4 and set(trials["state"]) == {"complete"}
    assert math.isclose(best["l2"], trials.loc[trials["ndcg@80"].idxmax(), "l2"])
    chosen = json.loads((tmp_path / "trials.best.json").read_text())  # the older table form: STEM.best.json beside it
    assert chosen["model"] == "ease" and math.isclose(chosen["params"]["l2"], best["l2"])

    space = tmp_path / "space.toml"
    space.write_text("[search]\nl2 = [10.0, 100.0]\n")
    assert main(["tune", str(log_csv), "--model", "ease", "--search-file", str(space), "--trials", "2",
                 "--sampler", "random", "--heldout-users", "30", "-o", str(tmp_path / "t.json"), "-q"]) == 0
    assert len(json.loads((tmp_path / "t.json").read_text())) == 2


@pytest.mark.parametrize("args, words", [
    (["--search", "{l2 = {low = 1.0}}"], ["search space 'l2'", "needs high"]),
    (["--search", "l2"], ["--search 'l2'", "expected a table"]),
    (["--search", "{lr = [1.0]}"], ["'lr'"]),
    (["--search", "{l2 = [1.0]}", "--heldout-users", "0"], ["validation users"]),
])
def test_cli_tune_errors_are_one_line(log_csv, tmp_path, args, words):
    from recvae.cli import main

    with pytest.raises(SystemExit) as info:
        main(["tune", str(log_csv), "--model", "ease", "--trials", "2", "-o", str(tmp_path / "t.csv"), *args])
    message = str(info.value)
    assert message.startswith("recvae: error: ") and "\n" not in message
    for word in words:
        assert word in message


def test_cli_tune_finalists_reselect_over_seeds(log_csv, tmp_path, capsys):
    """A Mult-VAE search through ``recvae tune --finalists 2 --seeds 2`` (optuna trials, a list choice among the
    parameters): the printed choice is the finalist with the best mean, recomputed here from the Python API."""
    pytest.importorskip("optuna")
    from recvae.cli import main
    from recvae.runs import SplitSpec, tune

    args = dict(search={"hidden_dims": [[16], [32]], "lr": {"low": 1e-3, "high": 1e-2, "log": True}}, n_trials=4,
                params={"epochs": 3, "latent_dim": 8, "batch_size": 100}, split=SplitSpec(heldout_users=30),
                progress=False)
    result = tune(log_csv, "mult-vae", finalists=2, seeds=2, **args)
    table = result.finalists
    assert len(table) == 2 and table["chosen"].sum() == 1
    means = table[["ndcg@80 seed 0", "ndcg@80 seed 1"]].mean(axis=1)
    np.testing.assert_allclose(table["ndcg@80 mean"], means)
    chosen = table.loc[means.idxmax()]
    assert result.best_params == {"hidden_dims": chosen["hidden_dims"], "lr": chosen["lr"]}
    assert result.best_score == pytest.approx(means.max())

    out = tmp_path / "trials.csv"
    code = main(["tune", str(log_csv), "--model", "mult-vae", "--search",
                 "{hidden_dims = [[16], [32]], lr = {low = 1e-3, high = 1e-2, log = true}}", "--trials", "4",
                 "--param", "epochs=3", "--param", "latent_dim=8", "--param", "batch_size=100",
                 "--finalists", "2", "--seeds", "2", "--heldout-users", "30", "-o", str(out), "-q"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"Best parameters (validation ndcg@80 {result.best_score:.4f}, mean over 2 seeds of 2 finalists)" in printed
    assert len(pd.read_csv(out)) == 4


@pytest.mark.parametrize("extra, words", [
    (["--model", "ease", "--search", "{l2 = [1.0, 10.0]}", "--finalists", "2"], ["deterministic", "ease"]),
    (["--model", "mult-vae", "--search", "{lr = [0.001]}", "--finalists", "0"], ["finalists", ">= 1"]),
    (["--model", "mult-vae", "--search", "{lr = [0.001]}", "--finalists", "2", "--seeds", "0"], ["seeds", ">= 1"]),
])
def test_cli_tune_finalists_errors_are_one_line(log_csv, tmp_path, extra, words):
    from recvae.cli import main

    with pytest.raises(SystemExit) as info:
        main(["tune", str(log_csv), "--trials", "2", "-o", str(tmp_path / "t.csv"), *extra])
    message = str(info.value)
    assert message.startswith("recvae: error: ") and "\n" not in message
    for word in words:
        assert word in message


def test_the_first_trial_is_the_model_recipe_when_it_lies_in_the_space(split):
    # EASE's default l2 (500) is inside the range: the search starts there, then samples.
    result = optuna_search(EASE, {"l2": {"low": 10.0, "high": 5000.0, "log": True}}, split, n_trials=3,
                           sampler="random", seed=3, progress=False)
    assert result.trials["l2"].iloc[0] == 500.0
    assert all(v != 500.0 for v in result.trials["l2"].iloc[1:])
    # Outside the range (or turned off), nothing is enqueued: every trial is sampled.
    outside = optuna_search(EASE, {"l2": {"low": 10.0, "high": 100.0}}, split, n_trials=2, sampler="random",
                            seed=3, progress=False)
    off = optuna_search(EASE, {"l2": {"low": 10.0, "high": 5000.0, "log": True}}, split, n_trials=2,
                        sampler="random", seed=3, progress=False, start_from_defaults=False)
    assert 500.0 not in set(outside.trials["l2"]) | set(off.trials["l2"])


def test_a_list_choice_holding_the_default_starts_there(split):
    # Mult-VAE's default hidden_dims (600,) is the TOML option [600]: the first trial takes it (optuna holds
    # list choices by their JSON labels, which the enqueued start must use too), later trials sample.
    space = {"hidden_dims": [[16], [600], [32]], "lr": {"low": 1e-3, "high": 3e-3, "log": True}}
    result = optuna_search(MultVAE, space, split, n_trials=3, sampler="random", seed=0, progress=False,
                           fixed={"epochs": 1, "latent_dim": 8, "progress": False})
    assert list(result.trials["hidden_dims"].iloc[0]) == [600]
    assert result.trials["lr"].iloc[0] == MultVAE().get_params()["lr"]
    assert {tuple(v) for v in result.trials["hidden_dims"]} <= {(16,), (600,), (32,)}
