"""Streaming file sources: chunks cut at the last newline, gzip read transparently.

Memory is bounded by the chunk size (plus one line) and the encoder's fixed tables; nothing
grows with the file or with the number of distinct categories.
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamfusion.data.encoder import (
    DEFAULT_COUNT_BITS,
    ST_ERR,
    ST_ERR_LINE,
    ST_LINE,
    ST_MAX_TIME,
    ST_OOO,
    ST_POS,
    Encoder,
    new_state,
    skip_error,
)
from streamfusion.data.schema import (
    DEFAULT_MAX_FEATURES,
    DEFAULT_SAMPLE_ROWS,
    Schema,
    detect_schema,
    split_cells,
)
from streamfusion.features import Batch

DEFAULT_CHUNK_BYTES = 4 << 20  # big enough to amortise the Python per-chunk work
# first decompressed bytes read for format detection and type inference: room for the
# sample's DEFAULT_SAMPLE_ROWS rows of a wide log (400 bytes a row), a few ms to read
HEAD_BYTES = 8 << 20
# of a plain file longer than its head, the type sample also reads this many blocks spread
# evenly over all of it (a few ms): kinds fit the whole log, not only its first rows. A file
# longer than the head is longer than 17 blocks, so they never overlap.
SPREAD_BLOCKS = 16
SPREAD_BLOCK_BYTES = 1 << 18
MAX_LINE_BYTES = 64 << 20  # a "line" longer than this is a binary file or a missing newline
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
GZIP_SLICE = 1 << 16  # compressed bytes fed to zlib at a time
POSITION_VERSION = 1


class ParseError(ValueError):
    """A malformed input: ``str()`` names the file, the line (when known) and the reason."""

    def __init__(self, path: str | os.PathLike, line: int | None, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


class _Truncated(Exception):
    pass


class _ByteStream:
    """Decompressed bytes of a file in chunks; gzip recognised by its magic bytes.

    A leading UTF-8 byte-order mark (spreadsheet exports) is not part of the stream: offsets
    count from the byte after it, so positions and ``skip`` agree with what ``read`` returns.
    """

    def __init__(self, path: Path, chunk_bytes: int) -> None:
        self.path = path
        self.chunk = chunk_bytes
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()
        head = self._f.read(len(UTF8_BOM))
        self.gzip = head[:2] == GZIP_MAGIC
        self._bom = 0 if self.gzip or head != UTF8_BOM else len(UTF8_BOM)
        self._f.seek(self._bom)
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS) if self.gzip else None
        self._pending = b""  # compressed input not yet fed (tail of a member or next member)
        self._in_member = False
        self._at_start = True  # a gzip stream's BOM is dropped from its first output

    def read(self) -> bytes:
        """Next chunk of decompressed data; b"" at the end; _Truncated on a cut gzip."""
        if not self.gzip:
            return self._f.read(self.chunk)
        while True:
            # compressed input in small slices: output already made survives a corrupt
            # block, so an error can say how many lines came through intact
            data = self._pending or self._f.read(min(self.chunk, GZIP_SLICE))
            if not data:
                if self._in_member:
                    raise _Truncated
                return b""
            self._pending = b""
            if not self._in_member and not data.strip(b"\0"):
                continue  # zero padding after the last member (as gzip(1) tolerates)
            if not self._in_member and not self._at_start and data[:2] != GZIP_MAGIC[:len(data)]:
                warnings.warn(f"{self.path}: trailing garbage after the last gzip member "
                              "ignored", stacklevel=2)
                self._pending = b""
                self._f.seek(0, os.SEEK_END)
                return b""
            self._in_member = True
            try:
                out = self._d.decompress(data, self.chunk)
            except zlib.error as exc:
                raise ParseError(self.path, None, f"corrupt gzip stream ({exc})") from None
            self._pending = self._d.unconsumed_tail
            if self._d.eof:  # a member ended: concatenated members continue the stream
                # (unconsumed_tail then repeats part of unused_data: use the latter only)
                self._pending = self._d.unused_data
                self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._in_member = False
            if self._at_start and out:
                self._at_start = False
                if out.startswith(UTF8_BOM):
                    out = out[len(UTF8_BOM):]
            if out:
                return out

    def readinto(self, mv: memoryview) -> int:
        """Read the next chunk into ``mv`` (at least ``chunk`` bytes long); 0 at the end."""
        if not self.gzip:
            return self._f.readinto(mv)
        data = self.read()
        mv[:len(data)] = data
        return len(data)

    def skip(self, n: int) -> bytes:
        """Discard the first ``n`` decompressed bytes; return what was read beyond them."""
        if not self.gzip:
            self._f.seek(n + self._bom)
            return b""
        while n > 0:
            chunk = self.read()
            if not chunk:
                raise ValueError(f"{self.path}: position beyond the end of the stream")
            if len(chunk) > n:
                return chunk[n:]
            n -= len(chunk)
        return b""

    def consumed(self) -> int:
        """Bytes of the file itself read so far (compressed bytes for gzip)."""
        return self._f.tell() - len(self._pending)

    def close(self) -> None:
        self._f.close()


FINGERPRINT_BYTES = 1 << 20  # hashed at the start and just before a checkpoint's position


class InputFingerprint:
    """Identifies the part of an input a checkpoint consumed, cheaply.

    SHA-256 of the first MiB and of the MiB before a position (an offset in the
    decompressed stream, as in ``source.position()``). A plain file is read with ``pread``;
    a gzip file is decompressed once per run, onwards from the last fingerprinted position,
    so checkpoints stay cheap and a resume pays one pass over the consumed part.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            self.gzip = f.read(2) == GZIP_MAGIC
        self._stream: _ByteStream | None = None
        self._done = 0  # decompressed bytes consumed so far
        self._head = self._tail = self._carry = b""

    def _advance(self, pos: int) -> bool:
        """Read the decompressed stream up to ``pos``; False when it ends before."""
        if self._stream is None or pos < self._done:
            if self._stream is not None:
                self._stream.close()
            self._stream = _ByteStream(self.path, FINGERPRINT_BYTES)
            self._done, self._head, self._tail, self._carry = 0, b"", b"", b""
        while self._done < pos:
            try:
                chunk = self._carry or self._stream.read()
            except _Truncated:
                chunk = b""
            if not chunk:
                return False
            take, self._carry = chunk[: pos - self._done], chunk[pos - self._done :]
            if len(self._head) < FINGERPRINT_BYTES:
                self._head += take[: FINGERPRINT_BYTES - len(self._head)]
            self._tail = (self._tail + take)[-FINGERPRINT_BYTES:]
            self._done += len(take)
        return True

    def _ends(self, pos: int) -> tuple[bytes, bytes] | None:
        """The first MiB and the MiB before ``pos``; None when the input is shorter."""
        if self.gzip:
            if not self._advance(pos):
                return None
            return self._head, self._tail
        if os.path.getsize(self.path) < pos:
            return None
        with open(self.path, "rb") as f:
            head = os.pread(f.fileno(), min(pos, FINGERPRINT_BYTES), 0)
            start = max(0, pos - FINGERPRINT_BYTES)
            return head, os.pread(f.fileno(), pos - start, start)

    def state(self, pos: int) -> dict[str, Any]:
        ends = self._ends(pos)
        if ends is None:  # the source read up to pos: only a file changed under us gets here
            raise ParseError(self.path, None, "shorter than the position read so far: the file "
                             "changed during the run")
        return {"size": os.path.getsize(self.path), "gzip": self.gzip,
                "head_sha256": hashlib.sha256(ends[0]).hexdigest(),
                "tail_sha256": hashlib.sha256(ends[1]).hexdigest()}

    def verify(self, saved: dict[str, Any], pos: int) -> str | None:
        """Why the input is not the one ``saved`` describes up to ``pos``; None when it is."""
        ends = self._ends(pos)
        if ends is None:
            return (f"it is shorter ({os.path.getsize(self.path):,} bytes on disk) than the "
                    f"checkpoint's position ({pos:,} bytes"
                    + (" decompressed" if self.gzip else "") + ")")
        if hashlib.sha256(ends[0]).hexdigest() != saved.get("head_sha256"):
            return "its first MiB differs"
        if hashlib.sha256(ends[1]).hexdigest() != saved.get("tail_sha256"):
            return f"the MiB before the checkpoint's position ({pos:,} bytes) differs"
        return None

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def _read_head(path: Path, limit: int) -> tuple[bytes, bool]:
    """First ``limit`` decompressed bytes and whether that is the whole stream."""
    stream = _ByteStream(path, min(limit, DEFAULT_CHUNK_BYTES))
    parts, size, complete = [], 0, False
    try:
        while size < limit:
            chunk = stream.read()
            if not chunk:
                complete = True
                break
            parts.append(chunk)
            size += len(chunk)
    except _Truncated:
        if not parts:
            raise ParseError(path, 1, "truncated gzip stream") from None
    except ParseError as exc:  # corrupt compressed data within the head
        raise _after_line(exc, sum(p.count(b"\n") for p in parts)) from None
    finally:
        stream.close()
    return b"".join(parts), complete


def _read_spread(path: Path) -> list[bytes]:
    """``SPREAD_BLOCKS`` blocks of a plain file longer than its head, evenly spaced from its
    start to its end and cut to whole lines: the type sample's rows from all of a log (a
    gzip file has none: they would cost a pass over it)."""
    with open(path, "rb") as f:
        if f.read(2) == GZIP_MAGIC:
            return []
        size = f.seek(0, os.SEEK_END)
        if size <= HEAD_BYTES:  # the head holds it all
            return []
        gap = (size - SPREAD_BLOCK_BYTES) // SPREAD_BLOCKS  # more than a block: no overlaps
        blocks = []
        for i in range(1, SPREAD_BLOCKS + 1):  # the first at 1/16 of the way: the head's
            f.seek(i * gap)                      # first rows are the sample's other half
            block = f.read(SPREAD_BLOCK_BYTES)
            first, last = block.find(b"\n"), block.rfind(b"\n")
            if 0 <= first < last:  # the lines the block holds whole
                blocks.append(block[first + 1 : last + 1])
        return blocks


def _after_line(exc: ParseError, lines: int) -> ParseError:
    """A stream error that happened after ``lines`` intact lines, saying so."""
    return ParseError(exc.path, None, f"{exc.reason}, after line {lines}")


class FileSource:
    """A click-log file as a stream of encoded :class:`~streamfusion.features.Batch`.

    Built by :func:`open_source`. ``position()`` is the offset of the next unread line in the
    decompressed stream plus the counters; ``seek(position)`` re-opens the file and skips to
    it. The encoder's count table is not part of the position: a resume restores it with
    ``source.encoder.load_state_dict`` from the checkpoint.

    Examples
    --------
    >>> with open_source("train.csv.gz") as src:          # doctest: +SKIP
    ...     while (batch := src.next_batch(4096)) is not None:
    ...         print(len(batch), batch.indices.shape, src.position()["line"])
    """

    def __init__(self, path: str | os.PathLike, encoder: Encoder, on_error: str = "fail",
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        if on_error not in ("fail", "skip"):
            raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be positive")
        self.path = Path(path)
        self.encoder = encoder
        self.schema: Schema = encoder.schema
        self.on_error = on_error
        self.chunk_bytes = int(chunk_bytes)
        self.skipped_rows = 0
        self.rows = 0
        self.truncated = False
        self._stream: _ByteStream | None = None
        self._open(0, b"")
        if self.schema.header:
            self._skip_header()

    # ------------------------------------------------------------------ buffering
    def _open(self, skip: int, rest: bytes) -> None:
        self.close()
        self._stream = _ByteStream(self.path, self.chunk_bytes)
        rest = self._stream.skip(skip) if skip else rest
        # one reused buffer: chunks are read into it, so no per-chunk allocation or join
        self._buf = bytearray(max(2 * self.chunk_bytes, len(rest) + self.chunk_bytes))
        self._buf[:len(rest)] = rest
        self._len = len(rest)  # valid bytes in self._buf
        self._base = skip  # stream offset of self._buf[0]
        self._off = 0
        self._end = 0  # self._buf[:self._end] holds whole lines only
        self._eof = False
        self._tail_reported = False
        self._state = new_state()

    def _fill(self) -> None:
        """Drop consumed bytes and read until the buffer holds at least one whole line."""
        buf, rest = self._buf, self._len - self._off
        if rest:
            buf[:rest] = buf[self._off:self._len]  # the partial last line moves to the front
        self._base += self._off
        self._off = 0
        self._len = rest
        scan_from = 0
        while True:
            if len(buf) - self._len < self.chunk_bytes:  # a line longer than a chunk
                if self._len > MAX_LINE_BYTES:
                    raise ParseError(self.path, int(self._state[ST_LINE]) + 1,
                                     f"line longer than {MAX_LINE_BYTES} bytes")
                buf.extend(bytes(self.chunk_bytes))
            try:
                with memoryview(buf) as mv:
                    got = self._stream.readinto(mv[self._len:self._len + self.chunk_bytes])
            except _Truncated:
                self.truncated = True
                got = 0
            except ParseError as exc:  # corrupt compressed data: say how far the rows got
                lines = int(self._state[ST_LINE]) + buf.count(b"\n", self._off, self._len)
                raise _after_line(exc, lines) from None
            if not got:
                self._eof = True
                # a last line without newline is a row, unless the gzip stream was cut in it
                self._end = (buf.rfind(b"\n", 0, self._len) + 1 if self.truncated
                             else self._len)
                return
            scan_from = self._len
            self._len += got
            nl = buf.rfind(b"\n", scan_from, self._len)
            if nl >= 0:
                self._end = nl + 1
                return

    def _skip_header(self) -> None:
        if self._off >= self._end:
            self._fill()
        nl = self._buf.find(b"\n", self._off, self._end)
        self._off = self._end if nl < 0 else nl + 1
        self._state[ST_LINE] = 1

    # ------------------------------------------------------------------ the source protocol
    def next_batch(self, max_rows: int) -> Batch | None:
        """Up to ``max_rows`` encoded rows; None at the end of the file.

        With ``on_error="fail"`` the first malformed row raises :class:`ParseError` (rows
        before it are returned first); with ``"skip"`` it is counted in ``skipped_rows``.
        """
        if max_rows < 1:
            raise ValueError("max_rows must be >= 1")
        if self._stream is None:
            raise ValueError(f"{self.path}: source is closed")
        enc, st = self.encoder, self._state
        out = enc.new_arrays(max_rows)
        n = 0
        while n < max_rows:
            if self._off >= self._end:
                if not self._eof:
                    self._fill()
                    continue
                if self.truncated and not self._tail_reported:
                    if self.on_error == "fail":
                        if n:
                            break
                        raise ParseError(self.path, int(st[ST_LINE]) + 1,
                                         "truncated gzip stream")
                    self._tail_reported = True
                    if self._buf[self._end:self._len].strip():
                        self.skipped_rows += 1
                    warnings.warn(f"{self.path}: truncated gzip stream; stopped at line "
                                  f"{int(st[ST_LINE])}", stacklevel=2)
                break
            got = enc.parse_into(self._buf, self._off, self._end, max_rows - n, out, n, st)
            n += got
            self._off = int(st[ST_POS])
            if st[ST_ERR]:
                if self.on_error == "fail":
                    if n:
                        break  # hand back the good rows; the next call raises
                    raise ParseError(self.path, int(st[ST_ERR_LINE]), enc.reason(st))
                self.skipped_rows += 1
                self._off = skip_error(st)
        if n == 0:
            return None
        self.rows += n
        return Batch(**{k: v[:n] for k, v in out.items()})

    def __iter__(self):
        while (batch := self.next_batch(8192)) is not None:
            yield batch

    @property
    def out_of_order(self) -> int:
        """Rows whose time was below the largest time seen before them (never fatal)."""
        return int(self._state[ST_OOO])

    def position(self) -> dict:
        """Where the next unread line starts, plus the counters (JSON-serialisable)."""
        st = self._state
        return {
            "version": POSITION_VERSION,
            "path": str(self.path),
            "format": self.schema.name,
            "bytes": self._base + self._off,
            "line": int(st[ST_LINE]),
            "rows": self.rows,
            "skipped_rows": self.skipped_rows,
            "out_of_order": int(st[ST_OOO]),
            "max_time": int(st[ST_MAX_TIME]),
        }

    def input_progress(self) -> tuple[int, int]:
        """``(done, size)``: bytes of the input file itself consumed up to the next unread
        line, and its size; for gzip, compressed bytes (the part of them behind the lines
        still buffered is estimated in proportion), so a progress bar can show percent done."""
        size = os.path.getsize(self.path)
        if self._stream is None:
            return size, size
        if not self._stream.gzip:
            return min(size, self._base + self._off + self._stream._bom), size
        made = self._base + self._len  # decompressed bytes produced so far
        done = self._stream.consumed() * (self._base + self._off) / made if made else 0
        return min(size, int(done)), size

    def seek(self, position: Mapping) -> None:
        """Re-open the file and continue at ``position`` (from :meth:`position`)."""
        try:
            if position["version"] != POSITION_VERSION:
                raise ValueError(f"position version {position['version']!r}")
            if position["format"] != self.schema.name:
                raise ValueError(f"position is for format {position['format']!r}, this "
                                 f"source is {self.schema.name!r}")
            nbytes, line = int(position["bytes"]), int(position["line"])
            counters = (int(position["rows"]), int(position["skipped_rows"]),
                        int(position["out_of_order"]), int(position["max_time"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a source position: {exc}") from None
        if nbytes < 0 or line < 0:
            raise ValueError("negative position")
        self._open(nbytes, b"")
        self.rows, self.skipped_rows = counters[0], counters[1]
        self._state[ST_LINE] = line
        self._state[ST_OOO] = counters[2]
        self._state[ST_MAX_TIME] = counters[3]
        self.truncated = False

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"FileSource({str(self.path)!r}, format={self.schema.name!r}, "
                f"F={self.encoder.F}, T={self.encoder.T})")


def open_source(path: str | os.PathLike, format: str = "auto", label: str | None = None,
                types: Mapping[str, str] | None = None, bits: int = 20, seed: int = 0,
                on_error: str = "fail", chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                count_bits: int = DEFAULT_COUNT_BITS, delimiter: str | None = None,
                max_features: int = DEFAULT_MAX_FEATURES, dense_features: int | None = None,
                sample_rows: int = DEFAULT_SAMPLE_ROWS,
                encoder: Encoder | None = None) -> FileSource:
    """Open a click log as a :class:`FileSource`.

    Parameters
    ----------
    path : path-like
        Plain or gzip-compressed (recognised by its magic bytes) text file.
    format : str
        ``"auto"`` (Avazu, Criteo, libsvm/libfm or libffm from the first lines), ``"avazu"``,
        ``"criteo"``, ``"csv"``, ``"libsvm"``, ``"libfm"`` (libFM's
        ``label idx:val``, the libsvm syntax) or ``"libffm"`` (``label field:idx:val``).
    label, types, delimiter, sample_rows
        CSV: the label column (None: found by its name,
        :func:`~streamfusion.data.schema.guess_label`), kind overrides ``{"col": "num" |
        "cat" | "time" | "skip"}``, the separator (None: found from the first lines,
        :func:`~streamfusion.data.schema.sniff_delimiter`) and how many rows the type
        inference reads (see :func:`~streamfusion.data.schema.infer_csv_schema`). ``types``
        also applies to the Avazu / Criteo schemas.
    bits, seed, count_bits
        Hashing config of a new :class:`Encoder` (ignored when ``encoder`` is given).
    on_error : str
        ``"fail"``: the first malformed row raises ParseError; ``"skip"``: count and go on.
    chunk_bytes : int
        Read size; memory is bounded by it.
    max_features, dense_features
        libsvm / libfm / libffm: learner slots per row (F), and the trees' columns: feature
        ids ``0..dense_features-1``, or with None (default) the ids chosen from the sample
        (:func:`~streamfusion.data.schema.svm_dense_ids`).
    encoder : Encoder, optional
        Reuse an encoder (its schema, config and counts), e.g. one restored from a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    head, complete = _read_head(path, HEAD_BYTES)
    if not head.strip():
        raise ParseError(path, None, "empty file")
    if encoder is None:
        try:
            schema = detect_schema(head, complete, format, label, types, delimiter,
                                   max_features, dense_features, sample_rows,
                                   lambda: [] if complete else _read_spread(path))
        except ValueError as exc:
            raise ParseError(path, 1, str(exc)) from None
        if label is None and schema.name == "csv":
            warnings.warn(f"{path}: the label column is {schema.label!r} (by its name and its 0/1 "
                          "or true/false values; --label names another)", stacklevel=2)
        encoder = Encoder(schema, bits=bits, seed=seed, count_bits=count_bits)
    if encoder.schema.header:
        _check_header(path, head, encoder.schema)
    return FileSource(path, encoder, on_error, chunk_bytes)


def log_schema(path: str | os.PathLike, **kwargs) -> Schema:
    """The schema ``open_source(path, **kwargs)`` reads the log with (detection, inference,
    ``types``), without reading its events."""
    with open_source(path, **kwargs) as src:
        return src.schema


def _check_header(path: Path, head: bytes, schema: Schema) -> None:
    first = head.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        names = split_cells(first.decode("utf-8"), schema.delimiter)
    except UnicodeDecodeError:
        raise ParseError(path, 1, "non-UTF-8 bytes in the header") from None
    except csv.Error as exc:
        raise ParseError(path, 1, f"bad quoting in the header ({exc})") from None
    want = [c.name for c in schema.columns]
    if names != want:
        raise ParseError(path, 1, f"header does not match the {schema.name} schema: got "
                         f"{len(names)} columns {names[:4]}..., want {want[:4]}...")


def read_all(path: str | os.PathLike, batch_rows: int = 65536, **kwargs) -> Batch:
    """Read a whole (small) file into one Batch: tests, notebooks, offline reproduce."""
    with open_source(path, **kwargs) as src:
        batches = list(iter(lambda: src.next_batch(batch_rows), None))
        if not batches:
            return Batch(**{k: v[:0] for k, v in src.encoder.new_arrays(0).items()})
        return Batch.concat(batches)


__all__ = ["FileSource", "ParseError", "log_schema", "open_source", "read_all"]
