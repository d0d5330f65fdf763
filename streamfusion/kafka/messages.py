"""Validation of incoming Kafka messages: a parsed event, or the reason it is dead-lettered.

Input events are JSON objects with the raw fields of one log row under the dataset's column
names, an ``id`` and an optional ``click``; label messages are ``{"id", "click"}``. Anything
else gets a short machine-readable reason (the ``error`` header of the dead-letter copy).
"""

from __future__ import annotations

from typing import Any

import orjson

MAX_MESSAGE_BYTES = 64 * 1024  # a click event is < 2 KiB; far larger ones are garbage or abuse
MAX_ID_CHARS = 256  # ids key the label join: bound them so the join's memory stays bounded
# events and labels are flat objects; a little nesting is tolerated in keys we ignore, deeper
# is abuse (60,000 '[' once overflowed the parser's recursion)
MAX_DEPTH = 8
# a schema of a few hundred columns fits (the limit grows with the schema); a message of
# thousands of keys is abuse: each costs a dict entry before we can look at it
MAX_FIELDS = 1024
# a categorical value, a number or a libsvm-like feature list is far shorter: longer is garbage
MAX_VALUE_CHARS = 32 * 1024
DEAD_LETTER_HEADER = "error"

# Reasons (header values), stable strings that dashboards can count on.
OVERSIZED = "oversized"
NOT_UTF8 = "not-utf8"
NOT_JSON = "not-json"
NOT_OBJECT = "not-object"
MISSING_FIELD = "missing-field"
WRONG_TYPE = "wrong-type"
BAD_LABEL = "bad-label"
TOO_DEEP = "too-deep"
TOO_MANY_FIELDS = "too-many-fields"
TOO_LONG = "too-long"
INTERNAL = "internal"  # whatever else failed while handling the message (a bug of ours)


class Invalid(ValueError):
    """A message that cannot be used; ``reason`` is one of the constants above plus detail."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    @property
    def header(self) -> str:
        """The value of the dead-letter ``error`` header."""
        return str(self)


def too_deep(value: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether ``[`` / ``{`` nest deeper than ``limit`` outside the strings of ``value``.

    No scan for ordinary messages (at most ``limit`` brackets in all); otherwise a scan that
    stops as soon as the limit is passed.

    Examples
    --------
    >>> too_deep(b'{"a": [1, {"b": "[[[[[[[[[[[["}]}')
    False
    >>> too_deep(b"[" * 60_000)
    True
    """
    if value.count(b"[") + value.count(b"{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for c in value:
        if in_string:
            if escaped:
                escaped = False
            elif c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:  # quote
                in_string = False
        elif c == 0x22:
            in_string = True
        elif c == 0x5B or c == 0x7B:  # [ {
            depth += 1
            if depth > limit:
                return True
        elif c == 0x5D or c == 0x7D:  # ] }
            depth -= 1
    return False


def load_object(value: bytes | None, max_fields: int = MAX_FIELDS,
                max_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """The JSON object of a message, within every bound; else :class:`Invalid`.

    The bounds hold before any parsing (size, nesting), then on the object (fields, string
    lengths), so no message costs more than a bounded amount of time and memory.
    """
    if value is None:
        raise Invalid(NOT_JSON, "empty message")
    if not isinstance(value, bytes):
        raise Invalid(NOT_JSON, f"value is {type(value).__name__}")
    if len(value) > max_bytes:
        raise Invalid(OVERSIZED, f"{len(value)} bytes > {max_bytes}")
    if too_deep(value):
        raise Invalid(TOO_DEEP, f"nested deeper than {MAX_DEPTH}")
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid(NOT_UTF8, str(exc)) from None
    try:
        obj = orjson.loads(value)
    except (ValueError, RecursionError) as exc:
        raise Invalid(NOT_JSON, str(exc)) from None
    if not isinstance(obj, dict):
        raise Invalid(NOT_OBJECT, f"got {type(obj).__name__}")
    if len(obj) > max_fields:
        raise Invalid(TOO_MANY_FIELDS, f"{len(obj)} fields > {max_fields}")
    for key, v in obj.items():
        if len(key) > MAX_VALUE_CHARS or (isinstance(v, str) and len(v) > MAX_VALUE_CHARS):
            raise Invalid(TOO_LONG, f"a key or value of {key[:40]!r} is longer than "
                          f"{MAX_VALUE_CHARS} characters")
    return obj


def field_limit(n_fields: int) -> int:
    """The most keys an event of a schema with ``n_fields`` event fields may have."""
    return max(MAX_FIELDS, 2 * n_fields + 2)


def _load(value: bytes | None, n_fields: int = 0) -> dict[str, Any]:
    return load_object(value, field_limit(n_fields))


def _check_id(obj: dict[str, Any]) -> str | int:
    if "id" not in obj:
        raise Invalid(MISSING_FIELD, "id")
    ident = obj["id"]
    # bool is an int subclass; an id of true/false is a producer bug, not an id
    if isinstance(ident, bool) or not isinstance(ident, (str, int)):
        raise Invalid(WRONG_TYPE, f"id is {type(ident).__name__}")
    text = str(ident)
    if not text or len(text) > MAX_ID_CHARS:
        raise Invalid(WRONG_TYPE, f"id must have 1..{MAX_ID_CHARS} characters")
    return ident


def _check_click(value: Any) -> int:
    # type first: comparing a nested list with 0 walks it, and repr() of it may be huge
    if type(value) not in (int, float) or value not in (0, 1):
        raise Invalid(BAD_LABEL, f"click must be 0 or 1, got {_short(value)}")
    return int(value)


def _short(value: Any) -> str:
    """A bounded description of a JSON value for a reason header."""
    if isinstance(value, (dict, list)):
        return f"a {type(value).__name__}"
    return repr(value)[:40]


def parse_event(value: bytes | None, fields: list[str]
                ) -> tuple[str | int, dict[str, Any], int | None]:
    """Validate one input event.

    Parameters
    ----------
    value : bytes
        The message value.
    fields : list of str
        The schema's event fields (``Schema.event_fields``). Values may be strings or numbers
        (as in the file); a field that is absent, ``null`` or ``""`` is a missing value.

    Returns
    -------
    (id, record, click)
        ``id`` as sent (str or int; ``str(id)`` keys the label join); ``record`` holds the raw
        fields as strings (what ``Encoder.encode_records`` reads); ``click`` is None when the
        event carries no label.

    Raises
    ------
    Invalid
        With the reason to put in the dead-letter header.
    """
    obj = _load(value, len(fields))
    ident = _check_id(obj)
    click = obj.get("click")
    if click is not None:
        click = _check_click(click)
    if all(type(obj.get(name, "")) is str for name in fields):
        return ident, obj, click  # as `produce` sends them (a missing field is missing)
    record: dict[str, str] = {}
    for name in fields:
        v = obj.get(name)
        if v is None:
            record[name] = ""
        elif isinstance(v, str):
            record[name] = v
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            record[name] = repr(v) if isinstance(v, float) else str(v)
        else:
            raise Invalid(WRONG_TYPE, f"{name} is {type(v).__name__}")
    return ident, record, click


def parse_label(value: bytes | None) -> tuple[str | int, int]:
    """Validate one label message ``{"id": ..., "click": 0|1}``; returns ``(id, click)``."""
    obj = _load(value)
    ident = _check_id(obj)
    if "click" not in obj:
        raise Invalid(MISSING_FIELD, "click")
    return ident, _check_click(obj["click"])
