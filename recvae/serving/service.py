"""What the HTTP server serves: one run with its id lookups, request checks and fallbacks, and the slot that
swaps in another run without dropping requests.

- :class:`RunService`: a loaded :class:`recvae.runs.Run`, its ``run_id`` (:func:`run_identity`), the checks
  the endpoints share, the known users' scoring (one :meth:`Run.recommend` call per option group) and the
  fallback for users the run has no history for (:meth:`RunService.fallback`).
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
import pandas as pd
import scipy.sparse as sp

from recvae.data.ids import find_ids, lookup_ids, short_id
from recvae.models.base import item_mask, rank_in_blocks
from recvae.models.posterior import check_uncertainty
from recvae.models.popularity import Popularity
from recvae.runs import Run
from recvae.runs.directory import MANIFEST_FILE, read_json
from recvae.runs.errors import RunError, one_line
from recvae.runtime.memory import require_memory
from recvae.serving.http_errors import RequestError

logger = logging.getLogger("recvae.serving.server")

__all__ = ["RunService", "ServedRun", "ReloadRefused", "run_identity", "UNKNOWN_USERS"]

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


class RunService:
    """A run and everything the endpoints ask of it (see the module docstring)."""

    def __init__(self, run: Run, *, max_list: int, run_id: str | None = None) -> None:
        self.run = run
        self.run_id = run_identity(run) if run_id is None else run_id
        self.max_list = max_list
        self.item_index = pd.Index(np.asarray(run.item_ids))
        self.user_ids_numeric = np.issubdtype(np.asarray(run.user_ids).dtype, np.integer)
        self.cold = np.diff(run.history.indptr) == 0  # known users with no training items
        # The fallback's ranking: each item's training users (as the popularity model counts them).
        self.popularity = Popularity()
        self.popularity.item_counts_ = run.split.train.getnnz(axis=0).astype(np.float32)
        self.popularity.item_ids_, self.popularity.n_items_ = run.item_ids, run.n_items

    # ------------------------------------------------------------------ request checks
    def check_k(self, k: int) -> int:
        if not 1 <= k <= self.run.n_items:
            raise RequestError(f"k {k}: choose k between 1 and {self.run.n_items} (the number of items)")
        return k

    def check_items(self, items: Sequence | None, what: str) -> tuple | None:
        """A list of raw item ids, checked (length, known ids) and made hashable; None stays None."""
        if items is None:
            return None
        if len(items) > self.max_list:
            raise RequestError(f"{what}: {len(items):,} item ids; at most {self.max_list:,} per request")
        if items:
            lookup_ids(self.item_index, list(items), f"{what} item")  # UnknownIdError -> 404
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
        positions, found = find_ids(self.run._user_index, raw)
        dropped = np.zeros(len(raw), dtype=bool)
        if (~found).any() and len(self.run._dropped_index):
            dropped[~found] = find_ids(self.run._dropped_index, [r for r, f in zip(raw, found) if not f])[1]
        out = []
        for value, position, known, gone in zip(raw, positions.tolist(), found.tolist(), dropped.tolist()):
            if not known:
                out.append((value, None, "dropped" if gone else "unknown"))
            else:
                out.append((plain(self.run.user_ids[position]), position, "cold" if self.cold[position] else None))
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
        """Top ``k`` of each distinct user under one option key, by the run's user id (a worker thread)."""
        filter_seen, exclude, candidates, explore, seed = key
        frame = self.run.recommend(user_ids, k=k, filter_seen=filter_seen,
                                   exclude=None if exclude is None else list(exclude),
                                   candidates=None if candidates is None else list(candidates), id_columns="fixed",
                                   explore=explore, seed=seed)
        ranks, items, scores = frame["rank"].tolist(), frame["item_id"].tolist(), frame["score"].tolist()
        out: dict[Any, list[dict]] = {}
        for user, positions in frame.groupby("user_id", sort=False).indices.items():
            out[plain(user)] = [{"rank": ranks[p], "item_id": items[p], "score": scores[p]} for p in positions]
        return out

    def fallback(self, rows: list[int | None], k: int, key: tuple, posted: Sequence | None = None
                 ) -> list[tuple[str, list[dict], int]]:
        """``(reason, items, items_used)`` for users the run has no history for (a worker thread).

        ``rows``: each user's row in the run (a cold user's) or None. With ``posted`` item ids (one user), the
        known ones are folded in as a new user (``"fold-in"``, as /recommend/new-user); otherwise, or when none
        is in the catalogue, the popularity ranking of the run's training matrix (``"popularity"``). With
        ``filter_seen`` the posted items and a cold user's seen items are never recommended.
        """
        filter_seen, exclude, candidates, explore, seed = key
        columns = self._known_columns(posted)
        seen = sp.vstack([self.run.seen[r] if r is not None else sp.csr_matrix((1, self.run.n_items), dtype=np.float32)
                          for r in rows]).tocsr()
        posted_rows = sp.csr_matrix((np.ones(len(columns) * len(rows), np.float32), np.tile(columns, len(rows)),
                                     np.arange(len(rows) + 1) * len(columns)), shape=seen.shape)
        n, n_items = seen.shape
        banned = [(seen + posted_rows).tocsr() if filter_seen else None,
                  item_mask(self._columns(exclude), n, n_items, "exclude")]
        allowed = item_mask(self._columns(candidates), n, n_items, "candidates")
        model, reason = (self.run.model.explorer(explore, seed), "fold-in") if len(columns) else \
            (self.popularity, "popularity")  # popularity has no posterior: explore does not apply
        items, scores = rank_in_blocks(model, posted_rows, min(k, n_items), exclude=banned, candidates=allowed)
        out = []
        for row_items, row_scores in zip(items, scores):
            kept = row_items >= 0
            out.append((reason, [{"rank": r, "item_id": plain(self.run.item_ids[j]), "score": float(s)}
                                 for r, (j, s) in enumerate(zip(row_items[kept], row_scores[kept]), start=1)],
                        len(columns)))
        return out

    def _known_columns(self, items: Sequence | None) -> np.ndarray:
        if not items:
            return np.zeros(0, dtype=np.int64)
        positions, found = find_ids(self.item_index, list(items))
        return np.unique(positions[found])

    def _columns(self, items: tuple | None) -> np.ndarray | None:
        return None if items is None else lookup_ids(self.item_index, list(items), "item")


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
