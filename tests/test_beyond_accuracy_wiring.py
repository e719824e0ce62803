"""Beyond-accuracy metrics end to end: ``Run.evaluate`` and ``recvae evaluate`` on small saved runs, checked
against lists ranked here from the model's raw scores and metrics computed here from the run's training
matrix (plain numpy, not recvae.evaluation)."""

from __future__ import annotations

import contextlib
import io
import itertools
import re

import numpy as np
import pandas as pd
import pytest

from recvae.cli import main
from recvae.data import SyntheticConfig, synthetic_log
from recvae.runs import Run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

K = 10
NAMES = ("novelty", "diversity", "arp", "long_tail", "gini", "coverage")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    log = synthetic_log(SyntheticConfig(n_users=150, n_items=45, seed=4))
    tmp = tmp_path_factory.mktemp("beyond_runs")
    quiet = lambda _: None  # noqa: E731
    Run.fit(log, "ease", params={"l2": 10.0}, output=tmp / "ease", report=quiet)
    Run.fit(log, "mult-vae", params={"epochs": 2, "seed": 0}, output=tmp / "vae", report=quiet)
    return {name: tmp / name for name in ("ease", "vae")}


def reference(run: Run, which: str = "test", space: str = "cooccurrence") -> tuple[pd.DataFrame, dict]:
    """Per-user and global beyond-accuracy values at K, from the model's scores and the training matrix."""
    held = getattr(run.split, which)
    scores = np.asarray(run.model.score(held.fold_in), dtype=np.float64)
    scores[held.fold_in.toarray() > 0] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    seen = run.split.train.toarray() > 0
    n_train, n_items = seen.shape
    counts = seen.sum(axis=0)
    share = counts / n_train
    bits = -np.log2(np.where(counts > 0, counts, 0.5) / n_train)
    ordered = np.sort(counts)[::-1]
    threshold = ordered[np.argmax(np.cumsum(ordered) >= 0.8 * counts.sum())]
    head = counts >= threshold
    if space == "cooccurrence":
        vectors = seen.T.astype(np.float64)
    else:
        vectors = np.asarray(run.model.item_embeddings(), dtype=np.float64)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-300)
    ild = [np.mean([1 - unit[i] @ unit[j] for i, j in itertools.combinations(row, 2)]) for row in top]
    per_user = pd.DataFrame({"novelty": bits[top].mean(axis=1), "diversity": ild, "arp": share[top].mean(axis=1),
                             "long_tail": (~head)[top].mean(axis=1)}, index=held.user_ids)
    exposure = np.sort(np.bincount(top.ravel(), minlength=n_items)).astype(np.float64)
    j = np.arange(1, n_items + 1)
    gini = ((2 * j - n_items - 1) * exposure).sum() / (n_items * exposure.sum())
    return per_user, {"gini": gini, "coverage": len(np.unique(top)) / n_items}


def run_cli(argv) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(a) for a in argv]) == 0
    return out.getvalue()


@pytest.mark.parametrize("which", ["test", "validation"])
def test_run_evaluate_beyond_accuracy_matches_a_reference(runs, which):
    run = Run.load(runs["ease"], device="cpu")
    result = run.evaluate(which, metrics=[f"{n}@{K}" for n in NAMES], diversity_space="cooccurrence")
    per_user, overall = reference(run, which)
    got = result.per_user.set_index("user_id")
    for name in ("novelty", "diversity", "arp", "long_tail"):
        np.testing.assert_allclose(got[f"{name}@{K}"].to_numpy(), per_user.loc[got.index, name].to_numpy(),
                                   atol=1e-6, err_msg=name)
        assert result.summary.loc[f"{name}@{K}", "n_users"] == len(per_user)  # every list counts
    for name, value in overall.items():
        assert result[f"{name}@{K}"] == pytest.approx(value), name


def test_diversity_uses_the_models_item_embeddings_when_asked(runs):
    run = Run.load(runs["vae"], device="cpu")
    by_space = {space: run.evaluate(metrics=[f"diversity@{K}"], diversity_space=space).per_user[f"diversity@{K}"]
                for space in ("auto", "embeddings", "cooccurrence")}
    embeddings, _ = reference(run, space="embeddings")
    cooccurrence, _ = reference(run, space="cooccurrence")
    np.testing.assert_allclose(by_space["auto"], embeddings["diversity"], atol=1e-5)
    np.testing.assert_allclose(by_space["embeddings"], embeddings["diversity"], atol=1e-5)
    np.testing.assert_allclose(by_space["cooccurrence"], cooccurrence["diversity"], atol=1e-6)


_ROW = re.compile(r"^(\S+@\d+)\s+(\S+)(?: ± (\S+))?\s+(\S+)\s+(\S+)\s*$")


def test_cli_evaluate_prints_and_writes_beyond_accuracy(runs, tmp_path):
    table = tmp_path / "users.csv"
    metrics = ",".join(f"{n}@{K}" for n in NAMES)
    out = run_cli(["evaluate", runs["ease"], "--metrics", metrics, "ndcg", "--k", "5",
                   "--diversity-space", "cooccurrence", "--device", "cpu", "-o", table])
    printed = {m.group(1): m.groups()[1:] for line in out.splitlines() if (m := _ROW.match(line.strip()))}
    assert list(printed) == [f"{n}@{K}" for n in NAMES] + ["ndcg@5"]
    per_user, overall = reference(Run.load(runs["ease"], device="cpu"))
    written = pd.read_csv(table).set_index("user_id")
    for name in ("novelty", "diversity", "arp", "long_tail"):
        values = written[f"{name}@{K}"].to_numpy()
        np.testing.assert_allclose(values, per_user.loc[written.index, name].to_numpy(), atol=1e-6)
        mean, half, users, excluded = printed[f"{name}@{K}"]
        assert float(mean) == pytest.approx(values.mean(), abs=6e-5)
        assert float(half) == pytest.approx(1.96 * values.std() / np.sqrt(len(values)), abs=6e-5)
        assert (int(users), int(excluded)) == (len(values), 0)
    for name, value in overall.items():  # one number over all lists: no CI, no user count
        mean, half, users, excluded = printed[f"{name}@{K}"]
        assert float(mean) == pytest.approx(value, abs=6e-5) and half is None and users == excluded == "-"
        assert f"{name}@{K}" not in written.columns


def test_cli_evaluate_refuses_in_one_line(runs, capsys):
    for argv, message in (
        (["--metrics", f"diversity@{K}", "--diversity-space", "embeddings"], "EASE has no item embeddings"),
        (["--metrics", "diversity@1"], "diversity@1: intra-list diversity compares pairs of items"),
        (["--metrics", "novelty@999"], "metrics ['novelty@999']: the model ranks 45 items"),
        (["--metrics", "surprise@5"], "unknown metric 'surprise@5'"),
    ):
        with pytest.raises(SystemExit) as info:
            main(["evaluate", str(runs["ease"]), "--device", "cpu", *argv])
        text = str(info.value.code)
        assert text.startswith("recvae: error: ") and message in text and "\n" not in text, text
