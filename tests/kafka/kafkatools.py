"""Helpers of the Kafka integration tests: topics, streams, serve subprocesses, read-backs."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streamfusion.data.generate import generate
from streamfusion.kafka.formats import read_events
from streamfusion.kafka.produce import produce

# A small but complete chain: trees (refit inside the test streams) + DeepFM residual.
SMALL_MODEL = ["--model", "resfusion", "--bits", "16", "--k", "4", "--hidden", "16,16",
               "--trees", "10", "--leaves", "15", "--refit-every", "3000", "--window", "3000"]
READ_IDLE = 3.0  # seconds without new messages before a read-back gives up
WAIT_LIMIT = 120.0  # seconds: upper bound for anything a test waits for


def cli() -> list[str]:
    """The ``streamfusion`` command (``$STREAMFUSION_CLI`` overrides, for development)."""
    given = os.environ.get("STREAMFUSION_CLI")
    return shlex.split(given) if given else [sys.executable, "-m", "streamfusion.cli"]


def create_topics(bootstrap: str, names: list[str], partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, partitions, 1) for n in names],
                                  operation_timeout=30)
    for f in futures.values():
        f.result(timeout=60)


def make_log(path: Path, rows: int, seed: int = 0) -> Path:
    generate(path, "avazu", rows=rows, seed=seed)
    return path


def log_ids(path: Path) -> list[str]:
    _, events = read_events(path)
    return [key for key, _ in events]


def produce_log(bootstrap: str, path: Path, topic: str, rate: float = 0.0) -> dict:
    stats = produce(str(path), topic, bootstrap, rate=rate)
    assert stats["failed"] == 0, stats
    return stats


def produce_in_background(bootstrap: str, path: Path, topic: str, rate: float
                          ) -> threading.Thread:
    result: dict = {}

    def work() -> None:
        result.update(produce_log(bootstrap, path, topic, rate))

    t = threading.Thread(target=work, daemon=True)
    t.result = result  # type: ignore[attr-defined]
    t.start()
    return t


def send(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes] | None = None
         ) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i, v in enumerate(values):
        p.produce(topic, v, keys[i] if keys else None)
    assert p.flush(60) == 0


def read_topic(bootstrap: str, topic: str, expect: int | None = None,
               idle: float = READ_IDLE, limit: float = WAIT_LIMIT) -> list:
    """All messages of ``topic`` from the start; stops at ``expect`` or after ``idle`` s."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{time.time_ns()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    out: list = []
    start = last = time.monotonic()
    try:
        while time.monotonic() - start < limit:
            batch = [m for m in c.consume(10_000, 0.5) if m.error() is None]
            now = time.monotonic()
            if batch:
                out += batch
                last = now
            if expect is not None and len(out) >= expect:
                break
            if expect is None and now - last > idle and out:
                break
            if expect is None and now - last > 4 * idle:
                break
    finally:
        c.close()
    return out


def scored_ids(bootstrap: str, topic: str, expect_ids: set[str]) -> tuple[list, set[str]]:
    """Read outputs until every id in ``expect_ids`` is there (or the wait limit)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{time.time_ns()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    outs: list = []
    seen: set[str] = set()
    start = time.monotonic()
    try:
        while not expect_ids <= seen and time.monotonic() - start < WAIT_LIMIT:
            for m in c.consume(10_000, 0.5):
                if m.error() is None:
                    v = json.loads(m.value())
                    outs.append(v)
                    seen.add(str(v["id"]))
    finally:
        c.close()
    return outs, seen


def committed(bootstrap: str, group: str, topic: str, partitions: int = 1) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
    finally:
        c.close()
    return [tp.offset for tp in tps]


class Serve:
    """A ``streamfusion serve`` subprocess with its log in a file (``command``: another
    ``streamfusion`` command than ``cli()``)."""

    def __init__(self, bootstrap: str, args: list[str], log: Path,
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 command: list[str] | None = None) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in wait()
        cmd = [*(command or cli()), "serve", "--bootstrap-servers", bootstrap, *args]
        env = {**os.environ, **(env or {})}
        if cwd is not None:  # the package of this checkout, wherever serve runs
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH"))
                if p)
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, cwd=cwd)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, limit: float = WAIT_LIMIT) -> None:
        start = time.monotonic()
        while text not in self.log():
            assert self.proc.poll() is None, f"serve exited early:\n{self.log()}"
            assert time.monotonic() - start < limit, f"no {text!r} in:\n{self.log()}"
            time.sleep(0.2)

    def wait(self, limit: float = WAIT_LIMIT) -> int:
        try:
            code = self.proc.wait(timeout=limit)
        finally:
            self._log.close()
        return code

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._log.close()
