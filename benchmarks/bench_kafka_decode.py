"""Per-event cost of serve's main-thread Python work, without a broker: JSON decode and
output formatting (``KafkaEncoder.decode``, ``Outputs.emit`` minus ``produce()``).

    python benchmarks/bench_kafka_decode.py [--events 300000] [--batch 5000] [--repeat 5]

Events are generated Avazu-format rows sent as ``produce`` sends them (``json.dumps`` of the
raw fields, ``id``, ``click`` on half of them). Beside ``decode``: ``decode_each`` (the
per-message reference path) and ``parse`` (the C tokenizer, on the scoring thread in serve).
Each figure is the best of ``--repeat`` passes over all batches, in microseconds per event.
Only public entry points are timed, so an older checkout runs the same script
(``PYTHONPATH=<checkout> python benchmarks/bench_kafka_decode.py``) for a before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import streamfusion
from streamfusion.data.encoder import Encoder
from streamfusion.data.generate import generate
from streamfusion.data.schema import avazu_schema
from streamfusion.kafka.encoding import KafkaEncoder
from streamfusion.kafka.formats import read_events
from streamfusion.kafka.outputs import Outputs
from streamfusion.online import Scores


class _NullProducer:
    """Stands in for the Kafka producer: the formatting is timed, not the client."""

    def produce(self, topic, value, key) -> None:
        pass

    def poll(self, timeout: float) -> int:
        return 0


def best(fn, batches: list, repeat: int) -> float:
    """Best wall time of ``repeat`` passes of ``fn`` over ``batches``, seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for b in batches:
            fn(b)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"streamfusion from {Path(streamfusion.__file__).parent}; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "gen.csv"
        generate(log, "avazu", rows=args.events, seed=7)
        _, rows = read_events(log, format="avazu")
        rng = np.random.default_rng(0)
        values = []
        for _, ev in rows:
            if rng.random() < 0.5:
                ev.pop("click", None)
            values.append(json.dumps(ev).encode())
    n = len(values)
    batches = [values[i:i + args.batch] for i in range(0, n, args.batch)]
    enc = KafkaEncoder(Encoder(avazu_schema(), bits=20, seed=1))
    decoded = [enc.decode(b) for b in batches]
    assert not any(d.rejects for d in decoded)
    us = 1e6 / n
    print(f"{n:,} events in batches of {args.batch}, best of {args.repeat}, us per event:")
    for label, fn, data in (("decode (serve's main thread)", enc.decode, batches),
                            ("decode_each (reference path)", enc.decode_each, batches),
                            ("parse (C tokenizer, scoring thread)", enc.parse, decoded)):
        print(f"  {label:40s} {best(fn, data, args.repeat) * us:6.3f}")

    outs = Outputs({"bootstrap.servers": "127.0.0.1:1"}, "out", None)
    outs.producer = _NullProducer()
    m = rng.normal(size=(4, args.batch)).astype(np.float32)
    outputs = []
    for d in decoded:
        k = len(d.runs[0].ids)
        scores = Scores(margin=m[0, :k], base_margin=m[1, :k], residual_margin=m[2, :k],
                        p=1 / (1 + np.exp(-m[0, :k])), stage_margins=m[1:3, :k])
        outputs.append((d.runs[0].ids, scores, 7))
    t = best(lambda o: outs.emit(*o), outputs, args.repeat)
    print(f"  {'output formatting (emit, no produce)':40s} {t * us:6.3f}")


if __name__ == "__main__":
    main()
