"""Validation of input events and label messages (no broker needed)."""

from __future__ import annotations

import json

import pytest

from streamfusion.data.schema import avazu_schema
from streamfusion.kafka import messages as M

FIELDS = list(avazu_schema().event_fields)


def _event(**over) -> dict:
    ev = {name: "1" for name in FIELDS}
    ev["hour"] = "14102100"
    ev["id"] = "e1"
    ev.update(over)
    return ev


def _bytes(obj) -> bytes:
    return json.dumps(obj).encode()


def test_valid_event_passes_with_and_without_click() -> None:
    ident, record, click = M.parse_event(_bytes(_event(click=1)), FIELDS)
    assert (ident, click) == ("e1", 1)
    assert all(record[f] == _event()[f] for f in FIELDS)
    assert M.parse_event(_bytes(_event()), FIELDS)[2] is None


def test_numbers_and_null_become_strings() -> None:
    ev = _event(C1=1005, C14=None, id=7)
    ident, record, _ = M.parse_event(_bytes(ev), FIELDS)
    assert ident == 7
    assert record["C1"] == "1005" and record["C14"] == ""


@pytest.mark.parametrize("value, reason", [
    (b"{not json", M.NOT_JSON),
    (b"\xff\xfe", M.NOT_UTF8),
    (b"[1, 2]", M.NOT_OBJECT),
    (None, M.NOT_JSON),
    (b"x" * (M.MAX_MESSAGE_BYTES + 1), M.OVERSIZED),
])
def test_unparseable_messages_name_their_reason(value, reason) -> None:
    with pytest.raises(M.Invalid) as exc:
        M.parse_event(value, FIELDS)
    assert exc.value.reason == reason
    assert exc.value.header.startswith(reason)


def test_missing_fields_are_missing_values_and_wrong_types_are_refused() -> None:
    ev = _event()
    del ev["site_id"]
    ev["C14"] = None
    ident, record, _ = M.parse_event(_bytes(ev), FIELDS)
    assert record.get("site_id", "") == "" and record["C14"] == ""
    with pytest.raises(M.Invalid) as exc:
        M.parse_event(_bytes(_event(C1={"a": 1})), FIELDS)
    assert exc.value.reason == M.WRONG_TYPE
    with pytest.raises(M.Invalid) as exc:
        M.parse_event(_bytes(_event(id=True)), FIELDS)
    assert exc.value.reason == M.WRONG_TYPE
    noid = _event()
    del noid["id"]
    with pytest.raises(M.Invalid) as exc:
        M.parse_event(_bytes(noid), FIELDS)
    assert exc.value.reason == M.MISSING_FIELD


@pytest.mark.parametrize("click", [2, "1", True, 0.5, -1])
def test_bad_labels_are_refused(click) -> None:
    with pytest.raises(M.Invalid) as exc:
        M.parse_event(_bytes(_event(click=click)), FIELDS)
    assert exc.value.reason == M.BAD_LABEL
    with pytest.raises(M.Invalid):
        M.parse_label(_bytes({"id": "a", "click": click}))


def test_label_messages() -> None:
    assert M.parse_label(_bytes({"id": "a", "click": 0})) == ("a", 0)
    with pytest.raises(M.Invalid) as exc:
        M.parse_label(_bytes({"id": "a"}))
    assert exc.value.reason == M.MISSING_FIELD
