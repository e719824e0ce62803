"""The grouped options of Run.fit and tune: LogSpec (reading, preprocessing), SplitSpec (the split), RunOutput
(writing), and the old flat keywords mapped onto them with a FutureWarning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recvae.data import SyntheticConfig, strong_generalization, synthetic_log
from recvae.data.logs import read_log
from recvae.data.splits import weak_generalization
from recvae.models import MultVAE
from recvae.runs import LogSpec, Run, RunError, RunOutput, SplitSpec, default_heldout_users
from recvae.runs.fitting import legacy_options

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUIET = {"report": lambda _: None, "evaluate": False}
TINY_VAE = {"latent_dim": 4, "hidden_dims": [8], "epochs": 1, "batch_size": 50, "progress": False}


@pytest.fixture(scope="module")
def log() -> pd.DataFrame:
    return synthetic_log(SyntheticConfig(n_users=200, n_items=40, seed=3, mean_events_per_user=20))


@pytest.fixture(scope="module")
def log_csv(log, tmp_path_factory):
    path = tmp_path_factory.mktemp("specs") / "log.csv"
    log.rename(columns={"user": "who", "item": "what", "rating": "stars"}).to_csv(path, index=False)
    return path


# ----------------------------------------------------------------------------- LogSpec
def test_a_log_spec_reads_as_read_log_does(log_csv):
    spec = LogSpec(log_csv, user_col="who", item_col="what", rating_col="stars")
    expected = read_log(log_csv, user_col="who", item_col="what", rating_col="stars")
    pd.testing.assert_frame_equal(spec.read().frame, expected.frame)
    assert spec.read().columns == expected.columns


def test_a_log_spec_preprocesses_with_its_threshold_and_minimum(log):
    raw = read_log(log)
    spec = LogSpec(raw, rating_threshold=2.0, min_user_events=5)
    got = spec.interactions(spec.read())
    kept = log[log["rating"] > 2.0].drop_duplicates(["user", "item"])
    counts = kept.groupby("user").size()
    assert set(got.user_ids) == set(counts[counts >= 5].index)
    assert got.nnz == int(counts[counts >= 5].sum())


def test_reading_options_on_an_already_read_log_are_refused(log):
    raw = read_log(log)
    with pytest.raises(ValueError, match="user_col, sep"):
        LogSpec(raw, user_col="user", sep=",")
    assert LogSpec(raw, rating_threshold=None, strict=True).read() is raw  # preprocessing still applies


# ----------------------------------------------------------------------------- SplitSpec
def test_a_split_spec_makes_the_split_its_options_name(log):
    data = LogSpec(log).interactions(read_log(log))
    expected = strong_generalization(data, default_heldout_users(data.n_users), seed=98765)
    got = SplitSpec().make(data)
    assert (got.train != expected.train).nnz == 0 and list(got.test.user_ids) == list(expected.test.user_ids)
    seeded = SplitSpec(heldout_users=7, seed=3).make(data)
    assert list(seeded.test.user_ids) == list(strong_generalization(data, 7, seed=3).test.user_ids)
    assert len(seeded.validation.user_ids) == 7
    weak = SplitSpec("weak", seed=5).make(data)
    assert (weak.train != weak_generalization(data, seed=5).train).nnz == 0
    every = SplitSpec("weak", heldout_users=0)
    assert every.every_user and every.strategy == "all_users"
    assert every.make(data).validation is None and every.make(data).train.nnz == data.nnz


@pytest.mark.parametrize("kind, heldout, words", [("random", None, "choose one of strong, weak, temporal"),
                                                   ("weak", 5, "applies to the strong split"),
                                                   ("temporal", 0.1, "applies to the strong split")])
def test_a_bad_split_spec_is_one_line(kind, heldout, words):
    with pytest.raises(ValueError, match=words):
        SplitSpec(kind, heldout)


def test_a_temporal_split_of_a_log_without_times_names_the_column(log):
    with pytest.raises(RunError, match="needs event times") as info:
        Run.fit(log.drop(columns="timestamp", errors="ignore"), "popularity", split="temporal", **QUIET)
    assert "cannot split" not in str(info.value)


# ----------------------------------------------------------------------------- Run.fit with the specs
def test_run_fit_takes_the_specs(log, tmp_path):
    run = Run.fit(LogSpec(log, rating_threshold=3.0, min_user_events=4), "popularity",
                  split=SplitSpec(heldout_users=6, seed=11), output=RunOutput(tmp_path / "run", command_line=["x"]),
                  **QUIET)
    assert run.config["data"]["rating_threshold"] == 3.0 and run.config["data"]["min_user_events"] == 4
    assert run.config["seed"] == 11 and run.config["argv"] == ["x"]
    assert len(run.split.validation.user_ids) == 6
    with pytest.raises(RunError, match="already holds a run"):
        Run.fit(log, "popularity", output=tmp_path / "run", **QUIET)
    again = Run.fit(log, "popularity", output=RunOutput(tmp_path / "run", overwrite=True), **QUIET)
    assert again.path == tmp_path / "run"


def test_a_model_instance_trains_on_every_user_with_its_own_epochs(log):
    run = Run.fit(log, MultVAE(**TINY_VAE), split=SplitSpec(heldout_users=0), **QUIET)
    assert run.config["split"]["strategy"] == "all_users" and len(run.model.history_) == 1


def test_a_named_torch_model_on_every_user_still_needs_epochs(log):
    with pytest.raises(RunError, match="no validation users to choose the epoch"):
        Run.fit(log, "mult-vae", split=SplitSpec(heldout_users=0), **QUIET)


# ----------------------------------------------------------------------------- the old flat keywords
def test_the_old_keywords_warn_and_give_the_same_run(log, tmp_path):
    new = Run.fit(LogSpec(log, rating_threshold=3.0), "mult-vae", params={**TINY_VAE, "seed": 7},
                  split=SplitSpec(heldout_users=6, seed=7), output=tmp_path / "new", **QUIET)
    with pytest.warns(FutureWarning, match="heldout_users, overwrite, rating_threshold, seed=.... is deprecated"):
        old = Run.fit(log, "mult-vae", params=TINY_VAE, heldout_users=6, seed=7, rating_threshold=3.0,
                      output=tmp_path / "old", overwrite=True, **QUIET)
    assert old.model.get_params()["seed"] == 7  # the old seed seeded the model too
    assert old.config["seed"] == new.config["seed"] == 7
    assert list(old.split.test.user_ids) == list(new.split.test.user_ids)
    np.testing.assert_array_equal(old.model.score(old.history[:5]), new.model.score(new.history[:5]))


def test_the_old_keywords_map_onto_the_specs():
    with pytest.warns(FutureWarning):
        log, split, output, params, seed = legacy_options(
            "tune", {"split_seed": 3, "heldout_users": 9, "user_col": "u", "min_user_events": 2, "epochs": 4},
            log="log.csv", split="strong", output=None, params={"lr": 0.1}, split_seed_name="split_seed")
    assert (log.source, log.user_col, log.min_user_events) == ("log.csv", "u", 2)
    assert split == SplitSpec("strong", 9, 3) and output is None and seed == 3
    assert params == {"lr": 0.1, "epochs": 4}
    with pytest.warns(FutureWarning):
        _, _, output, _, _ = legacy_options("Run.fit", {"resume": True, "checkpoint": False}, log="l", split="weak",
                                            output="out", params=None)
    assert output == RunOutput("out", resume=True, checkpoint=False)


def test_the_old_keywords_refuse_what_they_always_refused():
    with pytest.raises(TypeError, match="heldout"):
        legacy_options("Run.fit", {"heldout": 3}, log="l", split="strong", output=None, params=None)
    with pytest.warns(FutureWarning), pytest.raises(RunError, match="epochs is given twice"):
        legacy_options("Run.fit", {"epochs": 3}, log="l", split="strong", output=None, params={"epochs": 2})
    with pytest.warns(FutureWarning), pytest.raises(RunError, match="applies to the strong split"):
        legacy_options("Run.fit", {"heldout_users": 3}, log="l", split="weak", output=None, params=None)
    with pytest.warns(FutureWarning), pytest.raises(RunError, match="not both"):
        legacy_options("Run.fit", {"sep": ";"}, log=LogSpec("l"), split="strong", output=None, params=None)
