"""A practitioner's own log end to end: string ids, odd column names, CSV and Parquet, a fit on
every user, recommendations by id for everyone, embeddings, similar items, info -- through
Python (recvae.runs.Run) and the command line, on a small generated log."""

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recvae.cli import main
from recvae.data import Interactions, SyntheticConfig, strong_generalization, synthetic_log
from recvae.data.ids import lookup_ids, normalise_ids
from recvae.data.logs import LogColumnError, read_log
from recvae.evaluation import evaluate
from recvae.models import EASE, MultDAE, MultVAE
from recvae.runs import LogSpec, Run, RunError, RunOutput, SplitSpec

SMALL_VAE = {"latent_dim": 8, "hidden_dims": [16], "progress": False}


@pytest.fixture(scope="module")
def raw_log() -> pd.DataFrame:
    """A log with string ids ("u7", "m12"), a rating column named 'stars' and an extra column."""
    log = synthetic_log(SyntheticConfig(n_users=240, n_items=80, seed=3))
    return pd.DataFrame({
        "customer": "u" + log["user"].astype(str),
        "sku": "m" + log["item"].astype(str),
        "stars": log["rating"],
        "when": log["timestamp"],
        "store": "s1",
    })


@pytest.fixture(scope="module")
def files(raw_log, tmp_path_factory):
    folder = tmp_path_factory.mktemp("logs")
    raw_log.to_csv(folder / "log.csv", index=False)
    raw_log.to_parquet(folder / "log.parquet", index=False)
    return folder


COLUMNS = {"user_col": "customer", "item_col": "sku", "rating_col": "stars", "timestamp_col": "when"}


@pytest.fixture(scope="module")
def tuned(files, tmp_path_factory):
    """A Mult-DAE run on held-out users (picks the epoch), written from Parquet."""
    out = tmp_path_factory.mktemp("runs") / "tune"
    run = Run.fit(LogSpec(files / "log.parquet", **COLUMNS), "mult-dae", params={**SMALL_VAE, "epochs": 4}, output=out)
    return run


@pytest.fixture(scope="module")
def production(files, tuned, tmp_path_factory):
    """The refit on every user and item, epochs taken from the tuned run."""
    out = tmp_path_factory.mktemp("runs") / "prod"
    return Run.fit(LogSpec(files / "log.csv", **COLUMNS), split=SplitSpec(heldout_users=0), epochs_from=tuned.path,
                   output=out)


# ----------------------------------------------------------------------------- ids
def test_ids_normalise_to_plain_sortable_arrays():
    assert normalise_ids(np.array(["u2", "u1"], dtype=object)).dtype.kind == "U"
    assert normalise_ids(np.array([3, 1], dtype=object)).dtype == np.int64
    assert normalise_ids(np.array([3.0, 1.0])).dtype == np.int64
    mixed = normalise_ids(np.array([1, "a", 2], dtype=object))
    assert mixed.dtype.kind == "U" and sorted(mixed.tolist()) == ["1", "2", "a"]
    with pytest.raises(ValueError, match="collide"):
        normalise_ids(np.array([1, "1"], dtype=object))
    index = pd.Index(np.array([5, 12, 40]))
    np.testing.assert_array_equal(lookup_ids(index, ["12", 40], "user"), [1, 2])  # text finds numbers
    with pytest.raises(KeyError, match="unknown user id"):
        lookup_ids(index, ["x"], "user")


def test_string_ids_survive_a_split_save_and_load(raw_log, tmp_path):
    data = read_log(raw_log, **COLUMNS).interactions()
    assert data.user_ids.dtype.kind == "U" and data.item_ids.dtype.kind == "U"
    split = strong_generalization(data, 20)
    split.save(tmp_path / "split")  # object ids used to fail here, after the model was saved
    from recvae.data import Split

    again = Split.load(tmp_path / "split")
    np.testing.assert_array_equal(again.item_ids, split.item_ids)
    np.testing.assert_array_equal(again.test.user_ids, split.test.user_ids)


# ----------------------------------------------------------------------------- columns and ratings
def test_columns_are_found_by_common_names_in_csv_and_parquet(raw_log, tmp_path):
    frame = raw_log.rename(columns={"customer": "userId", "sku": "movieId", "stars": "rating", "when": "timestamp"})
    frame.to_parquet(tmp_path / "ml.parquet")
    frame.to_csv(tmp_path / "ml.csv", index=False)
    for name in ("ml.parquet", "ml.csv"):
        log = read_log(tmp_path / name)
        assert log.columns == {"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"}
        assert "ignored: ['store']" in log.notes[0]
        assert log.interactions().report.below_rating_threshold > 0


def test_a_rating_under_another_name_is_refused_not_silently_ignored(raw_log):
    with pytest.raises(LogColumnError, match="'stars' looks like a rating.*--rating-col stars.*--implicit"):
        read_log(raw_log, user_col="customer", item_col="sku")
    implicit = read_log(raw_log, user_col="customer", item_col="sku", implicit=True).interactions()
    rated = read_log(raw_log, **COLUMNS).interactions()
    assert implicit.report.below_rating_threshold == 0 and rated.report.below_rating_threshold > 0
    assert rated.nnz < implicit.nnz


def test_missing_columns_are_reported_together(raw_log):
    with pytest.raises(LogColumnError) as info:
        read_log(raw_log[["stars", "store"]])
    assert "user id column" in str(info.value) and "item id column" in str(info.value)


def test_a_threshold_on_a_log_without_ratings_is_refused(raw_log):
    log = read_log(raw_log, user_col="customer", item_col="sku", implicit=True)
    with pytest.raises(LogColumnError, match="no rating column"):
        log.interactions(rating_threshold=4.0)


def test_negative_and_out_of_scale_ratings_never_become_positives():
    frame = pd.DataFrame({"user": ["a"] * 6 + ["b"] * 6, "item": list(range(6)) * 2,
                          "rating": [5, 4, -1, 7.5, 4, 5, 5, 4, 4, 5, 4, -2]})
    data = Interactions.from_dataframe(frame, rating_threshold=None, min_user_interactions=1, rating_scale=(0.5, 5))
    assert data.report.invalid_ratings == 3 and data.nnz == 9
    assert 2 not in data.item_ids[data.matrix[0].indices]  # -1 was not kept as a positive
    with pytest.raises(ValueError, match="negative or out of range"):
        Interactions.from_dataframe(frame, rating_threshold=None, min_user_interactions=1, strict=True)


# ----------------------------------------------------------------------------- the run API
def test_tuned_run_reloads_identically_and_holds_every_known_user(tuned):
    again = Run.load(tuned.path)
    assert again.config["best_epoch"] == tuned.config["best_epoch"] is not None
    users = list(tuned.user_ids[:5])
    pd.testing.assert_frame_equal(again.recommend(users, k=5), tuned.recommend(users, k=5))
    split = tuned.split
    expected = len(split.train_user_ids) + split.validation.n_users + split.test.n_users
    assert len(tuned.user_ids) == expected and tuned.user_ids.dtype.kind == "U"


def test_production_fit_uses_every_user_and_item(production, tuned, raw_log):
    data = read_log(raw_log, **COLUMNS).interactions()
    assert production.split.validation is None and production.split.test is None
    assert production.n_items == data.n_items > tuned.n_items - 1
    assert len(production.user_ids) == data.n_users
    assert production.config["params"]["epochs"] == tuned.config["best_epoch"]
    assert production.config["model"] == "mult-dae"
    with pytest.raises(ValueError, match="no test users"):
        production.evaluate("test")


def test_seen_means_every_raw_interaction_any_rating(production, raw_log):
    """A user is never recommended an item rated under the threshold (which the model never saw as positive)."""
    low = raw_log[raw_log["stars"] <= 3.5]
    user = low["customer"].value_counts().index[0]
    rated_low = set(low.loc[low["customer"] == user, "sku"]) & set(production.item_ids)
    assert rated_low
    everything = production.recommend([user], k=production.n_items)
    assert not rated_low & set(everything["sku"])
    kept = production.recommend([user], k=production.n_items, filter_seen=False)
    assert rated_low <= set(kept["sku"])


def test_evaluation_protocol_masks_only_fold_in_positives(tuned):
    """The published protocol is unchanged: Run.evaluate equals evaluate() on the split (fold-in masked only)."""
    ours = tuned.evaluate("test", ks=[10])
    reference = evaluate(tuned.model, tuned.split, "test", ks=[10])
    assert ours["ndcg@10"] == reference["ndcg@10"]
    assert tuned.metrics["test"]["summary"]["ndcg@20"]["mean"] == pytest.approx(
        evaluate(tuned.model, tuned.split, "test", ks=[20])["ndcg@20"])


def test_recommend_by_id_with_exclusions_candidates_and_skips(production, raw_log):
    users = list(production.user_ids[:3])
    base = production.recommend(users, k=5)
    assert list(base.columns) == ["customer", "rank", "sku", "score"]
    assert base.groupby("customer")["rank"].apply(list).tolist() == [[1, 2, 3, 4, 5]] * 3
    banned = base["sku"].iloc[0]
    without = production.recommend(users, k=5, exclude=[banned])
    assert banned not in set(without["sku"])
    per_user = production.recommend(users, k=5, exclude={users[0]: [banned]})
    assert banned not in set(per_user.loc[per_user.customer == users[0], "sku"])
    allowed = list(production.item_ids[:10])
    only = production.recommend(users, k=5, candidates=allowed)
    assert set(only["sku"]) <= set(allowed)
    dropped = raw_log["customer"][~raw_log["customer"].isin(production.user_ids)].iloc[0]
    frame = production.recommend([users[0], dropped, "nobody"], k=3)
    skipped = frame.attrs["skipped"]
    assert skipped.dropped == [dropped] and skipped.unknown == ["nobody"]
    assert "dropped by preprocessing" in skipped.message() and set(frame["customer"]) == {users[0]}
    with pytest.raises(RunError, match="nobody"):
        production.recommend([users[0], "nobody"], k=3, strict=True)


def test_recommend_all_streams_every_user_to_parquet(production, tmp_path):
    path = production.recommend_all(tmp_path / "all.parquet", k=7, batch_size=50)
    recs = pd.read_parquet(path)
    assert len(recs) == 7 * len(production.user_ids)
    assert set(recs["customer"]) == set(production.user_ids.tolist())
    one = production.user_ids[60]
    pd.testing.assert_frame_equal(recs[recs.customer == one].reset_index(drop=True),
                                  production.recommend([one], k=7).astype(recs.dtypes.to_dict()),
                                  check_dtype=False)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left


def test_embeddings_and_similar_items_by_raw_id(production):
    users = production.embed_users(list(production.user_ids[:4]))
    assert list(users.columns[:2]) == ["customer", "mu_0"] and len(users) == 4
    everyone = production.embed_users()
    assert len(everyone) == len(production.user_ids)
    item = production.item_ids[0]
    similar = production.similar_items([item], k=4)
    assert list(similar.columns) == ["sku", "rank", "similar_sku", "score"]
    assert len(similar) == 4 and item not in set(similar["similar_sku"])
    assert similar["score"].is_monotonic_decreasing
    info = production.info()
    assert info["model"] == "mult-dae" and info["parameters"] > 0 and info["users"] == len(production.user_ids)
    assert "mult-dae" in production.summary()


def test_an_occupied_output_is_refused_before_any_work(tuned, files):
    with pytest.raises(RunError, match="already holds a run"):
        Run.fit(LogSpec(files / "log.csv", **COLUMNS), "popularity", output=tuned.path)
    with pytest.raises(ValueError, match="is a file"):
        Run.fit(LogSpec(files / "log.csv", **COLUMNS), "popularity", output=files / "log.csv" / "run")


# ----------------------------------------------------------------------------- estimator conventions
def test_vaes_take_flat_hyper_parameters_and_get_set_params():
    model = MultVAE(latent_dim=100, epochs=5, lr=1e-3, likelihood="bernoulli")
    assert model.config.latent_dim == 100 and model.training.epochs == 5 and model.config.likelihood == "bernoulli"
    params = model.get_params()
    assert params["latent_dim"] == 100 and params["epochs"] == 5
    assert type(model)(**params).get_params() == params  # round trip
    model.set_params(lr=5e-4, hidden_dims=[300])
    assert model.training.lr == 5e-4 and model.config.hidden_dims == (300,)
    with pytest.raises(ValueError, match="unknown parameter"):
        model.set_params(bogus=1)
    with pytest.raises(TypeError, match="unknown parameter"):
        MultVAE(bogus=1)
    assert EASE(l2=5.0).set_params(l2=7.0).get_params() == {"l2": 7.0}


def test_grid_search_takes_a_vae_class():
    from recvae.data import synthetic_interactions
    from recvae.tuning import grid_search

    split = strong_generalization(synthetic_interactions(SyntheticConfig(n_users=200, n_items=60, seed=1)), 20)
    result = grid_search(MultDAE, {"latent_dim": [4, 8], "epochs": [1], "progress": [False], "eval_k": [20]},
                         split, metric="ndcg@20", ks=[20], progress=False)
    assert len(result.trials) == 2 and isinstance(result.best_model, MultDAE)


def test_embed_users_returns_the_same_type_for_every_model():
    from recvae.data import synthetic_interactions
    from recvae.models import ALS, UserEmbeddings

    data = synthetic_interactions(SyntheticConfig(n_users=150, n_items=50, seed=2))
    rows = data.matrix[:3]
    vae = MultVAE(latent_dim=4, hidden_dims=[8], epochs=1, progress=False).fit(data)
    als = ALS(factors=4, iterations=2).fit(data)
    for model in (vae, als):
        embedded = model.embed_users(rows)
        assert isinstance(embedded, UserEmbeddings) and embedded.mu.shape == (3, 4)
    assert als.embed_users(rows).sigma is None and vae.embed_users(rows).sigma.shape == (3, 4)
    mu, sigma = vae.embed_users(rows)  # unpacks as before
    assert (sigma > 0).all()


# ----------------------------------------------------------------------------- the command line
def _cli(argv) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(a) for a in argv]) == 0
    return out.getvalue()


def test_cli_production_workflow_on_string_ids(files, tmp_path):
    log = files / "log.parquet"
    cols = ["--user-col", "customer", "--item-col", "sku", "--rating-col", "stars", "--timestamp-col", "when"]
    tune, prod = tmp_path / "tune", tmp_path / "prod"
    _cli(["train", log, "-o", tune, "--model", "mult-vae", "--epochs", "3", "--no-progress",
          "--param", "latent_dim=8", "--param", "hidden_dims=[16]", *cols])
    printed = _cli(["train", log, "-o", prod, "--heldout-users", "0", "--epochs-from", tune, *cols])
    assert "best epoch of" in printed and "all_users" in printed
    recs_path = tmp_path / "recs.parquet"
    _cli(["recommend", prod, "--all-users", "-k", "5", "-o", recs_path])
    recs = pd.read_parquet(recs_path)
    info = json.loads(_cli(["info", prod, "--json"]))
    assert len(recs) == 5 * info["users"] and recs["customer"].str.startswith("u").all()
    user = recs["customer"].iloc[0]
    banned = recs["sku"].iloc[0]
    out = _cli(["recommend", prod, "--user", user, "-k", "5", "--exclude", banned, "-o", tmp_path / "one.json"])
    one = pd.read_json(tmp_path / "one.json")
    assert f"Top 5 for user {user}" in out and banned not in set(one["sku"]) and len(one) == 5
    _cli(["embed", prod, "-o", tmp_path / "users.csv"])
    assert len(pd.read_csv(tmp_path / "users.csv")) == info["users"]
    similar = _cli(["similar", prod, "--item", banned, "-k", "3"])
    assert f"Most similar to item {banned}" in similar
    assert "mult-vae" in _cli(["info", prod])


def test_cli_outputs_honour_their_suffix(files, tmp_path):
    run = tmp_path / "pop"
    _cli(["train", files / "log.csv", "-o", run, "--model", "popularity", "--user-col", "customer",
          "--item-col", "sku", "--rating-col", "stars"])
    for suffix, reader in ((".parquet", pd.read_parquet), (".csv", pd.read_csv), (".json", pd.read_json),
                           (".jsonl", lambda p: pd.read_json(p, lines=True))):
        path = tmp_path / f"per_user{suffix}"
        _cli(["evaluate", run, "-o", path])
        assert "ndcg@20" in reader(path).columns
    with pytest.raises(SystemExit, match="unknown output format"):
        main(["evaluate", str(run), "-o", str(tmp_path / "per_user.xls")])
    assert not (tmp_path / "per_user.xls").exists()


def test_cli_verbosity_flags(files, tmp_path, capsys):
    run = tmp_path / "q"
    assert main(["train", str(files / "log.csv"), "-o", str(run), "--model", "popularity", "-q", "--user-col",
                 "customer", "--item-col", "sku", "--rating-col", "stars"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["info", str(run), "-v"]) == 0
    assert "popularity" in capsys.readouterr().out


def test_sparse_seen_rows_count_each_pair_once(raw_log):
    log = read_log(pd.concat([raw_log, raw_log.iloc[:5]]), **COLUMNS)
    data = log.interactions()
    seen = log.seen_rows(data.user_ids, data.item_ids)
    assert sp.isspmatrix_csr(seen) and set(np.unique(seen.data)) == {1.0}
    assert seen.nnz >= data.nnz


def test_confidence_weights_reach_the_matrix_the_split_and_the_models(raw_log):
    from recvae.models import ALS

    log = raw_log.assign(plays=np.arange(len(raw_log)) % 4 + 1)
    weighted = read_log(pd.concat([log, log.iloc[:3]]), **COLUMNS, weight_col="plays").interactions()
    binary = read_log(log, **COLUMNS).interactions()
    assert weighted.nnz == binary.nnz and set(np.unique(weighted.matrix.data)) <= {1, 2, 3, 4, 5, 6, 7, 8}
    first = log.iloc[0]
    u, i = weighted.user_index([first.customer])[0], weighted.item_index([first.sku])[0]
    if first.stars > 3.5:
        assert weighted.matrix[u, i] == 2 * first.plays  # a duplicated event's weights add up
    split = strong_generalization(weighted, 20)
    assert split.test.fold_in.data.max() > 1 and split.train.data.max() > 1
    rows = split.test.fold_in[:5]
    plain = ALS(factors=4, iterations=3, alpha=5.0).fit(strong_generalization(binary, 20))
    heavy = ALS(factors=4, iterations=3, alpha=5.0).fit(split)
    assert not np.allclose(plain.item_factors_, heavy.item_factors_)
    with pytest.raises(ValueError, match="positive"):
        read_log(log.assign(plays=0), **COLUMNS, weight_col="plays").interactions()


def test_cli_per_user_lists_from_files(production, tmp_path):
    users = list(production.user_ids[:3])
    first = production.recommend(users, k=2)
    exclude = first[first.customer == users[0]][["customer", "sku"]]
    exclude.to_csv(tmp_path / "exclude.csv", index=False)
    pd.DataFrame({"user_id": users + [users[0]]}).to_csv(tmp_path / "users.csv", index=False)
    _cli(["recommend", production.path, "--users-file", tmp_path / "users.csv", "-k", "2",
          "--exclude-file", tmp_path / "exclude.csv", "-o", tmp_path / "out.parquet"])
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert len(out) == 6  # each user once, although the file names one twice
    assert not set(exclude.sku) & set(out.loc[out.customer == users[0], "sku"])
    pd.testing.assert_frame_equal(out[out.customer != users[0]].reset_index(drop=True),
                                  first[first.customer != users[0]].reset_index(drop=True), check_dtype=False)


def test_id_files_may_use_the_logs_own_column_names(production, tmp_path):
    """A --users-file / --exclude-file with the log's columns (customer, sku) reads like one with user_id, item_id."""
    assert production.id_aliases == {"customer": "user_id", "sku": "item_id"}
    users = list(production.user_ids[:2])
    first = production.recommend(users, k=2)
    pd.DataFrame({"customer": users}).to_csv(tmp_path / "users.csv", index=False)
    first[first.customer == users[0]][
        ["customer", "sku"]].to_csv(tmp_path / "exclude.csv", index=False)
    _cli(["recommend", production.path, "--users-file", tmp_path / "users.csv", "-k", "2",
          "--exclude-file", tmp_path / "exclude.csv", "-o", tmp_path / "out.csv"])
    out = pd.read_csv(tmp_path / "out.csv")
    assert sorted(set(out.customer.astype(str))) == sorted(map(str, users)) and len(out) == 4
    assert not set(first.loc[first.customer == users[0], "sku"].astype(str)) & \
        set(out.loc[out.customer.astype(str) == str(users[0]), "sku"].astype(str))
