"""A verified downloader for the MovieLens releases: fetch the zip, check its checksum, extract the ratings.

Every file is written through a temporary file in the same directory and moved
into place with :func:`os.replace`, so an interrupted run never leaves a partial
file under the final name. Network failures become :class:`DatasetUnavailableError`
(with how to install the release by hand), checksum failures
:class:`ChecksumMismatchError`.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import BinaryIO

from recvae.data.movielens.readers import _CHUNK
from recvae.data.movielens.registry import MovieLensSpec, _resolve

try:
    from tqdm.auto import tqdm as _tqdm
except ImportError:  # pragma: no cover - tqdm is a declared dependency
    _tqdm = None

logger = logging.getLogger(__package__)  # the package's logger, "recvae.data.movielens"

__all__ = ["DatasetUnavailableError", "ChecksumMismatchError", "download_movielens"]


class DatasetUnavailableError(RuntimeError):
    """A dataset could not be downloaded (offline, URL unreachable, truncated transfer)."""


class ChecksumMismatchError(RuntimeError):
    """A downloaded (or cached) archive does not match its expected checksum."""


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
        _check_cached_zip(zip_path, expected_sha, expected_md5)
    else:
        if expected_sha is None and expected_md5 is None:
            expected_md5 = _published_md5(spec, src, timeout)
        _download_zip(spec, src, zip_path, target, expected_sha, expected_md5, timeout)
    _extract_member(zip_path, spec.member, target)
    return target


def _check_cached_zip(zip_path: Path, expected_sha: str | None, expected_md5: str | None) -> None:
    """Verify a zip already under ``data_dir`` (only logged when no checksum is known)."""
    if expected_sha is None and expected_md5 is None:
        logger.info("using cached %s (no checksum known, not verified)", zip_path)
        return
    problem = _mismatch(expected_sha, expected_md5, *_hashes(zip_path))
    if problem:
        raise ChecksumMismatchError(
            f"cached archive {zip_path} does not match its checksum: {problem}; "
            "delete it or call download_movielens(..., force=True) to download it again"
        )


def _published_md5(spec: MovieLensSpec, src: str, timeout: float) -> str | None:
    """The MD5 published beside ``src`` for a release with no known checksum; None (with a warning) without one."""
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
    return expected_md5
