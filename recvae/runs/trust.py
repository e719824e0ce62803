"""What reading a run trusts: only the files its manifest lists, inside the run, never through a link.

:func:`check_tree` runs before any file of a run is opened (the manifest included):

- no symbolic link anywhere inside the run directory (a file or a folder), listed or not;
- every name the manifest lists is a plain relative path inside the run (no ``..``, not
  absolute), names a regular file (not a folder, FIFO or device) and has the listed size;
- every file the loader opens is listed (:func:`require_listed`): ``config.json``,
  ``metrics.json``, ``users.npz``, ``split/split.json``, ``split/matrices.npz`` and the model
  (the ``model`` file, or every file of a ``model/`` folder, a Blend, which names its own
  component files and so may hold no unlisted file);
- a file the manifest does not list elsewhere in the run is ignored: it is never opened.

The run directory itself may be reached through a link the user gave (``runs/prod`` -> a
dated run): the path is the user's choice; links *inside* the run are what is refused.
Hard links are not detected (they are ordinary files; recvae never writes them).

:func:`check_status` refuses a run whose training failed (``metrics.json``'s ``status``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from recvae.runs.errors import RunError, one_line
from recvae.runtime.storage import ModelFileError, read_npz_arrays

__all__ = ["refuse_links", "require_regular", "check_tree", "require_listed", "check_status", "read_run_npz",
           "RETRAIN"]

#: the fix for a run whose files cannot be trusted.
RETRAIN = "train it again"
#: the fix for a damaged file of a run.
RESTORE = "restore it or train the run again"


def check_tree(root: Path, listed: Mapping, *, manifest: str) -> None:
    """Refuse links anywhere in ``root`` and listed names that are unsafe, missing, not files or of another size.

    Opens nothing: every check is an ``lstat``. Call :func:`refuse_links` first.
    """
    if not listed:
        raise RunError(f"{root}: its {manifest} lists no files, so nothing in it can be trusted; {RETRAIN}")
    missing = []
    for name, entry in listed.items():
        parts = _safe_parts(root, name, manifest)
        file = root.joinpath(*parts)
        try:
            info = os.lstat(file)
        except FileNotFoundError:
            missing.append(name)
            continue
        except OSError as err:
            raise RunError(f"{file}: cannot be inspected ({one_line(err.strerror or err)}); check its permissions") \
                from None
        if not stat.S_ISREG(info.st_mode):
            raise RunError(f"{file}: not a regular file, so it is not the file the run wrote; {RETRAIN}")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) \
                or not isinstance(entry.get("bytes", 0), (int, type(None))) or isinstance(entry.get("bytes"), bool):
            raise RunError(f"{root / manifest}: malformed entry for {name}; the run directory is damaged, {RETRAIN}")
        size = entry.get("bytes")
        if size is not None and info.st_size != size:
            cause = "truncated" if info.st_size < size else "longer than written"
            raise RunError(f"{file}: {cause} ({info.st_size:,} of {size:,} bytes); {RESTORE}")
    if missing:
        raise RunError(f"{root}: {missing[0]} is missing ({len(missing)} file(s) of the run); train the run again")


def refuse_links(root: Path) -> None:
    """Refuse a symbolic link anywhere under ``root`` (links are never followed; nothing is opened)."""
    def walk_error(err: OSError) -> None:
        raise RunError(f"{err.filename}: cannot be listed ({one_line(err.strerror or err)}); check its permissions")

    for folder, dirs, files in os.walk(root, onerror=walk_error, followlinks=False):
        for name in (*dirs, *files):
            if os.path.islink(os.path.join(folder, name)):
                where = Path(folder, name)
                raise RunError(f"{where}: a symbolic link inside the run directory; a run reads only the files it "
                               f"wrote, inside it: replace the link by the file, or {RETRAIN}")


def require_regular(file: Path) -> None:
    """Refuse ``file`` unless it is a regular file (a FIFO or device would block or mislead a reader)."""
    try:
        info = os.lstat(file)
    except OSError as err:
        raise RunError(f"{file}: cannot be inspected ({one_line(err.strerror or err)}); {RETRAIN}") from None
    if not stat.S_ISREG(info.st_mode):
        raise RunError(f"{file}: not a regular file, so it is not the file the run wrote; {RETRAIN}")


def _safe_parts(root: Path, name: object, manifest: str) -> tuple[str, ...]:
    """The components of a listed name, refused unless it is a plain relative path inside the run."""
    parts = PurePosixPath(name).parts if isinstance(name, str) and name else ()
    if not parts or PurePosixPath(name).is_absolute() or any(p in ("..", ".") for p in parts) \
            or "\\" in name or "\x00" in name:
        raise RunError(f"{root / manifest}: lists {str(name)[:80]!r}, not a path inside the run; "
                       f"the manifest was altered, {RETRAIN}")
    return parts


def require_listed(root: Path, listed: Mapping, names: Iterable[str], model: str, *, manifest: str) -> None:
    """Refuse a run whose manifest does not list every file the loader opens.

    ``model`` is the model's name: a listed file, or a folder (a Blend) whose files are all listed.
    """
    unlisted = [name for name in names if name not in listed]
    in_model = [name for name in listed if name.startswith(f"{model}/")]
    if model not in listed and not in_model:
        unlisted.insert(0, model)
    if unlisted:
        raise RunError(f"{root}: {manifest} does not list {', '.join(unlisted[:3])}, which the run needs, so "
                       f"{'it is' if len(unlisted) == 1 else 'they are'} not trusted; {RETRAIN}")
    if in_model:
        folder = root / model
        present = {p.relative_to(root).as_posix() for p in folder.rglob("*") if not p.is_dir()}
        extra = sorted(present - set(listed))
        if extra:
            raise RunError(f"{root / extra[0]}: not listed in {manifest}, but the model folder's files are read "
                           f"by name; remove it, or {RETRAIN}")


def check_status(metrics: Mapping, where: object, *, allow_failed: bool) -> None:
    """Refuse a run whose recorded status is not ``success`` (unless ``allow_failed``).

    A run without a status (one saved by :meth:`Run.save` from Python, which records no
    training outcome) is accepted; ``recvae train`` always records one.
    """
    status = metrics.get("status")
    if allow_failed or status in (None, "success"):
        return
    reason = one_line(str(metrics.get("error") or "no reason recorded"))[:300]
    what = "training failed" if status == "failed" else f"its status is {str(status)[:40]!r}, not 'success'"
    raise RunError(f"{where}: {what} ({reason}); train it again (with a lower lr if it diverged), or pass "
                   "--allow-failed (allow_failed=True) to use it anyway")


def read_run_npz(path: Path) -> dict:
    """Every array of a run's ``.npz`` (CRCs checked, pickles refused); a damaged file is a one-line RunError."""
    try:
        return read_npz_arrays(path, fix=RESTORE)
    except ModelFileError as err:
        text = one_line(err).replace("not a recvae model file", "not a recvae array file")
        raise RunError(text) from None
