"""A replay report for people: the end-of-run summary table and the ``--plot`` picture.

Both read only the report dict (``docs/report.md``), so a saved report can be drawn again.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table

REFIT_COLORS = ("tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive",
                "tab:cyan", "tab:gray")
REFIT_STYLES = ("--", ":", "-.")  # with the colours: 24 refits before a line repeats


def _num(value: Any) -> float:
    """A metric as a float: NaN for an undefined one (NaN in memory, null in JSON)."""
    return float("nan") if value is None else float(value)


def _fmt(value: Any) -> str:
    v = _num(value)
    return f"{v:.4f}" if math.isfinite(v) else "n/a"


def summary_table(report: dict[str, Any]) -> Group:
    """The metrics table and, below it, one run figure per line.

    Every figure sits in a cell that never wraps, so none is broken across lines at any
    console width that can hold it (a caption would wrap at the table's width).
    """
    model = report["model"]
    t = Table(title=f"streamfusion replay: {'+'.join(model['stages'])}")
    for col in ("", "AUC", "logloss", "events"):
        t.add_column(col, justify="right", no_wrap=True)
    for name in ("progressive", "holdout"):
        m = report[name]
        t.add_row(name, _fmt(m["auc"]), _fmt(m["logloss"]), f"{m['rows']:,}")
    facts = Table.grid(padding=(0, 2))
    facts.add_column(justify="right", style="dim", no_wrap=True)
    facts.add_column(no_wrap=True)
    eps = _num(report["events_per_second"])
    facts.add_row("events", f"{report['rows']:,} in {report['seconds']:.1f} s")
    facts.add_row("speed", f"{eps:,.0f} events/s" if math.isfinite(eps) else "n/a")
    facts.add_row("tree refits",
                  f"{model['refits_live']} live of {model['refits_started']} started")
    facts.add_row("skipped rows", f"{report['skipped_rows']:,}")
    return Group(t, facts)


def _window_label(report: dict[str, Any]) -> str:
    w = report.get("windowing") or {}
    if w.get("by") == "day":
        return "AUC of each day's events"
    n = w.get("events")
    return f"AUC of each window of {n:,} events" if n else "AUC of each window"


def figure(report: dict[str, Any]) -> Any:
    """A matplotlib figure of the report: one point per window (that window's AUC and
    logloss, not a running figure), the holdout AUC, and a named line per refit that went
    live (those of the end of the file, which score the holdout, at the last window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = report["windows"]
    x = [e["end_row"] for e in w]
    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(9, 5.5))
    label = _window_label(report)
    ax1.plot(x, [_num(e["auc"]) for e in w], marker="o", ms=3, label=label)
    ax1.set_ylabel("AUC per window")
    ax2.plot(x, [_num(e["logloss"]) for e in w], marker="o", ms=3, color="tab:red",
             label=label.replace("AUC", "logloss"))
    ax2.set_ylabel("logloss per window")
    ax2.set_xlabel("progressive events (held-out events excluded); each point at the end of "
                   "its window")
    holdout = _num(report["holdout"]["auc"])
    if math.isfinite(holdout):
        ax1.axhline(holdout, color="black", lw=0.8, ls=(0, (6, 3)),
                    label=f"holdout AUC of the final model: {holdout:.4f}")
    for i, swap in enumerate(report["refit_windows"]):
        style = {"color": REFIT_COLORS[i % len(REFIT_COLORS)],
                 "ls": REFIT_STYLES[i // len(REFIT_COLORS) % len(REFIT_STYLES)], "lw": 1.0}
        ax1.axvline(swap["row"], label=f"trees v{swap['version']} live at {swap['row']:,}",
                    **style)
        ax2.axvline(swap["row"], **style)
    # the refits at the end of the file go live after the last progressive event: they are
    # the model that scores the holdout
    last = max((s["version"] for s in report["refit_windows"]), default=0)
    final = report["model"].get("version", last)
    if final > last and x:
        names = f"v{final}" if final == last + 1 else f"v{last + 1}-v{final}"
        style = {"color": "black", "lw": 1.6, "ls": "-"}
        ax1.axvline(x[-1], label=f"trees {names} live at the end: they score the holdout",
                    **style)
        ax2.axvline(x[-1], **style)
    for ax in (ax1, ax2):
        ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5),
                  ncol=1 + len(ax.get_legend_handles_labels()[0]) // 16)
    fig.suptitle(f"streamfusion replay: {Path(report['file']).name}, "
                 f"{'+'.join(report['model']['stages'])}")
    fig.tight_layout()
    return fig


def plot(report: dict[str, Any], path: Path) -> None:
    """Draw :func:`figure` to the PNG ``path`` (the path as given, no ".png" added)."""
    import matplotlib.pyplot as plt

    fig = figure(report)
    try:
        fig.savefig(path, dpi=110, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)
