"""An HTTP recommendation server over a run directory (FastAPI + uvicorn, the ``serve`` extra).

    recvae serve runs/prod --port 8000                        # the command line
    curl -s localhost:8000/recommend -H 'content-type: application/json' -d '{"user_id": "u17", "k": 10}'

    from recvae.serving.server import create_app, serve
    app = create_app("runs/prod")                            # a FastAPI app (tests, your own ASGI server)
    serve("runs/prod", port=8000)                            # uvicorn on 127.0.0.1

Endpoints (JSON in and out; ids are strings or numbers, looked up as :class:`recvae.runs.Run` does):

- ``POST /recommend`` ``{user_id, k=10, exclude?, candidates?, filter_seen=true}``
  -> ``{user_id, items: [{rank, item_id, score}]}``
- ``GET /recommend/{user_id}?k=10``: the same for one user, default options
- ``POST /recommend/batch`` ``{user_ids, k=10, exclude?, candidates?, filter_seen=true}`` -> ``{results:
  [{user_id, items}], missing: [ids not in the run]}`` (scored together, each user once)
- ``POST /recommend/new-user`` ``{item_ids, k=10, exclude?, candidates?}`` -> ``{items}`` (fold-in, no retraining)
- ``POST /similar`` ``{item_id, k=10}`` -> ``{item_id, items: [{rank, item_id, score}]}``
- ``GET /health`` -> ``{"status": "ok"}``; ``GET /info`` -> model, users, items, version

Unknown user or item ids answer 404, a bad ``k`` (below 1 or above the catalogue), a list
longer than ``max_list`` or a wrong type 422, each as ``{"detail": "<one line>"}``; no answer
carries a traceback, and an id echoed in a message is cut to its first 64 characters.
A request body over ``max_body_bytes`` (1 MiB by default) answers 413 before it is read: a
declared ``Content-Length`` is checked first, and a chunked body is counted while it streams
in and refused as soon as it passes the limit (both in :mod:`recvae.serving.http_errors`).

``items`` holds at most ``k`` entries, fewer when fewer items are eligible (seen items, ``exclude``,
``candidates``): a client reads its length.

Micro-batching: ``/recommend`` requests wait in a queue; one background task takes the
first waiting request, collects more for at most ``max_wait_ms`` (or until ``max_batch``),
groups them by their options (``filter_seen``, ``exclude``, ``candidates``) and scores each
group with one :meth:`Run.recommend` call for all its users at the largest ``k`` asked, in
a worker thread, then hands each request its own user's first ``k`` rows. While a batch is
scored, new requests queue up for the next one. ``micro_batching=False`` scores each
request alone (in a worker thread), for comparison.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import pandas as pd

from recvae import __version__
from recvae.data.ids import lookup_ids, short_id
from recvae.runs import Run
from recvae.serving.http_errors import DEFAULT_MAX_BODY_BYTES, BodyLimit, RequestError, install_error_handlers

try:
    import uvicorn
    from fastapi import FastAPI
    from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr
except ImportError:  # the optional ``serve`` extra is not installed
    HAVE_SERVER = False
else:
    HAVE_SERVER = True

logger = logging.getLogger(__name__)

__all__ = ["create_app", "serve", "HAVE_SERVER", "MISSING_SERVER"]

MISSING_SERVER = "the server needs FastAPI and uvicorn: pip install recvae[serve]"
DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_LIST = 10_000
#: The environment variables a uvicorn worker process reads its settings from (``serve(workers=N)``).
ENV_RUN, ENV_OPTIONS = "RECVAE_SERVE_RUN", "RECVAE_SERVE_OPTIONS"


class ServerError(RuntimeError):
    """The server cannot start as asked (a missing extra, a bad option)."""


# ============================================================================ request and response models
if HAVE_SERVER:
    RawId = Union[StrictStr, StrictInt, StrictFloat]

    class _Body(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class RecommendRequest(_Body):
        user_id: RawId = Field(description="a raw user id of the run's log")
        k: StrictInt = Field(10, description="items to return (1 .. the number of items)")
        exclude: list[RawId] | None = Field(None, description="raw item ids never to recommend")
        candidates: list[RawId] | None = Field(None, description="the only raw item ids that may be recommended")
        filter_seen: bool = Field(True, description="never recommend items the user interacted with in the log")

    class NewUserRequest(_Body):
        item_ids: list[RawId] = Field(description="raw item ids of the new user's history (folded in)")
        k: StrictInt = 10
        exclude: list[RawId] | None = None
        candidates: list[RawId] | None = None

    class SimilarRequest(_Body):
        item_id: RawId
        k: StrictInt = 10

    class RankedItem(BaseModel):
        rank: int
        item_id: RawId
        score: float

    class RecommendResponse(BaseModel):
        user_id: RawId
        items: list[RankedItem]

    class BatchRequest(_Body):
        user_ids: list[RawId] = Field(description="raw user ids of the run's log, scored together")
        k: StrictInt = 10
        exclude: list[RawId] | None = None
        candidates: list[RawId] | None = None
        filter_seen: bool = True

    class BatchResponse(BaseModel):
        results: list[RecommendResponse]
        missing: list[str] = Field(description="requested ids not in the run (unknown, or dropped by preprocessing)")

    class NewUserResponse(BaseModel):
        items: list[RankedItem]

    class SimilarResponse(BaseModel):
        item_id: RawId
        items: list[RankedItem]

    class HealthResponse(BaseModel):
        status: str

    class InfoResponse(BaseModel):
        model: str | None
        model_class: str
        users: int
        items: int
        version: str
        micro_batching: bool
        max_batch: int
        max_wait_ms: float
        batches: int | None = Field(None, description="micro-batches scored so far (this process)")
        batched_requests: int | None = Field(None, description="/recommend requests they answered")


def _require_server() -> None:
    if not HAVE_SERVER:
        raise ServerError(MISSING_SERVER)


# ============================================================================ the service
@dataclass
class _Pending:
    """One /recommend request waiting for its batch."""

    user_id: Any  # the run's own id (found by Run.resolve_users)
    k: int
    key: tuple  # (filter_seen, exclude, candidates): requests with equal keys share a Run.recommend call
    future: asyncio.Future = field(repr=False)


class _Service:
    """The run, its id lookups and the request checks shared by the endpoints."""

    def __init__(self, run: Run, *, max_list: int) -> None:
        self.run = run
        self.max_list = max_list
        self.item_index = pd.Index(np.asarray(run.item_ids))

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

    def find_user(self, user_id) -> Any:
        """The run's id for a raw user id; 404 when the log has no such user (or preprocessing dropped it)."""
        _, found, skipped = self.run.resolve_users([user_id])
        if skipped.dropped:
            events = skipped.min_user_events
            raise RequestError(f"user id {short_id(user_id)} was dropped by preprocessing (fewer than {events} "
                               "positive events); recommend from their items with /recommend/new-user", status=404)
        if skipped or not len(found):
            raise RequestError(f"unknown user id {short_id(user_id)}: not in the run's log", status=404)
        return found[0].item() if isinstance(found[0], np.generic) else found[0]

    def recommend_batch(self, key: tuple, user_ids: list, k: int) -> dict[Any, list[dict]]:
        """Top ``k`` of each distinct user under one option key, by the run's user id (a worker thread)."""
        filter_seen, exclude, candidates = key
        frame = self.run.recommend(user_ids, k=k, filter_seen=filter_seen,
                                   exclude=None if exclude is None else list(exclude),
                                   candidates=None if candidates is None else list(candidates), id_columns="fixed")
        ranks, items, scores = frame["rank"].tolist(), frame["item_id"].tolist(), frame["score"].tolist()
        out: dict[Any, list[dict]] = {}
        for user, positions in frame.groupby("user_id", sort=False).indices.items():
            user = user.item() if isinstance(user, np.generic) else user
            out[user] = [{"rank": ranks[p], "item_id": items[p], "score": scores[p]} for p in positions]
        return out


def _ranked(frame: pd.DataFrame, item_column: str = "item_id") -> list[dict]:
    return [{"rank": r, "item_id": i, "score": s}
            for r, i, s in zip(frame["rank"].tolist(), frame[item_column].tolist(), frame["score"].tolist())]


class _Batcher:
    """The micro-batching queue of /recommend (see the module docstring); one per event loop."""

    def __init__(self, service: _Service, *, max_batch: int, max_wait_s: float) -> None:
        self.service = service
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

    async def submit(self, user_id, k: int, key: tuple) -> list[dict]:
        queue = self._ensure_started()
        future = asyncio.get_running_loop().create_future()
        queue.put_nowait(_Pending(user_id, k, key, future))
        return await future

    async def stop(self) -> None:
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
                groups.setdefault(pending.key, []).append(pending)
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
            users = list(dict.fromkeys(p.user_id for p in members))
            try:
                results[key] = self.service.recommend_batch(key, users, max(p.k for p in members))
            except Exception as err:  # noqa: BLE001 - one group's error (e.g. bad options) fails that group only
                results[key] = err
        return results


# ============================================================================ the app
def create_app(
    run_dir_or_run: str | os.PathLike | Run,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_wait_ms: float = 5.0,
    max_list: int = DEFAULT_MAX_LIST,
    micro_batching: bool = True,
    device: str = "auto",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    allow_failed: bool = False,
) -> FastAPI:
    """A FastAPI app serving a run (a directory, loaded with ``device``, or a :class:`Run`).

    Args:
        max_batch: most /recommend requests scored in one batch.
        max_wait_ms: how long the first request of a batch waits for more (micro-batching).
        max_list: most item ids in one request's list (``exclude``, ``candidates``, ``item_ids``).
        micro_batching: False scores each /recommend request alone.
        max_body_bytes: the largest request body read; a larger one answers 413 unread (see the module
            docstring).
        allow_failed: serve a run whose training failed anyway (refused by default).
    """
    _require_server()
    if max_batch < 1 or max_wait_ms < 0 or max_list < 1:
        raise ServerError(f"max_batch {max_batch}, max_wait_ms {max_wait_ms}, max_list {max_list}: max_batch and "
                          "max_list must be at least 1 and max_wait_ms at least 0")
    _check_max_body_bytes(max_body_bytes)
    run = run_dir_or_run if isinstance(run_dir_or_run, Run) else \
        Run.load(run_dir_or_run, device=device, allow_failed=allow_failed)
    run.check_status(allow_failed=allow_failed)  # a run whose training failed is refused (RunError)
    service = _Service(run, max_list=max_list)
    batcher = _Batcher(service, max_batch=max_batch, max_wait_s=max_wait_ms / 1000.0) if micro_batching else None

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        if batcher is not None:
            await batcher.stop()

    app = FastAPI(title="recvae", version=__version__, lifespan=lifespan,
                  description=f"Recommendations from {run!r}")
    app.state.run = run
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, max_body_bytes=max_body_bytes)
    install_error_handlers(app)
    _add_status_routes(app, run, batcher, max_batch=max_batch, max_wait_ms=max_wait_ms)
    _add_recommendation_routes(app, run, service, batcher)
    return app


def _check_max_body_bytes(max_body_bytes) -> None:
    if not isinstance(max_body_bytes, (int, np.integer)) or isinstance(max_body_bytes, bool) or max_body_bytes < 1:
        raise ServerError(f"max_body_bytes {max_body_bytes!r}: give a whole number of bytes, at least 1 "
                          f"(the default is {DEFAULT_MAX_BODY_BYTES:,})")


def _add_status_routes(app: FastAPI, run: Run, batcher: _Batcher | None, *, max_batch: int,
                       max_wait_ms: float) -> None:
    """``GET /health`` and ``GET /info`` (the model, its catalogue, the version and the batching counters)."""

    @app.get("/health", response_model=HealthResponse)
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/info", response_model=InfoResponse)
    async def info() -> dict:
        about = run.info()
        return {"model": about.get("model"), "model_class": about["model_class"], "users": about["users"],
                "items": about["items"], "version": __version__, "micro_batching": batcher is not None,
                "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                "batches": None if batcher is None else batcher.batches,
                "batched_requests": None if batcher is None else batcher.requests}


def _add_recommendation_routes(app: FastAPI, run: Run, service: _Service, batcher: _Batcher | None) -> None:
    """``POST /recommend`` (through the batcher when there is one), ``/recommend/new-user`` and ``/similar``."""

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(body: RecommendRequest) -> dict:
        k = service.check_k(body.k)
        key = (body.filter_seen, service.check_items(body.exclude, "exclude"),
               service.check_items(body.candidates, "candidates"))
        user = service.find_user(body.user_id)
        if batcher is not None:
            items = await batcher.submit(user, k, key)
        else:
            items = (await asyncio.to_thread(service.recommend_batch, key, [user], k)).get(user, [])
        return {"user_id": user, "items": items}

    @app.get("/recommend/{user_id}", response_model=RecommendResponse)
    async def recommend_by_path(user_id: str, k: int = 10) -> dict:
        """``GET /recommend/ID?k=10``: POST /recommend's answer (a numeric id read as a number where ids are)."""
        if user_id in ("new-user", "batch"):  # the POST routes (a user with such an id: POST /recommend)
            raise RequestError(f"/recommend/{user_id} takes POST (a JSON body), not GET", status=405)
        numeric = np.issubdtype(np.asarray(run.user_ids).dtype, np.integer) and user_id.lstrip("-").isdigit()
        return await recommend(RecommendRequest(user_id=int(user_id) if numeric else user_id, k=k))

    @app.post("/recommend/batch", response_model=BatchResponse)
    async def recommend_batch(body: BatchRequest) -> dict:
        """Many users in one request, scored together; ids not in the run are listed under ``missing``."""
        k = service.check_k(body.k)
        if len(body.user_ids) > service.max_list:
            raise RequestError(f"user_ids: {len(body.user_ids):,} ids; at most {service.max_list:,} per request")
        key = (body.filter_seen, service.check_items(body.exclude, "exclude"),
               service.check_items(body.candidates, "candidates"))
        _, found, _ = run.resolve_users(body.user_ids)
        users = list(dict.fromkeys(u.item() if isinstance(u, np.generic) else u for u in found))
        scored = await asyncio.to_thread(service.recommend_batch, key, users, k) if users else {}
        known = set(users)
        return {"results": [{"user_id": u, "items": scored.get(u, [])} for u in users],
                "missing": [str(u)[:64] + ("..." if len(str(u)) > 64 else "") for u in body.user_ids if u not in known]}

    @app.post("/recommend/new-user", response_model=NewUserResponse)
    async def recommend_new_user(body: NewUserRequest) -> dict:
        k = service.check_k(body.k)
        items = service.check_items(body.item_ids, "item_ids")
        if not items:
            raise RequestError("item_ids: give at least one item id of the new user's history")
        exclude = service.check_items(body.exclude, "exclude")
        candidates = service.check_items(body.candidates, "candidates")
        frame = await asyncio.to_thread(
            run.recommend_for_items, list(items), k, exclude=None if exclude is None else list(exclude),
            candidates=None if candidates is None else list(candidates), strict=True, id_columns="fixed")
        return {"items": _ranked(frame)}

    @app.post("/similar", response_model=SimilarResponse)
    async def similar(body: SimilarRequest) -> dict:
        k = service.check_k(body.k)
        service.check_items([body.item_id], "item_id")
        frame = await asyncio.to_thread(run.similar_items, [body.item_id], k, id_columns="fixed")
        item = frame["item_id"].iloc[0] if len(frame) else body.item_id
        item = item.item() if isinstance(item, np.generic) else item
        return {"item_id": item, "items": _ranked(frame, "similar_item_id")}


# ============================================================================ running it
def _app_from_environment() -> FastAPI:
    """The app of a uvicorn worker process (``serve(workers=N)``): settings from the environment."""
    options = _decode_options(os.environ.get(ENV_OPTIONS, ""))
    return create_app(os.environ[ENV_RUN], **options)


def _encode_options(options: dict) -> str:
    return ";".join(f"{k}={v}" for k, v in options.items())


def _decode_options(text: str) -> dict:
    casts = {"max_batch": int, "max_list": int, "max_wait_ms": float, "micro_batching": lambda v: v == "True",
             "device": str, "max_body_bytes": int, "allow_failed": lambda v: v == "True"}
    pairs = (part.split("=", 1) for part in text.split(";") if part)
    return {key: casts[key](value) for key, value in pairs if key in casts}


def serve(
    run_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_wait_ms: float = 5.0,
    max_list: int = DEFAULT_MAX_LIST,
    micro_batching: bool = True,
    device: str = "auto",
    log_level: str = "warning",
    access_log: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    allow_failed: bool = False,
) -> None:
    """Serve a run directory with uvicorn until interrupted (each of ``workers`` processes loads the run).

    The options are :func:`create_app`'s (``max_body_bytes``: the largest request body read, 413 above it;
    ``allow_failed``: serve a run whose training failed anyway, refused by default).
    """
    _require_server()
    _check_max_body_bytes(max_body_bytes)
    if workers < 1:
        raise ServerError(f"workers {workers}: give at least 1")
    if not 0 <= port <= 65535:
        raise ServerError(f"port {port}: choose a port between 0 and 65535")
    options = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_list": max_list,
               "micro_batching": micro_batching, "device": device, "max_body_bytes": max_body_bytes,
               "allow_failed": allow_failed}
    if workers == 1:
        app = create_app(run_dir, **options)
        logger.info("serving %r on http://%s:%d", app.state.run, host, port)
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)
        return
    path = Path(run_dir)
    Run.load(path, device="cpu", allow_failed=allow_failed)  # fail here, once, before forking workers
    os.environ[ENV_RUN] = str(path.resolve())
    os.environ[ENV_OPTIONS] = _encode_options(options)
    uvicorn.run("recvae.serving.server:_app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=access_log)
