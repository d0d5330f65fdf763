"""Output files of the drivers: checked before a run, written after it.

A long replay must not end by losing its results to an output path that was never writable,
so :func:`check_output` runs before any work; :func:`write_json` then writes strict JSON,
where an undefined metric (one class only, no events) is ``null``, never ``NaN``, and
:func:`write_predictions` the per-event predictions as CSV.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from streamfusion.evaluate import sigmoid
from streamfusion.spill import RecordSpill

PREDICTION_ROWS = 65_536  # events formatted at once


class OutputError(Exception):
    """An output file that could not be written after the run, e.g. on a full disk.

    Examples
    --------
    >>> str(OutputError("--report", Path("r.json"), OSError(28, "No space left on device")))
    'cannot write --report r.json: No space left on device'
    """

    def __init__(self, flag: str, path: Path, exc: OSError) -> None:
        super().__init__(f"cannot write {flag} {path}: {exc.strerror or exc}")


def check_output(path: Path, flag: str) -> None:
    """Raise ``ValueError`` naming ``flag`` unless ``path`` can be written as a file.

    Creates missing parent directories, as the write will.
    """
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a directory, want a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot create its directory ({exc.strerror})") from None
    existed = path.exists()
    try:
        with open(path, "ab"):  # the only sure test (permissions, /proc, read-only mounts)
            pass
    except OSError as exc:
        raise ValueError(f"{flag} {path}: not writable ({exc.strerror})") from None
    if not existed:
        path.unlink(missing_ok=True)


def finite(x: Any) -> Any:
    """``x`` with every non-finite float replaced by ``None`` (JSON ``null``), recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    return x


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON (non-finite numbers become ``null``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(obj), indent=2, allow_nan=False) + "\n")


def write_predictions(path: Path, parts: list[tuple[str, RecordSpill]]) -> None:
    """Write the CSV ``set,line,label,margin,p_click``: for each ``(name, records)`` of
    ``parts``, its records in order.

    ``line`` is the event's line in its source (1-based, a header counted), so the rows pair
    with any other tool's predictions on the same file. Each number is written in the shortest
    form that reads back to the same value (margins as float32, ``p_click`` as float64). A
    regular file appears whole or not at all: it is written beside ``path`` and renamed (a
    device or a pipe is written as it is).

    Parameters
    ----------
    path : Path
        The CSV file (replaced).
    parts : list of (str, RecordSpill)
        The ``set`` column's value and the records of that set.

    Raises
    ------
    OSError
        When the file cannot be written; a regular ``path`` is then left as it was.

    Examples
    --------
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> held = RecordSpill(d / "held.spill")
    >>> held.append(np.array([0.0, -1.5], np.float32), np.array([1, 0]), np.zeros(2),
    ...             np.array([4, 9]))
    >>> write_predictions(d / "pred.csv", [("holdout", held)])
    >>> print((d / "pred.csv").read_text(), end="")
    set,line,label,margin,p_click
    holdout,4,1,0,0.5
    holdout,9,0,-1.5,0.18242552380635635
    >>> held.close(remove=True)
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    path.parent.mkdir(parents=True, exist_ok=True)
    special = path.exists() and not path.is_file()  # /dev/stdout, a pipe: never replaced
    tmp = path if special else path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(b"set,line,label,margin,p_click\n")
            for name, records in parts:
                for rec in records.chunks(0, len(records), PREDICTION_ROWS):
                    z = rec["z"]
                    pacsv.write_csv(pa.table({
                        "set": pa.array(np.full(len(z), name)), "line": pa.array(rec["line"]),
                        "label": pa.array(rec["y"].astype(np.int64)),
                        "margin": pa.array(z), "p_click": pa.array(sigmoid(z))}), f, options)
        if not special:
            os.replace(tmp, path)
    except BaseException:
        if not special:
            tmp.unlink(missing_ok=True)
        raise
