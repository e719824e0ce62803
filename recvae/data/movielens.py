"""Readers and a verified downloader for every published MovieLens format.

Three on-disk formats cover all GroupLens releases:

* ``u.data`` (ML-100K): tab-separated ``user item rating timestamp``, no header
  -> :func:`read_ml100k`;
* ``ratings.dat`` (ML-1M, ML-10M): ``UserID::MovieID::Rating::Timestamp``, no
  header -> :func:`read_dat`;
* ``ratings.csv`` (ML-20M, ML-25M, ml-latest, ml-latest-small): comma-separated
  with the header ``userId,movieId,rating,timestamp`` (also an implicit pair
  list with just ``userId,movieId``) -> :func:`read_ratings_csv`.

Every reader returns a :class:`pandas.DataFrame` with the columns ``user``,
``item`` (int64), ``rating`` (float32) and ``timestamp`` (int64) -- the last two
only where the file has them -- in the file's row order (the split of Liang et
al. depends on it). Plain and gzip-compressed files are both accepted.

:data:`MOVIELENS` describes the official releases; :func:`download_movielens`
fetches, verifies and extracts one, :func:`read_movielens` finds (or downloads)
and reads one. The preprocessing into :class:`recvae.data.Interactions` lives
elsewhere (``load_movielens``).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import itertools
import logging
import os
import re
import shutil
import tempfile
import types
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from recvae.data.interactions import Interactions
from recvae.data.sniff import (
    LogFileError,
    LogFileNotFoundError,
    check_text_head,
    damaged_gzip_error,
    read_zipped_ratings,
    sniff_file,
)

try:
    from tqdm.auto import tqdm as _tqdm
except ImportError:  # pragma: no cover - tqdm is a declared dependency
    _tqdm = None

logger = logging.getLogger(__name__)

__all__ = [
    "MOVIELENS",
    "MovieLensSpec",
    "DatasetUnavailableError",
    "ChecksumMismatchError",
    "read_ml100k",
    "read_dat",
    "read_ratings_csv",
    "read_movielens",
    "download_movielens",
    "read_movielens_file",
    "load_movielens",
]

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


class DatasetUnavailableError(RuntimeError):
    """A dataset could not be downloaded (offline, URL unreachable, truncated transfer)."""


class ChecksumMismatchError(RuntimeError):
    """A downloaded (or cached) archive does not match its expected checksum."""


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


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class MovieLensSpec:
    """One GroupLens release: where to get it and how to read its ratings.

    Attributes:
        name: registry key, e.g. ``"ml-1m"``.
        url: official download URL of the zip.
        zip_name: file name of the zip (also its name under ``data_dir``).
        member: path of the ratings file inside the zip, e.g. ``"ml-1m/ratings.dat"``;
            it is extracted to ``data_dir / member``.
        reader: the function reading that file into a DataFrame.
        sha256: SHA-256 of the zip, or None when not known.
        md5: MD5 of the zip as GroupLens publishes it beside the zip
            (``<url>.md5``), or None when not pinned (the ``latest`` releases change).
        ratings, users, items: size of the release as documented by GroupLens
            (items = distinct rated movies), for documentation; None when it changes.
        description: one line about the release.
    """

    name: str
    url: str
    zip_name: str
    member: str
    reader: Callable[[str | os.PathLike[str]], pd.DataFrame]
    sha256: str | None = None
    md5: str | None = None
    ratings: int | None = None
    users: int | None = None
    items: int | None = None
    description: str = ""


_BASE_URL = "https://files.grouplens.org/datasets/movielens/"


def _spec(name: str, member: str, reader: Callable[..., pd.DataFrame], **kwargs: object) -> MovieLensSpec:
    zip_name = f"{name}.zip"
    return MovieLensSpec(name=name, url=_BASE_URL + zip_name, zip_name=zip_name, member=member, reader=reader, **kwargs)  # type: ignore[arg-type]


MOVIELENS: Mapping[str, MovieLensSpec] = types.MappingProxyType(
    {
        "ml-100k": _spec(
            "ml-100k", "ml-100k/u.data", read_ml100k,
            md5="0e33842e24a9c977be4e0107933c0723", ratings=100_000, users=943, items=1_682,
            description="MovieLens 100K (1998): ratings 1-5, every user has >= 20 ratings",
        ),
        "ml-1m": _spec(
            "ml-1m", "ml-1m/ratings.dat", read_dat,
            md5="c4d9eecfca2ab87c1945afe126590906", ratings=1_000_209, users=6_040, items=3_706,
            description="MovieLens 1M (2003): ratings 1-5, every user has >= 20 ratings",
        ),
        "ml-10m": _spec(
            "ml-10m", "ml-10M100K/ratings.dat", read_dat,
            md5="ce571fd55effeba0271552578f2648bd", ratings=10_000_054, users=69_878, items=10_677,
            description="MovieLens 10M (2009): half-star ratings 0.5-5; the zip unpacks to ml-10M100K/",
        ),
        "ml-20m": _spec(
            "ml-20m", "ml-20m/ratings.csv", read_ratings_csv,
            md5="cd245b17a1ae2cc31bb14903e1204af3", ratings=20_000_263, users=138_493, items=26_744,
            description="MovieLens 20M (2015): half-star ratings 0.5-5",
        ),
        "ml-25m": _spec(
            "ml-25m", "ml-25m/ratings.csv", read_ratings_csv,
            md5="6b51fb2759a8657d3bfcbfc42b592ada", ratings=25_000_095, users=162_541, items=59_047,
            description="MovieLens 25M (2019): half-star ratings 0.5-5",
        ),
        "ml-latest-small": _spec(
            "ml-latest-small", "ml-latest-small/ratings.csv", read_ratings_csv,
            ratings=100_836, users=610, items=9_724,
            description="MovieLens latest-small (counts of the 2018-09 release; may be re-released)",
        ),
        "ml-latest": _spec(
            "ml-latest", "ml-latest/ratings.csv", read_ratings_csv,
            description="MovieLens latest full (re-released periodically; size changes)",
        ),
    }
)


def _resolve(name: str | MovieLensSpec) -> MovieLensSpec:
    if isinstance(name, MovieLensSpec):
        return name
    key = str(name).strip().lower()
    if key not in MOVIELENS:
        raise ValueError(f"unknown MovieLens dataset {name!r}; known: {', '.join(MOVIELENS)}")
    return MOVIELENS[key]


# --------------------------------------------------------------------------- download


def _hashes(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def _mismatch(expected_sha: str | None, expected_md5: str | None, sha: str, md5: str) -> str | None:
    """None when the hashes match what is expected, else a description of both hashes."""
    parts = []
    if expected_sha is not None and expected_sha.lower() != sha:
        parts.append(f"sha256 expected {expected_sha.lower()}, got {sha}")
    if expected_md5 is not None and expected_md5.lower() != md5:
        parts.append(f"md5 expected {expected_md5.lower()}, got {md5}")
    return "; ".join(parts) or None


def _fetch_published_md5(url: str, timeout: float) -> str | None:
    """The MD5 GroupLens publishes at ``<zip url>.md5`` (``MD5 (x.zip) = <hex>``), or None."""
    try:
        with urllib.request.urlopen(_request(url), timeout=timeout) as resp:
            text = resp.read(4096).decode("ascii", errors="replace")
    except (*_NETWORK_ERRORS, ValueError) as err:
        logger.debug("could not fetch %s: %s", url, err)
        return None
    match = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    return match.group(0).lower() if match else None


def _request(url: str) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"User-Agent": "recvae (MovieLens downloader)"})


def _unavailable(spec: MovieLensSpec, url: str, err: object, zip_path: Path, target: Path) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        f"could not download MovieLens {spec.name!r} from {url}: {err}. "
        f"Expected the ratings file at {target}. "
        f"To install it by hand: on a machine with network access download {spec.url} and copy it to "
        f"{zip_path} (it is verified and extracted on the next call), or unzip it so that {target} "
        f"exists (a gzip-compressed {target.name}.gz beside it works too)"
    )


class _Unreachable(Exception):
    """Internal: the network side of a transfer failed (never escapes this module)."""


_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError)


def _stream_to(url: str, fh: BinaryIO, timeout: float, desc: str) -> tuple[str, str]:
    """Copy ``url`` into ``fh``; returns (sha256, md5).

    Failures on the network side raise :class:`_Unreachable`; failures writing
    ``fh`` (disk full) propagate unchanged.
    """
    sha, md5 = hashlib.sha256(), hashlib.md5()
    try:
        resp = urllib.request.urlopen(_request(url), timeout=timeout)
    except _NETWORK_ERRORS as err:
        raise _Unreachable(err) from err
    with resp:
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        bar = None
        if _tqdm is not None:
            bar = _tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=None, leave=False)
        received = 0
        try:
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except _NETWORK_ERRORS as err:
                    raise _Unreachable(err) from err
                if not chunk:
                    break
                fh.write(chunk)
                sha.update(chunk)
                md5.update(chunk)
                received += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and received != total:
        raise _Unreachable(f"transfer truncated: received {received:,} of {total:,} bytes")
    return sha.hexdigest(), md5.hexdigest()


def _download_zip(
    spec: MovieLensSpec, url: str, zip_path: Path, target: Path,
    expected_sha: str | None, expected_md5: str | None, timeout: float,
) -> None:
    """Download to a temp file beside ``zip_path``, verify, then move it into place atomically."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{zip_path.name}.", suffix=".part", dir=zip_path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            logger.info("downloading %s -> %s", url, zip_path)
            try:
                sha, md5 = _stream_to(url, fh, timeout, desc=zip_path.name)
            except _Unreachable as err:
                raise _unavailable(spec, url, err, zip_path, target) from err.__cause__
        problem = _mismatch(expected_sha, expected_md5, sha, md5)
        if problem:
            raise ChecksumMismatchError(
                f"checksum mismatch for {url}: {problem}; the download was deleted. "
                "Retry (the transfer may have been corrupted); if GroupLens re-released the file, "
                "pass the new checksum (sha256=/md5=) or verify the zip by hand and copy it to "
                f"{zip_path}"
            )
        if expected_sha is None and expected_md5 is None:
            logger.warning("%s was NOT verified (no checksum known); sha256=%s md5=%s", url, sha, md5)
        else:
            logger.info("verified %s (sha256=%s)", zip_path.name, sha)
        os.replace(tmp, zip_path)
    finally:
        tmp.unlink(missing_ok=True)


def _extract_member(zip_path: Path, member: str, target: Path) -> None:
    """Extract one member of the zip to ``target`` through a temp file (atomic)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = zf.namelist()
            chosen = member
            if member not in names:
                base = member.rsplit("/", 1)[-1]
                candidates = [n for n in names if n == base or n.endswith("/" + base)]
                if len(candidates) != 1:
                    shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
                    raise ValueError(
                        f"{zip_path} has no member {member!r} (members: {shown}); "
                        "is this the right archive? delete it and download again (force=True)"
                    )
                chosen = candidates[0]
                logger.info("%s: using member %s for %s", zip_path, chosen, member)
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as out, zf.open(chosen) as src:
                    shutil.copyfileobj(src, out, _CHUNK)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
    except zipfile.BadZipFile as err:
        raise ValueError(
            f"{zip_path} is not a valid zip archive ({err}); delete it and download again (force=True)"
        ) from err
    logger.info("extracted %s -> %s", member, target)


def download_movielens(
    name: str | MovieLensSpec,
    data_dir: str | os.PathLike[str] = "data",
    *,
    url: str | None = None,
    force: bool = False,
    sha256: str | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download, verify and extract the ratings file of an official MovieLens release.

    The zip is saved as ``data_dir / spec.zip_name`` and the ratings file
    extracted to ``data_dir / spec.member`` (the layout ``unzip`` gives, e.g.
    ``data/ml-1m/ratings.dat``); both are written through a temp file in the
    same directory and moved into place with :func:`os.replace`, so an
    interrupted run never leaves a partial file under the final name. When the
    ratings file already exists nothing is done (unless ``force``); when only the
    zip exists it is verified and extracted without downloading.

    Verification uses ``sha256``/``md5`` when given (they replace the spec's
    checksums), else the spec's; when neither is known the MD5 that GroupLens
    publishes at ``<url>.md5`` is fetched, and when that is unavailable too the
    download proceeds with a logged warning.

    Args:
        name: a key of :data:`MOVIELENS` (e.g. ``"ml-1m"``) or a custom :class:`MovieLensSpec`.
        data_dir: directory for the zip and the extracted file (created if needed).
        url: download from here instead of ``spec.url`` (a mirror, or a ``file://`` URL).
        force: download and extract again even when the files exist.
        sha256, md5: expected checksums of the zip, overriding the spec's.
        timeout: socket timeout in seconds.

    Returns:
        The path of the extracted ratings file.

    Raises:
        ValueError: unknown name, or an archive that is not a zip / lacks the member.
        DatasetUnavailableError: the URL cannot be reached (offline, 404, truncated transfer).
        ChecksumMismatchError: the download (or a cached zip) does not match its checksum.
    """
    spec = _resolve(name)
    data_dir = Path(data_dir)
    target = data_dir / spec.member
    zip_path = data_dir / spec.zip_name
    src = url or spec.url
    if target.exists() and not force:
        logger.debug("%s already present at %s", spec.name, target)
        return target
    if sha256 is not None or md5 is not None:
        expected_sha, expected_md5 = sha256, md5
    else:
        expected_sha, expected_md5 = spec.sha256, spec.md5
    data_dir.mkdir(parents=True, exist_ok=True)

    if zip_path.exists() and not force:
        if expected_sha is None and expected_md5 is None:
            logger.info("using cached %s (no checksum known, not verified)", zip_path)
        else:
            problem = _mismatch(expected_sha, expected_md5, *_hashes(zip_path))
            if problem:
                raise ChecksumMismatchError(
                    f"cached archive {zip_path} does not match its checksum: {problem}; "
                    "delete it or call download_movielens(..., force=True) to download it again"
                )
    else:
        if expected_sha is None and expected_md5 is None:
            expected_md5 = _fetch_published_md5(src + ".md5", timeout)
            if expected_md5 is None:
                logger.warning(
                    "no checksum is known for %s and %s.md5 could not be fetched: "
                    "the download will NOT be verified",
                    spec.name,
                    src,
                )
            else:
                logger.info("verifying %s against the published md5 %s", spec.zip_name, expected_md5)
        _download_zip(spec, src, zip_path, target, expected_sha, expected_md5, timeout)
    _extract_member(zip_path, spec.member, target)
    return target


# --------------------------------------------------------------------------- read by name


def _candidates(spec: MovieLensSpec, data_dir: Path) -> list[Path]:
    base = spec.member.rsplit("/", 1)[-1]
    paths: list[Path] = []
    for p in (data_dir / spec.name / base, data_dir / spec.member):
        for q in (p, p.with_name(p.name + ".gz")):
            if q not in paths:
                paths.append(q)
    return paths


def read_movielens(
    name: str | MovieLensSpec,
    data_dir: str | os.PathLike[str] = "data",
    download: bool = True,
) -> pd.DataFrame:
    """Read the raw ratings of a MovieLens release, downloading it when missing.

    Looks for ``data_dir/<name>/<file>``, then ``data_dir/<member path>`` (e.g.
    ``data/ml-10M100K/ratings.dat``), each also with a ``.gz`` suffix. When none
    exists and ``download`` is true, :func:`download_movielens` fetches it.

    Returns:
        The DataFrame of the release's reader (``user``, ``item``, ``rating``,
        ``timestamp``), in file order, unfiltered.

    Raises:
        ValueError: unknown name (the message lists the known ones) or a malformed file.
        FileNotFoundError: the file is absent and ``download`` is false.
        DatasetUnavailableError, ChecksumMismatchError: see :func:`download_movielens`.
    """
    spec = _resolve(name)
    data_dir = Path(data_dir)
    candidates = _candidates(spec, data_dir)
    for path in candidates:
        if path.is_file():
            logger.info("reading %s from %s", spec.name, path)
            return spec.reader(path)
    if not download:
        raise FileNotFoundError(
            f"MovieLens {spec.name!r} not found under {data_dir} (looked for "
            f"{', '.join(str(p) for p in candidates)}); pass download=True to fetch {spec.url}, "
            f"or place the file at {candidates[0]}"
        )
    return spec.reader(download_movielens(spec, data_dir))


def read_movielens_file(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a MovieLens ratings file of any published format, chosen by its name.

    ``u.data`` (100K), ``*.dat`` (1M, 10M: ``::``-separated) and ``*.csv``
    (20M, 25M, latest), each plain or ``.gz``; or a zip archive holding exactly
    one of them (e.g. a GroupLens release zip), read from inside it.
    """
    if Path(path).is_file() and sniff_file(path) == "zip":
        return read_zipped_ratings(Path(path), read_movielens_file)
    name = Path(path).name.lower().removesuffix(".gz")
    if name == "u.data" or name.endswith(".data"):
        return read_ml100k(path)
    if name.endswith(".dat"):
        return read_dat(path)
    if name.endswith(".csv"):
        return read_ratings_csv(path)
    raise ValueError(
        f"cannot tell the MovieLens format of {path}: expected u.data, ratings.dat or ratings.csv "
        "(optionally .gz); for another log use recvae.data.read_log"
    )


def load_movielens(
    name_or_path: str | os.PathLike[str] | MovieLensSpec,
    data_dir: str | os.PathLike[str] = "data",
    download: bool = True,
    **preprocessing: object,
):
    """A MovieLens release (by name, downloaded when missing) or file, preprocessed.

    Applies Liang et al.'s preprocessing by default (rating > 3.5, users with
    >= 5 events; files without ratings keep every pair). ``preprocessing``
    overrides :meth:`recvae.data.Interactions.from_dataframe`'s keyword arguments.
    """
    if isinstance(name_or_path, MovieLensSpec) or str(name_or_path).lower() in MOVIELENS:
        log = read_movielens(name_or_path, data_dir=data_dir, download=download)
    else:
        log = read_movielens_file(name_or_path)
    return Interactions.from_dataframe(log, **preprocessing)
