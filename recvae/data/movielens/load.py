"""A MovieLens release found by name (downloaded when missing) or a ratings file of any format, read and
preprocessed with the published protocol (Liang et al.: rating > 3.5, users with >= 5 events)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from recvae.data.interactions import Interactions
from recvae.data.movielens.download import download_movielens
from recvae.data.movielens.readers import read_dat, read_ml100k, read_ratings_csv
from recvae.data.movielens.registry import MOVIELENS, MOVIELENS_RATING_SCALE, MovieLensSpec, _resolve
from recvae.data.sniff import read_zipped_ratings, sniff_file

logger = logging.getLogger(__package__)  # the package's logger, "recvae.data.movielens"

__all__ = ["read_movielens", "read_movielens_file", "load_movielens", "cache_status"]


def _candidates(spec: MovieLensSpec, data_dir: Path) -> list[Path]:
    base = spec.member.rsplit("/", 1)[-1]
    paths: list[Path] = []
    for p in (data_dir / spec.name / base, data_dir / spec.member):
        for q in (p, p.with_name(p.name + ".gz")):
            if q not in paths:
                paths.append(q)
    return paths


def cache_status(name: str | MovieLensSpec, data_dir: str | os.PathLike[str] = "data") -> str:
    """Where a release stands in the cache ``data_dir``: its ratings file, its zip (extracted on first use),
    or not cached (downloaded on first use)."""
    spec = _resolve(name)
    data_dir = Path(data_dir)
    cached = next((p for p in _candidates(spec, data_dir) if p.is_file()), None)
    if cached is not None:
        return f"cached: {cached}"
    if (data_dir / spec.zip_name).is_file():
        return f"zip cached: {data_dir / spec.zip_name} (extracted on first use)"
    return "not cached (downloaded on first use)"


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

    Ratings off the MovieLens scale (``rating_scale``, 0.5-5 by default) are never
    positives, as in :func:`recvae.data.logs.read_log`: they are dropped, counted in
    ``report.invalid_ratings`` and logged as a warning; ``strict=True`` refuses them.
    """
    if isinstance(name_or_path, MovieLensSpec) or str(name_or_path).lower() in MOVIELENS:
        log = read_movielens(name_or_path, data_dir=data_dir, download=download)
    else:
        log = read_movielens_file(name_or_path)
    preprocessing.setdefault("rating_scale", MOVIELENS_RATING_SCALE)
    return Interactions.from_dataframe(log, **preprocessing)
