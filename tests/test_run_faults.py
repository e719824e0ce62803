"""Run directories under faults: kills, concurrent writers, failed writes, damaged files, bad arguments.

Every case ends with the old run, the new run or a clear one-line message -- never a
half-written directory, a silently wrong result or a traceback.
"""

import contextlib
import fcntl
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from recvae.cli import main
from recvae.data import SyntheticConfig, synthetic_log
from recvae.runs import Run, RunError, RunOutput

TINY = {"latent_dim": 8, "hidden_dims": [16], "progress": False}


@pytest.fixture(scope="module")
def log_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "log.csv"
    synthetic_log(SyntheticConfig(n_users=200, n_items=60, seed=5)).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def ease_run(log_csv, tmp_path_factory):
    return Run.fit(log_csv, "ease", params={"l2": 20.0}, output=tmp_path_factory.mktemp("r") / "ease")


def _copy_run(run_dir, tmp_path, name="copy"):
    import shutil

    target = tmp_path / name
    shutil.copytree(run_dir, target)
    return target


# ----------------------------------------------------------------------------- damaged files
@pytest.mark.parametrize("member", ["model", "users.npz", "config.json", "split/matrices.npz", "metrics.json"])
def test_a_corrupted_file_is_named_on_load(ease_run, tmp_path, member):
    run = _copy_run(ease_run.path, tmp_path)
    path = run / member
    data = bytearray(path.read_bytes())
    offset = np.random.default_rng(len(member)).integers(0, len(data))
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RunError, match=f"{member}: checksum mismatch"):
        Run.load(run)


def test_truncated_missing_and_swapped_files(ease_run, log_csv, tmp_path):
    run = _copy_run(ease_run.path, tmp_path, "truncated")
    (run / "model").write_bytes((run / "model").read_bytes()[:100])
    with pytest.raises(RunError, match="model: truncated"):
        Run.load(run)
    run = _copy_run(ease_run.path, tmp_path, "missing")
    (run / "users.npz").unlink()
    with pytest.raises(RunError, match="users.npz is missing"):
        Run.load(run)
    other = Run.fit(log_csv, "popularity", output=tmp_path / "pop")
    run = _copy_run(ease_run.path, tmp_path, "swapped")
    (run / "model").write_bytes((other.path / "model").read_bytes())
    with pytest.raises(RunError, match="model: (checksum mismatch|truncated|longer)"):
        Run.load(run)


def test_a_run_whose_files_disagree_is_refused(ease_run, tmp_path):
    """Even with a manifest made to match, a config that names another model is refused."""
    from recvae.runs import directory as run_directory

    run = _copy_run(ease_run.path, tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["model_class"] = "MultVAE"
    (run / "config.json").write_text(json.dumps(config))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["files"]["config.json"] = {"sha256": run_directory._sha256(run / "config.json"),
                                        "bytes": (run / "config.json").stat().st_size}
    (run / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunError, match="config.json describes a MultVAE but the model file holds a EASE"):
        Run.load(run)


def test_not_a_run_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="not a recvae run directory"):
        Run.load(tmp_path / "empty")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "manifest.json").write_text("{not json")
    with pytest.raises(RunError, match="not valid JSON"):
        Run.load(tmp_path / "garbage")


# ----------------------------------------------------------------------------- atomic, exclusive writes
def test_a_failed_write_leaves_nothing_and_keeps_the_old_run(ease_run, log_csv, tmp_path, monkeypatch):
    from recvae.data.splits import Split

    def broken_save(self, directory):
        (directory / "half").mkdir(parents=True)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Split, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        Run.fit(log_csv, "popularity", output=tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if ".staging" in p.name]
    old = _copy_run(ease_run.path, tmp_path, "old")
    before = {p.name: p.read_bytes() for p in old.iterdir() if p.is_file()}
    with pytest.raises(OSError):
        Run.fit(log_csv, "popularity", output=RunOutput(old, overwrite=True))
    assert {p.name: p.read_bytes() for p in old.iterdir() if p.is_file()} == before
    monkeypatch.undo()
    Run.load(old)  # still whole


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(log_csv, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    with pytest.raises(RunError, match="not a recvae run"):
        Run.fit(log_csv, "popularity", output=RunOutput(folder, overwrite=True))
    assert (folder / "notes.txt").read_text() == "precious"


def test_overwrite_replaces_the_run_whole(ease_run, log_csv, tmp_path):
    old = _copy_run(ease_run.path, tmp_path, "old")
    Run.fit(log_csv, "popularity", output=RunOutput(old, overwrite=True))
    again = Run.load(old)
    assert type(again.model).__name__ == "Popularity"
    assert json.loads((old / "config.json").read_text())["model"] == "popularity"


def _count_reads(monkeypatch) -> list:
    """Record every read of a log by Run.fit (the first work it does once the target is checked)."""
    from recvae.runs import fitting

    calls = []
    real = fitting.read_and_split
    monkeypatch.setattr(fitting, "read_and_split", lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def test_a_second_writer_fails_at_once(log_csv, tmp_path, monkeypatch):
    """While one process holds the run's lock, another writer is refused before any work."""
    target = tmp_path / "busy"
    work = tmp_path / ".busy.partial"
    work.mkdir()
    reads = _count_reads(monkeypatch)
    with open(work / "lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunError, match="another recvae process is writing"):
            Run.fit(log_csv, "popularity", output=target)
        assert reads == []  # refused before the log was read, not after a fit
    Run.fit(log_csv, "popularity", output=target)  # the lock released: a stale work dir is cleared
    assert len(reads) == 1
    assert Run.load(target).model is not None


def test_a_killed_training_resumes_to_the_uninterrupted_result(log_csv, tmp_path):
    """SIGKILL mid-training leaves no run, only a checkpoint; --resume finishes it like an uninterrupted run."""
    args = ["train", str(log_csv), "--model", "mult-dae", "--epochs", "40", "--no-progress", "--seed", "3",
            "--param", "latent_dim=8", "--param", "hidden_dims=[16]", "--param", "batch_size=20"]
    target = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "recvae", *args, "-o", str(target)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    checkpoint = tmp_path / ".killed.partial" / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if process.poll() is not None:
        pytest.skip("training finished before it could be killed")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not target.exists() and checkpoint.exists()
    message = _error(args + ["-o", target])
    assert "--resume" in message
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(args + ["-o", str(target), "--resume"]) == 0
        assert main(args + ["-o", str(tmp_path / "whole")]) == 0
    resumed, whole = Run.load(target), Run.load(tmp_path / "whole")
    users = list(whole.user_ids[:20])
    np.testing.assert_allclose(resumed.recommend(users, k=5)["score"], whole.recommend(users, k=5)["score"],
                               rtol=1e-4, atol=1e-6)
    assert not (tmp_path / ".killed.partial").exists()


def test_a_diverging_run_is_written_as_failed_and_exits_non_zero(log_csv, tmp_path):
    target = tmp_path / "diverged"
    with pytest.warns(UserWarning, match="lr=1e\\+06"):
        message = _error(["train", log_csv, "-o", target, "--model", "mult-dae", "--epochs", "3", "--no-progress",
                          "--param", "lr=1e6", "--param", "latent_dim=8", "--param", "hidden_dims=[16]"])
    assert "diverged" in message and "lower lr" in message and "status 'failed'" in message
    metrics = json.loads((target / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "diverged" in metrics["error"]
    assert Run.load(target, allow_failed=True).info()["status"] == "failed"
    with pytest.raises(RunError, match="training failed .*diverged.*--allow-failed"):
        Run.load(target)  # a failed run is not used by accident (tests/test_run_trust.py: every command)


# ----------------------------------------------------------------------------- fail before the work
def test_bad_output_paths_fail_before_any_work(log_csv, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    reads = _count_reads(monkeypatch)
    for argv in (["train", log_csv, "-o", blocker / "run"],
                 ["train", log_csv, "-o", blocker]):
        assert "file" in _error(argv)
    assert reads == []  # the log was never read


# ----------------------------------------------------------------------------- one line, never a traceback
def _error(argv) -> str:
    with pytest.raises(SystemExit) as info, contextlib.redirect_stdout(io.StringIO()):
        main([str(a) for a in argv])
    message = info.value.code
    assert isinstance(message, str) and message.startswith("recvae: error:"), message
    assert "\n" not in message and "Traceback" not in message
    return message


def test_every_subcommand_answers_bad_input_with_one_line(ease_run, log_csv, tmp_path):
    run = ease_run.path
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(os.urandom(4096))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    archive = tmp_path / "log.zip"
    import zipfile

    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.txt", "hello")
        z.writestr("b.txt", "world")
    import gzip

    truncated = tmp_path / "log.csv.gz"
    truncated.write_bytes(gzip.compress(log_csv.read_bytes())[:300])
    broken_run = _copy_run(run, tmp_path, "broken")
    (broken_run / "model").write_bytes(b"nonsense")
    cases = [
        ["train", garbage, "-o", tmp_path / "a"],
        ["train", empty, "-o", tmp_path / "b"],
        ["train", archive, "-o", tmp_path / "c"],
        ["train", truncated, "-o", tmp_path / "d"],
        ["train", tmp_path, "-o", tmp_path / "e"],
        ["train", log_csv, "-o", tmp_path / "f", "--user-col", "nope"],
        ["train", log_csv, "-o", tmp_path / "g", "--model", "ease", "--param", "l2=-1"],
        ["train", log_csv, "-o", tmp_path / "h", "--split", "temporal", "--timestamp-col", "none"],
        ["train", log_csv, "-o", tmp_path / "i", "--min-user-events", "100000"],
        ["train", log_csv, "-o", tmp_path / "j", "--epochs-from", tmp_path],
        ["evaluate", broken_run],
        ["evaluate", tmp_path / "nothing"],
        ["evaluate", run, "--metrics", "bogus"],
        ["recommend", broken_run, "--user", "1"],
        ["recommend", run, "--user", "no-such-user"],
        ["recommend", run, "--items", "no-such-item"],
        ["recommend", run, "--user", "1", "--exclude-file", garbage],
        ["recommend", run, "--users-file", tmp_path / "missing.csv"],
        ["embed", run, "-o", tmp_path / "x.bin"],
        ["embed", ease_run.path, "-o", tmp_path / "x.csv"],
        ["similar", run, "--item", "no-such-item"],
        ["info", tmp_path],
        ["experiment", tmp_path / "missing.toml"],
    ]
    for argv in cases:
        _error(argv)
    with pytest.raises(SystemExit) as info, contextlib.redirect_stderr(io.StringIO()) as err:
        main(["recommend", str(run), "-k", "x", "--user", "1"])  # argparse: usage + one line, exit 2
    assert info.value.code == 2 and "Traceback" not in err.getvalue()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(RunError):
        main(["info", str(tmp_path), "--debug"])
