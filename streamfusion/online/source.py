"""The source protocol: what the online loop pulls its events from.

A file reader (:class:`streamfusion.data.readers.FileSource`) and the Kafka consumer
(:class:`streamfusion.kafka.source.KafkaSource`) both implement it. A position is where the next
event not yet read starts (a file offset and counters, or an offset per partition), so a
checkpoint that stores it resumes exactly there.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from streamfusion.features import Batch


@runtime_checkable
class Source(Protocol):
    """A stream of encoded mini-batches."""

    def next_batch(self, max_rows: int) -> Batch | None:
        """Up to ``max_rows`` encoded events, in stream order; None when the stream ended
        (a live source returns an empty batch while nothing arrives)."""

    def position(self) -> dict[str, Any]:
        """Where the next event not yet returned starts (JSON-serialisable)."""

    def close(self) -> None:
        """Release the files or clients (idempotent)."""
