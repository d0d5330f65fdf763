"""Atomic, checksummed save / load of nested state dicts.

A state is a nested dict whose leaves are numpy arrays or JSON values. The file is

    MAGIC (8 bytes) | header length (8 bytes, little endian) | JSON header | npz payload

The header carries the format version, the payload's SHA-256 and the JSON part of the state
(arrays replaced by references into the payload). Files are written to a temporary name,
fsynced, then renamed, so a reader sees the old checkpoint or the new one, never a mix; a
file that fails any check is refused whole with ``CheckpointError``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"SFCKPT\x00\x01"
FORMAT_VERSION = 1
STATE_FILE = "state.sfck"  # the checkpoint inside a checkpoint directory
_ARRAY_TAG = "__array__"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, foreign or of another format version."""


def _split(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """Replace array leaves by references, collecting the arrays."""
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {_ARRAY_TAG: key}
    if isinstance(obj, dict):
        return {str(k): _split(v, arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split(v, arrays) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _join(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY_TAG}:
            return arrays[obj[_ARRAY_TAG]]
        return {k: _join(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join(v, arrays) for v in obj]
    return obj


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_file(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    tree = _split(state, arrays)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    payload = buf.getvalue()
    header = json.dumps({
        "format": "streamfusion-checkpoint",
        "version": FORMAT_VERSION,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload_bytes": len(payload),
        "created": time.time(),
        "state": tree,
    }).encode()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def load_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a state written by ``save_file``; refuse it whole if anything is off."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    if not raw.startswith(MAGIC):
        raise CheckpointError(f"{path} is not a streamfusion checkpoint (bad magic bytes)")
    if len(raw) < len(MAGIC) + 8:
        raise CheckpointError(f"checkpoint {path} is truncated")
    (hlen,) = struct.unpack("<Q", raw[len(MAGIC) : len(MAGIC) + 8])
    start = len(MAGIC) + 8
    try:
        header = json.loads(raw[start : start + hlen])
    except ValueError:
        raise CheckpointError(f"checkpoint {path} has a corrupt header") from None
    if header.get("format") != "streamfusion-checkpoint":
        raise CheckpointError(f"{path} is not a streamfusion checkpoint")
    if header.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {header.get('version')}, "
            f"this streamfusion reads version {FORMAT_VERSION}")
    payload = raw[start + hlen :]
    if len(payload) != header["payload_bytes"]:
        raise CheckpointError(
            f"checkpoint {path} is truncated: payload has {len(payload)} bytes, "
            f"header says {header['payload_bytes']}")
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: checksum mismatch")
    with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return _join(header["state"], arrays)


def save(directory: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write the checkpoint of a run into ``directory`` (created if needed)."""
    return save_file(Path(directory) / STATE_FILE, state)


def load(directory: str | os.PathLike) -> dict[str, Any]:
    """Load the checkpoint in ``directory``; ``CheckpointError`` when absent or corrupt."""
    return load_file(Path(directory) / STATE_FILE)


def exists(directory: str | os.PathLike) -> bool:
    return (Path(directory) / STATE_FILE).is_file()
