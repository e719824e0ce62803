"""Run directories and model files under partial failure and partial corruption.

A replacement of a run that fails at any step -- each file written, the checksums, the
fsync, moving the old run aside, the final rename -- leaves the old run in place, byte for
byte, loadable and serving the same recommendations, and no staging or replaced copy
behind. A model file (or run file) damaged in one place -- one NaN weight, one unexpected
or missing weight name, one transposed weight, one bad member CRC, a few bytes short -- is
refused with a one-line error naming that problem, by the model reader and by Run.load,
also when the manifest was made to match (a writer's bug rather than a disk's).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recvae.runs import directory as run_directory
from recvae.data import SyntheticConfig, synthetic_log
from recvae.data.splits import Split
from recvae.models import load_model
from recvae.models.files import CHECKPOINT_FIX, ModelFileError, check_model_file, read_torch_payload
from recvae.runs import Run, RunError, RunOutput, SplitSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_VAE = {"latent_dim": 4, "hidden_dims": [8], "epochs": 1, "progress": False, "batch_size": 64}


# ----------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def log() -> pd.DataFrame:
    return synthetic_log(SyntheticConfig(n_users=160, n_items=40, seed=7, mean_events_per_user=12))


@pytest.fixture(scope="module")
def saved(log, tmp_path_factory) -> dict[str, Path]:
    """Saved runs: popularity (the old run replaced below), EASE and a tiny Mult-VAE (torch model file)."""
    root = tmp_path_factory.mktemp("runs")
    quiet = {"split": SplitSpec(heldout_users=8), "evaluate": False, "report": lambda _: None}
    Run.fit(log, "popularity", output=root / "pop", **quiet)
    Run.fit(log, "ease", params={"l2": 5.0}, output=root / "ease", **quiet)
    Run.fit(log, "mult-vae", params=TINY_VAE, output=root / "vae", **quiet)
    return {"pop": root / "pop", "ease": root / "ease", "vae": root / "vae"}


@pytest.fixture(scope="module")
def new_run(saved) -> Run:
    """The run that replaces the old one (another model: a mixed-up result would show)."""
    return Run.load(saved["ease"])


def copy_run(source: Path, tmp_path: Path, name: str = "run") -> Path:
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


def contents(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def leftovers(parent: Path, name: str) -> list[str]:
    """Siblings a write may leave: staging folders and moved-aside old runs."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}.") and
                  (".staging" in p.name or ".replaced-" in p.name))


def rewrite_manifest(run_dir: Path, *names: str) -> None:
    """Make the manifest match the files as they are now: damage written by the writer, not the disk."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for name in names:
        manifest["files"][name] = {"sha256": run_directory._sha256(run_dir / name), "bytes": (run_dir / name).stat().st_size}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))


def assert_one_line(err: BaseException, *fragments: str) -> None:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text and "weights_only" not in text, text
    for fragment in fragments:
        assert fragment in text, text


# ----------------------------------------------------------------------------- a replacement failing at each step
DISK_FULL = OSError(28, "No space left on device")


def _fail(*_, **__):
    raise DISK_FULL


def _fail_on_name(real, name):
    def fake(path, *args, **kwargs):
        target = Path(getattr(path, "name", path))
        if target.name == name:
            raise DISK_FULL
        return real(path, *args, **kwargs)
    return fake


def _break_step(step: str, monkeypatch, target: Path, new_run: Run) -> None:
    if step == "model":
        monkeypatch.setattr(type(new_run.model), "save", _fail)
    elif step == "split":
        monkeypatch.setattr(Split, "save", _fail)
    elif step == "users":
        monkeypatch.setattr(run_directory.np, "savez_compressed", _fail_on_name(np.savez_compressed, "users.npz"))
    elif step in ("metrics.json", "config.json", "manifest.json"):
        monkeypatch.setattr(run_directory, "_write_json", _fail_on_name(run_directory._write_json, step))
    elif step == "checksums":
        monkeypatch.setattr(run_directory, "_sha256", _fail)
    elif step == "fsync":
        monkeypatch.setattr(run_directory, "_fsync_tree", _fail)
    else:
        real = os.replace

        def replace(src, dst):
            moving_old_aside = Path(src) == target
            final_rename = Path(dst) == target and str(src).endswith(".staging")
            if (step == "move-aside" and moving_old_aside) or (step == "final-rename" and final_rename):
                raise DISK_FULL
            return real(src, dst)

        monkeypatch.setattr(run_directory.os, "replace", replace)


STEPS = ["model", "split", "users", "metrics.json", "config.json", "checksums", "manifest.json", "fsync",
         "move-aside", "final-rename"]


@pytest.mark.parametrize("step", STEPS)
def test_a_replacement_failing_at_any_step_keeps_the_old_run_whole(saved, new_run, tmp_path, monkeypatch, step):
    target = copy_run(saved["pop"], tmp_path)
    before = contents(target)
    users = list(Run.load(target).user_ids[::3])
    served = Run.load(target).recommend(users, k=5)
    _break_step(step, monkeypatch, target, new_run)
    with pytest.raises(OSError, match="No space left"):
        new_run.save(target, overwrite=True)
    monkeypatch.undo()
    assert contents(target) == before, f"the old run changed after a failure at {step}"
    assert leftovers(tmp_path, "run") == []
    again = Run.load(target)
    assert type(again.model).__name__ == "Popularity"
    pd.testing.assert_frame_equal(again.recommend(users, k=5), served)
    new_run.save(target, overwrite=True)  # the failure leaves nothing in the way of the next try
    assert type(Run.load(target).model).__name__ == "EASE" and leftovers(tmp_path, "run") == []


def test_a_fit_whose_final_rename_fails_keeps_the_old_run(saved, log, tmp_path, monkeypatch):
    target = copy_run(saved["pop"], tmp_path)
    before = contents(target)
    _break_step("final-rename", monkeypatch, target, None)
    with pytest.raises(OSError, match="No space left"):
        Run.fit(log, "ease", output=RunOutput(target, overwrite=True), split=SplitSpec(heldout_users=8), evaluate=False, report=lambda _: None)
    monkeypatch.undo()
    assert contents(target) == before and leftovers(tmp_path, "run") == []
    Run.load(target)


def test_a_successful_replacement_leaves_one_whole_run_readable_by_others(saved, new_run, tmp_path):
    target = copy_run(saved["pop"], tmp_path)
    old_umask = os.umask(0o022)
    try:
        new_run.save(target, overwrite=True)
    finally:
        os.umask(old_umask)
    assert leftovers(tmp_path, "run") == [] and not (tmp_path / ".run.partial").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert (target.stat().st_mode & 0o777) == 0o755  # not the 0700 of a temporary folder
    assert type(Run.load(target).model).__name__ == "EASE"


# ----------------------------------------------------------------------------- torch model files, one flaw each
def _payload(saved) -> dict:
    return torch.load(saved["vae"] / "model", weights_only=True)


def _state_names(saved) -> list[str]:
    return list(_payload(saved)["state_dict"])


def _flawed_payload(saved, flaw: str) -> tuple[dict, tuple[str, ...]]:
    """A payload with one flaw and the fragments its error must name."""
    payload = copy.deepcopy(_payload(saved))
    weights = payload["state_dict"]
    names = list(weights)
    last, middle = names[-1], names[len(names) // 2]
    if flaw == "nan-in-last-weight":
        weights[last] = weights[last].clone()
        weights[last].view(-1)[-1] = float("nan")
        return payload, ("non-finite weights", last)
    if flaw == "inf-in-a-middle-weight":
        weights[middle] = weights[middle].clone()
        weights[middle].view(-1)[1] = float("-inf")
        return payload, ("non-finite weights", middle)
    if flaw == "unexpected-name":
        weights["decoder.9.weight"] = torch.zeros(2, 2)
        return payload, ("do not fit", "unexpected decoder.9.weight")
    if flaw == "missing-name":
        del weights[middle]
        return payload, ("do not fit", f"missing {middle}")
    if flaw == "transposed":
        name = next(n for n in names if weights[n].dim() == 2 and weights[n].shape[0] != weights[n].shape[1])
        shape = tuple(weights[name].shape)
        weights[name] = weights[name].T.contiguous()
        return payload, ("do not fit", f"{name} is {shape[::-1]}, expected {shape}")
    if flaw == "item-ids-one-too-many":
        payload["item_ids"]["values"] = list(payload["item_ids"]["values"]) + [10_000]
        return payload, ("item id map does not cover",)
    if flaw == "item-ids-one-short":
        payload["item_ids"]["values"] = list(payload["item_ids"]["values"])[:-1]
        return payload, ("item id map does not cover",)
    raise AssertionError(flaw)


FLAWS = ["nan-in-last-weight", "inf-in-a-middle-weight", "unexpected-name", "missing-name", "transposed",
         "item-ids-one-too-many", "item-ids-one-short"]


@pytest.mark.parametrize("flaw", FLAWS)
def test_a_torch_model_file_with_one_flaw_is_refused(saved, tmp_path, flaw):
    payload, fragments = _flawed_payload(saved, flaw)
    path = tmp_path / "model"
    torch.save(payload, path)
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert_one_line(info.value, str(path), *fragments)
    if flaw == "missing-name":
        assert "unexpected" not in str(info.value)
    if flaw == "unexpected-name":
        assert "missing" not in str(info.value)


@pytest.mark.parametrize("flaw", ["nan-in-last-weight", "unexpected-name", "missing-name"])
def test_run_load_refuses_a_flawed_model_even_with_a_matching_manifest(saved, tmp_path, flaw):
    payload, fragments = _flawed_payload(saved, flaw)
    run = copy_run(saved["vae"], tmp_path)
    torch.save(payload, run / "model")
    with pytest.raises(RunError) as info:  # the manifest still holds the good file's checksum
        Run.load(run)
    assert_one_line(info.value, "model: ")
    assert any(w in str(info.value) for w in ("checksum mismatch", "truncated", "longer than written"))
    for verify in (True, False):
        rewrite_manifest(run, "model")
        with pytest.raises(RunError) as info:
            Run.load(run, verify=verify)
        assert_one_line(info.value, "cannot load the model", *fragments)


def _member_data_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """(data offset, size) of each stored member of a zip file, from its local headers."""
    raw = path.read_bytes()
    offsets = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            header = info.header_offset
            name_len = int.from_bytes(raw[header + 26:header + 28], "little")
            extra_len = int.from_bytes(raw[header + 28:header + 30], "little")
            offsets[info.filename] = (header + 30 + name_len + extra_len, info.compress_size)
    return offsets


@pytest.mark.parametrize("kind", ["vae", "ease"])
def test_every_member_of_a_model_file_is_crc_checked(saved, tmp_path, kind):
    """One flipped byte in any member -- the last tensor as much as the first -- is named by its member."""
    source = saved[kind] / "model"
    members = {n: span for n, span in _member_data_offsets(source).items() if span[1] > 0}
    assert len(members) >= 3
    for name, (offset, size) in members.items():
        path = tmp_path / "model"
        data = bytearray(source.read_bytes())
        data[offset + size // 2] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(ModelFileError) as info:
            check_model_file(path)
        assert_one_line(info.value, str(path), f"CRC mismatch in member {name!r}")


def test_a_flipped_byte_past_the_first_mib_of_a_large_member_is_found(tmp_path):
    """The CRC of a member is compared once its last byte is read: damage near the end of a 3 MiB array is
    named as zipfile's own test finds it, not missed because only the member's first chunk was read."""
    path = tmp_path / "model"
    with open(path, "wb") as fh:
        np.savez(fh, weights=np.arange(3 * 2**18, dtype=np.float32), meta=np.asarray("{}"))
    offset, size = _member_data_offsets(path)["weights.npy"]
    assert size > 2**21
    data = bytearray(path.read_bytes())
    data[offset + size - 100] ^= 0x01
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() == "weights.npy"  # the oracle: zipfile's own full read
    with pytest.raises(ModelFileError) as info:
        check_model_file(path)
    assert_one_line(info.value, str(path), "CRC mismatch in member 'weights.npy'")


def test_a_zip_of_an_array_beside_other_files_is_not_a_model_file(tmp_path):
    """An npz model file holds .npy members only: one other member makes it a zip of other files."""
    path = tmp_path / "model"
    with zipfile.ZipFile(path, "w") as zf:
        with zf.open("weights.npy", "w") as member:
            np.save(member, np.zeros((3, 3), np.float32))
        zf.writestr("notes.txt", "not an array")
    for read in (check_model_file, load_model):
        with pytest.raises(ModelFileError) as info:
            read(path)
        assert_one_line(info.value, str(path), "a zip archive of other files", "notes.txt")


def test_damage_to_a_checkpoint_is_told_to_delete_it(saved, tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes((saved["vae"] / "model").read_bytes()[:-300])
    with pytest.raises(ModelFileError) as info:
        read_torch_payload(path, fix=CHECKPOINT_FIX, what="training checkpoint")
    assert_one_line(info.value, "truncated", CHECKPOINT_FIX)
    assert "re-save" not in str(info.value)


# ----------------------------------------------------------------------------- npz model files, one flaw each
def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("flaw", ["nan", "unexpected", "missing", "wrong-shape", "truncated"])
def test_an_npz_model_file_with_one_flaw_is_refused(saved, tmp_path, flaw):
    arrays = _npz_arrays(saved["ease"] / "model")
    n = arrays["weights"].shape[0]
    path = tmp_path / "model"
    if flaw == "nan":
        arrays["weights"] = arrays["weights"].copy()
        arrays["weights"][n - 1, n - 2] = np.nan
        fragments = ("weights array holds non-finite",)
    elif flaw == "unexpected":
        arrays["bias"] = np.zeros(n, np.float32)
        fragments = ("unexpected bias",)
    elif flaw == "missing":
        del arrays["weights"]
        fragments = ("missing array 'weights'",)
    elif flaw == "wrong-shape":
        arrays["weights"] = arrays["weights"][:, :-1]
        fragments = (f"weights array is of shape ({n}, {n - 1}), expected ({n}, {n})",)
    if flaw == "truncated":
        path.write_bytes((saved["ease"] / "model").read_bytes()[:-40])
        fragments = ("truncated",)
    else:
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert_one_line(info.value, str(path), *fragments)
    run = copy_run(saved["ease"], tmp_path)
    shutil.copy(path, run / "model")
    rewrite_manifest(run, "model")
    with pytest.raises(RunError) as info:
        Run.load(run)
    assert_one_line(info.value, "cannot load the model", *fragments)


# ----------------------------------------------------------------------------- the run's other files
def _rewrite_users(run: Path, change) -> None:
    arrays = _npz_arrays(run / "users.npz")
    change(arrays)
    with open(run / "users.npz", "wb") as fh:
        np.savez_compressed(fh, **arrays)
    rewrite_manifest(run, "users.npz")


@pytest.mark.parametrize("flaw", ["one-user-id-short", "seen-one-item-wider", "history-one-item-wider"])
def test_a_users_file_that_disagrees_with_the_model_is_refused(saved, tmp_path, flaw):
    run = copy_run(saved["pop"], tmp_path)

    def change(arrays):
        if flaw == "one-user-id-short":
            arrays["user_ids"] = arrays["user_ids"][:-1]
        else:
            name = flaw.split("-")[0]
            arrays[f"{name}_shape"] = arrays[f"{name}_shape"] + np.array([0, 1])

    _rewrite_users(run, change)
    with pytest.raises(RunError) as info:
        Run.load(run)
    assert_one_line(info.value, "disagree on the number of users or items")


def test_a_users_file_missing_an_array_is_refused(saved, tmp_path):
    run = copy_run(saved["pop"], tmp_path)
    _rewrite_users(run, lambda arrays: arrays.pop("seen_indptr"))
    with pytest.raises(RunError) as info:
        Run.load(run)
    assert_one_line(info.value, "cannot read the split or users file", "seen_indptr")


@pytest.mark.parametrize("member", ["model", "users.npz", "split/matrices.npz", "config.json"])
def test_a_run_file_longer_or_shorter_than_written_is_named(saved, tmp_path, member):
    run = copy_run(saved["pop"], tmp_path)
    data = (run / member).read_bytes()
    (run / member).write_bytes(data + b"\0")
    with pytest.raises(RunError) as info:
        Run.load(run)
    assert_one_line(info.value, f"{member}: longer than written ({len(data) + 1:,} of {len(data):,} bytes)")
    (run / member).write_bytes(data[:-1])
    with pytest.raises(RunError) as info:
        Run.load(run)
    assert_one_line(info.value, f"{member}: truncated ({len(data) - 1:,} of {len(data):,} bytes)")


def test_an_unlisted_file_is_ignored_with_a_warning_and_a_listed_one_missing_is_refused(saved, tmp_path, caplog):
    run = copy_run(saved["pop"], tmp_path)
    (run / "notes.txt").write_text("mine")
    with caplog.at_level(logging.WARNING):
        Run.load(run)
    assert "files not written by the run are ignored: notes.txt" in caplog.text
    (run / "metrics.json").unlink()
    with pytest.raises(RunError) as info:
        Run.load(run)
    assert_one_line(info.value, "metrics.json is missing (1 file(s) of the run)")
