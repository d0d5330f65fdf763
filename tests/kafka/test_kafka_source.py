"""``KafkaSource`` on a real broker: the Source protocol over the input topic, batches in offset
order, positions per partition, bad messages dead-lettered while their batch still comes, label
messages beside the events, the end of an idle stream."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from confluent_kafka import Message, Producer
from kafkatools import WAIT_LIMIT, create_topics

from streamfusion.data.encoder import Encoder
from streamfusion.data.schema import avazu_schema
from streamfusion.kafka.encoding import KafkaEncoder
from streamfusion.kafka.source import KafkaBatch, KafkaSource
from streamfusion.online import Source

pytestmark = pytest.mark.kafka

BITS, SEED = 12, 3


def _encoder() -> Encoder:
    return Encoder(avazu_schema(), bits=BITS, seed=SEED)


def _event(ident: str, i: int) -> bytes:
    ev = {"id": ident, "click": i % 2}
    for name in KafkaEncoder(_encoder()).fields:
        ev[name] = "14102100" if name == "hour" else f"v{i % 7}"
    return json.dumps(ev).encode()


def _send(bootstrap: str, topic: str, values: list[bytes], partition: int = 0) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for v in values:
        p.produce(topic, v, partition=partition)
    assert p.flush(60) == 0


def _source(bootstrap: str, group: str, topic: str, **kw) -> tuple[KafkaSource, list]:
    dead: list[tuple[Message, str]] = []
    src = KafkaSource({"bootstrap.servers": bootstrap, "group.id": group}, topic, _encoder(),
                      dead_letter=lambda m, reason: dead.append((m, reason)), **kw)
    return src, dead


def _pull(src: KafkaSource, messages: int, max_rows: int,
          positions: list | None = None) -> list[KafkaBatch]:
    """Batches until ``messages`` messages (events, dead letters, labels) were taken; the
    position after each batch is appended to ``positions``."""
    out: list[KafkaBatch] = []
    taken = 0
    deadline = time.monotonic() + WAIT_LIMIT
    while taken < messages:
        assert time.monotonic() < deadline, f"took {taken} of {messages} messages"
        batch = src.next_batch(max_rows)
        assert batch is not None, "a live source never ends while it is fed"
        assert len(batch) <= max_rows and batch.messages + len(batch.labels) <= max_rows
        out.append(batch)
        if positions is not None:
            positions.append(src.position())
        taken += batch.messages + len(batch.labels)
    return out


def test_batches_in_order_and_positions_per_partition(kafka_bootstrap, topic_name):
    topic = f"{topic_name}-in"
    create_topics(kafka_bootstrap, [topic], partitions=2)
    n = 700
    values = {f"p{p}-{i}": _event(f"p{p}-{i}", i) for p in (0, 1) for i in range(n)}
    for p in (0, 1):
        _send(kafka_bootstrap, topic, [values[f"p{p}-{i}"] for i in range(n)], partition=p)
    src, dead = _source(kafka_bootstrap, topic_name, topic)
    assert isinstance(src, Source)
    assert src.position() == {}
    try:
        positions: list[dict] = []
        batches = _pull(src, 2 * n, max_rows=300, positions=positions)
        seen: dict[str, list[tuple[str, int]]] = {"0": [], "1": []}
        last: dict[str, int] = {}
        for b, pos in zip(batches, positions, strict=True):
            assert len(b) == b.messages == len(b.ids) == len(b.line) == len(b.stamps)
            for ident, offset in zip(b.ids, b.line.tolist(), strict=True):
                seen[ident[1]].append((ident, offset))
            assert json.loads(json.dumps(pos)) == pos
            for (t, p), nxt in b.advanced.items():  # the next offset after the batch's last
                assert t == topic and pos[topic][str(p)] == nxt
                assert nxt == 1 + max(o for i, o in zip(b.ids, b.line.tolist(), strict=True)
                                      if i[1] == str(p))
            for p, nxt in pos.get(topic, {}).items():  # positions only move forward
                assert nxt >= last.get(p, 0)
                last[p] = nxt
        # each partition in its produce order, offsets 0..n-1 with none skipped or repeated
        for p in ("0", "1"):
            assert seen[p] == [(f"p{p}-{i}", i) for i in range(n)]
        assert src.position() == {topic: {"0": n, "1": n}}
        assert dead == []
        assert all(b.labels == [] for b in batches)
        assert (np.concatenate([b.stamps for b in batches]) > 0).all()
        # the rows are the events encoded in the order they were taken
        rows = [b for b in batches if len(b)]
        order = [i for b in rows for i in b.ids]
        want = KafkaEncoder(_encoder()).encode([values[i] for i in order]).batch
        np.testing.assert_array_equal(np.concatenate([b.indices for b in rows]), want.indices)
        np.testing.assert_array_equal(np.concatenate([b.dense for b in rows]), want.dense)
        np.testing.assert_array_equal(np.concatenate([b.y for b in rows]), want.y)
        # fed no more, a live source returns empty batches, not None
        empty = src.next_batch(300)
        assert empty is not None and len(empty) == 0 and empty.messages == 0
        assert empty.advanced == {}
    finally:
        src.close()
    assert src.next_batch(300) is None  # closed: the stream ended
    src.close()  # idempotent


def test_a_bad_message_in_the_middle_is_dead_lettered_and_its_batch_still_comes(
        kafka_bootstrap, topic_name):
    topic = f"{topic_name}-in"
    create_topics(kafka_bootstrap, [topic])
    good = [_event(f"e{i}", i) for i in range(10)]
    values = [*good[:5], b"{oops", *good[5:]]  # offset 5 is not JSON
    _send(kafka_bootstrap, topic, values)
    src, dead = _source(kafka_bootstrap, topic_name, topic)
    try:
        batches = _pull(src, len(values), max_rows=len(values))
    finally:
        src.close()
    assert sum(b.messages for b in batches) == len(values)
    (m, reason), = dead
    assert (m.topic(), m.partition(), m.offset(), m.value()) == (topic, 0, 5, b"{oops")
    assert reason.startswith("not-json")
    (bad_batch,) = [b for b in batches if b.messages > len(b)]
    assert len(bad_batch) == bad_batch.messages - 1 > 0  # the others of its batch came
    assert [i for b in batches for i in b.ids] == [f"e{i}" for i in range(10)]
    assert np.concatenate([b.line for b in batches]).tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert batches[-1].advanced == {(topic, 0): len(values)}


def test_labels_come_beside_the_events_and_an_idle_stream_ends(kafka_bootstrap, topic_name):
    topic, labels = f"{topic_name}-in", f"{topic_name}-labels"
    create_topics(kafka_bootstrap, [topic, labels])
    _send(kafka_bootstrap, topic, [_event(f"e{i}", i) for i in range(20)])
    label_values = [json.dumps({"id": f"e{i}", "click": 1}).encode() for i in range(0, 20, 4)]
    _send(kafka_bootstrap, labels, label_values)
    src, dead = _source(kafka_bootstrap, topic_name, topic, label_topic=labels, idle_end=1.0)
    try:
        batches = _pull(src, 20 + len(label_values), max_rows=1000)
        assert sum(len(b) for b in batches) == 20 and dead == []
        got = [m.value() for b in batches for m in b.labels]
        assert got == label_values  # undecoded, in order, never rows
        assert src.position() == {labels: {"0": len(label_values)}, topic: {"0": 20}}
        start = time.monotonic()
        while (batch := src.next_batch(1000)) is not None:
            assert len(batch) == 0 and time.monotonic() - start < WAIT_LIMIT
        assert time.monotonic() - start >= 1.0
        assert src.next_batch(1000) is None  # ended for good
    finally:
        src.close()
