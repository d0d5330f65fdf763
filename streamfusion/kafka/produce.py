"""``streamfusion produce``: replay a click log into a Kafka topic as JSON events.

Each row becomes one JSON event (raw fields under the dataset's column names, ``id`` = the
row's id or its line number, ``click`` when the log has a label), keyed by id, in file order.
``--rate`` paces the stream in events per second; delivery errors are counted and reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from confluent_kafka import KafkaException, Producer

from streamfusion.data.schema import Schema
from streamfusion.inputs import add_input_arguments, source_options
from streamfusion.kafka.formats import read_events

PACE_EVERY = 100  # events between pacing checks: sleeps stay >= ~1 ms at high rates
POLL_EVERY = 1000  # serve delivery callbacks every N events so the queue never clogs
FLUSH_TIMEOUT = 120.0  # seconds to wait at the end for the broker to acknowledge everything


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Attach ``streamfusion produce`` options to ``parser``."""
    parser.add_argument("--file", required=True, help="click log (.csv, .txt, .gz)")
    parser.add_argument("--topic", required=True, help="topic to write the events to")
    parser.add_argument("--bootstrap-servers", required=True, help="Kafka bootstrap HOST:PORT")
    add_input_arguments(parser)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="events per second (default: 0, as fast as possible)")
    parser.add_argument("--rows", type=int, default=None, help="stop after N events")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--producer-config", action="append", default=[], metavar="KEY=VALUE",
                        help="extra librdkafka producer setting (repeatable)")


def producer_config(bootstrap: str, extra: list[str] | None = None) -> dict:
    """Producer settings: idempotent (retries never duplicate or reorder), batched."""
    conf = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 500_000,
    }
    for item in extra or []:
        key, _, value = item.partition("=")
        conf[key.strip()] = value.strip()
    return conf


class _Delivery:
    """Counts acknowledged and failed deliveries; keeps the first few errors."""

    def __init__(self) -> None:
        self.acked = 0
        self.failed = 0
        self.errors: list[str] = []

    def __call__(self, err, msg) -> None:
        if err is None:
            self.acked += 1
        else:
            self.failed += 1
            if len(self.errors) < 5:
                self.errors.append(str(err))


def produce(path: str, topic: str, bootstrap: str, rate: float = 0.0, rows: int | None = None,
            progress: bool = False, extra_config: list[str] | None = None,
            schema: Schema | None = None, **source: Any) -> dict:
    """Write the log's events to ``topic``; return counts and timing.

    The log is typed as ``replay`` types it: ``source`` holds the input options of
    :func:`~streamfusion.data.open_source` (``format``, ``label``, ``types``, ...), or
    ``schema`` gives the schema outright.

    Returns
    -------
    dict
        ``events`` sent, ``acked``, ``failed``, ``errors`` (first few), ``seconds``,
        ``events_per_second``, ``format`` and ``schema``.
    """
    schema, events = read_events(path, rows=rows, schema=schema, **source)
    producer = Producer(producer_config(bootstrap, extra_config))
    delivery = _Delivery()
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    t0 = time.perf_counter()
    sent = 0
    bar = _progress(progress, rows)
    try:
        for key, event in events:
            value = dumps(event).encode()
            while True:
                try:
                    producer.produce(topic, value, key.encode(), on_delivery=delivery)
                    break
                except BufferError:  # local queue full: let the broker catch up
                    producer.poll(0.05)
            sent += 1
            if sent % POLL_EVERY == 0:
                producer.poll(0)
                if bar is not None:
                    bar.advance(POLL_EVERY)
            if rate > 0 and sent % PACE_EVERY == 0:
                ahead = sent / rate - (time.perf_counter() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        remaining = producer.flush(FLUSH_TIMEOUT)
    finally:
        if bar is not None:
            bar.stop()
    seconds = time.perf_counter() - t0
    failed = delivery.failed + remaining
    if remaining:
        delivery.errors.append(f"{remaining} events not acknowledged within {FLUSH_TIMEOUT}s")
    return {
        "events": sent, "acked": delivery.acked, "failed": failed, "errors": delivery.errors,
        "seconds": seconds, "events_per_second": sent / seconds if seconds > 0 else 0.0,
        "format": schema.name, "schema": schema,
    }


class _Bar:
    """A rich progress bar that counts events (total known only with --rows)."""

    def __init__(self, total: int | None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
        self._p = Progress(TextColumn("producing"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), transient=True)
        self._task = self._p.add_task("produce", total=total)
        self._p.start()

    def advance(self, n: int) -> None:
        self._p.advance(self._task, n)

    def stop(self) -> None:
        self._p.stop()


def _progress(enabled: bool, total: int | None) -> _Bar | None:
    return _Bar(total) if enabled else None


def run(args: argparse.Namespace) -> int:
    """Run ``streamfusion produce``; returns the exit code (1 when deliveries failed)."""
    try:
        stats = produce(args.file, args.topic, args.bootstrap_servers, args.rate, args.rows,
                        progress=not args.no_progress and sys.stderr.isatty(),
                        extra_config=args.producer_config, **source_options(args))
    except (OSError, ValueError, KafkaException) as exc:  # ParseError is a ValueError
        print(f"streamfusion produce: {exc}", file=sys.stderr)
        return 2
    print(f"produced {stats['events']:,} {stats['format']} events to {args.topic} in "
          f"{stats['seconds']:.2f}s ({stats['events_per_second']:,.0f} events/s): "
          f"{stats['acked']:,} acknowledged, {stats['failed']:,} failed")
    for err in stats["errors"]:
        print(f"  delivery error: {err}", file=sys.stderr)
    return 1 if stats["failed"] else 0
