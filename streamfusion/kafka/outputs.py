"""The producer side of the daemon: outputs, dead letters, and the wait for acknowledgements.

Every scored event becomes one output message keyed by its id, ``{"id", "p_click", "margin",
"base_margin", "residual_margin", "model_version"}``; a message that cannot be handled goes
to the dead-letter topic untouched, with the reason in its ``error`` header and where it came
from in ``source``. ``flush`` waits until the broker has acknowledged everything produced and
raises :class:`DeliveryFailed` if anything was lost: offsets may be committed only after it.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import numpy as np
from confluent_kafka import KafkaException, Message, Producer

from streamfusion._parse import json_outputs
from streamfusion.kafka.messages import DEAD_LETTER_HEADER
from streamfusion.online import Scores

log = logging.getLogger("streamfusion.kafka")

# header of a dead letter whose key and value could not be copied (too large to produce)
DROPPED_HEADER = "dropped"
FLUSH_WAIT = 5.0  # seconds per flush attempt; we keep waiting (logging) while the broker is away


class DeliveryFailed(RuntimeError):
    """Outputs the broker never acknowledged: offsets must not be committed."""


# %.9g: float32 margins round-trip exactly; one format call per output is the cheap way.
OUTPUT_FORMAT = ('{"id":%s,"p_click":%.9g,"margin":%.9g,"base_margin":%.9g,'
                 '"residual_margin":%.9g,"model_version":{version}}')
_plain_id = re.compile(r"[A-Za-z0-9_.:\-]+\Z").match  # needs no JSON escaping


def _json_id(ident: str | int) -> str:
    if type(ident) is str:
        return f'"{ident}"' if _plain_id(ident) else json.dumps(ident)
    return str(int(ident))


def format_outputs(ids: list, scores: Scores, version: int) -> tuple[list[bytes], list[str]]:
    """The output messages of a scored batch and their keys (the ids as str).

    In C (``_parse.json_outputs``, the GIL released) when every id is a str; its bytes are
    those of ``format_outputs_py``, the Python reference, which formats int ids.
    """
    cols = [np.ascontiguousarray(a, dtype=np.float64) for a in
            (scores.p, scores.margin, scores.base_margin, scores.residual_margin)]
    values = json_outputs(ids, *cols, int(version))
    if values is not None:
        return values, ids
    return format_outputs_py(ids, scores, version)


def format_outputs_py(ids: list, scores: Scores, version: int
                      ) -> tuple[list[bytes | str], list[str]]:
    """``format_outputs`` in Python: ``OUTPUT_FORMAT`` with each id as JSON."""
    fmt = OUTPUT_FORMAT.replace("{version}", str(int(version)))
    cols = (scores.p.tolist(), scores.margin.tolist(), scores.base_margin.tolist(),
            scores.residual_margin.tolist())
    try:  # one check for the batch: every id a string that needs no JSON escaping
        plain = _plain_id(".".join(ids)) is not None
    except TypeError:  # an int id
        plain = False
    if plain:
        fmt = fmt.replace('"id":%s', '"id":"%s"', 1)
        return [fmt % row for row in zip(ids, *cols, strict=True)], ids
    values = [fmt % row for row in zip(map(_json_id, ids), *cols, strict=True)]
    return values, [i if type(i) is str else str(i) for i in ids]


class _Deliveries:
    """Failed deliveries reported by the producer (only errors are reported)."""

    def __init__(self) -> None:
        self.failed = 0
        self.last: str | None = None

    def __call__(self, err, msg) -> None:
        if err is not None:
            self.failed += 1
            self.last = str(err)


class Outputs:
    """The output and dead-letter topics of one daemon, through one idempotent producer.

    Parameters
    ----------
    conf : dict
        librdkafka producer settings (the delivery callback is added here).
    topic : str
        The output topic.
    dead_letter_topic : str, optional
        Without one, invalid messages are logged and dropped.
    """

    def __init__(self, conf: dict[str, Any], topic: str, dead_letter_topic: str | None) -> None:
        self.deliveries = _Deliveries()
        self.producer = Producer({**conf, "delivery.report.only.error": True,
                                  "on_delivery": self.deliveries})
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic

    def produce(self, topic: str, value: bytes | str, key: bytes | str | None,
                headers: list | None = None) -> None:
        """Produce one message, waiting for acknowledgements while the local queue is full
        (the broker slow or away)."""
        while True:
            try:
                if headers is None:
                    self.producer.produce(topic, value, key)
                else:
                    self.producer.produce(topic, value, key, headers=headers)
                return
            except BufferError:
                self.producer.poll(0.1)

    def emit(self, ids: list, scores: Scores, version: int) -> None:
        """One output per scored event, keyed by id."""
        values, keys = format_outputs(ids, scores, version)
        produce, topic = self.producer.produce, self.topic
        for value, key in zip(values, keys, strict=True):
            try:
                produce(topic, value, key)
            except BufferError:
                self.produce(topic, value, key)
        self.producer.poll(0)

    def dead_letter(self, m: Message, reason: str) -> None:
        """The message, untouched, to the dead-letter topic with its reason."""
        if self.dead_letter_topic is None:
            log.warning("invalid message %s[%d]@%d: %s (no --dead-letter-topic: dropped)",
                        m.topic(), m.partition(), m.offset(), reason)
            return
        headers = [(DEAD_LETTER_HEADER, reason.encode()),
                   ("source", f"{m.topic()}[{m.partition()}]@{m.offset()}".encode())]
        try:
            self.produce(self.dead_letter_topic, m.value(), m.key(), headers)
        except KafkaException as exc:  # e.g. larger than the producer may send: its place
            size = len(m.value() or b"") + len(m.key() or b"")
            self.produce(self.dead_letter_topic, None, None, [
                *headers, (DROPPED_HEADER, f"{size} bytes of key and value: "
                                           f"{exc.args[0].str()}".encode())])

    def flush(self) -> None:
        """Wait until the broker acknowledged every message; raise if any was lost."""
        waited = 0.0
        while True:
            remaining = self.producer.flush(FLUSH_WAIT)
            if remaining == 0:
                break
            waited += FLUSH_WAIT
            log.warning("waiting for the broker to acknowledge %d outputs (%.0fs so far)",
                        remaining, waited)
        if self.deliveries.failed:
            raise DeliveryFailed(f"{self.deliveries.failed} outputs were not delivered "
                                 f"(last error: {self.deliveries.last})")

    def close(self) -> None:
        self.producer.flush(FLUSH_WAIT)
