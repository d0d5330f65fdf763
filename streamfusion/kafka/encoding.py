"""Kafka messages -> encoded Batch, fast: JSON events become file lines for the C tokenizer.

``Encoder.encode_records`` is the reference path (any value types, exact reasons); it builds
each line cell by cell in Python. Here the common case, every field a string as ``produce``
sends it, is joined into a line in one C call per event and the whole mini-batch goes through
``Encoder.parse_into`` at once. Events off that path (numbers, nulls, a delimiter inside a
value, anything invalid) take the reference path, so both encode a record identically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from operator import itemgetter

import numpy as np

from streamfusion.data.encoder import ST_ERR, ST_ERR_LINE, ST_ERR_NEXT, ST_LINE, ST_POS, Encoder
from streamfusion.data.encoder import new_state as new_parse_state
from streamfusion.features import Batch
from streamfusion.kafka.messages import MAX_MESSAGE_BYTES, Invalid, parse_event

try:  # several times faster than json on click events; optional
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

_BAD_LINE_CHARS = ("\n", "\r", '"')  # would change how the tokenizer splits the line


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


class KafkaEncoder:
    """Validate and encode JSON events with an ``Encoder``.

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
        row by row, so the order matters): runs of fast-path lines and runs of reference-path
        records alternate.
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
                if (type(ident) is str and 0 < len(ident) <= 256) and (
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

        parts: list[Batch] = []
        index: list[np.ndarray] = []
        for fast, msg_list, ids, clicks, items in runs:
            msg = np.asarray(msg_list, dtype=np.int64)
            if fast:
                batch, ok, errors = self._parse_lines(items)
            else:
                batch, errors = self.encoder.encode_records(items)
                ok = np.asarray(batch.line, dtype=np.int64)  # positions in `items`
            rejects += [(int(msg[j]), f"encode: {reason}") for j, reason in errors]
            batch.y = np.asarray(clicks, dtype=np.float32)[ok]
            batch.ids = [ids[j] for j in ok]
            parts.append(batch)
            index.append(msg[ok])
        if not parts:
            empty = self.encoder.new_arrays(0)
            return Encoded(Batch(**empty, ids=[]), np.zeros(0, dtype=np.int64), rejects)
        batch = parts[0] if len(parts) == 1 else Batch.concat(parts)
        rejects.sort()
        return Encoded(batch, np.concatenate(index), rejects)

    def _parse_lines(self, lines: list[str]) -> tuple[Batch, np.ndarray, list[tuple[int, str]]]:
        """Run the C tokenizer over the lines; returns rows, their line positions, errors."""
        buf = ("\n".join(lines) + "\n").encode("utf-8")
        n = len(lines)
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
        ok = out["line"][:rows] - 1  # 1-based line numbers -> positions in `lines`
        batch = Batch(**{k: v[:rows] for k, v in out.items()})
        return batch, ok.astype(np.int64), errors
