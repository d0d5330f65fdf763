"""``streamfusion serve`` on a real broker: scoring, labels, crashes, bad messages, restarts,
scale-out. Each test runs serve as a subprocess, as a user would."""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from kafkatools import (
    SMALL_MODEL,
    Serve,
    committed,
    create_topics,
    log_ids,
    make_log,
    produce_in_background,
    produce_log,
    read_topic,
    scored_ids,
    send,
)

from streamfusion import checkpoint
from streamfusion.kafka.formats import read_events
from streamfusion.kafka.messages import DEAD_LETTER_HEADER

pytestmark = pytest.mark.kafka

# seconds the scoring thread waits before each batch in the SIGTERM-in-flight test: far longer
# than serve takes from the end of its loop to its checkpoint
SCORE_DELAY = 0.5
OUTPUT_FIELDS = {"id", "p_click", "margin", "base_margin", "residual_margin", "model_version"}


@pytest.fixture
def slow_scoring() -> list[str]:
    """The ``streamfusion`` command with a scoring thread that waits SCORE_DELAY s before each
    batch (``slow_scoring.py``: serve itself has no test hook)."""
    return [sys.executable, str(Path(__file__).with_name("slow_scoring.py")), str(SCORE_DELAY)]


def _topics(prefix: str) -> dict[str, str]:
    return {k: f"{prefix}-{k}" for k in ("in", "out", "labels", "dlq", "models")}


def test_every_produced_event_is_scored_and_learned(kafka_bootstrap, topic_name, tmp_path):
    t = _topics(topic_name)
    path = make_log(tmp_path / "log.csv", 6000, seed=1)
    ids = log_ids(path)
    produce_log(kafka_bootstrap, path, t["in"])
    ckpt = tmp_path / "ckpt"
    serve = Serve(kafka_bootstrap, ["--input-topic", t["in"], "--output-topic", t["out"],
                                    "--group-id", topic_name, "--checkpoint", str(ckpt),
                                    "--batch-size", "1000", "--exit-when-idle", "3",
                                    *SMALL_MODEL], tmp_path / "serve.log")
    assert serve.wait() == 0, serve.log()
    outs = [json.loads(m.value()) for m in read_topic(kafka_bootstrap, t["out"], len(ids))]
    assert sorted(str(o["id"]) for o in outs) == sorted(ids)
    assert all(set(o) == OUTPUT_FIELDS for o in outs)
    assert all(0.0 < o["p_click"] < 1.0 for o in outs)
    for o in outs[:100]:
        assert o["margin"] == pytest.approx(o["base_margin"] + o["residual_margin"], abs=1e-5)
    assert max(o["model_version"] for o in outs) >= 1, "the trees never refit"
    state = checkpoint.load(ckpt)
    assert state["counters"]["events"] == len(ids)
    assert state["counters"]["learned"] == len(ids)
    assert committed(kafka_bootstrap, topic_name, t["in"]) == [len(ids)]


def test_labels_join_by_id(kafka_bootstrap, topic_name, tmp_path):
    """Events without click, labels on their own topic: learned once joined, rest expire."""
    t = _topics(topic_name)
    path = make_log(tmp_path / "log.csv", 2000, seed=2)
    _, rows = read_events(path)
    events, labels = [], []
    for key, ev in rows:
        click = ev.pop("click")
        events.append(json.dumps(ev).encode())
        labels.append(json.dumps({"id": key, "click": click}).encode())
    send(kafka_bootstrap, t["in"], events)
    send(kafka_bootstrap, t["labels"], labels[:1500])  # the last 500 never get a label
    ckpt = tmp_path / "ckpt"
    serve = Serve(kafka_bootstrap, ["--input-topic", t["in"], "--output-topic", t["out"],
                                    "--label-topic", t["labels"], "--group-id", topic_name,
                                    "--checkpoint", str(ckpt), "--label-ttl", "2",
                                    "--exit-when-idle", "4", "--model", "fm", "--bits", "14"],
                  tmp_path / "serve.log")
    assert serve.wait() == 0, serve.log()
    state = checkpoint.load(ckpt)
    assert state["counters"]["events"] == 2000
    assert state["counters"]["learned"] == 1500
    join = state["join"]
    assert join["joined"] == 1500
    # the unlabelled 500 either expired (TTL 2 s, idle exit after 4 s) or still wait
    assert join["expired_events"] + len(join["event_ids"]) == 500
    assert join["expired_events"] > 0


def test_kill9_mid_stream_then_restart_loses_nothing(kafka_bootstrap, topic_name, tmp_path):
    t = _topics(topic_name)
    path = make_log(tmp_path / "log.csv", 20000, seed=3)
    ids = log_ids(path)
    ckpt = tmp_path / "ckpt"
    args = ["--input-topic", t["in"], "--output-topic", t["out"], "--group-id", topic_name,
            "--checkpoint", str(ckpt), "--batch-size", "500", "--checkpoint-every", "2000",
            "--model", "fm", "--bits", "14"]
    create_topics(kafka_bootstrap, [t["in"]])
    first = Serve(kafka_bootstrap, args, tmp_path / "first.log")
    producer = produce_in_background(kafka_bootstrap, path, t["in"], rate=5000)
    first.wait_for_log("assigned")
    # kill -9 once a few checkpoints were written and the stream is still flowing
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if checkpoint.exists(ckpt) and checkpoint.load(ckpt)["counters"]["events"] >= 6000:
            break
        time.sleep(0.1)
    first.kill9()
    producer.join()
    state = checkpoint.load(ckpt)
    assert state["counters"]["events"] < len(ids), "the kill came too late to test anything"
    # the checkpoint covers at least what was committed (commit comes after the checkpoint)
    (ck_pos,) = [o for topic, _, o in state["positions"] if topic == t["in"]]
    assert ck_pos >= max(committed(kafka_bootstrap, topic_name, t["in"])[0], 0)

    # a restart keeps the checkpoint's model settings, and says which flags it overrules
    second = Serve(kafka_bootstrap, [*args, "--exit-when-idle", "3", "--lr", "0.002"],
                   tmp_path / "second.log")
    assert second.wait() == 0, second.log()
    assert "flags differ and are not used: lr 0.0015 (asked: 0.002)" in second.log()
    assert "flags differ" not in first.log()
    outs, seen = scored_ids(kafka_bootstrap, t["out"], set(ids))
    assert seen == set(ids)
    final = checkpoint.load(ckpt)
    offsets = committed(kafka_bootstrap, topic_name, t["in"])
    # the learner's state matches the committed offsets: every event learned exactly once
    assert final["counters"]["events"] == sum(offsets) == len(ids)
    assert final["counters"]["learned"] == len(ids)
    assert final["model"]["events_learned"] == len(ids)


def test_malformed_messages_go_to_the_dead_letter_topic(kafka_bootstrap, topic_name, tmp_path):
    t = _topics(topic_name)
    path = make_log(tmp_path / "log.csv", 1000, seed=4)
    _, rows = read_events(path)
    good = [(k, json.dumps(ev).encode()) for k, ev in rows]
    template = json.loads(good[0][1])
    no_id = {k: v for k, v in template.items() if k != "id"}  # a missing feature is no fault
    bad = {
        b"not-json": b"{oops",
        b"missing-field": json.dumps(no_id).encode(),
        b"wrong-type": json.dumps({**template, "id": "bad-3", "C1": [1]}).encode(),
        b"oversized": json.dumps({**template, "id": "bad-4", "pad": "x" * 70_000}).encode(),
        b"bad-label": json.dumps({**template, "id": "bad-5", "click": 7}).encode(),
        b"not-object": b"[1, 2, 3]",
        # valid JSON, refused by the C tokenizer on the scoring thread
        b"encode": json.dumps({**template, "id": "bad-6", "hour": "not-an-hour"}).encode(),
    }
    values, keys = [], []
    bad_items = list(bad.items())
    for i, (k, v) in enumerate(good):  # the bad ones interleaved with the valid stream
        values.append(v)
        keys.append(k.encode())
        if i % 150 == 0 and bad_items:
            reason, value = bad_items.pop()
            values.append(value)
            keys.append(reason)
    send(kafka_bootstrap, t["in"], values, keys)
    serve = Serve(kafka_bootstrap, ["--input-topic", t["in"], "--output-topic", t["out"],
                                    "--dead-letter-topic", t["dlq"], "--group-id", topic_name,
                                    "--exit-when-idle", "3", "--model", "fm", "--bits", "14"],
                  tmp_path / "serve.log")
    assert serve.wait() == 0, serve.log()
    dead = read_topic(kafka_bootstrap, t["dlq"], len(bad))
    assert len(dead) == len(bad)
    for m in dead:
        headers = dict(m.headers())
        assert headers[DEAD_LETTER_HEADER].decode().startswith(m.key().decode())
        assert m.value() == bad[m.key()]  # the original message, untouched
    outs = read_topic(kafka_bootstrap, t["out"], len(good))
    assert sorted(json.loads(m.value())["id"] for m in outs) == sorted(k for k, _ in good)


def test_broker_stop_start_mid_stream_loses_nothing(own_broker, topic_name, tmp_path):
    bootstrap = own_broker.bootstrap
    t = _topics(topic_name)
    path = make_log(tmp_path / "log.csv", 12000, seed=5)
    ids = log_ids(path)
    create_topics(bootstrap, [t["in"], t["out"]])
    ckpt = tmp_path / "ckpt"
    serve = Serve(bootstrap, ["--input-topic", t["in"], "--output-topic", t["out"],
                              "--group-id", topic_name, "--checkpoint", str(ckpt),
                              "--checkpoint-interval", "1", "--batch-size", "500",
                              "--model", "fm", "--bits", "14"], tmp_path / "serve.log")
    serve.wait_for_log("assigned")
    producer = produce_in_background(bootstrap, path, t["in"], rate=2000)
    deadline = time.monotonic() + 60
    while not (checkpoint.exists(ckpt) and checkpoint.load(ckpt)["counters"]["events"] > 2000):
        assert time.monotonic() < deadline, serve.log()
        time.sleep(0.1)
    own_broker.restart()  # stop (SIGTERM, data kept) and start again on the same port
    producer.join()
    outs, seen = scored_ids(bootstrap, t["out"], set(ids))
    assert seen == set(ids), f"{len(set(ids) - seen)} ids never scored"
    # if the outage outlived the group session, the daemon rejoins and commits its position
    deadline = time.monotonic() + 60
    while sum(committed(bootstrap, topic_name, t["in"])) != len(ids):
        assert time.monotonic() < deadline, serve.log()
        time.sleep(0.5)
    assert serve.terminate() == 0, serve.log()
    assert "Kafka:" in serve.log() or "retrying" in serve.log() or "waiting" in serve.log()
    final = checkpoint.load(ckpt)
    assert final["counters"]["events"] == sum(committed(bootstrap, topic_name, t["in"]))
    assert final["counters"]["events"] == len(ids)


def test_scorers_and_trainer_share_partitions_and_load_new_models(kafka_bootstrap, topic_name,
                                                                  tmp_path):
    t = _topics(topic_name)
    create_topics(kafka_bootstrap, [t["in"]], partitions=3)
    path = make_log(tmp_path / "log.csv", 15000, seed=6)
    ids = log_ids(path)
    common = ["--input-topic", t["in"], "--output-topic", t["out"], "--group-id", topic_name,
              "--model-topic", t["models"], "--batch-size", "500", "--model", "fm",
              "--bits", "14"]
    trainer = Serve(kafka_bootstrap, [*common, "--role", "train", "--checkpoint",
                                      str(tmp_path / "ckpt"), "--checkpoint-interval", "0.5"],
                    tmp_path / "trainer.log")
    scorers = [Serve(kafka_bootstrap, [*common, "--role", "score"], tmp_path / f"s{i}.log")
               for i in range(2)]
    procs = [trainer, *scorers]
    for p in procs:
        p.wait_for_log("assigned")
    time.sleep(2.0)  # let the group settle on its three members
    produce_log(kafka_bootstrap, path, t["in"], rate=3000)
    outs, seen = scored_ids(kafka_bootstrap, t["out"], set(ids))
    assert seen == set(ids)
    for s in scorers:
        s.wait_for_log("loaded model snapshot")
    for p in procs:
        assert p.terminate() == 0, p.log()
    # every member owned a partition of the input topic when the stream flowed
    for p in procs:
        owned = [line for line in p.log().splitlines()
                 if "assigned" in line and f"{t['in']}[" in line]
        assert owned, f"no partition assigned:\n{p.log()}"
    assert max(o["model_version"] for o in outs) >= 1
    assert "published model snapshot" in trainer.log()
    for s in scorers:
        assert "published" not in s.log()


def test_sigterm_exits_zero_and_commits(kafka_bootstrap, topic_name, tmp_path):
    t = _topics(topic_name)
    path = make_log(tmp_path / "log.csv", 3000, seed=7)
    produce_log(kafka_bootstrap, path, t["in"])
    ckpt = tmp_path / "ckpt"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serve = Serve(kafka_bootstrap, ["--input-topic", t["in"], "--output-topic", t["out"],
                                    "--group-id", topic_name, "--checkpoint", str(ckpt),
                                    "--checkpoint-interval", "3600", "--metrics-port", str(port),
                                    "--model", "fm", "--bits", "14"], tmp_path / "serve.log")
    serve.wait_for_log("assigned")
    scored_ids(kafka_bootstrap, t["out"], set(log_ids(path)))
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    metrics = metrics.decode()
    assert "streamfusion_events_total 3000.0" in metrics
    assert "streamfusion_scored_total 3000.0" in metrics
    for name in ("streamfusion_consumer_lag", "streamfusion_rolling_auc",
                 "streamfusion_rolling_logloss", "streamfusion_model_version",
                 "streamfusion_dead_lettered_total", "streamfusion_expired_joins_total",
                 "streamfusion_events_per_second"):
        assert f"\n{name} " in metrics, name
    assert serve.terminate() == 0, serve.log()
    assert committed(kafka_bootstrap, topic_name, t["in"]) == [3000]
    assert checkpoint.load(ckpt)["counters"]["events"] == 3000


def test_sigterm_mid_stream_commits_only_what_was_scored(kafka_bootstrap, topic_name, tmp_path,
                                                         slow_scoring):
    """SIGTERM while batches are in flight: exit 0 with every committed event scored (its
    output on the topic) and learned exactly once (the checkpoint covers the commit).

    The scoring thread waits SCORE_DELAY s before each batch, so batches are still in flight
    when the loop stops, every run: without the drain before the checkpoint, the checkpoint
    would count events its model has not learned."""
    t = _topics(topic_name)
    path = make_log(tmp_path / "log.csv", 120_000, seed=8)
    ids = log_ids(path)
    produce_log(kafka_bootstrap, path, t["in"])  # a backlog: the scoring thread is never idle
    create_topics(kafka_bootstrap, [t["out"]])
    first = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": topic_name + "-first"})
    first.assign([TopicPartition(t["out"], 0, OFFSET_BEGINNING)])  # no group join to wait for
    ckpt = tmp_path / "ckpt"
    serve = Serve(kafka_bootstrap, ["--input-topic", t["in"], "--output-topic", t["out"],
                                    "--group-id", topic_name, "--checkpoint", str(ckpt),
                                    "--batch-size", "5000", *SMALL_MODEL],
                  tmp_path / "serve.log", command=slow_scoring)
    deadline = time.monotonic() + 120
    while first.poll(0.05) is None:  # the signal as soon as the first outputs are out
        assert time.monotonic() < deadline, serve.log()
    first.close()
    assert serve.terminate() == 0, serve.log()
    (done,) = committed(kafka_bootstrap, topic_name, t["in"])
    assert 0 < done < len(ids), f"committed {done}: the backlog was done, nothing in flight"
    state = checkpoint.load(ckpt)
    assert state["counters"]["events"] == done == state["model"]["events_learned"]
    outs = {str(json.loads(m.value())["id"]) for m in read_topic(kafka_bootstrap, t["out"])}
    assert set(ids[:done]) <= outs
