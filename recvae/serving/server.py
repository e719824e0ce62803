"""An HTTP recommendation server over a run directory (FastAPI + uvicorn, the ``serve`` extra).

    recvae serve runs/prod --port 8000                        # the command line
    curl -s localhost:8000/recommend -H 'content-type: application/json' -d '{"user_id": "u17", "k": 10}'

    from recvae.serving.server import create_app, serve
    app = create_app("runs/prod")                            # a FastAPI app (tests, your own ASGI server)
    serve("runs/prod", port=8000)                            # uvicorn on 127.0.0.1

Endpoints (JSON in and out, bodies in :mod:`recvae.serving.schemas`; ids are strings or numbers, looked up as
:class:`recvae.runs.Run` does; every answer carries ``run_id``, the run that computed it):

- ``POST /recommend`` ``{user_id, k=10, exclude?, candidates?, filter_seen=true, items?, explore=0, seed=0,
  uncertainty=false}`` -> ``{user_id, items: [{rank, item_id, score}], fallback, fallback_reason, items_used,
  uncertainty, run_id}`` (``explore``/``uncertainty``: the VAE family's posterior, see
  :mod:`recvae.models.posterior`; on the batch and new-user bodies too)
- ``GET /recommend/{user_id}?k=10``: the same for one user, default options
- ``POST /recommend/batch`` ``{user_ids, k=10, exclude?, candidates?, filter_seen=true}`` -> ``{results:
  [{user_id, items, fallback, ...}], missing: [ids the run has no history for], run_id}`` (scored together,
  each user once, in the order asked)
- ``POST /recommend/new-user`` ``{item_ids, k=10, exclude?, candidates?}`` -> ``{items, run_id}`` (fold-in)
- ``POST /similar`` ``{item_id, k=10}`` -> ``{item_id, items: [{rank, item_id, score}], run_id}``
- ``GET /health`` -> ``{"status": "ok", run_id}``; ``GET /info`` -> model, users, items, version, options
- ``POST /admin/reload`` ``{run?}`` -> ``{run_id, previous_run_id, ...}`` (only with ``allow_reload``)

Users the run has no history for (unknown, dropped by preprocessing, or known with no training items):
with ``unknown_users="fallback"`` (the default) they are answered, flagged ``"fallback": true``: the
``items`` posted with the request folded in as a new user (``"fallback_reason": "fold-in"``, the answer of
/recommend/new-user for those items), else the popularity ranking of the run's training matrix
(``"popularity"``); posted items (and a cold user's seen items) are filtered like seen items. With
``unknown_users="404"`` they answer 404, as before. Known users answer ``"fallback": false``.

Reload (:class:`recvae.serving.service.ServedRun`): ``POST /admin/reload`` (``allow_reload=True``; it
opens a path a request names) or SIGHUP (``reload_on_sighup=True``, as ``serve()`` does; the run path given
at start) loads and checks the new run fully in a worker thread, then swaps it in between requests:
requests in flight finish on the old run, a run that fails to load is refused (422, one line) and the old
one keeps serving.

Unknown item ids answer 404, a bad ``k`` (below 1 or above the catalogue), a list longer than
``max_list`` or a wrong type 422, each as ``{"detail": "<one line>"}``; no answer carries a traceback,
and an id echoed in a message is cut to its first 64 characters. A request body over ``max_body_bytes``
(1 MiB by default) answers 413 before it is read (:mod:`recvae.serving.http_errors`).

``items`` holds at most ``k`` entries, fewer when fewer items are eligible (seen items, ``exclude``,
``candidates``): a client reads its length.

Scoring (:mod:`recvae.serving.batching`): every request that scores waits in one bounded queue; as soon as
the one scoring thread is free, everything waiting (up to ``max_batch``) is taken at once, grouped by run,
kind (known users, posted item lists folded in, a call alone) and options, and each group scored with one
call at the largest ``k`` asked, off the event loop. No fixed wait: a lone request is scored at once, and
the requests that arrive meanwhile form the next batch (``max_wait_ms`` > 0 waits for more).
``micro_batching=False`` scores each request alone, in the same thread. With ``max_queue`` requests
waiting, one more answers 503 with ``Retry-After`` at once. Answers are written with orjson.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import logging
import os
import signal
import threading
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np

try:
    import orjson
except ImportError:  # the serve extra installs it; without it the standard library writes the answers (slower)
    orjson = None

from recvae import __version__
from recvae.runs import Run
from recvae.serving.batching import DEFAULT_MAX_QUEUE, Batcher
from recvae.serving.http_errors import DEFAULT_MAX_BODY_BYTES, BodyLimit, RequestError, install_error_handlers
from recvae.serving.schemas import (BatchRequest, BatchResponse, HealthResponse, InfoResponse, NewUserRequest,
                                    NewUserResponse, RecommendRequest, RecommendResponse, ReloadRequest,
                                    ReloadResponse, SimilarRequest, SimilarResponse)
from recvae.serving.service import UNKNOWN_USERS, ReloadRefused, RunService, ServedRun, plain

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from pydantic import ValidationError
except ImportError:  # the optional ``serve`` extra is not installed
    HAVE_SERVER = False
else:
    HAVE_SERVER = True

logger = logging.getLogger(__name__)

__all__ = ["create_app", "serve", "HAVE_SERVER", "MISSING_SERVER"]

MISSING_SERVER = "the server needs FastAPI and uvicorn: pip install recvae[serve]"
DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_LIST = 10_000
#: How long a worker process started by SIGHUP (``serve(workers=N)``) may take to load the run and answer
#: before uvicorn gives up on it and keeps the old one (uvicorn's own default, 5 s, is less than importing
#: torch and loading a run takes on a busy machine: the reload was abandoned).
WORKER_START_TIMEOUT_S = 300
#: The environment variables a uvicorn worker process reads its settings from (``serve(workers=N)``).
ENV_RUN, ENV_OPTIONS = "RECVAE_SERVE_RUN", "RECVAE_SERVE_OPTIONS"


class ServerError(RuntimeError):
    """The server cannot start as asked (a missing extra, a bad option)."""


def _require_server() -> None:
    if not HAVE_SERVER:
        raise ServerError(MISSING_SERVER)


# ============================================================================ the app
def create_app(
    run_dir_or_run: str | os.PathLike | Run,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_wait_ms: float = 0.0,
    max_list: int = DEFAULT_MAX_LIST,
    micro_batching: bool = True,
    device: str = "auto",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    allow_failed: bool = False,
    unknown_users: str = "fallback",
    allow_reload: bool = False,
    reload_on_sighup: bool = False,
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> FastAPI:
    """A FastAPI app serving a run (a directory, loaded with ``device``, or a :class:`Run`).

    Args:
        max_batch: most requests scored in one batch.
        max_wait_ms: how long a batch waits for more requests once the scoring thread is free (default 0:
            not at all; the requests that arrive while a batch is scored form the next one).
        max_list: most ids in one request's list (``exclude``, ``candidates``, ``item_ids``, ``items``,
            ``user_ids``).
        micro_batching: False scores each request alone (still in the one scoring thread, still queued).
        max_queue: most requests waiting to be scored; one more answers 503 with ``Retry-After`` at once.
        max_body_bytes: the largest request body read; a larger one answers 413 unread (see the module
            docstring).
        allow_failed: serve a run whose training failed anyway (refused by default).
        unknown_users: ``"fallback"`` answers users the run has no history for from their posted items or
            by popularity, flagged ``"fallback": true``; ``"404"`` refuses them (see the module docstring).
        allow_reload: turn on ``POST /admin/reload`` (off by default: it loads a directory a request names).
        reload_on_sighup: reload the run directory given here on SIGHUP (the event loop's main thread only;
            ``serve()`` turns it on).
    """
    _require_server()
    if max_batch < 1 or max_wait_ms < 0 or max_list < 1 or max_queue < 1:
        raise ServerError(f"max_batch {max_batch}, max_wait_ms {max_wait_ms}, max_list {max_list}, max_queue "
                          f"{max_queue}: max_batch, max_list and max_queue must be at least 1 and max_wait_ms at "
                          "least 0")
    if unknown_users not in UNKNOWN_USERS:
        raise ServerError(f"unknown_users {unknown_users!r}: choose 'fallback' (flagged answers for users the run "
                          "has no history for) or '404'")
    _check_max_body_bytes(max_body_bytes)
    given = isinstance(run_dir_or_run, Run)
    run = run_dir_or_run if given else Run.load(run_dir_or_run, device=device, allow_failed=allow_failed)
    run.check_status(allow_failed=allow_failed)  # a run whose training failed is refused (RunError)
    slot = ServedRun(RunService(run, max_list=max_list), start_path=run.path if given else Path(run_dir_or_run),
                     device=device, allow_failed=allow_failed,
                     on_swap=lambda service: (setattr(app.state, "run", service.run), _freeze_heap()))
    batcher = Batcher(max_batch=max_batch if micro_batching else 1, max_wait_s=max_wait_ms / 1000.0,
                      max_queue=max_queue)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        loop = asyncio.get_running_loop()
        hooked = reload_on_sighup and _on_sighup(loop, slot)
        _freeze_heap()
        yield
        gc.unfreeze()
        if hooked:
            loop.remove_signal_handler(signal.SIGHUP)
        await batcher.stop()

    app = FastAPI(title="recvae", version=__version__, lifespan=lifespan,
                  description=f"Recommendations from {run!r}")
    app.state.served, app.state.run = slot, run  # app.state.run follows reloads
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, max_body_bytes=max_body_bytes)
    install_error_handlers(app)
    options = {"micro_batching": micro_batching, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
               "unknown_users": unknown_users, "allow_reload": allow_reload, "max_queue": max_queue}
    _add_status_routes(app, slot, batcher, options)
    _add_recommendation_routes(app, slot, batcher, fallback=unknown_users == "fallback")
    _add_item_routes(app, slot, batcher)
    return app


def _freeze_heap() -> None:
    """Keep the loaded run out of the garbage collector's full passes (``gc.freeze``): a full pass over its
    few hundred thousand objects stalled every request in flight for 100-250 ms (the p99 under load). Called
    at start and after each reload swap (unfrozen first, so that a replaced run's cycles can still be freed)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _check_max_body_bytes(max_body_bytes) -> None:
    if not isinstance(max_body_bytes, (int, np.integer)) or isinstance(max_body_bytes, bool) or max_body_bytes < 1:
        raise ServerError(f"max_body_bytes {max_body_bytes!r}: give a whole number of bytes, at least 1 "
                          f"(the default is {DEFAULT_MAX_BODY_BYTES:,})")


def _on_sighup(loop: asyncio.AbstractEventLoop, slot: ServedRun) -> bool:
    """Reload the start path on SIGHUP (in a worker thread; a refusal is logged). False where signals cannot be
    handled (not the main thread, no SIGHUP)."""
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        logger.warning("SIGHUP reload is off: signals reach the main thread only (reload with POST /admin/reload)")
        return False
    tasks: set[asyncio.Task] = set()

    async def reload() -> None:
        try:
            await asyncio.to_thread(slot.reload)
        except ReloadRefused as err:
            logger.error("SIGHUP: %s", err)

    def handler() -> None:
        task = loop.create_task(reload())
        tasks.add(task)  # a reference until it is done
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, handler)
    return True


def _add_status_routes(app: FastAPI, slot: ServedRun, batcher: Batcher, options: dict) -> None:
    """``GET /health``, ``GET /info`` and ``POST /admin/reload``."""

    @app.get("/health", response_model=HealthResponse)
    async def health() -> dict:
        return {"status": "ok", "run_id": slot.current.run_id}

    @app.get("/info", response_model=InfoResponse)
    async def info() -> dict:
        service = slot.current
        about = service.run.info()
        return {"run_id": service.run_id, "path": about["path"], "model": about.get("model"),
                "model_class": about["model_class"], "users": about["users"], "items": about["items"],
                "version": __version__, **options, "reloads": slot.reloads, "last_reload_error": slot.last_error,
                "batches": batcher.batches, "batched_requests": batcher.requests, "refused": batcher.refused}

    @app.post("/admin/reload", response_model=ReloadResponse)
    async def reload(body: ReloadRequest | None = None) -> dict:
        """Load the run ``body.run`` (default: the start path) fully, then swap it in between requests."""
        if not options["allow_reload"]:
            raise RequestError("reload is off: start the server with --allow-reload (create_app(allow_reload="
                               "True)), or send it SIGHUP to reload the run it was started with", status=403)
        try:
            old, new = await asyncio.to_thread(slot.reload, None if body is None else body.run)
        except ReloadRefused as err:
            raise RequestError(str(err), status=422) from None
        return {"run_id": new.run_id, "previous_run_id": old.run_id, "path": str(new.run.path),
                "model": new.run.config.get("model"), "users": len(new.run.user_ids), "items": new.run.n_items}


def _short(value) -> str:
    text = str(value)
    return text[:64] + ("..." if len(text) > 64 else "")


def _answer(user, items: list[dict], service: RunService, fallback: tuple | None = None) -> dict:
    """One user's answer: ``fallback`` is ``(reason, items_used)`` for a user the run has no history for."""
    reason, used = fallback if fallback is not None else (None, None)
    return {"user_id": user, "items": items, "fallback": fallback is not None, "fallback_reason": reason,
            "items_used": used, "uncertainty": None, "run_id": service.run_id}


def _json(payload: dict) -> Response:
    """An answer written by orjson (the endpoints' ``response_model`` documents it; FastAPI passes a Response
    through without validating it again)."""
    if orjson is None:
        return Response(json.dumps(payload, default=plain).encode(), media_type="application/json")
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


async def _parse(request: Request, model):
    """The JSON body of a hot endpoint, parsed and checked by pydantic in one step (FastAPI's own body
    handling cost more than the scoring); a bad body raises what FastAPI's would (422, one line)."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as err:
        raise RequestValidationError(err.errors(include_url=False, include_context=False)) from None


def _body_schema(model) -> dict:
    """The OpenAPI request body of an endpoint that parses its body itself (``/docs`` still shows it)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema(
        ref_template="#/components/schemas/{model}")}}}}


def _add_recommendation_routes(app: FastAPI, slot: ServedRun, batcher: Batcher, *, fallback: bool) -> None:
    """``POST /recommend`` (known users and posted items through the batcher), ``GET /recommend/{user_id}`` and
    ``POST /recommend/batch``; users without history get the fallback (or 404, ``fallback=False``)."""

    @app.post("/recommend", response_model=RecommendResponse, openapi_extra=_body_schema(RecommendRequest))
    async def recommend_post(request: Request) -> Response:
        return await recommend(await _parse(request, RecommendRequest))

    async def recommend(body: RecommendRequest) -> Response:
        service = slot.current  # this request's run, to its end (a reload swaps it for the next ones)
        k = service.check_k(body.k)
        key = (body.filter_seen, service.check_items(body.exclude, "exclude"),
               service.check_items(body.candidates, "candidates"),
               *service.check_posterior(body.explore, body.seed, body.uncertainty))
        service.check_length(body.items, "items", "item ids")
        [(user, row, why)] = service.find_users([body.user_id])
        if why is None:
            answer = _answer(user, await batcher.submit(service, user, k, key), service)
            if body.uncertainty:
                answer["uncertainty"] = (await batcher.call(service, lambda: service.uncertainty([user])))[user]
            return _json(answer)
        if not fallback:
            raise service.refusal(body.user_id, why)
        columns = service.known_columns(body.items)
        if len(columns):
            items = await batcher.submit_fold_in(service, columns, None, k, key, row=row)
            return _json(_answer(user, items, service, ("fold-in", len(columns))))
        [(reason, items, used)] = await batcher.call(service, lambda: service.fallback([row], k, key))
        return _json(_answer(user, items, service, (reason, used)))

    @app.get("/recommend/{user_id}", response_model=RecommendResponse)
    async def recommend_by_path(user_id: str, k: int = 10) -> Response:
        """``GET /recommend/ID?k=10``: POST /recommend's answer (a numeric id read as a number where ids are)."""
        if user_id in ("new-user", "batch"):  # the POST routes (a user with such an id: POST /recommend)
            raise RequestError(f"/recommend/{user_id} takes POST (a JSON body), not GET", status=405)
        numeric = slot.current.user_ids_numeric and user_id.lstrip("-").isdigit()
        return await recommend(RecommendRequest(user_id=int(user_id) if numeric else user_id, k=k))

    @app.post("/recommend/batch", response_model=BatchResponse)
    async def recommend_batch(body: BatchRequest) -> Response:
        """Many users in one request, scored together; users without history listed under ``missing``."""
        service = slot.current
        k = service.check_k(body.k)
        service.check_length(body.user_ids, "user_ids", "ids")
        key = (body.filter_seen, service.check_items(body.exclude, "exclude"),
               service.check_items(body.candidates, "candidates"),
               *service.check_posterior(body.explore, body.seed, body.uncertainty))
        users = {user: (row, why) for user, row, why in service.find_users(body.user_ids)}  # each once, in order
        known = [u for u, (_, why) in users.items() if why is None]
        cold = [(u, row) for u, (row, why) in users.items() if why is not None]

        def score() -> tuple[dict, list, dict]:
            scored = service.recommend_batch(key, known, k) if known else {}
            rest = service.fallback([row for _, row in cold], k, key) if fallback and cold else []
            return scored, rest, service.uncertainty(known) if body.uncertainty and known else {}

        scored, rest, sigma = await batcher.call(service, score)
        answers = {u: {**_answer(u, scored.get(u, []), service), "uncertainty": sigma.get(u)} for u in known}
        answers.update({u: _answer(u, items, service, (reason, used)) for (u, _), (reason, items, used)
                        in zip(cold, rest)})
        return _json({"results": [answers[u] for u in users if u in answers],
                      "missing": [_short(u) for u, _ in cold], "run_id": service.run_id})


def _fold_in_input(service: RunService, body: NewUserRequest) -> tuple[np.ndarray, np.ndarray | None]:
    """The posted item columns and weights of /recommend/new-user, checked: at least one id, every id known
    (404 lists the unknown ones), one positive finite weight per id."""
    if not body.item_ids:
        raise RequestError("item_ids: give at least one item id of the new user's history")
    columns = service.item_columns(body.item_ids, "item_ids")
    if body.weights is None:
        return np.unique(columns), None  # an id given twice counts once, as Run.recommend_for_items
    weights = np.asarray(body.weights, dtype=np.float64)
    if len(weights) != len(columns):
        raise RequestError(f"weights: {len(weights):,} values for {len(columns):,} item_ids; give one weight per "
                           "item id (or none: each counts 1)")
    if not (np.isfinite(weights) & (weights > 0)).all():
        bad = float(weights[~(np.isfinite(weights) & (weights > 0))][0])
        raise RequestError(f"weights: {bad!r} is not a positive finite number; give each item a weight above 0")
    return columns, weights.astype(np.float32)


def _add_item_routes(app: FastAPI, slot: ServedRun, batcher: Batcher) -> None:
    """``POST /recommend/new-user`` (fold-in of posted items, batched) and ``POST /similar``."""

    @app.post("/recommend/new-user", response_model=NewUserResponse, openapi_extra=_body_schema(NewUserRequest))
    async def recommend_new_user(request: Request) -> Response:
        body = await _parse(request, NewUserRequest)
        service = slot.current
        k = service.check_k(body.k)
        columns, weights = _fold_in_input(service, body)
        key = (True, service.check_items(body.exclude, "exclude"), service.check_items(body.candidates, "candidates"),
               *service.check_posterior(body.explore, body.seed, body.uncertainty))
        items = await batcher.submit_fold_in(service, columns, weights, k, key)
        sigma = (await batcher.call(service, lambda: service.fold_in_uncertainty(columns, weights))
                 if body.uncertainty else None)
        return _json({"items": items, "uncertainty": sigma, "run_id": service.run_id})

    @app.post("/similar", response_model=SimilarResponse)
    async def similar(body: SimilarRequest) -> Response:
        service = slot.current
        k = service.check_k(body.k)
        service.check_items([body.item_id], "item_id")
        frame = await batcher.call(service, lambda: service.run.similar_items([body.item_id], k, id_columns="fixed"))
        item = plain(frame["item_id"].iloc[0]) if len(frame) else body.item_id
        return _json({"item_id": item, "items": _ranked(frame, "similar_item_id"), "run_id": service.run_id})


def _ranked(frame, item_column: str = "item_id") -> list[dict]:
    return [{"rank": r, "item_id": i, "score": s}
            for r, i, s in zip(frame["rank"].tolist(), frame[item_column].tolist(), frame["score"].tolist())]


# ============================================================================ running it
def _app_from_environment() -> FastAPI:
    """The app of a uvicorn worker process (``serve(workers=N)``): settings from the environment."""
    options = _decode_options(os.environ.get(ENV_OPTIONS, ""))
    return create_app(os.environ[ENV_RUN], **options)


def _encode_options(options: dict) -> str:
    return ";".join(f"{k}={v}" for k, v in options.items())


def _decode_options(text: str) -> dict:
    casts = {"max_batch": int, "max_list": int, "max_wait_ms": float, "micro_batching": lambda v: v == "True",
             "device": str, "unknown_users": str, "max_body_bytes": int, "allow_failed": lambda v: v == "True",
             "max_queue": int}
    pairs = [part.split("=", 1) for part in text.split(";") if part]
    unknown = [key for key, _ in pairs if key not in casts]
    if unknown:
        raise ServerError(f"{ENV_OPTIONS}: unknown option(s) {', '.join(unknown)}; start the workers with the same "
                          "recvae version as the main process")
    return {key: casts[key](value) for key, value in pairs}


def serve(
    run_dir: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_wait_ms: float = 0.0,
    max_list: int = DEFAULT_MAX_LIST,
    micro_batching: bool = True,
    device: str = "auto",
    log_level: str = "warning",
    access_log: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    allow_failed: bool = False,
    unknown_users: str = "fallback",
    allow_reload: bool = False,
    max_queue: int = DEFAULT_MAX_QUEUE,
) -> None:
    """Serve a run directory with uvicorn until interrupted (each of ``workers`` processes loads the run).

    The options are :func:`create_app`'s (``max_queue``: most requests waiting to be scored, 503 above it;
    ``max_body_bytes``: the largest request body read, 413 above it;
    ``allow_failed``: serve a run whose training failed anyway, refused by default; ``unknown_users``:
    ``"fallback"`` or ``"404"``; ``allow_reload``: ``POST /admin/reload``, one worker only). SIGHUP reloads
    ``run_dir``: one process reloads in place, several are replaced one at a time by uvicorn (a worker
    that fails to load the run leaves the old ones serving). Stop the server with SIGINT or SIGTERM.
    """
    _require_server()
    _check_max_body_bytes(max_body_bytes)
    if workers < 1:
        raise ServerError(f"workers {workers}: give at least 1")
    if not 0 <= port <= 65535:
        raise ServerError(f"port {port}: choose a port between 0 and 65535")
    if allow_reload and workers > 1:
        raise ServerError(f"allow_reload with {workers} workers: POST /admin/reload would reload the one worker "
                          "that answers it; reload several workers with SIGHUP to the main process instead")
    options = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_list": max_list,
               "micro_batching": micro_batching, "device": device, "unknown_users": unknown_users,
               "max_body_bytes": max_body_bytes, "allow_failed": allow_failed, "max_queue": max_queue}
    if unknown_users not in UNKNOWN_USERS:
        raise ServerError(f"unknown_users {unknown_users!r}: choose 'fallback' or '404'")
    if workers == 1:
        app = create_app(run_dir, **options, allow_reload=allow_reload, reload_on_sighup=True)
        logger.info("serving %r on http://%s:%d", app.state.run, host, port)
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)
        return
    path = Path(run_dir)
    Run.load(path, device="cpu", allow_failed=allow_failed)  # fail here, once, before forking workers
    os.environ[ENV_RUN] = os.path.abspath(path)  # a link stays a link: SIGHUP's new workers follow it
    os.environ[ENV_OPTIONS] = _encode_options(options)
    extra = ({"timeout_worker_healthcheck": WORKER_START_TIMEOUT_S}
             if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters else {})
    uvicorn.run("recvae.serving.server:_app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=access_log, **extra)
