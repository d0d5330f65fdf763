"""Raw event layout of each log format on Kafka: column names, the label, the id.

A Kafka event carries the raw fields of one log row under the dataset's own column names
(strings as in the file), plus ``id`` and, when known, ``click`` (0/1). This module turns file
lines into such events (for ``produce``) and names the fields ``serve`` requires.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

AVAZU_COLUMNS = (
    "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,"
    "app_category,device_id,device_ip,device_model,device_type,device_conn_type,"
    "C14,C15,C16,C17,C18,C19,C20,C21"
).split(",")
CRITEO_COLUMNS = (["label"] + [f"I{i}" for i in range(1, 14)]
                  + [f"C{i}" for i in range(1, 27)])
FORMATS = ("auto", "avazu", "criteo", "csv")
LABEL_NAMES = ("click", "label", "clicked", "y")  # label column of a generic CSV, in order
ID_NAMES = ("id",)


@dataclass(frozen=True)
class Layout:
    """Where a log's fields are.

    Attributes
    ----------
    format : str
        ``avazu``, ``criteo`` or ``csv``.
    columns : list of str
        Column names in file order.
    delimiter : str
    has_header : bool
    label : str or None
        Column holding the click label (emitted as ``click``), if any.
    id_column : str or None
        Column holding the event id, else the line number is the id.
    """

    format: str
    columns: list[str]
    delimiter: str
    has_header: bool
    label: str | None
    id_column: str | None

    @property
    def feature_columns(self) -> list[str]:
        """The raw fields an event must carry (everything but the label and the id)."""
        return [c for c in self.columns if c not in (self.label, self.id_column)]


def feature_columns(format: str) -> list[str]:
    """Raw fields a Kafka event of a known ``format`` must carry."""
    if format == "avazu":
        return [c for c in AVAZU_COLUMNS if c not in ("id", "click")]
    if format == "criteo":
        return CRITEO_COLUMNS[1:]
    raise ValueError(f"no fixed columns for format {format!r}: expected 'avazu' or 'criteo'")


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a log as text (``.gz`` transparently)."""
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115 - the caller closes it


def detect_layout(first_line: str, format: str = "auto", label: str | None = None) -> Layout:
    """Work out a log's layout from its first line and the requested ``format``."""
    line = first_line.rstrip("\r\n")
    tab = "\t" in line
    delim = "\t" if tab else ","
    cells = next(csv.reader([line], delimiter=delim)) if line else []
    lowered = [c.strip().lower() for c in cells]
    if format == "auto":
        if lowered[:2] == ["id", "click"]:
            format = "avazu"
        elif tab and len(cells) in (39, 40):
            format = "criteo"
        elif len(cells) == len(AVAZU_COLUMNS) and not tab:
            format = "avazu"
        else:
            format = "csv"
    if format == "avazu":
        header = lowered[:2] == ["id", "click"]
        if header:
            columns = [c.strip() for c in cells]
        elif len(cells) == len(AVAZU_COLUMNS):
            columns = list(AVAZU_COLUMNS)
        else:  # Avazu's test.csv: no click column
            columns = [c for c in AVAZU_COLUMNS if c != "click"]
        return Layout("avazu", columns, ",", header,
                      "click" if "click" in columns else None, "id")
    if format == "criteo":
        header = bool(lowered) and lowered[0] in ("label", "id")
        if header:
            columns = [c.strip() for c in cells]
        elif len(cells) == len(CRITEO_COLUMNS):
            columns = list(CRITEO_COLUMNS)
        else:  # Criteo's test file: no label
            columns = CRITEO_COLUMNS[1:]
        lab = next((c for c in columns if c.lower() == "label"), None)
        ident = next((c for c in columns if c.lower() == "id"), None)
        return Layout("criteo", columns, delim, header, lab, ident)
    if format == "csv":
        columns = [c.strip() for c in cells]
        if label is None:
            label = next((c for c in columns if c.lower() in LABEL_NAMES), None)
        elif label not in columns:
            raise ValueError(f"label column {label!r} is not in the header {columns}")
        ident = next((c for c in columns if c.lower() in ID_NAMES), None)
        return Layout("csv", columns, delim, True, label, ident)
    raise ValueError(f"unknown format {format!r}: expected one of {', '.join(FORMATS)}")


def read_events(path: str | Path, format: str = "auto", label: str | None = None,
                rows: int | None = None) -> tuple[Layout, Iterator[tuple[str, dict]]]:
    """Yield ``(key, event)`` for each row of the log, in file order.

    The event holds the raw fields (strings as in the file) under the layout's column names,
    ``id`` (the id column as a string, else the 1-based line number) and ``click`` (int) when
    the log has a label. Rows with the wrong number of fields raise ``ValueError``.
    """
    f = open_text(path)
    first = f.readline()
    layout = detect_layout(first, format, label)

    def events() -> Iterator[tuple[str, dict]]:
        try:
            line_no = 1
            lines: Iterator[str] = f
            if not layout.has_header:
                lines = _chain_first(first, f)
                line_no = 0
            reader = csv.reader(lines, delimiter=layout.delimiter)
            columns = layout.columns
            ncol = len(columns)
            lab, ident = layout.label, layout.id_column
            emitted = 0
            for cells in reader:
                line_no += 1
                if not cells:
                    continue
                if rows is not None and emitted >= rows:
                    break
                if len(cells) != ncol:
                    raise ValueError(f"{path}:{line_no}: {len(cells)} fields, expected {ncol}")
                event = dict(zip(columns, cells, strict=True))
                if ident is not None:
                    event_id: str | int = event.pop(ident)
                    event["id"] = event_id
                else:
                    event_id = line_no
                    event["id"] = line_no
                if lab is not None:
                    value = event.pop(lab)
                    if value != "":
                        event["click"] = int(float(value))
                emitted += 1
                yield str(event_id), event
        finally:
            f.close()

    return layout, events()


def _chain_first(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest
