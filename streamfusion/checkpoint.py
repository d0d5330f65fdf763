"""Atomic, checksummed save / load of nested state dicts.

A state is a nested dict whose leaves are numpy arrays or JSON values. The file is

    MAGIC (8 bytes) | header length (8 bytes, little endian) | JSON header | npz payload
    | SHA-256 of every byte before it (32 bytes)

The header carries the format version, the payload's length and the JSON part of the state
(arrays replaced by references into the payload). The trailing checksum covers the header as
well as the payload: rows done, source positions and booster texts live in the header. The
prefix up to the header is the same in every version, so a file of another version is named
as such. Files are written to a temporary name, fsynced, then renamed, so a reader sees the
old checkpoint or the new one, never a mix; a file that fails any check is refused whole with
``CheckpointError``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import struct
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"SFCKPT\x00\x01"
FORMAT_VERSION = 2  # 2: the checksum covers the header too (1: the payload only)
STATE_FILE = "state.sfck"  # the checkpoint inside a checkpoint directory
_ARRAY_TAG = "__array__"
_DIGEST_BYTES = 32  # the trailing SHA-256
# more than the arrays of any model the flags allow; what a zip bomb declares is refused
# before anything inflates
MAX_ARRAY_BYTES = 16 << 30
_TMP_PREFIX = "."  # temporary files are hidden: ".state.sfck.tmp<pid>"


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


def dumps(state: dict[str, Any], *, magic: bytes | None = None,
          fmt: str = "streamfusion-checkpoint", version: int | None = None,
          compress: bool = False) -> bytes:
    """The bytes of a file holding ``state`` (what ``save_file`` writes).

    ``magic``, ``fmt`` and ``version`` name another file kind in the same container (model
    files, :mod:`streamfusion.model_file`; default: a checkpoint); ``compress`` deflates the
    arrays.
    """
    magic = MAGIC if magic is None else magic
    version = FORMAT_VERSION if version is None else version
    arrays: dict[str, np.ndarray] = {}
    tree = _split(state, arrays)
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    payload = buf.getvalue()
    header = json.dumps({
        "format": fmt,
        "version": version,
        "payload_bytes": len(payload),
        "created": time.time(),
        "state": tree,
    }).encode()
    body = b"".join((magic, struct.pack("<Q", len(header)), header, payload))
    return body + hashlib.sha256(body).digest()


def save_file(path: str | os.PathLike, state: dict[str, Any], **kind: Any) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename); ``kind`` as
    for :func:`dumps`."""
    path = Path(path)
    if path.exists() and not path.is_file():  # never rename over a device, pipe or directory
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = dumps(state, **kind)
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # e.g. a full disk: the previous file stays as it was
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    _fsync_dir(path.parent)
    return path


def remove_stale_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of writes that never finished (a process killed between
    writing and renaming); returns them. Only for a directory one process writes to."""
    removed = []
    folder = Path(directory)
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(f"{_TMP_PREFIX}*.tmp*"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def load_file(path: str | os.PathLike, *, what: str = "checkpoint", **kind: Any
              ) -> dict[str, Any]:
    """Read a state written by ``save_file``; refuse it whole if anything is off. ``kind``
    (``magic``, ``fmt``, ``version``) as given to ``save_file``; ``what`` names the file
    kind in the messages."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"{what} {path} is a directory, not a file") from None
    except OSError as exc:
        raise CheckpointError(f"{what} {path} cannot be read ({exc.strerror})") from None
    return loads(raw, str(path), what=what, **kind)


def loads(raw: bytes, name: str = "checkpoint", max_array_bytes: int = MAX_ARRAY_BYTES, *,
          magic: bytes | None = None, fmt: str = "streamfusion-checkpoint",
          version: int | None = None, what: str = "checkpoint") -> dict[str, Any]:
    """The state in the bytes of a file of ``dumps``; ``CheckpointError`` naming ``name`` if
    anything is off. The arrays may inflate to ``max_array_bytes`` in all, and none may
    claim more bytes than its member holds (no zip bomb: nothing is allocated before)."""
    magic = MAGIC if magic is None else magic
    version = FORMAT_VERSION if version is None else version
    path = name
    if not raw.startswith(magic):
        raise CheckpointError(f"{path} is not a streamfusion {what} (bad magic bytes)")
    start = len(magic) + 8
    if len(raw) < start:
        raise CheckpointError(f"{what} {path} is truncated")
    (hlen,) = struct.unpack("<Q", raw[len(magic) : start])
    try:
        header = json.loads(raw[start : start + hlen])
    except (ValueError, RecursionError):
        raise CheckpointError(f"{what} {path} has a corrupt header") from None
    if not isinstance(header, dict) or header.get("format") != fmt:
        raise CheckpointError(f"{path} is not a streamfusion {what}")
    # the version first: a file of another version has another layout after its header
    if header.get("version") != version:
        raise CheckpointError(
            f"{what} {path} has format version {header.get('version')}, "
            f"this streamfusion reads version {version}")
    body, digest = raw[:-_DIGEST_BYTES], raw[-_DIGEST_BYTES:]
    if len(raw) < start + hlen + _DIGEST_BYTES or hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{what} {path} is corrupt: checksum mismatch")
    # Past the checksum the file is as written; these checks refuse a file written by a
    # buggy or foreign writer with a clear message instead of a KeyError.
    payload = body[start + hlen :]
    expected = header.get("payload_bytes")
    if not isinstance(expected, int) or not isinstance(header.get("state"), dict):
        raise CheckpointError(f"{what} {path} has a malformed header "
                              "(payload_bytes must be an int, state a dict)")
    if len(payload) != expected:
        raise CheckpointError(
            f"{what} {path} is truncated: payload has {len(payload)} bytes, "
            f"header says {expected}")
    try:
        _check_members(payload, max_array_bytes)
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        return _join(header["state"], arrays)
    except (KeyError, TypeError, ValueError, OSError, EOFError, MemoryError,
            zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{what} {path} has a malformed payload ({exc!r})") from None


def _check_members(payload: bytes, limit: int) -> None:
    """Refuse an npz whose members inflate beyond ``limit`` bytes in all (zipfile reads a
    member up to its declared size, no further) or whose arrays claim more bytes than their
    member holds (numpy would allocate what a header claims before reading it)."""
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        infos = zf.infolist()
        if sum(info.file_size for info in infos) > limit:
            raise ValueError(f"the arrays inflate to more than {limit} bytes")
        for info in infos:
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            if dtype.hasobject or int(np.prod(shape, dtype=np.float64)) * dtype.itemsize \
                    > info.file_size:
                raise ValueError(f"member {info.filename} claims more than it holds")


def require(state: Any, key: str, kind: type | tuple[type, ...], what: str = "checkpoint") -> Any:
    """``state[key]`` if it is a ``kind``; else a ``CheckpointError`` naming the key.

    For the drivers' own state keys: a state from another writer is refused with a message,
    not a ``KeyError`` or ``TypeError`` half-way through a restore.
    """
    if not isinstance(state, dict) or key not in state:
        raise CheckpointError(f"{what} is malformed: {key!r} is missing")
    value = state[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python, never a count or a position here
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise CheckpointError(f"{what} is malformed: {key!r} should be {names}, "
                              f"got {type(value).__name__}")
    return value


def save(directory: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write the checkpoint of a run into ``directory`` (created if needed)."""
    return save_file(Path(directory) / STATE_FILE, state)


def load(directory: str | os.PathLike) -> dict[str, Any]:
    """Load the checkpoint in ``directory``; ``CheckpointError`` when absent or corrupt."""
    return load_file(Path(directory) / STATE_FILE)


def exists(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a checkpoint file (valid or not)."""
    return (Path(directory) / STATE_FILE).is_file()
