"""The input topic as a :class:`~streamfusion.online.source.Source`: Kafka messages in, batches out.

:class:`KafkaSource` owns ``serve``'s group consumer: its settings, the subscription, the
partitions it holds across rebalances, the polling of mini-batches, the decoding and encoding
of the input events (:class:`~streamfusion.kafka.encoding.KafkaEncoder`: a message that is not
a valid event goes to ``dead_letter`` with its reason and the batch comes without it), the
position of each partition, and the end of a stream that stays idle (``idle_end``).

What it leaves to its owner, and why:

- **Labels.** The label topic shares this consumer: one group member holds partition i of both
  topics (the range assignor), so an event and its label meet in one process. Its messages are
  therefore polled here, but they are not events: they come out undecoded in
  :attr:`KafkaBatch.labels`, because validating and joining them belongs with the label join,
  which runs beside the model on the scoring thread. The model topic is not polled here: it
  has a consumer of its own outside the group (``snapshots.py``).
- **What a rebalance means for the state.** Where a newly assigned partition resumes (after
  what a checkpoint covers) and the commit before a partition is given up are the owner's:
  ``on_assign``, ``on_revoke`` and ``on_lost`` are called before the source assigns or
  forgets the partitions.
- **When to commit.** :meth:`KafkaSource.commit` commits what the owner says when it says so:
  after the outputs are flushed and the state is saved (``commits.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from streamfusion.data.encoder import Encoder
from streamfusion.features import Batch
from streamfusion.kafka.commits import Key
from streamfusion.kafka.encoding import KafkaEncoder

log = logging.getLogger("streamfusion.kafka")

IDLE_WAIT = 0.1  # seconds a poll blocks when no message comes (the owner's loop goes on)
# seconds a mini-batch gathers events after its first, below full load: at 10k events/s, 5 ms
# batches cost serve ~35% of a core where 2 ms ones cost ~45% (each batch has a fixed cost of a
# few hundred us), CPU the broker on the same cores needs
DEFAULT_POLL_TIMEOUT = 0.005
# seconds between metadata refreshes: a topic created after start (a label topic) is joined
# within this long (librdkafka's default, 5 minutes, kept new topics waiting)
METADATA_REFRESH_MS = 2000
SESSION_TIMEOUT_MS = 10_000  # a crashed member's partitions move on after 10 s (default 45 s)
# client errors meaning no broker answers: the idle clock runs on while they last
UNREACHABLE = (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE,
               KafkaError._TIMED_OUT)
# librdkafka settings of the input consumer that are about speed (benchmarks reuse them)
CONSUMER_TUNING: dict[str, Any] = {
    "fetch.wait.max.ms": 10,  # an idle fetch returns within 10 ms (data ends it at once)
    "queued.min.messages": 20_000,  # fetch ahead until this many wait (a few batches)
    # the default (1000 ms) stops fetching for a whole second whenever the prefetch queue is
    # above queued.min.messages: that, not the model, held serve near 30k events/s
    "fetch.queue.backoff.ms": 5,
    # the prefetch queue's bytes (default 64 MiB): messages up to the broker's 1 MB limit,
    # garbage or abuse, filled it and grew serve 1.3x over a clean run; 20,000 click events
    # of about 500 bytes fit in 16 MiB
    "queued.max.messages.kbytes": 16_384,
}
# settings the source's delivery contract needs: nothing is committed or stored behind the
# owner's back (it commits last, after outputs and state are safe)
CONSUMER_SETTINGS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "allow.auto.create.topics": True,
    "session.timeout.ms": SESSION_TIMEOUT_MS,
    "heartbeat.interval.ms": SESSION_TIMEOUT_MS // 5,
    "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS,
}

Partitions = Callable[[list[TopicPartition]], None]


@dataclass
class KafkaBatch(Batch):
    """A :class:`~streamfusion.features.Batch` of input events, and what came with it.

    ``line`` holds each row's offset in its partition.

    Attributes
    ----------
    stamps : float64 array [n]
        Each row's produce timestamp (ms since the epoch; 0 or less when the producer set none).
    messages : int
        Input-topic messages taken for this batch, the dead-lettered ones included.
    labels : list of confluent_kafka.Message
        Label-topic messages polled with it, in order, not decoded.
    advanced : dict
        ``(topic, partition) -> next offset`` of each partition this batch moved (its events,
        dead letters and labels); empty when nothing was taken.
    """

    stamps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    messages: int = 0
    labels: list[Message] = field(default_factory=list)
    advanced: dict[Key, int] = field(default_factory=dict)


class KafkaSource:
    """The input topic (and the label topic beside it) of one consumer group, as a Source.

    The consumer is created by :meth:`open` (or the first :meth:`next_batch`), never here.

    Parameters
    ----------
    conf : dict
        librdkafka settings: ``bootstrap.servers``, ``group.id`` and any callbacks. The source
        adds ``CONSUMER_SETTINGS`` and ``CONSUMER_TUNING``; an ``error_cb`` here is still called
        for every client error.
    topic : str
        The input topic (JSON events).
    encoder : Encoder
        Encodes the events (its count tables advance in message order); replace it with the
        ``encoder`` attribute.
    label_topic : str, optional
        Also subscribed; its messages come out in :attr:`KafkaBatch.labels`.
    overrides : dict, optional
        Settings applied last (``serve --consumer-config``).
    poll_timeout : float
        Seconds a batch below full load gathers messages after its first one.
    idle_end : float, optional
        The stream ends (``next_batch`` returns None) after this many seconds without a
        message while partitions are assigned or no broker answers (``--exit-when-idle``).
    dead_letter : callable, optional
        ``dead_letter(message, reason)`` for each input message that is not a valid event;
        without it they are logged and dropped.
    on_assign, on_revoke, on_lost : callable, optional
        Called with the partitions before the source assigns them (``on_assign`` may set a
        partition's ``offset``: where it starts), before it gives them up (revoked: the last
        moment to commit them), and when they were lost (the session expired).
    busy : callable, optional
        Asked when fewer than ``max_rows`` messages are ready; it may finish some of the
        owner's work meanwhile and returns True while the owner still has work in flight. The
        source then returns what is there at once instead of waiting for more.

    Examples
    --------
    >>> from streamfusion.data.schema import avazu_schema
    >>> src = KafkaSource({"bootstrap.servers": "127.0.0.1:9092", "group.id": "g"}, "events",
    ...                   Encoder(avazu_schema(), bits=16), idle_end=5.0)
    >>> while (batch := src.next_batch(5000)) is not None:  # doctest: +SKIP
    ...     print(len(batch), batch.messages, src.position())   # {"events": {"0": 5000}}
    >>> src.close()
    """

    def __init__(self, conf: dict[str, Any], topic: str, encoder: Encoder, *,
                 label_topic: str | None = None, overrides: dict[str, Any] | None = None,
                 poll_timeout: float = DEFAULT_POLL_TIMEOUT, idle_end: float | None = None,
                 dead_letter: Callable[[Message, str], None] | None = None,
                 on_assign: Partitions | None = None, on_revoke: Partitions | None = None,
                 on_lost: Partitions | None = None,
                 busy: Callable[[], bool] | None = None) -> None:
        self.topic = topic
        self.label_topic = label_topic
        self.topics = [topic] + ([label_topic] if label_topic else [])
        self.encoder = encoder
        self.poll_timeout = float(poll_timeout)
        self.idle_end = idle_end
        self.dead_letter = dead_letter
        self.on_assign, self.on_revoke, self.on_lost = on_assign, on_revoke, on_lost
        self.busy = busy
        self._conf = {**conf, **CONSUMER_SETTINGS, **CONSUMER_TUNING, **(overrides or {}),
                      "error_cb": self._on_client_error}
        self._forward_error = conf.get("error_cb")
        self._consumer: Consumer | None = None
        self._closed = False
        self._ended = False
        self._assigned: set[Key] = set()
        self._next: dict[Key, int] = {}  # next offset not yet returned, per owned partition
        self._unreachable = False  # the last client error said no broker answers
        self._last_message = time.monotonic()

    @property
    def encoder(self) -> Encoder:
        return self._kafka_encoder.encoder

    @encoder.setter
    def encoder(self, encoder: Encoder) -> None:
        self._kafka_encoder = KafkaEncoder(encoder)

    @property
    def active(self) -> bool:
        """The consumer exists (opened, not closed yet): commits can go through it."""
        return self._consumer is not None

    @property
    def assigned(self) -> frozenset[Key]:
        """The partitions this member owns now (any thread may ask)."""
        return frozenset(self._assigned)

    # ------------------------------------------------------------------ the Source protocol
    def open(self) -> None:
        """Create the consumer and subscribe (once). A bad client setting raises
        ``KafkaException`` here, before anything is consumed."""
        if self._consumer is not None or self._closed:
            return
        self._consumer = Consumer(self._conf)
        self._consumer.subscribe(self.topics, on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_lost)
        self._last_message = time.monotonic()

    def next_batch(self, max_rows: int) -> KafkaBatch | None:
        """Up to ``max_rows`` messages as one batch of events (labels beside it), in offset
        order per partition; an empty batch when none came within the wait, None once closed
        or idle for ``idle_end`` seconds.

        ``max_rows`` messages are returned at once if they are there; otherwise the source
        waits up to ``IDLE_WAIT`` for a first message and ``poll_timeout`` for more (unless
        ``busy``).
        """
        if self._closed or self._ended:
            return None
        self.open()
        msgs = self._poll(max_rows)
        now = time.monotonic()
        # idle counts while owning partitions, or while no broker answers
        if msgs or not (self._assigned or self._unreachable):
            self._last_message = now
        if (not msgs and self.idle_end is not None
                and now - self._last_message > self.idle_end):
            log.info("idle for %.1fs: stopping", self.idle_end)
            self._ended = True
            return None
        return self._take(msgs)

    def position(self) -> dict[str, Any]:
        """``{topic: {partition: offset}}``: the offset of the next message not yet returned
        (a label handed out in a batch is returned), for each owned partition read from or
        given a start offset; a partition not read yet starts at the group's committed
        offset. Partitions are strings, so the position is JSON as it is."""
        out: dict[str, dict[str, int]] = {}
        for (topic, partition), offset in sorted(self._next.items()):
            out.setdefault(topic, {})[str(partition)] = offset
        return out

    def close(self) -> None:
        """Leave the group (``on_revoke`` runs first) and end the stream; idempotent."""
        self._closed = True
        consumer = self._consumer
        if consumer is None:
            return
        try:
            consumer.close()  # runs on_revoke while commits still go through
        except (KafkaException, RuntimeError) as exc:
            log.warning("closing the consumer: %s", exc)
        self._consumer = None

    # ------------------------------------------------------------------ the group
    def commit(self, positions: dict[Key, int]) -> None:
        """Commit ``(topic, partition) -> next offset`` for the group, synchronously (raises
        ``KafkaException``)."""
        offsets = [TopicPartition(t, p, o) for (t, p), o in sorted(positions.items())]
        if offsets:
            self._consumer.commit(offsets=offsets, asynchronous=False)

    def committed(self, partitions: list[TopicPartition], timeout: float = 10
                  ) -> list[TopicPartition]:
        """The group's committed offsets of ``partitions`` (raises ``KafkaException``)."""
        return self._consumer.committed(partitions, timeout=timeout)

    # ------------------------------------------------------------------ polling
    def _poll(self, n: int) -> list[Message]:
        """``n`` messages if they are there already (the scoring thread keeps busy at full
        load). Otherwise, unless the owner is busy, what arrives within ``poll_timeout`` (more
        events per batch: each costs a few hundred us whatever its size, CPU that the broker
        on the same cores needs); with nothing at all, up to ``IDLE_WAIT`` for the first."""
        consumer = self._consumer
        msgs = consumer.consume(n, 0)
        if len(msgs) == n:
            return msgs
        if self.busy is not None and self.busy():
            return msgs + consumer.consume(n - len(msgs), 0) if msgs else msgs
        if not msgs:
            first = consumer.poll(IDLE_WAIT)  # returns as soon as one message is there
            if first is None:
                return []
            msgs = [first]
        if len(msgs) < n:
            msgs += consumer.consume(n - len(msgs), self.poll_timeout)
        return msgs

    def _take(self, msgs: list[Message]) -> KafkaBatch:
        """The batch of polled messages: errors reported, messages of partitions revoked
        meanwhile dropped (their new owner starts before them), positions moved."""
        good = [m for m in msgs if m.error() is None]
        if len(good) != len(msgs):
            for m in msgs:
                err = m.error()
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    self._on_client_error(err)
        # offsets rise within a partition: the last message of each sets its position
        last = {(m.topic(), m.partition()): m for m in good}
        if not self._assigned.issuperset(last):
            good = [m for m in good if (m.topic(), m.partition()) in self._assigned]
            last = {key: m for key, m in last.items() if key in self._assigned}
        advanced = {key: m.offset() + 1 for key, m in last.items()}
        self._next.update(advanced)
        if all(key[0] == self.topic for key in last):
            events, labels = good, []
        else:
            events = [m for m in good if m.topic() == self.topic]
            labels = [m for m in good if m.topic() != self.topic]
        batch = self._encode(events)
        batch.labels, batch.advanced = labels, advanced
        return batch

    def _encode(self, msgs: list[Message]) -> KafkaBatch:
        """Decode and encode the events (the count tables advance in message order); each
        message that is not a valid event is dead-lettered."""
        if not msgs:
            return KafkaBatch(**self.encoder.new_arrays(0), ids=[])
        encoded = self._kafka_encoder.encode([m.value() for m in msgs])
        for pos, reason in encoded.rejects:
            self._reject(msgs[pos], reason)
        b, index = encoded.batch, encoded.index
        offsets = np.fromiter(map(Message.offset, msgs), np.int64, len(msgs))
        stamps = np.fromiter((m.timestamp()[1] for m in msgs), np.float64, len(msgs))
        return KafkaBatch(b.indices, b.values, b.dense, b.y, offsets[index], b.time, b.ids,
                          stamps=stamps[index], messages=len(msgs))

    def _reject(self, m: Message, reason: str) -> None:
        if self.dead_letter is not None:
            self.dead_letter(m, reason)
        else:
            log.warning("invalid message %s[%d]@%d: %s (dropped)", m.topic(), m.partition(),
                        m.offset(), reason)

    # ------------------------------------------------------------------ client callbacks
    def _on_client_error(self, err: KafkaError) -> None:
        if not err.fatal():
            self._unreachable = err.code() in UNREACHABLE
        if self._forward_error is not None:
            self._forward_error(err)
        else:
            log.warning("Kafka: %s", err.str())

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.on_assign is not None:
            self.on_assign(partitions)
        consumer.assign(partitions)
        self._unreachable = False
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._assigned.add(key)
            if tp.offset >= 0:
                self._next[key] = tp.offset
        self._last_message = time.monotonic()  # the idle clock starts with the assignment
        log.info("assigned %s", _fmt(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("revoking %s", _fmt(partitions))
        if self.on_revoke is not None:
            self.on_revoke(partitions)
        self._forget(partitions)
        consumer.unassign()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.warning("partitions lost %s (session expired)", _fmt(partitions))
        if self.on_lost is not None:
            self.on_lost(partitions)
        self._forget(partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            key = (tp.topic, tp.partition)
            self._assigned.discard(key)
            self._next.pop(key, None)


def _fmt(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
