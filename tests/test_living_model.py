"""A living model: ``Run.update`` (new events folded in, new items warm-start a refit) and warm starts.

The oracle for a fold-in never calls :meth:`Run.recommend` on the updated run's rows: each
user's merged row comes from the raw logs (rating > 3.5 is a positive, any event is seen),
is scored by the *old* run's model (a fresh fold-in), and ranked by a plain sort.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recvae.cli import main
from recvae.data import SyntheticConfig, synthetic_log
from recvae.runs import Run, RunError, RunOutput, SplitSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

THRESHOLD = 3.5
TINY = {"latent_dim": 8, "hidden_dims": [16], "progress": False, "device": "cpu"}
MODELS = {
    "ease": {"l2": 20.0},
    "edlae": {"l2": 20.0},
    "sparse-ease": {"l2": 20.0},
    "als": {"factors": 6, "iterations": 4, "use_cg": False},
    "mult-vae": {**TINY, "epochs": 4},
    "mult-dae": {"latent_dim": 8, "progress": False, "device": "cpu", "epochs": 3},
    "recvae": {"latent_dim": 8, "hidden_dim": 16, "progress": False, "device": "cpu", "epochs": 2},
}
NEW_ITEM = 9_999


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """(old log, new events on known items with brand-new users, folder): 90% / 10% of a synthetic log."""
    log = synthetic_log(SyntheticConfig(n_users=300, n_items=60, seed=7, mean_events_per_user=25))
    rng = np.random.default_rng(0)
    old_mask = rng.random(len(log)) < 0.9
    old, new = log[old_mask], log[~old_mask]
    newcomers = log[log["user"].isin(log["user"].unique()[:12])].assign(user=lambda f: f["user"] + 100_000)
    new = pd.concat([new[new["item"].isin(old["item"])], newcomers[newcomers["item"].isin(old["item"])]])
    folder = tmp_path_factory.mktemp("living")
    old.to_csv(folder / "old.csv", index=False)
    new.to_csv(folder / "new.csv", index=False)
    return old, new, folder


@pytest.fixture(scope="module")
def runs(logs):
    old, _, folder = logs
    return {name: Run.fit(folder / "old.csv", name, params=params, split=SplitSpec(heldout_users=20),
                          output=folder / name, evaluate=False)
            for name, params in MODELS.items()}


def _tree_digest(path) -> dict:
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _oracle_top(run, merged_items, seen_items, k):
    """Top-k raw item ids of the old run's model on a row of raw item ids, seen items excluded."""
    columns = pd.Index(run.item_ids)
    row = np.zeros((1, run.n_items), np.float32)
    row[0, columns.get_indexer(sorted(merged_items))] = 1.0
    scores = np.asarray(run.model.score(sp.csr_matrix(row)), dtype=np.float64)[0]
    scores[columns.get_indexer(sorted(seen_items))] = -np.inf
    order = np.lexsort((np.arange(run.n_items), -scores))[:k]
    return run.item_ids[order].tolist()


# ----------------------------------------------------------------------------- fold-in
@pytest.mark.parametrize("name", list(MODELS))
def test_new_events_change_recommendations_as_a_fresh_fold_in(runs, logs, tmp_path, name):
    old, new, _ = logs
    run = runs[name]
    before = _tree_digest(run.path)
    updated = run.update(logs[2] / "new.csv", output=tmp_path / "up")
    assert _tree_digest(run.path) == before  # the old run is never changed
    assert updated.config["updates"][-1]["refit"] is False and updated.model is run.model
    assert list(updated.user_ids[:len(run.user_ids)]) == list(run.user_ids)  # old rows stay in place
    assert list(updated.item_ids) == list(run.item_ids)
    reloaded = Run.load(tmp_path / "up")
    both = pd.concat([old, new])
    known = [u for u in new["user"].unique() if u in set(run.user_ids.tolist())][:8]
    newcomers = [u for u in new["user"].unique() if u >= 100_000][:4]
    assert newcomers and known
    catalogue = set(run.item_ids.tolist())
    for user in known + newcomers:
        events = both[both["user"] == user] if user in known else new[new["user"] == user]
        positives = set(events.loc[events["rating"] > THRESHOLD, "item"]) & catalogue
        seen = set(events["item"]) & catalogue
        got = reloaded.recommend([user], k=5)
        assert got["item_id"].tolist() == _oracle_top(run, positives, seen, 5), (name, user)


def test_als_fold_in_is_implicits_own_user_solve(logs):
    """The exact ALS user step of a fold-in equals implicit's recalculate_user on the same confidences."""
    from recvae.models import ALS

    old, _, _ = logs
    from recvae.data import Interactions

    data = Interactions.from_dataframe(old, min_user_interactions=1)
    model = ALS(factors=6, iterations=3, use_cg=False, alpha=2.0).fit(data)
    rows = data.matrix[:5]
    confidence = rows.copy()
    confidence.data = 1.0 + 2.0 * confidence.data
    theirs = np.stack([model.implicit_model_.recalculate_user(u, confidence[u]) for u in range(5)])
    np.testing.assert_allclose(model.embed_users(rows).mu, theirs, rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------- new items: warm-start refit
@pytest.fixture(scope="module")
def with_new_item(logs):
    old, new, folder = logs
    fans = old["user"].unique()[:40]
    events = pd.concat([new, pd.DataFrame({"user": fans, "item": NEW_ITEM, "rating": 5.0, "timestamp": 1})])
    events.to_csv(folder / "new-item.csv", index=False)
    return folder / "new-item.csv"


@pytest.mark.parametrize("name", ["ease", "als", "mult-vae", "recvae"])
def test_new_items_refit_with_old_item_ids_stable(runs, with_new_item, tmp_path, name):
    run = runs[name]
    before = _tree_digest(run.path)
    updated = run.update(with_new_item, output=tmp_path / "up", epochs=2)
    assert _tree_digest(run.path) == before
    record = updated.config["updates"][-1]
    assert record["refit"] is True and record["new_items"] == 1
    assert list(updated.item_ids) == [*run.item_ids.tolist(), NEW_ITEM]
    reloaded = Run.load(tmp_path / "up")
    assert reloaded.model.n_items_ == run.n_items + 1
    assert reloaded.split.test.user_ids.tolist() == run.split.test.user_ids.tolist()  # held-out users stay
    scores = reloaded.model.score(reloaded.history[:3])
    assert scores.shape == (3, run.n_items + 1) and np.isfinite(scores).all()


def test_text_ids_with_new_users_and_items_are_saved_as_text(logs, tmp_path):
    """Text ids (a practitioner's log): a new item and a new user keep the run's str ids (pandas made them objects)."""
    old, _, folder = logs
    as_text = lambda f: f.assign(user="u" + f["user"].astype(str), item="i" + f["item"].astype(str))  # noqa: E731
    as_text(old).to_csv(tmp_path / "old.csv", index=False)
    fans = as_text(old)["user"].unique()[:30]
    pd.DataFrame({"user": [*fans, "newcomer", "newcomer"], "item": ["i-new"] * 30 + ["i-new", "i1"],
                  "rating": 5.0, "timestamp": 1}).to_csv(tmp_path / "new.csv", index=False)
    run = Run.fit(tmp_path / "old.csv", "ease", params={"l2": 20.0}, split=SplitSpec(heldout_users=20),
                  output=tmp_path / "run", evaluate=False)
    updated = run.update(tmp_path / "new.csv", output=tmp_path / "up")
    reloaded = Run.load(tmp_path / "up")
    assert reloaded.item_ids.dtype.kind == "U" and reloaded.item_ids[-1] == "i-new"
    assert list(reloaded.item_ids[:-1]) == list(run.item_ids)
    assert "newcomer" in set(reloaded.user_ids.tolist()) and updated.n_items == run.n_items + 1


def test_refit_never_refuses_new_items(runs, with_new_item, tmp_path):
    with pytest.raises(RunError, match="1 new item.*refit='auto'"):
        runs["ease"].update(with_new_item, output=tmp_path / "up", refit="never")
    assert not (tmp_path / "up").exists()


def test_the_torch_warm_start_copies_old_rows_through_the_item_map(runs):
    """Before any training step, every old item's input and output rows are the old model's, wherever the
    item's column now is; a new item's output bias is the mean of the old ones."""
    from recvae.models.warm_start import copy_grown_state

    old = runs["mult-vae"].model
    n = old.n_items_
    positions = np.concatenate([np.arange(n)[::-1], [-1]])  # reversed columns and one new item
    net = old._build_net(n + 1)
    copy_grown_state(net, old.net_, positions, n)
    new_state, old_state = net.state_dict(), old.net_.state_dict()
    for name in ("input_layer.weight", "decoder.1.weight", "decoder.1.bias"):
        np.testing.assert_array_equal(new_state[name][:n].numpy(), old_state[name].numpy()[::-1])
    assert float(new_state["decoder.1.bias"][n]) == pytest.approx(float(old_state["decoder.1.bias"].mean()))
    np.testing.assert_array_equal(new_state["encoder.0.weight"].numpy(), old_state["encoder.0.weight"].numpy())


def test_the_als_warm_start_starts_from_the_old_item_factors(runs):
    from recvae.models import ALS
    from recvae.models.warm_start import prepare_warm_start

    old = runs["als"].model
    n = old.n_items_
    model = ALS(factors=old.factors)
    positions = np.concatenate([[-1], np.arange(n)])
    prepare_warm_start(model, old, positions)
    holder = type("Implicit", (), {})()
    model._warm_factors(holder, sp.random(7, n + 1, density=0.3, format="csr", random_state=0, dtype=np.float32))
    np.testing.assert_array_equal(holder.item_factors[1:], old.item_factors_)
    assert holder.user_factors.shape == (7, old.factors) and np.abs(holder.item_factors[0]).max() <= 0.01


# ----------------------------------------------------------------------------- warm start in fit
def test_fit_warm_start_records_and_refuses_another_model_or_architecture(runs, logs, tmp_path):
    folder = logs[2]
    warm = Run.fit(folder / "old.csv", "mult-vae", params={**TINY, "epochs": 1}, split=SplitSpec(heldout_users=20),
                   warm_start=runs["mult-vae"].path, evaluate=False)
    assert warm.config["warm_start"]["from"] == str(runs["mult-vae"].path)
    with pytest.raises(RunError, match="holds a MultVAE.*same model"):
        Run.fit(folder / "old.csv", "ease", warm_start=runs["mult-vae"].path)
    with pytest.raises(RunError, match="latent_dim|another architecture"):
        Run.fit(folder / "old.csv", "mult-vae", params={**TINY, "latent_dim": 4, "epochs": 1},
                split=SplitSpec(heldout_users=20), warm_start=runs["mult-vae"].path)
    with pytest.raises(RunError, match="warm start.*no such run"):
        Run.fit(folder / "old.csv", "ease", warm_start=tmp_path / "nowhere")


# ----------------------------------------------------------------------------- faults and bad input
def test_a_fault_mid_write_leaves_no_new_run(runs, logs, tmp_path, monkeypatch):
    from recvae.runs import directory

    run = runs["ease"]
    before = _tree_digest(run.path)

    def broken(path, payload):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(directory, "_write_json", broken)
    with pytest.raises(OSError, match="No space left"):
        run.update(logs[2] / "new.csv", output=tmp_path / "up")
    monkeypatch.undo()
    assert not (tmp_path / "up").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".up")]
    assert _tree_digest(run.path) == before


def test_bad_updates_are_one_line_errors(runs, logs, tmp_path):
    old, new, folder = logs
    run = runs["ease"]
    new.rename(columns={"user": "customer"}).to_csv(tmp_path / "renamed.csv", index=False)
    with pytest.raises(RunError, match="columns of the run's log") as err:
        run.update(tmp_path / "renamed.csv")
    assert "\n" not in str(err.value)
    new.drop(columns="rating").to_csv(tmp_path / "unrated.csv", index=False)
    with pytest.raises(RunError, match="no rating column"):
        run.update(tmp_path / "unrated.csv")
    new.assign(user="u" + new["user"].astype(str)).to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(RunError, match="user ids .* text, the run's are numbers"):
        run.update(tmp_path / "text.csv")
    for output in (run.path, RunOutput(run.path, overwrite=True)):
        with pytest.raises(RunError, match="is the run being updated"):
            run.update(folder / "new.csv", output=output)
    with pytest.raises(RunError, match="refit="):
        run.update(folder / "new.csv", refit="sometimes")


# ----------------------------------------------------------------------------- command line
def test_cli_update_and_train_warm_start_end_to_end(runs, logs, with_new_item, tmp_path, capsys):
    folder = logs[2]
    assert main(["update", str(runs["ease"].path), str(folder / "new.csv"), "-o", str(tmp_path / "up")]) == 0
    assert "unchanged" in capsys.readouterr().out
    up = Run.load(tmp_path / "up")
    assert len(up.user_ids) > len(runs["ease"].user_ids)
    assert main(["update", str(runs["als"].path), str(with_new_item), "-o", str(tmp_path / "als-up"),
                 "--epochs", "2"]) == 0
    assert Run.load(tmp_path / "als-up").item_ids[-1] == NEW_ITEM
    assert main(["train", str(folder / "old.csv"), "-o", str(tmp_path / "warm"), "--model", "als", "--param",
                 "factors=6", "--heldout-users", "20", "--warm-start", str(runs["als"].path), "--no-test"]) == 0
    assert Run.load(tmp_path / "warm").config["warm_start"]["from"] == str(runs["als"].path)
    with pytest.raises(SystemExit, match=r"recvae: error: .*never changed|recvae: error: .*no such run"):
        main(["update", str(tmp_path / "nothing"), str(folder / "new.csv"), "-o", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="recvae: error: .*refit='auto'"):
        main(["update", str(runs["ease"].path), str(with_new_item), "-o", str(tmp_path / "y"), "--refit", "never"])
