"""The fast Kafka encoding equals the reference ``Encoder.encode_records`` path exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from streamfusion._parse import json_events

from streamfusion.data.encoder import Encoder
from streamfusion.data.generate import generate
from streamfusion.data.schema import avazu_schema, criteo_schema
from streamfusion.kafka.encoding import KafkaEncoder
from streamfusion.kafka.formats import read_events


@pytest.mark.parametrize("fmt", ["avazu", "criteo"])
def test_fast_path_matches_encode_records(tmp_path, fmt) -> None:
    path = tmp_path / "log.txt"
    generate(path, fmt, rows=3000, seed=3)
    _, rows = read_events(path, format=fmt)
    events = [ev for _, ev in rows]
    schema = avazu_schema() if fmt == "avazu" else criteo_schema()
    fast = KafkaEncoder(Encoder(schema, bits=16, seed=5))
    ref = Encoder(schema, bits=16, seed=5)
    # a few events off the fast path: numbers, nulls, int ids
    events[10] = {**events[10], "id": 12345}
    name = schema.columns[-1].name
    events[11] = {**events[11], name: None}
    values = [json.dumps(ev).encode() for ev in events]
    for start in range(0, len(values), 700):  # count tables evolve batch by batch, alike
        got = fast.encode(values[start:start + 700])
        want, errors = ref.encode_records(events[start:start + 700])
        assert got.rejects == [] and errors == []
        order = np.argsort(got.index, kind="stable")
        for field in ("indices", "values", "dense", "time"):
            np.testing.assert_array_equal(getattr(got.batch, field)[order],
                                          getattr(want, field), err_msg=field)
        assert [got.batch.ids[i] for i in order] == want.ids
        clicks = np.array([ev.get("click", np.nan) for ev in events[start:start + 700]],
                          dtype=np.float32)
        np.testing.assert_array_equal(got.batch.y[order], clicks)
    np.testing.assert_array_equal(fast.encoder.counts, ref.counts)


def test_invalid_messages_are_rejected_with_reasons_and_rows_stay_aligned() -> None:
    enc = KafkaEncoder(Encoder(avazu_schema(), bits=12))
    good = {c.name: "1" for c in avazu_schema().columns if c.kind not in ("skip", "label")}
    good["hour"] = "14102100"
    values = [
        json.dumps({**good, "id": "a", "click": 1}).encode(),
        b"{nope",
        json.dumps({**good, "id": "b", "hour": "not-an-hour"}).encode(),
        json.dumps({**good, "id": "c", "C1": "x\ny"}).encode(),  # a line break inside a value
        json.dumps({**good, "id": "d"}).encode(),
    ]
    out = enc.encode(values)
    reasons = dict(out.rejects)
    assert set(reasons) == {1, 2, 3}
    assert reasons[1].startswith("not-json")
    assert reasons[2].startswith("encode:") and "hour" in reasons[2]
    assert reasons[3].startswith("encode:")
    assert list(out.index) == [0, 4]
    assert out.batch.ids == ["a", "d"]
    assert out.batch.y[0] == 1 and np.isnan(out.batch.y[1])


def _events(n: int, seed: int) -> list[dict]:
    good = {c.name: "1" for c in avazu_schema().columns if c.kind not in ("skip", "label")}
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ev = {**good, "id": f"e{i}", "hour": f"141021{rng.integers(0, 24):02d}",
              "site_id": f"s{rng.integers(0, 50)}", "C14": str(rng.integers(0, 9999))}
        if rng.random() < 0.5:
            ev["click"] = int(rng.integers(0, 2))
        out.append(ev)
    return out


# messages that must leave the whole-batch tier (and come out exactly as event by event)
_OFF_THE_FAST_PATH = [
    b"{oops",
    None,
    b"[1, 2]",
    "int-id",
    "numeric-field",
    "null-field",
    "bool-click",
    "comma-in-value",
    "newline-in-value",
    "quote-in-value",
    "long-id",
    "empty-id",
]


# valid events off the fast path: the reference path encodes them
_NOT_REJECTED = {"int-id", "numeric-field", "null-field", "quote-in-value", "comma-in-value",
                 "missing-field"}


def _spoil(ev: dict, how) -> bytes | None:
    if how is None or isinstance(how, bytes):
        return how
    ev = dict(ev)
    if how == "int-id":
        ev["id"] = 12345
    elif how == "numeric-field":
        ev["C1"] = 1005
    elif how == "null-field":
        ev["C1"] = None
    elif how == "bool-click":
        ev["click"] = True
    elif how == "bad-hour":
        ev["hour"] = "not-an-hour"
    elif how == "missing-field":
        del ev["site_id"]  # a missing value, in the whole-batch tier
    elif how == "missing-hour":
        ev = {"id": ev["id"]}  # every field missing: the tokenizer refuses the empty hour
    elif how == "comma-in-value":
        ev["site_id"] = "a,b"
    elif how == "newline-in-value":
        ev["site_id"] = "a\nb"
    elif how == "quote-in-value":
        ev["site_id"] = 'a"b'
    elif how == "long-id":
        ev["id"] = "x" * 257
    elif how == "empty-id":
        ev["id"] = ""
    return json.dumps(ev).encode()


def _whole_batch_in_c(enc: KafkaEncoder, values: list) -> bool:
    """Every message on the C decoder's path (one run of lines, no Python step)."""
    return bool(json_events(values, *enc._spec)[4].all())


def _same(a, b) -> None:
    assert a.rejects == b.rejects
    np.testing.assert_array_equal(a.index, b.index)
    for field in ("indices", "values", "dense", "time", "y"):
        np.testing.assert_array_equal(getattr(a.batch, field), getattr(b.batch, field),
                                      err_msg=field)
    assert a.batch.ids == b.batch.ids


@pytest.mark.parametrize("how", [*_OFF_THE_FAST_PATH, "bad-hour", "missing-field",
                                 "missing-hour"])
def test_whole_batch_tier_equals_event_by_event(how) -> None:
    events = _events(300, seed=1)
    values = [json.dumps(ev).encode() for ev in events]
    fast = KafkaEncoder(Encoder(avazu_schema(), bits=16, seed=2))
    each = KafkaEncoder(Encoder(avazu_schema(), bits=16, seed=2))
    assert _whole_batch_in_c(fast, values)  # a clean batch takes the whole-batch tier
    _same(fast.encode(values), each.encode_each(values))
    spoilt = list(values)
    spoilt[137] = _spoil(events[137], how)
    # one bad message: event by event (the tokenizer's own errors stay in the batch tier)
    assert (not _whole_batch_in_c(fast, spoilt)) == (how in _OFF_THE_FAST_PATH)
    got, want = fast.encode(spoilt), each.encode_each(spoilt)
    _same(got, want)
    assert [pos for pos, _ in got.rejects] == ([137] if how not in _NOT_REJECTED else [])
    np.testing.assert_array_equal(fast.encoder.counts, each.encoder.counts)


def test_decode_leaves_the_encoder_alone() -> None:
    """decode may run on one thread while parse advances the count tables on another."""
    enc = KafkaEncoder(Encoder(avazu_schema(), bits=16, seed=2))
    values = [json.dumps(ev).encode() for ev in _events(200, seed=3)]
    before = enc.encoder.counts.copy()
    first, second = enc.decode(values[:100]), enc.decode(values[100:])
    np.testing.assert_array_equal(enc.encoder.counts, before)
    ref = KafkaEncoder(Encoder(avazu_schema(), bits=16, seed=2))
    _same(enc.parse(first), ref.encode(values[:100]))
    _same(enc.parse(second), ref.encode(values[100:]))
