"""Timestamps of a generic CSV: read as ISO 8601 or Unix times, typed ``time`` (ISO under any
name, Unix times under a name that says time), encoded as hour of day and weekday, never the
time itself; an unreadable cell is a counted missing value, and a replay of several days is
windowed by day."""

from __future__ import annotations

import datetime
import json
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfusion import _parse
from streamfusion.cli import main
from streamfusion.data import Encoder, read_all
from streamfusion.data.generate import generate
from streamfusion.data.readers import log_schema
from streamfusion.data.schema import Column, Schema, is_time_column

UTC = datetime.timezone.utc
MOMENTS = st.datetimes(datetime.datetime(1974, 1, 1), datetime.datetime(2099, 12, 31, 23, 59))


def key(t: datetime.datetime) -> tuple[int, int, int]:
    return (t.year * 1_000_000 + t.month * 10_000 + t.day * 100 + t.hour, t.hour,
            t.weekday())


@given(MOMENTS, st.integers(0, 999))
def test_unix_times_match_datetime(moment, ms):
    t = moment.replace(tzinfo=UTC)
    secs = int(t.timestamp())
    for text in (f"{secs}", f"{secs}.{ms:03d}", f"{secs * 1000 + ms}"):
        assert _parse.parse_time(text.encode()) == key(t), text


@given(MOMENTS, st.sampled_from(["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H",
                                 "%Y-%m-%d %H:%M:%S.123456", "%Y-%m-%dT%H:%M:%SZ",
                                 "%Y-%m-%dT%H:%M:%S+05:30", "%Y-%m-%dT%H:%M:%S-0800",
                                 "%Y-%m-%d %H:%M:%S+01"]))
def test_iso_times_are_read_as_written(moment, form):
    assert _parse.parse_time(moment.strftime(form).encode()) == key(moment)


def test_a_date_alone_is_hour_zero():
    assert _parse.parse_time(b"2024-02-29") == (2024022900, 0, 3)


@pytest.mark.parametrize("text", [
    b"", b"2017-5-06", b"2017-05-06T13:22+05:", b"2017-05-06T13:22+05:3",
    b"2017-05-06T13:22+053", b"2017-02-29", b"1900-02-28", b"2100-01-01", b"1969-12-31",
    b"2017-05-06 24:00", b"2017-05-06T13:60", b"2017-05-06x", b"2017-05-06T13:22:01.",
    b"2017-05-06T13:22:01+", b"2017-05-06T13:22:01+25:00", b"2017-05-06 ", b"12345678",
    b"12345678901", b"4102444800", b"1494076921x", b"-1494076921", b"1494076921.",
    b"14102100", b"2017/05/06"])
def test_what_is_not_a_time(text):
    assert _parse.parse_time(text) is None


def write(tmp_path, header, rows, name="t.csv"):
    path = tmp_path / name
    path.write_text("\n".join([",".join(header), *(",".join(map(str, r)) for r in rows)]) + "\n")
    return path


def times_log(rng, rows=3000, days=3):
    """Clicks over ``days`` days: an ISO time, the same moment as Unix seconds under a time
    name and under another, and a 10-digit user id."""
    start = datetime.datetime(2024, 3, 1, tzinfo=UTC)
    out = []
    for i in range(rows):
        t = start + datetime.timedelta(seconds=int(i * days * 86400 / rows))
        out.append([int(rng.random() < 0.2), t.strftime("%Y-%m-%d %H:%M:%S"),
                    int(t.timestamp()), int(t.timestamp()),
                    1_000_000_000 + int(rng.integers(0, 10**9)), int(rng.integers(0, 9))])
    return ["click", "when", "event_ts", "seconds", "user", "slot"], out


def test_time_columns_are_inferred_by_form_and_name(tmp_path, rng):
    header, rows = times_log(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the label found by its name
        schema = log_schema(write(tmp_path, header, rows))
    kinds = {c.name: c.kind for c in schema.columns}
    # ISO under any name, Unix seconds under a time's name; the same integers under another
    # name, and 10-digit ids, stay categorical
    assert kinds == {"click": "label", "when": "time", "event_ts": "time", "seconds": "cat",
                     "user": "cat", "slot": "cat"}
    assert schema.field_names[:4] == ("when_hour_of_day", "when_weekday",
                                      "event_ts_hour_of_day", "event_ts_weekday")
    assert "when" not in schema.dense_names and "event_ts" not in schema.dense_names
    over = log_schema(write(tmp_path, header, rows), label="click",
                      types={"when": "cat", "seconds": "time"})
    assert [c.kind for c in over.columns[1:4]] == ["cat", "time", "time"]


@pytest.mark.parametrize("name,cells,time", [
    ("item_id", ["123456789012"] * 99 + ["-1"], False),  # ids of Unix times' length, a sentinel
    ("adgroup", [str(10**9 + i) for i in range(199)] + ["-1"], False),
    ("update_date_id", ["1709290800", "1709290900"], False),  # an id's name
    ("candidate_id", ["1709290800"], False),
    ("event_time", ["1709290800"] * 99 + ["-1"], True),  # a sentinel: still Unix times
    ("candidate", ["1709290800"], False),  # not a time's word
    ("clicktime", ["1709290800"], True),  # a word ending in time
    ("eventTime", ["1709290800", "1709290900"], True),
    ("TIMESTAMP", ["1709290800123"], True),
    ("created_at", ["1709290800", "NA"], True),
    ("date_hour", ["2024030110", "2024030111"], False),  # YYYYMMDDHH, not Unix seconds
    ("date_min", ["202403011030"], False),
    ("signup_date", ["2024-03-01", "2024-03-02"], False),  # a date alone: a category
    ("seen", ["2024-03-01T10:00", "2024-03-01", "?"], True),
    ("mixed", ["2024-03-01T10:00", "1709290800"], False),
])
def test_what_is_inferred_as_a_time(name, cells, time):
    assert is_time_column(name, cells) is time


def test_times_give_hour_of_day_and_weekday_and_the_row_time(tmp_path, rng):
    header, rows = times_log(rng)
    path = write(tmp_path, header, rows)
    b = read_all(path, label="click")
    schema = log_schema(path, label="click")
    want = np.array([key(datetime.datetime.strptime(r[1], "%Y-%m-%d %H:%M:%S")) for r in rows])
    d = list(schema.dense_names)
    for col in ("when", "event_ts"):
        assert (b.dense[:, d.index(f"{col}_hour_of_day")] == want[:, 1]).all()
        assert (b.dense[:, d.index(f"{col}_weekday")] == want[:, 2]).all()
    assert (b.time == want[:, 0]).all()
    # the learner's field is the hour itself: equal hours share a row, the day aside
    f = list(schema.field_names).index("when_hour_of_day")
    by_hour = {h: set(b.indices[want[:, 1] == h, f]) for h in range(24)}
    assert all(len(rows_) == 1 for rows_ in by_hour.values())
    assert len(set.union(*by_hour.values())) == 24


def test_a_cell_that_is_not_a_time_is_missing_and_counted(tmp_path):
    schema = Schema("csv", (Column("click", "label"), Column("at", "time"),
                            Column("ad", "cat", "count")))
    enc = Encoder(schema, bits=16)
    records = [{"click": 1, "at": "2024-03-01T10:00:00", "ad": "a"},
               {"click": 0, "at": "soon", "ad": "a"},
               {"click": 0, "at": "", "ad": "a"},
               {"click": 1, "at": 1709290800, "ad": "b"}]  # 2024-03-01 11:00 UTC
    with pytest.warns(UserWarning, match="column 'at': values that are not times"):
        b, errors = enc.encode_records(records)
    assert errors == [] and len(b) == 4
    assert b.time.tolist() == [2024030110, -1, -1, 2024030111]
    assert np.isnan(b.dense[1:3, :2]).all() and b.dense[[0, 3], 0].tolist() == [10, 11]
    assert b.indices[1, 0] == b.indices[2, 0] != b.indices[0, 0]  # missing: one token
    assert enc.unparsed_numbers() == {"at": 1}  # the empty cell is missing, not unparsed


def test_a_replay_of_several_days_is_windowed_by_day(tmp_path, rng):
    header, rows = times_log(rng, rows=4000, days=4)
    # the first time column is the rows' time: missing, a row stays in the window of the one
    # before, whatever the other time column says (rows 2000-2009 open the third day)
    for i in (0, 1, *range(2000, 2010)):  # rows 0, 1: first batches of one event, no time
        rows[i][1] = "n/a"
    for r in rows[2000:2005]:
        r[2] = "n/a"
    path = write(tmp_path, ["clk", *header[1:3], *header[4:]],
                 [[r[0], *r[1:3], *r[4:]] for r in rows])
    report = tmp_path / "r.json"
    with pytest.warns(UserWarning, match="values that are not times"):
        code = main(["replay", "--file", str(path), "--label", "clk", "--quiet", "--trees",
                     "10", "--first-fit", "1000", "--holdout", "0", "--report", str(report)])
    r = json.loads(report.read_text())
    assert code == 0 and r["column_kinds"]["when"] == "time"
    assert r["windowing"]["by"] == "day"
    assert [w["key"] for w in r["windows"]] == [20240301, 20240302, 20240303, 20240304]
    assert [w["rows"] for w in r["windows"]] == [1000, 1010, 990, 1000]
    assert r["unparsed_numbers"] == {"when": 12, "event_ts": 5}


def test_an_avazu_log_as_a_generic_csv_with_unix_times(tmp_path):
    """A log exported with its hour as Unix seconds: the same hour of day and weekday
    features the Avazu format gives, by name."""
    avazu = tmp_path / "avazu.csv"
    generate(avazu, format="avazu", rows=500, seed=1)
    head, *lines = avazu.read_text().splitlines()
    names = head.split(",")
    rows = [line.split(",") for line in lines]
    at = names.index("hour")
    for r in rows:
        r[at] = str(int(datetime.datetime.strptime(r[at], "%y%m%d%H").replace(
            tzinfo=UTC).timestamp()))
    names[at] = "time_stamp"
    path = write(tmp_path, names, rows)
    a, b = read_all(avazu), read_all(path, label="click")
    assert (b.time % 100_000_000 == a.time).all()  # YYYYMMDDHH, YYMMDDHH
    av, csv_ = log_schema(avazu), log_schema(path, label="click")
    for name in ("hour_of_day", "weekday"):
        assert (a.dense[:, av.dense_names.index(name)]
                == b.dense[:, csv_.dense_names.index(f"time_stamp_{name}")]).all()


def test_a_kafka_event_time_is_a_number_or_a_string():
    from streamfusion.kafka.encoding import KafkaEncoder

    schema = Schema("csv", (Column("click", "label"), Column("at", "time"),
                            Column("ad", "cat", "count")))
    enc = KafkaEncoder(Encoder(schema, bits=16))
    out = enc.encode([b'{"id": "a", "at": 1709290800, "ad": "x"}',
                      b'{"id": "b", "at": "2024-03-01T10:00:00Z", "ad": "x"}',
                      b'{"id": "c", "ad": "x"}'])  # no time: missing, not a reject
    assert out.rejects == [] and out.batch.time.tolist() == [2024030111, 2024030110, -1]
    assert out.batch.dense[:2, :2].tolist() == [[11, 4], [10, 4]]
