"""The one online loop of replay and serve: poll, split, score, learn, record, checkpoint.

For each mini-batch, in this order: finished tree refits go live (between batches only);
held-out events are put aside for the final model; the others are scored with the whole chain
and, when this loop learns, the labelled ones are learned (test-then-train: each event is
scored before the model learns from it); the sink records what was scored. ``run`` pulls the
batches from a :class:`~streamfusion.online.source.Source` on the deterministic batch schedule
and checkpoints at its boundaries; the Kafka daemon, whose batches arrive from a pipelined
consumer, hands each one to ``step`` itself. Replay and serve differ only in their source and
their sink (the report's metrics, or the output topic).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from streamfusion.features import Batch
from streamfusion.online.model import OnlineModel, Scores
from streamfusion.online.schedule import batch_size_at, exact_batches
from streamfusion.online.source import Source

# (batch, index of its first event in the stream) -> mask of the events to hold out
Holdout = Callable[[Batch, int], np.ndarray]


class Sink(Protocol):
    """Where the loop's results go: a replay's metrics and holdout, or the output topic."""

    def swapped(self, version: int) -> None:
        """A tree refit went live before the next batch (the chain's new version)."""

    def held_out(self, batch: Batch) -> None:
        """Events held out of learning; the final model scores them."""

    def scored(self, batch: Batch, scores: Scores) -> None:
        """Events scored by the live model (before it learned from them)."""


class OnlineLoop:
    """Runs an :class:`OnlineModel` over mini-batches.

    Parameters
    ----------
    model : OnlineModel
    learn : bool
        Learn from labelled events (a scorer only scores).
    holdout : callable, optional
        ``holdout(batch, first_event)``: the events never learned (the replay's 9:1 test).
    events : int
        Events already behind this loop (a resumed run).

    Examples
    --------
    >>> loop = OnlineLoop(OnlineModel(ModelConfig(model="fm", bits=12), 23))  # doctest: +SKIP
    >>> loop.run(source, sink, max_batch=1024)  # doctest: +SKIP
    """

    def __init__(self, model: OnlineModel, *, learn: bool = True, holdout: Holdout | None = None,
                 events: int = 0) -> None:
        self.model = model
        self.learn = learn
        self.holdout = holdout
        self.events = int(events)

    def step(self, batch: Batch, sink: Sink) -> tuple[Batch, Scores] | None:
        """One mini-batch; returns the live (not held-out) events and their scores."""
        if self.learn and self.model.poll():
            sink.swapped(self.model.version)
        live = batch
        if self.holdout is not None:
            held = self.holdout(batch, self.events)
            if held.any():
                sink.held_out(batch.take(held))
                live = batch.take(~held)
        self.events += len(batch)
        if not len(live):
            return None
        scores = self.model.step(live) if self.learn else self.model.score(live)
        sink.scored(live, scores)
        return live, scores

    def learn_late(self, batch: Batch, weight: np.ndarray | None = None) -> Scores:
        """Learn events whose labels came after they were scored (a label topic): the model
        scores them again as it learns; their test-then-train score is the one sent out.
        ``weight``: per-event loss weights (the delayed-feedback correction)."""
        return self.model.step(batch, weight=weight)

    def run(self, source: Source, sink: Sink, *, max_batch: int, limit: int | None = None,
            checkpoint: Callable[[], None] | None = None, every: int = 0,
            progress: Callable[[], None] | None = None) -> None:
        """Pull batches from ``source`` until it ends or ``limit`` events are behind the loop.

        Batches follow ``batch_size_at`` from the stream position, and checkpoints (every
        ``every`` events, and at the end of the source) are written only at boundaries of the
        uninterrupted schedule, so a resumed run cuts the same batches as an uninterrupted
        one.
        """
        next_ckpt = (self.events // every + 1) * every if every else 0
        saved = self.events
        for batch in exact_batches(source, max_batch, limit, self.events):
            size = batch_size_at(self.events, max_batch)
            self.step(batch, sink)
            if progress is not None:
                progress()
            if checkpoint is None:
                continue
            # After a full batch, or a short one at the end of the file. A `limit` stop cuts
            # the last batch short: checkpoint before it (and at a stop on a boundary), so a
            # resume with a larger limit redoes little.
            eof = len(batch) < size and (limit is None or self.events < limit)
            cut_next = (limit is not None
                        and limit - self.events < batch_size_at(self.events, max_batch))
            if (len(batch) == size or eof) and (self.events >= next_ckpt or eof or cut_next):
                checkpoint()
                saved = self.events
                next_ckpt = (self.events // every + 1) * every
        if checkpoint is not None and saved != self.events and (limit is None
                                                                 or self.events < limit):
            checkpoint()  # the file ended right after a full batch: a boundary too
