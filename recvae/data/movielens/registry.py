"""The official MovieLens releases: where each is published and how its ratings are read."""

from __future__ import annotations

import os
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pandas as pd

from recvae.data.movielens.readers import read_dat, read_ml100k, read_ratings_csv

__all__ = ["MOVIELENS", "MovieLensSpec", "MOVIELENS_RATING_SCALE"]

#: MovieLens ratings lie in 0.5..5 (half stars in the newer releases, 1..5 in 100K/1M).
MOVIELENS_RATING_SCALE = (0.5, 5.0)


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
