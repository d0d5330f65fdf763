"""Raw events of each log format for ``streamfusion produce`` (no broker needed): typed as
``replay`` types the log, so ``serve`` reads them with the same schema."""

from __future__ import annotations

import gzip

import pytest

from streamfusion.data.generate import generate
from streamfusion.data.schema import AVAZU_COLUMNS, CRITEO_CATEGORICAL, CRITEO_NUMERIC
from streamfusion.kafka.formats import read_events


def test_avazu_events_keep_raw_strings_and_ids(tmp_path) -> None:
    path = tmp_path / "a.csv"
    generate(path, "avazu", rows=50, seed=1)
    lines = path.read_text().splitlines()
    schema, events = read_events(path)
    events = list(events)
    assert schema.name == "avazu" and len(events) == 50
    first = lines[1].split(",")
    key, ev = events[0]
    assert key == first[0] == ev["id"]
    assert ev["click"] == int(first[1])
    assert ev["hour"] == first[2] and ev["C21"] == first[-1]
    assert set(ev) == set(AVAZU_COLUMNS) == set(schema.event_fields) | {"id", "click"}


def test_criteo_without_header_uses_line_numbers_and_label(tmp_path) -> None:
    path = tmp_path / "c.txt.gz"
    generate(path, "criteo", rows=20, seed=1)
    schema, events = read_events(path)
    events = list(events)
    assert schema.name == "criteo" and not schema.header
    with gzip.open(path, "rt") as f:
        first = f.readline().rstrip("\n").split("\t")
    key, ev = events[0]
    assert key == "1" and ev["id"] == 1
    assert ev["click"] == int(first[0]) and ev["I1"] == first[1] and ev["C26"] == first[-1]
    assert set(ev) == {*CRITEO_NUMERIC, *CRITEO_CATEGORICAL, "id", "click"}
    assert [k for k, _ in events] == [str(i) for i in range(1, 21)]


def test_generic_csv_label_types_and_rows_limit(tmp_path) -> None:
    path = tmp_path / "g.csv"
    path.write_text("user,item,clicked,id\nu1,i1,1,a\nu2,i2,0,b\nu3,i3,1,c\n")
    schema, events = read_events(path, rows=2, format="csv", label="clicked",
                                 types={"item": "skip"})
    assert schema.label == "clicked" and schema.event_fields == ("user",)
    assert list(events) == [("a", {"user": "u1", "id": "a", "click": 1}),
                            ("b", {"user": "u2", "id": "b", "click": 0})]


def test_generic_csv_found_by_its_label_of_true_and_false(tmp_path) -> None:
    path = tmp_path / "g.tsv"
    path.write_text("user\tis_click\nu1\tTrue\nu2\tfalse\n")
    with pytest.warns(UserWarning, match="the label column is 'is_click'"):
        schema, events = read_events(path)
    assert schema.delimiter == "\t"
    assert list(events) == [("2", {"user": "u1", "id": 2, "click": 1}),  # line numbers
                            ("3", {"user": "u2", "id": 3, "click": 0})]


def test_cells_split_as_replay_splits_them(tmp_path) -> None:
    # quotes are plain characters in a tab-separated log; a bad label is a bad row
    path = tmp_path / "q.tsv"
    path.write_text('user\tclk\n"u1\t1\nu2\t2\nu3\t0\n')
    with pytest.raises(ValueError, match=r"q.tsv:3: bad label '2'"):
        list(read_events(path, label="clk")[1])
    assert [e["user"] for _, e in read_events(path, label="clk", on_error="skip")[1]] == [
        '"u1', "u3"]


def test_libsvm_events_carry_their_tokens(tmp_path) -> None:
    path = tmp_path / "s.libfm"
    path.write_text("1 3:1 7:0.5\n-1 2:1\n")
    schema, events = read_events(path)
    assert schema.is_svm
    assert list(events) == [("1", {"features": "3:1 7:0.5", "id": 1, "click": 1}),
                            ("2", {"features": "2:1", "id": 2, "click": 0})]


def test_ragged_rows_are_an_error_or_skipped(tmp_path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b,click\nx,2,0\nx,2\ny,3,1\n")
    _, events = read_events(path, format="csv", label="click")
    with pytest.raises(ValueError, match="bad.csv:3"):
        list(events)
    _, events = read_events(path, format="csv", label="click", on_error="skip")
    assert [k for k, _ in events] == ["2", "4"]
