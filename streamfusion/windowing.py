"""How a replay cuts its progressive metrics into windows: by day, or by a number of events.

A log with an hour column (Avazu) or a time column (a generic CSV's timestamps) is windowed
by day when it spans more than one day. Any other log, and a log of a single day, is cut into
runs of ``--window-rows`` events; by default that length comes from the file's length, so a
9k-row sample gives a curve of a few dozen points and a 40M-row log one of a few dozen windows
too, never a single dot.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamfusion import _parse
from streamfusion.data.schema import Schema, split_cells

TARGET_WINDOWS = 40  # points on the replay plot's line: a trend is visible, each window large
MIN_WINDOW_EVENTS = 250  # fewer and a window's AUC is mostly noise (~40 clicks at 17% CTR)
HEAD_BYTES = 1 << 20  # decompressed bytes read to measure lines and spot a second day
TAIL_BYTES = 1 << 16  # bytes before the end of a plain file that hold its last line
GZIP_TAIL_LIMIT = 64 << 20  # a larger gzip log is not decompressed up front for its last day
NICE_STEPS = (1, 2, 2.5, 5)  # window lengths a reader can take in at a glance: 250, 2,000, 25k


@dataclass(frozen=True)
class Windowing:
    """A replay's windows: ``by_day``, else runs of ``events`` progressive events;
    ``first_day``: the day of the first line with a time in the log's head, the window of
    events before any time was read."""

    by_day: bool
    events: int
    first_day: int = 0

    def describe(self, events: int | None = None) -> dict[str, Any]:
        """The report's ``windowing`` entry (``events``: the length a resumed run keeps)."""
        return {"by": "day" if self.by_day else "events",
                "events": int(self.events if events is None else events)}


def nice_floor(x: float) -> int:
    """The largest of 1, 2, 2.5, 5 times a power of ten that is at most ``x`` (and >= 1).

    >>> [nice_floor(v) for v in (1, 7, 202, 22_500, 99_999)]
    [1, 5, 200, 20000, 50000]
    """
    if x < 1:
        return 1
    power = 10 ** math.floor(math.log10(x))
    return int(max(s * power for s in NICE_STEPS if s * power <= x))


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _head(path: Path, gz: bool) -> tuple[bytes, float]:
    """The first decompressed bytes and the file's estimated decompressed size."""
    size = os.path.getsize(path)
    if not gz:
        with open(path, "rb") as f:
            return f.read(HEAD_BYTES), float(size)
    with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw) as f:
        try:
            head = f.read(HEAD_BYTES)
            at_end = not f.read(1)
        except (OSError, EOFError):  # a damaged file: the reader reports it, with its line
            return b"", float(size)
        consumed = max(1, raw.tell())
    return head, float(len(head) if at_end else size * len(head) / consumed)


def _last_line(path: Path, gz: bool) -> bytes | None:
    """The file's last non-blank line, or None when finding it would cost a long read."""
    if gz:
        if os.path.getsize(path) > GZIP_TAIL_LIMIT:
            return None
        tail = b""
        try:
            with gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    tail = (tail + chunk)[-TAIL_BYTES:]
        except (OSError, EOFError):
            return None
    else:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - TAIL_BYTES))
            tail = f.read()
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    return lines[-1] if lines else None


def _day_of(line: bytes, schema: Schema) -> int | None:
    """The day (YYMMDD, or YYYYMMDD of a time column) of a raw line of a log with an hour or
    time column, None if unreadable."""
    col, kind = next((i, c.kind) for i, c in enumerate(schema.columns)
                     if c.kind in ("hour", "time"))
    try:
        cells = split_cells(line.decode("utf-8", "replace"), schema.delimiter)
    except csv.Error:
        return None
    if col >= len(cells):
        return None
    parse = _parse.parse_hour if kind == "hour" else _parse.parse_time
    time = parse(cells[col].encode())
    return None if time is None else time[0] // 100


def _head_days(head: bytes, schema: Schema) -> list[int]:
    """The days of the head's whole lines with a readable time, in order."""
    lines = [ln for ln in head.split(b"\n")[:-1] if ln.strip()]  # the last piece may be cut
    if schema.has_header:
        lines = lines[1:]
    return [d for d in (_day_of(ln, schema) for ln in lines) if d is not None]


def spans_days(path: Path, schema: Schema, head_days: list[int], gz: bool) -> bool:
    """Whether a log with an hour or time column holds more than one day (``head_days``, the
    days of its first rows, and its last row)."""
    days = set(head_days)
    if len(days) > 1:
        return True
    last = _last_line(path, gz)
    if last is None or not days:
        return True  # unknown: windows by day, as the log's own clock says
    return _day_of(last, schema) not in (None, *days)


def choose(path: str | os.PathLike, schema: Schema, window_rows: int | None = None,
           rows: int | None = None, holdout: float = 0.1) -> Windowing:
    """The windows of a replay of ``path``.

    ``window_rows`` (the flag) fixes the length of event windows; without it the length is
    about 1/``TARGET_WINDOWS`` of the progressive events the file (or ``rows``) holds,
    rounded down to a round number, at least ``MIN_WINDOW_EVENTS``.
    """
    path = Path(path)
    gz = _is_gzip(path)
    head, size = _head(path, gz)
    days = _head_days(head, schema) if schema.has_time else []
    by_day = schema.has_time and spans_days(path, schema, days, gz)
    first_day = days[0] if by_day and days else 0
    if window_rows is not None:
        return Windowing(by_day, int(window_rows), first_day)
    lines = max(1, head.count(b"\n"))
    events = max(0.0, size * lines / max(1, len(head)) - int(schema.has_header))
    if rows is not None:
        events = min(events, rows)
    per_window = events * (1.0 - holdout) / TARGET_WINDOWS
    return Windowing(by_day, max(MIN_WINDOW_EVENTS, nice_floor(per_window)), first_day)
