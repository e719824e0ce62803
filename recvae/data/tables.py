"""Tables to files by suffix (.parquet, .csv, .json, .jsonl), written atomically, streamed when large.

Every writer honours the suffix of the path it is given or refuses it; nothing
is written under a name whose suffix says another format. A file appears only
when complete: rows go to a temporary sibling that is renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from recvae.data.writing import atomic_file, create_exclusive

__all__ = ["TABLE_SUFFIXES", "EMBEDDING_SUFFIXES", "table_format", "check_output_path", "check_table_output",
           "write_table", "TableWriter", "read_table", "read_ids_table", "write_embeddings", "embeddings_as_lists",
           "list_data_files"]

TABLE_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "jsonl"}
#: what :func:`write_embeddings` writes: a table, or NumPy arrays (.npy)
EMBEDDING_SUFFIXES = {**TABLE_SUFFIXES, ".npy": "npy"}


def table_format(path: str | os.PathLike, allowed: dict[str, str] | None = None) -> str:
    """The format named by ``path``'s suffix; ValueError listing the accepted suffixes otherwise."""
    allowed = TABLE_SUFFIXES if allowed is None else allowed
    suffix = Path(path).suffix.lower()
    if suffix not in allowed:
        raise ValueError(
            f"{path}: unknown output format {suffix or '(no suffix)'!r}; end the name with "
            f"{', '.join(sorted(allowed))}"
        )
    return allowed[suffix]


def check_output_path(path: str | os.PathLike, *, directory: bool = False) -> Path:
    """Check, before any work, that ``path`` can be written: no file on its way, a writable parent.

    The nearest existing folder on the way is probed by creating (and at once removing) a
    file in it, so a place the permission bits call writable but that refuses new files
    (``/proc``, a read-only mount, root on a foreign file system) is refused too. A run
    directory (``directory=True``) is written beside itself, so its parent is probed.
    Raises ValueError with a one-line reason.
    """
    path = Path(path).expanduser()
    if path.exists():
        if directory and not path.is_dir():
            raise ValueError(f"{path}: is a file; give a directory")
        if not directory and path.is_dir():
            raise ValueError(f"{path}: is a directory; give a file name")
    probe = path.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{path}: cannot be created, {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: cannot be written, {probe} is not writable; choose another output")
    try:
        tmp, fd = create_exclusive(probe / path.name, suffix=".probe")
    except OSError as err:
        raise ValueError(f"{path}: cannot be written, {probe} refuses new files ({err.strerror or err}); "
                         "choose another output") from None
    os.close(fd)
    tmp.unlink(missing_ok=True)
    return path


def check_table_output(path: str | os.PathLike, allowed: dict[str, str] | None = None) -> str:
    """Before any work: the format ``path``'s suffix names (refusing unknown ones) and a writable place for it."""
    fmt = table_format(path, allowed)
    check_output_path(path)
    return fmt


def _json_value(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _records(frame: pd.DataFrame) -> list[dict]:
    columns = list(frame.columns)
    return [{c: _json_value(v) for c, v in zip(columns, row)} for row in frame.itertuples(index=False, name=None)]


class TableWriter:
    """Append DataFrames with the same columns to one file, as its suffix says; atomic on close.

    Use as a context manager. Rows go to a fresh temporary sibling (see
    :func:`recvae.data.writing.atomic_file`: never through a link, mode ``0o666 & ~umask``)
    renamed to ``path`` on a clean exit; on an exception (a full disk included: a one-line
    :class:`~recvae.data.writing.DiskFullError`) it is removed and nothing appears at ``path``.
    """

    def __init__(self, path: str | os.PathLike, allowed: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.format = table_format(self.path, allowed)
        self.rows = 0
        self._parquet = None
        self._started = False
        self._stack: contextlib.ExitStack | None = None
        self._handle = None

    def __enter__(self) -> TableWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            self._handle = stack.enter_context(atomic_file(self.path, text=self.format != "parquet"))
            if self.format == "json":
                self._handle.write("[")
            self._stack = stack.pop_all()
        return self

    def write(self, frame: pd.DataFrame) -> None:
        """Append ``frame``'s rows (the columns of the first frame)."""
        if frame.attrs:
            frame = frame.copy(deep=False)
            frame.attrs = {}  # metadata such as skipped users is not part of the table
        if self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self._handle, table.schema)
            self._parquet.write_table(table.cast(self._parquet.schema))
        elif self.format == "csv":
            frame.to_csv(self._handle, index=False, header=not self._started)
        else:
            for record in _records(frame):
                if self.format == "json":
                    self._handle.write(("," if self.rows else "") + "\n" + json.dumps(record))
                else:
                    self._handle.write(json.dumps(record) + "\n")
                self.rows += 1
            self._started = True
            return
        self._started = True
        self.rows += len(frame)

    def _finish(self) -> None:
        if self.format == "json":
            self._handle.write("\n]\n")
        if self.format == "parquet":
            if self._parquet is None:
                raise ValueError(f"{self.path}: no table was written (no columns known); nothing to save")
            self._parquet.close()

    def __exit__(self, exc_type, exc, tb) -> bool:
        stack, self._stack = self._stack, None
        if exc_type is None:
            try:
                self._finish()
            except BaseException as err:
                stack.__exit__(type(err), err, err.__traceback__)  # removes the file; may raise a better error
                raise
            stack.__exit__(None, None, None)  # renames the file into place
            return False
        if self._parquet is not None:
            with contextlib.suppress(Exception):
                self._parquet.close()
        return stack.__exit__(exc_type, exc, tb)


def write_table(frame: pd.DataFrame, path: str | os.PathLike, allowed: dict[str, str] | None = None) -> Path:
    """Write one DataFrame to ``path`` in the format of its suffix, atomically."""
    with TableWriter(path, allowed) as writer:
        writer.write(frame)
    return Path(path)


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A small table (ids, lists) by suffix: .csv/.tsv (a single column is fine), .parquet, .json, .jsonl.

    Raises ValueError (one line) for an unknown suffix or a file that does not parse.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".txt"):
            return pd.read_csv(path)
        if suffix == ".tsv":
            return pd.read_csv(path, sep="\t")
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix == ".json":
            return pd.read_json(path)
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True)
    except (ValueError, UnicodeDecodeError, OSError) as err:
        raise ValueError(f"{path}: cannot be read as a {suffix[1:]} table ({' '.join(str(err).split())[:200]})") from None
    raise ValueError(f"{path}: unknown table format {suffix or '(no suffix)'!r}; use .csv, .tsv, .parquet, .json "
                     "or .jsonl")


def read_ids_table(path: str | os.PathLike, required: str | None = None,
                   aliases: dict[str, str] | None = None) -> pd.DataFrame:
    """A table of raw ids (:func:`read_table`): a ``user_id`` and/or an ``item_id`` column, or the ``required``
    one. ``aliases`` names other columns that mean them (the log's own, e.g. ``{"customer": "user_id"}``),
    used where the standard name is absent. Raises ValueError naming the columns the file has otherwise,
    or when it has no rows."""
    frame = read_table(path)
    renames = {alias: name for alias, name in (aliases or {}).items()
               if alias in frame.columns and name not in frame.columns and alias != name}
    frame = frame.rename(columns=renames)
    wanted = (required,) if required else ("user_id", "item_id")
    if not any(column in frame.columns for column in wanted):
        raise ValueError(f"{path}: expected {' and/or '.join(wanted)} column{'s' * (len(wanted) > 1)}; "
                         f"the columns are {list(frame.columns)}")
    if frame.empty:
        raise ValueError(f"{path}: the table has no rows")
    return frame


def list_data_files(directory: str | os.PathLike) -> list[tuple[Path, int]]:
    """Every file under ``directory`` (hidden ones excepted) as (path relative to it, size in bytes), sorted."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory")
    return [(p.relative_to(root), p.stat().st_size) for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]


def embeddings_as_lists(frame: pd.DataFrame) -> pd.DataFrame:
    """One array column per vector: ``id, mu, sigma`` (or ``id, embedding``), each cell a float32 list, the
    layout a vector store loads (from ``id, mu_0.., sigma_0..`` or ``id, emb_0..``)."""
    out = frame.iloc[:, :1].copy()
    for name, pattern in (("mu", "^mu_"), ("sigma", "^sigma_"), ("embedding", "^emb_")):
        block = frame.filter(regex=pattern).to_numpy(np.float32)
        if block.shape[1]:
            out[name] = list(block)
    if "uncertainty" in frame.columns:  # a number per user (Run.embed_users(uncertainty=True)), kept as it is
        out["uncertainty"] = frame["uncertainty"].to_numpy(np.float32)
    return out


def write_embeddings(frame: pd.DataFrame, path: str | os.PathLike, *, layout: str = "columns") -> list[Path]:
    """Write embeddings (an id column, then ``mu_*``/``sigma_*`` or ``emb_*`` columns) by ``path``'s suffix.

    ``layout="list"`` writes one array column per vector instead (:func:`embeddings_as_lists`;
    .parquet, .json or .jsonl). A table suffix writes the frame as it is. ``.npy`` writes float32 arrays: ``FILE.npy`` the
    ``mu_*`` (or ``emb_*``) columns, ``FILE_sigma.npy`` the ``sigma_*`` ones when there are any,
    ``FILE_ids.npy`` the id of each row (strings as a unicode array) and ``FILE_uncertainty.npy`` an
    ``uncertainty`` column when there is one. Each file appears
    whole (:func:`recvae.data.writing.atomic_file`: a temporary sibling renamed into place,
    removed on failure). Returns the paths written.
    """
    path = Path(path)
    fmt = table_format(path, EMBEDDING_SUFFIXES)
    if layout not in ("columns", "list"):
        raise ValueError(f"layout {layout!r}: choose 'columns' (one column per dimension) or 'list' (one array "
                         "column per vector)")
    if layout == "list":
        if fmt not in ("parquet", "json", "jsonl"):
            raise ValueError(f"{path}: the list layout needs .parquet, .json or .jsonl (a {fmt} file has no array "
                             "columns); use the columns layout there")
        return [write_table(embeddings_as_lists(frame), path, EMBEDDING_SUFFIXES)]
    if fmt != "npy":
        return [write_table(frame, path, EMBEDDING_SUFFIXES)]
    ids = frame.iloc[:, 0].to_numpy()
    arrays = [(path, frame.filter(regex="^(mu|emb)_").to_numpy(np.float32)),
              (path.with_name(f"{path.stem}_sigma.npy"), frame.filter(regex="^sigma_").to_numpy(np.float32)),
              (path.with_name(f"{path.stem}_ids.npy"), ids.astype(str) if ids.dtype == object else ids)]
    if "uncertainty" in frame.columns:
        arrays.append((path.with_name(f"{path.stem}_uncertainty.npy"), frame["uncertainty"].to_numpy(np.float32)))
    written = []
    for target, values in arrays:
        if values.ndim == 2 and not values.shape[1]:
            continue  # no sigma columns: a point embedding
        with atomic_file(target) as handle:
            np.save(handle, values)
        written.append(target)
    return written
