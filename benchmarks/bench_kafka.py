"""Kafka daemon benchmark: sustained scoring throughput and end-to-end latency, real broker.

    python benchmarks/bench_kafka.py [--bootstrap HOST:PORT] [--events 500000]
                                     [--rates 1000,10000] [--seconds 15]

1. Trains the default chain (ResFusion: 100 trees x 63 leaves + DeepFM 128-128, 2**20 rows)
   on a generated Avazu-format stream until its first tree refit, writes it as a model
   snapshot and announces it on a model topic, as ``serve --role train`` would.
2. Throughput: pre-produces ``--events`` events, then times ``streamfusion serve --role
   score`` (a subprocess, loading the snapshot) consuming them to the output topic; the rate
   is events / (last output's broker timestamp - first's). Beside it, in the same run: a
   bare Python consume -> produce loop over the same topic (no parsing, no model), the
   ceiling of the client library on this machine.
3. Latency: for each input rate, a paced producer sends events (send time recorded per id)
   while a separate process consumes the output topic (receive time per id); percentiles of
   receive - send.

Without ``--bootstrap`` it starts its own broker with ``scripts/kafka-local`` and stops it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streamfusion import checkpoint
from streamfusion.data.encoder import Encoder
from streamfusion.data.generate import generate
from streamfusion.fusion import ModelConfig
from streamfusion.kafka.daemon import SNAPSHOT_DIR, schema_for
from streamfusion.kafka.encoding import KafkaEncoder
from streamfusion.kafka.formats import read_events
from streamfusion.kafka.produce import produce
from streamfusion.online import OnlineModel

ROOT = Path(__file__).resolve().parents[1]
TRAIN_ROWS = 225_000  # the default chain's first refit starts after 200k learned events and
# swaps in 20k events later
TRAIN_BATCH = 5000
SEND_TICK = 0.001  # the paced producer sends a burst every millisecond


def start_broker(state: Path) -> str:
    env = dict(os.environ, KAFKA_LOCAL_STATE=str(state))
    out = subprocess.run([str(ROOT / "scripts" / "kafka-local"), "start"], env=env,
                         check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1].split("=", 1)[1]


def stop_broker(state: Path) -> None:
    subprocess.run([str(ROOT / "scripts" / "kafka-local"), "stop", "--state", str(state)],
                   check=False, capture_output=True)


def create_topics(bootstrap: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(n, 1, 1) for n in names]).values():
        f.result(timeout=60)


def train_snapshot(log: Path, folder: Path, bootstrap: str, model_topic: str) -> dict:
    """Train the default chain through its first refit; write + announce the snapshot."""
    schema = schema_for("avazu")
    config = ModelConfig()
    model = OnlineModel(config, len(schema.field_names))
    encoder = Encoder(schema, bits=config.bits, seed=config.seed)
    kenc = KafkaEncoder(encoder)
    _, events = read_events(log, rows=TRAIN_ROWS)
    t0 = time.perf_counter()
    chunk: list[bytes] = []
    for _, ev in events:
        chunk.append(json.dumps(ev).encode())
        if len(chunk) == TRAIN_BATCH:
            model.poll()
            model.step(kenc.encode(chunk).batch)
            chunk = []
    if chunk:
        model.step(kenc.encode(chunk).batch)
    for stage in model.chain.tree_stages:
        stage.wait()
    model.poll()
    seconds = time.perf_counter() - t0
    path = checkpoint.save_file(folder / SNAPSHOT_DIR / "model-00000001.sfck", {
        "kind": "streamfusion-snapshot", "version": 1,
        "model": model.state_dict(), "encoder": encoder.state_dict()})
    p = Producer({"bootstrap.servers": bootstrap})
    p.produce(model_topic, json.dumps({"version": 1, "path": str(path)}).encode(), b"model")
    p.flush(30)
    info = {"train_events": TRAIN_ROWS, "train_seconds": seconds,
            "tree_version": model.version, "stages": list(model.chain.kinds)}
    model.close()
    return info


def serve_proc(bootstrap: str, in_topic: str, out_topic: str, model_topic: str, group: str,
               log: Path, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "streamfusion.cli", "serve", "--bootstrap-servers", bootstrap,
           "--input-topic", in_topic, "--output-topic", out_topic, "--group-id", group,
           "--role", "score", "--model-topic", model_topic, *extra]
    return subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, all threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain_timestamps(bootstrap: str, topic: str, expect: int, pid: int, limit: float = 600.0
                     ) -> tuple[np.ndarray, float]:
    """Broker timestamps (ms) of the first ``expect`` messages of ``topic``, and the CPU time
    process ``pid`` had used when the first of them arrived (its start-up, to subtract)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"drain-{time.time_ns()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    ts: list[int] = []
    startup_cpu = 0.0
    start = time.monotonic()
    while len(ts) < expect and time.monotonic() - start < limit:
        got = [m.timestamp()[1] for m in c.consume(20_000, 0.2) if m.error() is None]
        if got and not ts:
            startup_cpu = cpu_seconds(pid)
        ts += got
    c.close()
    return np.asarray(ts, dtype=np.int64), startup_cpu


def passthrough(bootstrap: str, in_topic: str, out_topic: str, n: int) -> float:
    """Events/s of a bare consume -> produce loop: the Python client's ceiling here."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"pass-{time.time_ns()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "queued.min.messages": 20_000})
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2, "compression.type": "lz4",
                  "enable.idempotence": True, "queue.buffering.max.messages": 1_000_000})
    c.subscribe([in_topic])
    got = 0
    t0 = None
    while got < n:
        msgs = c.consume(10_000, 1.0)
        if t0 is None and msgs:
            t0 = time.perf_counter()
        for m in msgs:
            if m.error() is None:
                p.produce(out_topic, m.value()[:100], m.key())
                got += 1
        p.poll(0)
    p.flush(60)
    seconds = time.perf_counter() - t0
    c.close()
    return n / seconds


def _receiver(bootstrap: str, topic: str, n: int, out_path: str, ready) -> None:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-{time.time_ns()}",
                  "auto.offset.reset": "latest", "enable.auto.commit": False,
                  "fetch.wait.max.ms": 1, "fetch.min.bytes": 1})
    c.subscribe([topic])
    while not c.assignment():
        c.poll(0.1)
    ready.set()
    seqs, recv = [], []
    deadline = time.monotonic() + 600
    while len(seqs) < n and time.monotonic() < deadline:
        msg = c.poll(0.05)
        if msg is None or msg.error() is not None:
            continue
        now = time.time()
        seqs.append(int(msg.key().split(b"-")[1]))
        recv.append(now)
        for m in c.consume(10_000, 0):  # whatever else is already here
            if m.error() is None:
                seqs.append(int(m.key().split(b"-")[1]))
                recv.append(now)
    c.close()
    np.savez(out_path, seq=np.asarray(seqs), recv=np.asarray(recv))


def latency(bootstrap: str, in_topic: str, out_topic: str, events: list[dict], rate: int,
            seconds: float, tag: str, tmp: Path) -> dict:
    n = min(len(events), int(rate * seconds))
    ready = mp.Event()
    out_path = str(tmp / f"recv-{tag}.npz")
    proc = mp.Process(target=_receiver, args=(bootstrap, out_topic, n, out_path, ready))
    proc.start()
    ready.wait(60)
    payloads = []
    for i, ev in enumerate(events[:n]):
        ev = dict(ev, id=f"{tag}-{i}")
        payloads.append((json.dumps(ev).encode(), ev["id"].encode()))
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "enable.idempotence": True})
    p.produce(f"{in_topic}-warm", b"{}")  # pays for the producer id and metadata up front
    p.flush(30)
    sent = np.zeros(n)
    t0 = time.perf_counter()
    wall0 = time.time()
    i = 0
    while i < n:
        due = min(n, int((time.perf_counter() - t0) * rate) + 1)
        while i < due:
            sent[i] = time.time()
            p.produce(in_topic, payloads[i][0], payloads[i][1])
            i += 1
        p.poll(0)
        time.sleep(SEND_TICK)
    p.flush(60)
    achieved = n / (time.time() - wall0)
    proc.join(120)
    data = np.load(out_path)
    seq, recv = data["seq"], data["recv"]
    lat_ms = (recv - sent[seq]) * 1000.0
    second = (sent[seq] - wall0).astype(np.int64)
    by_second = [float(np.median(lat_ms[second == k])) for k in range(int(second.max()) + 1)
                 if np.any(second == k)]
    return {"p50_ms_by_second": by_second, "rate": rate, "achieved_rate": achieved,
            "events": n, "received": int(len(seq)),
            "p50_ms": float(np.percentile(lat_ms, 50)), "p95_ms": float(np.percentile(lat_ms, 95)),
            "p99_ms": float(np.percentile(lat_ms, 99)), "max_ms": float(lat_ms.max())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default=None, help="use this broker (default: start one)")
    ap.add_argument("--events", type=int, default=500_000, help="events for the throughput run")
    ap.add_argument("--rates", default="1000,10000", help="input rates for latency, events/s")
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each latency run")
    ap.add_argument("--batch-size", type=int, default=5000, help="serve --batch-size")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",") if r]

    tmp = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
    state = tmp / "kafka-local.state"
    bootstrap = args.bootstrap or start_broker(state)
    run = f"bench-{int(time.time())}"
    t = {k: f"{run}-{k}" for k in ("in", "out", "pass", "models", "lin", "lout")}
    procs: list[subprocess.Popen] = []
    try:
        create_topics(bootstrap, list(t.values()))
        log = tmp / "stream.csv"
        generate(log, "avazu", rows=TRAIN_ROWS + args.events, seed=11)
        print(f"broker {bootstrap}; training the default chain on {TRAIN_ROWS:,} events ...",
              flush=True)
        info = train_snapshot(log, tmp, bootstrap, t["models"])
        print(f"  trained {info['stages']} in {info['train_seconds']:.1f}s "
              f"(tree version {info['tree_version']})", flush=True)

        # the benchmark stream: events after the training rows, without labels (live traffic)
        _, rows = read_events(log)
        events = [ev for i, (_, ev) in enumerate(rows) if i >= TRAIN_ROWS]
        for ev in events:
            ev.pop("click", None)
        bench_log = tmp / "bench.csv"
        with open(bench_log, "w") as f:
            cols = [c for c in events[0] if c != "id"]
            f.write(",".join(["id", *cols]) + "\n")
            for ev in events:
                f.write(",".join([ev["id"], *(ev[c] for c in cols)]) + "\n")
        stats = produce(str(bench_log), t["in"], bootstrap, format="csv")
        print(f"pre-produced {stats['events']:,} events ({stats['events_per_second']:,.0f}/s)",
              flush=True)

        serve = serve_proc(bootstrap, t["in"], t["out"], t["models"], f"{run}-tp",
                           tmp / "serve-throughput.log",
                           ["--batch-size", str(args.batch_size), "--poll-timeout", "0.1",
                            "--exit-when-idle", "5"])
        procs.append(serve)
        load_before = os.getloadavg()[0]
        ts, startup_cpu = drain_timestamps(bootstrap, t["out"], stats["events"], serve.pid)
        cpu = cpu_seconds(serve.pid) - startup_cpu  # scoring only: no imports, no model load
        serve.wait(120)
        span = (ts.max() - ts.min()) / 1000.0
        throughput = len(ts) / span if span > 0 else float("nan")
        per_cpu = len(ts) / cpu
        print(f"serve --role score: {len(ts):,} events scored in {span:.2f}s = "
              f"{throughput:,.0f} events/s; serve used {cpu:.1f} CPU-s = {per_cpu:,.0f} events "
              f"per CPU-second (load average {load_before:.1f} on {os.cpu_count()} cores)",
              flush=True)
        ceiling = passthrough(bootstrap, t["in"], t["pass"], stats["events"])
        print(f"bare consume -> produce loop (no parse, no model): {ceiling:,.0f} events/s",
              flush=True)

        lat_serve = serve_proc(bootstrap, t["lin"], t["lout"], t["models"], f"{run}-lat",
                               tmp / "serve-latency.log",
                               ["--batch-size", str(args.batch_size), "--poll-timeout", "0.002"])
        procs.append(lat_serve)
        time.sleep(8.0)  # join the group and load the model
        # warm-up, not reported: the first outputs wait for the output topic's metadata
        latency(bootstrap, t["lin"], t["lout"], events, 500, 2.0, "warm", tmp)
        lat = []
        for rate in rates:
            r = latency(bootstrap, t["lin"], t["lout"], events, rate, args.seconds,
                        f"r{rate}", tmp)
            lat.append(r)
            print(f"latency at {rate:,}/s (achieved {r['achieved_rate']:,.0f}/s, "
                  f"{r['received']:,}/{r['events']:,} received): p50 {r['p50_ms']:.1f} ms, "
                  f"p95 {r['p95_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                  f"max {r['max_ms']:.1f} ms", flush=True)
        lat_serve.terminate()
        lat_serve.wait(60)

        print("\n| measure | value |\n|---|---|")
        print(f"| serve --role score, default chain, sustained | {throughput:,.0f} events/s |")
        print(f"| serve --role score, events per CPU-second of serve | {per_cpu:,.0f} |")
        print(f"| bare confluent-kafka consume -> produce (same run) | {ceiling:,.0f} events/s |")
        for r in lat:
            print(f"| latency at {r['rate']:,}/s: p50 / p95 / p99 / max | {r['p50_ms']:.1f} / "
                  f"{r['p95_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.1f} ms |")
        print("| DESIGN anchor: LightGBM 100x63 raw predict, batches | 100k-230k rows/s |")
        print("| DESIGN anchor: PyTorch DeepFM 128-128 train | 55k-70k events/s |")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "train": info, "throughput": throughput, "passthrough": ceiling,
                "events_per_cpu_second": per_cpu, "load_average": load_before,
                "latency": lat, "events": stats["events"]}, indent=2))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if not args.bootstrap:
            stop_broker(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
