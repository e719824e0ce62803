"""Writing a run touches nothing outside it; full disks and failed renames end cleanly (issue 35).

Links planted beside a run (its ``.NAME.partial`` work folder, the lock or the checkpoint in
it) are refused with one line and their targets stay byte for byte; the leftovers of killed
writes are cleared by the next write of the run (a moved-aside run moved back); a full disk
at any writer is one line and leaves no temporary file; every file gets ``0o666 & ~umask``;
an output that cannot be created is refused before the log is read.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recvae.cli import main
from recvae.data import SyntheticConfig, synthetic_log
from recvae.data.tables import TableWriter, check_output_path, write_embeddings, write_table
from recvae.data.writing import DiskFullError
from recvae.runs import Run, RunError, RunOutput, SplitSpec
from recvae.runs import directory as run_directory
from recvae.training.checkpoints import _write_atomically

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TORCH = ["--model", "mult-vae", "--epochs", "2", "--no-progress", "--param", "latent_dim=4",
         "--param", "hidden_dims=[8]", "--param", "batch_size=64"]
QUIET = {"split": SplitSpec(heldout_users=8), "evaluate": False, "report": lambda _: None}


@pytest.fixture(scope="module")
def log_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("security") / "u.csv"
    synthetic_log(SyntheticConfig(n_users=120, n_items=40, seed=3, mean_events_per_user=10)).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def old_run(log_csv, tmp_path_factory) -> Path:
    return Run.fit(log_csv, "popularity", output=tmp_path_factory.mktemp("old") / "run", **QUIET).path


def _error(argv) -> str:
    with pytest.raises(SystemExit) as info, contextlib.redirect_stdout(io.StringIO()):
        main([str(a) for a in argv])
    message = info.value.code
    assert isinstance(message, str) and message.startswith("recvae: error:"), message
    assert "\n" not in message and "Traceback" not in message
    return message


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _victim(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """Someone's folder with a file in it, which a planted link points at."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "lock").write_bytes(b"precious lock-named file\n")
    (victim / "notes.txt").write_bytes(b"precious\x00bytes")
    return victim, _snapshot(victim)


def _count_reads(monkeypatch) -> list:
    from recvae.runs import fitting

    calls = []
    real = fitting.read_and_split
    monkeypatch.setattr(fitting, "read_and_split", lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def _temporaries(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.name.endswith((".tmp", ".staging", ".probe")) or ".replaced-" in p.name)


# ----------------------------------------------------------------------------- planted links
@pytest.mark.parametrize("resume", [False, True])
def test_a_planted_work_folder_link_is_refused_and_its_target_untouched(log_csv, tmp_path, monkeypatch, resume):
    victim, before = _victim(tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / ".plant.partial").symlink_to(victim)
    reads = _count_reads(monkeypatch)
    message = _error(["train", log_csv, "-o", runs / "plant", *TORCH, *(["--resume"] if resume else [])])
    assert ".plant.partial" in message and "symbolic link" in message and "remove it" in message
    assert _snapshot(victim) == before and sorted(p.name for p in victim.iterdir()) == ["lock", "notes.txt"]
    assert reads == [] and not (runs / "plant").exists()


def test_a_planted_lock_link_with_resume_is_refused_and_its_target_untouched(log_csv, tmp_path):
    victim, before = _victim(tmp_path)
    work = tmp_path / ".plant.partial"
    work.mkdir()
    (work / "lock").symlink_to(victim / "lock")
    message = _error(["train", log_csv, "-o", tmp_path / "plant", *TORCH, "--resume"])
    assert "plant.partial/lock" in message and "symbolic link" in message
    assert _snapshot(victim) == before and sorted(p.name for p in victim.iterdir()) == ["lock", "notes.txt"]
    assert not (work / "checkpoint.pt").exists()


@pytest.mark.parametrize("plant", ["checkpoint-link", "lock-hard-link", "foreign-folder"])
def test_other_plants_in_the_work_folder_are_refused(log_csv, tmp_path, plant):
    victim, before = _victim(tmp_path)
    work = tmp_path / ".plant.partial"
    work.mkdir()
    if plant == "checkpoint-link":
        (work / "checkpoint.pt").symlink_to(victim / "notes.txt")
        expected = "checkpoint.pt: is a symbolic link"
    elif plant == "lock-hard-link":
        os.link(victim / "lock", work / "lock")
        expected = "hard link"
    else:
        os.chown(work, 54321, 54321)
        expected = "belongs to another user (uid 54321)"
    message = _error(["train", log_csv, "-o", tmp_path / "plant", *TORCH, "--resume"])
    assert expected in message, message
    assert _snapshot(victim) == before


def test_a_link_at_the_run_path_is_refused(log_csv, tmp_path):
    victim, before = _victim(tmp_path)
    (tmp_path / "run").symlink_to(victim)
    assert "is a symbolic link" in _error(["train", log_csv, "-o", tmp_path / "run", "--model", "popularity",
                                           "--overwrite"])
    assert _snapshot(victim) == before


def test_resume_of_our_own_killed_run_still_works(log_csv, tmp_path):
    """A killed run's work folder that is ours (checkpoint, lock, a stale temp file) is taken back."""
    args = ["train", log_csv, *TORCH, "--seed", "1"]
    work = tmp_path / ".again.partial"
    work.mkdir(mode=0o700)
    payload = {"a": torch.zeros(3)}
    _write_atomically(work / "checkpoint.pt", payload)  # stands for a killed run's (refused: another run's)
    (work / "lock").write_text("12345\n")
    (work / ".checkpoint.pt.0123456789ab.tmp").write_bytes(b"half")
    message = _error([*args, "-o", tmp_path / "again", "--resume"])
    assert "checkpoint" in message and "symbolic" not in message  # read as a checkpoint, not refused as a plant
    assert not (work / ".checkpoint.pt.0123456789ab.tmp").exists()  # the killed run's temp file is cleared


# ----------------------------------------------------------------------------- leftovers of killed writes
def test_leftovers_of_killed_writes_are_cleared_by_the_next_write(old_run, log_csv, tmp_path, caplog):
    target = tmp_path / "run"
    shutil.copytree(old_run, target)
    staging = tmp_path / ".run.abcdefgh.staging"
    staging.mkdir()
    (staging / "model").write_bytes(b"half a model")
    (tmp_path / ".run.0123456789abcdef.staging").mkdir()
    shutil.copytree(old_run, tmp_path / ".run.replaced-4242")  # killed after the final rename
    victim, before = _victim(tmp_path)
    (tmp_path / ".run.replaced-99").symlink_to(victim)  # looks like a leftover, is not ours to touch
    other = tmp_path / ".run.x.abcdefgh.staging"  # a staging folder of the run "run.x"
    other.mkdir()
    Run.fit(log_csv, "ease", output=RunOutput(target, overwrite=True), **QUIET)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".run.replaced-99", ".run.x.abcdefgh.staging", "run", "victim"], names
    assert _snapshot(victim) == before and "not a folder of yours" in caplog.text
    assert type(Run.load(target).model).__name__ == "EASE"


def test_a_run_moved_aside_by_a_killed_overwrite_is_moved_back(old_run, log_csv, tmp_path, monkeypatch):
    """Killed between moving the old run aside and renaming the new one: the next write puts it back
    and, without --overwrite, refuses before reading the log."""
    aside = tmp_path / ".run.replaced-1a2b3c"
    shutil.copytree(old_run, aside)
    before = _snapshot(aside)
    reads = _count_reads(monkeypatch)
    with pytest.raises(RunError, match="already holds a run"):
        Run.fit(log_csv, "ease", output=tmp_path / "run", **QUIET)
    assert reads == [] and _snapshot(tmp_path / "run") == before and not aside.exists()
    Run.load(tmp_path / "run")


# ----------------------------------------------------------------------------- replacement failing at each step
def test_a_failed_final_rename_and_move_back_name_the_old_run_and_the_next_write_restores_it(
        old_run, log_csv, tmp_path, monkeypatch):
    target = tmp_path / "run"
    shutil.copytree(old_run, target)
    before = _snapshot(target)
    real = os.replace

    def replace(src, dst):
        if Path(dst) == target:  # the final rename and the move back both fail
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(run_directory.os, "replace", replace)
    with pytest.raises(RunError) as info:
        Run.fit(log_csv, "ease", output=RunOutput(target, overwrite=True), **QUIET)
    monkeypatch.undo()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".run.replaced-")]
    assert len(aside) == 1 and f"it is whole in {aside[0]}" in str(info.value) and "\n" not in str(info.value)
    assert _snapshot(aside[0]) == before and not target.exists()
    with pytest.raises(RunError, match="already holds a run"):  # the next write moves it back first
        Run.fit(log_csv, "ease", output=target, **QUIET)
    assert _snapshot(target) == before and _temporaries(tmp_path) == []
    Run.load(target)


@pytest.mark.parametrize("step", ["reserve", "move-aside", "final-rename", "remove-old"])
def test_save_failing_at_each_rename_step_keeps_the_old_run(old_run, log_csv, tmp_path, monkeypatch, step):
    new = Run.fit(log_csv, "ease", **QUIET)
    target = tmp_path / "run"
    shutil.copytree(old_run, target)
    before = _snapshot(target)
    real_replace, real_mkdir = os.replace, os.mkdir

    def replace(src, dst):
        final = Path(dst) == target and str(src).endswith(".staging")
        if (step == "move-aside" and Path(src) == target) or (step == "final-rename" and final):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    def mkdir(path, *args, **kwargs):
        if step == "reserve" and ".replaced-" in os.fspath(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "mkdir", mkdir)
    if step == "remove-old":
        monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)  # killed while removing the old run
        new.save(target, overwrite=True)
        monkeypatch.undo()
        assert type(Run.load(target).model).__name__ == "EASE"
        new.save(target, overwrite=True)  # the next write clears the old run left beside it
        assert _temporaries(tmp_path) == []
        return
    with pytest.raises(OSError) as info:
        new.save(target, overwrite=True)
    monkeypatch.undo()
    assert "\n" not in str(info.value) and str(target) in str(info.value), str(info.value)
    assert _snapshot(target) == before and _temporaries(tmp_path) == []
    assert type(Run.load(target).model).__name__ == "Popularity"


# ----------------------------------------------------------------------------- a full disk at each writer
def _disk_full_under(root: Path, monkeypatch, after: int = 0) -> None:
    """Every os.write to a file under ``root`` fails with ENOSPC once ``after`` bytes went there."""
    real = os.write
    written = {"bytes": 0}

    def write(fd, data):
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            where = ""
        if where.startswith(str(root)):
            if written["bytes"] + len(data) > after:
                raise OSError(errno.ENOSPC, "No space left on device")
            written["bytes"] += len(data)
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def _assert_full(err: BaseException, path: Path) -> None:
    text = str(err)
    assert isinstance(err, DiskFullError) and "\n" not in text, text
    assert text.startswith(f"{path}: No space left on device") and "write elsewhere" in text, text


FRAME = pd.DataFrame({"user_id": [f"u{i}" for i in range(300)], "mu_0": np.arange(300.0), "sigma_0": 1.0})


@pytest.mark.parametrize("writer", ["csv", "parquet", "json", "jsonl", "streamed", "npy", "checkpoint"])
def test_a_full_disk_at_each_file_writer_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, writer):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.csv").write_text("old\n")
    _disk_full_under(out, monkeypatch, after=64)
    with pytest.raises(OSError) as info:
        if writer == "streamed":
            with TableWriter(out / "keep.csv") as table:
                table.write(FRAME)
                table.write(FRAME)
        elif writer == "npy":
            write_embeddings(FRAME, out / "e.npy")
        elif writer == "checkpoint":
            _write_atomically(out / "checkpoint.pt", {"weights": torch.zeros(4000)})  # torch words it "unexpected pos"
        else:
            write_table(FRAME, out / f"keep.{writer}" if writer == "csv" else out / f"t.{writer}")
    monkeypatch.undo()
    target = {"streamed": "keep.csv", "npy": "e.npy", "checkpoint": "checkpoint.pt", "csv": "keep.csv"}.get(
        writer, f"t.{writer}")
    _assert_full(info.value, out / target)
    assert sorted(p.name for p in out.iterdir()) == ["keep.csv"] and (out / "keep.csv").read_text() == "old\n"


def test_a_full_disk_in_training_is_one_line_and_leaves_no_temporary(log_csv, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    _disk_full_under(runs, monkeypatch, after=64)  # the lock's pid fits, the first checkpoint does not
    message = _error(["train", log_csv, "-o", runs / "full", *TORCH])
    monkeypatch.undo()
    assert "checkpoint.pt: No space left on device" in message and "choose another output" in message, message
    assert list(runs.iterdir()) == []  # no run, no staging, no temporary, no empty work folder


@pytest.mark.parametrize("how", ["oserror", "torch-runtime-error"])
def test_a_full_disk_while_writing_the_run_is_one_line(old_run, log_csv, tmp_path, monkeypatch, how):
    from recvae.data import writing

    new = Run.fit(log_csv, "ease", **QUIET)
    target = tmp_path / "run"
    shutil.copytree(old_run, target)
    before = _snapshot(target)

    def full(*_, **__):
        if how == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(run_directory.np, "savez_compressed", full)
    monkeypatch.setattr(writing, "free_bytes", lambda _: 1024)  # what the disk says once torch gave up
    with pytest.raises(OSError) as info:
        new.save(target, overwrite=True)
    monkeypatch.undo()
    _assert_full(info.value, target)
    assert "1,024 bytes are free" in str(info.value)
    assert _snapshot(target) == before and _temporaries(tmp_path) == []


def test_a_full_disk_in_the_onnx_export_is_one_line(old_run, log_csv, tmp_path, monkeypatch):
    pytest.importorskip("onnxscript")
    from recvae.serving.onnx_export import export_onnx

    model = Run.fit(log_csv, "ease", **QUIET).model
    exported = export_onnx(model, tmp_path / "m.onnx")
    before = exported.read_bytes()

    def save(self, destination, **_):
        Path(destination).write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx.ONNXProgram, "save", save)
    with pytest.raises(OSError) as info:
        export_onnx(model, tmp_path / "m.onnx")
    _assert_full(info.value, tmp_path / "m.onnx")
    assert "at least 100 bytes" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"] and exported.read_bytes() == before


# ----------------------------------------------------------------------------- file modes follow the umask
@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_every_file_written_gets_the_umask_mode(log_csv, tmp_path, mask):
    files, folders = 0o666 & ~mask, 0o777 & ~mask
    existing = tmp_path / "old.csv"
    existing.write_text("x\n")
    existing.chmod(0o644)
    with _umask(mask):
        run = Run.fit(log_csv, "mult-vae", params={"latent_dim": 4, "hidden_dims": [8], "epochs": 1,
                                                   "progress": False}, output=tmp_path / "run", **QUIET)
        write_table(FRAME, existing)
        write_table(FRAME, tmp_path / "t.parquet")
        written = write_embeddings(FRAME, tmp_path / "e.npy")
        _write_atomically(tmp_path / "c.pt", {"a": torch.zeros(2)})
    for path in [*run.path.rglob("*"), existing, tmp_path / "t.parquet", *written, tmp_path / "c.pt"]:
        want = folders if path.is_dir() else files
        assert path.stat().st_mode & 0o777 == want, f"{path}: {oct(path.stat().st_mode & 0o777)}"
    assert run.path.stat().st_mode & 0o777 == folders


# ----------------------------------------------------------------------------- an output that cannot be created
def test_an_output_that_cannot_be_created_is_refused_before_the_log_is_read(log_csv, tmp_path, monkeypatch):
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc")
    reads = _count_reads(monkeypatch)
    message = _error(["train", log_csv, "-o", "/proc/recvae-x", "--model", "popularity"])
    assert "/proc/recvae-x" in message and "choose another output" in message
    assert reads == []
    with pytest.raises(ValueError, match="refuses new files"):
        check_output_path("/proc/recvae-x/table.csv")
    assert check_output_path(tmp_path / "new" / "t.csv") and list(tmp_path.iterdir()) == []  # the probe is gone
