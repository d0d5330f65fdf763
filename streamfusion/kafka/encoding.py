"""Kafka messages -> encoded Batch, fast: JSON events become file lines for the C tokenizer.

``Encoder.encode_records`` is the reference path (any value types, exact reasons); it builds
each line cell by cell in Python. Here the common case, a flat JSON object whose fields are
strings without escapes as ``produce`` sends them, is turned into a file line by a C decoder
(``_parse.json_events``, one nogil call per mini-batch: no Python dict, no per-event Python)
and the whole mini-batch goes through ``Encoder.parse_into`` at once.

The C decoder accepts only a strict subset of JSON; every other message (numbers, nulls,
escapes, a delimiter inside a value, unknown nested keys, anything invalid) goes through
``decode_each``'s per-message Python step, which is the reference: ``decode(values)`` always
equals ``decode_each(values)`` (same runs, lines, ids, clicks and rejects).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from streamfusion._parse import json_events
from streamfusion.data.encoder import Encoder
from streamfusion.features import Batch
from streamfusion.kafka.messages import (
    INTERNAL,
    MAX_ID_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_VALUE_CHARS,
    Invalid,
    field_limit,
    parse_event,
)

try:  # several times faster than json on click events; optional
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

_BAD_LINE_CHARS = ("\n", "\r", '"')  # would change how the tokenizer splits the line
_NAN = float("nan")
# keys the C decoder reads as the event's id and click, never as feature fields
_RESERVED_KEYS = ("id", "click")


@dataclass
class Encoded:
    """One mini-batch of valid events, and the messages that were not.

    Attributes
    ----------
    batch : Batch
        Encoded rows; ``y`` holds ``click`` (NaN when absent), ``ids`` the event ids.
    index : int64 array
        For each row, the position of its message in the input list.
    rejects : list of (int, str)
        Position of each invalid message and the reason (dead-letter ``error`` header).
    """

    batch: Batch
    index: np.ndarray
    rejects: list[tuple[int, str]]


@dataclass
class _Run:
    """Consecutive messages that encode the same way: tokenizer lines, or reference records."""

    msg: np.ndarray  # position of each message in the input list
    ids: list
    y: np.ndarray  # click, NaN when absent
    lines: bytes | None  # newline-terminated file lines (fast path)
    records: list | None = None  # validated records (reference path)


@dataclass
class Decoded:
    """A mini-batch validated and turned into lines or records, not yet encoded.

    Attributes
    ----------
    runs : list
        Consecutive messages on the same path, in message order.
    rejects : list of (int, str)
        Messages that are not valid events, with the reason.
    """

    runs: list[_Run]
    rejects: list[tuple[int, str]]


class _Runs:
    """Decoded messages grouped into runs of the same path, in message order."""

    def __init__(self) -> None:
        # (fast path?, message positions, ids, clicks, line bytes or records)
        self.runs: list[tuple[bool, list[int], list, list[float], list]] = []
        self.rejects: list[tuple[int, str]] = []

    def add(self, fast: bool, i: int, ident: str | int, click: float, item) -> None:
        if not self.runs or self.runs[-1][0] is not fast:
            self.runs.append((fast, [], [], [], []))
        run = self.runs[-1]
        run[1].append(i)
        run[2].append(ident)
        run[3].append(click)
        run[4].append(item)

    def decoded(self) -> Decoded:
        out = []
        for fast, msg, ids, clicks, items in self.runs:
            y = np.asarray(clicks, dtype=np.float32)
            pos = np.asarray(msg, dtype=np.int64)
            if fast:
                out.append(_Run(pos, ids, y, b"".join(items)))
            else:
                out.append(_Run(pos, ids, y, None, items))
        return Decoded(out, self.rejects)


class KafkaEncoder:
    """Validate and encode JSON events with an ``Encoder``.

    ``encode`` = ``parse(decode(values))``: ``decode`` (JSON, validation, lines; C, and Python
    for the messages C leaves) uses no encoder state, so it may run for one batch while
    ``parse`` (the C tokenizer, which advances the count tables) runs for the batch before it
    on another thread.

    Parameters
    ----------
    encoder : Encoder
        The stream's encoder (schema, hashing, count tables); it is used, not copied.

    Examples
    --------
    >>> from streamfusion.data.schema import avazu_schema
    >>> enc = KafkaEncoder(Encoder(avazu_schema(), bits=16))
    >>> out = enc.encode([b'{"id": "a", "hour": "x"}', b"{oops"])
    >>> [reason.split(":")[0] for _, reason in out.rejects]
    ['encode', 'not-json']
    """

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        schema = encoder.schema
        self.fields = list(schema.event_fields)
        self.svm = schema.is_svm
        self.delim = schema.delimiter
        index = {name: i for i, name in enumerate(self.fields)}
        # per column of a file line: the event field written there, or -1 (id, label: empty)
        self._layout = np.array([index.get(c.name, -1) if c.kind not in ("skip", "label")
                                 else -1 for c in schema.columns], dtype=np.int32)
        self._max_fields = field_limit(len(self.fields))
        self._spec = self._c_spec()

    def _c_spec(self) -> tuple | None:
        """The arguments of ``json_events`` after the values, or None when this schema's
        events cannot take the C decoder (libsvm-like lines, a multi-byte delimiter, a field
        named like a reserved key)."""
        delim = self.delim.encode("utf-8")
        if self.svm or len(delim) != 1 or any(name in _RESERVED_KEYS for name in self.fields):
            return None
        names = [name.encode("utf-8") for name in self.fields]
        offsets = np.zeros(len(names) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(b) for b in names])
        return (np.frombuffer(b"".join(names), dtype=np.uint8), offsets, delim[0],
                self._layout, MAX_MESSAGE_BYTES, MAX_ID_CHARS, self._max_fields,
                MAX_VALUE_CHARS)

    def _line(self, obj: dict) -> str | None:
        """The file line of an event whose fields are all strings (a missing one is an empty
        cell), or None when it needs the reference path."""
        if self.svm:
            tokens = obj.get(self.fields[0], "")
            if type(tokens) is not str or "\n" in tokens or "\r" in tokens \
                    or len(tokens) > MAX_VALUE_CHARS:
                return None
            return f"0 {tokens}"  # a placeholder label: the event's click replaces it
        cells = []
        for f in self._layout.tolist():
            v = obj.get(self.fields[f], "") if f >= 0 else ""
            if type(v) is not str or self.delim in v or len(v) > MAX_VALUE_CHARS:
                return None
            cells.append(v)
        line = self.delim.join(cells)
        for ch in _BAD_LINE_CHARS:
            if ch in line:
                return None
        return line

    def encode(self, values: list[bytes | None]) -> Encoded:
        """Encode message values; invalid ones come back in ``rejects`` with a reason.

        Rows are encoded in message order (the count tables behind the tree features evolve
        row by row, so the order matters). Same as ``parse(decode(values))``.
        """
        return self.parse(self.decode(values))

    def encode_each(self, values: list[bytes | None]) -> Encoded:
        """``encode`` event by event (no whole-batch tier); the result is the same."""
        return self.parse(self.decode_each(values))

    def decode(self, values: list[bytes | None]) -> Decoded:
        """Validate the JSON of the messages and build their lines; no encoder state is used
        or changed, so this may run while another thread encodes and scores an earlier batch.

        The C decoder takes every message it can; the others (exact reasons, numbers, nulls,
        escapes, ...) go through ``decode_each``'s per-message step, so the result is always
        ``decode_each(values)``.
        """
        if not values or self._spec is None:
            return self.decode_each(values)
        lines, ends, ids, y, on = json_events(values, *self._spec)
        if on.all():
            return Decoded([_Run(np.arange(len(values), dtype=np.int64), ids, y, lines)], [])
        out = _Runs()
        clicks = y.tolist()
        start = 0
        for i, (end, fast) in enumerate(zip(ends.tolist(), on.tolist(), strict=True)):
            if fast:
                out.add(True, i, ids[i], clicks[i], lines[start:end])
                start = end
            else:
                self._decode_one(i, values[i], out)
        return out.decoded()

    def decode_each(self, values: list[bytes | None]) -> Decoded:
        """``decode`` event by event in Python: the reference, with exact reasons for every
        invalid message.

        Runs of fast-path lines and runs of reference-path records alternate, in message
        order.
        """
        out = _Runs()
        for i, value in enumerate(values):
            self._decode_one(i, value, out)
        return out.decoded()

    def _decode_one(self, i: int, value: bytes | None, out: _Runs) -> None:
        """Message ``i``: a line, a validated record, or a reject, added to ``out``. Whatever
        fails here fails for this message alone: it is rejected with the reason."""
        try:
            self._decode_checked(i, value, out)
        except Invalid as exc:
            out.rejects.append((i, exc.header))
        except Exception as exc:  # noqa: BLE001 - one message never stops the daemon
            out.rejects.append((i, internal_reason(exc)))

    def _decode_checked(self, i: int, value: bytes | None, out: _Runs) -> None:
        obj = None
        if type(value) is bytes and len(value) <= MAX_MESSAGE_BYTES:
            try:
                obj = _loads(value)
            except ValueError:
                obj = None
        if type(obj) is dict and len(obj) <= self._max_fields and all(
                len(k) <= MAX_VALUE_CHARS and (type(v) is not str or len(v) <= MAX_VALUE_CHARS)
                for k, v in obj.items()):
            ident = obj.get("id")
            click = obj.get("click", None)
            if (type(ident) is str and 0 < len(ident) <= MAX_ID_CHARS) and (
                    click is None or (type(click) is int and click in (0, 1))):
                line = self._line(obj)
                if line is not None:
                    out.add(True, i, ident, _NAN if click is None else float(click),
                            (line + "\n").encode("utf-8"))
                    return
        # reference path: exact validation and reasons (Invalid)
        ident, record, click = parse_event(value, self.fields)
        out.add(False, i, ident, _NAN if click is None else float(click), record)

    def parse(self, decoded: Decoded) -> Encoded:
        """Encode decoded runs with the encoder (its count tables advance), in order."""
        rejects = list(decoded.rejects)
        parts: list[Batch] = []
        index: list[np.ndarray] = []
        for run in decoded.runs:
            try:
                batch, errors, ok = self._parse_run(run)
            except Exception:  # noqa: BLE001 - find the message that fails, reject it alone
                for one in _singles(run):
                    try:
                        part = self._parse_run(one)
                    except Exception as exc:  # noqa: BLE001
                        rejects.append((int(one.msg[0]), internal_reason(exc)))
                        continue
                    self._add_run(one, *part, parts, index, rejects)
                continue
            self._add_run(run, batch, errors, ok, parts, index, rejects)
        if not parts:
            empty = self.encoder.new_arrays(0)
            return Encoded(Batch(**empty, ids=[]), np.zeros(0, dtype=np.int64), rejects)
        batch = parts[0] if len(parts) == 1 else Batch.concat(parts)
        rejects.sort()
        return Encoded(batch, np.concatenate(index), rejects)

    def _parse_run(self, run: _Run) -> tuple[Batch, list, np.ndarray]:
        if run.records is None:
            batch, errors = self.encoder.parse_lines(run.lines, len(run.ids))
            ok = batch.line - 1  # 1-based lines -> positions in the run
        else:
            batch, errors = self.encoder.encode_records(run.records)
            ok = batch.line  # positions in the run
        return batch, errors, ok

    @staticmethod
    def _add_run(run: _Run, batch: Batch, errors: list, ok: np.ndarray, parts: list,
                 index: list, rejects: list) -> None:
        rejects += [(int(run.msg[j]), f"encode: {reason}") for j, reason in errors]
        batch.y = run.y[ok]
        batch.ids = run.ids if len(ok) == len(run.ids) else [run.ids[j] for j in ok]
        parts.append(batch)
        index.append(run.msg[ok])


def _singles(run: _Run) -> list[_Run]:
    """A run split into runs of one message each."""
    out = []
    if run.records is None:
        lines = run.lines.split(b"\n")[:-1]
    for j in range(len(run.ids)):
        out.append(_Run(run.msg[j:j + 1], run.ids[j:j + 1], run.y[j:j + 1],
                        None if run.records is not None else lines[j] + b"\n",
                        None if run.records is None else run.records[j:j + 1]))
    return out


def internal_reason(exc: BaseException) -> str:
    """The dead-letter reason of an unexpected failure while handling one message."""
    return f"{INTERNAL}: {type(exc).__name__}: {str(exc)[:200]}"
