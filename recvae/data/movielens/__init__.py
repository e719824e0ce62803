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
and reads one, :func:`load_movielens` reads and preprocesses one into
:class:`recvae.data.Interactions`.

The package's rooms:

- :mod:`~recvae.data.movielens.readers`: the three formats' readers and the file,
  line and column checks they share;
- :mod:`~recvae.data.movielens.registry`: :class:`MovieLensSpec` and :data:`MOVIELENS`;
- :mod:`~recvae.data.movielens.download`: downloading, verifying and extracting a
  release's zip;
- :mod:`~recvae.data.movielens.load`: a release by name or a file by its name, read,
  and preprocessed with the published protocol.
"""

from recvae.data.movielens.download import ChecksumMismatchError, DatasetUnavailableError, download_movielens
from recvae.data.movielens.load import cache_status, load_movielens, read_movielens, read_movielens_file
from recvae.data.movielens.readers import read_dat, read_ml100k, read_ratings_csv
from recvae.data.movielens.registry import MOVIELENS, MovieLensSpec

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
    "cache_status",
]
