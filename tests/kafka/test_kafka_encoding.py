"""The fast Kafka encoding equals the reference ``Encoder.encode_records`` path exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamfusion.data.encoder import Encoder
from streamfusion.data.generate import generate
from streamfusion.data.schema import avazu_schema, criteo_schema
from streamfusion.kafka.encoding import KafkaEncoder
from streamfusion.kafka.formats import read_events


@pytest.mark.parametrize("fmt", ["avazu", "criteo"])
def test_fast_path_matches_encode_records(tmp_path, fmt) -> None:
    path = tmp_path / "log.txt"
    generate(path, fmt, rows=3000, seed=3)
    _, rows = read_events(path, fmt)
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
        json.dumps({**good, "id": "c", "C1": "x,y"}).encode(),  # the delimiter inside a value
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
