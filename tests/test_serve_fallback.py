"""Users the run has no history for (unknown, dropped by preprocessing, or known with no training items): the
flagged fallback (fold-in of posted items, else popularity) and ``unknown_users="404"``, checked against oracles
computed here from the log and the model's raw scores (tests/oracles.py), never from the server's own path."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

import recvae.serving.server as serve_module  # noqa: E402
from recvae.cli import main  # noqa: E402
from recvae.data import SyntheticConfig, synthetic_log  # noqa: E402
from recvae.runs import Run, SplitSpec  # noqa: E402
from recvae.serving.server import ServerError, create_app  # noqa: E402
from oracles import ScoreOracle  # noqa: E402
from test_serve_wiring import check_error, check_items  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Oracle(ScoreOracle):
    """ScoreOracle plus the popularity ranking: each item's kept users with a positive event in the log."""

    def __init__(self, run, log) -> None:
        super().__init__(run, log)
        self.counts = np.zeros(run.n_items, dtype=np.float32)
        for user in run.user_ids.tolist():
            for j in self.positive[user]:
                self.counts[j] += 1

    def popular(self, k, *, banned=(), exclude=(), candidates=None) -> list[tuple]:
        return self._top(self.counts, k, set(banned) | self.cols(exclude),
                         None if candidates is None else self.cols(candidates))


@pytest.fixture(scope="module")
def log():
    return synthetic_log(SyntheticConfig(n_users=120, n_items=40, seed=3))


@pytest.fixture(scope="module")
def served(log, tmp_path_factory):
    """A production EASE run (every kept user trains: the popularity counts are the log's) and its oracle."""
    path = tmp_path_factory.mktemp("serve_fallback") / "ease"
    Run.fit(log, "ease", params={"l2": 10.0}, split=SplitSpec(heldout_users=0), output=path, report=lambda _: None)
    run = Run.load(path, device="cpu")
    return run, Oracle(run, log)


@pytest.fixture(scope="module")
def cold(served):
    """The run with one known user's training row emptied (a cold user: known, no training items)."""
    run, _ = served
    user = run.user_ids[4].item()
    history = run.history.tolil()
    history[4, :] = 0
    history = sp.csr_matrix(history.tocsr(), dtype=np.float32)
    history.eliminate_zeros()
    return Run(run.model, run.split, user_ids=run.user_ids, history=history, seen=run.seen,
               dropped_user_ids=run.dropped_user_ids, config=run.config, metrics=run.metrics, path=run.path), user


def _flagged(answer, reason: str, used: int) -> list[dict]:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["fallback"], body["fallback_reason"], body["items_used"]) == (True, reason, used), body
    assert body["run_id"].startswith("ease-")
    return body["items"]


@pytest.mark.parametrize("micro_batching", [True, False])
def test_unknown_and_dropped_users_get_the_popularity_ranking_flagged(served, micro_batching):
    run, oracle = served
    exclude, candidates = run.item_ids[:3].tolist(), run.item_ids[:30].tolist()
    dropped = run.dropped_user_ids[0].item()
    with TestClient(create_app(run, micro_batching=micro_batching)) as client:
        for user in ("ghost", 10_000, dropped):
            answer = client.post("/recommend", json={"user_id": user, "k": 7})
            check_items(_flagged(answer, "popularity", 0), oracle.popular(7))
            assert answer.json()["user_id"] == user
        answer = client.post("/recommend", json={"user_id": "ghost", "k": 5, "exclude": exclude,
                                                 "candidates": candidates})
        check_items(_flagged(answer, "popularity", 0), oracle.popular(5, exclude=exclude, candidates=candidates))
        check_items(_flagged(client.get("/recommend/ghost", params={"k": 4}), "popularity", 0), oracle.popular(4))
        # posted items that are all outside the catalogue: nothing to fold in, popularity, counted 0
        answer = client.post("/recommend", json={"user_id": "ghost", "k": 6, "items": ["new-item", 999]})
        check_items(_flagged(answer, "popularity", 0), oracle.popular(6))
        # a known user is not a fallback (posted items do not change their answer)
        user = run.user_ids[2].item()
        answer = client.post("/recommend", json={"user_id": user, "k": 6, "items": run.item_ids[:2].tolist()})
        assert (answer.json()["fallback"], answer.json()["fallback_reason"], answer.json()["items_used"]) == \
            (False, None, None)
        check_items(answer.json()["items"], oracle.user(user, 6))


def test_posted_items_are_folded_in_as_the_new_user_endpoint_does(served):
    run, oracle = served
    items = run.item_ids[[1, 5, 9]].tolist()
    exclude = [run.item_ids[0].item()]
    with TestClient(create_app(run)) as client:
        answer = client.post("/recommend", json={"user_id": "ghost", "k": 6, "exclude": exclude,
                                                 "items": [*items, items[0], "not-in-catalogue"]})
        got = _flagged(answer, "fold-in", 3)  # three known distinct items used
        check_items(got, oracle.new_user(items, 6, exclude=exclude))
        new_user = client.post("/recommend/new-user", json={"item_ids": items, "k": 6, "exclude": exclude}).json()
        assert got == new_user["items"] and new_user["run_id"] == answer.json()["run_id"]
        # filter_seen=False lets the posted items come back, as for a known user
        answer = client.post("/recommend", json={"user_id": "ghost", "k": 6, "items": items, "filter_seen": False})
        check_items(_flagged(answer, "fold-in", 3), oracle._rank(oracle.cols(items), 6, set(), None))
        too_many = client.post("/recommend", json={"user_id": "ghost", "items": items * 10})
    with TestClient(create_app(run, max_list=len(items) * 3)) as client:
        check_error(client.post("/recommend", json={"user_id": "ghost", "items": items * 4}), 422, "items", "at most")
    assert too_many.status_code == 200


def test_a_cold_user_is_a_fallback_with_their_seen_items_filtered(served, cold):
    _, oracle = served
    run, user = cold
    seen = oracle.seen[user]
    items = run.item_ids[[2, 7]].tolist()
    with TestClient(create_app(run)) as client:
        answer = client.post("/recommend", json={"user_id": user, "k": 8})
        check_items(_flagged(answer, "popularity", 0), oracle.popular(8, banned=seen))
        answer = client.post("/recommend", json={"user_id": user, "k": 8, "items": items})
        history = oracle.cols(items)
        check_items(_flagged(answer, "fold-in", 2), oracle._rank(history, 8, history | seen, None))
    with TestClient(create_app(run, unknown_users="404")) as client:
        check_error(client.post("/recommend", json={"user_id": user}), 404, str(user), "no training items")


def test_a_batch_answers_every_user_in_order_and_flags_the_fallbacks(served, cold):
    _, oracle = served
    run, cold_user = cold
    known = run.user_ids[[0, 9, 3]].tolist()
    dropped = run.dropped_user_ids[1].item()
    body = {"user_ids": [known[0], "ghost", cold_user, known[1], dropped, "ghost", known[0], known[2]], "k": 5}
    with TestClient(create_app(run)) as client:
        answer = client.post("/recommend/batch", json=body)
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert [r["user_id"] for r in results] == [known[0], "ghost", cold_user, known[1], dropped, known[2]]
        for result in results:
            user = result["user_id"]
            if user in known:
                assert not result["fallback"]
                check_items(result["items"], oracle.user(user, 5))
            else:
                assert (result["fallback"], result["fallback_reason"]) == (True, "popularity")
                check_items(result["items"], oracle.popular(5, banned=oracle.seen[user] if user == cold_user else ()))
        assert answer.json()["missing"] == ["ghost", str(cold_user), str(dropped)]
    with TestClient(create_app(run, unknown_users="404")) as client:
        answer = client.post("/recommend/batch", json=body).json()
        assert [r["user_id"] for r in answer["results"]] == [known[0], known[1], known[2]]
        assert answer["missing"] == ["ghost", str(cold_user), str(dropped)]


def test_404_mode_refuses_users_without_history(served):
    run, _ = served
    dropped = run.dropped_user_ids[0].item()
    with TestClient(create_app(run, unknown_users="404")) as client:
        check_error(client.post("/recommend", json={"user_id": "ghost", "items": run.item_ids[:2].tolist()}), 404,
                    "ghost")
        check_error(client.get("/recommend/ghost"), 404, "ghost")
        assert "/recommend/new-user" in check_error(client.post("/recommend", json={"user_id": dropped}), 404)
        assert client.get("/info").json()["unknown_users"] == "404"
    with pytest.raises(ServerError, match="unknown_users 'maybe'"):
        create_app(run, unknown_users="maybe")


def test_the_cli_and_the_worker_processes_pass_unknown_users_and_allow_reload(served, monkeypatch):
    run, _ = served
    calls = []
    monkeypatch.setattr(serve_module, "serve", lambda *args, **kwargs: calls.append(kwargs))
    main(["serve", str(run.path), "--unknown-users", "404", "--allow-reload"])
    main(["serve", str(run.path)])
    assert [(c["unknown_users"], c["allow_reload"]) for c in calls] == [("404", True), ("fallback", False)]
    monkeypatch.undo()
    with pytest.raises(ServerError, match="SIGHUP"):
        serve_module.serve(run.path, workers=2, allow_reload=True)
    with pytest.raises(ServerError, match="unknown_users"):
        serve_module.serve(run.path, unknown_users="maybe")
    monkeypatch.setattr(serve_module.uvicorn, "run", lambda *args, **kwargs: None)
    for name in (serve_module.ENV_RUN, serve_module.ENV_OPTIONS):
        monkeypatch.setenv(name, "unset")
    serve_module.serve(run.path, workers=2, unknown_users="404", device="cpu")
    with TestClient(serve_module._app_from_environment()) as client:  # what each worker process builds
        assert client.get("/recommend/ghost").status_code == 404
