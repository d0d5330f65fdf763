"""Output files of the drivers: checked before a run, written after it.

A long replay must not end by losing its results to an output path that was never writable,
so :func:`check_output` runs before any work; :func:`write_json` then writes strict JSON,
where an undefined metric (one class only, no events) is ``null``, never ``NaN``, and
:func:`write_predictions` the per-event predictions as CSV.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from streamfusion.evaluate import Reader, sigmoid

PREDICTION_ROWS = 65_536  # events formatted at once


class OutputError(Exception):
    """An output file that could not be written after the run, e.g. on a full disk.

    Examples
    --------
    >>> str(OutputError("--report", Path("r.json"), OSError(28, "No space left on device")))
    'cannot write --report r.json: No space left on device'
    """

    def __init__(self, flag: str, path: Path, exc: OSError) -> None:
        super().__init__(f"cannot write {flag} {path}: {exc.strerror}")


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


def write_predictions(path: Path, parts: list[tuple[str, Reader, int]]) -> None:
    """Write ``set,label,margin,p_click`` rows: for each ``(name, read, n)`` of ``parts``, its
    ``n`` margins and labels in order. Margins keep every bit of their float32 (9
    significant digits).

    Examples
    --------
    >>> import tempfile
    >>> from streamfusion.evaluate import array_reader
    >>> p = Path(tempfile.mkdtemp()) / "pred.csv"
    >>> z, y = np.array([0.0, -1.5], np.float32), np.array([1, 0], np.uint8)
    >>> write_predictions(p, [("holdout", array_reader(z, y), 2)])
    >>> print(p.read_text(), end="")
    set,label,margin,p_click
    holdout,1,0,0.5
    holdout,0,-1.5,0.182425524
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("set,label,margin,p_click\n")
        for name, read, n in parts:
            for a in range(0, n, PREDICTION_ROWS):
                z, y = read(a, min(n, a + PREDICTION_ROWS))
                z = np.asarray(z, np.float32)
                cols = np.column_stack([np.asarray(y, np.int64).astype(str),
                                        [f"{v:.9g}" for v in z.tolist()],
                                        [f"{v:.9g}" for v in sigmoid(z).tolist()]])
                f.writelines(f"{name},{y_},{z_},{p_}\n" for y_, z_, p_ in cols)
