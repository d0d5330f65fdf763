"""Kafka messages -> encoded Batch, fast: JSON events become file lines for the C tokenizer.

``Encoder.encode_records`` is the reference path (any value types, exact reasons); it builds
each line cell by cell in Python. Here the common case, every field a string as ``produce``
sends it, is joined into a line in one C call per event and the whole mini-batch goes through
``Encoder.parse_into`` at once. Events off that path (numbers, nulls, a delimiter inside a
value, anything invalid) take the reference path, so both encode a record identically.

Two tiers: a mini-batch whose events are *all* on the fast path is checked with a few
whole-batch operations (types, lengths, delimiter and newline counts of the joined buffer)
instead of per-event Python tests, about 2 us per event less; any batch that fails one of
those checks is encoded event by event, where invalid messages get their exact reasons.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from streamfusion.data.encoder import ST_ERR, ST_ERR_LINE, ST_ERR_NEXT, ST_LINE, ST_POS, Encoder
from streamfusion.data.encoder import new_state as new_parse_state
from streamfusion.features import Batch
from streamfusion.kafka.messages import MAX_ID_CHARS, MAX_MESSAGE_BYTES, Invalid, parse_event

try:  # several times faster than json on click events; optional
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

_BAD_LINE_CHARS = ("\n", "\r", '"')  # would change how the tokenizer splits the line
_CLICK_TYPES = {type(None), int}
_CLICK_VALUES = {None, 0, 1}  # with _CLICK_TYPES: True / 1.0 (equal to 1) are not clicks here


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


class KafkaEncoder:
    """Validate and encode JSON events with an ``Encoder``.

    ``encode`` = ``parse(decode(values))``: ``decode`` (JSON, validation, lines; Python) uses
    no encoder state, so it may run for one batch while ``parse`` (the C tokenizer, which
    advances the count tables) runs for the batch before it on another thread.

    Parameters
    ----------
    encoder : Encoder
        The stream's encoder (schema, hashing, count tables); it is used, not copied.

    Examples
    --------
    >>> from streamfusion.data.schema import avazu_schema
    >>> enc = KafkaEncoder(Encoder(avazu_schema(), bits=16))
    >>> out = enc.encode([b'{"id": "a"}', b"{oops"])
    >>> [reason.split(":")[0] for _, reason in out.rejects]
    ['missing-field', 'not-json']
    """

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        schema = encoder.schema
        self.delim = schema.delimiter
        self.fields = [c.name for c in schema.columns if c.kind not in ("skip", "label")]
        kinds = [c.kind for c in schema.columns]
        lead = 0
        while lead < len(kinds) and kinds[lead] in ("skip", "label"):
            lead += 1
        # fast path when the id / label columns come first (Avazu, Criteo): prefix + join
        self._prefix = self.delim * lead if all(
            k not in ("skip", "label") for k in kinds[lead:]) else None
        self._get = itemgetter(*self.fields) if len(self.fields) > 1 else None
        self._ncols = len(kinds)

    def _line(self, obj: dict) -> str | None:
        """The file line of an all-strings event, or None when it needs the reference path."""
        if self._prefix is None or self._get is None:
            return None
        try:
            line = self._prefix + self.delim.join(self._get(obj))
        except (KeyError, TypeError):
            return None
        if line.count(self.delim) != self._ncols - 1:
            return None
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
        """
        if values and self._prefix is not None and self._get is not None:
            decoded = self._decode_batch(values)
            if decoded is not None:
                return decoded
        return self.decode_each(values)

    def _decode_batch(self, values: list[bytes | None]) -> Decoded | None:
        """The whole batch on the fast path, or None when any event is off it."""
        get, join = self._get, self.delim.join
        lines: list[str] = []
        ids: list = []
        clicks: list = []
        add_line, add_id, add_click = lines.append, ids.append, clicks.append
        try:
            if max(map(len, values)) > MAX_MESSAGE_BYTES:  # (a None value: TypeError)
                return None
            # one dict alive at a time: keeping a batch of them costs ~1 us per event more
            for obj in map(_loads, values):
                add_line(join(get(obj)))
                add_id(obj["id"])
                add_click(obj.get("click"))
            # ids: non-empty strings of at most MAX_ID_CHARS (ints take the reference path)
            if (set(map(type, ids)) != {str} or min(map(len, ids)) == 0
                    or max(map(len, ids)) > MAX_ID_CHARS):
                return None
            if not (set(map(type, clicks)) <= _CLICK_TYPES and set(clicks) <= _CLICK_VALUES):
                return None
        except (ValueError, TypeError, KeyError, AttributeError):
            return None  # not JSON, not an object, a missing or non-string field, ...
        prefix = self._prefix
        text = prefix + ("\n" + prefix).join(lines) + "\n"
        n = len(lines)
        # every line has exactly ncols - 1 delimiters and no newline of its own: no value
        # holds the delimiter or a line break, so line i is message i
        if (text.count(self.delim) != n * (self._ncols - 1) or text.count("\n") != n
                or '"' in text or "\r" in text):
            return None
        try:
            buf = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (json.loads, unlike orjson, lets it by)
            return None
        y = np.asarray(clicks, dtype=np.float32)  # None -> NaN
        return Decoded([_Run(np.arange(n, dtype=np.int64), ids, y, buf)], [])

    def decode_each(self, values: list[bytes | None]) -> Decoded:
        """``decode`` event by event: exact reasons for every invalid message.

        Runs of fast-path lines and runs of reference-path records alternate, in message
        order.
        """
        rejects: list[tuple[int, str]] = []
        # runs of (fast path?, message positions, ids, clicks, lines or records)
        runs: list[tuple[bool, list[int], list, list[float], list]] = []
        nan = float("nan")
        for i, value in enumerate(values):
            obj = None
            if value is not None and len(value) <= MAX_MESSAGE_BYTES:
                try:
                    obj = _loads(value)
                except ValueError:
                    obj = None
            if type(obj) is dict:
                ident = obj.get("id")
                click = obj.get("click", None)
                if (type(ident) is str and 0 < len(ident) <= MAX_ID_CHARS) and (
                        click is None or (type(click) is int and click in (0, 1))):
                    line = self._line(obj)
                    if line is not None:
                        if not runs or not runs[-1][0]:
                            runs.append((True, [], [], [], []))
                        run = runs[-1]
                        run[1].append(i)
                        run[2].append(ident)
                        run[3].append(nan if click is None else float(click))
                        run[4].append(line)
                        continue
            # reference path: exact validation and reasons
            try:
                ident, record, click = parse_event(value, self.fields)
            except Invalid as exc:
                rejects.append((i, exc.header))
                continue
            if not runs or runs[-1][0]:
                runs.append((False, [], [], [], []))
            run = runs[-1]
            run[1].append(i)
            run[2].append(ident)
            run[3].append(nan if click is None else float(click))
            run[4].append(record)
        out = []
        for fast, msg, ids, clicks, items in runs:
            y = np.asarray(clicks, dtype=np.float32)
            if fast:
                out.append(_Run(np.asarray(msg, dtype=np.int64), ids, y,
                                ("\n".join(items) + "\n").encode("utf-8")))
            else:
                out.append(_Run(np.asarray(msg, dtype=np.int64), ids, y, None, items))
        return Decoded(out, rejects)

    def parse(self, decoded: Decoded) -> Encoded:
        """Encode decoded runs with the encoder (its count tables advance), in order."""
        rejects = list(decoded.rejects)
        parts: list[Batch] = []
        index: list[np.ndarray] = []
        for run in decoded.runs:
            if run.records is None:
                batch, ok, errors = self._parse_lines(run.lines, len(run.ids))
            else:
                batch, errors = self.encoder.encode_records(run.records)
                ok = np.asarray(batch.line, dtype=np.int64)  # positions in the run
            rejects += [(int(run.msg[j]), f"encode: {reason}") for j, reason in errors]
            batch.y = run.y[ok]
            batch.ids = run.ids if len(ok) == len(run.ids) else [run.ids[j] for j in ok]
            parts.append(batch)
            index.append(run.msg[ok])
        if not parts:
            empty = self.encoder.new_arrays(0)
            return Encoded(Batch(**empty, ids=[]), np.zeros(0, dtype=np.int64), rejects)
        batch = parts[0] if len(parts) == 1 else Batch.concat(parts)
        rejects.sort()
        return Encoded(batch, np.concatenate(index), rejects)

    def _parse_lines(self, buf: bytes, n: int) -> tuple[Batch, np.ndarray, list[tuple[int, str]]]:
        """Run the C tokenizer over ``n`` newline-terminated lines; returns rows, their line
        positions, errors."""
        out = self.encoder.new_arrays(n)
        state = new_parse_state()
        rows = start = 0
        errors: list[tuple[int, str]] = []
        while start < len(buf):
            got = self.encoder.parse_into(buf, start, len(buf), n - rows, out, rows, state,
                                          label_missing_ok=True)
            rows += got
            if state[ST_ERR]:
                errors.append((int(state[ST_ERR_LINE]) - 1, self.encoder.reason(state)))
                start = int(state[ST_ERR_NEXT])
                state[ST_LINE] = state[ST_ERR_LINE]
                state[ST_ERR] = 0
            else:
                start = int(state[ST_POS])
        ok = out["line"][:rows] - 1  # 1-based line numbers -> positions in the run
        batch = Batch(**{k: v[:rows] for k, v in out.items()})
        return batch, ok.astype(np.int64), errors
