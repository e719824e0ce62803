"""Interaction log files, recognised by their content before they are parsed.

A log reaches recvae as a CSV/TSV text file (plain or gzip), a Parquet file, or
a zip archive as GroupLens publishes MovieLens. :func:`sniff_file` tells them
apart from the first bytes (not the name), so that a zip or a binary file is not
misread as a text file with an odd separator; :func:`read_interactions_file`
reads each kind and turns every failure (a truncated gzip, a corrupt Parquet
file, a non-UTF-8 text) into a :class:`LogFileError` whose one-line message
names the file, the problem and the fix.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pandas as pd

from recvae.data.movielens import read_movielens_file
from recvae.data.sniff import (
    _DECOMPRESS_ERRORS,
    LogFileError,
    one_line,
    check_text_head,
    damaged_gzip_error,
    read_zipped_ratings,
    sniff_file,
)

__all__ = ["read_interactions_file"]


def _read_json(path: Path, *, lines: bool, compressed: bool) -> pd.DataFrame:
    """A JSON log: an array of records (``.json``) or one object per line (``.jsonl``)."""
    try:
        frame = pd.read_json(path, lines=lines, compression="gzip" if compressed else None)
    except _DECOMPRESS_ERRORS as err:
        raise damaged_gzip_error(path, err) from None
    except ValueError as err:
        layout = "one JSON object per line" if lines else "an array of records"
        raise LogFileError(f"{path}: not {layout} ({one_line(err)}); export the log as {layout}") from None
    if frame.empty:
        raise LogFileError(f"{path} holds no records: expected one event per record")
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    errors: tuple[type[BaseException], ...] = (OSError, ValueError)
    try:
        import pyarrow

        errors += (pyarrow.ArrowException,)
    except ImportError:  # pragma: no cover - pandas names its missing engine itself
        pass
    try:
        return pd.read_parquet(path)
    except ImportError:
        raise
    except errors as err:
        raise LogFileError(f"{path} is a damaged Parquet file ({one_line(err)}); export it again") from None


def read_interactions_file(path: str | os.PathLike[str], *, sep: str | None = None) -> pd.DataFrame:
    """Read an interaction log: CSV/TSV (plain or gzip), Parquet, or a zip holding one ratings file.

    The kind is recognised from the content (:func:`sniff_file`), not the name.
    The separator of a text file is sniffed from its first line unless ``sep``
    is given; the header line names the columns. A zip archive is read when
    exactly one member is a ratings file (``ratings.csv``, ``ratings.dat``,
    ``u.data``: by the MovieLens reader of its format); otherwise it is refused
    with the candidate members listed.

    Raises:
        LogFileNotFoundError: the file does not exist (also a FileNotFoundError).
        LogFileError: an empty, binary, non-UTF-8, truncated or corrupt file, a
            zip without exactly one ratings file, or a text file without a separator.
    """
    path = Path(path)
    kind = sniff_file(path)
    suffixes = [s.lower() for s in path.suffixes]
    if kind == "parquet":
        return _read_parquet(path)
    if ".parquet" in suffixes or ".pq" in suffixes:
        raise LogFileError(f"{path} is named like a Parquet file but is not one (no PAR1 header; {kind} content); "
                           "export it again, or rename it to what it is")
    if kind == "zip":
        return read_zipped_ratings(path, read_movielens_file)
    if kind == "binary":
        check_text_head(path, compressed=False)  # raises, naming the problem
    compressed = kind == "gzip"
    check_text_head(path, compressed)
    stem_suffixes = [x for x in suffixes if x != ".gz"]
    if stem_suffixes and stem_suffixes[-1] in (".json", ".jsonl", ".ndjson"):
        return _read_json(path, lines=stem_suffixes[-1] != ".json", compressed=compressed)
    if sep is None:
        try:
            with (gzip.open(path, "rt", encoding="utf-8", errors="replace") if compressed
                  else open(path, encoding="utf-8", errors="replace")) as fh:
                header = fh.readline()
        except _DECOMPRESS_ERRORS as err:
            raise damaged_gzip_error(path, err) from None
        if not header.strip():
            raise LogFileError(f"{path} is empty or starts with a blank line: expected a header line and one event "
                               "per line")
        sep = max(("\t", ",", ";", "|"), key=header.count)
        if header.count(sep) == 0:
            raise LogFileError(
                f"could not find a separator in the first line of {path} ({header.strip()[:80]!r})"
                + ("; it looks like JSON: name the file .json (records) or .jsonl (one object per line)"
                   if header.lstrip().startswith(("{", "[")) else
                   "; a log needs at least a user and an item column: pass the separator with --sep (sep=)")
            )
    try:
        return pd.read_csv(path, sep=sep, compression="gzip" if compressed else None)
    except _DECOMPRESS_ERRORS as err:
        raise damaged_gzip_error(path, err) from None
    except UnicodeDecodeError as err:
        raise LogFileError(f"{path} is not UTF-8 text (byte at offset {err.start} of a chunk: {err.reason}); "
                           "re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    except pd.errors.EmptyDataError:
        raise LogFileError(f"{path} is empty: expected a header line and one event per line") from None
    except pd.errors.ParserError as err:
        msg = one_line(str(err).replace("Error tokenizing data. C error: ", ""))
        raise LogFileError(f"{path}: malformed line ({msg}); fix or remove it, or pass the right --sep (sep=)") from None
