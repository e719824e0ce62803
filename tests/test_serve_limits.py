"""What the server reads and echoes is bounded: a body over ``max_body_bytes`` answers 413 before it is
read (declared by Content-Length, or counted while a chunked body streams in) and the endpoint never runs;
an id echoed in an error is cut short; a normal request is unaffected; the option reaches worker processes."""

import asyncio
import json
import warnings

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

with warnings.catch_warnings():  # starlette's notice about its httpx client, not ours
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

import recvae.serving.server as serve_module  # noqa: E402
from recvae.data import SyntheticConfig, synthetic_log  # noqa: E402
from recvae.runs import Run  # noqa: E402
from recvae.serving.server import ServerError, create_app  # noqa: E402
from recvae.serving.service import RunService  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LIMIT = 4096


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    log = synthetic_log(SyntheticConfig(n_users=60, n_items=30, seed=5))
    path = tmp_path_factory.mktemp("serve_limits") / "pop"
    Run.fit(log, "popularity", output=path, report=lambda _: None)
    return path


@pytest.fixture(scope="module")
def run(run_dir):
    return Run.load(run_dir, device="cpu")


@pytest.fixture
def endpoint_calls(monkeypatch):
    """Every call of the endpoints' first step (``_Service.check_k``), recorded."""
    calls = []
    check_k = RunService.check_k

    def spy(self, k):
        calls.append(k)
        return check_k(self, k)

    monkeypatch.setattr(RunService, "check_k", spy)
    return calls


def asgi_post(app, chunks, *, content_length: int | None = None, path: str = "/recommend"):
    """POST ``chunks`` to the app by hand: (status, json body, number of chunks the app received)."""
    headers = [(b"content-type", b"application/json"), (b"host", b"test")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("test", 80)}
    taken = []
    sent = []

    async def receive():
        if len(taken) < len(chunks):
            taken.append(chunks[len(taken)])
            return {"type": "http.request", "body": taken[-1], "more_body": len(taken) < len(chunks)}
        await asyncio.sleep(3600)  # nothing more: a client that waits (never reached by these requests)

    async def send(message):
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), len(taken), dict(start["headers"])


def test_declared_oversize_body_is_refused_unread(run, endpoint_calls):
    app = create_app(run, max_body_bytes=LIMIT)
    status, answer, received, headers = asgi_post(app, [b"x" * 100], content_length=100 * 2**20)
    assert status == 413 and received == 0 and endpoint_calls == []
    assert "at most 4,096 bytes" in answer["detail"] and "max_body_bytes" in answer["detail"]
    assert headers[b"connection"] == b"close"


def test_chunked_oversize_body_is_refused_while_it_streams(run, endpoint_calls):
    app = create_app(run, max_body_bytes=LIMIT)
    chunks = [b'{"user_id": "' + b"a" * 1000] * 1000  # about 1 MB in 1,000 chunks, no Content-Length
    status, answer, received, _ = asgi_post(app, chunks)
    assert status == 413 and endpoint_calls == []
    assert received == LIMIT // 1013 + 1  # stopped at the first chunk past the limit
    assert "at most 4,096 bytes" in answer["detail"]
    # the same through a real client's chunked upload
    with TestClient(app) as client:
        response = client.post("/recommend", content=iter(chunks), headers={"content-type": "application/json"})
    assert response.status_code == 413 and endpoint_calls == []


def test_body_at_the_limit_is_read(run, endpoint_calls):
    user = run.user_ids[0].item()
    body = json.dumps({"user_id": user, "k": 3}).encode()
    body = body[:-1] + b" " * (LIMIT - len(body)) + b"}"  # exactly LIMIT bytes
    app = create_app(run, max_body_bytes=LIMIT)
    for chunks, length in (([body], len(body)), ([body[:100], body[100:]], None)):
        status, answer, _, _ = asgi_post(app, chunks, content_length=length)
        assert status == 200 and len(answer["items"]) == 3
    assert endpoint_calls == [3, 3]


def test_normal_requests_are_unaffected_by_the_default_limit(run):
    user, items = run.user_ids[1].item(), run.item_ids.tolist()
    with TestClient(create_app(run)) as client:
        assert client.post("/recommend", json={"user_id": user, "k": 4}).json()["items"][3]["rank"] == 4
        assert len(client.post("/recommend/new-user", json={"item_ids": items[:3], "k": 2}).json()["items"]) == 2
        assert client.get("/health").json()["status"] == "ok"


def test_long_ids_are_cut_in_errors(run):
    long_id = "u" * (10 * 2**20)  # a 10 MB user id, in a body the server was told to accept
    app = create_app(run, max_body_bytes=12 * 2**20, unknown_users="404")
    with TestClient(app) as client:
        for path, body in (("/recommend", {"user_id": long_id}),
                           ("/recommend", {"user_id": run.user_ids[0].item(), "exclude": [long_id, "i" * 90]}),
                           ("/recommend/new-user", {"item_ids": [long_id]}),
                           ("/similar", {"item_id": long_id})):
            response = client.post(path, json=body)
            assert response.status_code == 404, response.text[:300]
            detail = response.json()["detail"]
            assert len(response.content) < 500 and "'uuuu" in detail and "..." in detail, detail


def test_max_body_bytes_is_checked_and_reaches_worker_processes(run, run_dir, monkeypatch):
    for bad in (0, -1, 1.5, True, "1M"):
        with pytest.raises(ServerError, match="max_body_bytes"):
            create_app(run, max_body_bytes=bad)
    with pytest.raises(ServerError, match="max_body_bytes"):
        serve_module.serve(run_dir, max_body_bytes=0)
    calls = []
    monkeypatch.setattr(serve_module.uvicorn, "run", lambda *args, **kwargs: calls.append(kwargs))
    for name in (serve_module.ENV_RUN, serve_module.ENV_OPTIONS):
        monkeypatch.setenv(name, "unset")
    serve_module.serve(run_dir, workers=2, max_body_bytes=LIMIT)
    assert len(calls) == 1
    app = serve_module._app_from_environment()  # what each worker builds
    status, _, received, _ = asgi_post(app, [b"{}"], content_length=LIMIT + 1)
    assert (status, received) == (413, 0)
    status, _, _, _ = asgi_post(app, [b"{}"], content_length=2)
    assert status == 422  # read: the body lacks user_id
