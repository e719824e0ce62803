"""The two choices a run makes about its data, as small objects: how to read a log, how to split it.

:class:`LogSpec` names a log and how to read and preprocess it (column roles,
rating threshold, users with too few events); :class:`SplitSpec` names the
split (strong, weak or temporal; held-out users; seed). :meth:`recvae.runs.Run.fit`
and :func:`recvae.runs.tune` take them, and the command line builds them from
its options::

    from recvae.data import LogSpec, SplitSpec

    log = LogSpec("checkins.csv", user_col="visitor", rating_col="none", min_user_events=3)
    split = SplitSpec("strong", heldout_users=500, seed=1)
    interactions = log.interactions(log.read())
    train_val_test = split.make(interactions)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Union

import pandas as pd

from recvae.data.interactions import Interactions
from recvae.data.logs import InteractionLog, LogColumnError, read_log
from recvae.data.splits import Split, all_users_split, strong_generalization, temporal_split, weak_generalization

__all__ = ["LogSpec", "SplitSpec", "SPLITS", "LIANG_SEED", "default_heldout_users"]

LogSource = Union[str, os.PathLike, pd.DataFrame, InteractionLog]

#: The seed of Liang et al.'s split (their notebook's ``np.random.seed(98765)``).
LIANG_SEED = 98765
#: Held-out users per set when not given: 10% of users, at most this many (Liang et al.: 10,000 of ML-20M's).
MAX_DEFAULT_HELDOUT = 10_000
SPLITS = ("strong", "weak", "temporal")

_READING = ("user_col", "item_col", "rating_col", "timestamp_col", "implicit", "weight_col", "sep", "data_dir")


def default_heldout_users(n_users: int) -> int:
    """Users per held-out set of a strong split: 10% of users, at least 1, at most 10,000."""
    return max(1, min(MAX_DEFAULT_HELDOUT, round(0.1 * n_users)))


@dataclass(frozen=True, eq=False)
class LogSpec:
    """A log and how to read it: the arguments of :func:`read_log` and of the preprocessing.

    Args:
        source: a file, a MovieLens name, a DataFrame or an already read
            :class:`InteractionLog` (then the reading options must stay unset).
        user_col, item_col, rating_col, timestamp_col, implicit, weight_col, sep, data_dir:
            see :func:`recvae.data.logs.read_log`.
        rating_threshold: events rated strictly above it are positives (logs with ratings).
        min_user_events: users with fewer positive events are dropped.
        strict: refuse malformed rows instead of dropping them with a warning
            (see :meth:`InteractionLog.interactions`).
    """

    source: LogSource
    user_col: str | None = None
    item_col: str | None = None
    rating_col: str | None = None
    timestamp_col: str | None = None
    implicit: bool = False
    weight_col: str | None = None
    sep: str | None = None
    data_dir: str | os.PathLike = "data"
    rating_threshold: float | None = 3.5
    min_user_events: int = 5
    strict: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.source, LogSpec):
            raise TypeError("LogSpec(source=...): give the log itself, not another LogSpec")
        if isinstance(self.source, InteractionLog):
            given = [name for name in _READING if getattr(self, name) != _DEFAULTS[name]]
            if given:
                raise ValueError(f"LogSpec: {', '.join(given)} read a file, but the log was already read "
                                 "(an InteractionLog); pass them to read_log, or give the file instead")

    @classmethod
    def of(cls, log: LogSource | LogSpec) -> LogSpec:
        """``log`` itself when it is a LogSpec, else a LogSpec of it with the default options."""
        return log if isinstance(log, LogSpec) else cls(log)

    def read(self) -> InteractionLog:
        """The raw events with named roles (the source itself when it is an :class:`InteractionLog`)."""
        if isinstance(self.source, InteractionLog):
            return self.source
        return read_log(self.source, **{name: getattr(self, name) for name in _READING})

    def interactions(self, log: InteractionLog) -> Interactions:
        """``log``'s positive interactions after this spec's preprocessing."""
        return log.interactions(rating_threshold=self.rating_threshold,
                                min_user_interactions=self.min_user_events, strict=self.strict)


_DEFAULTS = {f.name: f.default for f in fields(LogSpec)}


@dataclass(frozen=True)
class SplitSpec:
    """How to split the interactions into training, validation and test users.

    Args:
        kind: ``"strong"`` (held-out users, Liang et al.), ``"weak"`` or ``"temporal"``.
        heldout_users: users in each of validation and test (strong split; a count
            or a fraction; default 10%, at most 10,000). ``0`` holds out nothing:
            every user and every item trains (a production fit), whatever ``kind``.
        seed: the split's seed (default: Liang et al.'s 98765).
    """

    kind: str = "strong"
    heldout_users: int | float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SPLITS:
            raise ValueError(f"split {self.kind!r}: choose one of {', '.join(SPLITS)}")
        if self.heldout_users is not None and self.kind != "strong" and not self.every_user:
            raise ValueError(f"heldout_users (--heldout-users) applies to the strong split (--split strong); the "
                             f"{self.kind} split holds out a share of every user's events instead")

    @classmethod
    def of(cls, split: str | SplitSpec) -> SplitSpec:
        """``split`` itself when it is a SplitSpec, else the SplitSpec of that kind."""
        return split if isinstance(split, SplitSpec) else cls(split)

    @property
    def every_user(self) -> bool:
        """True for a production fit: nothing is held out."""
        return self.heldout_users is not None and self.heldout_users == 0

    @property
    def strategy(self) -> str:
        """The name recorded with a run: the kind, or ``all_users`` for a production fit."""
        return "all_users" if self.every_user else self.kind

    def make(self, data: Interactions) -> Split:
        """Split ``data``; a ValueError names what cannot be split and the option to change."""
        seed = LIANG_SEED if self.seed is None else self.seed
        if self.every_user:
            return all_users_split(data)
        if self.kind == "strong":
            n = default_heldout_users(data.n_users) if self.heldout_users is None else self.heldout_users
            return strong_generalization(data, n, seed=seed)
        if self.kind == "weak":
            return weak_generalization(data, seed=seed)
        if data.timestamps is None:
            raise LogColumnError("the temporal split needs event times, and the log has none; name the time column "
                             "(--timestamp-col / timestamp_col=) or use the strong split")
        return temporal_split(data)
