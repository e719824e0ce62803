import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recvae.data import Interactions, read_interactions_file


def _log():
    # user 10: 6 good ratings (one duplicated), user 20: 4 good + 2 bad, user 30: 5 good
    rows = [(10, i, 5.0, 100 + i) for i in range(6)] + [(10, 3, 4.0, 50)]
    rows += [(20, i, 4.0, 200 + i) for i in range(4)] + [(20, 7, 3.0, 1), (20, 8, 1.0, 2)]
    rows += [(30, i + 2, 4.5, 300 + i) for i in range(5)]
    return pd.DataFrame(rows, columns=["user", "item", "rating", "timestamp"])


def test_preprocessing_counts_every_drop():
    data = Interactions.from_dataframe(_log())
    r = data.report
    assert r.raw_events == 18
    assert r.below_rating_threshold == 2  # ratings 3.0 and 1.0
    assert r.duplicates_merged == 1  # (10, 3) twice
    assert r.dropped_by_user_filter == 4  # user 20 keeps 4 < 5 events
    assert r.dropped_users == 1 and r.users == 2
    assert r.events == 11 == data.nnz
    assert list(data.user_ids) == [10, 30]
    assert list(data.item_ids) == [0, 1, 2, 3, 4, 5, 6]
    assert data.matrix.dtype == np.float32 and set(data.matrix.data) == {1.0}
    assert "duplicates merged" in str(r)


def test_duplicate_keeps_earliest_time_and_log_position():
    data = Interactions.from_dataframe(_log())
    row = data.user_index([10])[0]
    start = data.matrix.indptr[row]
    col3 = start + list(data.matrix.indices[start : data.matrix.indptr[row + 1]]).index(3)
    assert data.timestamps[col3] == 50  # the duplicate's earlier time
    assert data.event_order[col3] == 3  # first occurrence in the log


def test_item_filter_runs_before_user_filter():
    df = pd.DataFrame({"user": [1] * 5 + [2] * 5, "item": [1, 2, 3, 4, 5, 1, 2, 3, 4, 6]})
    # items 5 and 6 are rare; each user is then left with 4 events and dropped
    with pytest.raises(ValueError, match="no events left"):
        Interactions.from_dataframe(df, min_item_interactions=2, min_user_interactions=5)
    data = Interactions.from_dataframe(df, min_item_interactions=2, min_user_interactions=4)
    assert data.report.dropped_by_item_filter == 2 and data.shape == (2, 4)


def test_implicit_log_without_rating_column_keeps_everything():
    df = pd.DataFrame({"u": ["a"] * 5, "i": list("vwxyz")})
    data = Interactions.from_dataframe(df, user_col="u", item_col="i")
    assert data.shape == (1, 5) and data.report.below_rating_threshold == 0
    np.testing.assert_array_equal(data.item_index(["z", "v"]), [4, 0])
    with pytest.raises(KeyError, match="unknown item id"):
        data.item_index(["nope"])


@pytest.mark.parametrize(
    "df, kwargs, match",
    [
        (pd.DataFrame({"user": [1], "movie": [2]}), {}, r"missing column\(s\) \['item'\]"),
        (pd.DataFrame({"user": [1.0, np.nan], "item": [2, 3]}), {}, "'user' has 1 missing"),
        (pd.DataFrame({"user": [1, 1], "item": [2, 3], "rating": [np.nan, 4]}), {}, "'rating' has 1 missing"),
        (pd.DataFrame({"user": [], "item": []}), {}, "empty"),
        (pd.DataFrame({"user": [1], "item": [2], "rating": ["good"]}), {}, "not numeric"),
    ],
)
def test_bad_logs_raise_clear_errors(df, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Interactions.from_dataframe(df, **kwargs)


def test_from_csr_binarises_and_checks_type():
    m = sp.csr_matrix(np.array([[0, 2.0, 0], [3.0, 0, 0]]))
    data = Interactions.from_csr(m)
    assert data.nnz == 2 and set(data.matrix.data) == {1.0}
    with pytest.raises(TypeError, match="scipy.sparse"):
        Interactions.from_csr(np.eye(3))


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t"), (".csv.gz", ","), (".parquet", None)])
def test_read_interactions_file_formats(tmp_path, suffix, sep):
    df = _log()
    path = tmp_path / f"log{suffix}"
    if suffix == ".parquet":
        df.to_parquet(path)
    else:
        df.to_csv(path, sep=sep, index=False)
    back = read_interactions_file(path)
    pd.testing.assert_frame_equal(back.reset_index(drop=True), df, check_dtype=False)
    data = Interactions.from_dataframe(read_interactions_file(path))
    assert data.nnz == 11


def test_read_interactions_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_interactions_file(tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_interactions_file(tmp_path / "empty.csv")
    (tmp_path / "nosep.csv").write_text("userid\n1\n")
    with pytest.raises(ValueError, match="separator"):
        read_interactions_file(tmp_path / "nosep.csv")
