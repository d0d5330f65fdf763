"""Hostile input without a broker: bounded decoders, snapshot checks, the client log, health
endpoints. Hypothesis throws arbitrary messages at the event, label and announcement
decoders: each must come back as a row, a reject with a reason, or a refusal, never raise."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import struct
import urllib.error
import urllib.request
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfusion import checkpoint
from streamfusion.data.encoder import Encoder
from streamfusion.data.schema import avazu_schema, criteo_schema
from streamfusion.fusion import ModelConfig
from streamfusion.kafka import snapshot_wire as wire
from streamfusion.kafka.client_log import ClientLog
from streamfusion.kafka.encoding import KafkaEncoder
from streamfusion.kafka.messages import (
    MAX_DEPTH,
    MAX_FIELDS,
    MAX_VALUE_CHARS,
    TOO_DEEP,
    TOO_LONG,
    TOO_MANY_FIELDS,
    Invalid,
    parse_label,
    too_deep,
)
from streamfusion.kafka.metrics import ServeMetrics
from streamfusion.online import OnlineModel

KEY = b"k" * 32
SMALL = ModelConfig(model="fm", bits=12, k=2)


def _json_values(depth: int = 3):
    """Arbitrary JSON values, nested up to ``depth``."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30),
                        st.floats(allow_nan=False, allow_infinity=False),
                        st.text(max_size=30))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
        max_leaves=12)


def _hostile_bytes():
    """Messages an attacker or a broken producer sends: raw bytes, JSON of any shape, events
    with one field spoiled, deep nesting."""
    fields = avazu_schema().event_fields
    spoiled = st.builds(
        lambda name, value, ident: json.dumps({"id": ident, **{f: "1" for f in fields},
                                               name: value}).encode(),
        st.sampled_from([*fields, "id", "click", "extra"]), _json_values(),
        st.one_of(st.text(max_size=5), st.integers(), st.none()))
    deep = st.builds(lambda n, open_, close: open_ * n + close * (n // 2),
                     st.integers(1, 3000), st.sampled_from([b"[", b"{\"a\":", b"[{\"b\":"]),
                     st.sampled_from([b"]", b"}", b""]))
    return st.one_of(st.binary(max_size=200), _json_values().map(lambda v: json.dumps(v).encode()),
                     spoiled, deep, st.none())


@given(st.lists(_hostile_bytes(), min_size=1, max_size=8))
def test_the_event_decoder_returns_rows_or_reasons_for_anything(values) -> None:
    enc = KafkaEncoder(Encoder(avazu_schema(), bits=12))
    out = enc.encode(values)
    rejected = {i for i, _ in out.rejects}
    assert len(rejected) == len(out.rejects)  # one reason per rejected message
    assert sorted(rejected | set(out.index.tolist())) == list(range(len(values)))
    assert not rejected & set(out.index.tolist())
    assert all(reason for _, reason in out.rejects)
    # the batch path and the per-message reference agree on every message
    each = KafkaEncoder(Encoder(avazu_schema(), bits=12)).encode_each(values)
    assert each.rejects == out.rejects


@given(_hostile_bytes())
def test_the_label_decoder_raises_nothing_but_invalid(value) -> None:
    try:
        ident, click = parse_label(value)
    except Invalid as exc:
        assert exc.reason
        return
    assert click in (0, 1) and isinstance(ident, (str, int))


_ANNOUNCEMENT_LIKE = st.builds(
    lambda extra: json.dumps({"kind": wire.KIND, "format": wire.WIRE_FORMAT, **extra}).encode(),
    st.dictionaries(st.sampled_from(["trainer", "version", "schema", "first_offset", "chunks",
                                     "bytes", "raw_bytes", "sha256", "signature", "path"]),
                    _json_values(1), max_size=10))


@given(st.one_of(_hostile_bytes(), _ANNOUNCEMENT_LIKE))
def test_the_announcement_decoder_raises_nothing_but_bad_snapshot(value) -> None:
    try:
        note = wire.parse_announcement(value)
    except wire.BadSnapshot as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert 1 <= note.version <= wire.MAX_VERSION


def test_poison_events_and_labels_are_rejected_with_their_reason() -> None:
    enc = KafkaEncoder(Encoder(avazu_schema(), bits=12))
    deep_click = b'{"id": "x", "click": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    values = [b"[" * 60_000, deep_click,
              json.dumps({"id": "y", **{f"k{i}": 1 for i in range(MAX_FIELDS + 1)}}).encode(),
              json.dumps({"id": "z", "C1": 1, "site_id": "s" * (MAX_VALUE_CHARS + 1)}).encode()]
    reasons = [r.split(":")[0] for _, r in enc.encode(values).rejects]
    assert reasons == [TOO_DEEP, TOO_DEEP, TOO_MANY_FIELDS, TOO_LONG]
    for value in (b"[" * 60_000, deep_click):
        with pytest.raises(Invalid, match=TOO_DEEP):
            parse_label(value)


def test_depth_counts_brackets_outside_strings_only() -> None:
    inside = b'{"id": "' + b"[" * 100 + b'", "click": 1}'
    assert not too_deep(inside)
    assert parse_label(inside) == ("[" * 100, 1)
    nested = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)
    assert too_deep(nested) and not too_deep(nested[1:-1])


# --------------------------------------------------------------------------- snapshots
def _snapshot(schema=None, key=KEY, version=1, trainer="t1"):
    schema = schema or avazu_schema()
    model = OnlineModel(SMALL, len(schema.field_names))
    raw = wire.pack_model(model, Encoder(schema, bits=SMALL.bits))
    blob = wire.compress(raw)
    chunks = wire.chunk_messages(trainer, version, blob)
    note = wire.announce(trainer, version, schema, 0, blob, len(raw), key)
    return note, chunks, blob, raw


def _rebuild(note, chunks, key=KEY):
    blob = b"".join(wire.parse_chunk(c, note, i) for i, c in enumerate(chunks))
    wire.verify(note, blob, key)
    return wire.unpack_model(wire.decompress(note, blob))


def test_a_signed_snapshot_round_trips_and_scores_alike(rng) -> None:
    note, chunks, _, _ = _snapshot()
    parsed = wire.parse_announcement(note.to_bytes())
    assert parsed == note
    model, encoder = _rebuild(parsed, chunks)
    assert encoder.schema == avazu_schema()
    fields = len(avazu_schema().field_names)
    assert model.state_dict()["config"] == OnlineModel(SMALL, fields).state_dict()["config"]


def test_unsigned_wrongly_signed_and_doctored_snapshots_are_refused() -> None:
    note, chunks, blob, raw = _snapshot(key=None)
    with pytest.raises(wire.BadSnapshot, match="not signed"):
        _rebuild(note, chunks)
    _rebuild(note, chunks, key=None)  # without a key nothing is verified (serve warns)
    note, chunks, blob, raw = _snapshot(key=b"x" * 32)
    with pytest.raises(wire.BadSnapshot, match="wrong signature"):
        _rebuild(note, chunks)
    # doctored weights under a fresh, consistent checksum: only the signature catches it
    note, chunks, blob, raw = _snapshot()
    doctored = wire.compress(raw[:-100] + bytes(100))
    forged = wire.Announcement(**{**note.__dict__, "bytes": len(doctored),
                                  "sha256": wire.announce("t1", 1, avazu_schema(), 0, doctored,
                                                          len(raw), None).sha256,
                                  "chunks": 1})
    with pytest.raises(wire.BadSnapshot, match="wrong signature"):
        wire.verify(forged, doctored, KEY)
    # a chunk altered in transit
    bad = chunks[0][:-1] + bytes([chunks[0][-1] ^ 1])
    with pytest.raises(wire.BadSnapshot, match="checksum"):
        wire.parse_chunk(bad, note, 0)


def test_a_snapshot_of_another_schema_is_named_as_such() -> None:
    note, _, _, _ = _snapshot(schema=criteo_schema())
    assert note.schema != wire.schema_fingerprint(avazu_schema())
    assert note.schema == wire.schema_fingerprint(criteo_schema())


@pytest.mark.parametrize("change", [
    {"version": 1e400}, {"version": "x"}, {"version": None}, {"version": 0},
    {"version": 2 ** 60}, {"path": "/etc/passwd"}, {"chunks": 10 ** 9}, {"raw_bytes": -1},
    {"sha256": "zz"}, {"signature": 5}, {"trainer": "../x"}, {"kind": "other"},
])
def test_malformed_announcements_are_refused_field_by_field(change) -> None:
    note, _, _, _ = _snapshot()
    obj = {**json.loads(note.to_bytes()), **change}
    value = json.dumps(obj).encode().replace(b"Infinity", b"1e400")
    with pytest.raises(wire.BadSnapshot):
        wire.parse_announcement(value)


def test_an_announcement_without_a_version_is_refused() -> None:
    note, _, _, _ = _snapshot()
    missing = {k: v for k, v in json.loads(note.to_bytes()).items() if k != "version"}
    with pytest.raises(wire.BadSnapshot, match="version"):
        wire.parse_announcement(json.dumps(missing).encode())


def test_decompression_stops_at_the_announced_size() -> None:
    bomb = zlib.compress(bytes(64 * 1024 * 1024), 9)  # 64 MiB of zeros in ~64 KB
    note = wire.announce("t1", 1, avazu_schema(), 0, bomb, 1000, None)
    with pytest.raises(wire.BadSnapshot, match="inflates"):
        wire.decompress(note, bomb)


def _with_payload(payload: bytes) -> bytes:
    """A checkpoint file around an npz payload of our choosing, checksum and all."""
    raw = checkpoint.dumps({"a": np.zeros(10)})
    start = len(checkpoint.MAGIC) + 8
    (hlen,) = struct.unpack("<Q", raw[len(checkpoint.MAGIC):start])
    header = json.loads(raw[start:start + hlen])
    header["payload_bytes"] = len(payload)
    head = json.dumps(header).encode()
    body = checkpoint.MAGIC + struct.pack("<Q", len(head)) + head + payload
    return body + hashlib.sha256(body).digest()


def _npz(member: bytes, compression: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        zf.writestr("a0.npy", member)
    return buf.getvalue()


def test_checkpoint_arrays_that_inflate_or_claim_too_much_are_refused() -> None:
    arr = io.BytesIO()
    np.lib.format.write_array(arr, np.zeros(10 ** 6))  # 8 MB of zeros: deflates to ~8 KB
    bomb = _with_payload(_npz(arr.getvalue(), zipfile.ZIP_DEFLATED))
    assert checkpoint.loads(bomb)["a"].shape == (10 ** 6,)  # within the default bound
    with pytest.raises(checkpoint.CheckpointError, match="inflate to more than"):
        checkpoint.loads(bomb, max_array_bytes=10 ** 6)
    # a header claiming 10**12 elements over 80 bytes of data: refused before numpy allocates
    claim = io.BytesIO()
    np.lib.format.write_array_header_1_0(claim, {"descr": "<f8", "fortran_order": False,
                                                 "shape": (10 ** 12,)})
    liar = _with_payload(_npz(claim.getvalue() + bytes(80), zipfile.ZIP_STORED))
    with pytest.raises(checkpoint.CheckpointError, match="claims more than it holds"):
        checkpoint.loads(liar)


def test_short_keys_are_refused(tmp_path) -> None:
    (tmp_path / "k").write_bytes(b"short\n")
    with pytest.raises(ValueError, match="at least 16"):
        wire.read_key(tmp_path / "k")
    (tmp_path / "k").write_bytes(KEY + b"\n")
    assert wire.read_key(tmp_path / "k") == KEY


def test_stale_temporaries_are_removed(tmp_path) -> None:
    checkpoint.save(tmp_path, {"a": 1})
    stale = tmp_path / ".state.sfck.tmp12345"
    stale.write_bytes(b"half a checkpoint")
    assert checkpoint.remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and checkpoint.load(tmp_path) == {"a": 1}


# --------------------------------------------------------------------------- operations
def test_the_client_log_writes_each_distinct_error_once_per_interval() -> None:
    t = [0.0]
    lines: list[str] = []
    cl = ClientLog(10.0, clock=lambda: t[0], write=lambda level, text: lines.append(text))
    for i in range(600):  # a minute of refusals, ten a second, two distinct errors
        t[0] = i / 10
        cl.error(f"127.0.0.1:9/bootstrap: Connect failed: Connection refused (after {i}ms)")
        cl.log(40, "%s [%s] %s", "FAIL", "rdkafka#consumer-1",
               "[thrd:main]: Metadata request timed out after 3 retries")
    assert len(lines) == 12, lines
    assert "times in the last 10s" in lines[-1]


def test_latency_histogram_counts_every_observation() -> None:
    m = ServeMetrics()
    m.latency.observe_many(np.array([0.0005, 0.003, 0.003, 42.0, np.inf]))
    text = _scrape(m, "/metrics")[1]
    assert 'streamfusion_end_to_end_latency_seconds_bucket{le="0.001"} 1.0' in text
    assert 'streamfusion_end_to_end_latency_seconds_bucket{le="0.005"} 3.0' in text
    assert 'streamfusion_end_to_end_latency_seconds_bucket{le="+Inf"} 4.0' in text
    assert "streamfusion_end_to_end_latency_seconds_count 4.0" in text


def _scrape(m: ServeMetrics, path: str, ready=lambda: None) -> tuple[int, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server, _ = m.serve_http(port, "127.0.0.1", ready=ready)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    finally:
        server.shutdown()
        server.server_close()


def test_health_readiness_and_metrics_are_distinct_and_other_paths_404() -> None:
    m = ServeMetrics()
    m.events.inc(5)
    assert _scrape(m, "/healthz") == (200, "ok\n")
    assert _scrape(m, "/readyz") == (200, "ready\n")
    assert _scrape(m, "/readyz", ready=lambda: "no partitions assigned") == \
        (503, "not ready: no partitions assigned\n")
    code, text = _scrape(m, "/metrics")
    assert code == 200 and "streamfusion_events_total 5.0" in text
    assert _scrape(m, "/")[0] == 404
    assert _scrape(m, "/metricsx")[0] == 404
