"""Train / validation / test splits of an :class:`Interactions` matrix.

- :func:`strong_generalization`: the protocol of Liang et al. (2018), reproduced
  exactly (same RNG stream, same orders): held-out users never appear in
  training; each contributes a fold-in part (given to the model) and a target
  part (to be predicted).
- :func:`weak_generalization`: every user trains; a random fraction of each
  user's events is held out as validation and test targets.
- :func:`temporal_split`: like weak generalization, but each user's latest
  events (by timestamp) are the targets.

Every split yields a :class:`Split`, which saves to and loads from a directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from recvae.data.interactions import Interactions
from recvae.data.csr_arrays import csr_from_arrays, csr_to_arrays

__all__ = [
    "HeldOut",
    "Split",
    "strong_generalization",
    "all_users_split",
    "weak_generalization",
    "temporal_split",
]

_FORMAT_VERSION = 1


@dataclass
class HeldOut:
    """Users to evaluate: what the model is shown and what it must predict.

    Attributes:
        fold_in: users x items, the events given to the model (and masked
            from its ranking).
        target: users x items, the events to predict. A row may be empty (a
            user with fewer than 5 events): metrics exclude and count such users.
        user_ids: raw ids of the rows.
        train_rows: for weak/temporal splits, each user's row in ``Split.train``
            (models with per-user parameters use it); None for held-out users.
    """

    fold_in: sp.csr_matrix
    target: sp.csr_matrix
    user_ids: np.ndarray
    train_rows: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return self.fold_in.shape[0]

    def __repr__(self) -> str:
        empty = int((np.diff(self.target.indptr) == 0).sum())
        return (
            f"HeldOut({self.n_users:,} users, {self.fold_in.nnz:,} fold-in and "
            f"{self.target.nnz:,} target events, {empty:,} users with no target)"
        )


@dataclass
class Split:
    """A train matrix and two held-out user sets over one item index.

    ``item_ids[i]`` is the raw id of column ``i`` in every matrix;
    ``train_user_ids[u]`` the raw id of row ``u`` of ``train``.
    ``info`` records how the split was made (kind, seed, sizes, what was dropped).
    ``validation`` and ``test`` are None for a production fit on every user
    (:func:`all_users_split`).
    """

    train: sp.csr_matrix
    validation: HeldOut | None
    test: HeldOut | None
    item_ids: np.ndarray
    train_user_ids: np.ndarray
    info: dict

    @property
    def n_items(self) -> int:
        return self.train.shape[1]

    def __repr__(self) -> str:
        held = "; ".join(f"{w} {getattr(self, w)!r}" for w in ("validation", "test") if getattr(self, w) is not None)
        return (
            f"Split({self.info.get('kind', '?')}: train {self.train.shape[0]:,} users x "
            f"{self.n_items:,} items ({self.train.nnz:,} events); {held or 'no held-out users'})"
        )

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write the split as ``matrices.npz`` + ``split.json`` under ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        for name, m in self._matrices().items():
            arrays.update(csr_to_arrays(name, m))
        arrays["item_ids"] = self.item_ids
        arrays["train_user_ids"] = self.train_user_ids
        for which in ("validation", "test"):
            held = getattr(self, which)
            if held is None:
                continue
            arrays[f"{which}_user_ids"] = held.user_ids
            rows = held.train_rows
            if rows is not None:
                arrays[f"{which}_train_rows"] = rows
        for key, value in arrays.items():
            if value.dtype == object:
                raise TypeError(
                    f"cannot save {key}: raw ids of mixed or object type; convert ids to str or int first"
                )
        tmp = directory / "matrices.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        tmp.replace(directory / "matrices.npz")
        meta = {"format_version": _FORMAT_VERSION, "info": self.info}
        (directory / "split.json").write_text(json.dumps(meta, indent=2, default=_json_default))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Split:
        """Read a split written by :meth:`save`."""
        directory = Path(directory)
        meta_path, npz_path = directory / "split.json", directory / "matrices.npz"
        if not meta_path.exists() or not npz_path.exists():
            raise FileNotFoundError(
                f"{directory} does not hold a saved split (expected split.json and matrices.npz); "
                "write one with Split.save(directory)"
            )
        meta = json.loads(meta_path.read_text())
        with np.load(npz_path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        return cls.from_saved(meta, arrays, directory)

    @classmethod
    def from_saved(cls, meta: dict, arrays: dict[str, np.ndarray], directory: str | Path = "the split") -> Split:
        """The split of ``split.json``'s ``meta`` and ``matrices.npz``'s ``arrays``, already read (by :meth:`load`,
        or by a reader that checked the files first); ``directory`` names them in errors."""
        if not isinstance(meta, dict) or meta.get("format_version") != _FORMAT_VERSION:
            version = meta.get("format_version") if isinstance(meta, dict) else None
            raise ValueError(
                f"{directory} holds split format {version}, this recvae reads "
                f"{_FORMAT_VERSION}; re-create the split"
            )
        held = {
            which: HeldOut(
                fold_in=csr_from_arrays(f"{which}_fold_in", arrays),
                target=csr_from_arrays(f"{which}_target", arrays),
                user_ids=arrays[f"{which}_user_ids"],
                train_rows=arrays.get(f"{which}_train_rows"),
            )
            if f"{which}_user_ids" in arrays else None
            for which in ("validation", "test")
        }
        return cls(
            train=csr_from_arrays("train", arrays),
            validation=held["validation"],
            test=held["test"],
            item_ids=arrays["item_ids"],
            train_user_ids=arrays["train_user_ids"],
            info=meta["info"],
        )

    def _matrices(self) -> dict[str, sp.csr_matrix]:
        matrices = {"train": self.train}
        for which in ("validation", "test"):
            held = getattr(self, which)
            if held is not None:
                matrices[f"{which}_fold_in"] = held.fold_in
                matrices[f"{which}_target"] = held.target
        return matrices

    def held_out(self, which: str) -> HeldOut:
        """``validation`` or ``test``; a clear error when this split has none (a fit on every user)."""
        if which not in ("validation", "test"):
            raise ValueError(f"which must be 'validation' or 'test'; got {which!r}")
        held = getattr(self, which)
        if held is None:
            raise ValueError(
                f"this split has no {which} users: it trains on every user ({self.info.get('kind')}); "
                "evaluate a run made with held-out users"
            )
        return held


# ---------------------------------------------------------------------- every user
def all_users_split(data: Interactions) -> Split:
    """A production "split": every user and every item trains; nothing is held out.

    There are no validation users to select an epoch, so give the number of
    epochs (e.g. the best epoch of an earlier run on a held-out split).
    """
    return Split(
        train=data.matrix.copy(),
        validation=None,
        test=None,
        item_ids=data.item_ids,
        train_user_ids=data.user_ids,
        info={"kind": "all_users", "n_heldout_users": 0, "users": int(data.n_users), "items": int(data.n_items)},
    )


# ---------------------------------------------------------------------- strong generalization
def strong_generalization(
    data: Interactions,
    n_heldout_users: int | float = 0.1,
    *,
    target_fraction: float = 0.2,
    min_events_for_target: int = 5,
    seed: int = 98765,
) -> Split:
    """Liang et al.'s strong-generalization split, reproduced exactly.

    1. Users in sorted raw-id order are permuted with ``RandomState(seed)``;
       the last ``n`` are test users, the ``n`` before them validation users,
       the rest train users.
    2. The item set is the items that training users interacted with; held-out
       users' events on other items are dropped (and counted in ``info``).
    3. Each held-out user with at least ``min_events_for_target`` events gives
       ``int(target_fraction * n_events)`` random events (drawn from the user's
       events in raw-log order, one ``RandomState(seed)`` stream per held-out
       set, users in raw-id order) as the target, the rest as fold-in. Users
       with fewer keep all events as fold-in and an empty target.

    Args:
        data: preprocessed interactions (see :meth:`Interactions.from_dataframe`).
        n_heldout_users: users in each of validation and test: a count, or a
            fraction of all users (0.1 = 10% each).
        target_fraction: share of each held-out user's events to predict.
        min_events_for_target: below this many events a user has no target.
        seed: 98765 in the published code.
    """
    n_users = data.n_users
    n_heldout = _heldout_count(n_heldout_users, n_users)
    if not 0.0 < target_fraction < 1.0:
        raise ValueError(f"target_fraction must lie in (0, 1); got {target_fraction}")

    # data.user_ids is sorted, as the notebook's groupby index is.
    permuted = np.random.RandomState(seed).permutation(n_users)
    train_users = np.sort(permuted[: n_users - 2 * n_heldout])
    validation_users = np.sort(permuted[n_users - 2 * n_heldout : n_users - n_heldout])
    test_users = np.sort(permuted[n_users - n_heldout :])

    train_full = data.matrix[train_users]
    items = np.flatnonzero(np.diff(train_full.tocsc().indptr) > 0)
    column = np.full(data.n_items, -1, dtype=np.int64)
    column[items] = np.arange(len(items))
    train = train_full[:, items].tocsr()

    info: dict = {
        "kind": "strong_generalization",
        "seed": seed,
        "n_heldout_users": n_heldout,
        "target_fraction": target_fraction,
        "min_events_for_target": min_events_for_target,
        "items_dropped_unseen_in_train": int(data.n_items - len(items)),
    }
    held = {}
    for which, users in (("validation", validation_users), ("test", test_users)):
        fold_in, target, kept_users, dropped_events = _split_heldout_rows(
            data, users, column, target_fraction, min_events_for_target, seed
        )
        held[which] = HeldOut(fold_in, target, data.user_ids[kept_users])
        info[f"{which}_events_dropped_unseen_items"] = dropped_events
        info[f"{which}_users_dropped_no_events"] = int(len(users) - len(kept_users))
        info[f"{which}_users_without_target"] = int((np.diff(target.indptr) == 0).sum())
    return Split(
        train=train,
        validation=held["validation"],
        test=held["test"],
        item_ids=data.item_ids[items],
        train_user_ids=data.user_ids[train_users],
        info=info,
    )


def _split_heldout_rows(
    data: Interactions,
    users: np.ndarray,
    column: np.ndarray,
    target_fraction: float,
    min_events_for_target: int,
    seed: int,
) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray, int]:
    """Fold-in / target rows of held-out users, with Liang's RNG calls in his order."""
    m = data.matrix
    log_order = data.events_in_log_order()
    starts, ends = m.indptr[users], m.indptr[users + 1]
    # Events of these users, each user's in raw-log order.
    lengths = ends - starts
    owner = np.repeat(np.arange(len(users)), lengths)
    offset_in_user = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    event_pos = log_order[np.repeat(starts, lengths) + offset_in_user]
    new_col = column[m.indices[event_pos]]
    values = m.data[event_pos]
    keep = new_col >= 0
    dropped = int((~keep).sum())
    owner, new_col, values = owner[keep], new_col[keep], values[keep]
    counts = np.bincount(owner, minlength=len(users))
    kept_users = counts > 0  # a user left with no events disappears, as in the notebook's groupby
    user_start = np.concatenate([[0], np.cumsum(counts)])

    is_target = np.zeros(len(owner), dtype=bool)
    rng = np.random.RandomState(seed)
    for u in np.flatnonzero(counts >= min_events_for_target):
        n = counts[u]
        # RandomState.choice(n, size, replace=False) is permutation(n)[:size]; calling it
        # keeps the exact stream of the published code.
        chosen = rng.choice(n, size=int(target_fraction * n), replace=False)
        is_target[user_start[u] + chosen] = True

    row_of_user = np.cumsum(kept_users) - 1
    shape = (int(kept_users.sum()), int((column >= 0).sum()))

    def rows(mask: np.ndarray) -> sp.csr_matrix:
        # values are 1.0, or the interaction weights of a weighted log (kept for fold-in rows)
        out = sp.csr_matrix(
            (values[mask].astype(np.float32), (row_of_user[owner[mask]], new_col[mask])), shape=shape
        )
        out.sort_indices()
        return out

    return rows(~is_target), rows(is_target), users[kept_users], dropped


def _heldout_count(n_heldout_users: int | float, n_users: int) -> int:
    if isinstance(n_heldout_users, (float, np.floating)) and not float(n_heldout_users).is_integer():
        if not 0.0 < n_heldout_users < 0.5:
            raise ValueError(f"a held-out fraction must lie in (0, 0.5); got {n_heldout_users}")
        n = int(round(n_heldout_users * n_users))
    else:
        n = int(n_heldout_users)
    if n < 1 or 2 * n >= n_users:
        raise ValueError(
            f"cannot hold out {n} validation + {n} test users from {n_users} users: "
            "at least one training user must remain and each held-out set needs a user"
        )
    return n


# ---------------------------------------------------------------------- weak / temporal
def weak_generalization(
    data: Interactions,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    *,
    min_events_for_target: int = 5,
    seed: int = 98765,
) -> Split:
    """Every user trains; a random share of each user's events becomes targets.

    For each user with at least ``min_events_for_target`` events,
    ``int(test_fraction * n)`` random events are test targets and
    ``int(validation_fraction * n)`` validation targets; the rest train.
    Validation users fold in their training events; test users fold in their
    training and validation events (all they had before the test targets).
    """
    rng = np.random.default_rng(seed)
    keys = rng.random(data.nnz)
    return _per_user_holdout(data, keys, validation_fraction, test_fraction, min_events_for_target, "weak_generalization", seed)


def temporal_split(
    data: Interactions,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    *,
    min_events_for_target: int = 5,
) -> Split:
    """Per user, the latest ``test_fraction`` of events (by timestamp) are test
    targets and the latest ``validation_fraction`` before them validation targets.

    Ties in time are broken by raw-log order. Requires timestamps.
    """
    if data.timestamps is None:
        raise ValueError(
            "temporal_split needs timestamps; build Interactions with a timestamp column "
            "(from_dataframe(..., timestamp_col='timestamp'))"
        )
    order = data.event_order if data.event_order is not None else np.arange(data.nnz)
    rank = np.lexsort((order, data.timestamps))  # ascending time
    keys = np.empty(data.nnz)
    keys[rank] = -np.arange(data.nnz, dtype=np.float64)  # latest events first
    return _per_user_holdout(data, keys, validation_fraction, test_fraction, min_events_for_target, "temporal", None)


def _per_user_holdout(
    data: Interactions,
    keys: np.ndarray,
    validation_fraction: float,
    test_fraction: float,
    min_events_for_target: int,
    kind: str,
    seed: int | None,
) -> Split:
    """Hold out, per user, the events with the smallest keys: test first, then validation."""
    for name, f in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < f < 1.0:
            raise ValueError(f"{name} must lie in (0, 1); got {f}")
    if validation_fraction + test_fraction >= 1.0:
        raise ValueError("validation_fraction + test_fraction must be below 1")
    m = data.matrix
    counts = np.diff(m.indptr)
    rows = np.repeat(np.arange(data.n_users), counts)
    order = np.lexsort((keys, rows))  # within each row, ascending key
    rank = np.empty(data.nnz, dtype=np.int64)
    rank[order] = np.arange(data.nnz) - m.indptr[rows[order]]
    eligible = counts >= min_events_for_target
    n_test = np.where(eligible, (test_fraction * counts).astype(np.int64), 0)
    n_val = np.where(eligible, (validation_fraction * counts).astype(np.int64), 0)
    is_test = rank < n_test[rows]
    is_val = ~is_test & (rank < (n_test + n_val)[rows])
    is_train = ~is_test & ~is_val

    def part(mask: np.ndarray) -> sp.csr_matrix:
        out = m.copy()
        out.data = np.where(mask, out.data, 0).astype(np.float32)
        out.eliminate_zeros()
        return out

    train, val_target, test_target = part(is_train), part(is_val), part(is_test)
    # Users with no training events cannot be folded in meaningfully by per-user models;
    # they still are valid rows (their fold-in is empty) and stay, counted in info.
    all_rows = np.arange(data.n_users)
    info = {
        "kind": kind,
        "seed": seed,
        "validation_fraction": validation_fraction,
        "test_fraction": test_fraction,
        "min_events_for_target": min_events_for_target,
        "users_without_target": int((~eligible).sum()),
    }
    return Split(
        train=train,
        validation=HeldOut(train, val_target, data.user_ids, train_rows=all_rows),
        test=HeldOut((train + val_target).tocsr(), test_target, data.user_ids, train_rows=all_rows),
        item_ids=data.item_ids,
        train_user_ids=data.user_ids,
        info=info,
    )


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
