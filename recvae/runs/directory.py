"""The run directory on disk: its files, manifest and checksums, the atomic write, the lock, and the checked load.

A run directory holds ``model`` (a file, or a directory for a blend), ``split/``,
``users.npz`` (raw ids of the known users, their positive histories and every
item they interacted with), ``history.csv`` (torch models), ``metrics.json``,
``config.json`` and ``manifest.json`` (the sha256 and size of every file). It is
written into a temporary sibling and renamed into place, so a directory at the
run's path is always a whole run; a killed run's checkpoint waits in the
``.<name>.partial`` sibling, under a lock, until ``resume``. Those siblings are never
followed through a link, and a killed write's leftovers are cleared by the next
write of the run (:mod:`recvae.runs.workdir`). Every file and folder of a run gets
the mode ``open()`` and ``mkdir`` give (``0o666``/``0o777`` less the umask), also
when it replaces a run of another mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recvae import __version__
from recvae.data.csr_arrays import csr_from_arrays, csr_to_arrays
from recvae.data.splits import Split
from recvae.data.tables import check_output_path
from recvae.data.writing import write_failure
from recvae.models.registry import load_model
from recvae.runs import trust
from recvae.runs.errors import RunError, one_line
from recvae.runs.workdir import (  # noqa: F401 (work_dir, exclusive_lock: the writers' API, used by fitting and run)
    CHECKPOINT_FILE,
    LOCK_FILE,
    check_work_dir,
    exclusive_lock,
    new_staging,
    reserve_aside,
    work_dir,
)

logger = logging.getLogger(__name__)

__all__ = ["RunOutput", "RUN_FORMAT"]

RUN_FORMAT = "recvae.run/1"
MODEL_FILE = "model"
SPLIT_DIR = "split"
SPLIT_META_FILE = "split.json"
SPLIT_ARRAYS_FILE = "matrices.npz"
USERS_FILE = "users.npz"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
MANIFEST_FILE = "manifest.json"
#: every file the loader opens (with the model): each must be listed in the manifest.
_READ_FILES = (CONFIG_FILE, METRICS_FILE, USERS_FILE, f"{SPLIT_DIR}/{SPLIT_META_FILE}", f"{SPLIT_DIR}/{SPLIT_ARRAYS_FILE}")


@dataclass(frozen=True)
class RunOutput:
    """Where a fitted run is written, and how.

    Args:
        path: the run directory (checked before any work).
        overwrite: replace an existing run there (only at the final rename; a folder
            of other files is never replaced).
        resume: continue a killed run's checkpoint (torch models).
        checkpoint: checkpoint torch models after each epoch.
        command_line: the command that made the run, recorded in ``config.json``.
    """

    path: str | os.PathLike
    overwrite: bool = False
    resume: bool = False
    checkpoint: bool = True
    command_line: list[str] | None = None

    @classmethod
    def of(cls, output: str | os.PathLike | RunOutput | None) -> RunOutput | None:
        """``output`` itself when it is a RunOutput (or None), else a RunOutput to that path."""
        return output if output is None or isinstance(output, RunOutput) else cls(output)

    def checked_path(self) -> Path:
        """The run's path, refused (a :class:`RunError`) when it cannot take this run."""
        path = check_output_path(self.path, directory=True)
        check_run_target(path, overwrite=self.overwrite, resume=self.resume)
        return path


# ---------------------------------------------------------------------- writing
def write_run(run, work: Path, path: Path, *, overwrite: bool) -> None:
    """Write every file of ``run`` into a new staging sibling (``work`` is locked), then rename it to ``path``.

    Any failure removes the staging folder and leaves an old run at ``path`` whole; a full disk is
    one line (:class:`recvae.data.writing.DiskFullError`, the bytes written so far named).
    """
    staging = new_staging(path)
    try:
        try:
            _write_files(run, staging)
            _replace(staging, path, overwrite=overwrite)
        except (OSError, RuntimeError) as err:
            better = write_failure(path, err, needed=sum(p.stat().st_size for p in _files_under(staging)) or None)
            if better is None:
                raise
            raise better from None
        shutil.rmtree(work, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _write_files(run, staging: Path) -> None:
    run.model.save(staging / MODEL_FILE)
    run.split.save(staging / SPLIT_DIR)
    arrays = {"user_ids": _ids_for_npz(run.user_ids), "dropped_user_ids": _ids_for_npz(run.dropped_user_ids)}
    arrays.update(csr_to_arrays("history", run.history))
    arrays.update(csr_to_arrays("seen", run.seen))
    with open(staging / USERS_FILE, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    history = getattr(run.model, "history_", None)
    if history is not None:
        history.to_csv(staging / HISTORY_FILE, index=False)
    _write_json(staging / METRICS_FILE, finite(run.metrics))
    _write_json(staging / CONFIG_FILE, finite(run.config))
    manifest = {"format": RUN_FORMAT, "recvae": __version__,
                "files": {p.relative_to(staging).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
                          for p in _files_under(staging)}}
    _write_json(staging / MANIFEST_FILE, manifest)
    _fsync_tree(staging)


def _replace(staging: Path, path: Path, *, overwrite: bool) -> None:
    """Rename ``staging`` to ``path``; an old run there is moved aside first and put back if the rename fails.

    Should the move back fail too, the old run is whole in the moved-aside folder, named in the
    error, and the next write of the run moves it back (:func:`recvae.runs.workdir.clear_leftovers`).
    """
    old = None
    if path.exists():
        if not overwrite:
            raise RunError(f"{path}: already holds a run; choose another directory or pass --overwrite")
        old = reserve_aside(path)
        try:
            os.replace(path, old)
        except BaseException:
            with contextlib.suppress(OSError):
                os.rmdir(old)
            raise
    try:
        os.replace(staging, path)
    except BaseException as err:
        if old is not None:  # a failed replacement leaves the old run whole, in place
            try:
                os.replace(old, path)
            except OSError as again:
                raise RunError(f"{path}: the new run could not be renamed into place ({one_line(err)}) nor the old "
                               f"run moved back ({one_line(again)}); it is whole in {old}: move it back "
                               f"(mv {old} {path}), or the next write of the run will") from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync_folder(path.parent)


def _ids_for_npz(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids)
    return ids.astype(str) if ids.dtype == object else ids


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, default=_json_default, allow_nan=False) + "\n")


def finite(value: Any) -> Any:
    """NaN/inf as None, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file())


def _fsync_tree(directory: Path) -> None:
    """Flush every file and folder under ``directory`` (and itself) to the disk."""
    for file in _files_under(directory):
        with open(file, "rb") as fh:
            os.fsync(fh.fileno())
    for folder in [directory, *(p for p in directory.rglob("*") if p.is_dir())]:
        _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk; where folders cannot be opened, nothing."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- reading
def read_run(path: str | os.PathLike, *, device: str = "auto", verify: bool = True, allow_failed: bool = False) -> dict:
    """The parts of the run at ``path`` (the keyword arguments of ``Run``), trusting only its manifest.

    Before any file is opened: no link inside the run, every listed name a regular file inside it
    of the listed size, every file the loader opens listed (:mod:`recvae.runs.trust`); with
    ``verify`` every listed file's sha256 too. Files the manifest does not list are never opened.
    A run whose training failed is refused unless ``allow_failed``. Every refusal is a one-line
    :class:`RunError` naming the file and the fix.
    """
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: no such run directory; give a directory written by 'recvae train' (Run.save)")
    manifest_path = path / MANIFEST_FILE
    if not os.path.lexists(manifest_path):
        hint = " (written by an older recvae?)" if os.path.lexists(path / MODEL_FILE) else ""
        raise RunError(f"{path}: not a recvae run directory: no {MANIFEST_FILE}{hint}; train it again")
    trust.refuse_links(path)  # before anything is opened, the manifest included
    trust.require_regular(manifest_path)
    manifest = read_json(manifest_path)
    if manifest.get("format") != RUN_FORMAT or not isinstance(manifest.get("files"), dict):
        raise RunError(f"{manifest_path}: not a recvae run manifest of format {RUN_FORMAT}; train it again")
    listed = manifest["files"]
    trust.check_tree(path, listed, manifest=MANIFEST_FILE)
    trust.require_listed(path, listed, _READ_FILES, MODEL_FILE, manifest=MANIFEST_FILE)
    if verify:
        _verify_manifest(path, manifest)
    config = read_json(path / CONFIG_FILE)
    metrics = read_json(path / METRICS_FILE)
    trust.check_status(metrics, path, allow_failed=allow_failed)
    try:
        model = load_model(path / MODEL_FILE, device=device)
    except (ValueError, KeyError, OSError, TypeError, IndexError, EOFError, RuntimeError) as err:
        raise RunError(f"{path / MODEL_FILE}: cannot load the model: {one_line(err)}") from None
    if config.get("model_class") not in (None, type(model).__name__):
        raise RunError(f"{path}: config.json describes a {config.get('model_class')} but the model file holds a "
                       f"{type(model).__name__}; the run directory is inconsistent, train it again")
    split_meta = read_json(path / SPLIT_DIR / SPLIT_META_FILE)
    split_arrays = trust.read_run_npz(path / SPLIT_DIR / SPLIT_ARRAYS_FILE)
    arrays = trust.read_run_npz(path / USERS_FILE)
    try:
        split = Split.from_saved(split_meta, split_arrays, path / SPLIT_DIR)
        history, seen = csr_from_arrays("history", arrays), csr_from_arrays("seen", arrays)
        user_ids, dropped = arrays["user_ids"], arrays["dropped_user_ids"]
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise RunError(f"{path}: cannot read the split or users file: {one_line(err)}; train the run again") from None
    if history.shape != (len(user_ids), model.n_items_) or seen.shape != history.shape \
            or split.n_items != model.n_items_:
        raise RunError(f"{path}: the users file, the split and the model disagree on the number of users or items; "
                       "train the run again")
    return dict(model=model, split=split, user_ids=user_ids, history=history, seen=seen, dropped_user_ids=dropped,
                config=config, metrics=metrics, path=path)


def read_json(path: Path) -> dict:
    """A run's JSON file as a dict; a missing or damaged file is a :class:`RunError`."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path}: missing; the run directory is incomplete, train it again") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise RunError(f"{path}: not valid JSON ({one_line(err)}); the run directory is damaged, "
                       "restore it or train the run again") from None
    except OSError as err:
        raise RunError(f"{path}: cannot be read ({one_line(err.strerror or err)}); check its permissions") from None
    if not isinstance(value, dict):
        raise RunError(f"{path}: expected a JSON object; the run directory is damaged, restore it or train it again")
    return value


def _verify_manifest(path: Path, manifest: dict) -> None:
    """Compare the sha256 of every listed file (already checked by :func:`trust.check_tree`) with the manifest."""
    listed = manifest["files"]
    for name, entry in listed.items():
        file = path / name
        if _sha256(file) != entry["sha256"]:
            raise RunError(f"{file}: checksum mismatch (the file changed since it was written: corrupted or "
                           "replaced); restore it or train the run again")
    extra = sorted({p.relative_to(path).as_posix() for p in _files_under(path)} - set(listed) - {MANIFEST_FILE})
    if extra:
        logger.warning("%s: files not written by the run are ignored: %s (never opened)", path, ", ".join(extra[:5]))


# ---------------------------------------------------------------------- the target
def check_run_target(path: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse, before any work, a target that holds a run (unless overwrite), a link, or a killed
    run's leftovers that are not ours (see :func:`recvae.runs.workdir.check_work_dir`)."""
    if path.is_symlink():
        raise RunError(f"{path}: is a symbolic link; give the directory it points to "
                       f"({os.path.realpath(path)}) or remove the link")
    if path.exists() and not path.is_dir():
        raise RunError(f"{path}: is a file; give a directory for the run")
    if path.is_dir() and any(path.iterdir()):
        is_run = (path / MANIFEST_FILE).exists() or (path / MODEL_FILE).exists()
        if not is_run:
            # --overwrite replaces runs only: never delete a folder of someone's other files
            raise RunError(f"{path}: holds files that are not a recvae run; choose another (or an empty) directory")
        if not overwrite:
            raise RunError(f"{path}: already holds a run; choose another directory or pass --overwrite (overwrite=True)")
    check_work_dir(work_dir(path), resume=resume, overwrite=overwrite)
