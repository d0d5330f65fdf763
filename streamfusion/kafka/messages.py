"""Validation of incoming Kafka messages: a parsed event, or the reason it is dead-lettered.

Input events are JSON objects with the raw fields of one log row under the dataset's column
names, an ``id`` and an optional ``click``; label messages are ``{"id", "click"}``. Anything
else gets a short machine-readable reason (the ``error`` header of the dead-letter copy).
"""

from __future__ import annotations

import json
from typing import Any

MAX_MESSAGE_BYTES = 64 * 1024  # a click event is < 2 KiB; far larger ones are garbage or abuse
MAX_ID_CHARS = 256  # ids key the label join: bound them so the join's memory stays bounded
DEAD_LETTER_HEADER = "error"

# Reasons (header values), stable strings that dashboards can count on.
OVERSIZED = "oversized"
NOT_UTF8 = "not-utf8"
NOT_JSON = "not-json"
NOT_OBJECT = "not-object"
MISSING_FIELD = "missing-field"
WRONG_TYPE = "wrong-type"
BAD_LABEL = "bad-label"


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


def _load(value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise Invalid(NOT_JSON, "empty message")
    if len(value) > MAX_MESSAGE_BYTES:
        raise Invalid(OVERSIZED, f"{len(value)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid(NOT_UTF8, str(exc)) from None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise Invalid(NOT_JSON, str(exc)) from None
    if not isinstance(obj, dict):
        raise Invalid(NOT_OBJECT, f"got {type(obj).__name__}")
    return obj


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
    if isinstance(value, bool) or value not in (0, 1) or isinstance(value, str):
        raise Invalid(BAD_LABEL, f"click must be 0 or 1, got {value!r}")
    return int(value)


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
    obj = _load(value)
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
