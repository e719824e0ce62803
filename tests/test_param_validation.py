"""Hyper-parameters are checked when a model is made (and in set_params), before any data is read.

Each typo raises one line naming the parameter, the value given and what is allowed, for every
model family; valid edge values are accepted; ``Run.fit`` and ``recvae train`` refuse before
``LogSpec.read`` is called. Also: the anneal cap refused when infinite, NaN or negative, the
divergence advice naming it, ALS/BPR's memory pre-check, and an experiment's metric cut-off
above the catalogue naming ``select_by``.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import scipy.sparse as sp

from recvae.data import SyntheticConfig, synthetic_log
from recvae.data.specs import LogSpec
from recvae.models import make_model
from recvae.models.options import training_shortcuts
from recvae.nn.annealing import AnnealConfig
from recvae.nn.hyperparams import HyperParameterError

INF, NAN = float("inf"), float("nan")

# (model, params, the text the message must hold: "name=repr(value)")
TYPOS = [
    # the torch VAEs: model config and training config mixed, flat
    ("mult-vae", {"latent_dim": "abc"}, "latent_dim='abc': expected an integer >= 1"),
    ("mult-vae", {"latent_dim": 2.5}, "latent_dim=2.5: expected an integer"),
    ("mult-vae", {"epochs": 2.5}, "epochs=2.5: expected an integer"),
    ("mult-vae", {"epochs": True}, "epochs=True: expected an integer"),
    ("mult-vae", {"hidden_dims": 600}, "hidden_dims=600: expected a list of integers"),
    ("mult-vae", {"hidden_dims": [600, "x"]}, "hidden_dims=[600, 'x']: expected a list of integers"),
    ("mult-vae", {"lr": -1e-3}, "lr=-0.001: expected a finite number > 0"),
    ("mult-vae", {"lr": INF}, "lr=inf: expected a finite number > 0"),
    ("mult-vae", {"lr": 0.0}, "lr=0.0: expected a finite number > 0"),
    ("mult-vae", {"input_dropout": 1.5}, "input_dropout=1.5: expected a number in [0, 1)"),
    ("mult-vae", {"likelihood": "poisson"}, "likelihood='poisson': expected one of"),
    ("mult-vae", {"anneal_cap": INF}, "anneal_cap=inf: expected a finite number >= 0"),
    ("mult-vae", {"anneal_cap": NAN}, "anneal_cap=nan: expected a finite number >= 0"),
    ("mult-vae", {"anneal": {"kind": "linear", "cap": -0.1}}, "anneal_cap=-0.1: expected a finite number >= 0"),
    ("mult-vae", {"anneal_kind": "cosine"}, "anneal_kind='cosine': expected one of 'linear'"),
    ("mult-vae", {"anneal": "linear"}, "anneal='linear': expected a table"),
    ("mult-vae", {"anneal": {"kind": "linear", "cpa": 0.2}}, "unknown key(s) ['cpa']"),
    ("mult-vae", {"device": "gpu"}, "device='gpu': expected 'auto', 'cpu'"),
    ("mult-vae", {"progress": "no"}, "progress='no': expected True or False"),
    ("mult-vae", {"patience": 0}, "patience=0: expected an integer >= 1 or None"),
    ("mult-vae", {"item_chunk": 2.5}, "item_chunk=2.5: expected an integer >= 1 or None"),
    ("mult-dae", {"latent_dim": True}, "latent_dim=True: expected an integer"),
    ("mult-dae", {"weight_decay": -1.0}, "weight_decay=-1.0: expected a finite number >= 0"),
    ("recvae", {"hidden_dim": "600"}, "hidden_dim='600': expected an integer >= 1"),
    ("recvae", {"n_layers": 2.5}, "n_layers=2.5: expected an integer >= 1"),
    ("recvae", {"gamma": -0.1}, "gamma=-0.1: expected a finite number > 0 or None"),
    ("recvae", {"prior_weights": 0.5}, "prior_weights=0.5: expected 3 positive numbers summing to 1"),
    ("recvae", {"input_dropout": 1.0}, "input_dropout=1.0: expected a number in [0, 1)"),
    ("joint-vae", {"linear_l2": "x"}, "linear_l2='x': expected a finite number >= 0"),
    ("joint-vae", {"train_linear": "yes"}, "train_linear='yes': expected True or False"),
    ("joint-vae", {"linear_dropout": 1.5}, "linear_dropout=1.5: expected a number in [0, 1)"),
    # the baselines
    ("als", {"factors": "abc"}, "factors='abc': expected an integer >= 1"),
    ("als", {"factors": 2.5}, "factors=2.5: expected an integer >= 1"),
    ("als", {"factors": True}, "factors=True: expected an integer >= 1"),
    ("als", {"regularization": INF}, "regularization=inf: expected a finite number >= 0"),
    ("als", {"use_cg": "no"}, "use_cg='no': expected True or False"),
    ("bpr", {"learning_rate": -1.0}, "learning_rate=-1.0: expected a finite number > 0"),
    ("bpr", {"iterations": 2.5}, "iterations=2.5: expected an integer >= 1"),
    ("ease", {"l2": "big"}, "l2='big': expected a finite number > 0"),
    ("ease", {"l2": 0}, "l2=0: expected a finite number > 0"),
    ("edlae", {"dropout": 1.5}, "dropout=1.5: expected a number in [0, 1)"),
    ("sparse-ease", {"neighbours": 2.5}, "neighbours=2.5: expected an integer >= 1"),
    ("itemknn", {"k": "10"}, "k='10': expected an integer >= 1"),
    ("itemknn", {"similarity": "jaccard"}, "similarity='jaccard': expected one of 'cosine'"),
    ("itemknn", {"B": 1.5}, "B=1.5: expected a number in [0, 1]"),
    # the blend: its own settings and its components' parameters
    ("blend", {"components": [{"name": "ease"}], "eval_k": 2.5}, "eval_k=2.5: expected an integer >= 1"),
    ("blend", {"components": [{"name": "ease"}], "refit": "yes"}, "refit='yes': expected True or False"),
    ("blend", {"components": [{"name": "ease"}], "weights": ["a"]}, "weights=['a']: expected a list of numbers"),
    ("blend", {"components": [{"name": "mult-vae", "params": {"latent_dim": "abc"}}]},
     "latent_dim='abc': expected an integer >= 1"),
]


def one_line_error(call) -> str:
    with pytest.raises(HyperParameterError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)  # callers catching either
    return message


@pytest.mark.parametrize("name, params, expected", TYPOS, ids=[f"{n}-{sorted(p)[-1]}" for n, p, _ in TYPOS])
def test_a_typo_is_refused_at_construction_naming_the_parameter_and_value(name, params, expected):
    assert expected in one_line_error(lambda: make_model(name, params))


@pytest.mark.parametrize("name, params, expected", [t for t in TYPOS if t[0] != "blend"],
                         ids=[f"{n}-{sorted(p)[-1]}" for n, p, _ in TYPOS if n != "blend"])
def test_set_params_checks_as_the_constructor_does(name, params, expected):
    model = make_model(name, {"components": [{"name": "ease"}]} if name == "blend" else {})
    before = model.get_params()
    assert expected in one_line_error(lambda: model.set_params(**params))
    assert _same(model.get_params(), before)  # a refused change leaves the model as it was


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(str(a[k]) == str(b[k]) for k in a)


def test_valid_edge_values_are_accepted_and_made_canonical():
    vae = make_model("mult-vae", {"input_dropout": 0.0, "latent_dim": 1, "hidden_dims": [], "epochs": 3.0,
                                  "anneal_cap": 0.0, "lr": 1e-9, "patience": None, "seed": np.int64(7),
                                  "device": "cuda:1", "history_csv": None})
    assert vae.config.latent_dim == 1 and type(vae.config.latent_dim) is int
    assert vae.config.hidden_dims == () and vae.config.input_dropout == 0.0
    assert vae.training.epochs == 3 and type(vae.training.epochs) is int  # an integral float is an integer
    assert vae.training.seed == 7 and type(vae.training.seed) is int
    assert vae.training.anneal.cap == 0.0 and vae.training.device == "cuda:1"
    assert make_model("mult-vae", {"hidden_dims": (8.0, 4)}).config.hidden_dims == (8, 4)
    assert make_model("recvae", {"gamma": None, "beta": 0.0, "prior_weights": [0.2, 0.7, 0.1]}).config.beta == 0.0
    assert make_model("joint-vae", {"linear_dropout": 0.0, "linear_l2": 0.0}).config.linear_l2 == 0.0
    assert make_model("als", {"factors": 1, "regularization": 0.0, "alpha": 0}).factors == 1
    assert make_model("als", {"factors": 4.0}).factors == 4
    assert make_model("itemknn", {"B": 1.0, "K1": 0.0}).B == 1.0
    assert make_model("edlae", {"dropout": 0.0, "l2": 1.0}).dropout == 0.0
    assert make_model("blend", {"components": [{"name": "ease"}], "weight_step": 1.0, "weights": [1]}).weights == [1.0]
    assert AnnealConfig(cap=5.0).cap == 5.0  # beta above 1 (a beta-VAE) is allowed


def test_the_anneal_cap_is_refused_when_infinite_nan_or_negative():
    for cap in (INF, -INF, NAN, -0.5, "0.2", True):
        assert "anneal_cap=" in one_line_error(lambda: AnnealConfig(cap=cap))
    # the CLI's --beta-cap goes through training_shortcuts, which names the option
    message = one_line_error(lambda: training_shortcuts("mult-vae", beta_cap=INF, labels={"beta_cap": "--beta-cap"}))
    assert message == "--beta-cap=inf: expected a finite number >= 0"
    assert "--epochs=2.5" in one_line_error(
        lambda: training_shortcuts("mult-vae", epochs=2.5, labels={"epochs": "--epochs"}))


# ------------------------------------------------------------------ before any data is read
@pytest.fixture(scope="module")
def log_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "log.csv"
    synthetic_log(SyntheticConfig(n_users=120, n_items=40, seed=0)).to_csv(path, index=False)
    return path


@pytest.fixture
def reads(monkeypatch):
    """Every LogSpec.read call, recorded (and refused: nothing here should get that far)."""
    calls = []

    def spy(self):
        calls.append(self)
        raise AssertionError("LogSpec.read was called before the parameters were checked")

    monkeypatch.setattr(LogSpec, "read", spy)
    return calls


@pytest.mark.parametrize("params, expected", [
    ({"latent_dim": "abc"}, "latent_dim='abc'"),
    ({"hidden_dims": 600}, "hidden_dims=600"),
    ({"latent_dim": 2.5}, "latent_dim=2.5"),
    ({"epochs": 2.5}, "epochs=2.5"),
    ({"anneal_cap": INF}, "anneal_cap=inf"),
])
def test_run_fit_refuses_before_reading_the_log(log_csv, reads, tmp_path, params, expected):
    from recvae.runs import Run

    with pytest.raises(Exception) as info:
        Run.fit(log_csv, "mult-vae", params=params, output=tmp_path / "run")
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert reads == [] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--param", "latent_dim=abc"], "latent_dim='abc': expected an integer >= 1"),
    (["--param", "hidden_dims=600"], "hidden_dims=600: expected a list of integers"),
    (["--param", "latent_dim=2.5"], "latent_dim=2.5: expected an integer"),
    (["--param", "epochs=2.5"], "epochs=2.5: expected an integer"),
    (["--beta-cap", "inf"], "--beta-cap=inf: expected a finite number >= 0"),
    (["--param", "anneal_cap=nan"], "anneal_cap=nan: expected a finite number >= 0"),
    (["--model", "als", "--param", "factors=2.5"], "factors=2.5: expected an integer >= 1"),
])
def test_the_cli_refuses_before_reading_the_log(log_csv, reads, tmp_path, argv, expected):
    from recvae.cli import main

    with pytest.raises(SystemExit) as info:
        main(["train", str(log_csv), "-o", str(tmp_path / "run"), "--no-progress", *argv])
    message = info.value.code
    assert isinstance(message, str) and message.startswith("recvae: error: ") and "\n" not in message
    assert expected in message, message
    assert message.startswith(f"recvae: error: {expected}")  # said once, without a prefix that repeats it
    assert reads == [] and not (tmp_path / "run").exists()


# ------------------------------------------------------------------ divergence advice
def test_divergence_advice_names_the_anneal_cap_when_it_is_large():
    from recvae.training import TrainingConfig
    from recvae.training.divergence import _advice

    assert _advice(TrainingConfig(lr=0.5)) == "lower lr (now 0.5)"
    advice = _advice(TrainingConfig(anneal={"kind": "linear", "cap": 1e6}))
    assert "lower lr (now 0.001)" in advice and "anneal_cap" in advice and "now 1e+06" in advice
    assert "anneal_cap" not in _advice(TrainingConfig(anneal={"kind": "auto", "cap": 1e6}))  # auto ramps to 1


# ------------------------------------------------------------------ ALS / BPR memory
@pytest.mark.parametrize("name, module", [("als", "implicit.cpu.als.AlternatingLeastSquares"),
                                          ("bpr", "implicit.cpu.bpr.BayesianPersonalizedRanking")])
def test_factor_models_refuse_factors_that_cannot_fit_before_allocating(monkeypatch, name, module):
    def never(*args, **kwargs):
        raise AssertionError(f"{module} was built: the memory check did not run first")

    monkeypatch.setattr(module, never)
    rows = sp.csr_matrix((np.random.default_rng(0).random((20, 30)) < 0.3).astype(np.float32))
    with pytest.raises(MemoryError) as info:
        make_model(name, {"factors": 10**7}).fit(rows)
    message = str(info.value)
    assert "\n" not in message and "factors=10,000,000" in message and "use fewer factors" in message


def test_the_factor_memory_check_follows_available_memory(monkeypatch):
    from recvae.models.implicit_models import check_factor_memory, factor_memory_bytes

    assert factor_memory_bytes(10, 20, 4) == 4 * 30 * 4 + 8 * 20 * 4 + 12 * 16
    monkeypatch.setattr("recvae.runtime.memory.available_memory_bytes", lambda: 1000)
    check_factor_memory("ALS", (10, 20), 2)  # 4*30*2 + 8*20*2 + 48 = 608 bytes: fits
    with pytest.raises(MemoryError, match="0 MiB is available"):
        check_factor_memory("ALS", (10, 20), 4)


# ------------------------------------------------------------------ experiment: k above the catalogue
def test_a_metric_cut_off_above_the_catalogue_names_select_by(tmp_path, monkeypatch):
    from recvae.experiment import load_config, runner

    config_path = tmp_path / "tiny.toml"
    config_path.write_text(textwrap.dedent("""
        name = "tiny"
        [dataset]
        synthetic = { n_users = 200, n_items = 80, seed = 0 }
        [split]
        heldout_users = 20
        [evaluation]
        metrics = ["recall@20"]
        select_by = "ndcg@500"
        [[models]]
        name = "popularity"
    """))
    def no_fit(*args, **kwargs):
        raise AssertionError("a model was fit before the metrics' cut-offs were checked")

    monkeypatch.setattr(runner, "_tune_test_and_refit", no_fit)
    with pytest.raises(ValueError) as info:
        runner.run_experiment(config_path, output_dir=tmp_path / "out", progress=False)
    message = str(info.value)
    assert "\n" not in message and "evaluation.select_by = 'ndcg@500'" in message and "k=500" in message
    load_config(config_path).check_cutoffs(500)  # k <= items: nothing to say
    config_path.write_text(config_path.read_text().replace("ndcg@500", "ndcg@5"))
    with pytest.raises(ValueError, match=r"evaluation\.metrics\[0\] = 'recall@20': k=20 exceeds the 10 items"):
        load_config(config_path).check_cutoffs(10)


def test_an_experiment_blend_of_references_still_loads(tmp_path):
    from recvae.experiment import load_config

    path = tmp_path / "blend.toml"
    path.write_text(textwrap.dedent("""
        name = "tiny"
        [dataset]
        synthetic = { n_users = 200, n_items = 80, seed = 0 }
        [split]
        heldout_users = 20
        [[models]]
        name = "ease"
        label = "EASE"
        [[models]]
        name = "blend"
        params = { components = [ { ref = "EASE" }, { name = "popularity" } ], weights = [0.5, 0.5] }
    """))
    assert [m.name for m in load_config(path).models] == ["ease", "blend"]
    path.write_text(path.read_text().replace("weights = [0.5, 0.5]", "eval_k = 2.5"))
    with pytest.raises(ValueError, match=r"eval_k=2\.5: expected an integer >= 1"):
        load_config(path)
