"""Serving for services: many users in one request (POST /recommend/batch) and GET /recommend/{user_id},
checked against an oracle computed from the log and the model's scores (tests/oracles.py), not Run.recommend."""

import warnings

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from recvae.data import SyntheticConfig, synthetic_log  # noqa: E402
from recvae.runs import Run  # noqa: E402
from recvae.serving.server import create_app  # noqa: E402
from oracles import ScoreOracle as Oracle  # noqa: E402
from test_serve_wiring import check_items, mixed_users  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    log = synthetic_log(SyntheticConfig(n_users=120, n_items=40, seed=3))
    path = tmp_path_factory.mktemp("serve_batch") / "ease"
    Run.fit(log, "ease", params={"l2": 10.0}, output=path, report=lambda _: None)
    run = Run.load(path, device="cpu")
    return run, Oracle(run, log)


def test_a_batch_answers_every_known_user_in_order_and_lists_the_missing(served):
    run, oracle = served
    users = mixed_users(run)[:7]
    exclude = run.item_ids[:4].tolist()
    body = {"user_ids": [users[3], "ghost", *users, users[0]], "k": 4, "exclude": exclude}
    with TestClient(create_app(run, micro_batching=False, unknown_users="404")) as client:
        answer = client.post("/recommend/batch", json=body)
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert [r["user_id"] for r in results] == [users[3], *[u for u in users if u != users[3]]]  # each once
        for result in results:
            check_items(result["items"], oracle.user(result["user_id"], 4, exclude=exclude))
        assert answer.json()["missing"] == ["ghost"]
        too_many = client.post("/recommend/batch", json={"user_ids": users * 3, "k": 2})
        assert too_many.status_code == 200  # within max_list
    with TestClient(create_app(run, micro_batching=False, max_list=5)) as client:
        refused = client.post("/recommend/batch", json={"user_ids": users, "k": 2})
        assert refused.status_code == 422 and "at most 5" in refused.json()["detail"]


@pytest.mark.parametrize("micro_batching", [True, False])
def test_get_recommend_by_path_equals_the_oracle(served, micro_batching):
    run, oracle = served
    user = mixed_users(run)[5]
    with TestClient(create_app(run, micro_batching=micro_batching, unknown_users="404")) as client:
        answer = client.get(f"/recommend/{user}", params={"k": 6})
        assert answer.status_code == 200, answer.text
        assert answer.json()["user_id"] == user
        check_items(answer.json()["items"], oracle.user(user, 6))
        assert client.get("/recommend/no-such-user").status_code == 404
