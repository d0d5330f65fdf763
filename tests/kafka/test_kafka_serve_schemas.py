"""``serve`` on a real broker with any schema the replay reads, started from a replay's
checkpoint, and learning from click-only label streams."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest
from kafkatools import Serve, cli, create_topics, make_log, read_topic, send

from streamfusion import checkpoint
from streamfusion.kafka.formats import read_events
from streamfusion.kafka.produce import produce

pytestmark = pytest.mark.kafka


def _topics(prefix: str) -> dict[str, str]:
    return {k: f"{prefix}-{k}" for k in ("in", "out", "labels", "dlq")}


def _generic_csv(path, rows: int, seed: int = 0):
    """A log of no known format: the label in the middle, an id column last, an integer id
    feature, a number with a rare word in it and a category."""
    rng = np.random.default_rng(seed)
    lines = ["item_id,price,clicked,color,id"]
    for i in range(rows):
        item = int(rng.integers(100_000, 100_400))
        price = "unknown" if rng.random() < 0.005 else f"{rng.gamma(2.0, 10.0):.2f}"
        color = ["red", "green", "blue"][int(rng.integers(0, 3))]
        p = 0.05 + 0.3 * (item % 7 == 0) + 0.1 * (color == "red")
        lines.append(f"{item},{price},{int(rng.random() < p)},{color},ev{i}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _replay(log, ckpt, *extra: str) -> None:
    out = subprocess.run([*cli(), "replay", "--file", str(log), "--quiet", "--checkpoint",
                          str(ckpt), "--model", "fm", "--bits", "14", *extra],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


def test_a_generic_csv_is_served_with_the_schema_its_replay_wrote(kafka_bootstrap, topic_name,
                                                                  tmp_path):
    t = _topics(topic_name)
    log = _generic_csv(tmp_path / "clicks.csv", 3000)
    ckpt = tmp_path / "replay"
    _replay(log, ckpt, "--label", "clicked")
    schema_file = ckpt / "schema.json"
    assert json.loads(schema_file.read_text())["name"] == "csv"
    # produce types the log as replay did; a few events lose a feature (a missing value)
    stats = produce(str(log), t["in"], kafka_bootstrap, format="csv", label="clicked")
    assert stats["failed"] == 0 and stats["schema"].event_fields == ("item_id", "price",
                                                                     "color")
    _, rows = read_events(log, format="csv", label="clicked")
    partial = []
    for key, ev in list(rows)[:20]:
        del ev["color"]
        partial.append(json.dumps({**ev, "id": f"partial-{key}"}).encode())
    partial.append(json.dumps({"item_id": [1], "id": "bad"}).encode())  # a wrong type
    send(kafka_bootstrap, t["in"], partial)
    serve = Serve(kafka_bootstrap, ["--input-topic", t["in"], "--output-topic", t["out"],
                                    "--dead-letter-topic", t["dlq"], "--group-id", topic_name,
                                    "--schema", str(schema_file), "--exit-when-idle", "3",
                                    "--model", "fm", "--bits", "14"], tmp_path / "serve.log")
    assert serve.wait() == 0, serve.log()
    outs = [json.loads(m.value()) for m in read_topic(kafka_bootstrap, t["out"], 3020)]
    ids = {o["id"] for o in outs}
    assert len(outs) == 3020 and {f"ev{i}" for i in range(3000)} <= ids
    assert {f"partial-ev{i}" for i in range(20)} <= ids
    dead = read_topic(kafka_bootstrap, t["dlq"], 1)
    assert [dict(m.headers())["error"].decode().split(":")[0] for m in dead] == ["wrong-type"]


def test_sample_types_the_events_like_the_replay(kafka_bootstrap, topic_name, tmp_path):
    t = _topics(topic_name)
    log = _generic_csv(tmp_path / "clicks.csv", 500, seed=1)
    stats = produce(str(log), t["in"], kafka_bootstrap, format="csv", label="clicked")
    serve = Serve(kafka_bootstrap, ["--input-topic", t["in"], "--output-topic", t["out"],
                                    "--group-id", topic_name, "--sample", str(log),
                                    "--format", "csv", "--label", "clicked",
                                    "--checkpoint", str(tmp_path / "serve"),
                                    "--exit-when-idle", "3", "--model", "fm", "--bits", "14"],
                  tmp_path / "serve.log")
    assert serve.wait() == 0, serve.log()
    state = checkpoint.load(tmp_path / "serve")
    assert state["counters"]["events"] == stats["events"] == 500
    assert state["counters"]["learned"] == 500 and state["counters"]["dead_lettered"] == 0
    assert state["format"] == "csv"


def test_csv_without_a_schema_is_refused_in_one_line(tmp_path):
    out = subprocess.run([*cli(), "serve", "--bootstrap-servers", "127.0.0.1:1",
                          "--input-topic", "a", "--output-topic", "b", "--format", "csv"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "--sample" in out.stderr


def test_serve_starts_from_a_replay_and_goes_on_learning(kafka_bootstrap, topic_name, tmp_path):
    t = _topics(topic_name)
    log = make_log(tmp_path / "log.csv", 6000, seed=7)
    history, live = tmp_path / "history.csv", tmp_path / "live.csv"
    lines = log.read_text().splitlines(keepends=True)
    history.write_text("".join(lines[:4001]))
    live.write_text(lines[0] + "".join(lines[4001:]))
    ckpt = tmp_path / "replay"
    _replay(history, ckpt, "--holdout", "0")
    learned = checkpoint.load(ckpt)["model"]["events_learned"]
    assert learned == 4000
    produce(str(live), t["in"], kafka_bootstrap)
    serve_dir = tmp_path / "serve"
    serve = Serve(kafka_bootstrap, ["--input-topic", t["in"], "--output-topic", t["out"],
                                    "--group-id", topic_name, "--init-from", str(ckpt),
                                    "--checkpoint", str(serve_dir), "--exit-when-idle", "3"],
                  tmp_path / "serve.log")
    assert serve.wait() == 0, serve.log()
    state = checkpoint.load(serve_dir)
    assert state["model"]["events_learned"] == learned + 2000  # history, then live
    assert state["model"]["config"]["model"] == "fm"  # the replay's model, not serve's default
    # a foreign schema is refused in one line
    out = subprocess.run([*cli(), "serve", "--bootstrap-servers", kafka_bootstrap,
                          "--input-topic", t["in"], "--output-topic", t["out"],
                          "--group-id", f"{topic_name}-2", "--init-from", str(ckpt),
                          "--format", "criteo", "--sample", str(_criteo(tmp_path))],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "--init-from" in out.stderr and "criteo schema" in out.stderr


def _criteo(tmp_path):
    from streamfusion.data.generate import generate

    path = tmp_path / "c.txt"
    generate(path, "criteo", rows=50, seed=1)
    return path


def test_click_only_labels_window_negatives_and_late_clicks(kafka_bootstrap, topic_name,
                                                            tmp_path):
    """Events without labels, a label topic of clicks only: no click within the window is a
    negative, a click within it a positive, a click after it a counted, learned correction."""
    t = _topics(topic_name)
    log = make_log(tmp_path / "log.csv", 1500, seed=8)
    _, rows = read_events(log)
    events, clicks = [], []
    for key, ev in rows:
        if ev.pop("click") == 1:
            clicks.append(key)
        events.append(json.dumps(ev).encode())
    on_time, late = clicks[: len(clicks) // 2], clicks[len(clicks) // 2:]
    create_topics(kafka_bootstrap, [t["in"], t["labels"]])
    ckpt = tmp_path / "serve"
    serve = Serve(kafka_bootstrap, ["--input-topic", t["in"], "--output-topic", t["out"],
                                    "--label-topic", t["labels"], "--group-id", topic_name,
                                    "--checkpoint", str(ckpt), "--label-window", "2",
                                    "--exit-when-idle", "6", "--model", "fm", "--bits", "14"],
                  tmp_path / "serve.log")
    serve.wait_for_log("assigned")
    send(kafka_bootstrap, t["in"], events)
    send(kafka_bootstrap, t["labels"], [json.dumps({"id": k, "click": 1}).encode()
                                        for k in on_time])
    time.sleep(5)  # past the window: the rest are learned as negatives
    send(kafka_bootstrap, t["labels"], [json.dumps({"id": k, "click": 1}).encode()
                                        for k in late])
    assert serve.wait() == 0, serve.log()
    state = checkpoint.load(ckpt)
    join = state["join"]
    assert join["joined"] == len(on_time)
    assert join["window_negatives"] == 1500 - len(on_time)
    assert join["late_clicks"] == len(late)
    # every event learned once, and each late click once more, as its correction
    assert state["model"]["events_learned"] == 1500 + len(late)


def test_serve_starts_from_a_model_file(kafka_bootstrap, topic_name, tmp_path):
    """The model file of replay --save-model starts serve too, and scores as the replay's
    final model did: its first outputs equal `streamfusion score` on the same rows."""
    t = _topics(topic_name)
    log = make_log(tmp_path / "log.csv", 3000, seed=9)
    lines = log.read_text().splitlines(keepends=True)
    history, live = tmp_path / "history.csv", tmp_path / "live.csv"
    history.write_text("".join(lines[:2001]))
    live.write_text(lines[0] + "".join(lines[2001:]))
    model = tmp_path / "model.sfm"
    out = subprocess.run([*cli(), "replay", "--file", str(history), "--quiet", "--model", "fm",
                          "--bits", "14", "--holdout", "0", "--save-model", str(model)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    scored = subprocess.run([*cli(), "score", "--model", str(model), "--file", str(live),
                             "--out", str(tmp_path / "preds.csv")],
                            capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr
    want = {}
    for row in (tmp_path / "preds.csv").read_text().splitlines()[1:]:
        ident, p = row.split(",")[:2]
        want[ident] = float(p)
    # unlabelled events: serve scores them with the model as it was loaded
    _, rows = read_events(live)
    first = [json.dumps({k: v for k, v in ev.items() if k != "click"}).encode()
             for _, ev in list(rows)[:50]]
    send(kafka_bootstrap, t["in"], first)
    serve = Serve(kafka_bootstrap, ["--input-topic", t["in"], "--output-topic", t["out"],
                                    "--group-id", topic_name, "--init-from", str(model),
                                    "--exit-when-idle", "3"], tmp_path / "serve.log")
    assert serve.wait() == 0, serve.log()
    outs = [json.loads(m.value()) for m in read_topic(kafka_bootstrap, t["out"], 50)]
    assert len(outs) == 50
    for o in outs:
        assert o["p_click"] == pytest.approx(want[str(o["id"])], rel=1e-6, abs=1e-9)
