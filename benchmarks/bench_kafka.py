"""Kafka daemon benchmark: sustained scoring throughput and end-to-end latency, real broker.

    python benchmarks/bench_kafka.py [--bootstrap HOST:PORT] [--events 300000]
                                     [--rates 1000,10000] [--seconds 10] [--repeat 3]
                                     [--parts throughput,latency,labels]
                                     [--label-events 1000000] [--label-rate 5000]
                                     [--label-window 300] [--label-delay 60]
                                     [--label-density 46]

1. Trains the default chain (ResFusion: 100 trees x 63 leaves + DeepFM 128-128, 2**20 rows)
   on a generated Avazu-format stream until its first tree refit has swapped in and publishes
   it on a model topic, in chunks signed with HMAC-SHA256, as ``serve --role train`` does;
   the scorers below run with ``--model-key-file`` (signing on).
2. Throughput: pre-produces ``--events`` events, then times ``streamfusion serve --role
   score`` (a subprocess, loading the snapshot) consuming them to the output topic; the rate
   is events / (last output's broker timestamp - first's). Beside it, in the same run: a bare
   Python consume -> produce loop over the same topic (no parsing, no model), once with the
   client settings serve had before issue 4's tuning and once with serve's own settings.
3. Latency: for each input rate, a paced producer (``--producer-linger-ms``, librdkafka's
   default 5) sends events (send time recorded per id, before the linger) while a separate
   process consumes the output topic (receive time per id); percentiles of receive - send.
   The input topic stamps each event with the broker's append time and each output carries
   serve's produce time, which splits every latency into producer -> broker, broker ->
   serve's output (fetch, decode, score, produce call) and output -> receiver.

4. Labels: ``serve --role both`` learning from scratch on ``--label-events`` generated events
   paced at ``--label-rate``: with the labels attached to the events, and with a click-only
   label topic (each click sent an exponential delay of mean ``--label-delay`` seconds after
   its event; ``serve --label-window`` 0 and ``--label-window``). Delays and windows are
   seconds of the log's clock: the replay runs ``rate / density`` times faster than the log,
   and so do they, so a click comes as many events after its impression as it would live
   (``--label-density``: the real Avazu log's 46 events per second by default; ``log`` takes
   the generated log's own, far sparser, where a click is about one event late and the
   pipeline's own latency dominates). With delays in wall seconds instead, a click 60 s late
   at 5,000 events/s would carry features 300,000 events (days of the generated log) old.
   Reported: the AUC of the live scores (the outputs, test-then-train) against the log's
   labels.

Step 2 also runs with the same log typed as a generic CSV (``serve --schema``, the types the
replay infers). ``--repeat`` runs steps 2 and 3 that many times (the medians are reported:
the machine is shared). ``$STREAMFUSION_CLI`` replaces the ``streamfusion`` command (e.g.
another checkout's ``env PYTHONPATH=... python -m streamfusion.cli``, to compare two
versions on one broker).
Without ``--bootstrap`` it starts its own broker with ``scripts/kafka-local`` and stops it.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from streamfusion import checkpoint
from streamfusion.data.encoder import Encoder
from streamfusion.data.generate import generate
from streamfusion.data.readers import log_schema
from streamfusion.data.schema import Schema, avazu_schema
from streamfusion.evaluate import auc
from streamfusion.fusion import ModelConfig
from streamfusion.kafka.daemon import PRODUCER_TUNING
from streamfusion.kafka.encoding import KafkaEncoder
from streamfusion.kafka.formats import read_events
from streamfusion.kafka.produce import produce
from streamfusion.kafka.snapshot_wire import read_key
from streamfusion.kafka.snapshots import Snapshots
from streamfusion.kafka.source import CONSUMER_TUNING
from streamfusion.online import OnlineModel

ROOT = Path(__file__).resolve().parents[1]
TRAIN_BATCH = 5000
SEND_TICK = 0.001  # the paced producer sends a burst every millisecond
WARM_SECONDS = 5.0  # of paced traffic before the latency runs
# The broker answers a waiting fetch as soon as data arrives, so a long wait costs the
# receiver no latency; a 1 ms wait had it ask ~1000 times a second, broker CPU serve needs
RECEIVER_WAIT_MS = 100
# librdkafka's default, as an upstream application would have it; linger 0 sent a request per
# 1 ms burst and doubled the broker's CPU at 10k events/s (the latency still counts the linger)
PRODUCER_LINGER_MS = 5.0
# serve's client settings before issue 4's tuning, for the bare loop's "before" line
BEFORE_CONSUMER = {"fetch.wait.max.ms": 10, "queued.min.messages": 20_000}
BEFORE_PRODUCER = {"linger.ms": 2, "compression.type": "lz4",
                   "queue.buffering.max.messages": 1_000_000}


def train_rows(config: ModelConfig, n_fields: int) -> int:
    """Events the chain must learn before its first tree refit has swapped in."""
    model = OnlineModel(config, n_fields)
    try:
        return max(s.first_fit + s.swap_lag for s in model.chain.tree_stages) + TRAIN_BATCH
    finally:
        model.close()


def start_broker(state: Path) -> str:
    env = dict(os.environ, KAFKA_LOCAL_STATE=str(state))
    out = subprocess.run([str(ROOT / "scripts" / "kafka-local"), "start"], env=env,
                         check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1].split("=", 1)[1]


def stop_broker(state: Path) -> None:
    subprocess.run([str(ROOT / "scripts" / "kafka-local"), "stop", "--state", str(state)],
                   check=False, capture_output=True)


def broker_pid(state: Path) -> int | None:
    for line in state.read_text().splitlines() if state.exists() else []:
        if line.startswith("pid="):
            return int(line.split("=", 1)[1])
    return None


def create_topics(bootstrap: str, names: list[str], config: dict | None = None) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [NewTopic(n, 1, 1, config=config or {}) for n in names]
    for f in admin.create_topics(new).values():
        f.result(timeout=60)


def log_append_time(bootstrap: str, topic: str) -> bool:
    """Does ``topic`` stamp messages with the broker's append time?"""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    conf = admin.describe_configs([res])[res].result(timeout=30)
    return conf["message.timestamp.type"].value == "LogAppendTime"


def train_snapshot(log: Path, folder: Path, bootstrap: str, model_topic: str, rows: int,
                   schema: Schema, version: int = 1, key_file: Path | None = None) -> dict:
    """Train the default chain through its first refit on ``schema``'s reading of the log;
    write + announce the snapshot as ``version``."""
    config = ModelConfig()
    model = OnlineModel(config, len(schema.field_names))
    encoder = Encoder(schema, bits=config.bits, seed=config.seed)
    kenc = KafkaEncoder(encoder)
    _, events = read_events(log, rows=rows, schema=schema)
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
    # published through the model topic, signed, as serve --role train does
    snapshots = Snapshots(model_topic, lambda: {"bootstrap.servers": bootstrap}, "bench",
                          schema, read_key(key_file or KEY_FILE(folder)))
    t1 = time.perf_counter()
    size = snapshots.publish("bench-trainer", version, model, encoder)
    snapshots.close()
    info = {"train_events": rows, "train_seconds": seconds, "snapshot_bytes": size,
            "publish_seconds": time.perf_counter() - t1,
            "tree_version": model.version, "stages": list(model.chain.kinds)}
    model.close()
    return info


def KEY_FILE(folder: Path) -> Path:  # noqa: N802 - reads as a constant
    """The snapshot signing key of a benchmark folder (written on first use)."""
    path = folder / "model.key"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(32).hex().encode())
    return path


def cli() -> list[str]:
    """The ``streamfusion`` command (``$STREAMFUSION_CLI`` overrides it)."""
    given = os.environ.get("STREAMFUSION_CLI")
    return shlex.split(given) if given else [sys.executable, "-m", "streamfusion.cli"]


def serve_proc(bootstrap: str, in_topic: str, out_topic: str, model_topic: str, group: str,
               log: Path, extra: list[str]) -> subprocess.Popen:
    cmd = [*cli(), "serve", "--bootstrap-servers", bootstrap,
           "--input-topic", in_topic, "--output-topic", out_topic, "--group-id", group,
           "--role", "score", "--model-topic", model_topic,
           "--model-key-file", str(KEY_FILE(log.parent)), *extra]
    return subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115


def machine_ticks() -> tuple[int, int]:
    """(all, stolen) CPU ticks of the machine so far: steal is time the hypervisor gave this
    VM's cores to someone else (it slows everything here without showing in the load)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]), fields[7]


def steal_share(before: tuple[int, int]) -> float:
    """Share of CPU time stolen since ``machine_ticks()`` returned ``before``."""
    now = machine_ticks()
    return (now[1] - before[1]) / max(now[0] - before[0], 1)


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


def passthrough(bootstrap: str, in_topic: str, out_topic: str, n: int, consumer: dict,
                producer: dict) -> float:
    """Events/s of a bare consume -> produce loop: the Python client's ceiling here."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"pass-{time.time_ns()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, **consumer})
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, **producer})
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


def _receiver(bootstrap: str, topic: str, n: int, out_path: str, ready, wait_ms: int) -> None:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-{time.time_ns()}",
                  "auto.offset.reset": "latest", "enable.auto.commit": False,
                  "fetch.wait.max.ms": wait_ms, "fetch.min.bytes": 1})
    c.subscribe([topic])
    while not c.assignment():
        c.poll(0.1)
    ready.set()
    seqs, recv, made = [], [], []  # made: serve's produce time of the output (ms)
    deadline = time.monotonic() + 600
    while len(seqs) < n and time.monotonic() < deadline:
        msg = c.poll(0.05)
        if msg is None or msg.error() is not None:
            continue
        now = time.time()
        for m in [msg, *c.consume(10_000, 0)]:  # and whatever else is already here
            if m.error() is None:
                seqs.append(int(m.key().split(b"-")[1]))
                recv.append(now)
                made.append(m.timestamp()[1])
    c.close()
    np.savez(out_path, seq=np.asarray(seqs), recv=np.asarray(recv), made=np.asarray(made))


def appended(bootstrap: str, topic: str, tag: str, n: int) -> np.ndarray:
    """Broker append time (s) of events ``tag-0 .. tag-(n-1)`` of a LogAppendTime topic."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"app-{time.time_ns()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    out = np.full(n, np.nan)
    prefix = tag.encode() + b"-"
    got, last = 0, time.monotonic()
    while got < n and time.monotonic() - last < 10:
        for m in c.consume(10_000, 0.5):
            if m.error() is None and m.key() is not None and m.key().startswith(prefix):
                out[int(m.key()[len(prefix):])] = m.timestamp()[1] / 1000.0
                got += 1
                last = time.monotonic()
    c.close()
    return out


def _pct(x: np.ndarray) -> str:
    x = x[np.isfinite(x)]
    if not len(x):
        return "n/a"
    return " / ".join(f"{v:.1f}" for v in (*np.percentile(x, [50, 99]), x.max()))


def latency(bootstrap: str, in_topic: str, out_topic: str, events: list[dict], rate: int,
            seconds: float, tag: str, tmp: Path, pids: tuple[int | None, int] | None = None,
            linger_ms: float = PRODUCER_LINGER_MS, wait_ms: int = RECEIVER_WAIT_MS) -> dict:
    """Paced events at ``rate`` for ``seconds``: latency percentiles, their split into stages
    (when the input topic has LogAppendTime) and the CPU broker and serve (``pids``) used."""
    n = min(len(events), int(rate * seconds))
    ready = mp.Event()
    out_path = str(tmp / f"recv-{tag}.npz")
    proc = mp.Process(target=_receiver, args=(bootstrap, out_topic, n, out_path, ready, wait_ms))
    proc.start()
    ready.wait(60)
    payloads = []
    for i, ev in enumerate(events[:n]):
        ev = dict(ev, id=f"{tag}-{i}")
        payloads.append((json.dumps(ev).encode(), ev["id"].encode()))
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": linger_ms,
                  "enable.idempotence": True})
    p.produce(f"{in_topic}-warm", b"{}")  # pays for the producer id and metadata up front
    p.flush(30)
    sent = np.zeros(n)
    cpu0 = [cpu_seconds(pid) if pid else 0.0 for pid in pids or ()]
    ticks = machine_ticks()
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
    span = time.perf_counter() - t0
    achieved = n / (time.time() - wall0)
    cpu = [(cpu_seconds(pid) - c0) / span if pid else float("nan")
           for pid, c0 in zip(pids or (), cpu0, strict=True)]
    proc.join(120)
    data = np.load(out_path)
    seq, recv, made = data["seq"], data["recv"], data["made"] / 1000.0
    lat_ms = (recv - sent[seq]) * 1000.0
    second = (sent[seq] - wall0).astype(np.int64)
    by_second = [float(np.median(lat_ms[second == k])) for k in range(int(second.max()) + 1)
                 if np.any(second == k)]
    out = {"p50_ms_by_second": by_second, "rate": rate, "achieved_rate": achieved,
           "events": n, "received": int(len(seq)),
           "p50_ms": float(np.percentile(lat_ms, 50)), "p95_ms": float(np.percentile(lat_ms, 95)),
           "p99_ms": float(np.percentile(lat_ms, 99)), "max_ms": float(lat_ms.max()),
           "broker_cores": cpu[0] if cpu else None, "serve_cores": cpu[1] if cpu else None,
           "steal": steal_share(ticks)}
    if log_append_time(bootstrap, in_topic):
        app = appended(bootstrap, in_topic, tag, n)[seq]
        stages = {"producer->broker": (app - sent[seq]) * 1000.0,
                  "broker->serve output": (made - app) * 1000.0,
                  "serve output->receiver": (recv - made) * 1000.0}
        out["stages_p50_p99_max_ms"] = {k: _pct(v) for k, v in stages.items()}
        slow = lat_ms > 50.0
        if slow.any():  # where the events over 50 ms lost their time, on average
            out["over_50ms"] = {"share": float(slow.mean()),
                                **{k: float(np.nanmean(v[slow])) for k, v in stages.items()}}
    return out


def throughput_run(bootstrap: str, topics: dict, group: str, n: int, log: Path,
                   batch_size: int, extra: list[str]) -> dict:
    """One ``serve --role score`` over the pre-produced topic: events/s and per CPU-second."""
    serve = serve_proc(bootstrap, topics["in"], topics["out"], topics["models"], group, log,
                       ["--batch-size", str(batch_size), "--exit-when-idle", "5", *extra])
    try:
        load = os.getloadavg()[0]
        ticks = machine_ticks()
        ts, startup_cpu = drain_timestamps(bootstrap, topics["out"], n, serve.pid)
        steal = steal_share(ticks)
        cpu = cpu_seconds(serve.pid) - startup_cpu  # scoring only: no imports, no model load
        serve.wait(120)
    finally:
        if serve.poll() is None:
            serve.kill()
    span = (ts.max() - ts.min()) / 1000.0
    return {"events": int(len(ts)), "seconds": span,
            "events_per_second": len(ts) / span if span > 0 else float("nan"),
            "events_per_cpu_second": len(ts) / cpu, "load_average": load, "steal": steal}


def _send_paced(bootstrap: str, items: list[tuple[float, str, bytes, bytes]]) -> None:
    """Send ``(due second, topic, value, key)`` items at their due times (sorted)."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": PRODUCER_LINGER_MS,
                  "enable.idempotence": True})
    t0 = time.perf_counter()
    for due, topic, value, key in items:
        ahead = due - (time.perf_counter() - t0)
        if ahead > SEND_TICK:
            p.poll(0)
            time.sleep(ahead)
        while True:
            try:
                p.produce(topic, value, key)
                break
            except BufferError:
                p.poll(0.05)
    p.flush(120)


def labels_run(bootstrap: str, events: list[dict], mode: str, rate: float, window: float,
               delay: float, run: str, tmp: Path, seed: int = 5) -> dict:
    """``serve --role both`` learning from scratch on a paced stream, labels ``attached`` to
    the events or ``clicks`` only on a label topic (each click sent an exponential delay of
    mean ``delay`` seconds after its event, ``--label-window window``): the AUC of the live
    scores (the outputs) against the log's labels."""
    t = {k: f"{run}-{mode}-{k}" for k in ("in", "out", "labels")}
    create_topics(bootstrap, list(t.values()))
    rng = np.random.default_rng(seed)
    items: list[tuple[float, str, bytes, bytes]] = []
    y = np.zeros(len(events), dtype=np.int8)
    for i, ev in enumerate(events):
        ev = dict(ev, id=f"e{i}")
        y[i] = ev.pop("click")
        due = i / rate
        if mode == "attached":
            ev["click"] = int(y[i])
        elif y[i]:
            click = json.dumps({"id": ev["id"], "click": 1}).encode()
            items.append((due + rng.exponential(delay), t["labels"], click, ev["id"].encode()))
        items.append((due, t["in"], json.dumps(ev).encode(), ev["id"].encode()))
    items.sort(key=lambda item: item[0])
    ckpt = tmp / f"serve-{run}-{mode}"
    extra = (["--label-topic", t["labels"], "--label-window", str(window)]
             if mode == "clicks" else [])
    serve = subprocess.Popen(
        [*cli(), "serve", "--bootstrap-servers", bootstrap, "--input-topic", t["in"],
         "--output-topic", t["out"], "--group-id", f"{run}-{mode}", "--checkpoint", str(ckpt),
         *extra], stdout=open(tmp / f"serve-{run}-{mode}.log", "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT)
    time.sleep(8.0)  # join the group
    sender = mp.Process(target=_send_paced, args=(bootstrap, items))
    sender.start()
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{time.time_ns()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([t["out"]])
    p = np.full(len(events), np.nan)
    got, start = 0, time.monotonic()
    while got < len(events) and time.monotonic() - start < len(events) / rate + 600:
        for m in c.consume(10_000, 0.5):
            if m.error() is None:
                out = json.loads(m.value())
                p[int(out["id"][1:])] = out["p_click"]
                got += 1
    c.close()
    sender.terminate()  # the clicks still due after the last event no longer matter
    serve.terminate()
    serve.wait(120)
    join = checkpoint.load(ckpt)["join"] if checkpoint.exists(ckpt) else {}
    n = len(events)
    res = {"mode": mode, "events": n, "scored": got}
    for name, a in (("all", 0), ("last_100k", max(0, n - 100_000)),
                    ("last_10k", max(0, n - 10_000))):
        keep = np.isfinite(p[a:])
        res[f"auc_{name}"] = auc(p[a:][keep], y[a:][keep])
    res.update({k: int(join[k]) for k in ("joined", "window_negatives", "late_clicks")
                if k in join})
    return res


def _median(runs: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in runs]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default=None, help="use this broker (default: start one)")
    ap.add_argument("--broker-pid", type=int, default=None,
                    help="with --bootstrap: the broker's pid, to report its CPU")
    ap.add_argument("--events", type=int, default=300_000, help="events for the throughput run")
    ap.add_argument("--rates", default="1000,10000", help="input rates for latency, events/s")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each latency run")
    ap.add_argument("--repeat", type=int, default=3, help="throughput and latency runs each")
    ap.add_argument("--batch-size", type=int, default=5000, help="serve --batch-size")
    ap.add_argument("--poll-timeout", default=None,
                    help="serve --poll-timeout of the latency runs (default: serve's)")
    ap.add_argument("--producer-linger-ms", type=float, default=PRODUCER_LINGER_MS,
                    help="linger.ms of the paced producer (the upstream application)")
    ap.add_argument("--receiver-wait-ms", type=int, default=RECEIVER_WAIT_MS,
                    help="fetch.wait.max.ms of the latency receiver")
    ap.add_argument("--parts", default="throughput,latency,labels",
                    help="what to run: throughput (also with a generic CSV schema), latency, "
                    "labels (click-only label stream vs labels attached)")
    ap.add_argument("--label-events", type=int, default=1_000_000,
                    help="events of each labels run")
    ap.add_argument("--label-rate", type=float, default=5000.0,
                    help="events per second of the labels runs")
    ap.add_argument("--label-window", type=float, default=300.0,
                    help="label window of a click-only run, seconds of log time (one runs "
                    "with 0 too: every impression a negative at once, clicks as corrections)")
    ap.add_argument("--label-delay", type=float, default=60.0,
                    help="mean of the clicks' exponential delay, seconds of log time")
    ap.add_argument("--label-density", default="46",
                    help="events per second of log time, one labels pair of runs each: a "
                    "number, or 'log' for the log's own (its rows over the span of its hour "
                    "column); 46 is the real Avazu log's (40.4M rows over 10 days)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    rates = [int(r) for r in args.rates.split(",") if r]

    tmp = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
    state = tmp / "kafka-local.state"
    bootstrap = args.bootstrap or start_broker(state)
    bpid = args.broker_pid if args.bootstrap else broker_pid(state)
    run = f"bench-{int(time.time())}"
    t = {k: f"{run}-{k}" for k in ("in", "models", "models_csv", "lin", "lout")}
    outs = {kind: [f"{run}-out-{kind}{i}" for i in range(args.repeat)]
            for kind in ("avazu", "csv")}
    bare = {name: [f"{run}-pass-{name}{i}" for i in range(args.repeat)]
            for name in ("before", "after")}
    procs: list[subprocess.Popen] = []
    results: dict = {}
    rows_table: list[str] = []
    try:
        create_topics(bootstrap, [t["in"], t["models"], t["models_csv"], t["lout"],
                                  *outs["avazu"], *outs["csv"], *bare["before"],
                                  *bare["after"]])
        # the latency input stamps events with the broker's append time (the stage split)
        create_topics(bootstrap, [t["lin"]], {"message.timestamp.type": "LogAppendTime"})
        n = 0
        if parts & {"throughput", "latency"}:  # a trained snapshot and the stream
            config = ModelConfig()
            n_train = train_rows(config, len(avazu_schema().field_names))
            log = tmp / "stream.csv"
            generate(log, "avazu", rows=n_train + args.events, seed=11)
            print(f"broker {bootstrap}; training the default chain on {n_train:,} events ...",
                  flush=True)
            info = train_snapshot(log, tmp, bootstrap, t["models"], n_train, avazu_schema())
            print(f"  trained {info['stages']} in {info['train_seconds']:.1f}s "
                  f"(tree version {info['tree_version']}); snapshot signed and published in "
                  f"{info['publish_seconds']:.1f}s ({info['snapshot_bytes'] / 1e6:.0f} MB "
                  "compressed)", flush=True)
            # the same log typed as a generic CSV (the inference replay runs), for serve --schema
            csv_schema = log_schema(log, format="csv", label="click")
            csv_file = tmp / "csv-schema.json"
            csv_file.write_text(json.dumps(csv_schema.to_dict()))
            (tmp / "csv").mkdir()
            info_csv = train_snapshot(log, tmp / "csv", bootstrap, t["models_csv"], n_train,
                                      csv_schema, key_file=KEY_FILE(tmp))
            results["train"] = {"avazu": info, "csv": info_csv}

            # the benchmark stream: events after the training rows, without labels (live traffic)
            _, rows = read_events(log)
            events = [ev for i, (_, ev) in enumerate(rows) if i >= n_train]
            for ev in events:
                ev.pop("click", None)
            bench_log = tmp / "bench.csv"
            with open(bench_log, "w") as f:
                cols = [c for c in events[0] if c != "id"]
                f.write(",".join(["id", *cols]) + "\n")
                for ev in events:
                    f.write(",".join([ev["id"], *(ev[c] for c in cols)]) + "\n")
            # 300k event dicts held here: keep this process's collector off them while serve runs
            # on the same two cores
            gc.collect()
            gc.freeze()
            unlabelled = Schema("csv", tuple(c for c in avazu_schema().columns
                                             if c.kind != "label"), header=True)
            stats = produce(str(bench_log), t["in"], bootstrap, schema=unlabelled)
            n = stats["events"]
            print(f"pre-produced {n:,} events ({stats['events_per_second']:,.0f}/s)", flush=True)

        if "throughput" in parts:
            tput: dict[str, list[dict]] = {"avazu": [], "csv": []}
            ceilings: dict[str, list[float]] = {"before": [], "after": []}
            for i in range(args.repeat):
                for kind, models, extra in (("avazu", t["models"], []),
                                            ("csv", t["models_csv"],
                                             ["--schema", str(csv_file)])):
                    r = throughput_run(bootstrap, {**t, "models": models,
                                                   "out": outs[kind][i]},
                                       f"{run}-tp-{kind}{i}", n,
                                       tmp / f"serve-throughput-{kind}{i}.log",
                                       args.batch_size, extra)
                    tput[kind].append(r)
                    print(f"serve --role score ({kind} schema): {r['events']:,} events scored "
                          f"in {r['seconds']:.2f}s = {r['events_per_second']:,.0f} events/s, "
                          f"{r['events_per_cpu_second']:,.0f} events per CPU-second of serve "
                          f"(load average {r['load_average']:.1f} on {os.cpu_count()} cores, "
                          f"{r['steal']:.0%} stolen)", flush=True)
                for name, (cons, prod) in (("before", (BEFORE_CONSUMER, BEFORE_PRODUCER)),
                                           ("after", (CONSUMER_TUNING, PRODUCER_TUNING))):
                    rate = passthrough(bootstrap, t["in"], bare[name][i], n, cons, prod)
                    ceilings[name].append(rate)
                    print(f"bare consume -> produce loop, {name} issue 4's client settings: "
                          f"{rate:,.0f} events/s (load average {os.getloadavg()[0]:.1f})",
                          flush=True)
            results.update(throughput=tput, passthrough=ceilings)
            for kind, label in (("avazu", "Avazu schema"), ("csv", "generic CSV schema")):
                vals = ", ".join(f"{r['events_per_second']:,.0f}" for r in tput[kind])
                rows_table.append(f"| serve --role score, default chain, {label}, sustained | "
                                  f"{_median(tput[kind], 'events_per_second'):,.0f} events/s "
                                  f"({vals}) |")
                rows_table.append(f"| serve --role score, {label}, events per CPU-second | "
                                  f"{_median(tput[kind], 'events_per_cpu_second'):,.0f} |")
            for name in ("before", "after"):
                vals = ", ".join(f"{v:,.0f}" for v in ceilings[name])
                rows_table.append(f"| bare confluent-kafka consume -> produce, {name} issue "
                                  f"4's settings | {np.median(ceilings[name]):,.0f} events/s "
                                  f"({vals}) |")

        if "latency" in parts:
            extra = ["--batch-size", str(args.batch_size)]
            if args.poll_timeout is not None:
                extra += ["--poll-timeout", str(args.poll_timeout)]
            lat_serve = serve_proc(bootstrap, t["lin"], t["lout"], t["models"], f"{run}-lat",
                                   tmp / "serve-latency.log", extra)
            procs.append(lat_serve)
            time.sleep(8.0)  # join the group and load the model
            # warm-up at the highest rate, not reported: the first outputs wait for the output
            # topic's metadata, and the broker's JIT compiles the paths of paced traffic
            latency(bootstrap, t["lin"], t["lout"], events, max(rates), WARM_SECONDS, "warm",
                    tmp, linger_ms=args.producer_linger_ms, wait_ms=args.receiver_wait_ms)
            lat: dict[int, list[dict]] = {rate: [] for rate in rates}
            for i in range(args.repeat):
                for rate in rates:
                    load = os.getloadavg()[0]
                    r = latency(bootstrap, t["lin"], t["lout"], events, rate, args.seconds,
                                f"r{rate}x{i}", tmp, (bpid, lat_serve.pid),
                                args.producer_linger_ms, args.receiver_wait_ms)
                    r["load_average"] = load
                    lat[rate].append(r)
                    print(f"latency at {rate:,}/s (achieved {r['achieved_rate']:,.0f}/s, "
                          f"{r['received']:,}/{r['events']:,} received, load average "
                          f"{load:.1f}): p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, "
                          f"p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms; CPU: broker "
                          f"{r['broker_cores'] or float('nan'):.2f}, serve "
                          f"{r['serve_cores']:.2f} cores, {r['steal']:.0%} stolen", flush=True)
                    for stage, v in r.get("stages_p50_p99_max_ms", {}).items():
                        print(f"    {stage:24s} p50 / p99 / max {v} ms")
                    if "over_50ms" in r:
                        o = r["over_50ms"]
                        print(f"    {o['share']:.2%} of events over 50 ms; on average they "
                              "spent " + ", ".join(f"{o[k]:.0f} ms {k}" for k in o
                                                   if k != "share"))
            lat_serve.terminate()
            lat_serve.wait(60)
            results["latency"] = {str(k): v for k, v in lat.items()}
            for rate, runs in lat.items():
                p99s = ", ".join(f"{r['p99_ms']:.1f}" for r in runs)
                rows_table.append(
                    f"| latency at {rate:,}/s: p50 / p95 / p99 / max | "
                    f"{_median(runs, 'p50_ms'):.1f} / {_median(runs, 'p95_ms'):.1f} / "
                    f"{_median(runs, 'p99_ms'):.1f} / {_median(runs, 'max_ms'):.1f} ms "
                    f"(p99s {p99s}) |")

        if "labels" in parts:
            label_log = tmp / "labels.csv"
            generate(label_log, "avazu", rows=args.label_events, seed=12)
            _, rows = read_events(label_log)
            label_events = [ev for _, ev in rows]
            hours = sorted({ev["hour"] for ev in label_events})
            span = 3600.0 * len(hours)  # the generated log fills every hour it spans
            runs: dict[str, dict] = {}
            for density_arg in args.label_density.split(","):
                density = len(label_events) / span if density_arg == "log" else float(
                    density_arg)
                # log seconds -> wall seconds at the paced rate: the stream is replayed
                # rate / density times faster than its clock, and so are the delays
                scale = density / args.label_rate
                own = " (the log's own)" if density_arg == "log" else ""
                where = (f"{density:.2f} events per log second{own}; mean delay "
                         f"{args.label_delay:g} s = {args.label_delay * density:,.0f} events")
                plan = [("attached", 0.0)] + [("clicks", w) for w in
                                              sorted({0.0, args.label_window})]
                if runs:
                    plan = plan[1:]  # labels attached do not depend on the clock
                for mode, window in plan:
                    key = ("labels attached" if mode == "attached" else
                           f"clicks only, window {window:g} s, {where}")
                    print(f"labels run: {key} ...", flush=True)
                    r = labels_run(bootstrap, label_events, mode, args.label_rate,
                                   window * scale, args.label_delay * scale,
                                   f"{run}-{density_arg}-w{window:g}", tmp)
                    runs[key] = r
                    print(f"  {r}", flush=True)
            results["labels"] = runs
            a = runs.pop("labels attached")
            for name in ("last_10k", "last_100k", "all"):
                rows_table.append(f"| live AUC of the outputs, {name.replace('_', ' ')} "
                                  f"events, labels attached | {a[f'auc_{name}']:.4f} |")
                for key, c in runs.items():
                    rows_table.append(
                        f"| ... {key} | {c[f'auc_{name}']:.4f} "
                        f"({c[f'auc_{name}'] - a[f'auc_{name}']:+.4f}) |")
            for key, c in runs.items():
                rows_table.append(f"| {key}: joined clicks / window negatives / late clicks | "
                                  f"{c.get('joined', 0):,} / {c.get('window_negatives', 0):,} / "
                                  f"{c.get('late_clicks', 0):,} |")

        rep = args.repeat
        print(f"\n| measure (median of {rep} runs, all runs in brackets) | value |\n|---|---|")
        print(f"| paced producer linger.ms; receiver fetch.wait.max.ms; serve --poll-timeout | "
              f"{args.producer_linger_ms:g}; {args.receiver_wait_ms}; "
              f"{args.poll_timeout or 'default'} |")
        for row in rows_table:
            print(row)
        print("| DESIGN anchor: LightGBM 100x63 raw predict, batches | 100k-230k rows/s |")
        print("| DESIGN anchor: PyTorch DeepFM 128-128 train | 55k-70k events/s |")
        if args.json:
            Path(args.json).write_text(json.dumps({**results, "events": n}, indent=2))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if not args.bootstrap:
            stop_broker(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
