"""Model snapshots through the model topic: the trainer publishes, scorers rebuild and load.

The trainer (``--role train``) publishes the scoring model after each checkpoint as chunk
messages followed by a signed announcement (``snapshot_wire`` has the format and every
check). A scorer (``--role score``) reads the model topic from its end, in a consumer group
of its own: at start it looks back for the newest snapshot it can load, then follows every
new announcement. A snapshot is loaded only when every check passes: announcement fields,
schema, version order (newer than the last one of the same trainer), chunk checksums, total
checksum, signature (with ``--model-key-file``), bounded decompression, a well-formed model.
Anything else is logged and ignored: the scorer goes on with the model it has. No file path
is read from a message; the trainer and the scorers share nothing but the broker.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from streamfusion.data.encoder import Encoder
from streamfusion.data.schema import Schema
from streamfusion.kafka.snapshot_wire import (
    Announcement,
    BadSnapshot,
    announce,
    chunk_messages,
    compress,
    decompress,
    is_chunk,
    pack_model,
    parse_announcement,
    parse_chunk,
    schema_fingerprint,
    unpack_model,
    verify,
)
from streamfusion.online import OnlineModel

log = logging.getLogger("streamfusion.kafka")

MODEL_TOPIC_RETRY = 2.0  # seconds between looks for a model topic that does not exist yet
# seconds between looks at the model topic: once per mini-batch was ~8% of the main thread at
# 10k events/s (each look gives up the GIL and waits to get it back from the scoring thread)
MODEL_POLL_INTERVAL = 0.25
FETCH_TIMEOUT = 30.0  # seconds to read a snapshot's chunks (a local broker: well under one)
PUBLISH_TIMEOUT = 60.0  # seconds the trainer waits for its chunks to be acknowledged
# messages a starting scorer reads back from the topic's end to find the newest snapshot it
# can load (a snapshot of the default model is ~70 chunks)
STARTUP_SCAN_MESSAGES = 512
SCAN_BLOCK = 32  # messages read back at a time while scanning
# other messages tolerated between a snapshot's chunks (another writer on the topic)
MAX_INTERLEAVED = 1000
# the model consumer buffers at most this many KiB ahead (a chunk is 512 KiB)
MODEL_QUEUE_KBYTES = 8192


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
    schema : Schema
        The events' schema: snapshots of another schema are refused.
    key : bytes, optional
        The HMAC key: the trainer signs with it, scorers refuse what it does not verify.

    Examples
    --------
    >>> from streamfusion.data.schema import avazu_schema
    >>> s = Snapshots("models", dict, "g", avazu_schema())
    >>> s.loaded is None
    True
    """

    def __init__(self, topic: str, conf: Callable[[], dict[str, Any]], group_id: str,
                 schema: Schema, key: bytes | None = None) -> None:
        self.topic = topic
        self._conf = conf
        self.group_id = group_id
        self.schema = schema
        self.fingerprint = schema_fingerprint(schema)
        self.key = key
        self.loaded: tuple[str, int] | None = None  # (trainer, version) of the model in use
        self.refused = 0  # announcements and snapshots ignored
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._topic_wait = 0.0
        self._next_poll = 0.0
        self._startup: tuple[Announcement, OnlineModel, Encoder] | None = None

    # ------------------------------------------------------------------ trainer
    def publish(self, trainer: str, version: int, model: OnlineModel, encoder: Encoder) -> int:
        """Publish snapshot ``version``: chunks, then the announcement; returns its bytes.

        Raises ``KafkaException`` when the broker does not acknowledge it in time (the next
        checkpoint publishes again)."""
        raw = pack_model(model, encoder)
        blob = compress(raw)
        producer = self._producer_client()
        first: list[int] = []
        failed: list[str] = []

        def delivered(err, msg) -> None:
            if err is not None:
                failed.append(str(err))
            elif not first:
                first.append(msg.offset())

        for value in chunk_messages(trainer, version, blob):
            _produce(producer, self.topic, value, b"chunk", delivered)
            delivered = _only_errors(failed)  # the offset of the first chunk is enough
        if producer.flush(PUBLISH_TIMEOUT) or failed or not first:
            raise KafkaException(f"snapshot {version} chunks not acknowledged "
                                 f"({failed[-1] if failed else 'timeout'})")
        note = announce(trainer, version, self.schema, first[0], blob, len(raw), self.key)
        _produce(producer, self.topic, note.to_bytes(), b"model", _only_errors(failed))
        if producer.flush(PUBLISH_TIMEOUT) or failed:
            raise KafkaException(f"snapshot {version} announcement not acknowledged")
        return len(blob)

    def _producer_client(self) -> Producer:
        if self._producer is None:
            conf = self._conf()
            conf.update({"enable.idempotence": True, "linger.ms": 5,
                         "compression.type": "none"})  # chunks are compressed already
            self._producer = Producer(conf)
        return self._producer

    # ------------------------------------------------------------------ scorer
    def poll(self) -> tuple[Announcement, OnlineModel, Encoder] | None:
        """The newest announced snapshot if it follows the one in use, loaded; else None."""
        if self._consumer is None:
            if not self._open():
                return None
            got, self._startup = self._startup, None
            if got is not None:
                return self._accept(got)
        now = time.monotonic()
        if now < self._next_poll:
            return None
        self._next_poll = now + MODEL_POLL_INTERVAL
        msgs = [m for m in self._consumer.consume(100, 0) if m.error() is None]
        if not msgs:
            return None
        resume = msgs[-1].offset() + 1
        notes = [(m.offset(), note) for m in msgs if (note := self._announcement(m))]
        got = None
        for offset, note in reversed(notes):  # the newest that loads
            got = self._load(note, offset)
            if got is not None:
                break
        if notes:  # chunks were read past the position: go back to where the batch ended
            self._consumer.assign([TopicPartition(self.topic, 0, resume)])
        return None if got is None else self._accept(got)

    def _accept(self, got: tuple[Announcement, OnlineModel, Encoder]
                ) -> tuple[Announcement, OnlineModel, Encoder]:
        self.loaded = (got[0].trainer, got[0].version)
        return got

    def _announcement(self, m: Message) -> Announcement | None:
        """The validated announcement in ``m``, or None (a chunk, or logged and ignored)."""
        value = m.value()
        if is_chunk(value):
            return None
        try:
            note = parse_announcement(value)
            if note.schema != self.fingerprint:
                raise BadSnapshot(f"snapshot {note.version} was written for another schema")
            if self.loaded is not None and note.trainer == self.loaded[0] \
                    and note.version <= self.loaded[1]:
                raise BadSnapshot(f"snapshot {note.version} does not follow version "
                                  f"{self.loaded[1]} of trainer {note.trainer}")
            if note.first_offset >= m.offset() \
                    or m.offset() - note.first_offset > note.chunks + MAX_INTERLEAVED:
                raise BadSnapshot(f"snapshot {note.version}: its chunks cannot start at "
                                  f"offset {note.first_offset}")
        except BadSnapshot as exc:
            self._ignore(m.offset(), str(exc))
            return None
        return note

    def _ignore(self, offset: int, reason: str) -> None:
        self.refused += 1
        log.warning("model topic %s@%d ignored: %s", self.topic, offset, reason)

    def _load(self, note: Announcement, offset: int
              ) -> tuple[Announcement, OnlineModel, Encoder] | None:
        """Read, check and rebuild the snapshot of ``note`` (at ``offset``); None when any
        check fails (logged)."""
        try:
            blob = self._fetch(note, offset)
            verify(note, blob, self.key)
            model, encoder = unpack_model(decompress(note, blob))
            if encoder.schema != self.schema:
                raise BadSnapshot(f"snapshot {note.version} holds an encoder of another schema")
        except BadSnapshot as exc:
            self._ignore(offset, str(exc))
            return None
        except KafkaException as exc:
            self._ignore(offset, f"snapshot {note.version} could not be read ({exc})")
            return None
        return note, model, encoder

    def _fetch(self, note: Announcement, offset: int) -> bytes:
        """The compressed bytes of ``note``'s chunks, between its first offset and itself."""
        low, _ = self._consumer.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=5)
        if note.first_offset < low:  # retention removed them: do not wait for them
            raise BadSnapshot(f"snapshot {note.version}: its chunks are no longer on the topic")
        parts: list[bytes] = []
        for m in self._read(note.first_offset, offset):
            if len(parts) < note.chunks and is_chunk(m.value()):
                try:
                    parts.append(parse_chunk(m.value(), note, len(parts)))
                except BadSnapshot:
                    continue  # another writer's message between the chunks
        if len(parts) != note.chunks:
            raise BadSnapshot(f"snapshot {note.version}: {len(parts)} of {note.chunks} chunks "
                              "found")
        return b"".join(parts)

    def _read(self, start: int, end: int) -> list[Message]:
        """Messages at offsets ``start`` .. ``end - 1`` (fewer if the topic lost some)."""
        consumer = self._consumer
        consumer.assign([TopicPartition(self.topic, 0, start)])
        out: list[Message] = []
        deadline = time.monotonic() + FETCH_TIMEOUT
        while time.monotonic() < deadline:
            for m in consumer.consume(64, 0.2):
                if m.error() is None and m.offset() < end:
                    out.append(m)
                if m.error() is None and m.offset() >= end - 1:
                    return out
        raise BadSnapshot(f"offsets {start}..{end - 1} not read within {FETCH_TIMEOUT:.0f}s")

    def _open(self) -> bool:
        now = time.monotonic()
        if now < self._topic_wait:
            return False
        self._topic_wait = now + MODEL_TOPIC_RETRY
        conf = self._conf()
        conf.update({"group.id": f"{self.group_id}-model-{uuid.uuid4().hex[:8]}",
                     "enable.auto.commit": False, "auto.offset.reset": "latest",
                     "queued.max.messages.kbytes": MODEL_QUEUE_KBYTES})
        consumer = Consumer(conf)
        try:
            md = consumer.list_topics(self.topic, timeout=5)
            tmd = md.topics.get(self.topic)
            if tmd is None or tmd.error is not None or not tmd.partitions:
                consumer.close()
                return False
            low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, 0),
                                                       timeout=5)
        except KafkaException as exc:
            log.warning("model topic %s not readable yet: %s", self.topic, exc)
            consumer.close()
            return False
        self._consumer = consumer
        if high > low:  # snapshots were published before we started: load one before scoring
            self._startup = self._newest(low, high)
        consumer.assign([TopicPartition(self.topic, 0, high)])
        return True

    def _newest(self, low: int, high: int) -> tuple[Announcement, OnlineModel, Encoder] | None:
        """Scan back from the topic's end for the newest snapshot that loads."""
        end = high
        stop = max(low, high - STARTUP_SCAN_MESSAGES)
        while end > stop:
            start = max(stop, end - SCAN_BLOCK)
            try:
                block = self._read(start, end)
            except BadSnapshot as exc:
                log.warning("model topic %s: %s", self.topic, exc)
                return None
            for m in reversed(block):
                note = self._announcement(m)
                if note is not None:
                    got = self._load(note, m.offset())
                    if got is not None:
                        return got
            end = start
        log.info("no loadable snapshot in the last %d messages of %s", high - stop, self.topic)
        return None

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._producer is not None:
            self._producer.flush(PUBLISH_TIMEOUT)
            self._producer = None


def _only_errors(failed: list[str]) -> Callable[[Any, Any], None]:
    def delivered(err, msg) -> None:
        if err is not None:
            failed.append(str(err))
    return delivered


def _produce(producer: Producer, topic: str, value: bytes, key: bytes,
             on_delivery: Callable[[Any, Any], None]) -> None:
    """Produce, waiting while the local queue is full."""
    while True:
        try:
            producer.produce(topic, value, key, on_delivery=on_delivery)
            return
        except BufferError:
            producer.poll(0.1)
