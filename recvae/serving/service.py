"""What the HTTP server serves: one run with its id lookups, request checks and fallbacks, and the slot that
swaps in another run without dropping requests.

- :class:`RunService`: a loaded :class:`recvae.runs.Run`, its ``run_id`` (:func:`run_identity`), the checks
  the endpoints share, the known users' scoring (one :meth:`Run.recommend` call per option group), the
  fold-in of posted item lists (one ranking per group of new users, :meth:`RunService.fold_in`) and the
  fallback for users the run has no history for (:meth:`RunService.fallback`).
- :class:`IdMap`: raw id -> row or column, a dict built once per run, so a request's lookup costs a dict
  get (a pandas ``get_indexer`` of an object array copied the whole map to objects on every request).
- :class:`ServedRun`: the service now serving. A request reads :attr:`ServedRun.current` once, when it
  starts, and uses that service to the end; :meth:`ServedRun.reload` loads and checks a run fully in the
  calling (worker) thread, then swaps the reference in one assignment, so requests in flight finish on
  the old run and the next ones start on the new. A run that fails to load is refused and the old one
  keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recvae.data.ids import UnknownIdError, coerce_ids, short_id
from recvae.models.base import item_mask, rank_in_blocks
from recvae.models.posterior import check_uncertainty, user_uncertainty
from recvae.models.popularity import Popularity
from recvae.runs import Run
from recvae.runs.directory import MANIFEST_FILE, read_json
from recvae.runs.errors import RunError, one_line
from recvae.runtime.memory import require_memory
from recvae.serving.http_errors import RequestError

logger = logging.getLogger("recvae.serving.server")

__all__ = ["RunService", "ServedRun", "ReloadRefused", "IdMap", "run_identity", "UNKNOWN_USERS"]

#: How a request for a user the run has no history for is answered (``create_app(unknown_users=...)``).
UNKNOWN_USERS = ("fallback", "404")


class ReloadRefused(RuntimeError):
    """A run that cannot replace the one serving (the old one keeps serving); the message is one line."""


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value JSON writes (ids and scores)."""
    return value.item() if isinstance(value, np.generic) else value


def run_identity(run: Run) -> str:
    """The id answers carry: ``<directory name (a link's target)>-<12 hex of the manifest's sha256>`` for a saved run (the manifest
    lists every file's sha256, so a retrained run in the same directory gets a new id), else ``unsaved-<12 hex
    of its config>``."""
    if run.path is not None:
        digest = _manifest_digest(Path(run.path))
        if digest is not None:
            return f"{Path(run.path).resolve().name}-{digest[:12]}"  # a link's target: the version it serves
    text = json.dumps(run.config, sort_keys=True, default=str)
    return f"unsaved-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _manifest_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256((path / MANIFEST_FILE).read_bytes()).hexdigest()
    except OSError:
        return None


class IdMap:
    """Raw ids -> positions of one id map (a run's users or items), built once: a dict of the ids.

    A raw id of the map's own type (an ``int`` for a numeric map, a ``str`` for a text one) is one dict get;
    anything else (text spelling a number, a float, an int for a text map) is converted first as
    :func:`recvae.data.ids.coerce_ids` does, so the answers equal :func:`recvae.data.ids.find_ids`'. The dict
    costs about 100 bytes per id (a million items: ~100 MB beside the run).
    """

    def __init__(self, ids) -> None:
        ids = np.asarray(ids)
        self._reference = ids[:0]
        self._exact = int if ids.dtype.kind in "iu" else str if ids.dtype.kind in "UO" else None
        self._positions = dict(zip(ids.tolist(), range(len(ids))))

    def __len__(self) -> int:
        return len(self._positions)

    def find(self, raw: Sequence) -> list[int | None]:
        """Each raw id's position, or None where it is not in the map (no error)."""
        positions, exact = self._positions, self._exact
        out = [positions.get(value) if type(value) is exact else None for value in raw]
        missed = [i for i, (value, found) in enumerate(zip(raw, out)) if found is None and type(value) is not exact]
        if missed:
            converted = coerce_ids([raw[i] for i in missed], self._reference).tolist()
            for i, value in zip(missed, converted):
                out[i] = positions.get(value) if not isinstance(value, bool) else None
        return out

    def lookup(self, raw: Sequence, what: str) -> np.ndarray:
        """The positions of raw ids (int64); :class:`recvae.data.ids.UnknownIdError` (404) lists the unknown
        ones (the first five, and how many more)."""
        found = self.find(raw)
        if None in found:
            unknown = [value for value, position in zip(raw, found) if position is None]
            shown = ", ".join(map(short_id, unknown[:5]))
            more = f" and {len(unknown) - 5:,} more" if len(unknown) > 5 else ""
            raise UnknownIdError(f"unknown {what} id(s): {shown}{more}", unknown)
        return np.asarray(found, dtype=np.int64)


class RunService:
    """A run and everything the endpoints ask of it (see the module docstring)."""

    def __init__(self, run: Run, *, max_list: int, run_id: str | None = None) -> None:
        self.run = run
        self.run_id = run_identity(run) if run_id is None else run_id
        self.max_list = max_list
        self.n_items = run.n_items  # read once (a property of the split)
        self.items = IdMap(run.item_ids)
        self.users = IdMap(run.user_ids)
        self.dropped = IdMap(run.dropped_user_ids)
        self._user_ids = np.asarray(run.user_ids).tolist()  # the run's ids as JSON writes them
        self._item_ids = np.asarray(run.item_ids).tolist()
        self.user_ids_numeric = np.issubdtype(np.asarray(run.user_ids).dtype, np.integer)
        self.cold = np.diff(run.history.indptr) == 0  # known users with no training items
        # The fallback's ranking: each item's training users (as the popularity model counts them).
        self.popularity = Popularity()
        self.popularity.item_counts_ = run.split.train.getnnz(axis=0).astype(np.float32)
        self.popularity.item_ids_, self.popularity.n_items_ = run.item_ids, run.n_items

    # ------------------------------------------------------------------ request checks
    def check_k(self, k: int) -> int:
        if not 1 <= k <= self.n_items:
            raise RequestError(f"k {k}: choose k between 1 and {self.n_items} (the number of items)")
        return k

    def check_items(self, items: Sequence | None, what: str) -> tuple | None:
        """A list of raw item ids, checked (length, known ids) and made hashable; None stays None."""
        if items is None:
            return None
        if len(items) > self.max_list:
            raise RequestError(f"{what}: {len(items):,} item ids; at most {self.max_list:,} per request")
        if items:
            self.items.lookup(items, f"{what} item")  # UnknownIdError -> 404
        return tuple(items)

    def check_posterior(self, explore: float, seed: int, uncertainty: bool) -> tuple[float, int]:
        """``(explore, seed)`` of a request, checked against the run's model: one without a posterior
        (not of the VAE family) refuses ``explore > 0`` or ``uncertainty`` (422, one line)."""
        try:
            self.run.model.explorer(explore, seed)
            check_uncertainty(self.run.model, uncertainty, 0)
        except ValueError as err:
            raise RequestError(one_line(err)) from None
        return float(explore), int(seed)

    def uncertainty(self, user_ids: list) -> dict[Any, float]:
        """Each known user's mean posterior sigma, by the run's user id (a worker thread)."""
        frame = self.run.embed_users(user_ids, id_columns="fixed", uncertainty=True)
        return {plain(u): float(v) for u, v in zip(frame["user_id"], frame["uncertainty"])}

    def fold_in_uncertainty(self, columns: np.ndarray, weights: np.ndarray | None) -> float:
        """A new user's mean posterior sigma from posted item columns and weights (the scoring thread)."""
        return float(user_uncertainty(self.run.model, self._posted_rows([(columns, weights)])).sigma_mean[0])

    def item_columns(self, items: Sequence, what: str) -> np.ndarray:
        """The item columns of a checked list of raw item ids (unknown ones: 404, listed)."""
        self.check_length(items, what, "item ids")
        return self.items.lookup(items, f"{what} item")

    def check_length(self, values: Sequence | None, what: str, unit: str) -> None:
        """Refuse (422) a list of more than ``max_list`` values; None passes."""
        if values is not None and len(values) > self.max_list:
            raise RequestError(f"{what}: {len(values):,} {unit}; at most {self.max_list:,} per request")

    # ------------------------------------------------------------------ users
    def find_users(self, user_ids: Sequence) -> list[tuple[Any, int | None, str | None]]:
        """``(id, row, why)`` per raw id: the run's id and row of a user with history (``why`` None), or
        ``why`` ``"unknown"``, ``"dropped"`` (by preprocessing; row None) or ``"cold"`` (known, no training
        items) for a user the run has no history for."""
        raw = list(user_ids)
        out = []
        for value, position in zip(raw, self.users.find(raw)):
            if position is None:
                gone = len(self.dropped) and self.dropped.find([value])[0] is not None
                out.append((value, None, "dropped" if gone else "unknown"))
            else:
                out.append((self._user_ids[position], position, "cold" if self.cold[position] else None))
        return out

    def refusal(self, user_id, why: str) -> RequestError:
        """The 404 of a user the run has no history for (``unknown_users="404"``)."""
        if why == "dropped":
            events = self.run.config.get("data", {}).get("min_user_events")
            return RequestError(f"user id {short_id(user_id)} was dropped by preprocessing (fewer than {events} "
                                "positive events); recommend from their items with /recommend/new-user", status=404)
        if why == "cold":
            return RequestError(f"user id {short_id(user_id)} has no training items in the run; recommend from "
                                "their items with /recommend/new-user", status=404)
        return RequestError(f"unknown user id {short_id(user_id)}: not in the run's log", status=404)

    # ------------------------------------------------------------------ scoring
    def recommend_batch(self, key: tuple, user_ids: list, k: int) -> dict[Any, list[dict]]:
        """Top ``k`` of each distinct known user under one option key, by the run's user id (the scoring thread).

        The ranking of :meth:`Run.recommend` (the users' history rows scored, their seen items masked when
        ``filter_seen``, ``exclude`` and ``candidates`` applied, ties to the lower item column), written straight
        into the answers' lists: no data frame, no second id lookup.
        """
        rows = np.asarray(self.users.find(user_ids), dtype=np.int64)
        answers = self._rank(self._scorer(key), self.run.history[rows], rows.tolist(), k, key, ban_inputs=False)
        return dict(zip(user_ids, answers))

    def fallback(self, rows: list[int | None], k: int, key: tuple, posted: Sequence | None = None
                 ) -> list[tuple[str, list[dict], int]]:
        """``(reason, items, items_used)`` for users the run has no history for (the scoring thread).

        ``rows``: each user's row in the run (a cold user's) or None. With ``posted`` item ids (one user), the
        known ones are folded in as a new user (``"fold-in"``, as /recommend/new-user); otherwise, or when none
        is in the catalogue, the popularity ranking of the run's training matrix (``"popularity"``). With
        ``filter_seen`` the posted items and a cold user's seen items are never recommended.
        """
        columns = self.known_columns(posted)
        if len(columns):
            return [("fold-in", items, len(columns)) for items in self.fold_in(key, [(columns, None, r) for r in rows], k)]
        empty = sp.csr_matrix((len(rows), self.n_items), dtype=np.float32)
        return [("popularity", items, 0) for items in self._rank(self.popularity, empty, rows, k, key)]

    def fold_in(self, key: tuple, users: Sequence[tuple], k: int) -> list[list[dict]]:
        """The top ``k`` of new users folded in together, one list per user (the scoring thread).

        ``users``: ``(columns, weights, row)`` each: the item columns posted (at least one), their weights (None:
        each 1; a column given twice adds its weights) and the user's row in the run (a cold user's seen items
        are filtered too) or None. ``key`` is ``(filter_seen, exclude, candidates, explore, seed)``; with
        ``filter_seen`` the posted items are never recommended (as :meth:`Run.recommend_for_items`).
        """
        posted = self._posted_rows([(columns, weights) for columns, weights, _ in users])
        return self._rank(self._scorer(key), posted, [row for _, _, row in users], k, key)

    def _posted_rows(self, users: Sequence[tuple]) -> sp.csr_matrix:
        """One CSR row per ``(columns, weights)``: each posted column's weight (None: 1; a repeated column adds)."""
        values = [np.ones(len(c), np.float32) if w is None else np.asarray(w, np.float32) for c, w in users]
        indptr = np.concatenate([[0], np.cumsum([len(c) for c, _ in users])]).astype(np.int64)
        posted = sp.csr_matrix((np.concatenate(values), np.concatenate([c for c, _ in users]).astype(np.int64),
                                indptr), shape=(len(users), self.n_items))
        posted.sum_duplicates()
        return posted

    def _scorer(self, key: tuple):
        """The run's model, or its exploratory view when the key's ``explore`` is above 0 (the VAE family)."""
        return self.run.model.explorer(key[3], key[4])

    def _rank(self, model, inputs: sp.csr_matrix, rows: list[int | None], k: int, key: tuple, *,
              ban_inputs: bool = True) -> list[list[dict]]:
        """Each input row's ranked items under the options ``key``; with ``filter_seen`` the users' seen items
        (their ``rows`` in the run; None: none) and, with ``ban_inputs``, the input rows' items are masked."""
        filter_seen, exclude, candidates = key[:3]  # explore and seed are the scorer's (see _scorer)
        n, n_items = inputs.shape
        banned = None
        if filter_seen:
            if all(r is not None for r in rows):
                seen = self.run.seen[np.asarray(rows, dtype=np.int64)]
            elif any(r is not None for r in rows):
                seen = sp.vstack([self.run.seen[r] if r is not None else sp.csr_matrix((1, n_items), dtype=np.float32)
                                  for r in rows]).tocsr()
            else:
                seen = sp.csr_matrix((n, n_items), dtype=np.float32)
            banned = (seen + inputs).tocsr() if ban_inputs else seen
        excluded = item_mask(self._columns(exclude), n, n_items, "exclude")
        allowed = item_mask(self._columns(candidates), n, n_items, "candidates")
        items, scores = rank_in_blocks(model, inputs, min(k, n_items), exclude=[banned, excluded], candidates=allowed)
        ids, out = self._item_ids, []
        for row_items, row_scores in zip(items, scores):
            kept = row_items >= 0
            out.append([{"rank": r, "item_id": ids[j], "score": s}
                        for r, (j, s) in enumerate(zip(row_items[kept].tolist(), row_scores[kept].tolist()), start=1)])
        return out

    def known_columns(self, items: Sequence | None) -> np.ndarray:
        """The distinct catalogue columns of raw item ids; ids not in the catalogue are left out."""
        if not items:
            return np.zeros(0, dtype=np.int64)
        return np.unique(np.asarray([p for p in self.items.find(list(items)) if p is not None], dtype=np.int64))

    def _columns(self, items: tuple | None) -> np.ndarray | None:
        return None if items is None else self.items.lookup(list(items), "item")


# ============================================================================ the slot and its reload
class ServedRun:
    """The :class:`RunService` serving now, and its reload (see the module docstring).

    Args:
        service: the first run's service.
        start_path: the run directory the server was started with (what :meth:`reload` reads by default).
        device, allow_failed: how a reloaded run is loaded (as :meth:`Run.load`).
        on_swap: called with the new service after each swap.
    """

    def __init__(self, service: RunService, *, start_path: Path | None, device: str, allow_failed: bool,
                 on_swap: Callable[[RunService], None] | None = None) -> None:
        self.current = service
        self.on_swap = on_swap
        self.start_path = start_path
        self.device = device
        self.allow_failed = allow_failed
        self.reloads = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()  # one reload at a time

    def reload(self, path: str | os.PathLike | None = None) -> tuple[RunService, RunService]:
        """Load the run at ``path`` (default: the start path) fully, check it, and swap it in: ``(old, new)``.

        Blocking: call it in a worker thread. Raises :class:`ReloadRefused` (one line; the old run keeps
        serving) for a run that does not load, failed training, changed while it was read, or does not fit in
        the memory left beside the old one.
        """
        with self._lock:
            try:
                new = self._load(path)
            except ReloadRefused as err:
                self.last_error = str(err)
                raise
            old, self.current = self.current, new  # one assignment: the next request starts on the new run
            self.reloads += 1
            self.last_error = None
            if self.on_swap is not None:
                self.on_swap(new)
        logger.warning("reloaded: now serving %s (%r), was %s", new.run_id, new.run, old.run_id)
        return old, new

    def _load(self, path: str | os.PathLike | None) -> RunService:
        old = self.current
        if path is None and self.start_path is None:
            raise ReloadRefused(f"reload refused: the server was given a Run, not a directory; name the run "
                                f"directory to load (still serving {old.run_id})")
        path = Path(self.start_path if path is None else path)
        try:
            before = _manifest_digest(path)
            files = read_json(path / MANIFEST_FILE).get("files", {}) if before is not None else {}
            size = sum(int(f.get("bytes", 0)) for f in files.values() if isinstance(f, dict))
            require_memory(f"reloading {path}", {"its files (more once loaded)": size},
                           "free memory, or restart the server on the new run instead of reloading")
            run = Run.load(path, device=self.device, allow_failed=self.allow_failed)
            run.check_status(allow_failed=self.allow_failed)
            if _manifest_digest(path) != before:
                raise RunError(f"{path}: the run changed while it was read; reload again once it is written")
            return RunService(run, max_list=old.max_list)
        except (RunError, OSError, MemoryError, ValueError, KeyError, TypeError) as err:
            raise ReloadRefused(f"reload refused: {one_line(err)} (still serving {old.run_id})") from None
