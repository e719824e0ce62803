"""Outputs in the user's terms: a run fit on a log with ``customer`` / ``product`` columns answers with those names
(``--id-columns fixed`` / ``id_columns="fixed"``: ``user_id`` / ``item_id``); the users preprocessing dropped from
a production fit are listed beside ``--all-users``' output; ``recvae train --help-params`` lists a model's
hyper-parameters without reading data."""

from __future__ import annotations

import pandas as pd
import pytest

from recvae.cli import main
from recvae.runs import LogSpec, Run, SplitSpec
from recvae.runs.id_columns import log_id_columns


def _events(user_col: str, item_col: str) -> pd.DataFrame:
    rows = [(f"c{u}", f"p{i}") for u in range(30) for i in range(16) if (u * 7 + i * 3) % 5 < 2]
    rows += [("rare1", "p1"), ("rare2", "p2"), ("rare2", "p3")]  # fewer than 5 events: dropped
    return pd.DataFrame(rows, columns=[user_col, item_col])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """EASE on every user of a Parquet log whose id columns are ``customer`` and ``product``."""
    root = tmp_path_factory.mktemp("own-names")
    _events("customer", "product").to_parquet(root / "log.parquet")
    return Run.fit(LogSpec(root / "log.parquet", min_user_events=5), "ease", split=SplitSpec(heldout_users=0),
                   output=root / "prod", report=lambda line: None)


def test_the_run_records_the_logs_names(run):
    assert Run.load(run.path).config["data"]["id_columns"] == {"user_id": "customer", "item_id": "product"}
    assert run.id_names()["similar_item_id"] == "similar_product"
    assert run.id_names("fixed") == {"user_id": "user_id", "item_id": "item_id", "similar_item_id": "similar_item_id"}


def test_python_frames_use_the_logs_names_unless_fixed(run):
    assert list(run.recommend(["c1"], k=2).columns) == ["customer", "rank", "product", "score"]
    assert list(run.recommend(["c1"], k=2, id_columns="fixed").columns) == ["user_id", "rank", "item_id", "score"]
    assert list(run.recommend_for_items(["p1"], k=2).columns) == ["rank", "product", "score"]
    assert list(run.similar_items(["p1"], k=2).columns) == ["product", "rank", "similar_product", "score"]
    assert list(run.recommend_all(k=1).columns) == ["customer", "rank", "product", "score"]
    with pytest.raises(ValueError, match="choose 'log'.*or 'fixed'"):
        run.recommend(["c1"], k=2, id_columns="own")


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_cli_outputs_use_the_logs_names(run, tmp_path, suffix):
    out = tmp_path / f"recs{suffix}"
    assert main(["recommend", str(run.path), "--user", "c1", "c2", "-k", "2", "-o", str(out), "-q"]) == 0
    read = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".json": pd.read_json}[suffix]
    assert list(read(out).columns) == ["customer", "rank", "product", "score"]
    similar = tmp_path / f"similar{suffix}"
    assert main(["similar", str(run.path), "--item", "p1", "-k", "2", "-o", str(similar), "-q"]) == 0
    assert list(read(similar).columns) == ["product", "rank", "similar_product", "score"]


def test_the_fixed_option_gives_user_id_and_item_id(run, tmp_path):
    out = tmp_path / "recs.parquet"
    assert main(["recommend", str(run.path), "--all-users", "-k", "2", "-o", str(out), "--id-columns", "fixed",
                 "-q"]) == 0
    assert list(pd.read_parquet(out).columns) == ["user_id", "rank", "item_id", "score"]
    assert list(pd.read_csv(run.dropped_users_path(out)).columns) == ["user_id"]
    fixed = ["--id-columns", "fixed", "-q", "-o"]
    assert main(["recommend", str(run.path), "--user", "c1", "-k", "2", *fixed, str(tmp_path / "u.json")]) == 0
    assert list(pd.read_json(tmp_path / "u.json").columns) == ["user_id", "rank", "item_id", "score"]
    assert main(["recommend", str(run.path), "--items", "p1", "-k", "2", *fixed, str(tmp_path / "n.csv")]) == 0
    assert list(pd.read_csv(tmp_path / "n.csv").columns) == ["rank", "item_id", "score"]
    assert main(["similar", str(run.path), "--item", "p1", "-k", "2", *fixed, str(tmp_path / "s.csv")]) == 0
    assert list(pd.read_csv(tmp_path / "s.csv").columns) == ["item_id", "rank", "similar_item_id", "score"]


def test_id_files_in_either_names_are_accepted(run, tmp_path):
    pd.DataFrame({"customer": ["c1"]}).to_csv(tmp_path / "users.csv", index=False)
    pd.DataFrame({"product": ["p1"]}).to_csv(tmp_path / "exclude.csv", index=False)
    assert main(["recommend", str(run.path), "--users-file", str(tmp_path / "users.csv"), "--exclude-file",
                 str(tmp_path / "exclude.csv"), "-k", "3", "-o", str(tmp_path / "r.csv"), "-q"]) == 0
    frame = pd.read_csv(tmp_path / "r.csv")
    assert set(frame["customer"]) == {"c1"} and "p1" not in set(frame["product"])
    by_name = run.recommend(["c1"], k=3, exclude=pd.DataFrame({"customer": ["c1"], "product": ["p1"]}))
    assert "p1" not in set(by_name["product"])


def test_embeddings_use_the_logs_names(tmp_path_factory, tmp_path):
    root = tmp_path_factory.mktemp("embed")
    _events("customer", "product").to_csv(root / "log.csv", index=False)
    run = Run.fit(LogSpec(root / "log.csv"), "als", params={"factors": 4, "iterations": 2},
                  split=SplitSpec(heldout_users=0), output=root / "als", report=lambda line: None)
    assert main(["embed", str(run.path), "-o", str(tmp_path / "u.parquet"), "-q"]) == 0
    assert pd.read_parquet(tmp_path / "u.parquet").columns[0] == "customer"
    assert main(["embed", str(run.path), "--items", "-o", str(tmp_path / "i.csv"), "--id-columns", "fixed",
                 "-q"]) == 0
    assert pd.read_csv(tmp_path / "i.csv").columns[0] == "item_id"


@pytest.mark.parametrize("columns, expected", [
    ({"user": "user", "item": "item"}, ("user_id", "item_id")),  # MovieLens' roles, and synthetic logs
    ({"user": "userId", "item": "movieId"}, ("user_id", "movieId")),  # a spelling of the role keeps user_id
    ({"user": "customer", "item": "sku"}, ("customer", "sku")),
    ({"user": "customer", "item": "score"}, ("user_id", "item_id")),  # would clash with the score column
])
def test_which_names_a_log_gives(columns, expected):
    names, note = log_id_columns(columns)
    assert (names["user_id"], names["item_id"]) == expected
    assert (note is not None) == (columns["item"] == "score")


def test_an_old_run_without_recorded_names_keeps_the_fixed_ones(run, tmp_path):
    config = dict(run.config, data={k: v for k, v in run.config["data"].items() if k != "id_columns"})
    old = Run(run.model, run.split, user_ids=run.user_ids, history=run.history, seen=run.seen, config=config)
    assert list(old.recommend(["c1"], k=1).columns) == ["user_id", "rank", "item_id", "score"]


def test_all_users_lists_the_dropped_users_beside_the_output(run, tmp_path, capsys):
    out = tmp_path / "recs.csv"
    assert main(["recommend", str(run.path), "--all-users", "-k", "2", "-o", str(out)]) == 0
    listed = tmp_path / "recs.dropped-users.csv"
    assert sorted(pd.read_csv(listed)["customer"]) == ["rare1", "rare2"]
    printed = capsys.readouterr().out
    assert str(listed) in printed and "--min-user-events 1" in printed
    assert not {"rare1", "rare2"} & set(pd.read_csv(out)["customer"])


def test_a_run_without_dropped_users_empties_a_stale_list(tmp_path):
    frame = _events("customer", "product")
    frame = frame[~frame["customer"].str.startswith("rare")]
    frame.to_csv(tmp_path / "log.csv", index=False)
    run = Run.fit(LogSpec(tmp_path / "log.csv"), "popularity", split=SplitSpec(heldout_users=0),
                  report=lambda line: None)
    listed = run.dropped_users_path(tmp_path / "recs.csv")
    listed.write_text("customer\nsomeone\n")
    run.recommend_all(tmp_path / "recs.csv", k=1)
    assert pd.read_csv(listed).empty
    (tmp_path / "fresh").mkdir()
    run.recommend_all(tmp_path / "fresh" / "recs.csv", k=1)
    assert not run.dropped_users_path(tmp_path / "fresh" / "recs.csv").exists()


def test_train_help_params_prints_what_models_prints(capsys, tmp_path):
    assert main(["models", "ease"]) == 0
    expected = capsys.readouterr().out
    missing = tmp_path / "no-such-log.csv"  # never read
    for argv in (["train", "--model", "ease", "--help-params"], ["train", "--help-params", "--model=ease"],
                 ["-q", "train", str(missing), "--help-params", "--model", "ease", "-o", str(tmp_path / "r")]):
        assert main(argv) == 0
        assert capsys.readouterr().out == expected
    assert not (tmp_path / "r").exists()


def test_train_help_params_without_a_model_lists_the_default_one(capsys):
    assert main(["models", "mult-vae"]) == 0
    expected = capsys.readouterr().out
    assert main(["train", "--help-params"]) == 0
    assert capsys.readouterr().out == expected
    with pytest.raises(SystemExit, match="recvae: error: .*no-such-model"):
        main(["train", "--model", "no-such-model", "--help-params"])
