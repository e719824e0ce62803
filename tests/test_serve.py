"""The HTTP server (recvae.serving.server): a real `recvae serve` subprocess on 127.0.0.1 and the app in-process.

Every answer is checked against the Python API (`Run.recommend`, `recommend_for_items`,
`similar_items`) on the same run directory; bad requests answer 4xx JSON with a one-line
detail; concurrent requests (micro-batched) answer as single ones. Servers always stop.
"""

import concurrent.futures
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

with warnings.catch_warnings():  # starlette's notice about its httpx client, not ours
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from recvae.cli import build_parser, main  # noqa: E402
from recvae.data import SyntheticConfig, synthetic_log  # noqa: E402
from recvae.runs import Run, SplitSpec  # noqa: E402
from recvae.serving.server import MISSING_SERVER, create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60
REQUEST_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """An EASE and a small Mult-VAE run directory on a 200 x 60 synthetic log."""
    tmp = tmp_path_factory.mktemp("serve")
    log = synthetic_log(SyntheticConfig(n_users=200, n_items=60, seed=0))
    quiet = lambda _: None  # noqa: E731
    ease = Run.fit(log, "ease", params={"l2": 10.0}, output=tmp / "ease", report=quiet)
    vae = Run.fit(log, "mult-vae", params={"latent_dim": 8, "hidden_dims": [16], "epochs": 2, "seed": 0},
                  split=SplitSpec(seed=0), output=tmp / "vae", report=quiet)
    return {"ease": (tmp / "ease", Run.load(ease.path, device="cpu")),
            "vae": (tmp / "vae", Run.load(vae.path, device="cpu"))}


def _items(frame, column: str = "item_id") -> list[tuple]:
    return list(zip(frame["rank"].tolist(), frame[column].tolist(), frame["score"].tolist()))


def _check_same(answer: list[dict], expected: list[tuple]) -> None:
    assert [(a["rank"], a["item_id"]) for a in answer] == [(r, i) for r, i, _ in expected]
    np.testing.assert_allclose([a["score"] for a in answer], [s for _, _, s in expected], rtol=1e-5, atol=1e-6)


def _check_error(response, status: int) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    assert "\n" not in body["detail"] and "Traceback" not in response.text


# ============================================================================ a real server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(runs):
    """`python -m recvae serve` on the EASE run at 127.0.0.1:<free port>; terminated at teardown."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "recvae", "-q", "serve", str(runs["ease"][0]), "--host",
                             "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer /health within {START_TIMEOUT_S} s")
            time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S) as client:
            yield client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()


def test_health_and_info(server, runs):
    run = runs["ease"][1]
    health = server.get("/health").json()
    assert health["status"] == "ok" and health["run_id"].startswith("ease-")
    info = server.get("/info").json()
    assert info["run_id"] == health["run_id"] and info["unknown_users"] == "fallback"
    assert info["model"] == "ease" and info["items"] == run.n_items and info["users"] == len(run.user_ids)
    assert info["version"] and info["micro_batching"] is True


def test_recommend_equals_the_python_api(server, runs):
    run = runs["ease"][1]
    for user in run.user_ids[:5].tolist():
        answer = server.post("/recommend", json={"user_id": user, "k": 7}).json()
        assert answer["user_id"] == user
        _check_same(answer["items"], _items(run.recommend([user], k=7)))
    user = run.user_ids[0].item()
    # text that spells a number finds the numeric id; options reach Run.recommend
    answer = server.post("/recommend", json={"user_id": str(user), "k": 5, "filter_seen": False,
                                             "exclude": run.item_ids[:3].tolist(),
                                             "candidates": run.item_ids[:20].tolist()}).json()
    expected = run.recommend([user], k=5, filter_seen=False, exclude=run.item_ids[:3].tolist(),
                             candidates=run.item_ids[:20].tolist())
    assert answer["user_id"] == user
    _check_same(answer["items"], _items(expected))


def test_new_user_and_similar_equal_the_python_api(server, runs):
    run = runs["ease"][1]
    history = run.item_ids[[1, 5, 9]].tolist()
    answer = server.post("/recommend/new-user", json={"item_ids": history, "k": 6, "exclude": [run.item_ids[0].item()]})
    _check_same(answer.json()["items"], _items(run.recommend_for_items(history, k=6, exclude=[run.item_ids[0].item()])))
    item = run.item_ids[3].item()
    answer = server.post("/similar", json={"item_id": item, "k": 4}).json()
    assert answer["item_id"] == item
    _check_same(answer["items"], _items(run.similar_items([item], k=4), "similar_item_id"))


def test_bad_requests_answer_one_line_json(server, runs):
    run = runs["ease"][1]
    user = run.user_ids[0].item()
    for unknown in ("no-such-user", run.dropped_user_ids[0].item()):  # answered by popularity, flagged
        answer = server.post("/recommend", json={"user_id": unknown})
        assert answer.status_code == 200 and answer.json()["fallback_reason"] == "popularity", answer.text
    _check_error(server.post("/recommend", json={"user_id": user, "exclude": ["no-such-item"]}), 404)
    _check_error(server.post("/recommend/new-user", json={"item_ids": ["no-such-item"]}), 404)
    _check_error(server.post("/similar", json={"item_id": "no-such-item"}), 404)
    for body in ({"user_id": user, "k": 0}, {"user_id": user, "k": run.n_items + 1}, {"user_id": user, "k": "5"},
                 {"user_id": [user]}, {"user_id": user, "candidates": "abc"}, {}, {"user_id": user, "extra": 1},
                 {"user_id": user, "exclude": list(range(20_000))}, {"item_ids": []}):
        path = "/recommend/new-user" if "item_ids" in body else "/recommend"
        _check_error(server.post(path, json=body), 422)
    _check_error(server.post("/recommend", content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert server.get("/no-such-endpoint").status_code == 404


def test_concurrent_requests_answer_as_single_ones(server, runs):
    run = runs["ease"][1]
    asks = [(u, 3 + i % 5) for i, u in enumerate(run.user_ids[:32].tolist() + run.user_ids[:8].tolist())]
    expected = {(u, k): _items(run.recommend([u], k=k)) for u, k in asks}  # a user twice, with two k's
    before = server.get("/info").json()

    def ask(user_k):
        user, k = user_k
        return user_k, server.post("/recommend", json={"user_id": user, "k": k}).json()

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(ask, asks, timeout=REQUEST_TIMEOUT_S))
    for (user, k), answer in answers:
        assert answer["user_id"] == user
        _check_same(answer["items"], expected[user, k])
    after = server.get("/info").json()
    served = after["batched_requests"] - before["batched_requests"]
    assert served == len(answers)
    assert after["batches"] - before["batches"] < served  # some requests shared a batch


# ============================================================================ in-process
@pytest.mark.parametrize("micro_batching", [True, False])
def test_vae_app_in_process(runs, micro_batching):
    path, run = runs["vae"]
    app = create_app(path, micro_batching=micro_batching, max_wait_ms=2.0, max_list=50, device="cpu")
    with TestClient(app) as client:
        assert client.get("/info").json()["model"] == "mult-vae"
        for user in run.user_ids[:4].tolist():
            answer = client.post("/recommend", json={"user_id": user, "k": 10}).json()
            _check_same(answer["items"], _items(run.recommend([user], k=10)))
        history = run.item_ids[:4].tolist()
        _check_same(client.post("/recommend/new-user", json={"item_ids": history, "k": 5}).json()["items"],
                    _items(run.recommend_for_items(history, k=5)))
        item = run.item_ids[2].item()
        _check_same(client.post("/similar", json={"item_id": item, "k": 5}).json()["items"],
                    _items(run.similar_items([item], k=5), "similar_item_id"))
        _check_error(client.post("/recommend", json={"user_id": run.user_ids[0].item(), "candidates": list(range(51))}),
                     422)


def test_batched_groups_by_options_and_truncates_to_each_k(runs):
    """Requests with different options and k in one batch answer as the Python API does."""
    import asyncio

    run = runs["ease"][1]
    app = create_app(run, max_wait_ms=50.0)
    users = run.user_ids[:6].tolist()
    bodies = [{"user_id": u, "k": 2 + i, **({"exclude": run.item_ids[:5].tolist()} if i % 2 else {}),
               "filter_seen": i % 3 != 0} for i, u in enumerate(users)]

    async def ask_all():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=REQUEST_TIMEOUT_S) as c:
            return await asyncio.gather(*(c.post("/recommend", json=b) for b in bodies))

    answers = asyncio.run(asyncio.wait_for(ask_all(), REQUEST_TIMEOUT_S))
    for body, answer in zip(bodies, answers):
        expected = run.recommend([body["user_id"]], k=body["k"], filter_seen=body["filter_seen"],
                                 exclude=body.get("exclude"))
        _check_same(answer.json()["items"], _items(expected))
    assert app.state.batcher.batches < len(bodies)


def test_internal_errors_answer_one_line_500(runs, monkeypatch):
    run = runs["ease"][1]
    app = create_app(run, micro_batching=False)

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(run, "similar_items", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        _check_error(client.post("/similar", json={"item_id": run.item_ids[0].item()}), 500)


# ============================================================================ the extra and the command line
def test_import_without_fastapi_and_a_clear_error():
    code = ("import sys; sys.modules['fastapi'] = None; sys.modules['uvicorn'] = None\n"
            "import recvae.serving.server as s\n"
            "assert not s.HAVE_SERVER\n"
            "try:\n    s.create_app('x')\nexcept RuntimeError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == MISSING_SERVER


def test_cli_serve_arguments_and_a_missing_run(tmp_path):
    args = build_parser().parse_args(["serve", "runs/prod", "--port", "9000", "--workers", "2", "--no-batching",
                                      "--max-wait-ms", "2"])
    assert (args.host, args.port, args.workers, args.no_batching, args.max_wait_ms) == ("127.0.0.1", 9000, 2, True,
                                                                                        2.0)
    with pytest.raises(SystemExit, match="recvae: error: .*no such run directory"):
        main(["serve", str(tmp_path / "missing")])
