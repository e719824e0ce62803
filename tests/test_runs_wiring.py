"""The Run API's wiring, row by row: every user of a shuffled batch gets their own top-k.

The oracle never calls :meth:`Run.recommend`: each user's history and "already seen"
items come from the raw log (rating > 3.5 is a positive; any event is seen), the scores
from the model's weights with numpy (EASE: ``x @ B``; popularity: the item counts),
and the ranking is a plain sort by (-score, item column) -- the documented tie-break
(the lower item index first). Every user is checked, training and held-out alike, in
batches that cut the request list in the middle, with per-user exclusion and candidate
lists, string and integer raw ids, and ``k`` below, at and past the catalogue.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from recvae.data import SyntheticConfig, synthetic_log
from recvae.runs import Run, RunError, SplitSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

THRESHOLD = 3.5
TOL = 1e-4


# ----------------------------------------------------------------------------- data and runs
@pytest.fixture(scope="module")
def int_log() -> pd.DataFrame:
    """Integer raw ids with gaps (raw item id != column), ratings 1-5: ~34 users x 36 items."""
    return synthetic_log(SyntheticConfig(n_users=160, n_items=40, seed=7, mean_events_per_user=12))


@pytest.fixture(scope="module")
def str_log(int_log) -> pd.DataFrame:
    """The same log with string ids ("u7", "m12": their column order is not the numbers')."""
    return int_log.assign(user="u" + int_log["user"].astype(str), item="m" + int_log["item"].astype(str))


@pytest.fixture(scope="module")
def ease_run(str_log) -> Run:
    return Run.fit(str_log, "ease", params={"l2": 5.0}, split=SplitSpec(heldout_users=8), evaluate=False,
                   report=lambda _: None)


@pytest.fixture(scope="module")
def pop_run(int_log) -> Run:
    """Popularity: integer counts with many exact ties, so the tie-break is pinned exactly."""
    return Run.fit(int_log, "popularity", split=SplitSpec(heldout_users=8), evaluate=False, report=lambda _: None)


# ----------------------------------------------------------------------------- the oracle
def raw_items(log: pd.DataFrame, run: Run, user, positives_only: bool) -> np.ndarray:
    """Item columns of ``user``'s raw events on the run's catalogue (positives only, or every event)."""
    mine = log[log["user"] == user]
    if positives_only:
        mine = mine[mine["rating"] > THRESHOLD]
    columns = pd.Index(run.item_ids).get_indexer(mine["item"].to_numpy())
    return np.unique(columns[columns >= 0])


def oracle_scores(run: Run, history: np.ndarray) -> np.ndarray:
    """The model's scores of one history (item columns), from its weights, in float64."""
    model = run.model
    if hasattr(model, "weights_"):  # EASE: x @ B
        return np.asarray(model.weights_, dtype=np.float64)[history].sum(axis=0)
    return np.asarray(model.item_counts_, dtype=np.float64).copy()  # popularity: the same for everyone


def oracle_top(scores: np.ndarray, eligible: np.ndarray, k: int) -> np.ndarray:
    """Eligible item columns by descending score, ties by the lower column; the first k."""
    columns = np.flatnonzero(eligible)
    order = np.lexsort((columns, -scores[columns]))
    return columns[order][:k]


def columns_of(run: Run, item_ids) -> np.ndarray:
    columns = pd.Index(run.item_ids).get_indexer(list(item_ids))
    assert (columns >= 0).all()
    return columns


def check_row(run: Run, got: pd.DataFrame, scores: np.ndarray, eligible: np.ndarray, k: int, exact: bool) -> None:
    """One user's rows against the oracle: the right count, ranks 1..m, only eligible items, the top scores."""
    expected = oracle_top(scores, eligible, k)
    assert got["rank"].tolist() == list(range(1, len(expected) + 1))
    items = columns_of(run, got["item_id"])
    assert len(set(items.tolist())) == len(items)
    assert eligible[items].all(), "an excluded, seen or non-candidate item was recommended"
    np.testing.assert_allclose(got["score"].to_numpy(np.float64), scores[items], rtol=TOL, atol=TOL)
    if exact:
        assert items.tolist() == expected.tolist()
    else:  # float rounding may swap near-ties: the same scores, best first, nothing better left out
        assert np.all(np.diff(scores[items]) <= TOL)
        left_out = eligible.copy()
        left_out[items] = False
        if left_out.any() and len(items):
            assert scores[left_out].max() <= scores[items].min() + TOL
        np.testing.assert_allclose(np.sort(scores[items]), np.sort(scores[expected]), rtol=TOL, atol=TOL)


def per_user(frame: pd.DataFrame) -> dict:
    return {u: g.reset_index(drop=True) for u, g in frame.groupby("user_id", sort=False)}


def shuffled_users(run: Run, seed: int) -> list:
    users = run.user_ids.tolist()
    np.random.default_rng(seed).shuffle(users)
    return users


def verify_users(run: Run, log: pd.DataFrame, frame: pd.DataFrame, users: list, k: int, *, exact: bool,
                 exclude: dict | None = None, candidates: dict | None = None, everyone_exclude=(),
                 filter_seen: bool = True) -> None:
    """Every requested user's rows, in the requested order, against the oracle."""
    assert list(dict.fromkeys(frame["user_id"].tolist())) == [u for u in users if
                                                               _eligible(run, log, u, exclude, candidates,
                                                                         everyone_exclude, filter_seen).any()]
    rows = per_user(frame)
    for user in users:
        eligible = _eligible(run, log, user, exclude, candidates, everyone_exclude, filter_seen)
        scores = oracle_scores(run, raw_items(log, run, user, positives_only=True))
        got = rows.get(user, frame.iloc[:0])
        check_row(run, got, scores, eligible, k, exact)


def _eligible(run, log, user, exclude, candidates, everyone_exclude, filter_seen) -> np.ndarray:
    eligible = np.ones(run.n_items, dtype=bool)
    if filter_seen:
        eligible[raw_items(log, run, user, positives_only=False)] = False
    known = set(run.item_ids.tolist())
    banned = [i for i in list(everyone_exclude) + list((exclude or {}).get(user, [])) if i in known]
    eligible[columns_of(run, banned)] = False
    if candidates is not None and user in candidates:
        allowed = np.zeros(run.n_items, dtype=bool)
        allowed[columns_of(run, [i for i in candidates[user] if i in known])] = True
        eligible &= allowed
    return eligible


# ----------------------------------------------------------------------------- the fixtures are what they claim
def test_the_fixtures_can_tell_right_from_wrong(ease_run, pop_run, str_log):
    """Held-out users, ties, seen-but-not-positive items and gaps in the raw ids all occur."""
    assert ease_run.split.test.n_users >= 5 and ease_run.split.validation.n_users >= 5
    counts = pop_run.model.item_counts_
    assert len(np.unique(counts)) < len(counts) // 2  # many exact ties
    assert pop_run.item_ids.tolist() != list(range(1, pop_run.n_items + 1))  # raw id != column + 1
    low = [u for u in ease_run.user_ids
           if len(raw_items(str_log, ease_run, u, False)) > len(raw_items(str_log, ease_run, u, True))]
    assert len(low) > len(ease_run.user_ids) // 2  # most users have seen items that are not positives
    assert ease_run.item_ids.tolist() == sorted(ease_run.item_ids.tolist())  # "m10" before "m2": not numeric order


def test_every_users_history_and_seen_rows_come_from_the_raw_log(ease_run, str_log):
    """Training and held-out users alike: the model's input is every positive (fold-in and target)."""
    held = set(ease_run.split.test.user_ids.tolist()) | set(ease_run.split.validation.user_ids.tolist())
    assert held < set(ease_run.user_ids.tolist())
    for row, user in enumerate(ease_run.user_ids):
        assert ease_run.history[row].indices.tolist() == raw_items(str_log, ease_run, user, True).tolist(), user
        assert ease_run.seen[row].indices.tolist() == raw_items(str_log, ease_run, user, False).tolist(), user


# ----------------------------------------------------------------------------- every user of a shuffled batch
def test_every_user_of_a_shuffled_batch_gets_their_own_top_k(ease_run, str_log):
    users = shuffled_users(ease_run, seed=1)
    frame = ease_run.recommend(users, k=6, batch_size=7)  # batches cut the list in the middle
    verify_users(ease_run, str_log, frame, users, 6, exact=False)


def test_per_user_exclusions_and_candidates_reach_each_user_of_the_batch(ease_run, str_log):
    """Lists for half the users, in another order than the request, an unknown user first in each dict."""
    users = shuffled_users(ease_run, seed=2)
    rng = np.random.default_rng(3)
    items = ease_run.item_ids.tolist()
    named = users[::2]
    exclude = {"nobody": items[:5]}
    exclude.update({u: rng.choice(items, 6, replace=False).tolist() for u in reversed(named)})
    candidates = {"ghost": items}
    candidates.update({u: rng.choice(items, 9, replace=False).tolist() for u in named[::2]})
    everyone = [items[0], items[7]]
    frame = ease_run.recommend(users, k=5, batch_size=5, exclude={**exclude}, candidates=candidates)
    verify_users(ease_run, str_log, frame, users, 5, exact=False, exclude=exclude, candidates=candidates)
    table = pd.DataFrame([(u, i) for u, lst in exclude.items() for i in lst], columns=["user_id", "item_id"])
    also = ease_run.recommend(users, k=5, batch_size=5, exclude=table, candidates=candidates)
    pd.testing.assert_frame_equal(also, frame)
    frame = ease_run.recommend(users, k=4, batch_size=9, exclude=everyone, candidates=candidates)
    verify_users(ease_run, str_log, frame, users, 4, exact=False, candidates=candidates, everyone_exclude=everyone)


def test_integer_ids_as_numbers_or_text_and_the_tie_break_exactly(pop_run, int_log):
    """Popularity ties everywhere: each row is exactly the oracle's (-count, lower column) order."""
    users = shuffled_users(pop_run, seed=4)
    asked = [str(u) if i % 3 == 0 else int(u) for i, u in enumerate(users)]  # text that spells a number finds it
    frame = pop_run.recommend(asked, k=9, batch_size=4)
    assert frame["user_id"].dtype == np.int64
    verify_users(pop_run, int_log, frame, users, 9, exact=True)
    rng = np.random.default_rng(5)
    items = pop_run.item_ids.tolist()
    exclude = {str(u): rng.choice(items, 4, replace=False).tolist() for u in users[1::3]}
    candidates = pd.DataFrame([(u, int(i)) for u in users[::4] for i in rng.choice(items, 12, replace=False)],
                              columns=["user_id", "item_id"])
    frame = pop_run.recommend(asked, k=9, batch_size=4, exclude=exclude, candidates=candidates)
    verify_users(pop_run, int_log, frame, users, 9, exact=True,
                 exclude={int(u): v for u, v in exclude.items()},
                 candidates=candidates.groupby("user_id")["item_id"].apply(list).to_dict())


def test_recommend_all_streams_every_user_with_per_user_lists(pop_run, int_log, tmp_path):
    users = pop_run.user_ids.tolist()
    items = pop_run.item_ids.tolist()
    exclude = {u: items[(3 * j) % len(items):][:5] for j, u in enumerate(users[::3])}
    candidates = {u: items[j % 7::3] for j, u in enumerate(users[1::4])}
    frame = pop_run.recommend_all(k=8, batch_size=4, exclude=exclude, candidates=candidates, progress=False)
    verify_users(pop_run, int_log, frame, users, 8, exact=True, exclude=exclude, candidates=candidates)
    written = pd.read_parquet(pop_run.recommend_all(tmp_path / "all.parquet", k=8, batch_size=5, exclude=exclude,
                                                    candidates=candidates, progress=False))
    pd.testing.assert_frame_equal(written, frame, check_dtype=False)


def test_a_user_named_twice_gets_their_lists_both_times(ease_run, str_log):
    """A repeated id with a per-user list used to fail deep in pandas (non-unique index)."""
    a, b = ease_run.user_ids[3], ease_run.user_ids[-2]
    exclude = {a: ease_run.item_ids[:10].tolist()}
    frame = ease_run.recommend([a, b, a], k=3, exclude=exclude)
    assert frame["user_id"].tolist() == [a] * 3 + [b] * 3 + [a] * 3
    first, second = frame.iloc[:3].reset_index(drop=True), frame.iloc[6:].reset_index(drop=True)
    pd.testing.assert_frame_equal(first, second)
    verify_users(ease_run, str_log, frame.iloc[:6], [a, b], 3, exact=False, exclude=exclude)


# ----------------------------------------------------------------------------- new users by item list
@pytest.mark.parametrize("which", ["ease", "pop"])
def test_new_users_from_item_lists(ease_run, pop_run, which):
    run = ease_run if which == "ease" else pop_run
    exact = which == "pop"
    items = run.item_ids.tolist()
    for seed in range(4):
        rng = np.random.default_rng(seed)
        history = rng.choice(items, 5, replace=False).tolist()
        asked = [str(i) for i in history] if which == "pop" and seed % 2 else history  # "12" finds item 12
        exclude = rng.choice(items, 4, replace=False).tolist()
        candidates = rng.choice(items, 20, replace=False).tolist()
        own = columns_of(run, history)
        scores = oracle_scores(run, own)
        for kwargs, k in (({}, 7), ({"exclude": exclude}, 7), ({"candidates": candidates}, 7),
                          ({"exclude": exclude, "candidates": candidates}, run.n_items + 4)):
            got = run.recommend_for_items(asked, k=k, **kwargs)
            assert list(got.columns) == ["rank", "item_id", "score"]
            eligible = np.ones(run.n_items, dtype=bool)
            eligible[own] = False
            eligible[columns_of(run, kwargs.get("exclude", []))] = False
            if "candidates" in kwargs:
                allowed = np.zeros(run.n_items, dtype=bool)
                allowed[columns_of(run, candidates)] = True
                eligible &= allowed
            check_row(run, got, scores, eligible, k, exact)


def test_new_user_k_past_the_catalogue_returns_every_other_item(ease_run):
    history = ease_run.item_ids[[0, 5]].tolist()
    for k in (ease_run.n_items - 2, ease_run.n_items, ease_run.n_items + 10):
        got = ease_run.recommend_for_items(history, k=k)
        assert len(got) == ease_run.n_items - 2
        assert set(got["item_id"]) == set(ease_run.item_ids.tolist()) - set(history)
    assert len(ease_run.recommend_for_items(history, k=ease_run.n_items - 3)) == ease_run.n_items - 3


# ----------------------------------------------------------------------------- k at and past the catalogue
def test_k_at_and_past_the_catalogue(pop_run, int_log):
    """k is clamped to the catalogue (documented: min(k, n_items)); each user gets every eligible item."""
    n = pop_run.n_items
    users = shuffled_users(pop_run, seed=6)[:12]
    for k in (n - 1, n, n + 1, 10 * n):
        kept = pop_run.recommend(users, k=k, filter_seen=False)
        assert kept.groupby("user_id").size().tolist() == [min(k, n)] * len(users)
        verify_users(pop_run, int_log, kept, users, k, exact=True, filter_seen=False)
        filtered = pop_run.recommend(users, k=k)
        verify_users(pop_run, int_log, filtered, users, k, exact=True)
    everything = pop_run.recommend_all(k=n + 5, filter_seen=False, progress=False)
    assert len(everything) == n * len(pop_run.user_ids)


@pytest.mark.parametrize("k", [0, -1, 2.0, True, "3"])
def test_k_below_one_or_not_an_integer_is_refused(pop_run, k):
    with pytest.raises(RunError, match="k must be a positive integer"):
        pop_run.recommend(pop_run.user_ids[:2], k=k)
    with pytest.raises(RunError, match="k must be a positive integer"):
        pop_run.recommend_all(k=k, progress=False)


def test_k_one_returns_each_users_best_item(pop_run, int_log):
    users = shuffled_users(pop_run, seed=7)
    frame = pop_run.recommend(users, k=1, batch_size=3)
    verify_users(pop_run, int_log, frame, users, 1, exact=True)


def test_similar_items_and_evaluate_at_the_catalogue_size(ease_run):
    n = ease_run.n_items
    item = ease_run.item_ids[4]
    for k in (n - 1, n, n + 7):
        similar = ease_run.similar_items([item], k=k)
        assert len(similar) == n - 1 and item not in set(similar["similar_item_id"])
        assert similar["rank"].tolist() == list(range(1, n))
    ease_run.evaluate("test", ks=[n])
    with pytest.raises(RunError, match=f"between 1 and {n}"):
        ease_run.evaluate("test", ks=[n + 1])


# ----------------------------------------------------------------------------- unknown ids
def test_strict_refuses_any_unknown_item_in_a_list(ease_run, caplog):
    user = ease_run.user_ids[0]
    known = ease_run.item_ids[2]
    with pytest.raises(RunError, match="1 item id\\(s\\) not in the model's catalogue: 'no-such-item'"):
        ease_run.recommend([user], k=3, exclude=[known, "no-such-item"], strict=True)
    with pytest.raises(RunError, match="no-such-item"):
        ease_run.recommend([user], k=3, candidates={user: ["no-such-item", known]}, strict=True)
    with pytest.raises(RunError, match="no-such-item"):
        ease_run.recommend_for_items([known], k=3, exclude=["no-such-item", known], strict=True)
    with caplog.at_level(logging.WARNING):
        loose = ease_run.recommend([user], k=ease_run.n_items, exclude=[known, "no-such-item"])
    assert "no-such-item" in caplog.text and known not in set(loose["item_id"])


# ----------------------------------------------------------------------------- a refit keeps no stale state
def test_a_saved_torch_run_keeps_no_checkpoint_path(int_log, tmp_path):
    """The fit checkpoints into the run's work folder, which is deleted: neither the model returned nor the
    one saved may still point there (a later fit of it would resume from whatever lies there then)."""
    params = {"latent_dim": 4, "hidden_dims": [8], "epochs": 1, "progress": False, "batch_size": 64}
    run = Run.fit(int_log, "mult-dae", params=params, output=tmp_path / "vae", evaluate=False,
                  report=lambda _: None)
    assert not (tmp_path / ".vae.partial").exists()
    for model in (run.model, Run.load(tmp_path / "vae").model):
        assert model.get_params()["checkpoint"] is None and model.get_params()["resume"] is False


# ----------------------------------------------------------------------------- the seed and strict reach their place
def _kept_users(log: pd.DataFrame) -> np.ndarray:
    """The users preprocessing keeps, from the log alone: at least 5 distinct items rated above 3.5, sorted."""
    positives = log[log["rating"] > THRESHOLD].drop_duplicates(["user", "item"])
    counts = positives.groupby("user").size()
    return np.sort(counts[counts >= 5].index.to_numpy())


def test_the_seed_reaches_the_split(int_log):
    """Run.fit(split=SplitSpec(seed=S)) splits with S (strong_generalization's documented rule, computed here:
    the sorted kept users permuted by RandomState(S), the last n the test users, the n before them validation)."""
    users, n, seed = _kept_users(int_log), 8, 11
    end = len(users)

    def held(s: int) -> tuple[set, set]:
        order = np.random.RandomState(s).permutation(end)
        return set(users[order[end - n:]].tolist()), set(users[order[end - 2 * n:end - n]].tolist())

    assert held(seed) != held(98765)  # the seed makes a difference here
    run = Run.fit(int_log, "popularity", split=SplitSpec(heldout_users=n, seed=seed), evaluate=False,
                  report=lambda _: None)
    assert (set(run.split.test.user_ids.tolist()), set(run.split.validation.user_ids.tolist())) == held(seed)
    assert run.config["seed"] == seed and run.split.info["seed"] == seed


def test_strict_refuses_a_user_dropped_by_preprocessing_as_it_does_an_unknown_one(pop_run, int_log):
    kept = set(_kept_users(int_log).tolist())
    dropped = sorted(set(int_log["user"].tolist()) - kept)
    assert dropped and dropped[0] in set(pop_run.dropped_user_ids.tolist())
    user, known = dropped[0], pop_run.user_ids[0]
    for asked in ([known, user], [user]):
        with pytest.raises(RunError, match="1 dropped by preprocessing"):
            pop_run.recommend(asked, k=3, strict=True)
    with pytest.raises(RunError, match="not in the log"):
        pop_run.recommend([known, 10**9], k=3, strict=True)
    loose = pop_run.recommend([known, user], k=3)
    assert loose["user_id"].unique().tolist() == [known]
    skipped = loose.attrs["skipped"]
    assert (skipped.dropped, skipped.unknown) == ([user], [])
