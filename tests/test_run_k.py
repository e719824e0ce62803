"""A k past the catalogue is never cut silently: every query of a run returns the whole catalogue (every other
item for similar items) with one logged warning naming the real k, and tells the k it used in
``frame.attrs["k"]`` (``"k_asked"``: the one asked) so that a heading can say it (``Run.k_label``)."""

import logging

import pandas as pd
import pytest

from recvae.data import SyntheticConfig, synthetic_log
from recvae.runs import Run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HUGE = 100_000


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    log = synthetic_log(SyntheticConfig(n_users=120, n_items=40, seed=3))
    path = tmp_path_factory.mktemp("run_k") / "ease"
    Run.fit(log, "ease", params={"l2": 10.0}, output=path, report=lambda _: None)
    run = Run.load(path, device="cpu")
    assert 10 < run.n_items < 1000
    return run


def k_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "k=" in r.getMessage()]


def test_recommend_past_the_catalogue_warns_and_tells_the_real_k(run, caplog):
    n = run.n_items
    users = run.user_ids[:5].tolist()
    whole = run.recommend(users, k=n, filter_seen=False)
    assert (whole.attrs["k"], whole.attrs["k_asked"]) == (n, n) and not k_warnings(caplog)
    with caplog.at_level(logging.WARNING):
        frame = run.recommend(users, k=HUGE, filter_seen=False, batch_size=2)
    [message] = k_warnings(caplog)  # once, not once per batch
    assert "k=100,000" in message and f"at most {n:,}" in message and "whole catalogue" in message
    assert (frame.attrs["k"], frame.attrs["k_asked"]) == (n, HUGE)
    pd.testing.assert_frame_equal(frame, whole)
    assert run.k_label(HUGE) == f"{n} (the whole catalogue; asked for 100,000)"
    assert run.k_label(10) == "10" and run.k_label(n) == str(n)


def test_recommend_all_and_new_users_past_the_catalogue(run, caplog, tmp_path):
    n = run.n_items
    with caplog.at_level(logging.WARNING):
        frame = run.recommend_all(k=HUGE, batch_size=7, progress=False)
        assert frame.attrs["k"] == n and frame["rank"].max() <= n
        path = run.recommend_all(tmp_path / "recs.csv", k=HUGE, batch_size=7, progress=False)
        assert len(pd.read_csv(path)) == len(frame)
        new = run.recommend_for_items(run.item_ids[:3].tolist(), k=HUGE)
    assert (new.attrs["k"], new.attrs["k_asked"]) == (n, HUGE) and len(new) == n - 3
    assert len(k_warnings(caplog)) == 3  # one per call, whatever the batches
    assert run.effective_k(HUGE, warn=False) == n and len(k_warnings(caplog)) == 3


def test_similar_items_past_the_catalogue_warns_once(run, caplog):
    n = run.n_items
    item = run.item_ids[0].item()
    with caplog.at_level(logging.WARNING):
        frame = run.similar_items([item], k=HUGE)
    [message] = k_warnings(caplog)  # the run's warning; the model is asked for what there is
    assert "k=100,000" in message and f"at most {n - 1} similar items" in message
    assert (frame.attrs["k"], len(frame)) == (n - 1, n - 1)
    assert run.k_label(HUGE, similar=True) == f"{n - 1} (every other item; asked for 100,000)"
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        recs = run.model.similar_items([0], k=HUGE, by_column=True)  # the model alone says it too
    assert recs.items.shape == (1, n - 1) and len(k_warnings(caplog)) == 1


def test_a_bad_k_is_still_refused(run):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            run.recommend(run.user_ids[:1].tolist(), k=bad)
        with pytest.raises(ValueError, match="positive integer"):
            run.similar_items([run.item_ids[0].item()], k=bad)
