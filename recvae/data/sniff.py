"""Content checks of data files: what a file really is (Parquet, gzip, zip, text, binary), whether
its text decodes, and one-line errors for damaged gzip and archives. Used by every reader."""

from __future__ import annotations

import codecs
import gzip
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pandas as pd

__all__ = ["LogFileError", "LogFileNotFoundError", "one_line", "sniff_file", "read_zipped_ratings",
           "check_text_head", "damaged_gzip_error", "RATINGS_MEMBERS"]

#: file names inside a zip that are taken for a ratings log (MovieLens's, plain or .gz).
RATINGS_MEMBERS = ("ratings.csv", "ratings.dat", "u.data")

_HEAD = 8192
_DECOMPRESS_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


class LogFileError(ValueError):
    """An interaction log file that cannot be read: its message names the file, the problem and the fix."""


class LogFileNotFoundError(LogFileError, FileNotFoundError):
    """No file at the given path (also a :class:`FileNotFoundError`)."""


def one_line(text: object, limit: int = 160) -> str:
    """An exception's text squeezed into one short line (library messages can span many)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def sniff_file(path: str | os.PathLike[str]) -> str:
    """The kind of a log file from its first bytes: "parquet", "gzip", "zip", "text" or "binary".

    "binary" is anything else holding NUL bytes or bytes that are not UTF-8 in
    its first 8 KiB. Refuses a missing path, a directory, an empty file and a
    file named ``.zip`` that is not a zip archive (a failed download, a log
    renamed by mistake): read as text it would fail later, on its separator.

    Raises:
        LogFileNotFoundError: the file does not exist.
        LogFileError: a directory, an empty file, or a ``.zip`` that is not a zip archive.
    """
    path = Path(path)
    if not path.exists():
        raise LogFileNotFoundError(f"interaction log not found: {path}; check the path")
    if path.is_dir():
        raise LogFileError(f"{path} is a directory; pass the log file inside it")
    with open(path, "rb") as fh:
        head = fh.read(_HEAD)
    if not head:
        raise LogFileError(f"{path} is empty (0 bytes): expected a header line and one event per line")
    kind = _kind_of(head)
    if path.suffix.lower() == ".zip" and kind != "zip":
        raise LogFileError(f"{path} is not a zip archive (its content is {kind}, without a zip's PK header); "
                           "download or create the archive again, or, if it is the log itself, give it the "
                           "name of what it is (e.g. .csv)")
    return kind


def _kind_of(head: bytes) -> str:
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    return "binary" if _text_problem(head) else "text"


def _text_problem(head: bytes) -> str | None:
    """Why the first bytes of a file are not UTF-8 text, or None when they are."""
    if b"\x00" in head:
        return "it holds NUL bytes"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a cut multi-byte char is fine
    except UnicodeDecodeError as err:
        return f"byte 0x{head[err.start]:02x} at offset {err.start} is not UTF-8"
    return None


def check_text_head(path: Path, compressed: bool) -> None:
    """Refuse a (decompressed) file whose first bytes are not UTF-8 text, or a damaged gzip.

    Raises:
        LogFileError: binary content, another encoding, or a truncated / corrupt gzip.
    """
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as fh:
            head = fh.read(_HEAD)
    except _DECOMPRESS_ERRORS as err:
        raise damaged_gzip_error(path, err) from None
    problem = _text_problem(head)
    if problem is None:
        return
    if "NUL" in problem:
        raise LogFileError(f"{path} is not a text file ({problem}); pass a CSV/TSV or Parquet log")
    raise LogFileError(f"{path} is not UTF-8 text ({problem}); re-save it as UTF-8 "
                       "(e.g. iconv -f latin1 -t utf-8)")


def damaged_gzip_error(path: Path, err: BaseException) -> LogFileError:
    """A damaged gzip stream, named: "truncated" when the stream ends early, else "corrupt"."""
    what = "truncated gzip" if isinstance(err, EOFError) else "corrupt gzip"
    return LogFileError(f"{path} is not a valid gzip file ({what}: {one_line(err)}); "
                        "re-download it, or decompress what is left by hand")


def read_zipped_ratings(path: Path, read: Callable[[Path], pd.DataFrame]) -> pd.DataFrame:
    """Read the one ratings file inside a zip archive with ``read``; refuse zero or several.

    The member (``ratings.csv``, ``ratings.dat`` or ``u.data``, plain or .gz,
    at any depth) is copied to a temporary file of the same name, read, and the
    copy deleted; messages name it as ``archive.zip!member``.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            candidates = [n for n in names if n.rsplit("/", 1)[-1].lower().removesuffix(".gz") in RATINGS_MEMBERS]
            if len(candidates) != 1:
                listed = candidates or names
                shown = ", ".join(listed[:8]) + (f" and {len(listed) - 8} more" if len(listed) > 8 else "")
                why = (f"several ratings files ({shown})" if candidates else
                       f"no ratings file (ratings.csv, ratings.dat or u.data) among its members ({shown})")
                raise LogFileError(f"{path} is a zip archive with {why}; extract the log you want and pass that file")
            member = candidates[0]
            with tempfile.TemporaryDirectory(prefix="recvae-") as tmp:
                target = Path(tmp) / member.rsplit("/", 1)[-1]
                with zf.open(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                try:
                    return read(target)
                except ValueError as err:  # the reader's own message, about the temporary copy
                    raise LogFileError(str(err).replace(str(target), f"{path}!{member}")) from None
    except zipfile.BadZipFile as err:
        raise LogFileError(f"{path} is a damaged zip archive ({one_line(err)}, a member fails its CRC check or "
                           "the file is truncated); download or create it again") from None
    except (EOFError, zlib.error) as err:
        raise LogFileError(f"{path} is a damaged zip archive ({one_line(err)}); download or create it again") from None


