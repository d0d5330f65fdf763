"""The replay's windows: by day for a log of several days, else runs of events sized from the
file's length (so a small sample gives a curve, not one dot)."""

import gzip

import pytest

from streamfusion.data import open_source
from streamfusion.data.generate import generate
from streamfusion.windowing import MIN_WINDOW_EVENTS, TARGET_WINDOWS, choose, nice_floor

ROWS = 6000


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """A ten-day Avazu-format log, the same rows squeezed into one day, and gzip copies."""
    d = tmp_path_factory.mktemp("windowing")
    days = d / "days.csv"
    generate(days, format="avazu", rows=ROWS, seed=3)
    head, *rows = days.read_text().splitlines()
    one = d / "one_day.csv"
    one.write_text("\n".join([head] + [",".join(r.split(",")[:2] + ["14102105"] + r.split(",")[3:])
                                       for r in rows]) + "\n")
    for p in (days, one):
        with gzip.open(p.with_suffix(".csv.gz"), "wb") as f:
            f.write(p.read_bytes())
    return d


def schema_of(path):
    with open_source(path) as src:
        return src.schema


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_a_log_of_several_days_is_cut_by_day_and_one_of_a_single_day_by_events(logs, suffix):
    days, one = logs / f"days{suffix}", logs / f"one_day{suffix}"
    assert choose(days, schema_of(days)).by_day
    w = choose(one, schema_of(one))
    assert not w.by_day
    # about TARGET_WINDOWS windows of the progressive (90%) events
    assert TARGET_WINDOWS / 2 <= ROWS * 0.9 / max(w.events, MIN_WINDOW_EVENTS) <= TARGET_WINDOWS
    assert w.describe() == {"by": "events", "events": w.events}


def test_the_last_row_decides_when_the_first_rows_share_a_day(logs, tmp_path):
    head, *rows = (logs / "one_day.csv").read_text().splitlines()
    last = rows[-1].split(",")
    last[2] = "14102300"
    path = tmp_path / "late.csv"
    path.write_text("\n".join([head, *rows[:-1], ",".join(last)]) + "\n")
    assert choose(path, schema_of(path)).by_day


def test_window_length_follows_the_file_the_rows_limit_and_the_flag(tmp_path):
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    generate(small, format="criteo", rows=4000, seed=1)
    generate(big, format="criteo", rows=40_000, seed=1)
    w_small, w_big = choose(small, schema_of(small)), choose(big, schema_of(big))
    assert not w_small.by_day and not w_big.by_day  # no hour column
    assert w_small.events == MIN_WINDOW_EVENTS  # 4,000 x 0.9 / 40 = 90: the floor
    assert w_big.events == nice_floor(40_000 * 0.9 / TARGET_WINDOWS)  # exact estimate: 900
    assert choose(big, schema_of(big), rows=20_000).events == 250  # 450 -> 250
    assert choose(big, schema_of(big), window_rows=1234).events == 1234


def test_nice_floor_rounds_down_to_a_round_number():
    assert [nice_floor(v) for v in (0.3, 1, 7, 202, 250, 22_500, 99_999)] == \
        [1, 1, 5, 200, 250, 20_000, 50_000]
