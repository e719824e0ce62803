"""The micro-batching queue of ``POST /recommend`` (see :mod:`recvae.serving.server`'s docstring).

One background task takes the first waiting request, collects more for at most ``max_wait_s`` (or until
``max_batch``), groups them by the run that resolved them and their options, and scores each group with one
:meth:`recvae.runs.Run.recommend` call in a worker thread. A request carries the service it started on, so
a reload that swaps the run while it waits does not change the run that answers it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from recvae.serving.service import RunService

__all__ = ["Batcher"]


@dataclass
class _Pending:
    """One /recommend request waiting for its batch."""

    service: RunService  # the run the request started on (a reload does not move it)
    user_id: Any  # the run's own id (found by RunService.find_users)
    k: int
    key: tuple  # (filter_seen, exclude, candidates, explore, seed): equal keys share a Run.recommend call
    future: asyncio.Future = field(repr=False)


class Batcher:
    """The micro-batching queue of /recommend; one per event loop."""

    def __init__(self, *, max_batch: int, max_wait_s: float) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self.batches = 0
        self.requests = 0

    def _ensure_started(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._consume(self._queue))
        return self._queue

    async def submit(self, service: RunService, user_id, k: int, key: tuple) -> list[dict]:
        """The top ``k`` of the run's user ``user_id`` under the option ``key``, scored with the batch it joins."""
        queue = self._ensure_started()
        future = asyncio.get_running_loop().create_future()
        queue.put_nowait(_Pending(service, user_id, k, key, future))
        return await future

    async def stop(self) -> None:
        """Cancel the background task (the app's shutdown)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._task = None

    async def _collect(self, queue: asyncio.Queue) -> list[_Pending]:
        batch = [await queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _consume(self, queue: asyncio.Queue) -> None:
        while True:
            batch = await self._collect(queue)
            batch = [p for p in batch if not p.future.done()]  # a client that went away cancels its future
            if not batch:
                continue
            groups: dict[tuple, list[_Pending]] = {}
            for pending in batch:
                groups.setdefault((pending.service, pending.key), []).append(pending)
            results = await asyncio.to_thread(self._score_groups, groups)
            for key, members in groups.items():
                result = results[key]
                for pending in members:
                    if pending.future.done():
                        continue
                    if isinstance(result, BaseException):
                        pending.future.set_exception(result)
                    else:
                        pending.future.set_result(result.get(pending.user_id, [])[: pending.k])
            self.batches += 1
            self.requests += len(batch)

    def _score_groups(self, groups: dict[tuple, list[_Pending]]) -> dict[tuple, Any]:
        results: dict[tuple, Any] = {}
        for key, members in groups.items():
            service, options = key
            users = list(dict.fromkeys(p.user_id for p in members))
            try:
                results[key] = service.recommend_batch(options, users, max(p.k for p in members))
            except Exception as err:  # noqa: BLE001 - one group's error (e.g. bad options) fails that group only
                results[key] = err
        return results
