"""A practitioner's interaction log: read it, name its columns, say what each column means.

:func:`read_log` takes a file (CSV/TSV/Parquet, plain or gzip; MovieLens
``u.data``/``ratings.dat``/``ratings.csv``), a MovieLens release name or a pandas
DataFrame and returns an :class:`InteractionLog`: the raw events with their
columns given roles (user, item, rating, timestamp) and the notes a user should
read about those choices. Nothing is guessed silently:

- user and item columns are found by common names (``user``, ``user_id``,
  ``userId``, ``customer_id`` ...; ``item``, ``movieId``, ``product_id``, ``sku`` ...)
  unless named; every missing one is reported in one message;
- a column named ``rating`` is the rating; a numeric column that *looks* like a
  rating (named ``score``, ``stars`` ... or holding a few small values) but was
  not named is refused, with the way to name it or to declare the log implicit;
- other columns are listed as ignored.

:meth:`InteractionLog.interactions` applies the positive-feedback preprocessing
(:meth:`Interactions.from_dataframe`), and :meth:`InteractionLog.seen_rows` gives
every raw event of the kept users (any rating, duplicates included): what a
user has already seen, for filtering recommendations.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recvae.data.ids import find_ids, normalise_ids
from recvae.data.files import read_interactions_file
from recvae.data.interactions import Interactions
from recvae.data.movielens import MOVIELENS, read_movielens, read_movielens_file
from recvae.data.movielens.registry import MOVIELENS_RATING_SCALE

logger = logging.getLogger(__name__)

__all__ = ["InteractionLog", "LogColumnError", "read_log", "MOVIELENS_RATING_SCALE"]

_USER_NAMES = ("user", "userid", "uid", "users", "customer", "customerid", "visitor", "visitorid", "member",
               "memberid", "account", "accountid", "client", "clientid", "viewer", "viewerid", "listener",
               "listenerid", "reader", "readerid", "reviewer", "reviewerid", "person", "personid", "buyer", "buyerid")
_ITEM_NAMES = ("item", "itemid", "iid", "items", "movie", "movieid", "film", "filmid", "product", "productid",
               "song", "songid", "track", "trackid", "book", "bookid", "isbn", "article", "articleid", "sku", "asin",
               "content", "contentid", "video", "videoid", "artist", "artistid", "album", "albumid", "itemcode",
               "productcode", "game", "gameid", "recipe", "recipeid", "course", "courseid", "post", "postid")
_RATING_NAMES = ("rating", "ratings")
_RATING_LIKE_NAMES = ("score", "scores", "stars", "star", "rate", "grade", "preference", "feedback", "label",
                      "like", "liked", "value", "ratingvalue", "reviewscore", "userrating", "vote")
_TIME_NAMES = ("timestamp", "time", "ts", "datetime", "date", "eventtime", "unixtime", "createdat", "timestampms")


class LogColumnError(ValueError):
    """The log's columns cannot be given roles without the user's word; the message says which to name."""


def _key(name: object) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


@dataclass
class InteractionLog:
    """Raw events with named roles, before preprocessing.

    Attributes:
        frame: one row per raw event, columns ``user``, ``item`` and, when the
            log has them, ``rating`` and ``timestamp`` (renamed from the source).
        source: where it came from (a path, a MovieLens name, "DataFrame").
        columns: role -> the source's column name (None when absent).
        rating_scale: the valid rating range when known (MovieLens), else None.
        notes: one line per choice made about the columns, for the user to read.
    """

    frame: pd.DataFrame
    source: str
    columns: dict[str, str | None]
    rating_scale: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)

    @functools.cached_property
    def raw_user_ids(self) -> np.ndarray:
        """The user of every event as a plain id array (normalised once: text ids cost a Python pass)."""
        return normalise_ids(self.frame["user"].to_numpy(), "user")

    @functools.cached_property
    def raw_item_ids(self) -> np.ndarray:
        """The item of every event as a plain id array."""
        return normalise_ids(self.frame["item"].to_numpy(), "item")

    @property
    def has_ratings(self) -> bool:
        return "rating" in self.frame.columns

    @property
    def n_events(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        roles = ", ".join(f"{role}={col!r}" for role, col in self.columns.items() if col is not None)
        return f"InteractionLog({self.n_events:,} events from {self.source}; {roles})"

    def interactions(
        self,
        *,
        rating_threshold: float | None = 3.5,
        min_user_interactions: int = 5,
        min_item_interactions: int = 0,
        strict: bool = False,
    ) -> Interactions:
        """The positive interactions (Liang et al.'s preprocessing; see :meth:`Interactions.from_dataframe`).

        ``rating_threshold`` applies only to a log with ratings: events rated
        strictly above it are positives. On a log without ratings every event
        is a positive, and a threshold other than the default 3.5 is refused
        (it would be silently ignored).
        """
        if not self.has_ratings and rating_threshold is not None and rating_threshold != 3.5:
            raise LogColumnError(
                f"{self.source}: a rating threshold ({rating_threshold:g}) was given but the log has no rating "
                "column; name the rating column (--rating-col / rating_col=) or drop the threshold"
            )
        return Interactions.from_dataframe(
            self.frame,
            user_col="user",
            item_col="item",
            rating_col="rating" if self.has_ratings else None,
            timestamp_col="timestamp" if "timestamp" in self.frame.columns else None,
            rating_threshold=rating_threshold,
            min_user_interactions=min_user_interactions,
            min_item_interactions=min_item_interactions,
            rating_scale=self.rating_scale,
            strict=strict,
            weight_col="weight" if "weight" in self.frame.columns else None,
        )

    def seen_rows(self, user_ids: np.ndarray, item_ids: np.ndarray) -> sp.csr_matrix:
        """(users, items) 0/1 CSR: every raw event of ``user_ids`` on ``item_ids``, whatever its rating.

        Events of other users or on items outside ``item_ids`` are left out;
        duplicates count once.
        """
        users, user_found = find_ids(pd.Index(np.asarray(user_ids)), self.raw_user_ids)
        items, item_found = find_ids(pd.Index(np.asarray(item_ids)), self.raw_item_ids)
        keep = user_found & item_found
        matrix = sp.csr_matrix(
            (np.ones(int(keep.sum()), np.float32), (users[keep], items[keep])), shape=(len(user_ids), len(item_ids))
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix


def read_log(
    source: str | os.PathLike | pd.DataFrame,
    *,
    user_col: str | None = None,
    item_col: str | None = None,
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    implicit: bool = False,
    weight_col: str | None = None,
    sep: str | None = None,
    data_dir: str | os.PathLike = "data",
    download: bool = True,
) -> InteractionLog:
    """Read an interaction log and give its columns roles.

    Args:
        source: a CSV/TSV/Parquet file (plain or .gz), a MovieLens ratings file
            (``u.data``, ``ratings.dat``, ``ratings.csv``), a MovieLens release
            name (``ml-1m``; downloaded into ``data_dir`` when missing) or a DataFrame.
        user_col, item_col: the id columns; found by common names when None.
        rating_col: the rating column; ``"none"`` declares the log implicit.
            When None, a column named ``rating`` is used, and a column that looks
            like a rating under another name is refused (name it, or pass
            ``implicit=True``).
        timestamp_col: the event-time column (``"none"``: ignore times); found by
            common names when None. Datetime text is converted to epoch seconds.
        implicit: every row is a positive event; no column is read as a rating.
        weight_col: a column of positive interaction weights (counts, or the rating
            column itself) used as confidence by the models that read values (see
            :meth:`Interactions.from_dataframe`); None: every kept pair weighs 1.
        sep: the separator of a text file (sniffed when None).

    Raises:
        LogColumnError: columns missing, ambiguous or of undeclared meaning.
        ValueError, FileNotFoundError: the file cannot be read.
    """
    if isinstance(source, pd.DataFrame):
        frame, label, scale = source, "DataFrame", None
    else:
        text = os.fspath(source)
        path = Path(text).expanduser()
        if text.strip().lower() in MOVIELENS and not path.is_file():
            frame = read_movielens(text.strip().lower(), data_dir=data_dir, download=download)
            return _with_weights(_movielens_log(frame, text.strip().lower(), rating_col, implicit), weight_col)
        if not path.exists():
            raise FileNotFoundError(
                f"{text}: no such file, and not a MovieLens name ({', '.join(MOVIELENS)}); give a ratings file"
            )
        if path.is_dir():
            inside = sorted(p.name for p in path.iterdir() if p.is_file())[:5]
            raise ValueError(f"{text}: is a directory; give the ratings file inside it"
                             + (f" (it holds {', '.join(inside)})" if inside else ""))
        if not any((user_col, item_col, rating_col, timestamp_col, sep)):
            movielens = _movielens_frame_or_none(path)
            if movielens is not None:
                return _with_weights(_movielens_log(movielens, str(path), rating_col, implicit), weight_col)
        frame, label, scale = read_interactions_file(path, sep=sep), str(path), None
    source_frame = frame
    log = _named_log(frame, label, scale, user_col, item_col, rating_col, timestamp_col, implicit, weight_col)
    if weight_col is not None:
        log.frame["weight"] = source_frame[weight_col].to_numpy()
        log.columns["weight"] = weight_col
        log.notes.append(f"weights: column {weight_col!r} (summed over duplicate events)")
    return log


def _with_weights(log: InteractionLog, weight_col: str | None) -> InteractionLog:
    """A MovieLens log's rating (the only numeric column it has) as weights, when asked."""
    if weight_col is None:
        return log
    role = weight_col if weight_col in log.frame.columns else {v: k for k, v in log.columns.items() if v}.get(weight_col)
    if role not in ("rating",):
        raise LogColumnError(f"{log.source}: a MovieLens log can weigh events by its rating only; "
                             f"--weight-col {weight_col!r} names no such column")
    log.frame["weight"] = log.frame["rating"].to_numpy()
    log.columns["weight"] = "rating"
    log.notes.append("weights: the rating")
    return log


def _movielens_frame_or_none(path: Path) -> pd.DataFrame | None:
    """The MovieLens reader's frame for u.data / *.dat / a ratings.csv with userId and movieId; else None."""
    import gzip

    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".data", ".dat")):
        return read_movielens_file(path)
    if not name.endswith(".csv"):
        return None
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            header = [h.strip() for h in fh.readline().lstrip("\ufeff").split(",")]
    except (OSError, EOFError):
        return None  # the generic reader names the problem
    if "userId" in header and "movieId" in header and set(header) <= {"userId", "movieId", "rating", "timestamp"}:
        try:
            return read_movielens_file(path)
        except ValueError as err:
            # MovieLens' own columns with other ids (strings, say): the generic reader takes it
            logger.info("%s: not read as MovieLens (%s); reading it as a generic log", path, err)
    return None


def _movielens_log(frame: pd.DataFrame, label: str, rating_col: str | None, implicit: bool) -> InteractionLog:
    """A MovieLens reader's frame (user, item[, rating][, timestamp]) as a log."""
    notes = [f"{label}: MovieLens format"]
    if implicit or (rating_col is not None and rating_col.strip().lower() == "none"):
        frame = frame.drop(columns=[c for c in ("rating",) if c in frame.columns])
        notes.append("implicit: every event counts as positive")
    elif "rating" not in frame.columns:
        notes.append("no rating column: every event counts as positive")
    columns = {role: (role if role in frame.columns else None) for role in ("user", "item", "rating", "timestamp")}
    return InteractionLog(frame, label, columns, MOVIELENS_RATING_SCALE, notes)


def _find(columns: list, names: tuple[str, ...], taken: set) -> list:
    keys = {name: rank for rank, name in enumerate(names)}
    found = [c for c in columns if c not in taken and _key(c) in keys]
    return sorted(found, key=lambda c: keys[_key(c)])


def _looks_like_rating(values: pd.Series) -> bool:
    """Numeric with a few small distinct values (stars, 0/1 feedback, a 1-10 scale)."""
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return pd.api.types.is_bool_dtype(values)
    sample = values.dropna()
    if sample.empty:
        return False
    distinct = sample.unique()
    return len(distinct) <= 21 and float(sample.min()) >= -10 and float(sample.max()) <= 10


def _named_log(frame: pd.DataFrame, label: str, scale, user_col, item_col, rating_col, timestamp_col,
               implicit: bool, weight_col: str | None = None) -> InteractionLog:
    """Give ``frame``'s columns their roles: those named, else those found by common names; refuse what is
    missing, contradictory or a rating left unnamed. The roles' columns are renamed in the log's frame."""
    columns = list(frame.columns)
    try:
        _refuse_repeated_names(columns, label)
        chosen, missing = _id_columns(columns, user_col, item_col, label)
    except LogColumnError:
        _refuse_headerless(columns, label)
        raise
    taken: set = set(chosen.values())
    notes: list[str] = []

    rating_none = rating_col is not None and rating_col.strip().lower() == "none"
    if implicit and rating_col is not None and not rating_none:
        raise LogColumnError(f"{label}: --rating-col {rating_col!r} and --implicit contradict; give one of them")
    if rating_col is not None and not rating_none and rating_col not in columns:
        missing.append(f"rating column {rating_col!r} (--rating-col)")
    time_none = timestamp_col is not None and timestamp_col.strip().lower() == "none"
    if timestamp_col is not None and not time_none and timestamp_col not in columns:
        missing.append(f"timestamp column {timestamp_col!r} (--timestamp-col)")
    if weight_col is not None and weight_col not in columns:
        missing.append(f"weight column {weight_col!r} (--weight-col)")
    if missing:
        _refuse_headerless(columns, label)
        raise LogColumnError(f"{label}: cannot find {'; '.join(missing)}; the columns are {columns}")

    if implicit or rating_none:
        notes.append("implicit: every event counts as positive")
    for role, given, none, names in (("rating", rating_col, implicit or rating_none, _RATING_NAMES),
                                     ("timestamp", timestamp_col, time_none, _TIME_NAMES)):
        chosen[role] = _optional_column(columns, given, none, names, taken)
        if chosen[role] is not None:
            taken.add(chosen[role])

    others = [c for c in columns if c not in taken and c != weight_col]
    if chosen["rating"] is None and not (implicit or rating_none):
        _refuse_unnamed_rating(frame, others, label)
        notes.append("no rating column: every event counts as positive")

    out = _frame_by_role(frame, chosen, label, notes, explicit_time=timestamp_col is not None)
    notes.insert(0, "columns: " + ", ".join(f"{r}={c!r}" for r, c in chosen.items() if c is not None)
                 + (f"; ignored: {others}" if others else ""))
    return InteractionLog(out, label, {r: chosen.get(r) for r in ("user", "item", "rating", "timestamp")},
                          scale, notes)


def _refuse_headerless(columns: list, label: str) -> None:
    """Columns that could not be given roles and whose names look like data (mostly numbers, no known role
    name): the file has no header row and its first event was read as one. Say so, not "no column 'user'"."""
    # pandas renames a repeated name '1' to '1.1': the first line held '1' twice
    first = [re.sub(r"\.\d+$", "", c) if isinstance(c, str) and re.sub(r"\.\d+$", "", c) in columns else c
             for c in columns]
    numbers = sum(_is_number(c) for c in first)
    known = set(_USER_NAMES + _ITEM_NAMES + _RATING_NAMES + _RATING_LIKE_NAMES + _TIME_NAMES)
    if numbers == 0 or 2 * numbers < len(first) or any(_key(c) in known for c in first):
        return
    raise LogColumnError(
        f"{label}: the file seems to have no header row: its first line {[str(c) for c in first]} looks like data, "
        "not column names; add a header line naming the columns (e.g. user,item,rating,timestamp) and pass "
        "those names with --user-col/--item-col (user_col=, item_col=) if they are not the usual ones"
    )


def _is_number(name: object) -> bool:
    try:
        float(name)
    except (TypeError, ValueError):
        return False
    return True


def _refuse_repeated_names(columns: list, label: str) -> None:
    """pandas renames a repeated header name 'x' to 'x.1': say so instead of guessing at 'x.1'."""
    repeated = [c for c in columns if isinstance(c, str) and re.fullmatch(r"(.+)\.\d+", c)
                and re.fullmatch(r"(.+)\.\d+", c).group(1) in columns]
    if repeated:
        base = re.fullmatch(r"(.+)\.\d+", repeated[0]).group(1)
        raise LogColumnError(f"{label}: the header names the column {base!r} more than once; give each column "
                             "a distinct name")


def _id_columns(columns: list, user_col: str | None, item_col: str | None,
                label: str) -> tuple[dict[str, str | None], list[str]]:
    """The user and item columns (named, else found by common names; two equally good candidates are refused),
    and a description of each one that is missing."""
    taken: set = set()
    chosen: dict[str, str | None] = {}
    missing: list[str] = []
    for role, given, names, flag in (("user", user_col, _USER_NAMES, "--user-col"),
                                     ("item", item_col, _ITEM_NAMES, "--item-col")):
        if given is not None:
            if given not in columns:
                missing.append(f"{role} column {given!r} ({flag})")
                continue
            chosen[role] = given
        else:
            found = _find(columns, names, taken)
            if not found:
                missing.append(f"{'an' if role == 'item' else 'a'} {role} id column ({flag} COL)")
                continue
            if len(found) > 1 and _key(found[0]) == _key(found[1]):
                raise LogColumnError(f"{label}: several columns could be the {role} id ({found}); name one with {flag}")
            chosen[role] = found[0]
        taken.add(chosen[role])
    return chosen, missing


def _optional_column(columns: list, given: str | None, none: bool, names: tuple[str, ...], taken: set) -> str | None:
    """The rating or time column: None when declared absent, the one named, else the first found by its names."""
    if none:
        return None
    if given is not None:
        return given
    found = _find(columns, names, taken)
    return found[0] if found else None


def _refuse_unnamed_rating(frame: pd.DataFrame, others: list, label: str) -> None:
    """A column that looks like a rating but was not named is refused: read or ignored, it changes the positives."""
    suspects = [c for c in others if _key(c) in _RATING_LIKE_NAMES or _looks_like_rating(frame[c])]
    if suspects:
        column = suspects[0]
        values = frame[column].dropna()
        span = f"values {values.min():g} to {values.max():g}" if pd.api.types.is_numeric_dtype(values) and \
            not pd.api.types.is_bool_dtype(values) and len(values) else "few distinct values"
        raise LogColumnError(
            f"{label}: column {column!r} looks like a rating ({span}) but was not named; pass "
            f"--rating-col {column} (rating_col=) to keep events rated above --min-rating, or --implicit "
            "(implicit=True) to count every row as a positive"
        )


def _frame_by_role(frame: pd.DataFrame, chosen: dict[str, str | None], label: str, notes: list[str], *,
                   explicit_time: bool) -> pd.DataFrame:
    """The chosen columns renamed to their roles, times as epoch seconds; a time column that holds no times
    is dropped (its role in ``chosen`` set to None, with a note)."""
    renamed = {chosen[r]: r for r in ("user", "item", "rating", "timestamp") if chosen.get(r) is not None}
    out = frame[list(renamed)].rename(columns=renamed)
    if "timestamp" in out.columns:
        out["timestamp"] = _epoch_seconds(out["timestamp"], chosen["timestamp"], label, explicit=explicit_time)
        if out["timestamp"] is None or out["timestamp"].isna().all():
            out = out.drop(columns="timestamp")
            notes.append(f"column {chosen['timestamp']!r} is not a time; event times are not used")
            chosen["timestamp"] = None
    return out


def _epoch_seconds(values: pd.Series, name: str, label: str, *, explicit: bool) -> pd.Series:
    """Event times as numbers: numeric columns as they are, datetimes and date text as epoch seconds."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values
    try:
        parsed = pd.to_datetime(values, utc=True, format="mixed")
    except (ValueError, TypeError) as err:
        if explicit:
            raise LogColumnError(f"{label}: timestamp column {name!r} holds neither numbers nor dates ({err})") from None
        return pd.Series(np.full(len(values), np.nan), index=values.index)
    return (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
