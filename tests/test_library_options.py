"""The library functions behind command-line options: training shortcuts, ``KEY=VALUE`` parameters, inline
search spaces, id tables, embedding files, the MovieLens cache status and the metric table."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from recvae.data.movielens import MOVIELENS, cache_status
from recvae.data.tables import list_data_files, read_ids_table, write_embeddings
from recvae.evaluation.harness import EvaluationResult
from recvae.models.mult_vae import MultVAE
from recvae.models.options import torch_model_names, training_shortcuts
from recvae.models.params import parse_param_pairs, parse_param_value
from recvae.runs.fitting import earlier_model
from recvae.tuning import parse_search_space


# ----------------------------------------------------------------------------- training shortcuts
def test_shortcuts_of_a_torch_model_fill_its_parameters():
    got = training_shortcuts("Mult-VAE ", epochs=3, likelihood="bernoulli", anneal="constant", beta_cap=0.3,
                             device="cpu", seed=5, progress=False)
    anneal = {**dataclasses.asdict(MultVAE.default_training().anneal), "kind": "constant", "cap": 0.3}
    assert got == {"epochs": 3, "likelihood": "bernoulli", "anneal": anneal, "device": "cpu", "seed": 5,
                   "progress": False}
    assert training_shortcuts("mult-vae") == {}
    assert training_shortcuts("mult-vae", progress=None) == {}  # None: auto, nothing set
    only_cap = training_shortcuts("mult-vae", beta_cap=0.1)["anneal"]
    assert only_cap["cap"] == 0.1 and only_cap["kind"] == MultVAE.default_training().anneal.kind


@pytest.mark.parametrize("option", ["epochs", "likelihood", "anneal", "beta_cap", "device"])
def test_each_torch_only_shortcut_is_refused_for_a_baseline(option):
    value = {"epochs": 2, "likelihood": "gaussian", "anneal": "constant", "beta_cap": 0.1, "device": "cpu"}[option]
    with pytest.raises(ValueError, match=f"^{option} applies to the torch models .* not to 'ease'"):
        training_shortcuts("ease", **{option: value})
    with pytest.raises(ValueError, match=f"^--{option.replace('_', '-')} applies"):
        training_shortcuts("ease", labels={option: f"--{option.replace('_', '-')}"}, **{option: value})


def test_shortcut_refusals_name_the_parameter_to_use_instead():
    with pytest.raises(ValueError, match="set its iterations with iterations=N"):
        training_shortcuts("als", epochs=3)
    with pytest.raises(ValueError, match="gamma"):
        training_shortcuts("recvae", anneal="constant")
    with pytest.raises(ValueError, match="no KL term"):
        training_shortcuts("mult-dae", beta_cap=0.2)
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        training_shortcuts("nope")


def test_seed_reaches_models_that_have_one_and_progress_only_torch_models():
    assert training_shortcuts("als", seed=11, progress=False) == {"seed": 11}
    assert training_shortcuts("ease", seed=11, progress=False) == {}  # EASE is deterministic: no seed
    assert set(torch_model_names()) == {"mult-dae", "mult-vae", "recvae", "joint-vae", "weighted-vae"}


# ----------------------------------------------------------------------------- parameters and spaces as text
def test_param_pairs_are_typed_and_bad_pairs_named():
    assert parse_param_pairs(["latent_dim=8", "lr=5e-4", "hidden_dims=[600, 200]", "anneal={kind='auto'}",
                              "likelihood=multinomial", "x=none"]) == {
        "latent_dim": 8, "lr": 5e-4, "hidden_dims": [600, 200], "anneal": {"kind": "auto"},
        "likelihood": "multinomial", "x": None}
    assert parse_param_value('{"kind": "linear"}') == {"kind": "linear"}
    for bad, text in ((["latent_dim"], "'latent_dim': expected KEY=VALUE"), (["=3"], "expected KEY=VALUE"),
                      (["a=1", "a=2"], "a is given twice")):
        with pytest.raises(ValueError, match=text):
            parse_param_pairs(bad)


def test_inline_search_space_is_parsed_and_validated():
    assert parse_search_space("{l2 = {low = 1.0, high = 1e4, log = true}, drop = [0.2, 0.5]}") == {
        "l2": {"low": 1.0, "high": 1e4, "log": True}, "drop": [0.2, 0.5]}
    assert parse_search_space('{"l2": [1.0, 10.0]}') == {"l2": [1.0, 10.0]}
    with pytest.raises(ValueError, match="expected a table"):
        parse_search_space("l2")
    with pytest.raises(ValueError, match="needs high"):
        parse_search_space("{l2 = {low = 1.0}}")


# ----------------------------------------------------------------------------- files
def test_ids_table_needs_an_id_column_and_rows(tmp_path):
    (tmp_path / "ok.csv").write_text("user_id,item_id\nu1,m1\n")
    (tmp_path / "items.csv").write_text("item_id\nm1\n")
    (tmp_path / "other.csv").write_text("who\nu1\n")
    (tmp_path / "empty.csv").write_text("user_id\n")
    assert read_ids_table(tmp_path / "ok.csv").to_dict("list") == {"user_id": ["u1"], "item_id": ["m1"]}
    assert list(read_ids_table(tmp_path / "items.csv").columns) == ["item_id"]
    with pytest.raises(ValueError, match=r"expected user_id column; the columns are \['item_id'\]"):
        read_ids_table(tmp_path / "items.csv", "user_id")
    with pytest.raises(ValueError, match=r"user_id and/or item_id columns; the columns are \['who'\]"):
        read_ids_table(tmp_path / "other.csv")
    with pytest.raises(ValueError, match="no rows"):
        read_ids_table(tmp_path / "empty.csv")


@pytest.mark.parametrize("ids", [np.array(["u3", "u1", "u2"], dtype=object), np.array([30, 10, 20])])
def test_npy_embeddings_keep_rows_and_ids_aligned(tmp_path, ids):
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=(3, 2)), rng.random((3, 2))
    frame = pd.DataFrame({"user_id": ids, "mu_0": mu[:, 0], "mu_1": mu[:, 1], "sigma_0": sigma[:, 0],
                          "sigma_1": sigma[:, 1]})
    written = write_embeddings(frame, tmp_path / "sub.npy")
    assert written == [tmp_path / "sub.npy", tmp_path / "sub_sigma.npy", tmp_path / "sub_ids.npy"]
    np.testing.assert_allclose(np.load(tmp_path / "sub.npy"), mu.astype(np.float32))
    np.testing.assert_allclose(np.load(tmp_path / "sub_sigma.npy"), sigma.astype(np.float32))
    assert np.load(tmp_path / "sub_ids.npy").tolist() == ids.tolist()  # request order, not sorted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.npy", "sub_ids.npy", "sub_sigma.npy"]  # no temps


def test_item_embeddings_without_sigma_and_tables(tmp_path):
    frame = pd.DataFrame({"item_id": ["b", "a"], "emb_0": [1.0, 2.0]})
    assert write_embeddings(frame, tmp_path / "items.npy") == [tmp_path / "items.npy", tmp_path / "items_ids.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "items.npy"), [[1.0], [2.0]])
    assert write_embeddings(frame, tmp_path / "items.csv") == [tmp_path / "items.csv"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "items.csv"), frame)
    with pytest.raises(ValueError, match="unknown output format"):
        write_embeddings(frame, tmp_path / "items.txt")


def test_list_data_files_skips_hidden_ones(tmp_path):
    (tmp_path / "a" / ".git").mkdir(parents=True)
    (tmp_path / "a" / "r.csv").write_text("x\n")
    (tmp_path / "a" / ".git" / "HEAD").write_text("y\n")
    (tmp_path / "b.dat").write_text("12345")
    assert list_data_files(tmp_path) == [(tmp_path.joinpath("a/r.csv").relative_to(tmp_path), 2),
                                         (tmp_path.joinpath("b.dat").relative_to(tmp_path), 5)]
    with pytest.raises(FileNotFoundError):
        list_data_files(tmp_path / "missing")


def test_cache_status_of_a_release(tmp_path):
    spec = MOVIELENS["ml-100k"]
    assert cache_status("ml-100k", tmp_path).startswith("not cached")
    (tmp_path / spec.zip_name).write_bytes(b"zip")
    assert cache_status(spec, tmp_path).startswith(f"zip cached: {tmp_path / spec.zip_name}")
    (tmp_path / "ml-100k").mkdir()
    (tmp_path / "ml-100k" / "u.data").write_text("1\t2\t5\t0\n")
    assert cache_status("ml-100k", tmp_path) == f"cached: {tmp_path / 'ml-100k' / 'u.data'}"


def test_earlier_model_reads_a_run_config_and_tolerates_anything_else(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": "ease"}))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    assert earlier_model(tmp_path / "run") == "ease"
    assert earlier_model(tmp_path / "bad") is None and earlier_model(tmp_path / "none") is None
    assert earlier_model(None) is None


# ----------------------------------------------------------------------------- the metric table
def test_metric_table_shows_the_95_percent_interval():
    summary = pd.DataFrame({"mean": [0.5, np.nan, 0.25], "std_err": [0.01, np.nan, np.nan],
                            "n_users": [100, 0, 3], "n_excluded": [2, 102, 99]},
                           index=pd.Index(["ndcg@10", "recall@10", "mrr@10"]))
    table = EvaluationResult(per_user=pd.DataFrame(), summary=summary, seconds=0.0).table()
    assert table.index.name == "metric" and list(table.index) == ["ndcg@10", "recall@10", "mrr@10"]
    assert table["mean ± 95% CI"].tolist() == [f"0.5000 ± {1.96 * 0.01:.4f}", "n/a", "0.2500"]
    assert table["users"].tolist() == [100, 0, 3] and table["excluded"].tolist() == [2, 102, 99]


def test_list_layout_writes_one_array_column_per_vector(tmp_path):
    frame = pd.DataFrame({"user_id": ["b", "a"], "mu_0": [1.0, 2.0], "mu_1": [3.0, 4.0], "sigma_0": [0.5, 0.25],
                          "sigma_1": [0.1, 0.2]})
    [path] = write_embeddings(frame, tmp_path / "u.parquet", layout="list")
    back = pd.read_parquet(path)
    assert list(back.columns) == ["user_id", "mu", "sigma"] and back["user_id"].tolist() == ["b", "a"]
    np.testing.assert_allclose(np.stack(back["mu"]), [[1.0, 3.0], [2.0, 4.0]])
    np.testing.assert_allclose(np.stack(back["sigma"]), [[0.5, 0.1], [0.25, 0.2]])
    items = pd.DataFrame({"item_id": [7], "emb_0": [1.5], "emb_1": [2.5]})
    [path] = write_embeddings(items, tmp_path / "i.jsonl", layout="list")
    assert json.loads(path.read_text()) == {"item_id": 7, "embedding": [1.5, 2.5]}
    with pytest.raises(ValueError, match="list layout needs .parquet"):
        write_embeddings(frame, tmp_path / "u.csv", layout="list")
    with pytest.raises(ValueError, match="layout 'rows'"):
        write_embeddings(frame, tmp_path / "u.parquet", layout="rows")
