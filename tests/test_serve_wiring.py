"""The HTTP server against an oracle of its own: every request field reaches the library, and the answers
equal rankings computed here from the log and ``model.score`` / EASE's weights (seen and excluded items
masked by hand, ties to the lower item column, as documented), never from ``Run.recommend`` itself.

Covered: known users of every part of the split in one micro-batch in mixed order (with duplicates,
options and k up to the catalogue), a second batch after it, new users from item lists with
``exclude``/``candidates``, k at and past the catalogue, unknown ids (404) anywhere in a list, the
``max_list`` limit at its edge, unsupported operations (501, 405) and the options of ``serve()`` for one
and several worker processes.
"""

import asyncio
import warnings

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

with warnings.catch_warnings():  # starlette's notice about its httpx client, not ours
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

import recvae.serving.server as serve_module  # noqa: E402
from recvae.data import SyntheticConfig, synthetic_log  # noqa: E402
from recvae.runs import Run  # noqa: E402
from recvae.serving.server import ServerError, create_app  # noqa: E402
from oracles import ScoreOracle as Oracle  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TIMEOUT_S = 60


@pytest.fixture(scope="module")
def log():
    return synthetic_log(SyntheticConfig(n_users=120, n_items=40, seed=3))


@pytest.fixture(scope="module")
def runs(log, tmp_path_factory) -> dict:
    """EASE (scores with few ties) and popularity (scores with many ties): (directory, loaded run)."""
    tmp = tmp_path_factory.mktemp("serve_wiring")
    quiet = lambda _: None  # noqa: E731
    Run.fit(log, "ease", params={"l2": 10.0}, output=tmp / "ease", report=quiet)
    Run.fit(log, "popularity", output=tmp / "popularity", report=quiet)
    return {name: (tmp / name, Run.load(tmp / name, device="cpu")) for name in ("ease", "popularity")}


@pytest.fixture(scope="module")
def oracles(runs, log) -> dict:
    return {name: Oracle(run, log) for name, (_, run) in runs.items()}


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


def post_all(app, requests: list[tuple[str, dict]]) -> list:
    """POST every (path, body) at once on one event loop (they meet in the micro-batcher's queue)."""

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=TIMEOUT_S) as client:
            return await asyncio.gather(*(client.post(path, json=body) for path, body in requests))

    return asyncio.run(asyncio.wait_for(go(), TIMEOUT_S))


def mixed_users(run: Run) -> list:
    """Eighteen users of every part of the split in no sorted order: train, test, validation, train ..."""
    ids = run.user_ids.tolist()
    val, test = set(run.split.validation.user_ids.tolist()), set(run.split.test.user_ids.tolist())
    train = [u for u in ids if u not in val and u not in test]
    val, test = sorted(val), sorted(test)
    return [train[40], test[1], train[2], val[3], train[15], test[4], val[0], train[0], train[33],
            train[10], test[2], train[25], val[1], train[45], test[0], val[5], train[8], train[30]]


# ============================================================================ known users
@pytest.mark.parametrize("model", ["ease", "popularity"])
@pytest.mark.parametrize("micro_batching", [True, False])
def test_known_users_in_mixed_order_equal_the_oracle(runs, oracles, model, micro_batching):
    _, run = runs[model]
    oracle = oracles[model]
    n = run.n_items
    a, b, c, d, e, f, g, h, _, *later = mixed_users(run)
    top_e = [x for _, x, _ in oracle.user(e, 2, filter_seen=False)]
    top_g = [x for _, x, _ in oracle.user(g, 3)]
    few = run.item_ids[5:17].tolist()
    first = [  # (body, oracle options)
        ({"user_id": a, "k": 5}, {}),
        ({"user_id": b, "k": n}, {}),  # k = the catalogue: fewer items than k remain once seen ones go
        ({"user_id": c, "k": 8}, {}),
        ({"user_id": d, "k": 3}, {}),
        ({"user_id": a, "k": 2}, {}),  # the same user twice, with another k
        ({"user_id": e, "k": 6, "filter_seen": False, "exclude": top_e}, {"filter_seen": False, "exclude": top_e}),
        ({"user_id": f, "k": n, "candidates": few}, {"candidates": few}),
        ({"user_id": g, "k": 4, "exclude": top_g}, {"exclude": top_g}),
        ({"user_id": h, "k": n, "filter_seen": False}, {"filter_seen": False}),
    ]
    # a later batch of other users with the first one's default options
    second = [({"user_id": u, "k": 3 + j % 4}, {}) for j, u in enumerate(later)]
    assert len(second) == len(first)
    # each round fills one batch (max_batch) at once: nothing waits for the long max_wait_ms
    app = create_app(run, micro_batching=micro_batching, max_batch=len(first), max_wait_ms=10_000)
    for round_ in (first, second):
        answers = post_all(app, [("/recommend", body) for body, _ in round_])
        for (body, options), answer in zip(round_, answers):
            assert answer.status_code == 200, answer.text
            assert answer.json()["user_id"] == body["user_id"]
            check_items(answer.json()["items"], oracle.user(body["user_id"], body["k"], **options))
    if micro_batching:  # every request went through the batcher, several in one batch
        assert app.state.batcher.requests == len(first) + len(second)
        assert app.state.batcher.batches < app.state.batcher.requests
    else:  # one request per scoring call
        assert app.state.batcher.batches == app.state.batcher.requests == len(first) + len(second)


def test_excluded_and_seen_items_never_come_back(runs, oracles):
    _, run = runs["ease"]
    oracle = oracles["ease"]
    user = mixed_users(run)[3]
    exclude = [x for _, x, _ in oracle.user(user, 5)]
    with TestClient(create_app(run, micro_batching=False)) as client:
        items = {x["item_id"] for x in client.post("/recommend", json={"user_id": user, "k": run.n_items,
                                                                        "exclude": exclude}).json()["items"]}
    assert items and not items & set(exclude)
    assert not items & {oracle.ids[j] for j in oracle.seen[user]}
    assert len(items) == run.n_items - len(oracle.seen[user] | oracle.cols(exclude))


# ============================================================================ new users
@pytest.mark.parametrize("model", ["ease", "popularity"])
def test_new_user_exclude_and_candidates_reach_the_library(runs, oracles, model):
    _, run = runs[model]
    oracle = oracles[model]
    history = run.item_ids[[1, 7, 12]].tolist()
    plain = [x for _, x, _ in oracle.new_user(history, 6)]
    exclude = plain[:3]  # the items it would rank first
    candidates = run.item_ids[20:32].tolist() + [plain[0]]
    with TestClient(create_app(run)) as client:
        ask = lambda **body: client.post("/recommend/new-user", json={"item_ids": history, **body})  # noqa: E731
        answer = ask(k=6, exclude=exclude).json()["items"]
        check_items(answer, oracle.new_user(history, 6, exclude=exclude))
        assert not {x["item_id"] for x in answer} & set(exclude + history)
        answer = ask(k=5, candidates=candidates).json()["items"]
        check_items(answer, oracle.new_user(history, 5, candidates=candidates))
        assert {x["item_id"] for x in answer} <= set(candidates)
        answer = ask(k=run.n_items, exclude=exclude, candidates=candidates).json()["items"]
        check_items(answer, oracle.new_user(history, run.n_items, exclude=exclude, candidates=candidates))
        assert len(answer) == len(set(candidates) - set(exclude) - set(history))


# ============================================================================ k at the catalogue's edges
def test_k_at_and_past_the_catalogue(runs, oracles):
    _, run = runs["ease"]
    oracle = oracles["ease"]
    n = run.n_items
    user = mixed_users(run)[0]
    item = run.item_ids[4].item()
    history = run.item_ids[[0, 3]].tolist()
    with TestClient(create_app(run, micro_batching=False)) as client:
        answer = client.post("/recommend", json={"user_id": user, "k": n}).json()["items"]
        check_items(answer, oracle.user(user, n))
        assert len(answer) == n - len(oracle.seen[user])
        answer = client.post("/recommend", json={"user_id": user, "k": n, "filter_seen": False}).json()["items"]
        check_items(answer, oracle.user(user, n, filter_seen=False))
        assert sorted(x["item_id"] for x in answer) == sorted(run.item_ids.tolist())
        answer = client.post("/recommend/new-user", json={"item_ids": history, "k": n}).json()["items"]
        check_items(answer, oracle.new_user(history, n))
        assert len(answer) == n - 2
        answer = client.post("/similar", json={"item_id": item, "k": n}).json()
        assert answer["item_id"] == item
        check_items(answer["items"], oracle.similar(item, n))
        assert len(answer["items"]) == n - 1 and item not in {x["item_id"] for x in answer["items"]}
        check_items(client.post("/similar", json={"item_id": item, "k": 1}).json()["items"], oracle.similar(item, 1))
        check_items(client.post("/recommend", json={"user_id": user, "k": 1}).json()["items"], oracle.user(user, 1))
        for path, body in (("/recommend", {"user_id": user}), ("/recommend/new-user", {"item_ids": history}),
                           ("/similar", {"item_id": item})):
            for k in (0, n + 1):
                check_error(client.post(path, json={**body, "k": k}), 422, f"k {k}", str(n))


# ============================================================================ unknown ids
def test_unknown_ids_anywhere_in_a_list_answer_404(runs):
    _, run = runs["ease"]
    user = run.user_ids[0].item()
    known = run.item_ids[:2].tolist()
    dropped = run.dropped_user_ids[0].item()
    with TestClient(create_app(run, unknown_users="404")) as client:
        check_error(client.post("/recommend", json={"user_id": "no-such-user"}), 404, "no-such-user")
        check_error(client.post("/recommend", json={"user_id": 10_000}), 404, "10000")
        assert "/recommend/new-user" in check_error(client.post("/recommend", json={"user_id": dropped}), 404,
                                                    str(dropped))
        for field in ("exclude", "candidates"):  # a known first id must not let an unknown later one through
            check_error(client.post("/recommend", json={"user_id": user, field: [*known, "ghost"]}), 404, "ghost")
            check_error(client.post("/recommend/new-user", json={"item_ids": known, field: [*known, 999]}), 404,
                        "999")
        check_error(client.post("/recommend/new-user", json={"item_ids": [*known, "ghost"]}), 404, "ghost")
        check_error(client.post("/similar", json={"item_id": "ghost"}), 404, "ghost")
        # a known user still answers after the refusals
        assert client.post("/recommend", json={"user_id": user, "k": 3}).status_code == 200


def test_list_limit_holds_at_its_edge(runs, oracles):
    _, run = runs["ease"]
    oracle = oracles["ease"]
    user = run.user_ids[0].item()
    items = run.item_ids.tolist()
    with TestClient(create_app(run, max_list=5, micro_batching=False)) as client:
        answer = client.post("/recommend", json={"user_id": user, "k": 3, "exclude": items[:5]})
        assert answer.status_code == 200, answer.text
        check_items(answer.json()["items"], oracle.user(user, 3, exclude=items[:5]))
        assert client.post("/recommend", json={"user_id": user, "candidates": items[:5]}).status_code == 200
        answer = client.post("/recommend/new-user", json={"item_ids": items[:5], "k": 3})
        assert answer.status_code == 200, answer.text
        check_items(answer.json()["items"], oracle.new_user(items[:5], 3))
        for path, body in (("/recommend", {"user_id": user, "exclude": items[:6]}),
                           ("/recommend", {"user_id": user, "candidates": items[:6]}),
                           ("/recommend/new-user", {"item_ids": items[:6]}),
                           ("/recommend/new-user", {"item_ids": items[:1], "exclude": items[1:7]})):
            check_error(client.post(path, json=body), 422, "6", "at most 5")


# ============================================================================ a group that fails
@pytest.mark.parametrize("micro_batching", [True, False])
def test_a_failing_scoring_call_answers_its_error_and_the_other_requests_their_items(runs, oracles, monkeypatch,
                                                                                     micro_batching):
    """The scoring of one option group fails (here: whenever an exclude list is given): its request answers a
    one-line 500 naming the cause, never a 200 with no items, and the requests of other groups their own top-k."""
    _, run = runs["ease"]
    oracle = oracles["ease"]
    app = create_app(run, max_wait_ms=50.0, micro_batching=micro_batching)
    service = app.state.served.current
    real = service.recommend_batch

    def flaky(key, user_ids, k):
        if key[1]:  # an exclude list
            raise RuntimeError("the scorer ran out of memory")
        return real(key, user_ids, k)

    monkeypatch.setattr(service, "recommend_batch", flaky)
    users, items = run.user_ids[[0, 7, 12]].tolist(), run.item_ids[:4].tolist()

    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=TIMEOUT_S) as client:
            return await asyncio.gather(client.post("/recommend", json={"user_id": users[0], "k": 4}),
                                        client.post("/recommend", json={"user_id": users[1], "k": 4, "exclude": items}),
                                        client.post("/recommend", json={"user_id": users[2], "k": 3}))

    good, failed, other = asyncio.run(asyncio.wait_for(go(), TIMEOUT_S))
    check_error(failed, 500, "out of memory")
    check_items(good.json()["items"], oracle.user(users[0], 4))
    check_items(other.json()["items"], oracle.user(users[2], 3))


# ============================================================================ unsupported operations
def test_unsupported_operations_answer_their_status(runs, oracles):
    _, run = runs["popularity"]
    with TestClient(create_app(run)) as client:
        check_error(client.post("/similar", json={"item_id": run.item_ids[0].item()}), 501, "no similar items")
        for method, path in (("get", "/recommend"), ("get", "/recommend/new-user"), ("get", "/similar"),
                             ("post", "/health"), ("post", "/info"), ("put", "/recommend")):
            assert getattr(client, method)(path).status_code == 405, (method, path)
        assert client.get("/nowhere").status_code == 404
        info = client.get("/info").json()
        assert (info["model"], info["model_class"], info["users"], info["items"]) == (
            "popularity", "Popularity", len(run.user_ids), run.n_items)
        # recommending still works on the model that cannot do similar items
        user = run.user_ids[5].item()
        check_items(client.post("/recommend", json={"user_id": user, "k": 4}).json()["items"],
                    oracles["popularity"].user(user, 4))


# ============================================================================ app and server options
def test_create_app_refuses_each_bad_option_alone(runs):
    _, run = runs["ease"]
    for bad in ({"max_batch": 0}, {"max_wait_ms": -1.0}, {"max_list": 0}):
        with pytest.raises(ServerError, match="at least"):
            create_app(run, **bad)
    app = create_app(run, max_batch=1, max_wait_ms=0.0, max_list=1)  # the smallest accepted values
    with TestClient(app) as client:
        assert client.post("/recommend", json={"user_id": run.user_ids[0].item(), "k": 2}).status_code == 200


@pytest.fixture
def uvicorn_calls(monkeypatch):
    """uvicorn.run replaced by a recorder; Run.load recorded; the worker variables restored afterwards."""
    calls = {"run": [], "load": []}
    monkeypatch.setattr(serve_module.uvicorn, "run", lambda *args, **kwargs: calls["run"].append((args, kwargs)))
    load = Run.load.__func__

    def spy(cls, path, **kwargs):
        calls["load"].append((str(path), kwargs))
        return load(cls, path, **kwargs)

    monkeypatch.setattr(Run, "load", classmethod(spy))
    for name in (serve_module.ENV_RUN, serve_module.ENV_OPTIONS):
        monkeypatch.setenv(name, "unset")
    return calls


def _check_options(app, *, micro_batching: bool, max_batch: int, max_wait_ms: float, max_list: int, run) -> None:
    user = run.user_ids[0].item()
    items = run.item_ids.tolist()
    with TestClient(app) as client:
        info = client.get("/info").json()
        assert (info["micro_batching"], info["max_batch"], info["max_wait_ms"]) == (micro_batching, max_batch,
                                                                                    max_wait_ms)
        assert client.post("/recommend", json={"user_id": user, "exclude": items[:max_list]}).status_code == 200
        check_error(client.post("/recommend", json={"user_id": user, "exclude": items[:max_list + 1]}), 422,
                    f"at most {max_list}")
    batcher = app.state.batcher  # without micro-batching: one request per scoring call, same queue
    assert (batcher.max_batch, batcher.max_wait_s) == (max_batch if micro_batching else 1,
                                                       pytest.approx(max_wait_ms / 1000))


@pytest.mark.parametrize("micro_batching", [False, True])
def test_serve_one_process_passes_every_option(runs, uvicorn_calls, micro_batching):
    path, run = runs["ease"]
    serve_module.serve(path, host="127.0.0.9", port=8123, max_batch=7, max_wait_ms=3.5, max_list=11,
                       micro_batching=micro_batching, device="cpu", log_level="info", access_log=True)
    [(args, kwargs)] = uvicorn_calls["run"]
    assert kwargs == {"host": "127.0.0.9", "port": 8123, "log_level": "info", "access_log": True}
    assert uvicorn_calls["load"] == [(str(path), {"device": "cpu", "allow_failed": False})]
    _check_options(args[0], micro_batching=micro_batching, max_batch=7, max_wait_ms=3.5, max_list=11, run=run)


@pytest.mark.parametrize("micro_batching", [False, True])
def test_serve_worker_processes_read_every_option(runs, uvicorn_calls, micro_batching):
    path, run = runs["ease"]
    serve_module.serve(path, port=8124, workers=3, max_batch=9, max_wait_ms=2.5, max_list=12,
                       micro_batching=micro_batching, device="cpu", log_level="error", access_log=False)
    [(args, kwargs)] = uvicorn_calls["run"]
    assert args == ("recvae.serving.server:_app_from_environment",)
    assert kwargs == {"factory": True, "host": "127.0.0.1", "port": 8124, "workers": 3, "log_level": "error",
                      "access_log": False, "timeout_worker_healthcheck": serve_module.WORKER_START_TIMEOUT_S}
    # what each worker process does on start: build the app from the environment
    app = serve_module._app_from_environment()
    assert [kw for _, kw in uvicorn_calls["load"]] == [{"device": "cpu", "allow_failed": False}] * 2
    assert uvicorn_calls["load"][-1][0] == str(path.resolve())
    _check_options(app, micro_batching=micro_batching, max_batch=9, max_wait_ms=2.5, max_list=12, run=run)


def test_serve_refuses_bad_workers_and_ports_before_loading(runs, uvicorn_calls):
    path, _ = runs["ease"]
    for kwargs, text in (({"workers": 0}, "workers 0"), ({"port": -1}, "port -1"), ({"port": 65536}, "port 65536")):
        with pytest.raises(ServerError, match=text):
            serve_module.serve(path, **kwargs)
    serve_module.serve(path, port=65535)  # the edges are accepted
    serve_module.serve(path, port=0)
    assert len(uvicorn_calls["run"]) == 2
