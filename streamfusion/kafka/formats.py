"""Log rows -> Kafka events, for ``streamfusion produce``, with the replay's own schema.

The schema comes from :func:`streamfusion.data.readers.log_schema`, the detection and type
inference ``replay`` uses, so ``produce`` and ``serve`` agree on every format the replay
reads. An event holds the row's raw fields as strings, as in the file, under their column
names (``Schema.event_fields``; libsvm-like rows: their ``idx:val`` tokens under
``features``), plus ``id`` (the log's id column, else the 1-based line number) and ``click``
when the row has a label.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streamfusion import _parse
from streamfusion.data.readers import log_schema
from streamfusion.data.schema import Schema

__all__ = ["read_events"]


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a log as text (gzip recognised by its magic bytes)."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    if gz:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - the caller closes it


def read_events(path: str | Path, rows: int | None = None, schema: Schema | None = None,
                on_error: str = "fail", **source: Any
                ) -> tuple[Schema, Iterator[tuple[str, dict]]]:
    """The log's schema and ``(key, event)`` for each row, in file order.

    ``source`` holds :func:`~streamfusion.data.open_source`'s input options (``format``,
    ``label``, ``types``, ...); ``schema`` skips the detection (e.g. the schema a replay
    wrote). A row with the wrong number of fields raises ``ValueError`` naming the file and
    line, or with ``on_error="skip"`` is left out.
    """
    if schema is None:
        schema = log_schema(path, **source)
    return schema, _events(Path(path), schema, rows, on_error == "skip")


def _events(path: Path, schema: Schema, rows: int | None, skip: bool
            ) -> Iterator[tuple[str, dict]]:
    fields = schema.event_fields
    with open_text(path) as f:
        lines: Iterator[str] = f
        line_no = 0
        if schema.header:
            next(f, None)
            line_no = 1
        if schema.is_svm:
            cells_of = (ln.rstrip("\r\n").split(None, 1) for ln in lines)
        else:
            # as the C reader splits them: quoted cells in comma-separated files only
            cells_of = csv.reader(lines, delimiter=schema.delimiter, quoting=csv.QUOTE_MINIMAL
                                  if schema.delimiter == "," else csv.QUOTE_NONE)
        names = [c.name for c in schema.columns]
        lab, ident = schema.label, schema.id_column
        emitted = 0
        for cells in cells_of:
            line_no += 1
            if not cells:
                continue
            if rows is not None and emitted >= rows:
                return
            if schema.is_svm:
                row = {lab: cells[0], fields[0]: cells[1] if len(cells) > 1 else ""}
            elif len(cells) != len(names):
                if skip:
                    continue
                raise ValueError(f"{path}:{line_no}: {len(cells)} fields, expected "
                                 f"{len(names)}")
            else:
                row = dict(zip(names, cells, strict=True))
            event: dict = {name: row[name] for name in fields}
            event["id"] = row[ident] if ident is not None else line_no
            if lab is not None and row.get(lab, "") != "":
                click = _label(row[lab], schema.is_svm)
                if click is None:
                    if skip:
                        continue
                    raise ValueError(f"{path}:{line_no}: bad label {row[lab]!r}")
                event["click"] = click
            emitted += 1
            yield str(event["id"]), event


def _label(text: str, svm: bool) -> int | None:
    """A row's click as replay reads it (None when it is not one): 0, 1, true or false (any
    case); a libsvm-like file's 0, 1 or -1 (= 0)."""
    if svm:
        number = _parse.parse_number(text.encode())
        return int(number > 0) if number in (-1.0, 0.0, 1.0) else None
    click = _parse.parse_label(text.encode())
    return None if click is None else int(click)
