"""``streamfusion serve`` against hostile input and unlucky operators, on a real broker.

Poison messages, a model topic an attacker writes to, snapshots that travel only through the
broker, a wrong bootstrap address, topics created late, health endpoints, start-up errors and
what a killed checkpoint write leaves behind. Each test runs serve as a subprocess."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request

import pytest
from confluent_kafka import Producer
from kafkatools import (
    Serve,
    committed,
    create_topics,
    log_ids,
    make_log,
    produce_log,
    read_topic,
    scored_ids,
    send,
)

from streamfusion import checkpoint
from streamfusion.data.encoder import Encoder
from streamfusion.data.schema import avazu_schema, criteo_schema
from streamfusion.fusion import ModelConfig
from streamfusion.kafka import snapshot_wire as wire
from streamfusion.kafka.formats import read_events
from streamfusion.kafka.messages import DEAD_LETTER_HEADER, TOO_DEEP
from streamfusion.kafka.outputs import DROPPED_HEADER
from streamfusion.online import OnlineModel

pytestmark = pytest.mark.kafka

KEY = b"0123456789abcdef-a-test-key"
FM = ["--model", "fm", "--bits", "14"]


def _topics(prefix: str) -> dict[str, str]:
    return {k: f"{prefix}-{k}" for k in ("in", "out", "labels", "dlq", "models")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_poison_events_and_labels_are_dead_lettered_and_committed(kafka_bootstrap, topic_name,
                                                                  tmp_path):
    t = _topics(topic_name)
    path = make_log(tmp_path / "log.csv", 600, seed=11)
    rows = list(read_events(path)[1])
    events = [json.dumps({k: v for k, v in ev.items() if k != "click"}).encode()
              for _, ev in rows]
    ids = [k for k, _ in rows]
    poison_events = [b"[" * 60_000, b'{"id": "p1", "C1": ' + b"{" * 20_000 + b"}" * 20_000 + b"}"]
    poison_labels = [b'{"id": "' + ids[0].encode() + b'", "click": ' + b"[" * 30_000
                     + b"]" * 30_000 + b"}", b"[" * 60_000]
    create_topics(kafka_bootstrap, [t["in"], t["labels"]])
    send(kafka_bootstrap, t["in"], events[:300] + poison_events + events[300:])
    labels = [json.dumps({"id": k, "click": int(ev["click"])}).encode() for k, ev in rows]
    send(kafka_bootstrap, t["labels"], labels[:100] + poison_labels + labels[100:])
    # larger than serve's producer may send (1,000,000 bytes), within what the broker takes
    huge = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 1_048_000})
    huge.produce(t["in"], b"x" * 1_040_000)
    assert huge.flush(60) == 0
    args = ["--input-topic", t["in"], "--output-topic", t["out"], "--label-topic", t["labels"],
            "--dead-letter-topic", t["dlq"], "--group-id", topic_name, "--exit-when-idle", "4",
            "--checkpoint", str(tmp_path / "ckpt"), *FM]
    serve = Serve(kafka_bootstrap, args, tmp_path / "serve.log")
    assert serve.wait() == 0, serve.log()
    assert "Traceback" not in serve.log()
    dead = read_topic(kafka_bootstrap, t["dlq"], 5)
    copied = [m for m in dead if m.value() is not None]
    assert sorted(m.value() for m in copied) == sorted(poison_events + poison_labels)
    assert all(dict(m.headers())[DEAD_LETTER_HEADER].decode().startswith(TOO_DEEP)
               for m in copied)
    (dropped,) = [dict(m.headers()) for m in dead if m.value() is None]
    assert dropped[DEAD_LETTER_HEADER].decode().startswith("oversized")
    assert dropped[DROPPED_HEADER].decode().startswith("1040000 bytes")
    outs, seen = scored_ids(kafka_bootstrap, t["out"], set(ids))
    assert seen == set(ids)
    # the poison offsets are committed like any other: a restart does not meet them again
    assert committed(kafka_bootstrap, topic_name, t["in"]) == [len(events) + 3]
    assert committed(kafka_bootstrap, topic_name, t["labels"]) == [len(labels) + 2]
    again = Serve(kafka_bootstrap, args, tmp_path / "again.log")
    assert again.wait() == 0, again.log()
    assert len(read_topic(kafka_bootstrap, t["dlq"], 6, idle=2.0, limit=10)) == 5
    state = checkpoint.load(tmp_path / "ckpt")
    assert state["counters"]["dead_lettered"] == 5
    assert state["counters"]["learned"] == len(ids)


def _forged(schema, version: int, key: bytes | None, trainer: str = "mallory",
            first_offset: int | None = None, doctor: bool = False) -> tuple[list[bytes], dict]:
    """The chunks of a snapshot, and its announcement as a dict (first_offset set later)."""
    model = OnlineModel(ModelConfig(model="fm", bits=14, k=8), len(schema.field_names))
    raw = wire.pack_model(model, Encoder(schema, bits=14))
    blob = wire.compress(raw)
    note = wire.announce(trainer, version, schema, first_offset or 0, blob, len(raw), key)
    if doctor:  # same announcement, different bytes: checksums recomputed, signature kept
        raw2 = raw[:-64] + b"\x01" * 64
        blob = wire.compress(raw2)
        note = wire.Announcement(**{**note.__dict__, "bytes": len(blob),
                                    "chunks": -(-len(blob) // wire.CHUNK_BYTES),
                                    "raw_bytes": len(raw2),
                                    "sha256": wire.announce(trainer, version, schema, 0, blob,
                                                            len(raw2), None).sha256})
    return wire.chunk_messages(trainer, version, blob), json.loads(note.to_bytes())


def _publish_forged(bootstrap: str, topic: str, chunks: list[bytes], note: dict,
                    resign: bytes | None = None) -> None:
    """Write chunks, then the announcement pointing at them (signed again with ``resign``,
    as a holder of that key would)."""
    offsets: list[int] = []
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for c in chunks:
        p.produce(topic, c, b"chunk",
                  on_delivery=lambda err, msg: offsets.append(msg.offset()))
    assert p.flush(60) == 0
    note = {**note, "first_offset": min(offsets)}
    if resign is not None:
        parsed = wire.Announcement(**{k: v for k, v in note.items()
                                      if k not in ("kind", "format")})
        blob = b"".join(c[len(wire.CHUNK_MAGIC) + 4 + int.from_bytes(
            c[len(wire.CHUNK_MAGIC):len(wire.CHUNK_MAGIC) + 4], "big"):] for c in chunks)
        note["signature"] = wire.sign(resign, parsed, blob)
    p.produce(topic, json.dumps(note).encode(), b"model")
    assert p.flush(60) == 0


MALFORMED_ANNOUNCEMENTS = [
    b'{"version": 1e400}', b'{"version": 2}', b'{"version": 3, "path": 7}',
    b'{"version": 4, "path": "/dev/zero"}', b'{"version": "x", "path": "/tmp/x"}',
    b'{"kind": "streamfusion-snapshot", "format": 1, "version": 99999999}',
    b"[" * 60_000, b"\xff\xfe not even utf-8",
]


def _loaded(serve: Serve) -> list[int]:
    return [int(v) for v in re.findall(r"loaded model snapshot (\d+)", serve.log())]


def test_snapshots_travel_through_the_broker_signed_and_forgeries_are_ignored(
        kafka_bootstrap, topic_name, tmp_path):
    t = _topics(topic_name)
    create_topics(kafka_bootstrap, [t["in"]], partitions=3)
    create_topics(kafka_bootstrap, [t["models"]])
    send(kafka_bootstrap, t["models"], MALFORMED_ANNOUNCEMENTS)  # before anyone starts
    homes = {name: tmp_path / name for name in ("trainer", "s0", "s1", "s2")}
    for home in homes.values():  # nothing shared but the broker: each its own folder and key
        home.mkdir()
        (home / "model.key").write_bytes(KEY + b"\n")
    first = make_log(tmp_path / "first.csv", 6000, seed=12)
    second = make_log(tmp_path / "second.csv", 6000, seed=13)
    common = ["--input-topic", t["in"], "--output-topic", t["out"], "--group-id", topic_name,
              "--model-topic", t["models"], "--model-key-file", "model.key",
              "--batch-size", "500", *FM]
    trainer = Serve(kafka_bootstrap, [*common, "--role", "train", "--checkpoint", "ckpt",
                                      "--checkpoint-interval", "0.5"],
                    tmp_path / "trainer.log", cwd=homes["trainer"])
    scorers = [Serve(kafka_bootstrap, [*common, "--role", "score"], tmp_path / f"s{i}.log",
                     cwd=homes[f"s{i}"]) for i in range(2)]
    for p in (trainer, *scorers):
        p.wait_for_log("assigned")
    time.sleep(2.0)  # let the group settle on its three members
    produce_log(kafka_bootstrap, first, t["in"], rate=3000)
    _, seen = scored_ids(kafka_bootstrap, t["out"], set(log_ids(first)))
    assert seen == set(log_ids(first))
    for s in scorers:
        s.wait_for_log("loaded model snapshot")
        assert "unauthenticated" not in s.log()
        # what was on the model topic before it started: each logged once, and ignored
        assert len(re.findall("ignored:", s.log())) == len(MALFORMED_ANNOUNCEMENTS), s.log()
    # an attacker writes to the model topic: unsigned with a huge version, signed with a
    # wrong key, doctored bytes under an honest signature, another schema under the right key
    avazu = avazu_schema()
    chunks, note = _forged(avazu, 10 ** 9, None)
    _publish_forged(kafka_bootstrap, t["models"], chunks, note)
    chunks, note = _forged(avazu, 10 ** 9, b"w" * 32)
    _publish_forged(kafka_bootstrap, t["models"], chunks, note)
    chunks, note = _forged(avazu, 10 ** 9 + 1, None, doctor=True)
    _publish_forged(kafka_bootstrap, t["models"], chunks, note, resign=b"w" * 32)
    chunks, note = _forged(criteo_schema(), 10 ** 9 + 2, KEY)
    _publish_forged(kafka_bootstrap, t["models"], chunks, note, resign=KEY)
    send(kafka_bootstrap, t["models"], MALFORMED_ANNOUNCEMENTS)
    for s in scorers:
        deadline = time.monotonic() + 60
        while len(re.findall(r"ignored:", s.log())) < 4 + 2 * len(MALFORMED_ANNOUNCEMENTS):
            assert time.monotonic() < deadline, s.log()
            assert s.proc.poll() is None, s.log()
            time.sleep(0.2)
        log = s.log()
        assert "is not signed" in log and "wrong signature" in log
        assert "another schema" in log
    before = [max(_loaded(s)) for s in scorers]
    # the trainer's next snapshots still load: the forged versions pinned nothing
    produce_log(kafka_bootstrap, second, t["in"], rate=3000)
    outs, seen = scored_ids(kafka_bootstrap, t["out"], set(log_ids(second)))
    assert set(log_ids(second)) <= seen
    for s, b in zip(scorers, before, strict=True):
        deadline = time.monotonic() + 60
        while max(_loaded(s)) <= b:
            assert time.monotonic() < deadline, s.log()
            time.sleep(0.2)
    assert max(o["model_version"] for o in outs) < 10 ** 6
    # the last messages of the topic are forgeries: a new scorer still starts on the newest
    # honest snapshot
    assert trainer.terminate() == 0, trainer.log()
    honest = max(int(v) for v in re.findall(r"published model snapshot (\d+)", trainer.log()))
    send(kafka_bootstrap, t["models"], MALFORMED_ANNOUNCEMENTS)
    late = Serve(kafka_bootstrap, [*common, "--role", "score", "--exit-when-idle", "3"],
                 tmp_path / "s2.log", cwd=homes["s2"])
    late.wait_for_log("loaded model snapshot")
    assert _loaded(late) == [honest]
    for p in (*scorers, late):
        assert p.terminate() == 0, p.log()
        assert "Traceback" not in p.log()
    for home in homes.values():  # snapshots were never files: nothing but the checkpoint
        assert not list(home.rglob("*.sfck")) or home == homes["trainer"]


def test_unsigned_snapshots_load_with_one_warning_and_signed_ones_need_the_key(
        kafka_bootstrap, topic_name, tmp_path):
    t = _topics(topic_name)
    create_topics(kafka_bootstrap, [t["in"], t["models"]])
    chunks, note = _forged(avazu_schema(), 5, None, trainer="honest")
    _publish_forged(kafka_bootstrap, t["models"], chunks, note)
    common = ["--input-topic", t["in"], "--output-topic", t["out"], "--group-id", topic_name,
              "--model-topic", t["models"], "--role", "score", "--exit-when-idle", "3", *FM]
    open_scorer = Serve(kafka_bootstrap, common, tmp_path / "open.log")
    assert open_scorer.wait() == 0, open_scorer.log()
    assert open_scorer.log().count("unauthenticated") == 1
    assert _loaded(open_scorer) == [5]
    (tmp_path / "key").write_bytes(KEY)
    keyed = Serve(kafka_bootstrap, [*common, "--model-key-file", str(tmp_path / "key")],
                  tmp_path / "keyed.log")
    assert keyed.wait() == 0, keyed.log()
    assert _loaded(keyed) == [] and "is not signed" in keyed.log()
    assert "unauthenticated" not in keyed.log()


def test_an_unreachable_broker_is_logged_sparingly_and_idle_still_counts(tmp_path):
    port = _free_port()  # nothing listens there
    start = time.monotonic()
    serve = Serve(f"127.0.0.1:{port}", ["--input-topic", "in", "--output-topic", "out",
                                        "--exit-when-idle", "8", *FM],
                  tmp_path / "serve.log")
    assert serve.wait(limit=90) == 0, serve.log()
    took = time.monotonic() - start
    log = serve.log()
    kafka_lines = [line for line in log.splitlines() if "Kafka:" in line]
    assert 1 <= len(kafka_lines) <= 8, log  # 640 lines in 28 s before
    assert "idle for" in log and "Traceback" not in log
    assert took < 60, log


def test_late_label_topic_health_endpoints_and_stale_temporaries(kafka_bootstrap, topic_name,
                                                                 tmp_path):
    t = _topics(topic_name)
    create_topics(kafka_bootstrap, [t["in"]])
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    stale = ckpt / ".state.sfck.tmp4242"  # what a kill -9 during a checkpoint write leaves
    stale.write_bytes(b"half a checkpoint")
    port = _free_port()
    path = make_log(tmp_path / "log.csv", 500, seed=14)
    rows = list(read_events(path)[1])
    serve = Serve(kafka_bootstrap, ["--input-topic", t["in"], "--output-topic", t["out"],
                                    "--label-topic", t["labels"], "--group-id", topic_name,
                                    "--checkpoint", str(ckpt), "--checkpoint-interval", "1",
                                    "--metrics-port", str(port), "--label-ttl", "600", *FM],
                  tmp_path / "serve.log")
    serve.wait_for_log("metrics on")
    assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
    serve.wait_for_log("assigned")
    assert not stale.exists() and "never finished" in serve.log()
    deadline = time.monotonic() + 30
    while _get(f"http://127.0.0.1:{port}/readyz")[0] != 200:
        assert time.monotonic() < deadline, serve.log()
        time.sleep(0.2)
    assert _get(f"http://127.0.0.1:{port}/")[0] == 404
    assert _get(f"http://127.0.0.1:{port}/anything")[0] == 404
    send(kafka_bootstrap, t["in"],
         [json.dumps({k: v for k, v in ev.items() if k != "click"}).encode() for _, ev in rows])
    scored_ids(kafka_bootstrap, t["out"], {k for k, _ in rows})
    # the label topic appears after serve started: joined within seconds, not minutes
    create_topics(kafka_bootstrap, [t["labels"]])
    created = time.monotonic()
    send(kafka_bootstrap, t["labels"],
         [json.dumps({"id": k, "click": int(ev["click"])}).encode() for k, ev in rows])
    while True:
        code, text = _get(f"http://127.0.0.1:{port}/metrics")
        joined = re.search(r"^streamfusion_joined_labels_total (\S+)$", text, re.M)
        if joined and float(joined.group(1)) == len(rows):
            break
        assert time.monotonic() - created < 30, serve.log()
        time.sleep(0.5)
    count = re.search(r"^streamfusion_end_to_end_latency_seconds_count (\S+)$", text, re.M)
    assert count and float(count.group(1)) == len(rows)
    assert serve.terminate() == 0, serve.log()


@pytest.mark.parametrize("case", ["corrupt", "foreign", "client-setting", "short-key",
                                  "port-taken"])
def test_start_up_errors_are_one_line_with_exit_code_2(case, tmp_path):
    args = ["--input-topic", "in", "--output-topic", "out", *FM]
    if case in ("corrupt", "foreign"):
        ckpt = tmp_path / "ckpt"
        if case == "corrupt":
            ckpt.mkdir()
            (ckpt / checkpoint.STATE_FILE).write_bytes(checkpoint.MAGIC + b"\x00" * 40)
        else:
            checkpoint.save(ckpt, {"kind": "streamfusion-serve", "version": 1, "model": 3})
        args += ["--checkpoint", str(ckpt)]
    elif case == "client-setting":
        args += ["--consumer-config", "no.such.setting=1"]
    elif case == "short-key":
        (tmp_path / "key").write_bytes(b"short")
        args += ["--model-topic", "m", "--model-key-file", str(tmp_path / "key")]
    else:
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        args += ["--metrics-port", str(taken.getsockname()[1])]
    serve = Serve("127.0.0.1:1", args, tmp_path / "serve.log")
    code = serve.wait(limit=60)
    lines = [line for line in serve.log().splitlines() if line.startswith("streamfusion serve:")]
    assert code == 2, serve.log()
    assert len(lines) == 1 and "Traceback" not in serve.log(), serve.log()
    if case == "port-taken":
        taken.close()
