"""A real Apache Kafka broker for the integration tests.

``kafka_bootstrap`` (session) uses ``$STREAMFUSION_KAFKA_BOOTSTRAP`` when set, else starts a
single-node KRaft broker with ``scripts/kafka-local start`` and stops it at the end of the
session. ``LocalBroker`` drives the same script for tests that need a broker of their own (the
stop/start test).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "kafka-local"
START_TIMEOUT = 600  # seconds: the first run downloads the broker's jars with mvn


class LocalBroker:
    """One broker started by ``scripts/kafka-local``, with its own state file."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.dir: str | None = None
        self.bootstrap: str | None = None

    def _run(self, *args: str, timeout: float = START_TIMEOUT) -> str:
        env = dict(os.environ, KAFKA_LOCAL_STATE=str(self.state))
        proc = subprocess.run(
            [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise RuntimeError(f"kafka-local {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
        return proc.stdout

    def start(self) -> str:
        args = ["start", "--dir", self.dir] if self.dir else ["start"]
        out = self._run(*args).strip().splitlines()
        last = out[-1]
        assert last.startswith("bootstrap="), out
        self.bootstrap = last.split("=", 1)[1]
        for line in self.state.read_text().splitlines():
            if line.startswith("dir="):
                self.dir = line.split("=", 1)[1]
        return self.bootstrap

    def stop(self, keep_data: bool = False) -> None:
        self._run("stop", "--state", str(self.state), *(["--keep-data"] if keep_data else []))
        if not keep_data:  # with kept data, `start` restarts from self.dir on the same port
            self.dir = None

    def restart(self) -> str:
        """Stop (keeping the data) and start the same broker again on the same port."""
        self.stop(keep_data=True)
        return self.start()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Bootstrap address of a running broker for the whole session."""
    given = os.environ.get("STREAMFUSION_KAFKA_BOOTSTRAP")
    if given:
        yield given
        return
    broker = LocalBroker(tmp_path_factory.mktemp("kafka") / "kafka-local.state")
    bootstrap = broker.start()
    try:
        yield bootstrap
    finally:
        broker.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> LocalBroker:
    """A broker for one test alone (it may stop and restart it)."""
    broker = LocalBroker(tmp_path / "kafka-local.state")
    broker.start()
    try:
        yield broker
    finally:
        if broker.dir is not None:
            try:
                broker.stop()
            except RuntimeError:  # already stopped by the test (data kept): clean up the folder
                subprocess.run(["rm", "-rf", broker.dir], check=False)


@pytest.fixture
def topic_name() -> str:
    """A fresh topic-name prefix per test, so tests sharing the broker never interfere."""
    return f"sf-{uuid.uuid4().hex[:10]}"
