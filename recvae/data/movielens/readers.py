"""Readers of the three on-disk MovieLens formats, and the checks they share.

* ``u.data`` (ML-100K): tab-separated ``user item rating timestamp``, no header
  -> :func:`read_ml100k`;
* ``ratings.dat`` (ML-1M, ML-10M): ``UserID::MovieID::Rating::Timestamp``, no
  header -> :func:`read_dat`;
* ``ratings.csv`` (ML-20M, ML-25M, ml-latest, ml-latest-small): comma-separated
  with the header ``userId,movieId,rating,timestamp`` (also an implicit pair
  list with just ``userId,movieId``) -> :func:`read_ratings_csv`.

Before parsing, a file is checked for what it is (missing, a directory, empty, a
zip, Parquet, binary, a damaged gzip) and its first line for the format's
layout; pandas' C parser then tokenises it, and every column is validated and
converted with the count and first line of any bad rows in the message.
"""

from __future__ import annotations

import gzip
import itertools
import logging
import os
import re
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from recvae.data.sniff import (
    LogFileError,
    LogFileNotFoundError,
    check_text_head,
    damaged_gzip_error,
    sniff_file,
)

logger = logging.getLogger(__package__)  # the package's logger, "recvae.data.movielens"

__all__ = ["read_ml100k", "read_dat", "read_ratings_csv"]

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20
_LOAD_HINT = (
    "to fetch an official MovieLens release use recvae.data.load_movielens(name, download=True) "
    "(or read_movielens / download_movielens for the raw ratings)"
)

_FMT_ML100K = "tab-separated 'user item rating timestamp' lines without a header (ML-100K u.data)"
_FMT_DAT = "'UserID::MovieID::Rating::Timestamp' lines without a header (ML-1M / ML-10M ratings.dat)"
_FMT_CSV = (
    "a comma-separated file with the header 'userId,movieId,rating,timestamp' or 'userId,movieId' "
    "(ML-20M / ML-25M / ml-latest ratings.csv)"
)


# --------------------------------------------------------------------------- file access


def _check_file(path: str | os.PathLike[str], fmt: str) -> tuple[Path, str | None]:
    """Existence, emptiness and content checks; returns the path and pandas' ``compression`` argument.

    The content decides (see :func:`recvae.data.files.sniff_file`): a zip archive,
    a Parquet file or a binary file is refused with what it is, not misread as text
    with the wrong separator; a gzip file must decompress to UTF-8 text.
    """
    path = Path(path)
    if not path.exists():
        raise LogFileNotFoundError(f"MovieLens ratings file not found: {path}; {_LOAD_HINT}")
    if path.is_dir():
        raise LogFileError(f"{path} is a directory; pass the ratings file inside it (expected {fmt})")
    if path.stat().st_size == 0:
        raise LogFileError(f"{path} is empty (0 bytes): expected {fmt}; re-download or re-extract it")
    kind = sniff_file(path)
    if kind == "zip":
        raise LogFileError(f"{path} is a zip archive, not a ratings file (expected {fmt}); extract it, or read it "
                           "with read_movielens_file / load_movielens, which take a zip holding one ratings file")
    if kind == "parquet":
        raise LogFileError(f"{path} is a Parquet file, not a MovieLens ratings file (expected {fmt}); "
                           "read it with recvae.data.read_interactions_file")
    check_text_head(path, compressed=kind == "gzip")  # binary, non-UTF-8 or a damaged gzip: refused
    if kind == "gzip":
        return path, "gzip"
    if path.suffix.lower() == ".gz":
        logger.warning("%s has a .gz suffix but is not gzip-compressed; reading it as plain text", path)
    return path, None


def _open_binary(path: Path, compression: str | None) -> BinaryIO:
    if compression == "gzip":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


_DECOMPRESS_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def _first_line(path: Path, compression: str | None, fmt: str) -> str:
    """The first line (decoded, BOM and line end stripped); ValueError if the file has no content."""
    try:
        with _open_binary(path, compression) as fh:
            raw = fh.readline()
            if not raw.strip():
                # a blank first line: is there anything at all after it?
                rest = fh.read(_CHUNK)
                while rest and not rest.strip():
                    rest = fh.read(_CHUNK)
                if not rest:
                    what = "decompresses to nothing but whitespace" if compression else "contains only whitespace"
                    raise ValueError(f"{path} is empty: it {what}; expected {fmt}; re-download or re-extract it")
                raise ValueError(f"line 1 of {path} is blank; expected {fmt}; remove the blank line")
    except _DECOMPRESS_ERRORS as err:
        raise damaged_gzip_error(path, err) from None
    return raw.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")


def _line_text(path: Path, compression: str | None, lineno: int) -> str:
    """Line ``lineno`` (1-based) of the file, for error messages; truncated to 80 characters."""
    try:
        with _open_binary(path, compression) as fh:
            raw = next(itertools.islice(fh, lineno - 1, None), b"")
    except (OSError, *_DECOMPRESS_ERRORS):  # pragma: no cover - only used while reporting another error
        return "?"
    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _looks_like(line: str, reader: str) -> str:
    """A hint naming the reader that fits a mis-fed file (never the one that was called)."""
    guesses = [
        ("::" in line, "a ratings.dat (ML-1M / ML-10M)", "read_dat"),
        ("\t" in line, "a u.data (ML-100K)", "read_ml100k"),
        ("," in line, "a ratings.csv (ML-20M / ML-25M / ml-latest)", "read_ratings_csv"),
    ]
    for hit, what, fn in guesses:
        if hit and fn != reader:
            return f"; is this {what}? use {fn}"
    return ""


def _read_table(path: Path, compression: str | None, fmt: str, **kwargs: object) -> pd.DataFrame:
    """pandas' C parser with every tokenising problem turned into a ValueError naming the file."""
    try:
        with warnings.catch_warnings():
            # extra trailing fields would otherwise be dropped with only a warning
            warnings.simplefilter("error", pd.errors.ParserWarning)
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            return pd.read_csv(
                path,
                compression=compression,
                engine="c",
                index_col=False,
                skip_blank_lines=False,  # keeps row index == line number - offset
                **kwargs,  # type: ignore[arg-type]
            )
    except (pd.errors.ParserError, pd.errors.ParserWarning) as err:
        msg = str(err).replace("Error tokenizing data. C error: ", "")
        raise ValueError(f"{path}: malformed line ({msg.strip()}); expected {fmt}") from err
    except _DECOMPRESS_ERRORS as err:
        raise damaged_gzip_error(path, err) from None
    except UnicodeDecodeError as err:
        raise LogFileError(f"{path} is not UTF-8 text ({err.reason} at offset {err.start} of a chunk); "
                           f"expected {fmt}; re-save it as UTF-8") from None


def _drop_trailing_blank_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Blank lines at the end of a file are harmless; elsewhere they are reported as bad rows."""
    if len(df) == 0 or not df.iloc[-1].isna().all():
        return df
    filled = df.notna().any(axis=1).to_numpy()
    keep = int(np.flatnonzero(filled)[-1]) + 1 if filled.any() else 0
    return df.iloc[:keep]


def _numeric(col: pd.Series, *, integer: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Values as int64 / float32 plus a mask of bad rows (None when every row is fine)."""
    if pd.api.types.is_integer_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
        values = col.to_numpy(dtype=np.int64)
        return (values if integer else values.astype(np.float32)), None
    if pd.api.types.is_float_dtype(col.dtype):
        num = col.to_numpy(dtype=np.float64)
    elif pd.api.types.is_bool_dtype(col.dtype):
        num = np.full(len(col), np.nan)
    else:
        num = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(num)
        if integer:
            bad |= num != np.floor(num)
    if bad.any():
        return np.zeros(len(col), dtype=np.int64 if integer else np.float32), bad
    return (num.astype(np.int64) if integer else num.astype(np.float32)), None


def _build_frame(
    df: pd.DataFrame,
    columns: Mapping[str, object],
    path: Path,
    compression: str | None,
    fmt: str,
    first_data_line: int,
    separator_cols: tuple[object, ...] = (),
) -> pd.DataFrame:
    """Validate and convert the raw columns into user/item(/rating/timestamp) of fixed dtypes."""
    df = _drop_trailing_blank_rows(df)
    if len(df) == 0:
        raise ValueError(f"{path} has a header but no data rows; expected {fmt}")

    def where(mask: np.ndarray) -> str:
        n = int(mask.sum())
        first = int(np.flatnonzero(mask)[0]) + first_data_line
        return f"{n:,} row{'s' if n != 1 else ''} (first at line {first}: {_line_text(path, compression, first)})"

    problems: list[str] = []
    if any(df[c].count() for c in separator_cols):  # cheap per-column check; the mask only on failure
        stray = np.zeros(len(df), dtype=bool)
        for c in separator_cols:
            stray |= df[c].notna().to_numpy()
        problems.append(f"{where(stray)} not in the expected layout")

    out: dict[str, np.ndarray] = {}
    for name, src in columns.items():
        integer = name != "rating"
        values, bad = _numeric(df[src], integer=integer)
        if bad is not None:
            kind = "a missing or non-integer" if integer else "a missing or non-numeric"
            label = {"user": "user id", "item": "item id"}.get(name, name)
            problems.append(f"{where(bad)} with {kind} {label}")
        out[name] = values
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems) + f"; expected {fmt}; fix or remove those lines")
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- readers


def read_ml100k(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read an ML-100K ``u.data``: tab-separated ``user item rating timestamp``, no header.

    Plain or gzip-compressed. Returns columns ``user``, ``item`` (int64),
    ``rating`` (float32), ``timestamp`` (int64) in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, not tab-separated, or has a missing or
            non-numeric value (the message gives the count and first line).
    """
    path, comp = _check_file(path, _FMT_ML100K)
    first = _first_line(path, comp, _FMT_ML100K)
    fields = first.split("\t")
    if len(fields) != 4:
        raise ValueError(
            f"{path}: expected 4 tab-separated columns (user item rating timestamp) in line 1, "
            f"got {len(fields)}: {first[:80]!r}{_looks_like(first, 'read_ml100k')}"
        )
    raw = _read_table(path, comp, _FMT_ML100K, sep="\t", header=None, names=[0, 1, 2, 3])
    return _build_frame(
        raw, {"user": 0, "item": 1, "rating": 2, "timestamp": 3}, path, comp, _FMT_ML100K, first_data_line=1
    )


def read_dat(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read an ML-1M / ML-10M ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``, no header.

    Plain or gzip-compressed. The file is tokenised on single ``:`` by pandas'
    C parser (``sep='::'`` would need the slow Python engine); the fields
    between the two colons of every ``::`` must be empty, which is checked, so
    a line like ``1:2::3::4`` is rejected rather than misread. Returns columns
    ``user``, ``item`` (int64), ``rating`` (float32), ``timestamp`` (int64) in
    file order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, not ``::``-separated, or has a missing or
            non-numeric value (the message gives the count and first line).
    """
    path, comp = _check_file(path, _FMT_DAT)
    first = _first_line(path, comp, _FMT_DAT)
    fields = first.split("::")
    if len(fields) != 4:
        raise ValueError(
            f"{path}: expected 4 '::'-separated columns (UserID::MovieID::Rating::Timestamp) in line 1, "
            f"got {len(fields)}: {first[:80]!r}{_looks_like(first, 'read_dat')}"
        )
    raw = _read_table(path, comp, _FMT_DAT, sep=":", header=None, names=list(range(7)))
    return _build_frame(
        raw,
        {"user": 0, "item": 2, "rating": 4, "timestamp": 6},
        path,
        comp,
        _FMT_DAT,
        first_data_line=1,
        separator_cols=(1, 3, 5),
    )


_CSV_COLUMNS = {"userId": "user", "movieId": "item", "rating": "rating", "timestamp": "timestamp"}


def read_ratings_csv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a ``ratings.csv`` (ML-20M, ML-25M, ml-latest, ml-latest-small) or an implicit pair list.

    The header must name ``userId`` and ``movieId``; ``rating`` and
    ``timestamp`` are optional (a ``userId,movieId`` file, e.g. ml-1m-implicit,
    gives columns ``user``, ``item`` only). Other columns are ignored with a
    warning. LF or CRLF line ends, plain or gzip-compressed. Returns columns
    ``user``, ``item`` (int64) and, where present, ``rating`` (float32) and
    ``timestamp`` (int64), in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, not comma-separated, lacks a header or a
            required column, or has a missing or non-numeric value.
    """
    path, comp = _check_file(path, _FMT_CSV)
    first = _first_line(path, comp, _FMT_CSV)
    header = [h.strip() for h in first.split(",")]
    if len(header) < 2:
        raise ValueError(
            f"{path}: expected a comma-separated header 'userId,movieId[,rating,timestamp]' in line 1, "
            f"got 1 column: {first[:80]!r}{_looks_like(first, 'read_ratings_csv')}"
        )
    missing = [c for c in ("userId", "movieId") if c not in header]
    if missing:
        if all(re.fullmatch(r"[-+.\deE]+", h or "x") for h in header):
            raise ValueError(
                f"{path}: line 1 {first[:80]!r} is data, not a header; expected {_FMT_CSV}; "
                "add the header line 'userId,movieId,rating,timestamp' (or 'userId,movieId')"
            )
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)} in the header {header}; expected {_FMT_CSV}; "
            "rename the columns (or use recvae.data.read_interactions_file for other logs)"
        )
    dupes = sorted({h for h in header if h in _CSV_COLUMNS and header.count(h) > 1})
    if dupes:
        raise ValueError(f"{path}: column(s) {', '.join(dupes)} appear more than once in the header {header}")
    extra = [h for h in header if h not in _CSV_COLUMNS]
    if extra:
        logger.warning("%s: ignoring column(s) %s (not part of a MovieLens ratings file)", path, extra)
    positions = {h: i for i, h in enumerate(header)}
    raw = _read_table(path, comp, _FMT_CSV, sep=",", header=None, skiprows=1, names=list(range(len(header))))
    columns = {_CSV_COLUMNS[c]: positions[c] for c in _CSV_COLUMNS if c in positions}
    return _build_frame(raw, columns, path, comp, _FMT_CSV, first_data_line=2)
