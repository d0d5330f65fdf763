"""The replay's progress bar on a file: percent of the input read (gzip too, by compressed
bytes) and time left."""

import gzip
import io
import re

import pytest
from rich.console import Console

from streamfusion.cli import build_parser
from streamfusion.data import open_source
from streamfusion.data.generate import generate
from streamfusion.progress import ReplayProgress, fraction_done
from streamfusion.replay import Replay

ROWS = 20_000
SMALL = ["--trees", "10", "--leaves", "7", "--refit-every", "3000", "--first-fit", "1500",
         "--window", "4000", "--hidden", "16", "--bits", "14", "--quiet", "--batch-size", "256"]


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    d = tmp_path_factory.mktemp("progress")
    plain = d / "log.csv"
    generate(plain, format="avazu", rows=ROWS, seed=2)
    with gzip.open(d / "log.csv.gz", "wb", compresslevel=6) as f:
        f.write(plain.read_bytes())
    return d


@pytest.mark.parametrize("name", ["log.csv", "log.csv.gz"])
def test_fraction_done_follows_the_bytes_of_the_input(logs, name):
    # small chunks, so that a gzip file is consumed in many steps
    with open_source(logs / name, chunk_bytes=1 << 16) as src:
        seen, checks = 0, []
        while (b := src.next_batch(1000)) is not None:
            seen += len(b)
            checks.append((seen / ROWS, fraction_done(src, seen, None)))
        assert seen == ROWS
        assert fraction_done(src, seen, None) == 1.0
    for rows_share, done in checks:
        assert abs(done - rows_share) < 0.05, (rows_share, done)
    assert [d for _, d in checks] == sorted(d for _, d in checks)  # never goes back


def test_a_rows_stop_before_the_end_of_the_file_counts_rows(logs):
    with open_source(logs / "log.csv") as src:
        src.next_batch(2000)
        assert fraction_done(src, 2000, 4000) == 0.5


def test_the_bar_shows_percent_done_and_time_left(logs):
    args = build_parser().parse_args(["replay", "--file", str(logs / "log.csv.gz"), *SMALL])
    replay = Replay(args)
    bar = ReplayProgress(Console(file=io.StringIO()), rows_limit=None)
    shown = []

    def progress(r):
        if r.rows_done >= ROWS * 0.3 and len(shown) < 2:
            bar.update(r, 1000.0)
            out = Console(file=io.StringIO(), width=200, color_system=None)
            out.print(bar.bar.make_tasks_table(bar.bar.tasks))
            shown.append((r.rows_done, out.file.getvalue()))

    replay.run(progress)
    replay.close()
    (rows, line), (_, later) = shown
    percent = int(re.search(r"(\d+)%", later).group(1))
    assert abs(percent - 100 * shown[1][0] / ROWS) <= 5, later
    assert re.search(r"\d+:\d\d:\d\d left", later), later  # a time left, not -:--:--
    assert f"{rows:,} events" in line and "ev/s" in line and "AUC" in line
