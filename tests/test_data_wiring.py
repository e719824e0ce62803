"""Preprocessing and splits at their edges, against hand-computed values and a per-event Python oracle.

Pinned: a rating exactly at the threshold is dropped and one just above it kept (the threshold is
strict), the rating scale's own ends are valid ratings, min events per user and per item keep a user or
item exactly at the limit and drop one below it (after the rating filter and duplicate merging), every
option of ``InteractionLog.interactions`` reaches the preprocessing, weights and times follow their own
events through every filter (duplicates: weights summed, earliest time, first log position), one bad
weight among good ones is refused, the held-out user count of a fraction is rounded to the nearest
integer, a split's user sets add up without overlap, target sizes are ``int(fraction · n)`` from the
minimum number of events up, weighted values reach the split's parts, each fraction is checked on its
own, and the temporal split breaks ties in time by log order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recvae.data import Interactions, strong_generalization, temporal_split, weak_generalization
from recvae.data.logs import LogColumnError, read_log

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _build(frame: pd.DataFrame, entry: str, **options) -> Interactions:
    """Interactions through either public entry: from_dataframe, or read_log(...).interactions()."""
    if entry == "from_dataframe":
        return Interactions.from_dataframe(frame, **options)
    weight = options.pop("weight_col", None)
    return read_log(frame, weight_col=weight).interactions(**options)


ENTRIES = ["from_dataframe", "read_log"]


def _kept(data: Interactions) -> set[tuple]:
    coo = data.matrix.tocoo()
    return set(zip(data.user_ids[coo.row].tolist(), data.item_ids[coo.col].tolist()))


# ---------------------------------------------------------------------- the rating threshold
def _rated_log() -> pd.DataFrame:
    """User 1 rates items 10..17; four further items rated 5 keep them above any user filter."""
    ratings = [1.0, 3.0, 3.49, 3.5, 3.51, 4.0, 4.5, 5.0]
    rows = [(1, 10 + i, r) for i, r in enumerate(ratings)] + [(1, 90 + i, 5.0) for i in range(4)]
    return pd.DataFrame(rows, columns=["user", "item", "rating"])


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("threshold, kept, below", [
    (3.5, {14, 15, 16, 17}, 4),  # 3.5 itself is dropped, 3.51 kept
    (4.0, {16, 17}, 6),  # 4.0 itself is dropped, 4.5 kept
    (3.49, {13, 14, 15, 16, 17}, 3),
    (None, set(range(10, 18)), 0),  # no threshold: every valid rating
])
def test_a_rating_at_the_threshold_is_dropped_and_one_above_it_kept(entry, threshold, kept, below):
    data = _build(_rated_log(), entry, rating_threshold=threshold, min_user_interactions=1)
    assert {i for _, i in _kept(data)} == kept | {90, 91, 92, 93}
    assert data.report.below_rating_threshold == below and data.report.invalid_ratings == 0
    assert data.report.events == data.nnz == len(kept) + 4


@pytest.mark.parametrize("threshold", [None, 3.5])
def test_the_ends_of_the_rating_scale_are_valid_ratings(threshold):
    ratings = [0.0, 0.49, 0.5, 1.0, 4.0, 5.0, 5.01, -1.0]
    frame = pd.DataFrame({"user": 1, "item": range(8), "rating": ratings})
    data = Interactions.from_dataframe(frame, rating_threshold=threshold, min_user_interactions=1,
                                       rating_scale=(0.5, 5.0))
    assert data.report.invalid_ratings == 4  # 0, 0.49, 5.01 and -1
    valid = {2: 0.5, 3: 1.0, 4: 4.0, 5: 5.0}
    expected = {i for i, r in valid.items() if threshold is None or r > threshold}
    assert {i for _, i in _kept(data)} == expected
    assert data.report.below_rating_threshold == len(valid) - len(expected)
    with pytest.raises(ValueError, match="negative or out of range"):
        Interactions.from_dataframe(frame, rating_threshold=threshold, min_user_interactions=1,
                                    rating_scale=(0.5, 5.0), strict=True)
    inside = frame[frame["item"].isin(list(valid))]
    assert Interactions.from_dataframe(inside, rating_threshold=threshold, min_user_interactions=1,
                                       rating_scale=(0.5, 5.0), strict=True).report.invalid_ratings == 0


def test_a_movielens_file_brings_its_rating_scale_to_the_preprocessing(tmp_path):
    """A ratings.dat holds ratings 1..5: a 0 there is out of MovieLens' scale, never a positive."""
    lines = [f"1::{item}::{rating}::{978300000 + item}" for item, rating in
             [(1, 5), (2, 0), (3, 4), (4, 0.5), (5, 3), (6, 5)]]
    (tmp_path / "ratings.dat").write_text("\n".join(lines) + "\n")
    log = read_log(tmp_path / "ratings.dat")
    data = log.interactions(rating_threshold=None, min_user_interactions=1)
    assert data.report.invalid_ratings == 1 and sorted(data.item_ids.tolist()) == [1, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="out of range"):
        log.interactions(rating_threshold=None, min_user_interactions=1, strict=True)
    assert log.interactions(min_user_interactions=1).item_ids.tolist() == [1, 3, 6]  # > 3.5 by default
    assert data.timestamps.tolist() == [978300001, 978300003, 978300004, 978300005, 978300006]


# ---------------------------------------------------------------------- min events per user and item
@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("limit", [3, 5])
def test_a_user_at_the_event_minimum_is_kept_and_one_below_dropped(entry, limit):
    rows = [("at", i, 5.0) for i in range(limit)]  # exactly the limit
    rows += [("below", i, 5.0) for i in range(limit - 1)]  # one short
    # one short after the threshold (its extra event is rated 3.5) and after merging a duplicate
    rows += [("rated", i, 5.0) for i in range(limit - 1)] + [("rated", 99, 3.5)]
    rows += [("dup", i, 4.0) for i in range(limit - 1)] + [("dup", 0, 5.0)]
    rows += [("above", i, 5.0) for i in range(limit + 1)]
    data = _build(pd.DataFrame(rows, columns=["user", "item", "rating"]), entry, min_user_interactions=limit)
    assert sorted(data.user_ids.tolist()) == ["above", "at"]
    assert data.report.dropped_users == 3 and data.report.dropped_by_user_filter == 3 * (limit - 1)
    assert data.report.below_rating_threshold == 1 and data.report.duplicates_merged == 1
    assert np.diff(data.matrix.indptr).tolist() == [limit + 1, limit]


@pytest.mark.parametrize("entry", ENTRIES)
def test_an_item_at_the_event_minimum_is_kept_and_one_below_dropped(entry):
    # item "at": 3 users; item "below": 2 users; item "x" everyone's (6 users)
    users = [f"u{i}" for i in range(6)]
    rows = [(u, "x") for u in users] + [(u, "at") for u in users[:3]] + [(u, "below") for u in users[3:5]]
    rows += [(u, f"own{u}") for u in users]  # one item per user, seen once (dropped too)
    frame = pd.DataFrame(rows, columns=["user", "item"])
    data = _build(frame, entry, min_item_interactions=3, min_user_interactions=1)
    assert sorted(data.item_ids.tolist()) == ["at", "x"]
    assert data.report.dropped_items == 1 + 6 and data.report.dropped_by_item_filter == 2 + 6
    assert data.nnz == 6 + 3
    # the user filter counts what the item filter left: u0..u2 keep 2 events, u3..u5 one
    two = _build(frame, entry, min_item_interactions=3, min_user_interactions=2)
    assert sorted(two.user_ids.tolist()) == ["u0", "u1", "u2"] and two.report.dropped_by_user_filter == 3


# ---------------------------------------------------------------------- weights, times, log order
def _weighted_log(seed: int = 0) -> pd.DataFrame:
    """A log with repeated pairs, ratings on both sides of 3.5 interleaved, times not in log order."""
    rng = np.random.default_rng(seed)
    n = 400
    frame = pd.DataFrame({
        "user": rng.integers(0, 12, n),
        "item": rng.integers(0, 15, n),
        "rating": rng.choice([1.0, 2.0, 3.0, 3.5, 4.0, 4.5, 5.0], n),
        "timestamp": rng.permutation(n) * 10 + 1000,
        "plays": rng.integers(1, 50, n).astype(float) / 4,
    })
    return frame


def _oracle(frame: pd.DataFrame, threshold: float, min_user: int):
    """Per kept (user, item): summed weight, earliest time and first log position, by a plain loop."""
    pairs: dict[tuple, list] = {}
    for position, row in enumerate(frame.itertuples(index=False)):
        if row.rating <= threshold:
            continue
        entry = pairs.setdefault((row.user, row.item), [0.0, np.inf, position])
        entry[0] += row.plays
        entry[1] = min(entry[1], row.timestamp)
    per_user: dict = {}
    for user, _ in pairs:
        per_user[user] = per_user.get(user, 0) + 1
    return {pair: v for pair, v in pairs.items() if per_user[pair[0]] >= min_user}


@pytest.mark.parametrize("entry", ENTRIES)
def test_weights_times_and_log_positions_follow_their_events_through_every_filter(entry):
    frame = _weighted_log()
    data = _build(frame, entry, weight_col="plays", min_user_interactions=8)
    expected = _oracle(frame, 3.5, 8)
    assert 0 < data.report.dropped_users < 12 and data.report.duplicates_merged > 0
    coo = data.matrix.tocoo()  # canonical CSR: coo order is matrix.data's order
    got = {}
    for k, (r, c) in enumerate(zip(coo.row, coo.col)):
        got[(data.user_ids[r], data.item_ids[c])] = [float(coo.data[k]), data.timestamps[k], data.event_order[k]]
    assert got.keys() == expected.keys()
    for pair, (weight, time, position) in expected.items():
        assert got[pair][0] == pytest.approx(weight, rel=1e-6), pair
        assert got[pair][1] == time and got[pair][2] == position, pair


@pytest.mark.parametrize("bad", [0.0, -2.0, np.nan, "lots"])
def test_one_bad_weight_among_good_ones_is_refused(bad):
    frame = _weighted_log().astype({"plays": object})
    frame.loc[7, "plays"] = bad
    with pytest.raises(ValueError, match="weight column 'plays' has 1 .*first at row 7"):
        Interactions.from_dataframe(frame, weight_col="plays")
    with pytest.raises(ValueError, match="positive"):
        read_log(frame, weight_col="plays").interactions()


def test_an_implicit_log_keeps_every_event_whatever_its_rating():
    frame = _rated_log()
    for log in (read_log(frame, implicit=True), read_log(frame, rating_col="none")):
        data = log.interactions(min_user_interactions=1)
        assert data.nnz == len(frame) and data.report.below_rating_threshold == 0
        assert set(data.matrix.data) == {1.0}
    rated = read_log(frame).interactions(min_user_interactions=1)
    assert rated.nnz == 8 and rated.report.below_rating_threshold == 4


# ---------------------------------------------------------------------- held-out users
def _rows(n_users: int, n_items: int = 12, seed: int = 0) -> Interactions:
    """Every user has 6 of 12 items, weighted, so that any user set trains every item."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n_users, n_items), np.float32)
    for u in range(n_users):
        x[u, rng.choice(n_items, 6, replace=False)] = rng.choice([0.5, 1.0, 2.0, 3.0], 6)
    x[:, 0] = 1.0
    matrix = sp.csr_matrix(x)
    return Interactions(matrix, np.arange(100, 100 + n_users), np.arange(n_items))


@pytest.mark.parametrize("n_users, heldout, expected", [
    (37, 0.1, 4),  # 3.7: the nearest count, not the truncated one
    (40, 0.12, 5),  # 4.8
    (100, 0.13, 13),  # 13.000000000000002
    (29, 0.1, 3),  # 2.9
    (11, 0.45, 5),  # 4.95: 5 + 5 held out, one user trains
    (21, 10, 10),  # a count: as given, one user trains
    (21, 10.0, 10),
])
def test_the_held_out_user_count_of_a_fraction_is_rounded_and_the_sets_add_up(n_users, heldout, expected):
    data = _rows(n_users)
    split = strong_generalization(data, heldout)
    assert split.info["n_heldout_users"] == expected
    assert split.validation.n_users == split.test.n_users == expected
    train, val, test = (set(ids.tolist()) for ids in (split.train_user_ids, split.validation.user_ids,
                                                       split.test.user_ids))
    assert len(train) == split.train.shape[0] == n_users - 2 * expected
    assert not train & val and not train & test and not val & test
    assert train | val | test == set(data.user_ids.tolist())


@pytest.mark.parametrize("n_users, heldout", [(20, 10), (21, 11), (20, 0.5), (21, 0.0), (21, 0), (21, 0.01)])
def test_a_held_out_count_that_leaves_no_training_user_or_no_held_out_user_is_refused(n_users, heldout):
    with pytest.raises(ValueError, match="cannot hold out|fraction"):
        strong_generalization(_rows(n_users), heldout)


@pytest.mark.parametrize("minimum, fraction", [(3, 0.34), (5, 0.2), (4, 0.5)])
def test_targets_start_at_the_event_minimum(minimum, fraction):
    """Held-out users with minimum - 1, minimum and more events: int(fraction · n) targets from the minimum."""
    rng = np.random.default_rng(minimum)
    sizes = [minimum - 1, minimum, minimum + 1, minimum + 3] * 10
    x = np.zeros((len(sizes), 12), np.float32)
    for u, n in enumerate(sizes):
        x[u, rng.choice(12, n, replace=False)] = 1.0
    data = Interactions(sp.csr_matrix(x), np.arange(len(sizes)), np.arange(12))
    split = strong_generalization(data, 12, target_fraction=fraction, min_events_for_target=minimum)
    seen = set()
    for held in (split.validation, split.test):
        n = np.diff((held.fold_in + held.target).indptr)
        np.testing.assert_array_equal(n, np.asarray(sizes)[held.user_ids])
        expected = [int(fraction * k) if k >= minimum else 0 for k in n]
        assert np.diff(held.target.indptr).tolist() == expected
        assert held.fold_in.multiply(held.target).nnz == 0
        seen |= set(n.tolist())
    assert {minimum - 1, minimum} <= seen  # both sides of the limit were held out


def test_weighted_rows_reach_each_held_out_users_fold_in_and_target():
    """A weighted log in shuffled order: every held-out row's fold-in + target is that user's row, weights
    included, and the weights split with their items (log order is not column order)."""
    frame = _weighted_log(1)
    data = Interactions.from_dataframe(frame, weight_col="plays", rating_threshold=None, min_user_interactions=5)
    assert len(np.unique(data.matrix.data)) > 10
    split = strong_generalization(data, 3, target_fraction=0.3)
    for held in (split.validation, split.test):
        rows = data.matrix[data.user_index(held.user_ids)][:, data.item_index(split.item_ids)]
        assert abs(held.fold_in + held.target - rows).max() == 0
        assert held.target.nnz > 0 and held.fold_in.multiply(held.target).nnz == 0


def test_a_held_out_user_left_without_events_is_dropped_and_the_ids_stay_with_their_rows():
    """The documented user order (sorted ids permuted by RandomState(seed); the last n test, the n before
    them validation) finds a validation user; all its events are on items no training user has."""
    n_users, n, seed = 20, 3, 98765
    permuted = np.random.RandomState(seed).permutation(n_users)
    validation = np.sort(permuted[n_users - 2 * n:n_users - n])
    lonely = validation[1]
    data = _rows(n_users)
    x = data.matrix.toarray()
    x[lonely] = 0.0
    x = np.hstack([x, np.zeros((n_users, 2), np.float32)])
    x[lonely, -2:] = [2.0, 3.0]  # only this user has the last two items
    data = Interactions(sp.csr_matrix(x), data.user_ids, np.arange(x.shape[1]))
    split = strong_generalization(data, n, seed=seed)
    assert split.info["validation_users_dropped_no_events"] == 1
    assert split.validation.user_ids.tolist() == (100 + validation[validation != lonely]).tolist()
    assert split.info["items_dropped_unseen_in_train"] == 2
    for held in (split.validation, split.test):
        rows = data.matrix[data.user_index(held.user_ids)][:, data.item_index(split.item_ids)]
        assert abs(held.fold_in + held.target - rows).max() == 0


# ---------------------------------------------------------------------- per-user hold-out (weak, temporal)
def _counts_data(sizes, seed=0) -> Interactions:
    rng = np.random.default_rng(seed)
    x = np.zeros((len(sizes), max(sizes) + 2), np.float32)
    for u, n in enumerate(sizes):
        x[u, rng.choice(x.shape[1], n, replace=False)] = rng.choice([0.5, 1.0, 1.5, 4.0], n)
    return Interactions(sp.csr_matrix(x), np.arange(len(sizes)), np.arange(x.shape[1]))


@pytest.mark.parametrize("val, test", [(0.1, 0.29), (0.3, 0.3), (0.15, 0.2)])
def test_weak_split_sizes_are_int_of_fraction_times_events_and_the_parts_keep_the_weights(val, test):
    sizes = [4, 5, 6, 7, 10, 13, 33, 100]
    data = _counts_data(sizes)
    split = weak_generalization(data, val, test, min_events_for_target=5)
    n_test = [int(test * n) if n >= 5 else 0 for n in sizes]  # e.g. 0.29 · 100 = 28.999...: 28
    n_val = [int(val * n) if n >= 5 else 0 for n in sizes]
    assert np.diff(split.test.target.indptr).tolist() == n_test
    assert np.diff(split.validation.target.indptr).tolist() == n_val
    parts = (split.train, split.validation.target, split.test.target)
    assert abs(sum(parts) - data.matrix).max() == 0  # the weights, each event in one part
    for a in range(3):
        for b in range(a + 1, 3):
            assert parts[a].multiply(parts[b]).nnz == 0
    assert abs(split.test.fold_in - split.train - split.validation.target).max() == 0
    assert split.info["users_without_target"] == 1


@pytest.mark.parametrize("make", [weak_generalization, temporal_split])
@pytest.mark.parametrize("val, test", [(0.1, -0.1), (0.1, 0.0), (0.1, 1.0), (-0.1, 0.1), (0.0, 0.1), (1.0, 0.1),
                                       (0.5, 0.5)])
def test_each_hold_out_fraction_is_checked_on_its_own(make, val, test):
    frame = _weighted_log()
    data = Interactions.from_dataframe(frame, min_user_interactions=1)
    with pytest.raises(ValueError, match="fraction"):
        make(data, val, test)


def test_temporal_ties_in_time_go_by_log_order():
    """All of a user's events at one time: the last in the log are the test targets, the ones before
    them the validation targets (ties in time are broken by raw-log order)."""
    log_items = [7, 2, 9, 0, 5, 3, 8, 1, 6, 4]  # log order is not item order
    frame = pd.DataFrame({"user": 1, "item": log_items, "timestamp": 500})
    frame = pd.concat([frame, pd.DataFrame({"user": 2, "item": log_items, "timestamp": np.arange(10)[::-1]})])
    data = Interactions.from_dataframe(frame, min_user_interactions=1)
    split = temporal_split(data, validation_fraction=0.1, test_fraction=0.2)
    columns = {u: data.item_ids[m.indices].tolist() for u, m in
               ((1, split.test.target[0]), (2, split.test.target[1]))}
    assert sorted(columns[1]) == [4, 6] and sorted(columns[2]) == [2, 7]  # user 2: the earliest log rows are latest
    assert data.item_ids[split.validation.target[0].indices].tolist() == [1]
    assert data.item_ids[split.validation.target[1].indices].tolist() == [9]


# ---------------------------------------------------------------------- event times named or guessed
def test_a_named_time_column_without_times_is_refused_and_a_guessed_one_ignored():
    """--timestamp-col names a column: one holding neither numbers nor dates is refused, not silently dropped;
    a column only guessed by its name ("time") is left out with a note. Dates become epoch seconds (by hand)."""
    frame = pd.DataFrame({"user": [1, 1, 2], "item": [10, 11, 10], "when": ["soon", "later", "never"]})
    with pytest.raises(LogColumnError, match="'when' holds neither numbers nor dates"):
        read_log(frame, timestamp_col="when")
    guessed = read_log(frame.rename(columns={"when": "time"}))
    assert "timestamp" not in guessed.frame.columns and guessed.columns["timestamp"] is None
    assert any("'time' is not a time" in note for note in guessed.notes)
    dated = read_log(frame.assign(when=["2020-01-01", "2020-01-02", "1970-01-01T00:01:40"]), timestamp_col="when")
    assert dated.frame["timestamp"].tolist() == [1577836800, 1577923200, 100]
