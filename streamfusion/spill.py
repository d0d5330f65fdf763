"""Append-only spill files: event data kept on disk so memory stays flat in the stream's length.

A :class:`SpillFile` is a file that only grows, with a running CRC-32 and byte count, so a
checkpoint can pin the prefix that belongs to it and a resumed run can refuse a file that is
missing, short or altered. :class:`RecordSpill` stores fixed-size ``(margin, label, key, line)``
records in one, appended in large chunks and read back by row range.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from streamfusion.checkpoint import CheckpointError

CRC_READ_BYTES = 1 << 24  # a prefix is verified in 16 MiB reads: resuming stays flat too
# packed, 17 bytes an event: margin, label, window key, the event's line in its source
RECORD = np.dtype([("z", "<f4"), ("y", "u1"), ("key", "<i4"), ("line", "<i8")])
# a checkpoint names the layout of its records: one of another layout is refused, not misread
RECORD_LAYOUT = ",".join(f"{n}{RECORD.fields[n][0].str}" for n in RECORD.names)
RECORD_FLUSH_ROWS = 1 << 16  # records written at once: 1.1 MiB a write


class SpillFile:
    """An append-only file with a running CRC-32 and length.

    Parameters
    ----------
    path : Path
        The file; created if absent, else truncated to ``nbytes`` (a checkpoint's prefix).
    nbytes, crc : int
        Length and CRC-32 of the prefix to keep.

    Examples
    --------
    >>> import tempfile
    >>> f = SpillFile(Path(tempfile.mkdtemp()) / "x.spill")
    >>> f.append(b"abc")
    >>> f.pread(1, 2), f.state_dict()["bytes"]
    (b'bc', 3)
    >>> f.close()
    """

    def __init__(self, path: Path, nbytes: int = 0, crc: int = 0) -> None:
        self.path = Path(path)
        self.nbytes, self.crc = int(nbytes), int(crc)
        self._f = open(self.path, "r+b" if self.path.exists() else "w+b")  # noqa: SIM115
        self._f.truncate(self.nbytes)
        self._f.seek(self.nbytes)

    @classmethod
    def resume(cls, path: Path, state: dict[str, Any], what: str) -> SpillFile:
        """Reopen the file of a checkpoint, refusing it unless its prefix matches ``state``."""
        try:
            nbytes, crc = int(state["bytes"]), int(state["crc"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"checkpoint has no valid state for the {what} file") from None
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{what} file {path} of the checkpoint is missing")
        if path.stat().st_size < nbytes:
            raise CheckpointError(f"{what} file {path} is shorter than the checkpoint says "
                                  f"({path.stat().st_size} < {nbytes} bytes)")
        if _crc_of_prefix(path, nbytes) != crc:
            raise CheckpointError(f"{what} file {path} is corrupt (CRC mismatch)")
        return cls(path, nbytes, crc)

    def append(self, data: Any) -> None:
        """Append the bytes of ``data`` (any contiguous buffer); an ``OSError`` (e.g. a full
        disk) names the file."""
        view = memoryview(data).cast("B")
        with _naming(self.path):
            self._f.write(view)
        self.crc = zlib.crc32(view, self.crc)
        self.nbytes += view.nbytes

    def pread(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset`` (the append position is left alone)."""
        self._flush()
        out = os.pread(self._f.fileno(), size, offset)
        if len(out) != size:
            raise OSError(f"{self.path}: read {len(out)} of {size} bytes at {offset}")
        return out

    def reader(self) -> IO[bytes]:
        """A separate read-only handle on everything appended so far."""
        self._flush()
        return open(self.path, "rb")  # noqa: SIM115 - the caller closes it

    def state_dict(self) -> dict[str, int]:
        """Length and CRC of the file, made durable first (a checkpoint pins this prefix)."""
        with _naming(self.path):
            self._f.flush()
            os.fsync(self._f.fileno())
        return {"bytes": self.nbytes, "crc": self.crc}

    def _flush(self) -> None:
        with _naming(self.path):
            self._f.flush()

    def close(self, remove: bool = False) -> None:
        """Close (and delete) the file. Never raises: bytes that cannot be flushed any more
        (a full disk) lie past every prefix a checkpoint pinned, and nothing reads them."""
        try:
            self._f.close()
        except OSError:
            pass
        if remove:
            self.path.unlink(missing_ok=True)


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Re-raise an ``OSError`` (e.g. a full disk) with the spill file's name: a write on a
    descriptor names no file."""
    try:
        yield
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None


def _crc_of_prefix(path: Path, nbytes: int) -> int:
    crc, left = 0, nbytes
    with open(path, "rb") as f:
        while left > 0:
            block = f.read(min(left, CRC_READ_BYTES))
            if not block:
                break
            crc = zlib.crc32(block, crc)
            left -= len(block)
    return crc


class RecordSpill:
    """Fixed-size ``(z float32, y uint8, key int32, line int64)`` records in a
    :class:`SpillFile`.

    Appends go to a small in-memory buffer written in chunks of ``flush_rows``; since every
    record has the same size, the file's bytes (and CRC) do not depend on when it is flushed.

    Parameters
    ----------
    path : Path
        The spill file (created, or truncated to ``rows`` records).
    flush_rows : int
        Records buffered in memory between writes.

    Examples
    --------
    >>> import tempfile
    >>> s = RecordSpill(Path(tempfile.mkdtemp()) / "p.spill")
    >>> s.append(np.array([0.5, -1.0], np.float32), np.array([1, 0]), np.array([7, 7]),
    ...          np.array([2, 3]))
    >>> s.read(1, 2)[["z", "line"]].tolist(), len(s)
    ([(-1.0, 3)], 2)
    >>> s.close(remove=True)
    """

    def __init__(self, path: Path, flush_rows: int = RECORD_FLUSH_ROWS,
                 _file: SpillFile | None = None) -> None:
        self.file = _file if _file is not None else SpillFile(path)
        if self.file.nbytes % RECORD.itemsize:
            raise CheckpointError(f"{self.file.path} does not hold whole records")
        self._flushed = self.file.nbytes // RECORD.itemsize
        self._buf = np.empty(int(flush_rows), RECORD)
        self._n_buf = 0

    @classmethod
    def resume(cls, path: Path, state: dict[str, Any], what: str,
               flush_rows: int = RECORD_FLUSH_ROWS) -> RecordSpill:
        """Reopen the records of a checkpoint; ``CheckpointError`` unless the prefix matches."""
        if state.get("record") != RECORD_LAYOUT:  # e.g. 9-byte records without line numbers
            raise CheckpointError(
                f"{what} file {path} holds records of another layout "
                f"({state.get('record', 'z<f4,y|u1,key<i4')}, this version writes "
                f"{RECORD_LAYOUT}): it was written by another version of streamfusion; "
                "start a new run in another directory")
        f = SpillFile.resume(path, state, what)
        if int(state.get("rows", -1)) * RECORD.itemsize != f.nbytes:
            f.close()
            raise CheckpointError(f"{what} file {path}: the checkpoint's row count does not "
                                  f"match its byte count")
        return cls(path, flush_rows, _file=f)

    def __len__(self) -> int:
        return self._flushed + self._n_buf

    def append(self, z: np.ndarray, y: np.ndarray, key: np.ndarray, line: np.ndarray) -> None:
        """Append one record per event (labels cast to uint8, keys to int32)."""
        n, done = len(z), 0
        while done < n:
            take = min(n - done, self._buf.size - self._n_buf)
            part = self._buf[self._n_buf : self._n_buf + take]
            part["z"] = z[done : done + take]
            part["y"] = y[done : done + take]
            part["key"] = key[done : done + take]
            part["line"] = line[done : done + take]
            self._n_buf += take
            done += take
            if self._n_buf == self._buf.size:
                self.flush()

    def flush(self) -> None:
        if self._n_buf:
            self.file.append(self._buf[: self._n_buf])
            self._flushed += self._n_buf
            self._n_buf = 0

    def read(self, start: int, stop: int) -> np.ndarray:
        """Records ``[start, stop)`` as a structured array (a copy, ``stop - start`` long)."""
        start, stop = max(0, int(start)), min(len(self), int(stop))
        if stop <= start:
            return np.empty(0, RECORD)
        self.flush()
        raw = self.file.pread(start * RECORD.itemsize, (stop - start) * RECORD.itemsize)
        return np.frombuffer(raw, RECORD)

    def chunks(self, start: int, stop: int, rows: int) -> Iterator[np.ndarray]:
        """Records ``[start, stop)`` in consecutive reads of at most ``rows``."""
        for a in range(start, stop, rows):
            yield self.read(a, min(a + rows, stop))

    def state_dict(self) -> dict[str, int | str]:
        self.flush()
        return {**self.file.state_dict(), "rows": len(self), "record": RECORD_LAYOUT}

    def close(self, remove: bool = False) -> None:
        self.file.close(remove)
