"""Swapping the served run without dropping requests: POST /admin/reload and SIGHUP. Answers are checked against
each run's own oracle (tests/oracles.py) through the ``run_id`` they carry; a broken run is refused in one line
and the old run keeps serving; a request in flight during a reload finishes on the run it started on."""

import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from recvae.data import SyntheticConfig, synthetic_log  # noqa: E402
from recvae.runs import Run, RunOutput  # noqa: E402
from recvae.serving.server import create_app  # noqa: E402
from oracles import ScoreOracle as Oracle  # noqa: E402
from test_serve_wiring import check_error, check_items  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
QUIET = lambda _: None  # noqa: E731
WAIT_S = 60


@pytest.fixture(scope="module")
def log():
    return synthetic_log(SyntheticConfig(n_users=120, n_items=40, seed=3))


@pytest.fixture(scope="module")
def runs(log, tmp_path_factory) -> dict:
    """Two EASE runs of the same log with different l2 (different answers) and a broken copy of the second."""
    tmp = tmp_path_factory.mktemp("serve_reload")
    Run.fit(log, "ease", params={"l2": 10.0}, output=tmp / "a", report=QUIET)
    Run.fit(log, "ease", params={"l2": 400.0}, output=tmp / "b", report=QUIET)
    shutil.copytree(tmp / "b", tmp / "broken")
    with open(tmp / "broken" / "config.json", "a") as fh:  # no longer what the manifest lists
        fh.write(" ")
    return {name: tmp / name for name in ("a", "b", "broken")}


@pytest.fixture(scope="module")
def oracles(runs, log) -> dict:
    return {name: Oracle(Run.load(runs[name], device="cpu"), log) for name in ("a", "b")}


def _users(oracle) -> list:
    return oracle.run.user_ids[:6].tolist()


def _check_answer(answer, oracle_by_id: dict, k: int) -> str:
    """A /recommend answer equals the oracle of the run it names; returns that run's id."""
    assert answer.status_code == 200, answer.text
    body = answer.json()
    check_items(body["items"], oracle_by_id[body["run_id"]].user(body["user_id"], k))
    return body["run_id"]


def _run_id(client) -> str:
    return client.get("/health").json()["run_id"]


def test_reload_swaps_the_run_and_answers_follow_it(runs, oracles):
    with TestClient(create_app(runs["a"], device="cpu", allow_reload=True)) as client:
        first = _run_id(client)
        assert first.startswith("a-")
        user = _users(oracles["a"])[0]
        ids = {first: oracles["a"]}
        _check_answer(client.post("/recommend", json={"user_id": user, "k": 5}), ids, 5)
        answer = client.post("/admin/reload", json={"run": str(runs["b"])})
        assert answer.status_code == 200, answer.text
        second = answer.json()["run_id"]
        assert answer.json()["previous_run_id"] == first and second.startswith("b-") and _run_id(client) == second
        ids[second] = oracles["b"]
        assert _check_answer(client.post("/recommend", json={"user_id": user, "k": 5}), ids, 5) == second
        assert oracles["a"].user(user, 5) != oracles["b"].user(user, 5)  # the swap is visible in the answer
        for path in ("/recommend/new-user", "/recommend/batch", "/similar", "/info"):
            body = {"/recommend/new-user": {"item_ids": oracles["b"].ids[:2]}, "/recommend/batch": {"user_ids": [user]},
                    "/similar": {"item_id": oracles["b"].ids[0]}}.get(path)
            answer = client.post(path, json=body) if body else client.get(path)
            assert answer.json()["run_id"] == second, (path, answer.text)
        info = client.get("/info").json()
        assert (info["reloads"], info["last_reload_error"], info["path"]) == (1, None, str(runs["b"]))
        # no body: the run directory the server was started with, read again
        assert client.post("/admin/reload").json()["run_id"] == first == _run_id(client)


def test_a_rewritten_run_directory_gets_a_new_run_id(log, tmp_path):
    path = tmp_path / "prod"
    Run.fit(log, "ease", params={"l2": 10.0}, output=path, report=QUIET)
    with TestClient(create_app(path, device="cpu", allow_reload=True)) as client:
        before = _run_id(client)
        Run.fit(log, "ease", params={"l2": 50.0}, output=RunOutput(path, overwrite=True), report=QUIET)
        after = client.post("/admin/reload").json()["run_id"]
        assert after != before and after.startswith("prod-") and _run_id(client) == after


def test_a_broken_run_is_refused_and_the_old_one_keeps_serving(runs, oracles, tmp_path):
    with TestClient(create_app(runs["a"], device="cpu", allow_reload=True)) as client:
        first = _run_id(client)
        user = _users(oracles["a"])[1]
        for target, names in ((runs["broken"], ("reload refused", "broken", first)),
                              (tmp_path / "nowhere", ("reload refused", "nowhere", first)),
                              (tmp_path, ("reload refused", "not a recvae run directory"))):
            check_error(client.post("/admin/reload", json={"run": str(target)}), 422, *names)
            assert _run_id(client) == first
            _check_answer(client.post("/recommend", json={"user_id": user, "k": 4}), {first: oracles["a"]}, 4)
        info = client.get("/info").json()
        assert info["reloads"] == 0 and "reload refused" in info["last_reload_error"]
        check_error(client.post("/admin/reload", json={"run": 5}), 422, "run")


def test_reload_is_off_by_default(runs):
    with TestClient(create_app(runs["a"], device="cpu")) as client:
        first = _run_id(client)
        check_error(client.post("/admin/reload", json={"run": str(runs["b"])}), 403, "--allow-reload", "SIGHUP")
        assert _run_id(client) == first and client.get("/info").json()["allow_reload"] is False


@pytest.mark.parametrize("micro_batching", [True, False])
def test_a_request_in_flight_finishes_on_its_run_and_concurrent_requests_all_succeed(runs, oracles, monkeypatch,
                                                                                   micro_batching):
    app = create_app(runs["a"], device="cpu", allow_reload=True, micro_batching=micro_batching)
    old = app.state.served.current
    started, release = threading.Event(), threading.Event()
    recommend = old.recommend_batch

    def held(*args, **kwargs):  # the old run's first scoring waits until the reload is done
        if not started.is_set():
            started.set()
            assert release.wait(WAIT_S)
        return recommend(*args, **kwargs)

    monkeypatch.setattr(old, "recommend_batch", held)
    users = _users(oracles["a"])
    stop = threading.Event()

    def hammer(client, user) -> list:
        answers = []
        while (not stop.is_set() or len(answers) < 3) and len(answers) < 500:
            answers.append(client.post("/recommend", json={"user_id": user, "k": 5}))
        return answers

    with TestClient(app) as client, concurrent.futures.ThreadPoolExecutor(4) as pool:
        try:
            ids = {_run_id(client): oracles["a"]}
            in_flight = pool.submit(client.post, "/recommend", json={"user_id": users[0], "k": 5})
            assert started.wait(WAIT_S)
            others = [pool.submit(hammer, client, user) for user in users[1:4]]
            reload = client.post("/admin/reload", json={"run": str(runs["b"])})
            assert reload.status_code == 200, reload.text
            ids[reload.json()["run_id"]] = oracles["b"]
            release.set()
            assert _check_answer(in_flight.result(WAIT_S), ids, 5) == old.run_id  # started on a, answered by a
            time.sleep(0.2)
            stop.set()
            answers = [a for f in others for a in f.result(WAIT_S)]
            seen = {_check_answer(a, ids, 5) for a in answers}  # every one succeeds, by its own run's oracle
            assert reload.json()["run_id"] in seen
        finally:  # a failure must not leave the threads waiting
            release.set()
            stop.set()


# ============================================================================ SIGHUP, a real server
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(check, what: str, proc) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {WAIT_S} s")
        time.sleep(0.2)


def _point(link: Path, target: Path) -> None:
    """Repoint a link at once (a new link renamed over the old)."""
    fresh = link.with_name(link.name + ".new")
    os.symlink(target, fresh)
    os.replace(fresh, link)


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_reloads_the_start_path_and_refuses_a_broken_run(runs, tmp_path):
    link = tmp_path / "current"
    os.symlink(runs["a"], link)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "recvae", "-q", "serve", str(link), "--port", str(port),
                             "--device", "cpu"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=WAIT_S) as client:
            _wait_for(lambda: client.get("/health").status_code == 200, "the server did not answer /health", proc)
            first = client.get("/health").json()["run_id"]
            assert first.startswith("a-")
            _point(link, runs["b"])
            proc.send_signal(signal.SIGHUP)
            _wait_for(lambda: client.get("/health").json()["run_id"] != first, "SIGHUP did not swap the run", proc)
            second = client.get("/health").json()["run_id"]
            assert second.startswith("b-") and client.get("/info").json()["reloads"] == 1
            _point(link, runs["broken"])
            proc.send_signal(signal.SIGHUP)
            _wait_for(lambda: client.get("/info").json()["last_reload_error"], "SIGHUP's refusal not shown", proc)
            info = client.get("/info").json()
            assert info["run_id"] == second and "reload refused" in info["last_reload_error"]
            assert client.get(f"/recommend/{_users_of(runs['b'])}").json()["run_id"] == second
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()


def _users_of(path: Path):
    return Run.load(path, device="cpu").user_ids[0].item()


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_replaces_every_worker_process_with_one_on_the_new_run(runs, tmp_path):
    """``--workers 2``: SIGHUP makes uvicorn start a replacement for each worker, which loads the run the link
    points at now; every answer after it comes from the new run. (uvicorn's own 5 s for a new worker to
    answer was less than a worker takes to import torch and load a run on a busy machine: the restart was
    abandoned and the old run kept serving.)"""
    link = tmp_path / "current"
    os.symlink(runs["a"], link)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "recvae", "-q", "serve", str(link), "--port", str(port),
                             "--device", "cpu", "--workers", "2"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=WAIT_S) as client:
            _wait_for(lambda: client.get("/health").status_code == 200, "the server did not answer /health", proc)
            assert client.get("/health").json()["run_id"].startswith("a-")
            _point(link, runs["b"])
            proc.send_signal(signal.SIGHUP)
            _wait_for(lambda: all(client.get("/health", headers={"connection": "close"}).json()["run_id"]
                                  .startswith("b-") for _ in range(8)), "SIGHUP did not replace both workers", proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
