"""The scoring queue of the HTTP server (see :mod:`recvae.serving.server`'s docstring).

Every request that scores (``/recommend``, ``/recommend/new-user``, the fallbacks, ``/recommend/batch``,
``/similar``) waits in one bounded queue; one background task takes **everything waiting** (up to
``max_batch``) as soon as the scoring thread is free, groups it by the run that resolved it, the kind of
scoring and the options, and scores each group with one call in **one** worker thread, off the event loop.
There is no fixed wait: a request that finds the queue empty and the thread idle is scored at once, and
the requests that arrive while a batch is scored form the next batch, so batches fill by themselves under
load (``max_wait_s`` > 0 adds a wait for more, for clients that prefer fuller batches to latency).

A request that finds ``max_queue`` requests already waiting is refused at once with :class:`Overloaded`
(the server answers 503 with ``Retry-After``) instead of waiting without bound. A request carries the
service it started on, so a reload that swaps the run while it waits does not change the run that
answers it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from recvae.serving.http_errors import Overloaded
from recvae.serving.service import RunService

__all__ = ["Batcher", "Overloaded", "DEFAULT_MAX_QUEUE", "KNOWN", "FOLD_IN", "CALL"]

#: The most requests waiting for the scoring thread before new ones answer 503.
DEFAULT_MAX_QUEUE = 1024
#: What a refused request is told to wait before it tries again (seconds, ``Retry-After``).
RETRY_AFTER_S = 1
#: Kinds of work: known users by id (one ``RunService.recommend_batch`` per group), posted item lists folded
#: in (one ``RunService.fold_in`` per group), or a call scored alone (batches of users, similar items).
KNOWN, FOLD_IN, CALL = "known", "fold-in", "call"


@dataclass
class _Pending:
    """One request waiting for the scoring thread."""

    service: RunService  # the run the request started on (a reload does not move it)
    kind: str  # KNOWN, FOLD_IN or CALL
    key: tuple  # (filter_seen, exclude, candidates, explore, seed): equal (service, kind, key) share one call
    payload: Any  # KNOWN: the run's user id; FOLD_IN: (item columns, weights); CALL: a callable
    k: int
    future: asyncio.Future = field(repr=False)


class Batcher:
    """The scoring queue and its one worker thread; one per app (see the module docstring).

    Args:
        max_batch: most requests scored in one batch (1: each request alone, ``micro_batching=False``).
        max_wait_s: how long a batch waits for more requests once the thread is free (0: not at all).
        max_queue: most requests waiting; one more is refused with :class:`Overloaded`.
    """

    def __init__(self, *, max_batch: int, max_wait_s: float = 0.0, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.batches = 0
        self.requests = 0
        self.refused = 0

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._wakeup = loop, asyncio.Event()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="recvae-score")
            self._task = loop.create_task(self._consume())

    def _put(self, service: RunService, kind: str, key: tuple, payload, k: int) -> asyncio.Future:
        self._ensure_started()
        if len(self._waiting) >= self.max_queue:
            self.refused += 1
            raise Overloaded(f"server overloaded: {len(self._waiting):,} requests already waiting to be scored "
                             f"(max_queue {self.max_queue:,}); retry after {RETRY_AFTER_S} s, or serve with more "
                             "cores and workers (--workers)", RETRY_AFTER_S)
        future = self._loop.create_future()
        self._waiting.append(_Pending(service, kind, key, payload, k, future))
        self._wakeup.set()
        return future

    async def submit(self, service: RunService, user_id, k: int, key: tuple) -> list[dict]:
        """The top ``k`` of the run's user ``user_id`` under the option ``key`` (``(filter_seen, exclude,
        candidates)``), scored with the batch it joins."""
        return await self._put(service, KNOWN, key, user_id, k)

    async def submit_fold_in(self, service: RunService, columns, weights, k: int, key: tuple, row: int | None = None
                             ) -> list[dict]:
        """The top ``k`` of a new user of the item ``columns`` (with ``weights``, or None: each 1; ``row``: a
        cold known user's row, whose seen items are filtered too), folded in with the batch it joins; ``key``
        as :meth:`submit`."""
        return await self._put(service, FOLD_IN, key, (columns, weights, row), k)

    async def call(self, service: RunService, function: Callable[[], Any]) -> Any:
        """``function()`` in the scoring thread, alone, in its turn (the queue bound applies)."""
        return await self._put(service, CALL, (), function, 0)

    @property
    def waiting(self) -> int:
        """Requests waiting for the scoring thread now."""
        return len(self._waiting)

    async def stop(self) -> None:
        """Cancel the background task and end the worker thread (the app's shutdown)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _take(self) -> list[_Pending]:
        """Everything waiting, up to ``max_batch``; a request whose client went away is dropped here."""
        batch = []
        while self._waiting and len(batch) < self.max_batch:
            pending = self._waiting.popleft()
            if not pending.future.done():
                batch.append(pending)
        return batch

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.max_wait_s > 0 and len(self._waiting) < self.max_batch:
                deadline = time.monotonic() + self.max_wait_s
                while len(self._waiting) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), left)
                    except asyncio.TimeoutError:
                        break
            batch = self._take()
            if not batch:
                continue
            groups: dict[tuple, list[_Pending]] = {}
            for pending in batch:
                group = (pending.service, pending.kind, pending.key, id(pending) if pending.kind == CALL else None)
                groups.setdefault(group, []).append(pending)
            results = await loop.run_in_executor(self._executor, self._score_groups, groups)
            for group, members in groups.items():
                result = results[group]
                for position, pending in enumerate(members):
                    if pending.future.done():
                        continue
                    if isinstance(result, BaseException):
                        pending.future.set_exception(result)
                    elif pending.kind == KNOWN:
                        pending.future.set_result(result.get(pending.payload, [])[: pending.k])
                    elif pending.kind == FOLD_IN:
                        pending.future.set_result(result[position][: pending.k])
                    else:
                        pending.future.set_result(result)
            self.batches += 1
            self.requests += len(batch)

    @staticmethod
    def _score_groups(groups: dict[tuple, list[_Pending]]) -> dict[tuple, Any]:
        """Each group's answer (the scoring thread): a dict by user (KNOWN), a list by request (FOLD_IN), the
        call's value (CALL), or the exception that group raised."""
        results: dict[tuple, Any] = {}
        for group, members in groups.items():
            service, kind, options, _ = group
            try:
                if kind == KNOWN:
                    users = list(dict.fromkeys(p.payload for p in members))
                    results[group] = service.recommend_batch(options, users, max(p.k for p in members))
                elif kind == FOLD_IN:
                    results[group] = service.fold_in(options, [p.payload for p in members],
                                                     max(p.k for p in members))
                else:
                    results[group] = members[0].payload()
            except Exception as err:  # noqa: BLE001 - one group's error (e.g. bad options) fails that group only
                results[group] = err
        return results
