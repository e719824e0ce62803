"""MovieLens readers, registry and the verified downloader. Nothing here touches the network."""

from __future__ import annotations

import gzip
import hashlib
import logging
import socket
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recvae.data.movielens import (
    MOVIELENS,
    ChecksumMismatchError,
    DatasetUnavailableError,
    MovieLensSpec,
    download_movielens,
    read_dat,
    read_ml100k,
    read_movielens,
    read_ratings_csv,
)

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"

ROWS = [  # deliberately unsorted: readers must keep the file's row order
    (196, 242, 3.0, 881250949),
    (186, 302, 3.5, 891717742),
    (22, 377, 1.0, 878887116),
    (196, 51, 2.5, 880606923),
]


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a socket fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _fmt(r: float) -> str:
    return str(int(r)) if float(r).is_integer() else str(r)


def write(path: Path, text: str, gz: bool = False) -> Path:
    data = text.encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def ml100k_text(rows=ROWS) -> str:
    return "".join(f"{u}\t{i}\t{_fmt(r)}\t{t}\n" for u, i, r, t in rows)


def dat_text(rows=ROWS) -> str:
    return "".join(f"{u}::{i}::{_fmt(r)}::{t}\n" for u, i, r, t in rows)


def csv_text(rows=ROWS, eol: str = "\n") -> str:
    return "userId,movieId,rating,timestamp" + eol + "".join(f"{u},{i},{r},{t}{eol}" for u, i, r, t in rows)


def check_frame(df: pd.DataFrame, rows=ROWS, *, ratings: bool = True) -> None:
    cols = ["user", "item", "rating", "timestamp"] if ratings else ["user", "item"]
    assert list(df.columns) == cols
    assert isinstance(df.index, pd.RangeIndex) and df.index[0] == 0 and len(df) == len(rows)
    assert df["user"].dtype == np.int64 and df["item"].dtype == np.int64
    np.testing.assert_array_equal(df["user"], [r[0] for r in rows])
    np.testing.assert_array_equal(df["item"], [r[1] for r in rows])
    if ratings:
        assert df["rating"].dtype == np.float32 and df["timestamp"].dtype == np.int64
        np.testing.assert_array_equal(df["rating"], np.array([r[2] for r in rows], dtype=np.float32))
        np.testing.assert_array_equal(df["timestamp"], [r[3] for r in rows])


# --------------------------------------------------------------------------- readers, good input


@pytest.mark.parametrize("gz", [False, True])
def test_read_ml100k(tmp_path: Path, gz: bool) -> None:
    path = write(tmp_path / ("u.data.gz" if gz else "u.data"), ml100k_text(), gz)
    check_frame(read_ml100k(path))


@pytest.mark.parametrize("gz", [False, True])
def test_read_dat(tmp_path: Path, gz: bool) -> None:
    path = write(tmp_path / ("ratings.dat.gz" if gz else "ratings.dat"), dat_text(), gz)
    check_frame(read_dat(str(path)))


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_read_ratings_csv(tmp_path: Path, gz: bool, eol: str) -> None:
    path = write(tmp_path / ("ratings.csv.gz" if gz else "ratings.csv"), csv_text(eol=eol), gz)
    check_frame(read_ratings_csv(path))


@pytest.mark.parametrize("gz", [False, True])
def test_read_ratings_csv_implicit_pairs(tmp_path: Path, gz: bool) -> None:
    text = "userId,movieId\r\n" + "".join(f"{u},{i}\r\n" for u, i, _, _ in ROWS)
    path = write(tmp_path / "ratings.csv", text, gz)
    check_frame(read_ratings_csv(path), ratings=False)


def test_gzip_detected_by_magic_bytes_without_suffix(tmp_path: Path) -> None:
    check_frame(read_dat(write(tmp_path / "ratings.dat", dat_text(), gz=True)))
    check_frame(read_ml100k(write(tmp_path / "u.data", ml100k_text(), gz=True)))


def test_gz_suffix_on_plain_file_is_read_as_text(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        check_frame(read_ml100k(write(tmp_path / "u.data.gz", ml100k_text())))
    assert "not gzip-compressed" in caplog.text


def test_half_star_ratings_and_crlf_dat(tmp_path: Path) -> None:
    rows = [(1, 122, 5.0, 838985046), (1, 185, 4.5, 838983525), (2, 1, 0.5, 1)]
    text = "".join(f"{u}::{i}::{r}::{t}\r\n" for u, i, r, t in rows)
    check_frame(read_dat(write(tmp_path / "ratings.dat", text)), rows)


def test_trailing_blank_lines_tolerated(tmp_path: Path) -> None:
    check_frame(read_ml100k(write(tmp_path / "u.data", ml100k_text() + "\n\n")))
    check_frame(read_ratings_csv(write(tmp_path / "r.csv", csv_text(eol="\r\n") + "\r\n")))


def test_csv_extra_columns_ignored_and_partial_header(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = "userId,movieId,tag,timestamp\n1,2,funny,10\n3,4,dark,20\n"
    with caplog.at_level(logging.WARNING):
        df = read_ratings_csv(write(tmp_path / "tags.csv", text))
    assert "ignoring column(s) ['tag']" in caplog.text
    assert list(df.columns) == ["user", "item", "timestamp"]
    np.testing.assert_array_equal(df["timestamp"], [10, 20])
    # columns may come in any order
    df = read_ratings_csv(write(tmp_path / "r.csv", "rating,movieId,userId\n4.5,10,7\n"))
    assert df.to_dict("records") == [{"user": 7, "item": 10, "rating": 4.5}]


def test_row_order_kept_on_a_larger_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 5000
    rows = list(zip(rng.integers(1, 500, n), rng.integers(1, 900, n), rng.integers(1, 11, n) / 2, rng.integers(0, 2**31, n)))
    check_frame(read_dat(write(tmp_path / "ratings.dat", dat_text(rows))), rows)
    check_frame(read_ratings_csv(write(tmp_path / "ratings.csv", csv_text(rows))), rows)


# --------------------------------------------------------------------------- readers, bad input


@pytest.mark.parametrize("reader", [read_ml100k, read_dat, read_ratings_csv])
def test_missing_file(tmp_path: Path, reader) -> None:
    path = tmp_path / "nope" / "ratings.dat"
    with pytest.raises(FileNotFoundError, match=r"not found: .*nope.*load_movielens\(name, download=True\)"):
        reader(path)


@pytest.mark.parametrize("reader", [read_ml100k, read_dat, read_ratings_csv])
@pytest.mark.parametrize("content", [b"", gzip.compress(b""), b"\n\n", gzip.compress(b"  \r\n")])
def test_empty_file(tmp_path: Path, reader, content: bytes) -> None:
    path = tmp_path / "ratings"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"ratings is empty"):
        reader(path)


def test_csv_header_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"has a header but no data rows"):
        read_ratings_csv(write(tmp_path / "r.csv", "userId,movieId,rating,timestamp\r\n"))


def test_wrong_separator(tmp_path: Path) -> None:
    csv = write(tmp_path / "ratings.csv", csv_text())
    with pytest.raises(ValueError, match=r"expected 4 tab-separated columns .* got 1.*is this a ratings\.csv.*use read_ratings_csv"):
        read_ml100k(csv)
    with pytest.raises(ValueError, match=r"ratings\.csv: expected 4 '::'-separated columns .* got 1.*use read_ratings_csv"):
        read_dat(csv)
    dat = write(tmp_path / "ratings.dat", dat_text())
    with pytest.raises(ValueError, match=r"tab-separated .* got 1.*is this a ratings\.dat.*use read_dat"):
        read_ml100k(dat)
    with pytest.raises(ValueError, match=r"comma-separated header .* got 1 column.*use read_dat"):
        read_ratings_csv(dat)
    udata = write(tmp_path / "u.data", ml100k_text())
    with pytest.raises(ValueError, match=r"'::'-separated .* got 1.*is this a u\.data.*use read_ml100k"):
        read_dat(udata)
    with pytest.raises(ValueError, match=r"got 1 column.*use read_ml100k"):
        read_ratings_csv(udata)


def test_dat_with_single_colons_rejected(tmp_path: Path) -> None:
    # a lone ':' in a later line would shift the columns if only columns 0,2,4,6 were read
    path = write(tmp_path / "ratings.dat", "1::2::3::4\n5:6::7::8\n")
    with pytest.raises(ValueError, match=r"1 row \(first at line 2: '5:6::7::8'\) not in the expected layout"):
        read_dat(path)


def test_too_many_fields(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"u\.data: malformed line .*line 3"):
        read_ml100k(write(tmp_path / "u.data", ml100k_text(ROWS[:2]) + "1\t2\t3\t4\t5\n"))
    with pytest.raises(ValueError, match=r"ratings\.dat: malformed line"):
        read_dat(write(tmp_path / "ratings.dat", "1::2::3::4\n1::2::3::4::5\n"))
    with pytest.raises(ValueError, match=r"r\.csv: malformed line"):
        read_ratings_csv(write(tmp_path / "r.csv", "userId,movieId\n1,2\n1,2,3\n"))
    with pytest.raises(ValueError, match=r"expected 4 tab-separated columns .* got 5"):
        read_ml100k(write(tmp_path / "u5.data", "1\t2\t3\t4\t5\n"))


def test_missing_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing column\(s\) movieId in the header \['userId', 'rating', 'timestamp'\]"):
        read_ratings_csv(write(tmp_path / "r.csv", "userId,rating,timestamp\n1,4.0,5\n"))
    with pytest.raises(ValueError, match=r"missing column\(s\) userId, movieId"):
        read_ratings_csv(write(tmp_path / "r.csv", "user_id,item_id,rating\n1,2,4.0\n"))
    with pytest.raises(ValueError, match=r"line 1 '1,2,4.0,5' is data, not a header.*add the header line"):
        read_ratings_csv(write(tmp_path / "r.csv", "1,2,4.0,5\n"))
    with pytest.raises(ValueError, match=r"movieId appear more than once"):
        read_ratings_csv(write(tmp_path / "r.csv", "userId,movieId,movieId\n1,2,3\n"))


def test_non_numeric_and_missing_values(tmp_path: Path) -> None:
    text = ml100k_text(ROWS[:2]) + "x\t5\t3\t4\n" + "7\t\t3\t4\n" + "8\t9\t3\t4\n" + "9\t9\tgood\t4\n" + "y\t9\t3\t4\n"
    with pytest.raises(ValueError, match=(
        r"u\.data: 2 rows \(first at line 3: 'x\\t5\\t3\\t4'\) with a missing or non-integer user id; "
        r"1 row \(first at line 4: .*\) with a missing or non-integer item id; "
        r"1 row \(first at line 6: .*\) with a missing or non-numeric rating; .*fix or remove those lines"
    )):
        read_ml100k(write(tmp_path / "u.data", text))
    with pytest.raises(ValueError, match=r"1 row \(first at line 3: '1::2::NaN::4'\) with a missing or non-numeric rating"):
        read_dat(write(tmp_path / "ratings.dat", dat_text(ROWS[:2]) + "1::2::NaN::4\n"))
    with pytest.raises(ValueError, match=r"1 row \(first at line 2: '1.5,2'\) with a missing or non-integer user id"):
        read_ratings_csv(write(tmp_path / "r.csv", "userId,movieId\r\n1.5,2\r\n3,4\r\n"))
    with pytest.raises(ValueError, match=r"1 row \(first at line 3: '3,4,5,'\) with a missing or non-integer timestamp"):
        read_ratings_csv(write(tmp_path / "r.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n3,4,5,\n", gz=True))
    # a blank line in the middle is a bad row with its true line number
    with pytest.raises(ValueError, match=r"first at line 3: ''\) with a missing or non-integer user id"):
        read_ml100k(write(tmp_path / "u2.data", ml100k_text(ROWS[:2]) + "\n" + ml100k_text(ROWS[2:])))


def test_corrupt_gzip(tmp_path: Path) -> None:
    data = gzip.compress(dat_text().encode() * 50)
    path = tmp_path / "ratings.dat.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"ratings\.dat\.gz is not a valid gzip file"):
        read_dat(path)


# --------------------------------------------------------------------------- registry


def test_registry() -> None:
    assert set(MOVIELENS) == {"ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-latest-small", "ml-latest"}
    for name, spec in MOVIELENS.items():
        assert spec.name == name
        assert spec.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
        assert spec.zip_name == f"{name}.zip"
        assert spec.md5 is None or len(spec.md5) == 32
    assert MOVIELENS["ml-10m"].member == "ml-10M100K/ratings.dat"
    assert MOVIELENS["ml-100k"].reader is read_ml100k and MOVIELENS["ml-100k"].member == "ml-100k/u.data"
    assert MOVIELENS["ml-1m"].reader is read_dat and MOVIELENS["ml-25m"].reader is read_ratings_csv
    assert MOVIELENS["ml-20m"].md5 == "cd245b17a1ae2cc31bb14903e1204af3"
    with pytest.raises(TypeError):
        MOVIELENS["x"] = MOVIELENS["ml-1m"]  # type: ignore[index]


# --------------------------------------------------------------------------- download


def make_zip(tmp_path: Path, member: str = "ml-100k/u.data", text: str | None = None) -> tuple[Path, str, str]:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    zpath = src / "ml-100k.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("ml-100k/README", "readme")
        zf.writestr(member, ml100k_text() if text is None else text)
    data = zpath.read_bytes()
    return zpath, hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()


def test_download_extracts_and_caches(tmp_path: Path) -> None:
    zpath, sha, _ = make_zip(tmp_path)
    data_dir = tmp_path / "data"
    out = download_movielens("ml-100k", data_dir, url=zpath.as_uri(), sha256=sha)
    assert out == data_dir / "ml-100k" / "u.data"
    check_frame(read_ml100k(out))
    assert (data_dir / "ml-100k.zip").read_bytes() == zpath.read_bytes()
    assert not list(data_dir.rglob("*.part"))
    # second call: nothing downloaded (the source is gone)
    zpath.unlink()
    assert download_movielens("ml-100k", data_dir, url=zpath.as_uri(), sha256=sha) == out
    # ratings file gone but zip cached: verified and re-extracted without downloading
    out.unlink()
    assert download_movielens("ml-100k", data_dir, url=zpath.as_uri(), sha256=sha) == out
    check_frame(read_ml100k(out))
    # a cached zip that does not match is refused
    out.unlink()
    with pytest.raises(ChecksumMismatchError, match=r"cached archive .*ml-100k\.zip.*force=True"):
        download_movielens("ml-100k", data_dir, url=zpath.as_uri(), sha256="0" * 64)


def test_download_force_redownloads(tmp_path: Path) -> None:
    zpath, sha, _ = make_zip(tmp_path)
    data_dir = tmp_path / "data"
    out = download_movielens("ml-100k", data_dir, url=zpath.as_uri(), sha256=sha)
    zpath, sha, md5 = make_zip(tmp_path, text=ml100k_text(ROWS[::-1]))
    assert download_movielens("ml-100k", data_dir, url=zpath.as_uri(), md5=md5, force=True) == out
    check_frame(read_ml100k(out), ROWS[::-1])


def test_download_checksum_mismatch_leaves_nothing(tmp_path: Path) -> None:
    zpath, sha, md5 = make_zip(tmp_path)
    data_dir = tmp_path / "data"
    with pytest.raises(ChecksumMismatchError, match=rf"sha256 expected {'0' * 64}, got {sha}.*deleted"):
        download_movielens("ml-100k", data_dir, url=zpath.as_uri(), sha256="0" * 64)
    assert list(data_dir.iterdir()) == []
    # the registry's official md5 applies to a mirror URL too: our zip is not the official one
    with pytest.raises(ChecksumMismatchError, match=rf"md5 expected 0e33842e24a9c977be4e0107933c0723, got {md5}"):
        download_movielens("ml-100k", data_dir, url=zpath.as_uri())
    assert list(data_dir.iterdir()) == []


def test_download_unreachable(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetUnavailableError) as info:
        download_movielens("ml-1m", data_dir, url="file:///nonexistent/x.zip")
    msg = str(info.value)
    assert "file:///nonexistent/x.zip" in msg
    assert str(data_dir / "ml-1m" / "ratings.dat") in msg
    assert "https://files.grouplens.org/datasets/movielens/ml-1m.zip" in msg
    assert str(data_dir / "ml-1m.zip") in msg and "by hand" in msg
    assert isinstance(info.value, RuntimeError)
    assert not list(data_dir.rglob("*"))


def custom_spec(url: str, **kwargs: object) -> MovieLensSpec:
    return MovieLensSpec(
        name="ml-test", url=url, zip_name="ml-test.zip", member="ml-100k/u.data", reader=read_ml100k, **kwargs
    )


def test_download_uses_published_md5_sidecar(tmp_path: Path) -> None:
    zpath, _, md5 = make_zip(tmp_path)
    zpath.with_name(zpath.name + ".md5").write_text(f"MD5 (ml-100k.zip) = {md5}\n")
    out = download_movielens(custom_spec(zpath.as_uri()), tmp_path / "a")
    check_frame(read_ml100k(out))
    zpath.with_name(zpath.name + ".md5").write_text(f"MD5 (ml-100k.zip) = {'f' * 32}\n")
    with pytest.raises(ChecksumMismatchError, match=r"md5 expected f{32}"):
        download_movielens(custom_spec(zpath.as_uri()), tmp_path / "b")


def test_download_without_any_checksum_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    zpath, _, _ = make_zip(tmp_path)
    with caplog.at_level(logging.WARNING):
        out = download_movielens(custom_spec(zpath.as_uri()), tmp_path / "data")
    assert "NOT be verified" in caplog.text
    check_frame(read_ml100k(out))


def test_download_member_missing_or_not_a_zip(tmp_path: Path) -> None:
    zpath, sha, _ = make_zip(tmp_path, member="other/file.txt")
    with pytest.raises(ValueError, match=r"has no member 'ml-100k/u\.data'.*other/file\.txt"):
        download_movielens("ml-100k", tmp_path / "data", url=zpath.as_uri(), sha256=sha)
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"not a valid zip archive"):
        download_movielens(custom_spec(bad.as_uri(), sha256=hashlib.sha256(b"not a zip").hexdigest()), tmp_path / "d2")


def test_read_movielens_layouts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown MovieLens dataset 'ml-2m'; known: ml-100k, ml-1m, ml-10m"):
        read_movielens("ml-2m", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'ml-10m' not found under .*ml-10M100K.*download=True"):
        read_movielens("ml-10m", tmp_path, download=False)
    (tmp_path / "ml-10M100K").mkdir()
    write(tmp_path / "ml-10M100K" / "ratings.dat", dat_text())
    check_frame(read_movielens("ml-10m", tmp_path, download=False))
    (tmp_path / "ml-1m").mkdir()
    write(tmp_path / "ml-1m" / "ratings.dat.gz", dat_text(ROWS[:2]), gz=True)
    check_frame(read_movielens("ML-1M", tmp_path, download=False), ROWS[:2])
    (tmp_path / "ml-latest-small").mkdir()
    write(tmp_path / "ml-latest-small" / "ratings.csv", csv_text(eol="\r\n"))
    check_frame(read_movielens("ml-latest-small", tmp_path))  # present: no download attempted


def test_read_movielens_downloads_when_missing(tmp_path: Path) -> None:
    zpath, sha, _ = make_zip(tmp_path)
    spec = custom_spec(zpath.as_uri(), sha256=sha)
    check_frame(read_movielens(spec, tmp_path / "data"))
    assert (tmp_path / "data" / "ml-100k" / "u.data").is_file()
    with pytest.raises(DatasetUnavailableError, match=r"could not download"):
        read_movielens(custom_spec("file:///nonexistent/x.zip"), tmp_path / "data2")


# --------------------------------------------------------------------------- real files (skip when absent)


def shared(relative: str) -> Path:
    path = DATASETS / relative
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    return path


def counts(df: pd.DataFrame) -> tuple[int, int, int]:
    return len(df), df["user"].nunique(), df["item"].nunique()


def test_real_ml100k() -> None:
    path = shared("ml-100k/u.data")
    df = read_ml100k(path)
    assert counts(df) == (100_000, 943, 1_682)
    assert df["rating"].value_counts().sort_index().tolist() == [6110, 11370, 27145, 34174, 21201]
    first = path.read_text().splitlines()[0].split("\t")
    assert df.iloc[0].tolist() == [int(first[0]), int(first[1]), float(first[2]), int(first[3])]


def test_real_ml_latest_small_crlf() -> None:
    path = shared("ml-latest-small/ratings.csv")
    assert path.read_bytes()[:40].count(b"\r\n") >= 1
    df = read_ratings_csv(path)
    assert counts(df) == (100_836, 610, 9_724)
    assert list(df.columns) == ["user", "item", "rating", "timestamp"]
    assert df["rating"].value_counts().sort_index().tolist() == [
        1370, 2811, 1791, 7551, 5550, 20047, 13136, 26818, 8551, 13211
    ]
    stamps = pd.to_datetime(df["timestamp"], unit="s")
    assert (str(stamps.min().date()), str(stamps.max().date())) == ("1996-03-29", "2018-09-24")


def test_real_ml1m_half_matches_a_naive_parse() -> None:
    path = shared("ml-1m-half/ratings.dat.gz")
    df = read_dat(path)
    assert counts(df) == (487_650, 2_999, 3_615)
    assert df["rating"].value_counts().sort_index().tolist() == [27472, 53838, 127216, 170579, 108545]
    # the fast ':' tokeniser against a plain split on '::', row by row
    with gzip.open(path, "rt") as fh:
        naive = np.array([line.rstrip("\n").split("::") for line in fh], dtype=np.int64)
    np.testing.assert_array_equal(df["user"], naive[:, 0])
    np.testing.assert_array_equal(df["item"], naive[:, 1])
    np.testing.assert_array_equal(df["rating"], naive[:, 2].astype(np.float32))
    np.testing.assert_array_equal(df["timestamp"], naive[:, 3])


def test_real_ml1m_implicit() -> None:
    df = read_ratings_csv(shared("ml-1m-implicit/ratings.csv.gz"))
    assert list(df.columns) == ["user", "item"]
    assert counts(df) == (1_000_209, 6_040, 3_706)
    assert not df.duplicated().any()
    half = DATASETS / "ml-1m-half" / "ratings.dat.gz"
    if half.is_file():  # README: its first 487,650 rows are ml-1m-half's (user, movie) columns
        h = read_dat(half)
        pd.testing.assert_frame_equal(df.iloc[: len(h)], h[["user", "item"]])


# --------------------------------------------------------------------------- synthetic twins of the real-file checks


def _naive(text: str, sep: str, header: bool) -> np.ndarray:
    """A plain split of every line: the reference the readers must agree with, row by row."""
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line]
    return np.array([line.split(sep) for line in lines[1 if header else 0:]], dtype=np.float64)


@pytest.mark.parametrize("layout", ["ml-100k", "ml-latest-small", "ml-1m-half", "ml-1m-implicit"])
def test_real_file_layouts_on_synthetic_files(tmp_path: Path, layout: str) -> None:
    """The real-file checks above skip without ../shared/datasets; these run the same checks on
    generated files of each layout (separator, header, CRLF, gzip, half stars, implicit pairs)."""
    rng = np.random.default_rng(7)
    n = 3000
    rows = list(zip(rng.integers(1, 300, n), rng.integers(1, 900, n), rng.integers(1, 11, n) / 2,
                    rng.integers(800_000_000, 1_500_000_000, n)))
    if layout == "ml-100k":
        rows = [(u, i, float(np.ceil(r)), t) for u, i, r, t in rows]  # whole stars only
        text, reader, sep, header, gz = ml100k_text(rows), read_ml100k, "\t", False, False
    elif layout == "ml-latest-small":
        text, reader, sep, header, gz = csv_text(rows, eol="\r\n"), read_ratings_csv, ",", True, False
    elif layout == "ml-1m-half":
        text, reader, sep, header, gz = dat_text(rows), read_dat, "::", False, True
    else:
        pairs = list(dict.fromkeys((u, i) for u, i, _, _ in rows))  # implicit: distinct (user, item) pairs
        text = "userId,movieId\r\n" + "".join(f"{u},{i}\r\n" for u, i in pairs)
        reader, sep, header, gz = read_ratings_csv, ",", True, True
    path = write(tmp_path / ("ratings.gz" if gz else "ratings.txt"), text, gz)
    df = reader(path)
    naive = _naive(text, sep, header)
    assert len(df) == len(naive)
    np.testing.assert_array_equal(df["user"], naive[:, 0])
    np.testing.assert_array_equal(df["item"], naive[:, 1])
    if layout == "ml-1m-implicit":
        assert list(df.columns) == ["user", "item"] and not df.duplicated().any()
        return
    np.testing.assert_array_equal(df["rating"], naive[:, 2].astype(np.float32))
    np.testing.assert_array_equal(df["timestamp"], naive[:, 3].astype(np.int64))
    expected = pd.Series(naive[:, 2]).value_counts().sort_index()
    assert df["rating"].value_counts().sort_index().tolist() == expected.tolist()
    assert counts(df) == (n, len(set(naive[:, 0])), len(set(naive[:, 1])))
