"""A production run's "every user" says who is not in it: users preprocessing dropped are counted, with the fix."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from recvae.cli import main
from recvae.runs import LogSpec, Run, SplitSpec


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dropped")
    rows = [(f"u{u}", f"m{i}") for u in range(40) for i in range(20) if (u + i) % 3 == 0]
    rows += [("rare1", "m1"), ("rare2", "m2"), ("rare2", "m3")]  # 1 and 2 events: under min_user_events 5
    pd.DataFrame(rows, columns=["user", "item"]).to_csv(root / "log.csv", index=False)
    return Run.fit(LogSpec(root / "log.csv", min_user_events=5), "ease", split=SplitSpec(heldout_users=0),
                   output=root / "prod")


def test_recommend_all_names_the_dropped_users_and_the_fix(run, caplog, tmp_path):
    assert sorted(run.dropped_user_ids.tolist()) == ["rare1", "rare2"]
    with caplog.at_level(logging.WARNING, logger="recvae.runs"):
        frame = run.recommend_all(k=3)
    assert set(frame["user_id"]) == set(run.user_ids.tolist()) and not {"rare1", "rare2"} & set(frame["user_id"])
    [message] = [r.getMessage() for r in caplog.records if "not in this run" in r.getMessage()]
    assert message.startswith("2 users of the log") and "fewer than 5" in message and "--min-user-events" in message


def test_the_cli_says_so_too(run, tmp_path, capsys):
    assert main(["recommend", str(run.path), "--all-users", "-k", "3", "-o", str(tmp_path / "r.csv")]) == 0
    out = capsys.readouterr().out
    assert "2 users of the log are not among them" in out and "--min-user-events" in out
