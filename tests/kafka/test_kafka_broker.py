"""The local broker script: it answers, round-trips messages and restarts on the same port."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer

pytestmark = pytest.mark.kafka


def _roundtrip(bootstrap: str, topic: str, n: int, group: str, expect: int) -> list[bytes]:
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(n):
        producer.produce(topic, str(i).encode())
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    got: list[bytes] = []
    for _ in range(60):
        got += [m.value() for m in consumer.consume(1000, 1.0) if m.error() is None]
        if len(got) >= expect:
            break
    consumer.close()
    return got


def test_session_broker_round_trips(kafka_bootstrap: str, topic_name: str) -> None:
    got = _roundtrip(kafka_bootstrap, topic_name, 50, topic_name, 50)
    assert sorted(int(v) for v in got) == list(range(50))


def test_restart_keeps_data_and_port(own_broker, topic_name: str) -> None:
    before = own_broker.bootstrap
    _roundtrip(before, topic_name, 5, "g1", 5)
    after = own_broker.restart()
    assert after == before
    got = _roundtrip(after, topic_name, 0, "g2", 5)
    assert sorted(int(v) for v in got) == list(range(5))
