"""Model snapshots for scale-out: the trainer publishes, scorers load the newest.

A ``--role train`` daemon writes each checkpointed model (chain and encoder) to a snapshot file
beside its checkpoint and announces ``{"version", "path"}`` on the model topic; ``--role score``
daemons read the topic from its last announcement and load every newer version.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from streamfusion import checkpoint
from streamfusion.data.encoder import Encoder
from streamfusion.kafka.outputs import FLUSH_WAIT, Outputs
from streamfusion.online import OnlineModel

log = logging.getLogger("streamfusion.kafka")

SNAPSHOT_DIR = "snapshots"
KEEP_SNAPSHOTS = 3  # older snapshot files are deleted; a scorer loads within seconds
MODEL_TOPIC_RETRY = 2.0  # seconds between looks for a model topic that does not exist yet
STARTUP_MODEL_WAIT = 10.0  # seconds a starting scorer waits for the announced model
# seconds between looks at the model topic: once per mini-batch was ~8% of the main thread at
# 10k events/s (each look gives up the GIL and waits to get it back from the scoring thread)
MODEL_POLL_INTERVAL = 0.25


class Snapshots:
    """The model topic of one daemon.

    Parameters
    ----------
    topic : str
        The model topic.
    conf : callable
        Returns the librdkafka settings shared by the daemon's clients (bootstrap, errors).
    group_id : str
        The daemon's consumer group; a scorer reads the model topic in a group of its own.
    folder : str, optional
        The trainer's checkpoint directory (snapshots go to its ``snapshots/``).
    """

    def __init__(self, topic: str, conf: Callable[[], dict[str, Any]], group_id: str,
                 folder: str | None = None) -> None:
        self.topic = topic
        self._conf = conf
        self.group_id = group_id
        self.folder = None if folder is None else Path(folder) / SNAPSHOT_DIR
        self._consumer: Consumer | None = None
        self._topic_wait = 0.0
        self._next_poll = 0.0
        self._startup: list[Message] = []

    def publish(self, version: int, model: OnlineModel, encoder: Encoder,
                outputs: Outputs) -> Path:
        """Write snapshot ``version`` and announce it; returns its path."""
        assert self.folder is not None, "only a trainer publishes"
        path = checkpoint.save_file(self.folder / f"model-{version:08d}.sfck", {
            "kind": "streamfusion-snapshot", "version": version,
            "model": model.state_dict(), "encoder": encoder.state_dict(),
        })
        for old in sorted(self.folder.glob("model-*.sfck"))[:-KEEP_SNAPSHOTS]:
            old.unlink(missing_ok=True)
        note = json.dumps({"version": version, "path": str(path.resolve())}).encode()
        outputs.produce(self.topic, note, b"model")
        outputs.producer.flush(FLUSH_WAIT)
        return path

    def poll(self, version: int) -> tuple[int, OnlineModel, Encoder] | None:
        """The newest announced snapshot if it is newer than ``version``, loaded."""
        if self._consumer is None and not self._open():
            return None
        msgs, self._startup = self._startup, []
        now = time.monotonic()
        if not msgs:
            if now < self._next_poll:
                return None
            self._next_poll = now + MODEL_POLL_INTERVAL
            msgs = self._consumer.consume(100, 0)
        latest = None
        for m in msgs:
            if m.error() is not None:
                continue
            try:
                note = json.loads(m.value())
                if latest is None or int(note["version"]) > int(latest["version"]):
                    latest = note
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring malformed model announcement %r", m.value()[:200])
        if latest is None or int(latest["version"]) <= version:
            return None
        return self._load(latest)

    def _load(self, note: dict) -> tuple[int, OnlineModel, Encoder] | None:
        path = note.get("path")
        try:
            state = checkpoint.load_file(path)
            model = OnlineModel.from_state(state["model"])
            encoder = Encoder.from_state_dict(state["encoder"])
        except (ValueError, KeyError, OSError) as exc:
            log.warning("cannot load model snapshot %s: %s", path, exc)
            return None
        return int(state["version"]), model, encoder

    def _open(self) -> bool:
        now = time.monotonic()
        if now < self._topic_wait:
            return False
        self._topic_wait = now + MODEL_TOPIC_RETRY
        conf = self._conf()
        conf.update({"group.id": f"{self.group_id}-model-{uuid.uuid4().hex[:8]}",
                     "enable.auto.commit": False})
        consumer = Consumer(conf)
        try:
            md = consumer.list_topics(self.topic, timeout=5)
            tmd = md.topics.get(self.topic)
            if tmd is None or tmd.error is not None or not tmd.partitions:
                consumer.close()
                return False
            _, high = consumer.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=5)
        except KafkaException as exc:
            log.warning("model topic %s not readable yet: %s", self.topic, exc)
            consumer.close()
            return False
        consumer.assign([TopicPartition(self.topic, 0, max(high - 1, 0))])
        self._consumer = consumer
        if high > 0:  # a model was announced before we started: load it before scoring
            deadline = time.monotonic() + STARTUP_MODEL_WAIT
            while time.monotonic() < deadline:
                got = [m for m in consumer.consume(10, 0.2) if m.error() is None]
                if got:
                    self._startup = got
                    break
        return True

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
