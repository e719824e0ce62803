"""The places a run is written from: its work folder and lock, staging and moved-aside folders,
never reached through a link, and the leftovers of killed writes cleared by the next one.

A run at ``runs/NAME`` is written from ``runs/.NAME.partial`` (the work folder: the lock and a
torch model's checkpoint), through a staging folder ``runs/.NAME.<random>.staging`` renamed
to ``runs/NAME``; an overwrite first moves the old run aside to ``runs/.NAME.replaced-<random>``.
Whoever may create entries in ``runs/`` may plant links there, so:

* the work folder must be a real folder of the current user (it is created ``0o700``), its
  lock and checkpoint regular files of the current user with no other hard link: a link or
  anything else is refused (:class:`RunError`, one line naming it and saying to remove it);
  the lock is created ``O_CREAT | O_EXCL | O_NOFOLLOW`` (a killed run's is opened
  ``O_NOFOLLOW`` and checked), relative to the folder opened ``O_NOFOLLOW``;
* staging and moved-aside folders get unpredictable names and are created, not reused;
* once the lock is held no live writer of the same run can own a leftover, so the next
  writer removes them: ``.NAME.*.staging``, ``.NAME.replaced-*`` (when no run is left at
  ``NAME``, because the write was killed between its two renames, the moved-aside run is
  moved back instead) and temporary files in the work folder. Only real folders of the current
  user are touched; anything else that looks like a leftover is named in a warning.

A remaining race: a parent folder that others may write to *without* the sticky bit lets them
rename our folders while we write; keep run outputs in folders only you (or a sticky ``/tmp``)
can change.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shlex
import shutil
import stat
from pathlib import Path

from recvae.data.writing import write_failure
from recvae.runs.errors import RunError

logger = logging.getLogger(__name__)

__all__ = ["work_dir", "check_work_dir", "exclusive_lock", "clear_leftovers", "new_staging", "reserve_aside",
           "discard_work_dir", "LOCK_FILE", "CHECKPOINT_FILE"]

CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = "lock"
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def work_dir(path: Path) -> Path:
    """The sibling where a run is written and checkpointed until it is renamed into place."""
    return path.with_name(f".{path.name}.partial")


def run_of(work: Path) -> Path:
    """The run whose work folder is ``work``."""
    return work.with_name(work.name.removeprefix(".").removesuffix(".partial"))


def _busy(path: Path) -> RunError:
    return RunError(f"{path}: another recvae process is writing this run now; wait for it or choose another output")


def _refuse(path: Path, what: str) -> RunError:
    return RunError(f"{path}: {what}; remove it (rm -r {shlex.quote(os.fspath(path))}) and run again, "
                    "or choose another output")


def _check_entry(path: Path, st: os.stat_result, *, folder: bool) -> None:
    """Refuse ``path`` (its lstat/fstat ``st``) unless it is a real folder (or a regular file with one
    link) of the current user."""
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(path, "is a symbolic link, not what recvae made for this run (it never writes through links)")
    if folder and not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "is not the folder recvae made for this run")
    if not folder and not stat.S_ISREG(st.st_mode):
        raise _refuse(path, "is not a regular file recvae made")
    if st.st_uid != os.geteuid():
        raise _refuse(path, f"belongs to another user (uid {st.st_uid}); recvae writes only into its own files")
    if not folder and st.st_nlink > 1:
        raise _refuse(path, f"has {st.st_nlink - 1} other hard link(s); recvae writes only into its own files")


def check_work_dir(work: Path, *, resume: bool, overwrite: bool) -> None:
    """Before any work: refuse a work folder that is not ours (a link, another user's), ask for
    ``resume`` when it holds a killed run's checkpoint, and clear a dead writer's (unless ``overwrite``,
    which reuses it)."""
    try:
        st = os.lstat(work)
    except FileNotFoundError:
        return
    _check_entry(work, st, folder=True)
    if resume:
        return  # exclusive_lock checks the lock and the checkpoint
    if os.path.lexists(work / CHECKPOINT_FILE):
        raise RunError(f"{run_of(work)}: a killed run left a checkpoint in {work}; pass --resume (resume=True) to "
                       f"continue it, or delete {work} to start over")
    if not overwrite:
        _probe_lock(work)


def _probe_lock(work: Path) -> None:
    """Fail when a live process holds ``work``'s lock; a dead writer's folder (ours, checked) is cleared."""
    import fcntl

    lock = work / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDONLY | _OPEN_FLAGS)
    except FileNotFoundError:
        fd = None
    except OSError as err:
        _check_entry(lock, os.lstat(lock), folder=False)
        raise RunError(f"{lock}: cannot be opened ({err.strerror}); remove {work} and run again") from None
    if fd is not None:
        try:
            _check_entry(lock, os.fstat(fd), folder=False)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _busy(run_of(work)) from None
        finally:
            os.close(fd)
    shutil.rmtree(work, ignore_errors=True)


def _open_own_folder(folder: Path) -> int:
    """``folder`` opened without following a link, refused unless it is a real folder of ours."""
    try:
        fd = os.open(folder, _DIR_FLAGS)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            _check_entry(folder, os.lstat(folder), folder=True)
        raise
    return _checked_fd(fd, folder, folder=True)


def _checked_fd(fd: int, path: Path, *, folder: bool) -> int:
    """``fd`` when what it opened is ours (:func:`_check_entry`); closed, and the refusal raised, otherwise."""
    try:
        _check_entry(path, os.fstat(fd), folder=folder)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_lock(folder_fd: int, folder: Path) -> int:
    """The lock file in the folder ``folder_fd``: created ``O_EXCL | O_NOFOLLOW``, or a killed run's
    opened ``O_NOFOLLOW`` and checked to be our regular file."""
    lock = folder / LOCK_FILE
    try:
        return os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o666, dir_fd=folder_fd)
    except FileExistsError:
        pass
    try:
        fd = os.open(LOCK_FILE, os.O_RDWR | _OPEN_FLAGS, dir_fd=folder_fd)
    except OSError:
        _check_entry(lock, os.stat(LOCK_FILE, dir_fd=folder_fd, follow_symlinks=False), folder=False)
        raise
    return _checked_fd(fd, lock, folder=False)


@contextlib.contextmanager
def exclusive_lock(directory: Path):
    """Hold an exclusive lock on ``directory/lock`` (released by the OS if the process dies).

    ``directory`` is a run's work folder (:func:`work_dir`): created (``0o700``) when missing,
    else refused unless it is a real folder of the current user; the lock and a checkpoint
    there must be our regular files (see the module docstring). Once the lock is held, the
    leftovers of killed writes of the same run are cleared (:func:`clear_leftovers`).
    """
    import fcntl

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    folder = _open_own_folder(directory)
    try:
        lock = _open_lock(folder, directory)
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _busy(directory) from None
            try:
                os.ftruncate(lock, 0)
                os.write(lock, f"{os.getpid()}\n".encode())
            except OSError as err:
                raise write_failure(directory / LOCK_FILE, err) or err from None
            with contextlib.suppress(FileNotFoundError):
                _check_entry(directory / CHECKPOINT_FILE,
                             os.stat(CHECKPOINT_FILE, dir_fd=folder, follow_symlinks=False), folder=False)
            clear_leftovers(run_of(directory), folder)
            yield
        finally:
            os.close(lock)
    finally:
        os.close(folder)


def discard_work_dir(work: Path) -> None:
    """Remove the work folder (held under its lock) unless it keeps a checkpoint to resume."""
    if work.is_dir() and not work.is_symlink() and not (work / CHECKPOINT_FILE).exists():
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------- staging, moved aside, leftovers
def _new_folder(path: Path, name, mode: int) -> Path:
    for _ in range(100):
        folder = path.with_name(name(secrets.token_hex(8)))
        try:
            os.mkdir(folder, mode)
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free folder name", os.fspath(path))


def new_staging(path: Path) -> Path:
    """A new folder beside ``path`` (``.NAME.<random>.staging``) to write a run into; created
    ``0o777`` so that the umask gives the run the mode ``mkdir`` would."""
    return _new_folder(path, lambda token: f".{path.name}.{token}.staging", 0o777)


def reserve_aside(path: Path) -> Path:
    """A new empty private folder beside ``path`` (``.NAME.replaced-<random>``) that the old run is
    renamed over (a rename may replace an empty folder) until the new one is in place."""
    return _new_folder(path, lambda token: f".{path.name}.replaced-{token}", 0o700)


def _leftover_kind(run_name: str, entry: str) -> str | None:
    name = re.escape(run_name)
    if re.fullmatch(rf"\.{name}\.[a-z0-9_]{{8,16}}\.staging", entry):
        return "staging"
    if re.fullmatch(rf"\.{name}\.replaced-[0-9a-f]+", entry):
        return "replaced"
    return None


def _holds_run(folder: Path) -> bool:
    return (folder / "manifest.json").exists() or (folder / "model").exists()


def clear_leftovers(path: Path, work_fd: int | None = None) -> None:
    """Remove what killed writes of the run at ``path`` left (call it holding the run's lock).

    Temporary files in the work folder (``work_fd``), and beside ``path`` its staging folders and
    moved-aside runs that are real folders of the current user; a moved-aside run is moved back
    when no run is left at ``path``. Anything else matching those names is named in a warning.
    """
    if work_fd is not None:
        for name in os.listdir(work_fd):
            if name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=work_fd)  # in our own folder: a link is removed, not followed
    try:
        entries = [e for e in os.scandir(path.parent) if _leftover_kind(path.name, e.name)]
    except OSError:
        return
    aside = sorted((e for e in entries if _leftover_kind(path.name, e.name) == "replaced"),
                   key=lambda e: e.stat(follow_symlinks=False).st_ctime, reverse=True)
    for entry in aside + [e for e in entries if _leftover_kind(path.name, e.name) == "staging"]:
        st = entry.stat(follow_symlinks=False)
        folder = Path(entry.path)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            logger.warning("%s: looks like a leftover of a killed write of %s but is not a folder of yours: left "
                           "alone; remove it if it is stale", folder, path)
            continue
        empty_target = not os.path.lexists(path) or (path.is_dir() and not path.is_symlink()
                                                     and not any(path.iterdir()))
        if _leftover_kind(path.name, entry.name) == "replaced" and empty_target and _holds_run(folder):
            os.replace(folder, path)
            logger.warning("%s: moved back the run a killed overwrite had moved aside to %s", path, folder)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        logger.info("removed %s, left by a killed write of %s", folder, path)
