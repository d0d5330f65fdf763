"""The replay's progress bar: percent of the input read, time left, events, rate, live AUC.

Percent done is the share of the input file's bytes consumed (compressed bytes for gzip), or
of ``--rows`` when that stop comes first, so a file shows how far it has got without being
counted first.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LIVE_AUC_EVENTS = 20_000  # events behind the bar's live AUC
REFRESH_SECONDS = 1.0  # the bar's figures change at most this often: rates stay readable


def fraction_done(source: Any, rows_done: int, rows_limit: int | None) -> float:
    """Share of the run done: the input's bytes consumed, or ``rows_done / rows_limit``."""
    done = 0.0
    if hasattr(source, "input_progress"):
        read, size = source.input_progress()
        done = read / size if size else 1.0
    if rows_limit:
        done = max(done, rows_done / rows_limit)
    return min(1.0, done)


def columns() -> list[Any]:
    """The bar's columns: replay, bar, percent, events, rate, AUC, elapsed and time left."""
    return [TextColumn("[bold]replay"), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[events]}"), TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[auc]}"), TimeElapsedColumn(), TextColumn("elapsed,"),
            TimeRemainingColumn(), TextColumn("left")]


class ReplayProgress:
    """A rich progress bar for :class:`streamfusion.replay.Replay`, called after each batch.

    Parameters
    ----------
    console : rich.console.Console
        Where the bar is drawn (the replay draws on stderr).
    rows_limit : int, optional
        The run's ``--rows`` stop, if any.
    disable : bool
        No bar at all (``--quiet``).

    Examples
    --------
    >>> from rich.console import Console
    >>> with ReplayProgress(Console(), rows_limit=None, disable=True) as bar:
    ...     pass  # replay.run(bar) calls bar(replay) after each batch
    """

    def __init__(self, console: Console, rows_limit: int | None = None,
                 disable: bool = False) -> None:
        self.rows_limit = rows_limit
        self.bar = Progress(*columns(), console=console, disable=disable, transient=True)
        self.task = self.bar.add_task("replay", total=1.0, events="", rate="", auc="")
        self._last: tuple[float, int] | None = None

    def __enter__(self) -> ReplayProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def __call__(self, replay: Any) -> None:
        """Show the state of ``replay`` (rows_done, source, progressive), once a second."""
        now = time.perf_counter()
        if self._last is None:
            self._last = (now, replay.rows_done)
        last_time, last_rows = self._last
        if now - last_time < REFRESH_SECONDS:
            return
        self.update(replay, (replay.rows_done - last_rows) / (now - last_time))
        self._last = (now, replay.rows_done)

    def update(self, replay: Any, rate: float) -> None:
        """Set the bar's figures now (``rate`` in events per second)."""
        live = replay.progressive.recent(LIVE_AUC_EVENTS)
        auc = live["auc"]
        self.bar.update(self.task,
                        completed=fraction_done(replay.source, replay.rows_done,
                                                self.rows_limit),
                        events=f"{replay.rows_done:,} events", rate=f"{rate:,.0f} ev/s",
                        auc="" if auc != auc else f"AUC {auc:.4f}")
