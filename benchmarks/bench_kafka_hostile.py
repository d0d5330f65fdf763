"""Kafka daemon under hostile input and crashes, real broker.

    python benchmarks/bench_kafka_hostile.py [--bootstrap HOST:PORT] [--valid 100000]
                                             [--hostile 10000] [--crashes 5] [--rate 5000]
                                             [--checkpoint-interval 2] [--parts fuzz,crash]

1. Fuzz: ``--hostile`` hostile messages (deep nesting, broken JSON and UTF-8, oversized,
   wrong types, nested clicks, thousands of keys, long strings, raw bytes, no id) mixed at
   seeded random places into ``--valid`` valid events, on the input topic and (one in ten)
   on the label topic. ``serve --role both`` consumes them with a dead-letter topic. Beside
   it, in the same run, a clean run over the valid events alone. Reported: valid events
   scored (all of them is the target), hostile messages dead-lettered (all), the exit code
   (0: the daemon never stopped), peak RSS of both runs (target: the hostile run within 20%
   of the clean one) and their throughput.
2. Crashes: events paced at ``--rate`` while serve (``--checkpoint-interval``) is killed with
   SIGKILL ``--crashes`` times at seeded random moments and restarted. Reported: events
   lost (target 0) and duplicate outputs per crash, beside the bound at-least-once allows:
   the events of one checkpoint interval (``rate x interval``) plus one mini-batch.

Throughput and latency with snapshot signing on are ``bench_kafka.py``'s (its scorers run
with ``--model-key-file``). ``$STREAMFUSION_CLI`` replaces the ``streamfusion`` command.
Without ``--bootstrap`` it starts its own broker with ``scripts/kafka-local`` and stops it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_kafka import cli, start_broker, stop_broker  # the sibling script's broker helpers
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamfusion.data.generate import generate
from streamfusion.kafka.formats import read_events

MODEL = ["--model", "fm", "--bits", "18"]  # the fuzz is about messages, not the model
RSS_POLL = 0.1  # seconds between looks at serve's peak RSS (VmHWM only grows)
IDLE_EXIT = 5  # serve --exit-when-idle of the fuzz runs, seconds
CATCH_UP_LIMIT = 180.0  # seconds the crash run waits for serve to score the last events
HOSTILE_LABEL_SHARE = 10  # one hostile message in this many goes to the label topic


def create_topics(bootstrap: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(n, 1, 1) for n in names]).values():
        f.result(timeout=60)


KINDS = 14  # kinds of hostile messages, taken in turn
LABEL_KINDS = {0, 1, 3, 4, 5, 7, 8, 10, 11, 13}  # the kinds that are hostile labels as well


def hostile_messages(n: int, template: dict, rng: np.random.Generator) -> list[bytes]:
    """``n`` messages no daemon should choke on, of every kind in turn."""
    kinds = [
        lambda i: b"[" * int(rng.integers(1000, 60_000)),
        lambda i: b'{"id": "h%d", "click": ' % i + b"[" * 20_000 + b"]" * 20_000 + b"}",
        lambda i: b'{"id": "h%d", "C1": ' % i + b'{"a":' * 5000 + b"1" + b"}" * 5001,
        lambda i: rng.bytes(int(rng.integers(1, 400))),
        lambda i: b"\xff\xfe" + json.dumps(template).encode(),
        lambda i: json.dumps({**template, "id": f"h{i}", "pad": "x" * 70_000}).encode(),
        lambda i: json.dumps({**template, "id": f"h{i}", "C1": [1, {"x": None}]}).encode(),
        lambda i: json.dumps({**template, "id": f"h{i}", "click": 7}).encode(),
        lambda i: json.dumps({"id": f"h{i}", **{f"k{j}": j for j in range(5000)}}).encode(),
        lambda i: json.dumps({**template, "id": f"h{i}", "site_id": "s" * 40_000}).encode(),
        lambda i: json.dumps({k: v for k, v in template.items() if k != "id"}).encode(),
        lambda i: b'["not", "an", "object"]',
        lambda i: json.dumps({**template, "id": f"h{i}", "hour": "not-an-hour"}).encode(),
        lambda i: b'{"id": "h%d", "click": 1e400}' % i,
    ]
    assert len(kinds) == KINDS
    return [kinds[i % len(kinds)](i) for i in range(n)]


def send(bootstrap: str, topic: str, values: list[bytes]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                  "linger.ms": 5, "queue.buffering.max.messages": 1_000_000})
    for v in values:
        while True:
            try:
                p.produce(topic, v)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(120) == 0


def count_topic(bootstrap: str, topic: str, idle: float = 5.0, ids_too: bool = True
                ) -> tuple[int, set[str]]:
    """Messages on ``topic`` and (``ids_too``: an output topic) their ids."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"count-{time.time_ns()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    n, ids, last = 0, set(), time.monotonic()
    try:
        while time.monotonic() - last < idle:
            for m in c.consume(10_000, 0.5):
                if m.error() is None:
                    n += 1
                    last = time.monotonic()
                    if ids_too:
                        ids.add(str(json.loads(m.value())["id"]))
    finally:
        c.close()
    return n, ids


def outputs_per_id(bootstrap: str, topic: str, idle: float = 5.0) -> dict[str, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"count-{time.time_ns()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    per: dict[str, int] = {}
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle:
            for m in c.consume(10_000, 0.5):
                if m.error() is None:
                    key = str(json.loads(m.value())["id"])
                    per[key] = per.get(key, 0) + 1
                    last = time.monotonic()
    finally:
        c.close()
    return per


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def serve_run(bootstrap: str, args: list[str], log: Path) -> dict:
    """Run serve to its idle exit; exit code, seconds, peak RSS."""
    cmd = [*cli(), "serve", "--bootstrap-servers", bootstrap, *args]
    t0 = time.monotonic()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
            time.sleep(RSS_POLL)
    return {"code": proc.returncode, "seconds": time.monotonic() - t0 - IDLE_EXIT,
            "peak_rss_mb": peak}


def fuzz(bootstrap: str, tmp: Path, run: str, valid: int, hostile: int, seed: int) -> dict:
    log = tmp / "fuzz.csv"
    generate(log, "avazu", rows=valid, seed=seed)
    rows = list(read_events(log)[1])
    events = [json.dumps(ev).encode() for _, ev in rows]
    rng = np.random.default_rng(seed)
    bad = hostile_messages(hostile, dict(rows[0][1]), rng)
    # a label with a spoiled feature field is a valid label (only id and click count):
    # the label topic gets the kinds that are hostile as labels too
    as_label = [i for i in range(len(bad)) if i % KINDS in LABEL_KINDS]
    to_labels = [bad[i] for i in as_label[::HOSTILE_LABEL_SHARE]]
    chosen = set(as_label[::HOSTILE_LABEL_SHARE])
    to_events = [b for i, b in enumerate(bad) if i not in chosen]
    mixed = list(events)
    for b, at in zip(to_events, sorted(rng.integers(0, len(mixed), len(to_events))),
                     strict=True):
        mixed.insert(int(at), b)
    out = {}
    for name, values, labels in (("clean", events, []), ("hostile", mixed, to_labels)):
        t = {k: f"{run}-{name}-{k}" for k in ("in", "labels", "out", "dlq")}
        create_topics(bootstrap, list(t.values()))
        send(bootstrap, t["in"], values)
        send(bootstrap, t["labels"], labels)
        r = serve_run(bootstrap, ["--input-topic", t["in"], "--label-topic", t["labels"],
                                  "--output-topic", t["out"], "--dead-letter-topic", t["dlq"],
                                  "--group-id", f"{run}-{name}", "--exit-when-idle",
                                  str(IDLE_EXIT), *MODEL], tmp / f"serve-{name}.log")
        _, scored = count_topic(bootstrap, t["out"])
        dead, _ = count_topic(bootstrap, t["dlq"], ids_too=False)
        r.update(valid_scored=len(scored & {k for k, _ in rows}), dead_lettered=dead,
                 hostile=len(bad) if name == "hostile" else 0,
                 events_per_second=len(values) / max(r["seconds"], 1e-9))
        out[name] = r
    return out


def crashes(bootstrap: str, tmp: Path, run: str, n_crashes: int, rate: float,
            interval: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    seconds = (n_crashes + 1) * 6.0
    log = tmp / "crash.csv"
    generate(log, "avazu", rows=int(rate * seconds), seed=seed)
    rows = list(read_events(log)[1])
    values = [json.dumps(ev).encode() for _, ev in rows]
    t = {k: f"{run}-crash-{k}" for k in ("in", "out")}
    create_topics(bootstrap, list(t.values()))
    args = [*cli(), "serve", "--bootstrap-servers", bootstrap, "--input-topic", t["in"],
            "--output-topic", t["out"], "--group-id", f"{run}-crash", "--checkpoint",
            str(tmp / "crash-ckpt"), "--checkpoint-interval", str(interval),
            "--batch-size", "500", *MODEL]
    logf = open(tmp / "serve-crash.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT)
    kill_at = sorted(rng.uniform(2.0, seconds - 2.0, n_crashes).tolist())
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    t0 = time.monotonic()
    for i, v in enumerate(values):  # paced; kills at their moments
        due = t0 + i / rate
        while (wait := due - time.monotonic()) > 0:
            time.sleep(min(wait, 0.001))
        if kill_at and time.monotonic() - t0 >= kill_at[0]:
            kill_at.pop(0)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc = subprocess.Popen(args, stdout=logf, stderr=subprocess.STDOUT)
        p.produce(t["in"], v)
        p.poll(0)
    p.flush(60)
    # the last restart rejoins the group once the killed member's session expired: wait
    # until every event has an output (or the limit), then stop cleanly
    ids = {k for k, _ in rows}
    deadline = time.monotonic() + CATCH_UP_LIMIT
    while time.monotonic() < deadline and not ids <= set(outputs_per_id(bootstrap, t["out"],
                                                                         idle=2.0)):
        time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    logf.close()
    per = outputs_per_id(bootstrap, t["out"])
    dup = sum(per.values()) - len(per)
    return {"events": len(rows), "crashes": n_crashes, "lost": len(ids - set(per)),
            "duplicates": dup, "duplicates_per_crash": dup / max(n_crashes, 1),
            "bound_per_crash": rate * interval + 500, "exit_code": code}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default=None, help="use this broker (default: start one)")
    ap.add_argument("--valid", type=int, default=100_000, help="valid events of the fuzz run")
    ap.add_argument("--hostile", type=int, default=10_000, help="hostile messages mixed in")
    ap.add_argument("--crashes", type=int, default=5, help="SIGKILLs of the crash run")
    ap.add_argument("--rate", type=float, default=5000.0, help="events/s of the crash run")
    ap.add_argument("--checkpoint-interval", type=float, default=2.0,
                    help="serve --checkpoint-interval of the crash run, seconds")
    ap.add_argument("--parts", default="fuzz,crash", help="what to run: fuzz, crash")
    ap.add_argument("--seed", type=int, default=0, help="seed of the streams and kill times")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary folder (serve logs, logs of events)")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    state = tmp / "kafka-local.state"
    bootstrap = args.bootstrap or start_broker(state)
    run = f"hostile-{int(time.time())}"
    results: dict = {}
    try:
        if "fuzz" in parts:
            f = fuzz(bootstrap, tmp, run, args.valid, args.hostile, args.seed)
            results["fuzz"] = f
            c, h = f["clean"], f["hostile"]
            print(f"fuzz: {args.valid:,} valid events, {h['hostile']:,} hostile messages")
            print("| run | exit | valid scored | dead-lettered | peak RSS MB | events/s |")
            print("|---|---|---|---|---|---|")
            for name, r in (("clean", c), ("hostile", h)):
                print(f"| {name} | {r['code']} | {r['valid_scored']:,} / {args.valid:,} | "
                      f"{r['dead_lettered']:,} / {r['hostile']:,} | {r['peak_rss_mb']:.0f} | "
                      f"{r['events_per_second']:,.0f} |")
            ratio = h["peak_rss_mb"] / max(c["peak_rss_mb"], 1e-9)
            print(f"peak RSS hostile / clean: {ratio:.2f} (target <= 1.20)")
        if "crash" in parts:
            r = crashes(bootstrap, tmp, run, args.crashes, args.rate, args.checkpoint_interval,
                        args.seed)
            results["crash"] = r
            print(f"crashes: {r['crashes']} x SIGKILL over {r['events']:,} events at "
                  f"{args.rate:,.0f}/s, checkpoint every {args.checkpoint_interval}s")
            print(f"  lost {r['lost']} (target 0); duplicates {r['duplicates']:,} = "
                  f"{r['duplicates_per_crash']:,.0f} per crash (bound: one interval + one "
                  f"batch = {r['bound_per_crash']:,.0f}); final exit {r['exit_code']}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        if not args.bootstrap:
            stop_broker(state)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
