"""Every command line option reaches the library: what ``Run.fit``, ``Run.recommend*``, ``Run.evaluate``,
``Run.embed_users``, ``Run.similar_items``, ``Run.load``, ``tune``, ``serve``, ``export_onnx`` and
``run_demo`` RECEIVED for each option (spies bind the call to the real signature), and what the commands
print or write, checked against values computed here: evaluate's mean ± 95% CI from its own per-user
table, recommendations from ``model.score`` on the log with seen/excluded items masked by hand, similar
items from EASE's weights.

The library calls that would train (fit, tune) are replaced by recorders; the rest run on a small EASE
run directory (and a popularity one, for what it cannot do).
"""

import contextlib
import dataclasses
import inspect
import io
import json
import re
import types

import numpy as np
import pandas as pd
import pytest

from recvae.cli import main
from recvae.data import Split, SyntheticConfig, synthetic_log
from recvae.runs import Run
from oracles import ScoreOracle

pytestmark = pytest.mark.usefixtures("one_torch_thread")



# ============================================================================ fixtures and helpers
@pytest.fixture(scope="module")
def log():
    return synthetic_log(SyntheticConfig(n_users=120, n_items=40, seed=3))


@pytest.fixture(scope="module")
def log_csv(log, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli_wiring_data") / "log.csv"
    log.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def runs(log, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("cli_wiring_runs")
    quiet = lambda _: None  # noqa: E731
    Run.fit(log, "ease", params={"l2": 10.0}, output=tmp / "ease", report=quiet)
    Run.fit(log, "popularity", output=tmp / "popularity", report=quiet)
    return {name: tmp / name for name in ("ease", "popularity")}


@pytest.fixture(scope="module")
def ease(runs) -> Run:
    return Run.load(runs["ease"], device="cpu")


def run_cli(argv) -> str:
    """``main(argv)`` (it must succeed); returns what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(a) for a in argv]) == 0
    return out.getvalue()


def error_of(argv) -> str:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    assert isinstance(info.value.code, str), info.value.code
    return info.value.code


def _bind(function, args, kwargs) -> dict:
    bound = inspect.signature(function).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def spy(monkeypatch, owner, name: str, fake=None) -> list[dict]:
    """Replace ``owner.name`` (a function, method or classmethod) by a recorder of the arguments it receives,
    bound to its real signature (defaults filled in); it then calls ``fake`` if given, else the real one."""
    static = inspect.getattr_static(owner, name)
    calls: list[dict] = []
    if isinstance(static, classmethod):
        real = getattr(owner, name)  # bound to the class

        def recorder(cls, *args, **kwargs):
            calls.append(_bind(real, args, kwargs))
            return (fake or real)(*args, **kwargs)

        monkeypatch.setattr(owner, name, classmethod(recorder))
    elif isinstance(owner, type):
        real = static

        def recorder(self, *args, **kwargs):
            calls.append({k: v for k, v in _bind(real, (self, *args), kwargs).items() if k != "self"})
            return (fake or real)(self, *args, **kwargs)

        monkeypatch.setattr(owner, name, recorder)
    else:  # a module's function
        real = getattr(owner, name)

        def recorder(*args, **kwargs):
            calls.append(_bind(real, args, kwargs))
            return (fake or real)(*args, **kwargs)

        monkeypatch.setattr(owner, name, recorder)
    return calls


class Oracle(ScoreOracle):
    """The shared oracle's rankings as item ids only (what the CLI's tables hold)."""

    def user(self, *args, **kwargs) -> list:
        return [item for _, item, _ in super().user(*args, **kwargs)]

    def new_user(self, *args, **kwargs) -> list:
        return [item for _, item, _ in super().new_user(*args, **kwargs)]


@pytest.fixture(scope="module")
def oracle(ease, log) -> Oracle:
    return Oracle(ease, log)


def strs(values) -> list[str]:
    return [str(v) for v in values]


# ============================================================================ train
def _fake_fit(*args, **kwargs):
    return types.SimpleNamespace(path=None)


def unfold(call: dict) -> dict:
    """A recorded fit/tune call with its LogSpec, SplitSpec and RunOutput laid out as flat options."""
    from recvae.runs import LogSpec, RunOutput, SplitSpec

    flat = dict(call)
    log = flat.pop("log")
    assert isinstance(log, LogSpec), log
    flat.update({k: v for k, v in dataclasses.asdict(log).items() if k != "source"}, log=log.source)
    split = flat.pop("split")
    assert isinstance(split, SplitSpec), split
    flat.update(split=split.kind, heldout_users=split.heldout_users, split_seed=split.seed)
    output = flat.pop("output")
    if isinstance(output, RunOutput):
        flat.update({k: v for k, v in dataclasses.asdict(output).items() if k != "path"}, output=str(output.path))
    else:
        flat["output"] = output
    flat.pop("deprecated")
    return flat


def test_train_passes_every_option_to_run_fit(monkeypatch, log_csv, tmp_path):
    from recvae.models.mult_vae import MultVAE

    calls = spy(monkeypatch, Run, "fit", _fake_fit)
    argv = ["train", str(log_csv), "-o", str(tmp_path / "out"), "--overwrite", "--resume", "--no-checkpoint",
            "--model", " Mult-VAE ", "--param", "latent_dim=8", "--param", "hidden_dims=[16]",
            "--likelihood", "bernoulli", "--anneal", "constant", "--beta-cap", "0.3", "--epochs", "3",
            "--device", "cpu", "--seed", "5", "--no-progress", "--split", "weak", "--heldout-users", "0",
            "--min-rating", "2.5", "--min-user-events", "3", "--strict", "--data-dir", str(tmp_path / "dd"),
            "--user-col", "who", "--item-col", "what", "--rating-col", "stars", "--implicit", "--weight-col", "w",
            "--timestamp-col", "ts", "--sep", ";", "--epochs-from", str(tmp_path / "earlier"), "--no-test",
            "--warm-start", str(tmp_path / "previous")]
    run_cli(argv)
    [got] = map(unfold, calls)
    anneal = {**dataclasses.asdict(MultVAE.default_training().anneal), "kind": "constant", "cap": 0.3}
    assert got.pop("params") == {"latent_dim": 8, "hidden_dims": [16], "likelihood": "bernoulli", "anneal": anneal,
                                 "epochs": 3, "device": "cpu", "seed": 5, "progress": False}
    assert got.pop("report") is print
    assert got == {
        "log": str(log_csv), "model": "mult-vae", "output": str(tmp_path / "out"), "overwrite": True, "resume": True,
        "checkpoint": False, "split": "weak", "heldout_users": 0, "split_seed": 5,
        "epochs_from": str(tmp_path / "earlier"), "warm_start": str(tmp_path / "previous"), "rating_threshold": 2.5, "min_user_events": 3, "strict": True,
        "user_col": "who", "item_col": "what", "rating_col": "stars", "timestamp_col": "ts", "implicit": True,
        "weight_col": "w", "sep": ";", "data_dir": str(tmp_path / "dd"), "evaluate": "validation",
        "command_line": argv,
    }


def test_train_defaults_reach_run_fit(monkeypatch, log_csv, tmp_path):
    calls = spy(monkeypatch, Run, "fit", _fake_fit)
    run_cli(["train", log_csv, "-o", tmp_path / "a"])
    run_cli(["-q", "train", log_csv, "-o", tmp_path / "b", "--min-rating", "none", "--heldout-users", "0",
             "--epochs", "4"])
    run_cli(["train", log_csv, "-o", tmp_path / "c", "--model", "als", "--seed", "11", "--param", "factors=4"])
    run_cli(["train", log_csv, "-o", tmp_path / "d", "--model", "EASE", "--seed", "11"])
    plain, quiet, als, ease = map(unfold, calls)
    assert plain["model"] is None and plain["params"] == {}  # Run.fit's default model (or --epochs-from's)
    assert (plain["split"], plain["heldout_users"], plain["split_seed"], plain["rating_threshold"],
            plain["min_user_events"], plain["strict"], plain["checkpoint"], plain["evaluate"], plain["data_dir"],
            plain["overwrite"], plain["resume"], plain["implicit"]) == ("strong", None, None, 3.5, 5, False, True,
                                                                        True, "data", False, False, False)
    assert plain["report"] is print
    # -q: no progress bar for the torch model, and nothing reported
    assert quiet["params"] == {"epochs": 4, "progress": False} and quiet["report"] is not print
    assert quiet["rating_threshold"] is None and quiet["heldout_users"] == 0
    assert (als["model"], als["params"], als["split_seed"]) == ("als", {"factors": 4, "seed": 11}, 11)
    assert (ease["model"], ease["params"], ease["split_seed"]) == ("ease", {}, 11)  # EASE has no seed parameter


@pytest.mark.parametrize("flag", [["--epochs", "2"], ["--likelihood", "gaussian"], ["--anneal", "constant"],
                                  ["--beta-cap", "0.1"], ["--device", "cpu"]])
def test_train_refuses_each_torch_only_option_for_a_baseline(monkeypatch, log_csv, tmp_path, flag):
    calls = spy(monkeypatch, Run, "fit", _fake_fit)
    message = error_of(["train", log_csv, "-o", tmp_path / "x", "--model", "ease", *flag])
    assert flag[0] in message and "'ease'" in message
    assert calls == []


@pytest.mark.parametrize("form", [["--nproc", "2"], ["--nproc=2"]])
def test_train_nproc_relaunches_under_torchrun(monkeypatch, log_csv, tmp_path, form):
    import recvae.runtime.distributed

    calls = spy(monkeypatch, recvae.runtime.distributed, "launch_torchrun", lambda argv, nproc: 7)
    fits = spy(monkeypatch, Run, "fit", _fake_fit)
    assert main(["train", str(log_csv), "-o", str(tmp_path / "ddp"), *form, "--epochs", "1"]) == 7  # torchrun's
    assert fits == []
    assert calls == [{"argv": ["train", str(log_csv), "-o", str(tmp_path / "ddp"), *form, "--epochs", "1"], "nproc": 2}]
    assert "--nproc 0" in error_of(["train", log_csv, "-o", tmp_path / "ddp", "--nproc", "0"])


def test_output_options_before_the_command_are_kept(tmp_path):
    """``recvae -q|-v|--debug COMMAND``: the command's parser once reset them to their defaults (a bug)."""
    from recvae.runs import RunError

    with pytest.raises(RunError, match="no such run directory"):  # --debug: the exception itself, not one line
        main(["--debug", "info", str(tmp_path / "missing")])
    assert "no such run directory" in error_of(["info", tmp_path / "missing"])
    # -q and -v before the command: see also test_train_defaults_reach_run_fit and test_serve_options_reach_the_server


# ============================================================================ evaluate
_ROW = re.compile(r"^(\S+@\d+)\s+(\S+) ± (\S+)\s+(\d+)\s+(\d+)\s*$")


def _printed_metrics(out: str) -> dict:
    rows = {}
    for line in out.splitlines():
        match = _ROW.match(line.strip())
        if match:
            name, mean, half, users, excluded = match.groups()
            rows[name] = (float(mean), float(half), int(users), int(excluded))
    return rows


@pytest.mark.parametrize("which", ["validation", "test"])
def test_evaluate_options_reach_the_library_and_the_ci_is_the_per_user_tables(monkeypatch, runs, tmp_path, which):
    loads = spy(monkeypatch, Run, "load")
    calls = spy(monkeypatch, Run, "evaluate")
    table = tmp_path / "users.csv"
    extra = [] if which == "test" else ["--which", which]  # test is the default
    out = run_cli(["evaluate", runs["ease"], *extra, "--k", "3", "10", "--metrics", "ndcg", "recall", "mrr",
                   "--device", "cpu", "--output", table])
    assert [c["device"] for c in loads] == ["cpu"]
    [got] = calls
    assert (got["which"], list(got["ks"]), list(got["metrics"])) == (which, [3, 10], ["ndcg", "recall", "mrr"])
    per_user = pd.read_csv(table)
    heldout = getattr(Split.load(runs["ease"] / "split"), which)
    assert sorted(per_user["user_id"]) == sorted(heldout.user_ids.tolist())
    assert f"on {len(heldout.user_ids)} {which} users" in out
    printed = _printed_metrics(out)
    assert set(printed) == {f"{m}@{k}" for m in ("ndcg", "recall", "mrr") for k in (3, 10)}
    spread = 0.0
    for name, (mean, half, users, excluded) in printed.items():
        values = per_user[name].to_numpy(np.float64)
        kept = values[~np.isnan(values)]
        assert (users, excluded) == (len(kept), int(np.isnan(values).sum()))
        assert mean == pytest.approx(kept.mean(), abs=6e-5)
        # the 95% interval's half width: 1.96 * std / sqrt(n), std over users (ddof=0, as Liang et al.)
        assert half == pytest.approx(1.96 * kept.std() / np.sqrt(len(kept)), abs=6e-5)
        spread += half
    assert spread > 0.01  # the users differ: a wrong width cannot hide behind zeros


# ============================================================================ recommend
def test_recommend_by_user_passes_every_option(monkeypatch, runs, ease, oracle, tmp_path):
    loads = spy(monkeypatch, Run, "load")
    calls = spy(monkeypatch, Run, "recommend")
    users = ease.user_ids[[45, 3, 58, 20]].tolist()  # train, train, test, train: not sorted
    exclude = ease.item_ids[[0, 5]].tolist()
    candidates = ease.item_ids[:30].tolist()
    recs = tmp_path / "recs.csv"
    run_cli(["recommend", runs["ease"], "--user", *strs(users), "-k", "4", "--exclude", *strs(exclude),
             "--candidates", *strs(candidates), "--keep-seen", "--strict", "--batch-size", "3", "--device", "cpu",
             "-o", recs])
    [got] = calls
    assert got["user_ids"] == strs(users) and got["k"] == 4 and got["filter_seen"] is False
    assert (got["exclude"], got["candidates"]) == (strs(exclude), strs(candidates))
    assert (got["strict"], got["batch_size"]) == (True, 3) and loads[0]["device"] == "cpu"
    frame = pd.read_csv(recs)
    assert list(dict.fromkeys(frame["user_id"])) == users
    for user in users:
        part = frame[frame["user_id"] == user]
        assert part["rank"].tolist() == [1, 2, 3, 4]
        assert part["item_id"].tolist() == oracle.user(user, 4, filter_seen=False, exclude=exclude,
                                                       candidates=candidates)


def test_recommend_by_user_defaults_and_the_smallest_k(monkeypatch, runs, ease, oracle, tmp_path):
    calls = spy(monkeypatch, Run, "recommend")
    users = ease.user_ids[[30, 52]].tolist()
    recs = tmp_path / "recs.csv"
    out = run_cli(["recommend", runs["ease"], "--user", *strs(users), "-k", "1", "-o", recs])
    [got] = calls
    assert (got["k"], got["filter_seen"], got["exclude"], got["candidates"], got["strict"], got["batch_size"]) == (
        1, True, None, None, False, 1000)
    frame = pd.read_csv(recs)
    assert frame["item_id"].tolist() == [oracle.user(u, 1)[0] for u in users]
    for user, item in zip(users, frame["item_id"]):
        assert f"Top 1 for user {user}:" in out and str(item) in out
    assert "-k 0" in error_of(["recommend", runs["ease"], "--user", users[0], "-k", "0"])


def test_recommend_past_the_catalogue_says_how_many_it_returns(runs, ease):
    user, n = ease.user_ids[30], len(ease.item_ids)
    out = run_cli(["recommend", runs["ease"], "--user", str(user), "-k", "100000"])
    assert f"Top {n:,} (the whole catalogue; asked for 100,000) for user {user}:" in out
    assert "Top 100000" not in out and "Top 100,000 for" not in out


def test_recommend_tables_of_users_exclusions_and_candidates(monkeypatch, runs, ease, oracle, tmp_path):
    calls = spy(monkeypatch, Run, "recommend")
    users = ease.user_ids[[12, 7, 12, 40]].tolist()
    pd.DataFrame({"user_id": users}).to_csv(tmp_path / "users.csv", index=False)
    per_user = pd.DataFrame({"user_id": [users[0]] * 2 + [users[1]],
                             "item_id": oracle.user(users[0], 2) + oracle.user(users[1], 1)})
    per_user.to_csv(tmp_path / "exclude.csv", index=False)
    allowed = ease.item_ids[10:35].tolist()
    pd.DataFrame({"item_id": allowed}).to_csv(tmp_path / "candidates.csv", index=False)
    recs = tmp_path / "recs.csv"
    run_cli(["recommend", runs["ease"], "--users-file", tmp_path / "users.csv", "--exclude-file",
             tmp_path / "exclude.csv", "--candidates-file", tmp_path / "candidates.csv", "-k", "3", "-o", recs])
    [got] = calls
    assert got["user_ids"] == [users[0], users[1], users[3]]  # file order, each user once
    pd.testing.assert_frame_equal(got["exclude"], per_user)
    pd.testing.assert_frame_equal(got["candidates"], pd.DataFrame({"item_id": allowed}))
    frame = pd.read_csv(recs)
    for user in got["user_ids"]:
        mine = per_user.loc[per_user["user_id"] == user, "item_id"].tolist()
        assert frame.loc[frame["user_id"] == user, "item_id"].tolist() == oracle.user(user, 3, exclude=mine,
                                                                                      candidates=allowed)


def test_recommend_for_a_new_user_passes_every_option(monkeypatch, runs, ease, oracle, tmp_path):
    calls = spy(monkeypatch, Run, "recommend_for_items")
    items = ease.item_ids[[3, 9, 14]].tolist()
    exclude = oracle.new_user(items, 2)  # what it would rank first
    candidates = ease.item_ids[:25].tolist()
    recs = tmp_path / "new.csv"
    run_cli(["recommend", runs["ease"], "--items", *strs(items), "-k", "5", "--exclude", *strs(exclude),
             "--candidates", *strs(candidates), "--strict", "-o", recs])
    [got] = calls
    assert (got["item_ids"], got["k"], got["exclude"], got["candidates"], got["strict"]) == (
        strs(items), 5, strs(exclude), strs(candidates), True)
    frame = pd.read_csv(recs, keep_default_na=False)
    assert list(frame.columns) == ["rank", "item_id", "score"]  # a new user has no id: no empty user_id column
    assert frame["rank"].tolist() == [1, 2, 3, 4, 5]
    assert frame["item_id"].tolist() == oracle.new_user(items, 5, exclude=exclude, candidates=candidates)
    # an unknown item: refused with --strict, skipped (and the rest folded in) without
    assert "ghost" in error_of(["recommend", runs["ease"], "--items", *strs(items), "ghost", "--strict"])
    out = run_cli(["recommend", runs["ease"], "--items", *strs(items), "ghost", strs(items)[0], "-k", "5", "-o", recs])
    assert pd.read_csv(recs)["item_id"].tolist() == oracle.new_user(items, 5)
    assert "for a new user with 3 items (2 not used: unknown or repeated):" in out  # the header counts what was used
    assert calls[-1]["strict"] is False


def test_recommend_all_users_passes_every_option(monkeypatch, runs, ease, oracle, tmp_path):
    calls = spy(monkeypatch, Run, "recommend_all")
    exclude = ease.item_ids[[1, 2, 8]].tolist()
    recs = tmp_path / "all.csv"
    run_cli(["-q", "recommend", runs["ease"], "--all-users", "-k", "3", "--exclude", *strs(exclude), "--keep-seen",
             "--batch-size", "16", "-o", recs])
    [got] = calls
    assert (got["path"], got["k"], got["filter_seen"], got["exclude"], got["candidates"], got["batch_size"],
            got["progress"]) == (str(recs), 3, False, strs(exclude), None, 16, False)
    frame = pd.read_csv(recs)
    assert sorted(set(frame["user_id"])) == sorted(ease.user_ids.tolist()) and len(frame) == 3 * len(ease.user_ids)
    assert not set(frame["item_id"]) & set(exclude)
    for user in ease.user_ids[[0, 49, 61]].tolist():
        assert frame.loc[frame["user_id"] == user, "item_id"].tolist() == oracle.user(user, 3, filter_seen=False,
                                                                                      exclude=exclude)
    run_cli(["recommend", runs["ease"], "--all-users", "-o", recs])
    assert (calls[-1]["k"], calls[-1]["filter_seen"], calls[-1]["exclude"], calls[-1]["progress"]) == (10, True, None,
                                                                                                        None)


# ============================================================================ embed
def _fake_embeddings(self, user_ids=None, *, strict=False, batch_size=10_000, id_columns="log", uncertainty=False):
    """Two mu and two sigma columns that spell each user's id, for the ids the run resolves."""
    ids = self.user_ids if user_ids is None else self.resolve_users(user_ids)[1]
    ids = np.asarray(ids, dtype=np.float64)
    return pd.DataFrame({"user_id": ids.astype(np.int64), "mu_0": ids, "mu_1": ids + 0.5,
                         "sigma_0": ids / 1000, "sigma_1": ids / 1000 + 1})


def test_embed_passes_users_and_strict_and_keeps_rows_with_their_ids(monkeypatch, runs, ease, tmp_path):
    calls = spy(monkeypatch, Run, "embed_users", _fake_embeddings)
    users = ease.user_ids[[44, 2, 57, 9]].tolist()
    run_cli(["embed", runs["ease"], "--user", *strs(users), "--strict", "-o", tmp_path / "e.npy"])
    run_cli(["embed", runs["ease"], "-o", tmp_path / "all.csv"])
    picked, every = calls
    assert (picked["user_ids"], picked["strict"]) == (strs(users), True)
    assert (every["user_ids"], every["strict"], every["id_columns"]) == (None, False, "log")
    ids = np.load(tmp_path / "e_ids.npy")
    mu, sigma = np.load(tmp_path / "e.npy"), np.load(tmp_path / "e_sigma.npy")
    assert ids.tolist() == users
    np.testing.assert_allclose(mu, np.stack([ids, ids + 0.5], axis=1))
    np.testing.assert_allclose(sigma, np.stack([ids / 1000, ids / 1000 + 1], axis=1), rtol=1e-6)
    table = pd.read_csv(tmp_path / "all.csv")
    assert table["user_id"].tolist() == ease.user_ids.tolist()
    np.testing.assert_allclose(table["mu_1"], table["user_id"] + 0.5)
    run_cli(["embed", runs["ease"], "--user", *strs(users), "--layout", "list", "-o", tmp_path / "v.parquet"])
    vectors = pd.read_parquet(tmp_path / "v.parquet")
    assert list(vectors.columns) == ["user_id", "mu", "sigma"] and vectors["user_id"].tolist() == users
    np.testing.assert_allclose(np.stack(vectors["mu"]), mu)


def test_embed_items_calls_item_embeddings_and_names_models_without(monkeypatch, runs, ease, tmp_path):
    values = np.arange(ease.n_items * 2, dtype=np.float32).reshape(-1, 2)[::-1]
    fake = lambda self, id_columns="log": pd.DataFrame(  # noqa
        {"item_id": self.item_ids, "emb_0": values[:, 0], "emb_1": values[:, 1]})
    calls = spy(monkeypatch, Run, "item_embeddings", fake)
    embeds = spy(monkeypatch, Run, "embed_users", _fake_embeddings)
    run_cli(["embed", runs["ease"], "--items", "-o", tmp_path / "items.npy"])
    assert len(calls) == 1 and embeds == []
    np.testing.assert_array_equal(np.load(tmp_path / "items_ids.npy"), ease.item_ids)
    np.testing.assert_array_equal(np.load(tmp_path / "items.npy"), values)
    monkeypatch.undo()
    message = error_of(["embed", runs["ease"], "--items", "-o", tmp_path / "real.npy"])
    assert str(runs["ease"]) in message and "no item embeddings" in message and "mult-vae" in message


# ============================================================================ similar
def test_similar_passes_items_and_k_and_prints_the_models_neighbours(monkeypatch, runs, ease, tmp_path):
    calls = spy(monkeypatch, Run, "similar_items")
    items = ease.item_ids[[7, 2]].tolist()
    table = tmp_path / "similar.csv"
    out = run_cli(["similar", runs["ease"], "--item", *strs(items), "-k", "3", "-o", table])
    [got] = calls
    assert (got["item_ids"], got["k"]) == (strs(items), 3)
    weights = np.asarray(ease.model.weights_, dtype=np.float32)
    expected = {}
    for item in items:
        j = int(np.flatnonzero(ease.item_ids == item)[0])
        order = [c for c in np.lexsort((np.arange(ease.n_items), -weights[j])).tolist() if c != j][:3]
        expected[item] = [(rank, ease.item_ids[c].item(), float(weights[j, c])) for rank, c in enumerate(order, 1)]
    printed, current = {}, None
    for line in out.splitlines():
        if line.startswith("Most similar to item "):
            current = int(line.removeprefix("Most similar to item ").rstrip(":"))
            printed[current] = []
        elif current is not None and re.match(r"^\s*\d+\s+\S+\s+\S+\s*$", line):
            rank, item, score = line.split()
            printed[current].append((int(rank), int(item), float(score)))
    assert list(printed) == items
    for item in items:
        assert [(r, i) for r, i, _ in printed[item]] == [(r, i) for r, i, _ in expected[item]]
        np.testing.assert_allclose([s for *_, s in printed[item]], [s for *_, s in expected[item]], atol=6e-5)
    frame = pd.read_csv(table)
    assert list(frame.columns) == ["item_id", "rank", "similar_item_id", "score"]
    assert list(zip(frame["item_id"], frame["rank"], frame["similar_item_id"])) == [
        (item, r, i) for item in items for r, i, _ in expected[item]]


def test_similar_on_a_model_without_item_space_and_bad_k(runs):
    message = error_of(["similar", runs["popularity"], "--item", "1"])
    assert str(runs["popularity"]) in message and "no similar items" in message
    assert "-k 0" in error_of(["similar", runs["ease"], "--item", "1", "-k", "0"])


# ============================================================================ info
def test_info_is_the_runs_own_description(monkeypatch, runs):
    loads = spy(monkeypatch, Run, "load")
    about = json.loads(run_cli(["info", runs["ease"], "--json", "--device", "cpu"]))
    config = json.loads((runs["ease"] / "config.json").read_text())
    with np.load(runs["ease"] / "users.npz") as users:
        n_users, n_dropped = len(users["user_ids"]), len(users["dropped_user_ids"])
    assert (about["model"], about["model_class"], about["users"], about["dropped_users"]) == (
        "ease", "EASE", n_users, n_dropped)
    assert about["items"] == Split.load(runs["ease"] / "split").n_items and about["path"] == str(runs["ease"])
    assert about["hyper_parameters"] == config["model_params"] and about["hyper_parameters"]["l2"] == 10.0
    assert [c["device"] for c in loads] == ["cpu"]
    text = run_cli(["info", runs["popularity"]])
    assert "popularity (Popularity)" in text and f"{n_users:,} users" in text
    assert [c["device"] for c in loads] == ["cpu", "auto"]


# ============================================================================ serve, export, tune, demo
def test_serve_options_reach_the_server(monkeypatch, runs):
    import recvae.serving.server

    calls = spy(monkeypatch, recvae.serving.server, "serve", lambda *args, **kwargs: None)
    run_cli(["-v", "serve", runs["ease"], "--host", "0.0.0.0", "--port", "9001", "--workers", "3", "--max-batch",
             "17", "--max-wait-ms", "2.5", "--no-batching", "--device", "cpu", "--allow-failed",
             "--max-body-bytes", "4096", "--unknown-users", "404", "--allow-reload", "--max-queue", "77"])
    run_cli(["serve", runs["ease"]])
    run_cli(["-q", "serve", runs["ease"]])
    every, plain, quiet = calls
    assert every == {"run_dir": str(runs["ease"]), "host": "0.0.0.0", "port": 9001, "workers": 3, "max_batch": 17,
                     "max_wait_ms": 2.5, "max_list": 10_000, "micro_batching": False, "device": "cpu",
                     "log_level": "info", "access_log": True, "max_body_bytes": 4096, "allow_failed": True,
                     "unknown_users": "404", "allow_reload": True, "max_queue": 77}
    assert {k: plain[k] for k in ("host", "port", "workers", "max_batch", "max_wait_ms", "micro_batching", "device",
                                  "log_level", "access_log", "allow_failed", "max_body_bytes")} == {
        "host": "127.0.0.1", "port": 8000, "workers": 1, "max_batch": 256, "max_wait_ms": 0.0, "micro_batching": True,
        "device": "auto", "log_level": "info", "access_log": False, "allow_failed": False, "max_body_bytes": 1 << 20}
    assert (quiet["log_level"], quiet["access_log"], quiet["micro_batching"]) == ("warning", False, True)


def test_export_options_reach_export_onnx(monkeypatch, runs, tmp_path):
    import recvae.serving.onnx_export

    calls = spy(monkeypatch, recvae.serving.onnx_export, "export_onnx", lambda run, path, **kwargs: path)
    run_cli(["export", runs["ease"], "-o", tmp_path / "a.onnx", "--opset", "17", "--unweighted"])
    run_cli(["export", runs["ease"], "-o", tmp_path / "b.onnx"])
    custom, default = calls
    assert isinstance(custom["model_or_run"], Run) and custom["model_or_run"].path == runs["ease"]
    assert (custom["path"], custom["opset"], custom["weighted"]) == (str(tmp_path / "a.onnx"), 17, False)
    assert (default["opset"], default["weighted"]) == (recvae.serving.onnx_export.DEFAULT_OPSET, True)


def _fake_tune(*args, **kwargs):
    return types.SimpleNamespace(metric="ndcg@10", best_score=0.123456, best_params={"l2": 42.0},
                                 edge_note=lambda: "edge: l2=low")


def test_tune_passes_every_option(monkeypatch, log_csv, tmp_path, capsys):
    import recvae.runs

    calls = spy(monkeypatch, recvae.runs, "tune", _fake_tune)
    space_file = tmp_path / "space.toml"
    space_file.write_text("[search]\nlr = { low = 1e-4, high = 1e-2, log = true }\n")
    out = run_cli(["tune", log_csv, "-o", tmp_path / "trials.csv", "--model", "mult-vae", "--search-file", space_file,
                   "--trials", "1", "--sampler", "random", "--timeout", "30", "--seed", "4", "--metric", "recall@10",
                   "--param", "epochs=2", "--no-prune", "--finalists", "2", "--seeds", "5", "--no-progress",
                   "--split", "weak", "--min-rating", "none", "--min-user-events", "2",
                   "--data-dir", tmp_path / "dd", "--user-col", "u", "--item-col", "i", "--rating-col", "r",
                   "--implicit", "--weight-col", "w", "--timestamp-col", "t", "--sep", ","])
    run_cli(["-q", "tune", log_csv, "-o", tmp_path / "t.csv", "--search", "{l2 = [1.0, 10.0]}", "--trials", "3",
             "--model", "ease", "--heldout-users", "9"])
    every, plain = map(unfold, calls)
    assert every.pop("search") == {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}
    assert every.pop("report") is print
    assert every == {
        "log": str(log_csv), "model": "mult-vae", "n_trials": 1, "params": {"epochs": 2}, "sampler": "random",
        "seed": 4, "timeout_s": 30.0, "prune": False, "metric": "recall@10", "finalists": 2, "seeds": 5,
        "output": str(tmp_path / "trials.csv"), "split": "weak", "heldout_users": None, "split_seed": None,
        "rating_threshold": None, "min_user_events": 2, "strict": False, "user_col": "u", "item_col": "i",
        "rating_col": "r", "timestamp_col": "t", "implicit": True, "weight_col": "w", "sep": ",",
        "data_dir": str(tmp_path / "dd"), "progress": False}
    assert "validation ndcg@10 0.1235, mean over 5 seeds of 2 finalists" in out
    assert '{"l2": 42.0}' in out and "[edge: l2=low]" in out
    assert (plain["search"], plain["n_trials"], plain["model"], plain["sampler"], plain["prune"], plain["finalists"],
            plain["seeds"], plain["metric"], plain["rating_threshold"], plain["progress"], plain["split"],
            plain["heldout_users"]) == ({"l2": [1.0, 10.0]}, 3, "ease", "tpe", True, 1, 3, "ndcg@100", 3.5, False,
                                        "strong", 9)
    assert plain["report"] is not print
    assert "--trials 0" in error_of(["tune", log_csv, "-o", tmp_path / "x.csv", "--search", "{l2 = [1.0]}",
                                     "--trials", "0"])
    assert len(calls) == 2


def test_demo_options_reach_run_demo(monkeypatch):
    import recvae.experiment.demo

    calls = spy(monkeypatch, recvae.experiment.demo, "run_demo", lambda *args, **kwargs: 0)
    run_cli(["demo", "--users", "50", "--items", "20", "--epochs", "2", "--seed", "9", "--device", "cpu",
             "--no-progress"])
    run_cli(["demo"])
    assert calls == [{"users": 50, "items": 20, "epochs": 2, "seed": 9, "device": "cpu", "progress": False},
                     {"users": 3000, "items": 1500, "epochs": 40, "seed": 0, "device": "auto", "progress": None}]
