"""The Encoder: a schema compiled for the C pass, the hashing config and the count table.

File readers and the Kafka path both end in :meth:`Encoder.parse_into` over lines of the same
format, so a record encodes identically whichever way it arrives.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from streamfusion import _parse
from streamfusion.data.schema import DENSE_MODES, KINDS, Schema
from streamfusion.features import Batch

# error codes of parse_core.h -> reason texts
REASONS = {
    1: "wrong column count",
    2: "not a finite number",
    3: "bad label (must be 0, 1, true or false)",
    4: "bad hour (want YYMMDDHH)",
    5: "non-UTF-8 bytes",
    6: "more features than the row slots",
    7: "bad feature token",
    8: "bad quoting (a quoted field ends with a quote right before the next comma; quoted "
       "line breaks are not supported)",
}
# slots of the int64 state array (parse_core.h SF_ST_*)
ST_POS, ST_LINE, ST_ERR, ST_ERR_LINE, ST_ERR_NEXT, ST_MAX_TIME, ST_OOO, ST_ERR_COL = range(8)
# padding slots of libsvm rows hash this reserved field index (never a real field)
PAD_FIELD = 1 << 30
DEFAULT_COUNT_BITS = 20  # 4 MiB of int32 counts: fixed whatever the number of categories
ENCODER_VERSION = 2  # 2: count features are shares of the rows seen


def skip_error(state: np.ndarray) -> int:
    """Clear the malformed row recorded in ``state``; returns where parsing goes on (the line
    after it), so every parse loop resumes the same way."""
    state[ST_LINE] = state[ST_ERR_LINE]
    state[ST_ERR] = 0
    return int(state[ST_ERR_NEXT])


def new_state() -> np.ndarray:
    """A fresh parse state: line 0, no time seen yet."""
    st = np.zeros(_parse.STATE_SIZE, dtype=np.int64)
    st[ST_MAX_TIME] = -1
    return st


class Encoder:
    """Schema + hashing config + count table: turns lines or records into Batches.

    Parameters
    ----------
    schema : Schema
        What each column becomes (see :mod:`streamfusion.data.schema`).
    bits : int
        The learner's shared table has ``2**bits`` rows.
    seed : int
        Derives every per-field salt.
    count_bits : int
        The tree features' frequency table has ``2**count_bits`` int32 slots.

    Examples
    --------
    >>> from streamfusion.data.schema import avazu_schema
    >>> enc = Encoder(avazu_schema(), bits=18)
    >>> batch, errors = enc.encode_records([{"hour": 14102100, "C1": 1005}, {"hour": "x"}])
    >>> len(batch), errors  # a missing column is a missing value, a bad one an error
    (1, [(1, "bad hour (want YYMMDDHH) in column 'hour'")])
    """

    def __init__(self, schema: Schema, bits: int = 20, seed: int = 0,
                 count_bits: int = DEFAULT_COUNT_BITS) -> None:
        if not 1 <= bits <= 31:
            raise ValueError(f"bits must be in [1, 31], got {bits}")
        if not 1 <= count_bits <= 30:
            raise ValueError(f"count_bits must be in [1, 30], got {count_bits}")
        if not 0 <= seed < 2**64:
            raise ValueError("seed must be in [0, 2**64)")
        self.schema = schema
        self.bits = int(bits)
        self.seed = int(seed)
        self.count_bits = int(count_bits)
        self.counts = np.zeros(1 << count_bits, dtype=np.int32)
        self.seen = np.zeros(1, dtype=np.int64)  # rows encoded: the denominator of the shares
        # per input column: numeric cells that were not numbers, read as missing (lenient)
        self.unparsed = np.zeros(len(schema.columns), dtype=np.int64)
        self._warned = np.zeros(len(schema.columns), dtype=bool)
        self.F = len(schema.field_names)
        self.T = len(schema.dense_names)
        self._compile()

    def _compile(self) -> None:
        s = self.schema
        kind, field, dslot, dmode = [], [], [], []
        f = d = 0
        for c in s.columns:
            k = KINDS[c.kind]
            kind.append(k)
            dmode.append(DENSE_MODES[c.dense])
            if c.kind in ("num", "cat", "hour", "time"):
                field.append(f)
                has_dense = c.kind != "cat" or c.dense != "none"
                dslot.append(d if has_dense else -1)
                # hour, time: hour of day and weekday; num: the value and its bin (learner)
                f += 1 if c.kind == "cat" else 2
                d += (2 if c.kind in ("hour", "time") else 1) if has_dense else 0
            else:
                field.append(-1)
                dslot.append(-1)
        assert s.is_svm or (f == self.F and d == self.T)
        self._kind = np.array(kind, dtype=np.int32)
        self._field = np.array(field, dtype=np.int32)
        self._dslot = np.array(dslot, dtype=np.int32)
        self._dmode = np.array(dmode, dtype=np.int32)
        self._lenient = np.array([c.lenient for c in s.columns], dtype=np.int32)
        self._dense_ids = np.array(s.dense_ids, dtype=np.int64)
        self._salt = np.array([_parse.field_salt(i, self.seed) for i in range(self.F)],
                              dtype=np.uint64)
        self._num_row = np.array([_parse.hash_value(i, b"", self.bits, self.seed)
                                  for i in range(self.F)], dtype=np.int32)
        self._delim = ord(s.delimiter)
        self.pad_row = _parse.hash_value(PAD_FIELD, b"", self.bits, self.seed)

    # ------------------------------------------------------------------ arrays and parsing
    def new_arrays(self, n: int) -> dict[str, np.ndarray]:
        """Uninitialised output arrays for ``n`` rows."""
        return {
            "indices": np.empty((n, self.F), dtype=np.int32),
            "values": np.empty((n, self.F), dtype=np.float32),
            "dense": np.empty((n, self.T), dtype=np.float32),
            "y": np.empty(n, dtype=np.float32),
            "line": np.empty(n, dtype=np.int64),
            "time": np.empty(n, dtype=np.int64),
        }

    def parse_into(self, buf: bytes, start: int, end: int, max_rows: int,
                   out: Mapping[str, np.ndarray], offset: int, state: np.ndarray,
                   label_missing_ok: bool = False) -> int:
        """Encode whole lines of ``buf[start:end]`` into rows ``offset..`` of ``out``.

        Stops at the first malformed row (``state[ST_ERR] != 0``), after ``max_rows`` rows or
        at ``end``; ``state[ST_POS]`` is where it stopped. Returns the rows written.
        """
        o = {k: v[offset:] for k, v in out.items()}
        if self.schema.is_svm:
            return _parse.parse_svm(buf, start, end, max_rows, self.bits, self.seed,
                                    self.schema.field_aware, self._dense_ids, self.pad_row,
                                    o["indices"], o["values"], o["dense"], o["y"], o["line"],
                                    o["time"], state)
        rows = _parse.parse_delim(
            self._kind, self._field, self._dslot, self._dmode, self._salt, self._num_row,
            self._lenient, self.counts, self.seen, self.unparsed, self._delim, self.bits,
            self.count_bits, label_missing_ok, buf, start, end, max_rows, o["indices"],
            o["values"], o["dense"], o["y"], o["line"], o["time"], state)
        if rows and self.unparsed.any():
            self._warn_unparsed()
        return rows

    def parse_lines(self, buf: bytes, n: int) -> tuple[Batch, list[tuple[int, str]]]:
        """Encode the ``n`` newline-terminated lines of ``buf``, going on after bad ones.

        The one parse loop of in-memory lines (Kafka events, records). Returns the good rows
        (``line`` = each row's 1-based line in ``buf``; a missing label is NaN) and
        ``(line index, reason)`` of each bad one.
        """
        out = self.new_arrays(n)
        state = new_state()
        rows = start = 0
        errors: list[tuple[int, str]] = []
        while start < len(buf):
            rows += self.parse_into(buf, start, len(buf), n - rows, out, rows, state,
                                    label_missing_ok=True)
            if state[ST_ERR]:
                errors.append((int(state[ST_ERR_LINE]) - 1, self.reason(state)))
                start = skip_error(state)
            else:
                start = int(state[ST_POS])
        return Batch(**{k: v[:rows] for k, v in out.items()}), errors

    def _warn_unparsed(self) -> None:
        """Warn once per column about its first word read as a missing number."""
        new = (self.unparsed > 0) & ~self._warned
        for j in np.flatnonzero(new):
            name = self.schema.columns[j].name
            what = "times" if self.schema.columns[j].kind == "time" else "numbers"
            warnings.warn(f"column {name!r}: values that are not {what} are read as missing "
                          f"(counted in the report's unparsed_numbers; --types {name}=cat reads "
                          "the column as categories)", stacklevel=3)
        self._warned |= new

    def unparsed_numbers(self) -> dict[str, int]:
        """``{column: count}`` of the cells of lenient numeric and of time columns read as
        missing because they were not a number (a time); columns without any are left out."""
        return {self.schema.columns[j].name: int(self.unparsed[j])
                for j in np.flatnonzero(self.unparsed)}

    def reason(self, state: np.ndarray) -> str:
        """The message of the error recorded in ``state``."""
        code = int(state[ST_ERR])
        text = REASONS.get(code, f"error {code}")
        col = int(state[ST_ERR_COL])
        cols = self.schema.columns
        if code == 1:
            text += f" (got {col}, want {len(cols)})"
        elif code in (2, 3, 4, 8) and 0 <= col < len(cols):
            text += f" in column {cols[col].name!r}"
            if code == 2:
                text += (f" (--types {cols[col].name}=num reads such values as missing, "
                         f"--types {cols[col].name}=cat as categories)")
        elif code == 6:
            text += f" (--max-features {self.schema.max_features})"
        elif code == 7:
            text += (" (want field:idx:val: libffm)" if self.schema.field_aware
                     else " (want idx:val: libsvm / libfm; field:idx:val is --format libffm)")
        return text

    # ------------------------------------------------------------------ Kafka records
    def encode_records(self, records: Sequence[Mapping]) -> tuple[Batch, list[tuple[int, str]]]:
        """Encode dicts of raw fields (``Schema.event_fields``, the columns' own names) like
        file lines.

        The label column is optional (absent or None -> y NaN); skipped columns (ids) are
        ignored; a field that is absent or None is a missing value (libsvm-like schemas: the
        ``features`` string of ``idx:val`` tokens). A record with a value of the wrong type, a
        line break, or the delimiter of a tab-separated schema (comma-separated ones quote
        it, as a CSV file would) is returned in ``errors`` as ``(position, reason)`` and left
        out. Batch rows carry ``line`` = position in ``records`` and ``ids`` = each record's
        ``"id"``.
        """
        errors: list[tuple[int, str]] = []
        lines: list[bytes] = []
        kept: list[int] = []
        for pos, rec in enumerate(records):
            try:
                lines.append(self._record_line(rec))
                kept.append(pos)
            except ValueError as exc:
                errors.append((pos, str(exc)))
        buf = b"\n".join(lines) + b"\n" if lines else b""
        batch, bad = self.parse_lines(buf, len(lines))
        errors += [(kept[i], reason) for i, reason in bad]
        errors.sort()
        good = [kept[int(i) - 1] for i in batch.line]
        batch.line = np.asarray(good, dtype=np.int64)
        batch.ids = [records[p].get("id") for p in good]
        if self.schema.is_svm:  # placeholder labels (see _record_line)
            batch.y[[records[p].get(self.schema.label) is None for p in good]] = np.nan
        return batch, errors

    def _record_line(self, rec: Mapping) -> bytes:
        if not isinstance(rec, Mapping):
            raise ValueError(f"record is a {type(rec).__name__}, not a dict")
        if self.schema.is_svm:
            (name,) = self.schema.event_fields
            tokens = rec.get(name) or ""
            if not isinstance(tokens, str) or "\n" in tokens or "\r" in tokens:
                raise ValueError(f"field {name!r} must be a string of idx:val tokens")
            # no label: a placeholder 0 that encode_records turns back into NaN
            label = _cell("label", "label", rec.get(self.schema.label), " ") or "0"
            return f"{label} {tokens}".encode()
        delim = self.schema.delimiter
        cells = []
        for c in self.schema.columns:
            if c.kind == "skip":
                cells.append("")
                continue
            cells.append(_cell(c.name, c.kind, rec.get(c.name), delim))
        try:
            return delim.join(cells).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("value is not encodable as UTF-8") from None

    # ------------------------------------------------------------------ state protocol
    def state_dict(self) -> dict:
        """Hashing config, schema and count table (see the contracts' state protocol)."""
        return {
            "version": ENCODER_VERSION,
            "schema": self.schema.to_dict(),
            "bits": self.bits,
            "seed": self.seed,
            "count_bits": self.count_bits,
            "counts": self.counts.copy(),
            "seen": int(self.seen[0]),
            "unparsed": self.unparsed.copy(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the count table and the unparsed-number counts; the config must match this
        encoder's (else ValueError). A column already counted is not warned about again."""
        self._validate(state)
        self.counts[:] = state["counts"]
        self.seen[0] = state["seen"]
        self.unparsed[:] = state.get("unparsed", 0)  # absent from states that predate it
        self._warned[:] = self.unparsed > 0

    @classmethod
    def from_state_dict(cls, state: Mapping) -> Encoder:
        """A new encoder with the config and counts of ``state``."""
        if not isinstance(state, Mapping) or state.get("version") != ENCODER_VERSION:
            raise ValueError(f"encoder state: version {getattr(state, 'get', dict)('version')!r}"
                             f", expected {ENCODER_VERSION}")
        enc = cls(Schema.from_dict(state["schema"]), int(state["bits"]), int(state["seed"]),
                  int(state["count_bits"]))
        enc.load_state_dict(state)
        return enc

    def _validate(self, state: Mapping) -> None:
        if not isinstance(state, Mapping):
            raise ValueError("encoder state must be a dict")
        if state.get("version") != ENCODER_VERSION:
            raise ValueError(f"encoder state: version {state.get('version')!r}, expected "
                             f"{ENCODER_VERSION}")
        for key in ("bits", "seed", "count_bits"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"encoder state: {key}={state.get(key)!r}, this encoder has "
                                 f"{getattr(self, key)!r}")
        if Schema.from_dict(state["schema"]) != self.schema:
            raise ValueError("encoder state: schema differs from this encoder's")
        counts = state.get("counts")
        if (not isinstance(counts, np.ndarray) or counts.dtype != np.int32
                or counts.shape != self.counts.shape):
            raise ValueError(f"encoder state: counts must be int32 {self.counts.shape}")
        seen = state.get("seen")
        if not isinstance(seen, (int, np.integer)) or isinstance(seen, bool) or seen < 0:
            raise ValueError(f"encoder state: seen must be a non-negative int, got {seen!r}")
        unparsed = state.get("unparsed", self.unparsed)
        if (not isinstance(unparsed, np.ndarray) or unparsed.dtype != np.int64
                or unparsed.shape != self.unparsed.shape or (unparsed < 0).any()):
            raise ValueError(f"encoder state: unparsed must be non-negative int64 "
                             f"{self.unparsed.shape}")


def _cell(name: str, kind: str, v: object, delim: str) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        raise ValueError(f"wrong type for field {name!r}: bool")
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"non-finite value for field {name!r}")
        if kind == "num":
            return repr(v)
        if v.is_integer():  # 1005.0 for a code column means the code 1005
            return str(int(v))
        raise ValueError(f"wrong type for field {name!r}: non-integer float for a {kind} column")
    if isinstance(v, str):
        if "\n" in v or "\r" in v:
            raise ValueError(f"value of field {name!r} contains a line break")
        if delim == "," and (delim in v or v.startswith('"')):
            return '"' + v.replace('"', '""') + '"'  # as a quoting CSV writer stores it
        if delim in v:
            raise ValueError(f"value of field {name!r} contains the delimiter")
        return v
    raise ValueError(f"wrong type for field {name!r}: {type(v).__name__}")
