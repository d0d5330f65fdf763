"""Raw events of each log format for ``streamfusion produce`` (no broker needed)."""

from __future__ import annotations

import gzip

import pytest

from streamfusion.data.generate import generate
from streamfusion.kafka.formats import AVAZU_COLUMNS, CRITEO_COLUMNS, read_events


def test_avazu_events_keep_raw_strings_and_ids(tmp_path) -> None:
    path = tmp_path / "a.csv"
    generate(path, "avazu", rows=50, seed=1)
    lines = path.read_text().splitlines()
    layout, events = read_events(path)
    events = list(events)
    assert layout.format == "avazu" and len(events) == 50
    first = lines[1].split(",")
    key, ev = events[0]
    assert key == first[0] == ev["id"]
    assert ev["click"] == int(first[1])
    assert ev["hour"] == first[2] and ev["C21"] == first[-1]
    assert set(ev) == set(AVAZU_COLUMNS)


def test_criteo_without_header_uses_line_numbers_and_label(tmp_path) -> None:
    path = tmp_path / "c.txt.gz"
    generate(path, "criteo", rows=20, seed=1)
    layout, events = read_events(path)
    events = list(events)
    assert layout.format == "criteo" and not layout.has_header
    with gzip.open(path, "rt") as f:
        first = f.readline().rstrip("\n").split("\t")
    key, ev = events[0]
    assert key == "1" and ev["id"] == 1
    assert ev["click"] == int(first[0]) and ev["I1"] == first[1] and ev["C26"] == first[-1]
    assert set(ev) == set(CRITEO_COLUMNS[1:]) | {"id", "click"}
    assert [k for k, _ in events] == [str(i) for i in range(1, 21)]


def test_generic_csv_label_and_rows_limit(tmp_path) -> None:
    path = tmp_path / "g.csv"
    path.write_text("user,item,clicked\nu1,i1,1\nu2,i2,0\nu3,i3,1\n")
    layout, events = read_events(path, rows=2)
    assert layout.format == "csv" and layout.label == "clicked"
    events = list(events)
    assert events == [("2", {"user": "u1", "item": "i1", "id": 2, "click": 1}),
                      ("3", {"user": "u2", "item": "i2", "id": 3, "click": 0})]


def test_ragged_rows_are_an_error(tmp_path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b,click\n1,2,0\n1,2\n")
    _, events = read_events(path)
    with pytest.raises(ValueError, match="bad.csv:3"):
        list(events)
