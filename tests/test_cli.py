"""The command line, in-process: train -> evaluate -> recommend -> embed on a tiny synthetic log.

Everything runs on small files under tmp_path; nothing touches the network.
"""

import contextlib
import io
import json
import sys
import types

import numpy as np
import pandas as pd
import pytest

from recvae import cli
from recvae.cli import main, parse_params, parse_value
from recvae.data import MOVIELENS, Split, SyntheticConfig, synthetic_log

VAE_ARGS = ["--epochs", "2", "--no-progress", "--param", "latent_dim=16", "--param", "hidden_dims=[32]"]


@pytest.fixture(scope="module")
def log_frame() -> pd.DataFrame:
    return synthetic_log(SyntheticConfig(n_users=300, n_items=100, seed=0))


@pytest.fixture(scope="module")
def log_csv(log_frame, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "log.csv"
    log_frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def vae_run(log_csv, tmp_path_factory):
    """A Mult-VAE run directory and what `recvae train` printed."""
    run = tmp_path_factory.mktemp("runs") / "vae"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", str(log_csv), "--output", str(run), *VAE_ARGS]) == 0
    return run, out.getvalue()


def error_of(argv) -> str:
    """The one-line message a failing command exits with."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    message = info.value.code
    assert isinstance(message, str), f"expected an error message, got exit code {message!r}"
    assert "\n" not in message and "Traceback" not in message
    return message


# ----------------------------------------------------------------------------- train
def test_train_writes_the_run_directory(vae_run):
    run, printed = vae_run
    for name in ("model", "split/matrices.npz", "split/split.json", "history.csv", "metrics.json", "config.json"):
        assert (run / name).exists(), name
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "mult-vae"
    assert config["params"] == {"latent_dim": 16, "hidden_dims": [32], "epochs": 2, "progress": False}
    assert config["processes"] == 1 and config["argv"][0] == "train" and config["data"]["source"] == config["argv"][1]
    assert config["split"]["kind"] == "strong_generalization" and config["split"]["seed"] == 98765
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"validation", "test", "status"} and metrics["status"] == "success"
    assert 0.0 <= metrics["test"]["summary"]["ndcg@100"]["mean"] <= 1.0
    assert len(pd.read_csv(run / "history.csv")) == 2
    assert "ndcg@100" in printed and "validation" in printed and "Run written to" in printed


def test_train_baseline_on_a_generic_log_with_named_columns(log_frame, tmp_path, capsys):
    tsv = tmp_path / "events.tsv"
    log_frame.rename(columns={"user": "who", "item": "thing"}).drop(columns="rating").to_csv(tsv, sep="\t",
                                                                                            index=False)
    message = error_of(["train", tsv, "-o", tmp_path / "x", "--model", "ease"])
    assert "--user-col" in message and "--item-col" in message  # every missing column in one message
    run = tmp_path / "ease"
    assert main(["train", tsv, "-o", run, "--model", "ease", "--param", "l2=50", "--user-col", "who",
                 "--item-col", "thing", "--split", "weak", "--no-test"]) == 0
    assert "every event counts as positive" in capsys.readouterr().out
    assert set(json.loads((run / "metrics.json").read_text())) == {"validation", "status"}
    assert not (run / "history.csv").exists()
    # weak split: a user is in every part; the history is their union
    user = int(Split.load(run / "split").train_user_ids[0])
    assert main(["recommend", run, "--user", str(user), "-k", "3"]) == 0
    assert f"Top 3 for user {user}" in capsys.readouterr().out
    assert "no user embeddings" in error_of(["embed", run, "--output", tmp_path / "e.csv"])


def test_train_reads_movielens_dat_files(log_frame, tmp_path):
    dat = tmp_path / "ratings.dat"
    dat.write_text("".join(f"{r.user}::{r.item}::{int(r.rating)}::{r.timestamp}\n" for r in log_frame.itertuples()))
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", dat, "-o", tmp_path / "pop", "--model", "popularity", "--min-rating", "none"]) == 0
    report = json.loads((tmp_path / "pop" / "config.json").read_text())["data"]["preprocessing"]
    assert report["below_rating_threshold"] == 0 and report["raw_events"] == len(log_frame)


# ----------------------------------------------------------------------------- evaluate
def test_evaluate_prints_metrics_and_writes_per_user_rows(vae_run, tmp_path, capsys):
    run, _ = vae_run
    per_user = tmp_path / "users.csv"
    assert main(["evaluate", str(run), "--k", "10", "20", "--metrics", "ndcg", "recall", "--output", str(per_user)]) == 0
    out = capsys.readouterr().out
    assert "ndcg@10" in out and "recall@20" in out and "±" in out
    table = pd.read_csv(per_user)
    split = Split.load(run / "split")
    assert len(table) == split.test.n_users
    assert {"user_id", "ndcg@10", "recall@20"} <= set(table.columns)
    saved = json.loads((run / "metrics.json").read_text())["test"]["summary"]["ndcg@20"]["mean"]
    assert table["ndcg@20"].mean() == pytest.approx(saved, abs=1e-6)


# ----------------------------------------------------------------------------- recommend
def test_recommend_for_known_users_filters_their_history(vae_run, tmp_path, capsys):
    run, _ = vae_run
    split = Split.load(run / "split")
    train_user, test_user = split.train_user_ids[0], split.test.user_ids[0]
    recs_csv = tmp_path / "recs.csv"
    assert main(["recommend", str(run), "--user", str(train_user), str(test_user), "-k", "5",
                 "--output", str(recs_csv)]) == 0
    out = capsys.readouterr().out
    assert f"Top 5 for user {train_user}:" in out and f"Top 5 for user {test_user}:" in out
    recs = pd.read_csv(recs_csv)
    assert list(recs.columns) == ["user_id", "rank", "item_id", "score"]
    assert len(recs) == 10 and recs.groupby("user_id")["rank"].apply(list).tolist() == [[1, 2, 3, 4, 5]] * 2
    seen_train = set(split.item_ids[split.train[0].indices])
    row = int(np.flatnonzero(split.test.user_ids == test_user)[0])
    seen_test = set(split.item_ids[split.test.fold_in[row].indices]) | set(split.item_ids[split.test.target[row].indices])
    assert not seen_train & set(recs.loc[recs.user_id == train_user, "item_id"])
    assert not seen_test & set(recs.loc[recs.user_id == test_user, "item_id"])
    assert str(recs.item_id.iloc[0]) in out


def test_recommend_for_a_new_user_from_items(vae_run, tmp_path, capsys):
    run, _ = vae_run
    items = Split.load(run / "split").item_ids[:3].tolist()
    recs_csv = tmp_path / "new.csv"
    assert main(["recommend", str(run), "--items", *map(str, items), "-k", "4", "--output", str(recs_csv)]) == 0
    assert "new user with 3 items" in capsys.readouterr().out
    recs = pd.read_csv(recs_csv)
    assert len(recs) == 4 and not set(items) & set(recs.item_id)
    assert recs.score.is_monotonic_decreasing


# ----------------------------------------------------------------------------- embed
def test_embed_users_to_parquet_and_npy_and_items_to_csv(vae_run, tmp_path):
    run, _ = vae_run
    split = Split.load(run / "split")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["embed", str(run), "--output", str(tmp_path / "users.parquet")]) == 0
        assert main(["embed", str(run), "--user", *map(str, split.test.user_ids), "--output",
                     str(tmp_path / "test.npy")]) == 0
        assert main(["embed", str(run), "--items", "--output", str(tmp_path / "items.csv")]) == 0
    users = pd.read_parquet(tmp_path / "users.parquet")
    assert list(users.columns[:3]) == ["user_id", "mu_0", "mu_1"] and "sigma_15" in users.columns
    assert len(users) == len(split.train_user_ids) + split.validation.n_users + split.test.n_users
    assert (users.filter(like="sigma_").to_numpy() > 0).all()
    mu, sigma = np.load(tmp_path / "test.npy"), np.load(tmp_path / "test_sigma.npy")
    assert mu.shape == sigma.shape == (split.test.n_users, 16)
    np.testing.assert_array_equal(np.load(tmp_path / "test_ids.npy"), split.test.user_ids)
    test_rows = users.set_index("user_id").loc[split.test.user_ids]
    np.testing.assert_allclose(test_rows.filter(like="mu_").to_numpy(), mu, rtol=1e-5)
    items = pd.read_csv(tmp_path / "items.csv")
    np.testing.assert_array_equal(items.item_id, split.item_ids)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--model", "nope"], ["--model 'nope'", "unknown model", "mult-vae"]),
        (["--param", "latent_dim"], ["--param 'latent_dim'", "KEY=VALUE"]),
        (["--param", "bogus=1"], ["bogus", "unknown parameter"]),
        (["--param", "latent_dim=-3"], ["latent_dim"]),
        (["--model", "ease", "--nproc", "2"], ["--nproc", "torch models", "'ease'"]),
        (["--model", "blend"], ["'blend' needs its components", "components=[{name = ", "recvae models blend"]),
        (["--model", "recvae", "--anneal", "constant"], ["--anneal", "gamma"]),
        (["--model", "als", "--epochs", "3"], ["--epochs", "iterations"]),
        (["--param", "epochs=3", "--epochs", "2"], ["epochs", "once"]),
        (["--heldout-users", "200"], ["--heldout-users", "cannot hold out 200"]),
        (["--split", "weak", "--heldout-users", "5"], ["--heldout-users", "--split strong"]),
        (["--heldout-users", "0"], ["--epochs", "--epochs-from"]),
    ],
)
def test_train_errors_name_the_argument(log_csv, tmp_path, argv, expected):
    message = error_of(["train", log_csv, "-o", tmp_path / "run", *argv])
    for text in expected:
        assert text in message
    assert not (tmp_path / "run").exists()


def test_train_with_two_processes_under_torchrun(log_csv, tmp_path):
    """``--nproc 2`` relaunches itself under torchrun (gloo); rank 0 alone writes the run."""
    import subprocess

    pytest.importorskip("torch.distributed.run")
    run = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "recvae", "train", str(log_csv), "-o", str(run), "--device", "cpu", "--nproc", "2",
         *VAE_ARGS],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((run / "config.json").read_text())
    assert config["processes"] == 2 and "--nproc" not in config["argv"]
    assert len(pd.read_csv(run / "history.csv")) == 2
    assert result.stdout.count("Run written to") == 1  # rank 0 only


def test_train_errors_on_missing_data_and_occupied_output(vae_run, tmp_path, log_csv):
    message = error_of(["train", tmp_path / "missing.csv", "-o", tmp_path / "run"])
    assert "missing.csv" in message and "no such file" in message and "ml-1m" in message
    run, _ = vae_run
    assert "--overwrite" in error_of(["train", log_csv, "-o", run])


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["recommend", "{run}", "--user", "999999"], ["--user", "999999", "not in the log", "--items"]),
        (["recommend", "{run}", "--user", "abc"], ["--user", "'abc'", "not in the log"]),
        (["recommend", "{run}", "--user", "{user}", "abc", "--strict"], ["'abc'", "--strict"]),
        (["recommend", "{run}", "--items", "999999"], ["--items", "999999"]),
        (["recommend", "{run}", "--user", "{user}", "-k", "0"], ["-k 0"]),
        (["recommend", "{run}", "--all-users"], ["--output"]),
        (["recommend", "{run}", "--user", "{user}", "-o", "recs.xlsx"], [".xlsx", ".parquet"]),
        (["evaluate", "{run}", "--k", "1000"], ["--k", "1000", "items"]),
        (["evaluate", "{run}", "--metrics", "bogus"], ["bogus"]),
        (["embed", "{run}", "--output", "out.txt"], [".txt", ".parquet"]),
        (["evaluate", "{run}/nowhere"], ["nowhere", "no such run directory"]),
    ],
)
def test_run_directory_commands_errors(vae_run, argv, expected):
    run, _ = vae_run
    user = str(Split.load(run / "split").train_user_ids[0])
    message = error_of([a.format(run=run, user=user) for a in argv])
    for text in expected:
        assert text in message


# ----------------------------------------------------------------------------- datasets / experiment
def test_datasets_lists_every_release_and_the_cache(tmp_path, capsys):
    cache, shared = tmp_path / "cache", tmp_path / "shared"
    (cache / "ml-100k").mkdir(parents=True)
    (cache / "ml-100k" / "u.data").write_text("1\t2\t5\t0\n")
    (shared / "mine").mkdir(parents=True)
    (shared / "mine" / "ratings.csv").write_text("userId,movieId\n1,2\n")
    assert main(["datasets", "--data-dir", str(cache), "--shared", str(shared)]) == 0
    out = capsys.readouterr().out
    for name, spec in MOVIELENS.items():
        assert name in out and spec.url in out
    assert f"cached: {cache / 'ml-100k' / 'u.data'}" in out
    assert "mine/ratings.csv" in out


def test_experiment_calls_the_runner(tmp_path, monkeypatch, capsys):
    config = tmp_path / "exp.toml"
    config.write_text("name = 'x'\n")
    calls = []
    fake = types.ModuleType("recvae.experiment")
    fake.run_experiment = lambda path, **kwargs: calls.append((path, kwargs)) or tmp_path / "report.md"
    monkeypatch.setitem(sys.modules, "recvae.experiment", fake)
    assert main(["experiment", str(config), "--output", str(tmp_path / "out"), "--no-progress"]) == 0
    assert calls == [(config, {"progress": False, "output_dir": str(tmp_path / "out"), "jobs": 1})]
    assert str(tmp_path / "report.md") in capsys.readouterr().out
    assert "no such file" in error_of(["experiment", tmp_path / "missing.toml"])


# ----------------------------------------------------------------------------- parsing, help, demo
def test_param_values_are_toml_or_json_literals():
    assert parse_value("100") == 100 and parse_value("5e-4") == 5e-4 and parse_value(".5") == 0.5
    assert parse_value("true") is True and parse_value("False") is False and parse_value("none") is None
    assert parse_value("[600, 200]") == [600, 200]
    assert parse_value('{kind = "constant", cap = 0.1}') == {"kind": "constant", "cap": 0.1}
    assert parse_value('{"kind": "linear"}') == {"kind": "linear"}
    assert parse_value("multinomial") == "multinomial" and parse_value('"42"') == "42"
    assert parse_value("2020-01-01") == "2020-01-01"  # not a TOML date
    assert parse_params(["latent_dim=8", "anneal={kind='auto'}"]) == {"latent_dim": 8, "anneal": {"kind": "auto"}}


@pytest.mark.parametrize("command", ["train", "tune", "evaluate", "recommend", "embed", "similar", "info", "datasets",
                                     "experiment", "demo", "serve", "export", "models"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: recvae {command}" in capsys.readouterr().out


def test_help_model_names_are_registered():
    from recvae.models import MODELS

    assert set(cli.MODEL_NAMES) == set(MODELS)


def test_demo_stays_the_default_command(monkeypatch):
    seen = []
    monkeypatch.setattr(cli.info, "run_demo", lambda args: seen.append(args) or 0)  # where add_demo looks it up
    assert main([]) == 0 and main(["--epochs", "3", "--no-progress"]) == 0
    assert [a.command for a in seen] == ["demo", "demo"] and seen[1].epochs == 3 and seen[1].no_progress
