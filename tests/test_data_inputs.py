"""Small input faults of the data readers, each answered with what is wrong and what to do: a file named .zip
that is not a zip archive, a MovieLens file with ratings off the 0.5-5 scale (load_movielens and read_log
agree), and columns named on a file without a header row."""

import gzip
import logging

import pandas as pd
import pytest

from recvae.data import load_movielens, read_interactions_file, read_movielens_file
from recvae.data.logs import LogColumnError, read_log
from recvae.data.sniff import LogFileError


# ============================================================================ a .zip that is not a zip
@pytest.mark.parametrize("content", ["text", "gzip"])
def test_a_file_named_zip_that_is_not_a_zip_says_so(tmp_path, content):
    path = tmp_path / "corrupt.zip"
    text = b"user,item,rating\n1,2,4\n1,3,5\n"
    path.write_bytes(gzip.compress(text) if content == "gzip" else text)
    for read in (read_log, read_interactions_file, read_movielens_file, load_movielens):
        with pytest.raises(LogFileError) as err:
            read(path)
        message = str(err.value)
        assert "not a zip archive" in message and f"content is {content}" in message, message
        assert "download or create the archive again" in message and "separator" not in message
        assert "\n" not in message


# ============================================================================ ratings off the MovieLens scale
def _ratings_csv(tmp_path, odd: float):
    lines = ["userId,movieId,rating,timestamp"]
    for user in (1, 2, 3):
        for item in range(1, 8):
            lines.append(f"{user},{item},{odd if (user, item) == (1, 1) else 4.0},{100 + item}")
    path = tmp_path / "ratings.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("odd", [7.5, 0.25])
def test_load_movielens_drops_ratings_off_the_scale_as_read_log_does(tmp_path, caplog, odd):
    path = _ratings_csv(tmp_path, odd)
    with caplog.at_level(logging.WARNING, logger="recvae.data"):
        loaded = load_movielens(path)
    assert [r.getMessage() for r in caplog.records if "out of range on the scale 0.5-5" in r.getMessage()]
    logged = read_log(path).interactions()
    assert loaded.report.invalid_ratings == logged.report.invalid_ratings == 1
    assert loaded.matrix.nnz == logged.matrix.nnz == 20
    assert (loaded.matrix != logged.matrix).nnz == 0
    for read in (lambda: load_movielens(path, strict=True), lambda: read_log(path).interactions(strict=True)):
        with pytest.raises(ValueError, match="out of range on the scale 0.5-5"):
            read()
    # another scale, when asked for, is still the caller's word
    assert load_movielens(path, rating_scale=(0.0, 10.0), rating_threshold=3.0).report.invalid_ratings == 0


# ============================================================================ a file without a header row
def test_columns_named_on_a_headerless_file_say_it_has_no_header(tmp_path):
    csv = tmp_path / "events.csv"
    csv.write_text("1,10,4.0,881250949\n1,11,3.0,881250950\n2,10,5.0,881250951\n")
    tsv = tmp_path / "events.tsv"
    tsv.write_text("1\t1\t4\t881250949\n1\t2\t3\t881250950\n")  # the first event repeats a value: '1', '1.1'
    for path, first in ((csv, "['1', '10', '4.0', '881250949']"), (tsv, "['1', '1', '4', '881250949']")):
        for options in ({"user_col": "foo"}, {"user_col": "foo", "item_col": "bar"}, {}):
            with pytest.raises(LogColumnError) as err:
                read_log(path, **options)
            message = str(err.value)
            assert "seems to have no header row" in message and first in message, message
            assert "add a header line" in message and "--user-col" in message


def test_a_header_with_a_missing_column_is_not_called_headerless(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("customer,sku,2019\nc1,s1,1\nc2,s2,0\n")
    with pytest.raises(LogColumnError) as err:
        read_log(path, user_col="foo")
    assert "cannot find user column 'foo'" in str(err.value) and "no header" not in str(err.value)


def test_the_report_states_the_threshold_and_what_each_filter_dropped():
    from recvae.data import Interactions

    frame = pd.DataFrame({"user": [1, 1, 1, 1, 1, 2, 2, 3], "item": [1, 2, 3, 4, 5, 1, 2, 3],
                          "rating": [5, 4, 3, 5, 5, 5, 1, 2.0]})
    report = Interactions.from_dataframe(frame, rating_threshold=3.5, min_user_interactions=2).report
    assert (report.rating_threshold, report.min_user_events) == (3.5, 2)
    text = str(report)
    assert "3 (37.5%) at or below the rating threshold 3.5" in text  # 3, 1 and 2.0 of 8 events
    assert "1 (12.5%) events of 1 inactive users (fewer than 2 kept events)" in text  # user 2's one kept event
    assert report.as_dict()["rating_threshold"] == 3.5
    implicit = Interactions.from_dataframe(frame.drop(columns="rating"), min_user_interactions=1).report
    assert implicit.rating_threshold is None and "rating threshold," in str(implicit)
