"""The C tokenizer + hasher against pure-Python references, on small hand-written inputs."""

from __future__ import annotations

import datetime
import math
import struct
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfusion import _parse
from streamfusion.data import (
    Encoder,
    ParseError,
    avazu_schema,
    criteo_schema,
    libsvm_schema,
    open_source,
    read_all,
)
from streamfusion.data.encoder import PAD_FIELD
from streamfusion.data.readers import log_schema
from streamfusion.data.schema import AVAZU_COLUMNS, AVAZU_INT_COLUMNS, DENSE_AUTO_MAX

M64 = (1 << 64) - 1


# ----------------------------------------------------------------- pure-Python references
def murmur64(data: bytes, seed: int) -> int:
    m, r = 0xC6A4A7935BD1E995, 47
    h = (seed ^ (len(data) * m)) & M64
    n8 = len(data) // 8 * 8
    for i in range(0, n8, 8):
        k = int.from_bytes(data[i:i + 8], "little")
        k = (k * m) & M64
        k ^= k >> r
        k = (k * m) & M64
        h ^= k
        h = (h * m) & M64
    tail = data[n8:]
    if tail:
        h ^= int.from_bytes(tail, "little")
        h = (h * m) & M64
    h ^= h >> r
    h = (h * m) & M64
    h ^= h >> r
    return h


def mix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def salt(seed: int, field: int) -> int:
    return mix64(mix64(seed) ^ ((field + 1) & M64))


def row(field: int, value: bytes, bits: int, seed: int) -> int:
    return murmur64(value, salt(seed, field)) >> (64 - bits)


def slog(x: float) -> float:
    return math.log1p(x) if x >= 0 else -math.log1p(-x)


# ----------------------------------------------------------------- twins
@given(st.binary(max_size=40), st.integers(0, 2**30), st.integers(1, 31),
       st.integers(0, 2**64 - 1))
def test_hash_twin_matches_reference(value, field, bits, seed):
    assert _parse.field_salt(field, seed) == salt(seed, field)
    assert _parse.hash64(value, 12345) == murmur64(value, 12345)
    assert _parse.hash_value(field, value, bits, seed) == row(field, value, bits, seed)


def test_hash_depends_on_field_seed_and_value():
    base = _parse.hash_value(3, b"a99f214a", 20, 0)
    assert base != _parse.hash_value(4, b"a99f214a", 20, 0)
    assert base != _parse.hash_value(3, b"a99f214a", 20, 1)
    assert base != _parse.hash_value(3, b"a99f214b", 20, 0)
    assert 0 <= base < 2**20
    with pytest.raises(ValueError):
        _parse.hash_value(0, b"x", 32, 0)


@given(st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_parse_number_round_trips_floats(x):
    for text in (repr(x), f"{x:.6e}", f"{x:f}"):
        got = _parse.parse_number(text.encode())
        assert got is not None
        assert got == pytest.approx(float(text), rel=1e-12, abs=0)


@pytest.mark.parametrize("text", [b"", b"-", b"+", b".", b"1e", b"1.2.3", b"12a", b" 1",
                                  b"nan", b"inf", b"0x10", b"1,5", b"1e999"])
def test_parse_number_rejects(text):
    assert _parse.parse_number(text) is None


@pytest.mark.parametrize("text,value", [(b"260.0", 260.0), (b"-1", -1.0), (b"+3", 3.0),
                                        (b".5", 0.5), (b"5.", 5.0), (b"1E3", 1000.0),
                                        (b"-2.5e-3", -0.0025), (b"007", 7.0)])
def test_parse_number_accepts(text, value):
    assert _parse.parse_number(text) == value


@given(st.dates(datetime.date(2000, 1, 1), datetime.date(2099, 12, 31)), st.integers(0, 23))
def test_parse_hour_matches_datetime(day, hour):
    text = f"{day:%y%m%d}{hour:02d}".encode()
    assert _parse.parse_hour(text) == (int(text), hour, day.weekday())


@pytest.mark.parametrize("text", [b"1410210", b"141021000", b"14132100", b"14100000",
                                  b"14103224", b"14022900", b"1410210a", b"14113100"])
def test_parse_hour_rejects(text):
    assert _parse.parse_hour(text) is None


@given(st.binary(max_size=12))
def test_utf8_twin_matches_python(data):
    try:
        data.decode("utf-8")
        ok = True
    except UnicodeDecodeError:
        ok = False
    assert _parse.utf8_valid(data) == ok


# ----------------------------------------------------------------- hand-written files
AVAZU_ROWS = [
    # id, click, hour, C1, banner_pos, site_id ... (24 columns)
    "1,0,14102100,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,a99f214a,"
    "ddd2926e,44956a24,1,2,15706,320,50,1722,0,35,-1,79",
    "2,1,14102513,1002,1,1fbe01fe,f3845767,,ecad2386,7801e8d9,07d7df22,a99f214a,"
    "96809ac8,711ee120,1,0,15704,320,50,1722,0,35,100084,79",
]


def write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def avazu_expected(rows, bits=20, seed=0):
    """Indices / values / dense of Avazu rows computed in Python from the documented rules."""
    schema = avazu_schema()
    counts: dict[tuple[int, str], int] = {}
    ind, val, dense, ys, times = [], [], [], [], []
    for seen, line in enumerate(rows, 1):
        cells = dict(zip(AVAZU_COLUMNS, line.split(","), strict=True))
        hour = cells["hour"]
        d = datetime.date(2000 + int(hour[:2]), int(hour[2:4]), int(hour[4:6]))
        r_i, r_d = [], []
        for f, name in enumerate(schema.field_names):
            if name == "hour_of_day":
                v, x = hour[6:], float(int(hour[6:]))
            elif name == "weekday":
                v, x = str(d.weekday()), float(d.weekday())
            else:
                v = cells[name]
                if name in AVAZU_INT_COLUMNS:
                    x = float(v) if v else 0.0
                else:
                    counts[(f, v)] = counts.get((f, v), 0) + 1
                    x = float(np.float32(counts[(f, v)] * (1e6 / seen)))  # per million rows
            r_i.append(row(f, v.encode(), bits, seed))
            r_d.append(x)
        ind.append(r_i)
        val.append([1.0] * len(r_i))
        dense.append(r_d)
        ys.append(float(cells["click"]))
        times.append(int(hour))
    return np.array(ind), np.array(val), np.array(dense), np.array(ys), np.array(times)


def test_avazu_rows_match_python_reference(tmp_path):
    rows = AVAZU_ROWS + [AVAZU_ROWS[0].replace("1,0,14102100", "3,0,14102101")]
    p = write(tmp_path, "train.csv", ",".join(AVAZU_COLUMNS) + "\n" + "\n".join(rows) + "\n")
    b = read_all(p, bits=18, seed=7)
    ind, val, dense, ys, times = avazu_expected(rows, bits=18, seed=7)
    np.testing.assert_array_equal(b.indices, ind)
    np.testing.assert_array_equal(b.values, val)
    np.testing.assert_array_equal(b.dense, dense.astype(np.float32))
    np.testing.assert_array_equal(b.y, ys)
    np.testing.assert_array_equal(b.time, times)
    np.testing.assert_array_equal(b.line, [2, 3, 4])
    names = avazu_schema().dense_names
    assert b.dense[1, names.index("hour_of_day")] == 13
    assert b.dense[1, names.index("weekday")] == 5  # 2014-10-25 was a Saturday
    assert b.dense[2, names.index("site_id")] == 1e6  # 1fbe01fe: 3 sightings in 3 rows
    assert b.dense[1, names.index("device_ip")] == np.float32(1e6 / 2)  # 1 sighting in 2 rows


def test_avazu_missing_categorical_is_its_own_token(tmp_path):
    p = write(tmp_path, "a.csv", "\n".join(AVAZU_ROWS) + "\n")  # headerless variant
    b = read_all(p)
    f = avazu_schema().field_names.index("site_category")
    assert b.indices[1, f] == _parse.hash_value(f, b"", 20, 0)
    assert b.values[1, f] == 1.0
    assert b.indices[0, f] != b.indices[1, f]


CRITEO_ROW = "1\t1\t\t-3\t0.5\t1382" + "\t" * 8 + "\t68fd1e64" + "\t" + "\t".join(
    f"{i:08x}" for i in range(25))


def test_criteo_tsv_row_matches_rules(tmp_path):
    line = CRITEO_ROW
    assert line.count("\t") == 39
    p = write(tmp_path, "train.txt", line + "\n" + line + "\n")
    b = read_all(p, seed=3)
    # learner: each number's value and its bin, then the categoricals; trees: 13 + 26
    assert b.indices.shape == (2, 52) and b.dense.shape == (2, 39)
    cells = line.split("\t")
    for j in range(13):
        raw = cells[1 + j]
        f = 2 * j
        assert b.indices[0, f] == _parse.hash_value(f, b"", 20, 3)  # numeric: the field alone
        want = slog(float(raw)) if raw else 0.0
        assert b.values[0, f] == pytest.approx(want, rel=1e-6)
        bin_ = _parse.number_bin(float(raw)) if raw else -2**31
        assert b.indices[0, f + 1] == _parse.hash_value(f + 1, struct.pack("<i", bin_), 20, 3)
        assert b.values[0, f + 1] == 1.0
        if raw:
            assert b.dense[0, j] == float(raw)
        else:  # the trees see a missing number as missing (NaN), the learner as 0
            assert np.isnan(b.dense[0, j]) and b.values[0, j * 2] == 0.0
    for j in range(26):
        f = 26 + j
        assert b.indices[0, f] == _parse.hash_value(f, cells[14 + j].encode(), 20, 3)
        assert b.values[0, f] == 1.0
        # counts per million rows seen: 1 of 1, then 2 of 2
        assert b.dense[0, 13 + j] == 1e6 and b.dense[1, 13 + j] == 1e6
    assert list(b.y) == [1.0, 1.0] and list(b.time) == [-1, -1]


def test_criteo_csv_variants_equal_tsv(tmp_path):
    cells = CRITEO_ROW.split("\t")
    names = [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    tsv = read_all(write(tmp_path, "t.txt", CRITEO_ROW + "\n"))
    with_id = read_all(write(tmp_path, "a.csv", "Id,Label," + ",".join(names) + "\n"
                             "10000000," + ",".join(cells) + "\n"))
    floats = ",".join(cells).replace(",1382,", ",1382.0,")
    lower = read_all(write(tmp_path, "b.csv", "label," + ",".join(names) + "\n" + floats + "\n"))
    for other in (with_id, lower):
        np.testing.assert_array_equal(other.indices, tsv.indices)
        np.testing.assert_array_equal(other.values, tsv.values)
        np.testing.assert_array_equal(other.dense, tsv.dense)
        np.testing.assert_array_equal(other.y, tsv.y)


def test_criteo_unlabelled_test_file(tmp_path):
    line = CRITEO_ROW.split("\t", 1)[1]
    src = open_source(write(tmp_path, "test.txt", line + "\n"))
    assert src.schema.label is None
    b = src.next_batch(10)
    assert np.isnan(b.y).all() and b.indices.shape == (1, 52)


def test_csv_type_inference_and_overrides(tmp_path):
    lines = ["id,clk,price,level,city,when"]
    for i in range(40):
        lines.append(f"{i},{i % 2},{i * 1.5 + 0.25},{i % 3},c{i % 5},2017-05-06")
    lines.append("99,0,,,,")
    p = write(tmp_path, "x.csv", "\n".join(lines) + "\n")
    src = open_source(p, label="clk")
    kinds = {c.name: (c.kind, c.dense) for c in src.schema.columns}
    assert kinds["id"][0] == "skip" and kinds["clk"][0] == "label"
    assert kinds["price"][0] == "num"
    assert kinds["level"] == ("cat", "int")  # numbers, but few distinct values
    assert kinds["city"] == ("cat", "count")
    assert kinds["when"] == ("cat", "count")  # a date alone (tests/data/test_times.py)
    assert src.schema.field_names == ("price", "price#bin", "level", "city", "when")
    assert src.schema.dense_names == ("price", "level", "city", "when")
    b = read_all(p, label="clk")
    f_price, d_level = 0, 1
    assert b.values[3, f_price] == pytest.approx(slog(4.75))
    assert b.dense[3, f_price] == 4.75 and b.dense[3, d_level] == 0
    # missing numeric: 0 for the learner (the fill rule), NaN (missing) for the trees
    assert b.values[40, f_price] == 0.0 and np.isnan(b.dense[40, f_price])
    over = open_source(p, label="clk", types={"price": "cat", "when": "skip", "id": "num"})
    kinds = {c.name: c.kind for c in over.schema.columns}
    assert (kinds["price"], kinds["when"], kinds["id"]) == ("cat", "skip", "num")
    with pytest.raises(ParseError, match="no column 'nope'"):
        open_source(p, label="clk", types={"nope": "num"})
    with pytest.raises(ParseError, match="label column 'missing'"):
        open_source(p, label="missing")


def test_csv_without_label_is_refused(tmp_path):
    p = write(tmp_path, "x.csv", "a,b\n1,2\n")
    with pytest.raises(ParseError, match="cannot detect the format"):
        open_source(p)
    with pytest.raises(ParseError, match="needs label=COLUMN"):
        open_source(p, format="csv")


@pytest.mark.parametrize("fmt", ["auto", "csv"])
def test_csv_label_column_found_by_name(tmp_path, fmt):
    p = write(tmp_path, "x.csv", "user_id,Clk,price\n7,0,3.5\n8,1,2\n9,,4\n8,1.0,1\n")
    with pytest.warns(UserWarning, match="the label column is 'Clk'"), open_source(
            p, format=fmt, on_error="skip") as src:
        assert src.schema.name == "csv" and src.schema.label == "Clk"
        assert src.next_batch(10).y.tolist() == [0, 1, 1]  # the empty label: a malformed row
    # named --label: no warning, whatever the names
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert log_schema(p, label="price", format="csv").label == "price"


@pytest.mark.parametrize("text,value", [(b"0", 0.0), (b"1", 1.0), (b"1.0", 1.0), (b"true", 1.0),
                                        (b"False", 0.0), (b"TRUE", 1.0), (b"2", None),
                                        (b"-1", None), (b"yes", None), (b"tru", None),
                                        (b"truee", None), (b"", None), (b" 1", None)])
def test_parse_label(text, value):
    assert _parse.parse_label(text) == value


def test_csv_labels_may_be_true_and_false(tmp_path):
    p = write(tmp_path, "x.csv", "ad,Clicked\na,True\nb,false\nc,1\n")
    with pytest.warns(UserWarning, match="the label column is 'Clicked'"):
        assert read_all(p).y.tolist() == [1, 0, 1]


@pytest.mark.parametrize("sep", ["\t", ";", "|"])
def test_csv_separator_found_from_the_first_lines(tmp_path, sep):
    rows = ["clk,site,price,user_id", *(f"{i % 2},s{i % 7},{i * 0.5},{i % 40}"
                                         for i in range(300))]
    comma = write(tmp_path, "c.csv", "\n".join(rows) + "\n")
    other = write(tmp_path, "o.csv", "\n".join(r.replace(",", sep) for r in rows) + "\n")
    a, b = read_all(comma, label="clk"), read_all(other, label="clk")
    assert log_schema(other, label="clk").delimiter == sep
    for name in ("indices", "values", "dense", "y"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    # a malformed row among the first lines: still found, the row an error of its own
    rows.insert(7, rows[7] + ",extra")
    ragged = write(tmp_path, "r.csv", "\n".join(r.replace(",", sep) for r in rows) + "\n")
    with open_source(ragged, label="clk", on_error="skip") as src:
        assert src.schema.delimiter == sep and len(src.next_batch(1000)) == 300
        assert src.skipped_rows == 1
    # named: no sniffing; a wrong one leaves one column, not the label
    assert log_schema(other, label="clk", delimiter=sep).delimiter == sep
    with pytest.raises(ParseError, match="label column 'clk' not in the header"):
        log_schema(other, label="clk", delimiter=",")


@pytest.mark.parametrize("text", [
    "label,target,x\n0,1,5\n1,0,6\n",  # two candidates
    "target,x\n0,5\n2,6\n",  # a value other than 0/1
    "outcome,x\n0,5\n1,6\n",  # not a label's name
    "click,x\n",  # no rows to look at
    "click,x\n 1,5\n0,6\n",  # " 1" is not a label to the reader
])
def test_csv_label_not_guessed(tmp_path, text):
    with pytest.raises(ParseError, match="cannot detect the format"):
        open_source(write(tmp_path, "x.csv", text))


def test_libsvm_rows(tmp_path):
    p = write(tmp_path, "d.svm", "1 3:0.5 10:2\n-1 7:1\n0\n+1 1:1 2:1 3:1 4:1\n")
    src = open_source(p, max_features=4, dense_features=8, seed=5)
    assert src.schema.name == "libsvm"
    b = src.next_batch(10)
    pad = _parse.hash_value(PAD_FIELD, b"", 20, 5)
    assert list(b.y) == [1, 0, 0, 1]
    assert list(b.indices[0]) == [row(0, b"3", 20, 5), row(0, b"10", 20, 5), pad, pad]
    assert list(b.values[0]) == [0.5, 2.0, 0.0, 0.0]
    assert list(b.indices[2]) == [pad] * 4
    assert b.dense.shape == (4, 8)
    assert b.dense[0, 3] == 0.5 and b.dense[0].sum() == 0.5  # index 10 is beyond T
    assert b.dense[3, 1:5].tolist() == [1, 1, 1, 1]
    with pytest.raises(ParseError,
                       match=r"line 2: more features than the row slots \(--max-features 2\)"):
        read_all(write(tmp_path, "e.svm", "1 1:1\n1 1:1 2:1 3:1\n"), max_features=2)


def test_libffm_rows(tmp_path):
    p = write(tmp_path, "d.ffm", "1 0:3:0.5 2:3:1\n-1 1:9:1\n")
    src = open_source(p, max_features=3)
    assert src.schema.name == "libffm"
    b = read_all(p, max_features=3, dense_features=0)
    assert list(b.y) == [1, 0]
    assert list(b.indices[0, :2]) == [row(0, b"3", 20, 0), row(2, b"3", 20, 0)]
    assert list(b.values[0]) == [0.5, 1.0, 0.0]
    assert b.indices[1, 0] == row(1, b"9", 20, 0)
    assert b.dense.shape == (2, 0)


def test_libfm_is_libsvm_syntax_with_plus_minus_one_labels(tmp_path):
    text = "+1 3:0.5 10:2\n-1 7:1\n1 2:1\n0 5:4\n"
    p = write(tmp_path, "d.libfm", text)
    fm = read_all(p, format="libfm", max_features=3, seed=2)
    svm = read_all(p, format="libsvm", max_features=3, seed=2)
    assert list(fm.y) == [1, 0, 1, 0]
    for name in ("indices", "values", "dense", "y"):
        np.testing.assert_array_equal(getattr(fm, name), getattr(svm, name), err_msg=name)
    assert fm.indices[0, 0] == row(0, b"3", 20, 2)  # no field: the salt of field 0
    with open_source(p, format="libfm") as src:
        assert src.schema.name == "libfm" and not src.schema.field_aware
    ffm = write(tmp_path, "d.ffm", "1 0:3:1\n")
    with pytest.raises(ParseError, match=r"line 1: bad feature token .*--format libffm"):
        read_all(ffm, format="libfm")
    with pytest.raises(ParseError, match=r"line 1: bad feature token \(want field:idx:val"):
        read_all(p, format="libffm")


@pytest.mark.parametrize("first,fmt", [
    (",".join(AVAZU_COLUMNS), "avazu"),
    (AVAZU_ROWS[0], "avazu"),
    (CRITEO_ROW, "criteo"),
    ("1 3:0.5 10:2", "libsvm"),
    ("-1 3:0.5 10:2", "libsvm"),
    ("0 1:3:1 2:4:1", "libffm"),
    ("-1 1:3:1 2:4:1", "libffm"),
])
def test_auto_detection(tmp_path, first, fmt):
    rest = {"avazu": AVAZU_ROWS[0], "criteo": CRITEO_ROW}.get(fmt, first)
    p = write(tmp_path, "f", first + "\n" + rest + "\n")
    with open_source(p) as src:
        assert src.schema.name == fmt
        assert len(src.next_batch(10)) == (1 if first.startswith("id,") else 2)


def test_auto_detection_looks_past_a_line_without_features(tmp_path):
    p = write(tmp_path, "f", "0\n1 2:7:1 3:8:1\n")
    assert open_source(p).schema.name == "libffm"
    mixed = write(tmp_path, "g", "0 1:1\n1 2:7:1\n")  # libsvm and libffm tokens: neither
    with pytest.raises(ParseError, match="cannot detect the format"):
        open_source(mixed)


def test_svm_tree_columns_are_chosen_from_the_sample(tmp_path):
    # small ids: each id seen is its own column, in id order
    p = write(tmp_path, "s.svm", "1 3:0.5 10:2\n0 7:1\n1 1:2 3:1\n")
    src = open_source(p)
    assert src.schema.dense_names == ("x1", "x3", "x7", "x10")
    b = read_all(p)
    np.testing.assert_array_equal(b.dense, [[0, 0.5, 0, 2], [0, 0, 1, 0], [2, 1, 0, 0]])
    # ids 0..T-1 all seen: the identity layout, no lookup
    q = write(tmp_path, "t.svm", "1 0:1 1:2\n0 2:3\n")
    assert open_source(q).schema.dense_ids == () and read_all(q).dense.shape == (2, 3)
    # --dense-features N is still an explicit override (ids below N, 0 = none)
    assert read_all(p, dense_features=4).dense.tolist()[0] == [0, 0, 0, 0.5]
    assert read_all(p, dense_features=0).dense.shape == (3, 0)


def test_svm_tree_columns_are_the_most_frequent_ids_when_there_are_many(tmp_path):
    rare = [f"0 {1000 + i}:1" for i in range(DENSE_AUTO_MAX)]
    common = [f"1 5:2 {10**9 + 1}:3 {10**6}:4"] * 3
    p = write(tmp_path, "m.svm", "\n".join(common + rare) + "\n")
    schema = open_source(p).schema
    assert schema.dense_features == DENSE_AUTO_MAX
    assert schema.dense_ids[:3] == (5, 1000, 1001) and schema.dense_ids[-2:] == (10**6, 10**9 + 1)
    assert 1000 + DENSE_AUTO_MAX - 1 not in schema.dense_ids  # ties go to the smaller ids
    b = read_all(p)
    slot = {i: k for k, i in enumerate(schema.dense_ids)}
    assert b.dense[0, slot[5]] == 2 and b.dense[0, slot[10**9 + 1]] == 3
    assert b.dense[0, slot[10**6]] == 4 and b.dense[0].sum() == 9


@given(st.lists(st.integers(0, 10**12), unique=True, max_size=40),
       st.integers(0, 10**12 + 5), st.integers(0, 50))
def test_dense_slot_twin_matches_python(ids, idx, width):
    ids = sorted(ids)
    arr = np.array(ids, dtype=np.int64)
    want = ids.index(idx) if idx in ids else -1
    assert _parse.dense_slot(idx, arr, 0) == want
    assert _parse.dense_slot(idx, arr[:0], width) == (idx if idx < width else -1)


def test_explicit_format_mismatch_is_an_error(tmp_path):
    p = write(tmp_path, "f", "1 3:0.5\n")
    with pytest.raises(ParseError, match="not an Avazu file"):
        open_source(p, format="avazu")


def test_encoder_direct_parse_matches_schema_width():
    enc = Encoder(criteo_schema(), bits=12)
    assert (enc.F, enc.T) == (52, 39)  # each number is a value and a bin for the learner
    enc = Encoder(libsvm_schema(max_features=5))
    assert (enc.F, enc.T) == (5, 0)


def test_number_bins_keep_small_integers_apart_and_grow_coarser():
    bins = [_parse.number_bin(x) for x in (0, 1, 2, 3, 10, 1e3, 1e6, -1, -2)]
    assert bins[:4] == [0, 3, 5, 6]  # small integers: a bin each
    assert len(set(bins)) == len(bins) and bins[-2:] == [-4, -6]  # symmetric
    assert _parse.number_bin(1e6) == _parse.number_bin(1.1e6)  # large counts share bins
    assert _parse.number_bin(float("inf")) == 10**6  # clamped, never undefined
