"""The server under load (issue 31): its one scoring queue, bounded (503 + Retry-After when full, at once),
scored in one worker thread off the event loop, with what arrives meanwhile forming the next batch;
/recommend/new-user through that queue (several new users in one call, weights, options) equal to an
oracle; every bad request a one-line 4xx; the dict id maps equal to ``find_ids``; ``max_queue`` reaching
the app, the worker processes and the CLI.

The scoring thread is held on an event where a test needs requests to meet in the queue: nothing waits on
a clock.
"""

import asyncio
import gc
import threading
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

with warnings.catch_warnings():  # starlette's notice about its httpx client, not ours
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

import recvae.serving.server as serve_module  # noqa: E402
from recvae.data import SyntheticConfig, synthetic_log  # noqa: E402
from recvae.data.ids import find_ids  # noqa: E402
from recvae.runs import Run  # noqa: E402
from recvae.serving.server import ServerError, create_app  # noqa: E402
from recvae.serving.service import IdMap, RunService  # noqa: E402
from oracles import ScoreOracle as Oracle  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TIMEOUT_S = 60


@pytest.fixture(scope="module")
def log():
    return synthetic_log(SyntheticConfig(n_users=100, n_items=36, seed=11))


@pytest.fixture(scope="module")
def ease(log, tmp_path_factory):
    path = tmp_path_factory.mktemp("serve_load") / "ease"
    Run.fit(log, "ease", params={"l2": 10.0}, output=path, report=lambda _: None)
    return Run.load(path, device="cpu")


@pytest.fixture(scope="module")
def oracle(ease, log):
    return Oracle(ease, log)


def check_items(answer: list[dict], expected: list[tuple]) -> None:
    assert [(a["rank"], a["item_id"]) for a in answer] == [(r, i) for r, i, _ in expected]
    np.testing.assert_allclose([a["score"] for a in answer], [s for _, _, s in expected], rtol=1e-5, atol=1e-6)


def check_error(response, status: int, *names) -> str:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail and "Traceback" not in response.text
    for name in names:
        assert str(name) in detail, detail
    return detail


class Gate:
    """Holds the first scoring call of a service in the scoring thread until released; records the threads
    every scoring call ran in."""

    def __init__(self, monkeypatch, service: RunService) -> None:
        self.started, self.release = threading.Event(), threading.Event()
        self.threads: list[str] = []
        for name in ("recommend_batch", "fold_in", "fallback"):
            real = getattr(service, name)
            monkeypatch.setattr(service, name, self._wrap(real))

    def _wrap(self, real):
        def held(*args, **kwargs):
            self.threads.append(threading.current_thread().name)
            if not self.started.is_set():
                self.started.set()
                assert self.release.wait(TIMEOUT_S)
            return real(*args, **kwargs)

        return held


async def _until(condition, what: str) -> None:
    for _ in range(TIMEOUT_S * 100):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{what} within {TIMEOUT_S} s")


def _client(app):
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test", timeout=TIMEOUT_S)


# ============================================================================ the queue
def test_a_full_queue_answers_503_at_once_and_the_waiting_requests_their_items(ease, oracle, monkeypatch):
    """max_queue=2: one request in the scoring thread, two waiting, the fourth refused at once (503, one line,
    Retry-After); once the thread is free the three are answered right, and later requests pass again."""
    app = create_app(ease, max_queue=2)
    gate = Gate(monkeypatch, app.state.served.current)
    users = ease.user_ids[[0, 5, 9, 14]].tolist()
    batcher = app.state.batcher

    async def go():
        async with _client(app) as client:
            ask = lambda u: client.post("/recommend", json={"user_id": u, "k": 4})  # noqa: E731
            first = asyncio.ensure_future(ask(users[0]))
            await _until(gate.started.is_set, "the first request reached the scoring thread")
            waiting = [asyncio.ensure_future(ask(u)) for u in users[1:3]]
            await _until(lambda: batcher.waiting == 2, "two requests waiting")
            refused = await ask(users[3])  # answered while the thread is still held
            new_user = await client.post("/recommend/new-user", json={"item_ids": [ease.item_ids[0].item()]})
            gate.release.set()
            answered = [await first] + [await w for w in waiting]
            after = await ask(users[3])
            info = (await client.get("/info")).json()
            return refused, new_user, answered, after, info

    try:
        refused, new_user, answered, after, info = asyncio.run(asyncio.wait_for(go(), TIMEOUT_S))
    finally:
        gate.release.set()
    for response in (refused, new_user):
        check_error(response, 503, "overloaded", "max_queue 2", "retry after 1 s")
        assert response.headers["retry-after"] == "1"
    for user, response in zip(users, answered):
        assert response.status_code == 200, response.text
        check_items(response.json()["items"], oracle.user(user, 4))
    check_items(after.json()["items"], oracle.user(users[3], 4))
    assert (info["max_queue"], info["refused"]) == (2, 2)


def test_requests_arriving_while_a_batch_scores_form_the_next_one_in_the_one_scoring_thread(ease, oracle,
                                                                                            monkeypatch):
    """No fixed wait: the first request is scored alone at once; the known users, new users and a cold
    fallback posted meanwhile are scored after it, each kind in one call, all in the one scoring thread."""
    app = create_app(ease)
    gate = Gate(monkeypatch, app.state.served.current)
    users = ease.user_ids[[3, 8, 21, 30]].tolist()
    histories = [ease.item_ids[[1, 4]].tolist(), ease.item_ids[[2, 9, 17]].tolist()]
    batcher = app.state.batcher

    async def go():
        async with _client(app) as client:
            first = asyncio.ensure_future(client.post("/recommend", json={"user_id": users[0], "k": 3}))
            await _until(gate.started.is_set, "the first request reached the scoring thread")
            later = [asyncio.ensure_future(client.post("/recommend", json={"user_id": u, "k": 2 + i}))
                     for i, u in enumerate(users[1:])]
            later += [asyncio.ensure_future(client.post("/recommend/new-user", json={"item_ids": h, "k": 5}))
                      for h in histories]
            await _until(lambda: batcher.waiting == len(later), "the later requests waiting")
            gate.release.set()
            return await first, [await r for r in later]

    try:
        first, later = asyncio.run(asyncio.wait_for(go(), TIMEOUT_S))
    finally:
        gate.release.set()
    check_items(first.json()["items"], oracle.user(users[0], 3))
    for i, (user, response) in enumerate(zip(users[1:], later)):
        check_items(response.json()["items"], oracle.user(user, 2 + i))
    for history, response in zip(histories, later[len(users) - 1:]):
        check_items(response.json()["items"], oracle.new_user(history, 5))
    # batch 1: the first request alone; batch 2: everything that arrived meanwhile (known users in one call,
    # new users in another)
    assert (batcher.batches, batcher.requests) == (2, len(users) + len(histories))
    assert len(gate.threads) == 3 and len(set(gate.threads)) == 1
    assert gate.threads[0].startswith("recvae-score")


def test_batches_and_similar_items_also_run_in_the_scoring_thread(ease, monkeypatch):
    app = create_app(ease)
    service = app.state.served.current
    seen = []
    for owner, name in ((service, "recommend_batch"), (service.run, "similar_items")):
        real = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, _real=real, **kw: seen.append(threading.current_thread().name)
                            or _real(*a, **kw))
    with TestClient(app) as client:
        assert client.post("/recommend/batch", json={"user_ids": ease.user_ids[:3].tolist()}).status_code == 200
        assert client.post("/similar", json={"item_id": ease.item_ids[0].item()}).status_code == 200
    assert len(seen) == 2 and all(name.startswith("recvae-score") for name in seen), seen


def test_the_loaded_run_is_kept_out_of_full_garbage_collections(ease):
    """A full gc pass over the run's objects stalled every request in flight (the p99 under load): the app
    freezes the heap once started, and unfreezes it when it stops."""
    gc.unfreeze()
    with TestClient(create_app(ease)) as client:
        assert gc.get_freeze_count() > 0
        assert client.get("/health").status_code == 200
    assert gc.get_freeze_count() == 0


# ============================================================================ new users
def _weighted_oracle(run, oracle, columns, weights, k) -> list[tuple]:
    row = sp.csr_matrix((np.asarray(weights, np.float32), (np.zeros(len(columns), np.int64), columns)),
                        shape=(1, run.n_items))
    row.sum_duplicates()
    scores = np.asarray(run.model.score(row), dtype=np.float32)[0]
    return oracle._top(scores, k, set(columns), None)


def test_new_users_with_weights_and_options_scored_together_equal_the_oracle(ease, oracle, monkeypatch):
    """Five new users meet in one fold-in call (other k, weights, exclude lists): each answer equals its own
    oracle ranking; an id given twice counts once without weights and adds its weights with them."""
    app = create_app(ease)
    gate = Gate(monkeypatch, app.state.served.current)
    ids = ease.item_ids.tolist()
    plain = [ids[2], ids[5], ids[11]]
    top = [x for _, x, _ in oracle.new_user(plain, 3)]
    bodies = [
        ({"item_ids": plain, "k": 4}, oracle.new_user(plain, 4)),
        ({"item_ids": plain + [ids[5]], "k": 6}, oracle.new_user(plain, 6)),  # a repeat counts once
        ({"item_ids": plain, "k": 5, "exclude": top}, oracle.new_user(plain, 5, exclude=top)),
        ({"item_ids": plain, "weights": [3.0, 0.5, 1.0], "k": 7},
         _weighted_oracle(ease, oracle, [2, 5, 11], [3.0, 0.5, 1.0], 7)),
        ({"item_ids": [ids[2], ids[7], ids[2]], "weights": [1.0, 2.0, 1.5], "k": 3},
         _weighted_oracle(ease, oracle, [2, 7, 2], [1.0, 2.0, 1.5], 3)),
    ]

    async def go():
        async with _client(app) as client:
            first = asyncio.ensure_future(client.post("/recommend", json={"user_id": ease.user_ids[0].item()}))
            await _until(gate.started.is_set, "the first request reached the scoring thread")
            asked = [asyncio.ensure_future(client.post("/recommend/new-user", json=b)) for b, _ in bodies]
            await _until(lambda: app.state.batcher.waiting == len(bodies), "the new users waiting")
            gate.release.set()
            await first
            return [await a for a in asked]

    try:
        answers = asyncio.run(asyncio.wait_for(go(), TIMEOUT_S))
    finally:
        gate.release.set()
    for (body, expected), answer in zip(bodies, answers):
        assert answer.status_code == 200, answer.text
        check_items(answer.json()["items"], expected)
    assert len(gate.threads) == 3  # the known user, then one fold-in call per option group (with exclude, without)
    assert bodies[3][1] != oracle.new_user(plain, 7)  # the weights change the ranking


def test_every_bad_new_user_request_is_a_one_line_4xx(ease):
    ids = ease.item_ids.tolist()
    app = create_app(ease, max_list=20, max_body_bytes=2048)
    post = lambda body: client.post("/recommend/new-user", json=body)  # noqa: E731
    with TestClient(app) as client:
        detail = check_error(post({"item_ids": [ids[0], "no-such", ids[1], "gone", 10**9]}), 404, "'no-such'",
                             "'gone'", "1000000000")
        assert detail.endswith(": 'no-such', 'gone', 1000000000")  # the unknown ones, only they
        check_error(post({"item_ids": []}), 422, "item_ids", "at least one")
        check_error(post({}), 422, "item_ids", "required")
        check_error(post({"item_ids": "abc"}), 422, "item_ids")
        check_error(post({"item_ids": [True]}), 422, "item_ids", "string or a number")
        check_error(post({"item_ids": [[1]]}), 422, "item_ids")
        check_error(post({"item_ids": [ids[0]], "k": "5"}), 422, "k")
        check_error(post({"item_ids": [ids[0]], "k": 2.5}), 422, "k")
        check_error(post({"item_ids": [ids[0]], "k": 0}), 422, "k 0", f"between 1 and {ease.n_items}")
        check_error(post({"item_ids": [ids[0]], "k": -3}), 422, "k -3")
        check_error(post({"item_ids": [ids[0]], "k": ease.n_items + 1}), 422, f"k {ease.n_items + 1}")
        check_error(post({"item_ids": [ids[0]], "kk": 5}), 422, "kk", "not permitted")
        check_error(post({"item_ids": [ids[0]], "exclude": ["nope"]}), 404, "'nope'")
        check_error(post({"item_ids": ids[:21]}), 422, "at most 20")
        check_error(post({"item_ids": ids[:2], "weights": [1.0]}), 422, "weights", "one weight per item id")
        check_error(post({"item_ids": ids[:2], "weights": [1.0, 0.0]}), 422, "weights", "0.0", "above 0")
        check_error(post({"item_ids": ids[:2], "weights": [1.0, -1.0]}), 422, "-1.0")
        check_error(post({"item_ids": ids[:2], "weights": [1.0, "2"]}), 422, "weights")
        check_error(client.post("/recommend/new-user", content=b'{"item_ids": [1, 2', headers={
            "content-type": "application/json"}), 422, "invalid JSON")
        check_error(client.post("/recommend/new-user", content=b"[1, 2]", headers={
            "content-type": "application/json"}), 422, "body")
        check_error(client.post("/recommend/new-user", content=b"", headers={
            "content-type": "application/json"}), 422, "invalid JSON")
        check_error(client.post("/recommend/new-user", content=b'{"item_ids": [' + b'"x",' * 600 + b'"y"]}',
                                headers={"content-type": "application/json"}), 413, "at most 2,048 bytes")
        check_error(client.post("/recommend", content=b'{"user_id": 1,', headers={
            "content-type": "application/json"}), 422, "invalid JSON")
        check_error(client.post("/recommend", json={"user_id": None}), 422, "user_id")
        # and the server still answers
        assert post({"item_ids": ids[:2]}).status_code == 200


def test_the_openapi_document_still_shows_the_bodies_parsed_by_hand(ease):
    with TestClient(create_app(ease)) as client:
        paths = client.get("/openapi.json").json()["paths"]
    for path, field in (("/recommend", "user_id"), ("/recommend/new-user", "weights")):
        schema = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert field in schema["properties"], (path, schema)


# ============================================================================ id maps
@pytest.mark.parametrize("ids", [np.array([10, 3, 7, 42, -1], dtype=np.int64),
                                 np.array(["a", "17", "b c", "007", "x"], dtype=object),
                                 np.array(["u1", "u2", "u3"])])
def test_the_dict_id_map_finds_what_find_ids_finds(ids):
    queries = [10, 3, "7", " 42 ", 7.0, 7.5, "7.0", True, False, -1, "-1", "a", "17", 17, "b c", "007", 7, "u2",
               "nope", 1e30, "x", None]
    id_map = IdMap(ids)
    positions, found = find_ids(pd.Index(ids), queries)
    expected = [int(p) if f else None for p, f in zip(positions, found)]
    ours = id_map.find(queries)
    for query, mine, theirs in zip(queries, ours, expected):
        if isinstance(query, bool):  # a JSON true is refused before any lookup; the map never finds one
            assert mine is None
        else:
            assert mine == theirs, (query, mine, theirs)


# ============================================================================ the option reaches everything
def test_max_queue_reaches_the_app_the_workers_and_the_cli(ease, monkeypatch, tmp_path):
    with pytest.raises(ServerError, match="max_queue 0"):
        create_app(ease, max_queue=0)
    app = create_app(ease, max_queue=7)
    assert app.state.batcher.max_queue == 7
    options = serve_module._decode_options(serve_module._encode_options({"max_queue": 9, "max_batch": 3}))
    assert options == {"max_queue": 9, "max_batch": 3}
    with pytest.raises(ServerError, match="unknown option"):
        serve_module._decode_options("max_queue=9;no_such=1")
    calls = []
    monkeypatch.setattr(serve_module.uvicorn, "run", lambda *args, **kwargs: calls.append((args, kwargs)))
    for name in (serve_module.ENV_RUN, serve_module.ENV_OPTIONS):
        monkeypatch.setenv(name, "unset")
    serve_module.serve(ease.path, workers=2, max_queue=11, device="cpu")
    assert "max_queue=11" in serve_module.os.environ[serve_module.ENV_OPTIONS]
    assert serve_module._app_from_environment().state.batcher.max_queue == 11


def test_answers_without_orjson_are_the_same_json(monkeypatch):
    """The serve extra's orjson is optional: the standard library writes the same answer (numpy values too)."""
    import json

    import numpy as np

    from recvae.serving import server

    payload = {"user_id": np.int64(7), "items": [{"rank": 1, "item_id": "a", "score": np.float32(0.5)}],
               "fallback": False, "uncertainty": None, "run_id": "r"}
    fast = json.loads(server._json(payload).body) if server.orjson is not None else None
    monkeypatch.setattr(server, "orjson", None)
    slow = json.loads(server._json(payload).body)
    assert slow == {"user_id": 7, "items": [{"rank": 1, "item_id": "a", "score": 0.5}], "fallback": False,
                    "uncertainty": None, "run_id": "r"}
    assert fast is None or fast == slow
