"""Writing a file safely: a fresh temporary sibling renamed into place, never through a link,
with the mode ``open()`` gives, removed on any failure, and a full disk told in one line.

:func:`atomic_file` yields a file object for writers that take one (``torch.save``,
``np.save``, pandas, pyarrow); :func:`written_by_name` yields a path in a private folder
for writers that only take a name (the ONNX exporter). Either way the file appears at
its path whole or not at all, and a write that fails leaves nothing behind.

The temporary file is created with ``os.open(O_CREAT | O_EXCL | O_NOFOLLOW)`` under an
unpredictable name, so a link planted beside the target is never followed, and with
mode ``0o666``: the kernel applies the process's umask, exactly as for ``open()``, so
a file we write (new, or replacing one of another mode) ends ``0o666 & ~umask``. The
umask is never read nor changed here (``os.umask`` is process-global and not
thread-safe).

A failed write is told by :func:`write_failure`: ``ENOSPC``/``EDQUOT`` (also when torch
hides it behind ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``:
the writer records the errno of the write that failed) becomes a :class:`DiskFullError`,
one line naming the path, the bytes it needed at least, the bytes free and the fix.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DiskFullError", "atomic_file", "written_by_name", "write_failure", "free_bytes", "create_exclusive",
           "FULL_DISK_FIX"]

#: what to do when the disk is full
FULL_DISK_FIX = "free some space there or write elsewhere (choose another output, -o)"
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
#: torch's words for a write that failed (it drops the errno of the failed write)
_TORCH_WRITE_FAILURES = ("inline_container", "unexpected pos", "file write failed", "PytorchStreamWriter failed")
#: free bytes under which a write failure without an errno is taken for a full disk
_NEARLY_FULL = 16 << 20
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class DiskFullError(OSError):
    """No space (or quota) left where a file was being written; ``str()`` is one line:
    the path, the bytes it needed at least and the bytes free when known, and the fix."""

    def __init__(self, path: str | os.PathLike, *, needed: int | None = None, free: int | None = None) -> None:
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
        facts = ([f"it needs at least {needed:,} bytes"] if needed else []) + \
                ([f"{free:,} bytes are free there"] if free is not None else [])
        self.needed, self.free = needed, free
        detail = f" ({'; '.join(facts)})" if facts else ""
        self.text = f"{path}: No space left on device{detail}; {FULL_DISK_FIX}"

    def __str__(self) -> str:
        return self.text


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes an unprivileged user may still write on the file system of ``path`` (or of its nearest
    existing parent); None when unknown."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        stats = os.statvfs(probe)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def _errno_in_chain(err: BaseException | None) -> int | None:
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError) and err.errno in _FULL_ERRNOS:
            return err.errno
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def write_failure(path: str | os.PathLike, err: BaseException, *, failed_errno: int | None = None,
                  needed: int | None = None) -> BaseException | None:
    """The one-line error to raise instead of ``err``, a failure to write ``path``; None to keep ``err``.

    A :class:`DiskFullError` for ``ENOSPC``/``EDQUOT`` (in ``err``, its causes, or ``failed_errno``:
    the errno a writer recorded), and for torch's errno-less write failure when under 16 MiB are
    free; an ``OSError`` naming the path and the fix for any other torch write failure.
    """
    if isinstance(err, DiskFullError):
        return None
    full = failed_errno in _FULL_ERRNOS or _errno_in_chain(err) is not None
    torch_write = isinstance(err, RuntimeError) and any(w in str(err) for w in _TORCH_WRITE_FAILURES)
    if not (full or torch_write):
        return None
    free = free_bytes(Path(path).parent)
    if full or (free is not None and free < _NEARLY_FULL):
        return DiskFullError(path, needed=needed, free=free)
    detail = " ".join(str(err).split())[:160]
    where = f"; {free:,} bytes are free there" if free is not None else ""
    return OSError(f"{path}: the write failed ({detail}{where}); check the disk, {FULL_DISK_FIX}")


class _RecordingWriter(io.RawIOBase):
    """A file descriptor as a raw binary stream that writes every byte it is given and records
    what it wrote and the error of a write that failed (torch replaces it by its own message)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self.written = 0
        self.failed: OSError | None = None
        self.attempted = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += os.write(self._fd, view[done:])
        except OSError as err:
            self.failed, self.attempted = err, len(view) - done
            raise
        finally:
            self.written += done
        return done

    def close(self) -> None:
        if not self.closed:
            try:
                os.close(self._fd)
            finally:
                super().close()


def create_exclusive(path: Path, suffix: str = ".tmp") -> tuple[Path, int]:
    """A new file beside ``path`` under an unpredictable name (``.NAME.<random>.tmp``), opened for
    writing with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode ``0o666`` (the umask applies): (its path, fd)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{suffix}")
        try:
            return tmp, os.open(tmp, _CREATE_FLAGS, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", os.fspath(path))


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, text: bool = False, fsync: bool = True) -> Iterator[io.IOBase]:
    """A binary (or UTF-8 text, ``text=True``) file object that becomes ``path`` when the block ends.

    Written to a fresh temporary sibling (see :func:`create_exclusive`), flushed, fsynced and
    renamed over ``path`` (a link at ``path`` is replaced, never followed). On any failure the
    temporary file is removed and a full disk is a :class:`DiskFullError`.
    """
    path = Path(path)
    try:
        tmp, fd = create_exclusive(path)
    except OSError as err:
        raise write_failure(path, err) or err from None
    raw = _RecordingWriter(fd)
    handle = io.TextIOWrapper(raw, encoding="utf-8", newline="") if text else raw
    try:
        yield handle
        handle.flush()
        if fsync:
            os.fsync(fd)
        handle.close()
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError, ValueError):
            handle.close()  # a text wrapper whose flush fails still closes the descriptor
        if not raw.closed:
            with contextlib.suppress(OSError):
                raw.close()
        tmp.unlink(missing_ok=True)
        needed = raw.written + raw.attempted if raw.failed is not None else None
        better = write_failure(path, err, failed_errno=getattr(raw.failed, "errno", None), needed=needed)
        if better is not None:
            raise better from None
        raise


@contextlib.contextmanager
def written_by_name(path: str | os.PathLike) -> Iterator[Path]:
    """A path to write by name (for writers that take no file object), renamed to ``path`` when the
    block ends; it lies in a private (0700) temporary folder beside ``path``, so nothing else can
    put a link there. On any failure the folder is removed and a full disk is a :class:`DiskFullError`."""
    path = Path(path)
    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as err:
        raise write_failure(path, err) or err from None
    inner = folder / path.name
    try:
        os.close(os.open(inner, _CREATE_FLAGS, 0o666))  # the umask's mode, kept when the writer truncates it
        yield inner
        with open(inner, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(inner, path)
    except BaseException as err:
        needed = inner.stat().st_size if inner.is_file() else None
        better = write_failure(path, err, needed=needed or None)
        if better is not None:
            raise better from None
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
