"""Output files of the drivers: checked before a run, written as strict JSON after it.

A long replay must not end by losing its results to an output path that was never writable,
so :func:`check_output` runs before any work; :func:`write_json` then writes strict JSON,
where an undefined metric (one class only, no events) is ``null``, never ``NaN``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


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
