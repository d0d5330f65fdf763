"""The Kafka daemon: pull mini-batches from the source, hand them to the online loop, produce,
commit.

The daemon wires the jobs of ``kafka/`` together and keeps the roles, the state and what a
rebalance means for it (a partition resumes from the later of the committed offset and the
checkpoint's position, so the learner's state always matches what it consumed; the state is
saved and committed before a partition is given up). The other jobs live beside it:

- ``source.py``: :class:`~streamfusion.kafka.source.KafkaSource`, the consumer: subscription,
  partitions, polling, events decoded and encoded into batches, bad events dead-lettered,
  label messages handed over undecoded, the end of an idle stream;
- ``pipeline.py``: the scoring thread. The main thread pulls the next batch from the source
  while the scoring thread scores and learns the one before it through
  :class:`~streamfusion.online.OnlineLoop`, the loop replay runs; results are as with one
  thread.
- ``outputs.py``: outputs and dead letters, one idempotent producer;
- ``commits.py``: the commit cycle, drain -> flush -> save -> commit (at-least-once);
- ``snapshots.py``: model snapshots for scale-out;
- ``joins.py``: labels that come on their own topic, explicit or clicks only.

Below full load the main thread waits for the scoring thread before it gathers the next batch
(the source's ``busy`` hook), so outputs leave as soon as they are scored and batches do not
shrink to a handful of events. Roles: ``both`` scores and learns; ``train`` scores and learns, and
publishes model snapshots; ``score`` never learns and loads every announced snapshot.
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException, Message, TopicPartition

from streamfusion import checkpoint
from streamfusion.data.encoder import Encoder
from streamfusion.data.schema import Schema, avazu_schema
from streamfusion.features import Batch
from streamfusion.fusion import ModelConfig, kept_settings
from streamfusion.kafka.client_log import ClientLog
from streamfusion.kafka.commits import CommitCycle
from streamfusion.kafka.encoding import internal_reason
from streamfusion.kafka.joins import DEFAULT_CAPACITY, DEFAULT_TTL, LabelJoin
from streamfusion.kafka.messages import Invalid, parse_label
from streamfusion.kafka.metrics import ServeMetrics
from streamfusion.kafka.outputs import DeliveryFailed, Outputs
from streamfusion.kafka.pipeline import Pipeline
from streamfusion.kafka.snapshot_wire import BadSnapshot
from streamfusion.kafka.snapshots import Snapshots
from streamfusion.kafka.source import DEFAULT_POLL_TIMEOUT, KafkaBatch, KafkaSource
from streamfusion.model_file import load_model
from streamfusion.online import OnlineLoop, OnlineModel, Scores

log = logging.getLogger("streamfusion.kafka")

ROLES = ("both", "train", "score")
STATE_KIND = "streamfusion-serve"
STATE_VERSION = 1
COMMIT_RETRY = 0.5  # first back-off between commit attempts (doubles, capped at 8 s)
MAX_BACKOFF = 8.0
STATS_INTERVAL_MS = 2000  # librdkafka statistics (consumer lag) every 2 s
# librdkafka settings of the output producer (benchmarks reuse them; the consumer's are in
# source.py)
PRODUCER_TUNING: dict[str, Any] = {
    "linger.ms": 2,  # outputs wait at most 2 ms for a produce batch to fill (latency)
    # outputs are small JSON; lz4 costs CPU in librdkafka and in the broker (which decompresses
    # to validate) where, on a box like the benchmark's, CPU is short and bandwidth is not
    "compression.type": "none",
    "queue.buffering.max.messages": 1_000_000,
    # and at most 32 MiB of them (default 1 GiB): dead letters keep their message whole, and a
    # burst of big garbage waiting for the broker grew serve by its size (a full queue makes
    # produce wait: nothing is dropped)
    "queue.buffering.max.kbytes": 32_768,
}
# seconds a thread back from a GIL-free kernel waits for the GIL before asking for it; Python's
# 5 ms default would hold the scoring thread behind the decoding one for most of a batch
SWITCH_INTERVAL = 0.0005
# rows whose labels come later (a label topic, a click window) are learned in batches of at
# least this many (or at a save): learned as they came, a handful of one class per step made
# each a full-size update, which cost a generated log 0.1 AUC against labels attached
LEARN_BATCH = 1024


@dataclass
class ServeConfig:
    """Everything ``streamfusion serve`` is told (see ``serve.add_arguments``)."""

    bootstrap: str
    input_topic: str
    output_topic: str
    label_topic: str | None = None
    dead_letter_topic: str | None = None
    group_id: str = "streamfusion"
    checkpoint_dir: str | None = None
    role: str = "both"
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    model_topic: str | None = None
    model_key: bytes | None = None
    batch_size: int = 5000
    schema: Schema = field(default_factory=avazu_schema)
    init_from: str | None = None
    checkpoint_every: int = 200_000
    checkpoint_interval: float = 30.0
    poll_timeout: float = DEFAULT_POLL_TIMEOUT
    label_ttl: float = DEFAULT_TTL
    label_capacity: int = DEFAULT_CAPACITY
    label_window: float | None = None
    correct_late: bool = True
    exit_when_idle: float | None = None
    consumer_extra: dict[str, str] = field(default_factory=dict)
    producer_extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"--role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if self.role == "train" and not (self.model_topic and self.checkpoint_dir):
            raise ValueError("--role train needs --model-topic and --checkpoint")
        if self.role == "score" and not self.model_topic:
            log.warning("--role score without --model-topic: the model never changes")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")

    @property
    def learns(self) -> bool:
        return self.role in ("both", "train")


class Daemon:
    """The ``serve`` loop. Kafka clients are created in ``run``, never in ``__init__``.

    Parameters
    ----------
    config : ServeConfig
    model_config : ModelConfig
        The chain to build when no checkpoint exists (its ``bits`` and ``seed`` also set the
        encoder's hashing).

    Examples
    --------
    >>> cfg = ServeConfig("127.0.0.1:9092", "events", "scores")
    >>> Daemon(cfg, ModelConfig()).run()  # doctest: +SKIP
    0
    """

    def __init__(self, config: ServeConfig, model_config: ModelConfig) -> None:
        self.cfg = config
        self.model_config = model_config
        self.schema = config.schema
        self.metrics = ServeMetrics(config.role)
        self.model: OnlineModel | None = None
        self.loop: OnlineLoop | None = None
        self._encoder: Encoder | None = None
        self.join = LabelJoin(config.label_ttl, config.label_capacity,
                              window=config.label_window, correct_late=config.correct_late)
        self.version = 0  # model version reported in outputs (see module docstring)
        self.counters = {"events": 0, "labels": 0, "scored": 0, "learned": 0,
                         "dead_lettered": 0}
        self.cycle = CommitCycle(config.checkpoint_every, config.checkpoint_interval,
                                 drain=lambda: self.pipeline.drain(),
                                 flush=lambda: self.outputs.flush(),
                                 save=self._save, commit=self._commit)
        self._stop = threading.Event()
        self._exit_code = 0
        self.client_log = ClientLog()
        self.source: KafkaSource | None = None
        self.outputs: Outputs | None = None
        self.snapshots = (Snapshots(config.model_topic, self._common_conf, config.group_id,
                                    self.schema, config.model_key)
                          if config.model_topic else None)
        self.trainer_id = uuid.uuid4().hex[:16]  # a trainer's name on the model topic (kept)
        self._join_seen = {"expired": 0, "joined_clicks": 0, "window_negatives": 0,
                           "late_clicks": 0}
        self.pipeline: Pipeline | None = None
        self._to_learn: list[tuple[Batch, np.ndarray]] = []  # joined rows not learned yet
        self._to_learn_rows = 0
        self._broken = False  # a job failed: nothing may be committed any more
        self._dead_letters = threading.Lock()  # counted from the main and the scoring thread

    @property
    def encoder(self) -> Encoder | None:
        return self._encoder

    @encoder.setter
    def encoder(self, encoder: Encoder) -> None:
        self._encoder = encoder
        if self.source is not None:  # a loaded snapshot: the next batches are encoded with it
            self.source.encoder = encoder

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Ask the loop to finish its batch, flush, checkpoint, commit and return."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT -> ``stop()`` (main thread only)."""
        def handler(signum, frame):
            log.info("signal %s: finishing the batch, then flush, checkpoint, commit", signum)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run(self) -> int:
        """Serve until stopped; returns the exit code (0 after a clean stop).

        Raises :class:`StartupError` (one line, nothing consumed) when it cannot start."""
        try:
            self._start()
        except checkpoint.CheckpointError:
            raise
        except (KafkaException, OSError, ValueError) as exc:
            self._close()
            raise StartupError(_one_line(exc)) from None
        return self._loop()

    def _start(self) -> None:
        d = self.cfg.checkpoint_dir
        if d:
            for tmp in checkpoint.remove_stale_temporaries(d):
                log.info("removed %s, left by a checkpoint write that never finished", tmp)
        self._load_or_build()
        if self.cfg.model_topic and self.cfg.model_key is None:
            log.warning("the model topic %s is unauthenticated: whoever can write to it "
                        "controls the scorers (pass --model-key-file)", self.cfg.model_topic)
        if self.cfg.metrics_port:
            self.metrics.serve_http(self.cfg.metrics_port, self.cfg.metrics_host,
                                    ready=self.not_ready)
            log.info("metrics on http://%s:%d/metrics (/healthz, /readyz)",
                     self.cfg.metrics_host, self.cfg.metrics_port)
        self.outputs = Outputs(self._producer_conf(), self.cfg.output_topic,
                               self.cfg.dead_letter_topic)
        try:  # learn the output topic's leader now, not on the first event (latency)
            self.outputs.producer.list_topics(self.cfg.output_topic, timeout=5)
        except KafkaException as exc:
            log.warning("output topic metadata not available yet: %s", _one_line(exc))
        self.source = self._new_source()
        self.source.open()  # a bad client setting fails here, a start-up error
        log.info("serving %s -> %s as %s (group %s)", ",".join(self.source.topics),
                 self.cfg.output_topic, self.cfg.role, self.cfg.group_id)
        self.pipeline = Pipeline(self._emit)

    def _loop(self) -> int:
        switch = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL)
        _freeze_heap()
        try:
            while not self._stop.is_set():
                self._poll_models()
                batch = self.source.next_batch(self.cfg.batch_size)
                now = time.monotonic()
                if batch is not None:
                    self._take(batch)
                # the scoring thread idle: housekeeping here (else it does it after each job)
                if self.pipeline.reap():
                    self._housekeeping(now)
                if self.cycle.due(now):
                    self._commit_cycle()
                if batch is None:  # idle for --exit-when-idle seconds
                    break
            self._commit_cycle(force=True)
        except DeliveryFailed as exc:
            log.error("%s; exiting without committing (a restart re-processes them)", exc)
            self._exit_code = 3
        except BaseException:
            self._broken = True  # consumed batches may lack outputs: never commit them
            raise
        finally:
            self._close()
            sys.setswitchinterval(switch)
        return self._exit_code

    def _busy(self) -> bool:
        """The source's ``busy`` hook, while a batch below full size fills: the oldest scored
        batch's outputs leave at once; True while the scoring thread still has a job (the
        source then returns what is there rather than wait)."""
        if not len(self.pipeline):
            return False
        self.pipeline.finish_oldest()
        return bool(len(self.pipeline))

    def not_ready(self) -> str | None:
        """Why the daemon is not ready to score (``/readyz``), or None when it is."""
        if self.model is None:
            return "no model yet"
        if (self.cfg.role == "score" and self.snapshots is not None
                and self.snapshots.loaded is None):
            return "no model snapshot loaded yet"
        if self.source is None or not self.source.assigned:
            return "no partitions assigned"
        return None

    def _close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.close(self._broken)  # clean: raises what a last job raised
        if self.source is not None:
            self.source.close()  # on_revoke runs: nothing left to commit after a clean stop
        if self.snapshots is not None:
            self.snapshots.close()
        if self.outputs is not None:
            self.outputs.close()
            self.outputs = None
        if self.model is not None:
            self.model.close()

    # ------------------------------------------------------------------ clients
    def _common_conf(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.cfg.bootstrap, "error_cb": self._on_error,
                "logger": self.client_log,
                "reconnect.backoff.ms": 100, "reconnect.backoff.max.ms": int(MAX_BACKOFF * 1000)}

    def _new_source(self) -> KafkaSource:
        """The input (and label) topic's consumer; the daemon keeps what rebalances mean for
        its state, the dead letters and the scoring thread's pace."""
        conf = {**self._common_conf(), "group.id": self.cfg.group_id,
                "statistics.interval.ms": STATS_INTERVAL_MS, "stats_cb": self.metrics.on_stats}
        return KafkaSource(
            conf, self.cfg.input_topic, self.encoder,
            label_topic=self.cfg.label_topic if self.cfg.learns else None,
            overrides=self.cfg.consumer_extra, poll_timeout=self.cfg.poll_timeout,
            idle_end=self.cfg.exit_when_idle, dead_letter=self._dead_letter,
            on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost,
            busy=self._busy)

    def _producer_conf(self) -> dict[str, Any]:
        conf = self._common_conf()
        conf.update({
            "enable.idempotence": True,  # broker restarts: retries never duplicate or reorder
            **PRODUCER_TUNING,
        })
        conf.update(self.cfg.producer_extra)
        return conf

    def _on_error(self, err: KafkaError) -> None:
        self.metrics.kafka_errors.inc()
        if err.fatal():
            log.error("fatal Kafka error: %s", err)
            self._exit_code = 4
            self.stop()
            return
        self.client_log.error(f"{err.str()} (retrying)")

    # ------------------------------------------------------------------ state
    def _build_fresh(self) -> None:
        if self.cfg.init_from:
            self.model, self.encoder = start_from_history(self.cfg.init_from, self.schema,
                                                          self.model_config.threads)
            log.info("starting from the replay checkpoint in %s (%d events learned)",
                     self.cfg.init_from, self.model.events_learned)
            self._warn_kept_settings(f"the model of --init-from {self.cfg.init_from}")
            return
        cfg = self.model_config
        self.model = OnlineModel(cfg, len(self.schema.field_names), slotted=self.schema.is_svm)
        self.encoder = Encoder(self.schema, bits=cfg.bits, seed=cfg.seed)

    def _load_or_build(self) -> None:
        d = self.cfg.checkpoint_dir
        if self.cfg.learns and d and checkpoint.exists(d):
            state = checkpoint.load(d)
            self._restore(state)
            log.info("resumed from checkpoint %s: %d events, positions %s", d,
                     self.counters["events"], self.cycle.state_positions)
            self._warn_kept_settings(f"the model of checkpoint {d}")
        else:
            self._build_fresh()
        self._new_loop()

    def _warn_kept_settings(self, source: str) -> None:
        """A model continued from ``source`` keeps the settings it learned with: say which
        model flags of this run that overrules, so a restart meant to change them does not
        pass in silence."""
        asked = self.model_config.for_input(self.model.n_fields, slotted=self.schema.is_svm)
        kept = kept_settings(self.model.config, asked)
        if kept:
            log.warning("%s keeps its own settings; these model flags differ and are not "
                        "used: %s", source, "; ".join(kept))

    def _new_loop(self) -> None:
        """The online loop over the current model (again after a snapshot replaced it)."""
        self.loop = OnlineLoop(self.model, learn=self.cfg.learns)

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self._restore_checked(state)
        except checkpoint.CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise checkpoint.CheckpointError(
                f"checkpoint in {self.cfg.checkpoint_dir} is malformed "
                f"({type(exc).__name__}: {_one_line(exc)[:200]})") from None

    def _restore_checked(self, state: dict[str, Any]) -> None:
        if state.get("kind") != STATE_KIND or state.get("version") != STATE_VERSION:
            raise checkpoint.CheckpointError(
                f"checkpoint is not a serve checkpoint of version {STATE_VERSION}")
        model = OnlineModel.from_state(state["model"])
        encoder = Encoder.from_state_dict(state["encoder"])
        if encoder.schema != self.schema:
            raise checkpoint.CheckpointError(
                f"checkpoint was written for {describe_schema(encoder.schema)}, this serve "
                f"reads {describe_schema(self.schema)}")
        self.join.load_state_dict(state["join"])
        self.model, self.encoder = model, encoder
        self.counters = {k: int(v) for k, v in state["counters"].items()}
        self.version = int(state["model_version"])
        self.trainer_id = str(state.get("trainer_id") or self.trainer_id)
        # Not copied into the cycle's positions: those are committed, and only for partitions
        # we own.
        self.cycle.state_positions = {(t, int(p)): int(o) for t, p, o in state["positions"]}

    def state_dict(self) -> dict[str, Any]:
        """Everything a restart needs, including the positions it covers."""
        return {
            "kind": STATE_KIND,
            "version": STATE_VERSION,
            "format": self.schema.name,
            "model": self.model.state_dict(),
            "encoder": self.encoder.state_dict(),
            "join": self.join.state_dict(),
            "counters": dict(self.counters),
            "model_version": self.version,
            "trainer_id": self.trainer_id,
            "positions": [[t, p, o] for (t, p), o
                          in sorted(self.cycle.state_positions.items())],
        }

    # ------------------------------------------------------------------ rebalance
    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        """Before the source assigns ``partitions``: each starts after what the state covers
        when the checkpoint is ahead of the committed offset."""
        if not self.cycle.state_positions:
            return
        try:
            committed = {(tp.topic, tp.partition): tp.offset
                         for tp in self.source.committed(partitions)}
        except KafkaException as exc:
            log.warning("reading committed offsets failed (%s): starting from the "
                        "checkpoint's positions", exc)
            committed = {}
        for tp in partitions:
            key = (tp.topic, tp.partition)
            ck = self.cycle.state_positions.get(key)
            if ck is not None and ck > committed.get(key, OFFSET_INVALID):
                tp.offset = ck  # the state already covers these: never learn them twice
                self.cycle.resume_at(key, ck)  # and the group should know

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        """Before the source gives ``partitions`` up: checkpoint and commit first."""
        try:
            self._commit_cycle(force=True)
        except DeliveryFailed as exc:
            log.error("%s: not committing before the rebalance", exc)
            self._exit_code = 3
            self.stop()
        for tp in partitions:
            self.cycle.forget((tp.topic, tp.partition))

    def _on_lost(self, partitions: list[TopicPartition]) -> None:
        # The state keeps what it learned from them; on re-assignment the consumer resumes
        # after it (_on_assign), and the outputs still in the producer queue get delivered.
        for tp in partitions:
            self.cycle.forget((tp.topic, tp.partition))

    # ------------------------------------------------------------------ the batch
    def _take(self, batch: KafkaBatch) -> None:
        """Main thread: count what the source took, hand the events and the labels to the
        scoring thread (in this order)."""
        if batch.advanced:
            self.cycle.consumed(batch.advanced)
        if batch.messages:
            self.counters["events"] += batch.messages
            self.metrics.events.inc(batch.messages)
            self.cycle.counted(batch.messages)
        if len(batch):
            self.pipeline.submit(self._score_events, batch)
        if batch.labels:
            self.pipeline.submit(self._labels, batch.labels)

    def _score_events(self, batch: KafkaBatch) -> tuple[list, Scores, int, np.ndarray]:
        """Scoring thread: score (and learn) the events. Returns what ``_emit`` needs, for the
        main thread."""
        y = batch.y
        _, scores = self.loop.step(batch, self)  # no holdout: every event is live
        # produce timestamps (ms) of the scored events, for the end-to-end latency
        out = (batch.ids, scores, self._output_version(), batch.stamps)
        labelled = ~np.isnan(y)
        if labelled.any() and self.cfg.learns:
            n = int(labelled.sum())
            self.counters["learned"] += n
            self.metrics.learned.inc(n)
        if self.cfg.learns and self.cfg.label_topic and not labelled.all():
            rows = np.flatnonzero(~labelled)
            sub = batch.take(rows)
            ready, ready_y = self.join.add_events(sub, [str(i) for i in sub.ids],
                                                  scores.margin[rows])
            if len(ready):
                early = sub.take(ready)
                early.y = ready_y
                self._learn_joined(early, scores.margin[rows][ready])
        self._after_job()
        return out

    def _after_job(self) -> None:
        """Scoring thread, after each job: learn the window's negatives, update gauges."""
        self._housekeeping(time.monotonic())

    # the online loop's sink (scoring thread)
    def swapped(self, version: int) -> None:
        log.info("tree refit swapped in (chain version %d)", version)

    def held_out(self, batch: Batch) -> None:
        raise AssertionError("serve holds nothing out")  # the loop has no holdout here

    def scored(self, batch: Batch, scores: Scores) -> None:
        labelled = ~np.isnan(batch.y)
        if labelled.any():
            self.metrics.observe(scores.margin[labelled], batch.y[labelled])

    def _labels(self, msgs: list[Message]) -> None:
        """Scoring thread: validate label messages and learn the events they complete."""
        self.counters["labels"] += len(msgs)
        pairs = []
        for m in msgs:
            try:
                ident, click = parse_label(m.value())
            except Invalid as exc:
                self._dead_letter(m, exc.header)
                continue
            except Exception as exc:  # noqa: BLE001 - one message never stops the daemon
                self._dead_letter(m, internal_reason(exc))
                continue
            pairs.append((str(ident), click))
        late = self.join.late_clicks
        batch, margin = self.join.add_labels(pairs)
        if batch is not None:
            # a late click's event was already observed, as the negative it was learned as
            self._learn_joined(batch, margin, observe=self.join.late_clicks == late)
        self._after_job()

    def _learn_joined(self, batch: Batch, margin_at_event: np.ndarray,
                      observe: bool = True) -> None:
        """Learn from events whose label came on the label topic, or whose click window
        passed (scored when they arrived), once ``LEARN_BATCH`` of them are waiting;
        ``observe`` feeds the rolling metrics."""
        weights = self.join.weights(batch.y, margin_at_event)
        self._to_learn.append((batch, np.ones(len(batch), np.float32)
                               if weights is None else weights))
        self._to_learn_rows += len(batch)
        if observe:
            self.metrics.observe(margin_at_event, batch.y)
        if self._to_learn_rows >= LEARN_BATCH:
            self._flush_learning()

    def _flush_learning(self) -> None:
        """Learn the joined rows waiting (scoring thread, or main with no job in flight)."""
        if not self._to_learn:
            return
        batch = Batch.concat([b for b, _ in self._to_learn])
        weights = np.concatenate([w for _, w in self._to_learn])
        self._to_learn, self._to_learn_rows = [], 0
        self.loop.learn_late(batch, None if (weights == 1).all() else weights)
        self.counters["learned"] += len(batch)
        self.metrics.learned.inc(len(batch))

    def _output_version(self) -> int:
        """``model_version`` of the outputs: the chain's trees (both), else the snapshot."""
        return self.model.version if self.cfg.role == "both" else self.version

    # ------------------------------------------------------------------ commit cycle
    def _emit(self, ids: list, scores: Scores, version: int,
              stamps: np.ndarray | None = None) -> None:
        """Main thread: one output per scored event, keyed by id (and the latency since each
        event was produced, where the producer set its timestamp)."""
        self.outputs.emit(ids, scores, version)
        if stamps is not None:
            stamps = stamps[stamps > 0]
            if len(stamps):
                self.metrics.latency.observe_many(time.time() - stamps / 1000.0)
        self.counters["scored"] += len(ids)
        self.metrics.scored.inc(len(ids))

    def _dead_letter(self, m: Message, reason: str) -> None:
        """Bad events (main thread, from the source) and bad labels (scoring thread)."""
        with self._dead_letters:
            self.counters["dead_lettered"] += 1
        self.metrics.dead_lettered.inc()
        self.outputs.dead_letter(m, reason)

    def _commit_cycle(self, force: bool = False) -> None:
        """Run the commit cycle (``kafka.commits``) unless the clients are gone or a job
        failed (then its batch lacks outputs: nothing may be committed)."""
        if self.outputs is None or self.source is None or not self.source.active or self._broken:
            return
        self.cycle.run(force)

    def _save(self, dirty: bool) -> None:
        """The cycle's save step: learners learn the joined rows still waiting, then
        checkpoint (a trainer also publishes)."""
        self._flush_learning()  # the state saved covers every label consumed
        d = self.cfg.checkpoint_dir
        if self.cfg.learns and d and (dirty or not checkpoint.exists(d)):
            if self.cfg.role == "train":
                self.version += 1
            checkpoint.save(d, self.state_dict())
            if self.cfg.role == "train":
                self._publish_snapshot()

    def _commit(self, positions: dict[tuple[str, int], int]) -> bool:
        """The cycle's commit step: commit ``positions`` synchronously; False when the group
        moved on (or, when stopping, the broker stays away)."""
        if not positions:
            return True
        backoff = COMMIT_RETRY
        while True:
            try:
                self.source.commit(positions)
                self.metrics.commits.inc()
                return True
            except KafkaException as exc:
                err = exc.args[0]
                code = err.code() if isinstance(err, KafkaError) else None
                if code in (KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
                            KafkaError.REBALANCE_IN_PROGRESS, KafkaError._NO_OFFSET,
                            KafkaError._STATE):
                    # the partitions moved on: their new owner re-does the uncommitted events
                    log.warning("commit skipped (%s): group changed", err)
                    return False
                if self._stop.is_set() and backoff > MAX_BACKOFF * 4:
                    log.error("commit failed for good (%s): uncommitted events will be redone",
                              err)
                    return False
                log.warning("commit failed (%s): retrying in %.1fs", err, backoff)
                time.sleep(min(backoff, MAX_BACKOFF))
                backoff *= 2

    # ------------------------------------------------------------------ scale-out
    def _publish_snapshot(self) -> None:
        """Trainer: publish the model as snapshot ``self.version`` (counted up before the
        checkpoint that covers it, so a restart never announces a version twice)."""
        try:
            size = self.snapshots.publish(self.trainer_id, self.version, self.model,
                                          self.encoder)
        except (KafkaException, BadSnapshot) as exc:  # the broker away, a model too large
            log.warning("model snapshot %d not published (%s): the next checkpoint publishes "
                        "again", self.version, exc)
            return
        self.metrics.model_version.set(self.version)
        log.info("published model snapshot %d (%d bytes, trainer %s)", self.version, size,
                 self.trainer_id)

    def _poll_models(self) -> None:
        """Scorers: swap in the newest announced snapshot, if any is newer than ours."""
        if self.cfg.role != "score" or self.snapshots is None:
            return
        got = self.snapshots.poll()
        if got is None:
            return
        note, model, encoder = got
        version = note.version
        self.pipeline.drain()  # batches in flight are scored with the model they were meant for
        old, self.model, self.encoder = self.model, model, encoder
        self._new_loop()
        if old is not None:
            old.close()
        _freeze_heap()
        self.version = version
        self.metrics.model_version.set(self.version)
        log.info("loaded model snapshot %d of trainer %s", self.version, note.trainer)

    # ------------------------------------------------------------------ gauges
    def _housekeeping(self, now: float) -> None:
        """Learn the events whose click window passed (as negatives), expire what waited too
        long, update the gauges. On the scoring thread, or the main one with no job in
        flight: it may touch the model."""
        if self.cfg.learns:
            batch, margin = self.join.due()
            if batch is not None:
                self._learn_joined(batch, margin)
        self.metrics.tick(now, self.counters["events"])
        self.join.expire()  # also while idle: expired joins are counted when they expire
        self.metrics.pending_joins.set(len(self.join))
        totals = {"expired": self.join.expired_events + self.join.expired_labels,
                  "joined_clicks": self.join.joined, "window_negatives":
                  self.join.window_negatives, "late_clicks": self.join.late_clicks}
        for name, total in totals.items():
            if total > self._join_seen[name]:
                getattr(self.metrics, name).inc(total - self._join_seen[name])
                self._join_seen[name] = total
        if self.cfg.role == "both":
            self.metrics.model_version.set(self.model.version)


class StartupError(RuntimeError):
    """serve cannot start (a client setting, the metrics port, ...): one line, exit 2."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) < 300 else text[:297] + "..."


def _freeze_heap() -> None:
    """Move the objects alive now (modules, the model) out of the cyclic collector's reach: a
    full collection over them took ~75 ms, a pause in the output stream every so often."""
    gc.collect()
    gc.freeze()


def describe_schema(schema: Schema) -> str:
    """'the csv schema (label clicked; 12 fields: a, b, c, ...)' for one-line refusals."""
    fields = schema.event_fields
    shown = ", ".join(fields[:6]) + (", ..." if len(fields) > 6 else "")
    return (f"the {schema.name} schema (label {schema.label}; {len(fields)} event fields: "
            f"{shown})")


def _replay_state(folder: str | Path) -> dict[str, Any]:
    state = checkpoint.load(folder)
    if state.get("kind") != "replay":
        raise checkpoint.CheckpointError(f"--init-from {folder}: not a replay checkpoint")
    return state


def replay_schema(source: str | Path) -> Schema:
    """The schema of the log a replay checkpoint (a folder) or model file was written for."""
    if Path(source).is_file():
        return load_model(source).schema
    try:
        return Schema.from_dict(_replay_state(source)["encoder"]["schema"])
    except (KeyError, TypeError) as exc:
        raise checkpoint.CheckpointError(f"--init-from {source}: malformed replay "
                                         f"checkpoint ({exc})") from None


def start_from_history(source: str, schema: Schema, threads: int) -> tuple[OnlineModel, Encoder]:
    """The model and encoder of a replay, to go on learning live from them: its checkpoint
    (a folder: optimizer state, window and pending refit included) or a model file of
    ``replay --save-model`` (the live model; learning restarts its optimizer state).

    Refused with a one-line :class:`~streamfusion.checkpoint.CheckpointError` when there is
    neither, or one of another schema than ``schema``.
    """
    if Path(source).is_file():
        saved = load_model(source, threads=threads)
        model, encoder = saved.model, saved.learning_encoder()
    else:
        state = _replay_state(source)
        try:
            encoder = Encoder.from_state_dict(state["encoder"])
            config = {**state["model"]["config"], "threads": threads, "tree_threads": threads}
            model = OnlineModel.from_state({**state["model"], "config": config})
        except (KeyError, TypeError, ValueError) as exc:
            raise checkpoint.CheckpointError(f"--init-from {source}: malformed replay "
                                             f"checkpoint ({exc})") from None
    if encoder.schema != schema:
        model.close()
        raise checkpoint.CheckpointError(
            f"--init-from {source}: the replay read {describe_schema(encoder.schema)}, "
            f"this serve reads {describe_schema(schema)} (pass the replay's schema.json "
            "with --schema)")
    return model, encoder
