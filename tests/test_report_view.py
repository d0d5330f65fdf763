"""The end-of-run summary and the --plot picture, drawn from real replay reports."""

import io
import json

import pytest
from rich.console import Console

from streamfusion.cli import main
from streamfusion.data.generate import generate
from streamfusion.report_view import figure, summary_table

SMALL = ["--trees", "10", "--leaves", "7", "--refit-every", "2000", "--first-fit", "1000",
         "--window", "4000", "--hidden", "16", "--bits", "14", "--quiet", "--batch-size", "256"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("view")
    generate(d / "g.csv", format="criteo", rows=8000, seed=4)
    assert main(["replay", "--file", str(d / "g.csv"), *SMALL, "--report",
                 str(d / "r.json")]) == 0
    return json.loads((d / "r.json").read_text())


def render(renderable, width):
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    return console.file.getvalue().splitlines()


@pytest.mark.parametrize("width", [60, 80, 100, 120, 160, 200])
def test_the_summary_never_breaks_a_figure_across_lines(report, width):
    big = {**report, "rows": 12_345_678, "seconds": 113.125, "events_per_second": 109_137.4,
           "skipped_rows": 1_234}
    figures = ["109,137 events/s", "12,345,678 in 113.1 s", "1,234",
               f"{report['model']['refits_live']} live of {report['model']['refits_started']} "
               "started", f"{report['progressive']['auc']:.4f}",
               f"{report['holdout']['logloss']:.4f}", f"{report['progressive']['rows']:,}"]
    lines = render(summary_table(big), width)
    for fig in figures:
        assert any(fig in line for line in lines), (fig, width, "\n".join(lines))


def test_the_summary_says_n_a_for_an_undefined_metric(report):
    empty = {**report, "progressive": {"auc": None, "logloss": None, "rows": 0},
             "events_per_second": float("nan")}
    text = "\n".join(render(summary_table(empty), 100))
    assert text.count("n/a") == 3  # AUC, logloss and the speed


def legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_the_plot_labels_its_points_and_names_every_refit(report):
    assert report["windowing"]["by"] == "events"
    assert len(report["windows"]) >= 20  # a small file still gives a line, not a dot
    fig = figure(report)
    ax1, ax2 = fig.axes
    n = report["windowing"]["events"]
    names = legend(ax1)
    assert f"AUC of each window of {n:,} events" in names
    assert "per window" in ax1.get_ylabel() and "progressive" not in ax1.get_ylabel()
    swaps = report["refit_windows"]
    assert len(swaps) >= 2
    for s in swaps:
        assert f"trees v{s['version']} live at {s['row']:,}" in names
    # every refit its own line: distinct x, and a colour/style the others do not share
    refit_lines = [ln for ln in ax1.get_lines() if ln.get_label().startswith("trees v")]
    styles = {(ln.get_color(), ln.get_linestyle()) for ln in refit_lines[:len(swaps)]}
    assert len(styles) == len(swaps)
    final = report["model"]["version"]
    if final > swaps[-1]["version"]:
        assert any(t.startswith("trees v") and "live at the end" in t for t in names)
    assert any(t.startswith("holdout AUC of the final model") for t in names)
    line = ax1.get_lines()[0]
    assert list(line.get_xdata()) == [w["end_row"] for w in report["windows"]]


def test_a_day_windowed_report_says_so(report):
    days = {**report, "windowing": {"by": "day", "events": 100_000}}
    assert "AUC of each day's events" in legend(figure(days).axes[0])
