"""The commit cycle: when and in what order the daemon makes its progress durable.

Delivery is at-least-once. One cycle runs these steps in this order, each only after the one
before it succeeded:

1. **drain** the scoring pipeline: every consumed batch is scored and its outputs produced;
2. **flush** the outputs: the broker acknowledged every one (a loss raises
   :class:`~streamfusion.kafka.outputs.DeliveryFailed` and nothing is committed);
3. **save** the state: a learner checkpoints its model, encoder, label join and the positions
   that state covers (a trainer then publishes a snapshot);
4. **commit** the consumed positions, synchronously.

A crash between 3 and 4 replays outputs on restart, never learning: partitions are resumed
from the later of the committed offset and the checkpoint's position.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Key = tuple[str, int]  # (topic, partition)


class CommitCycle:
    """The consumed positions and the cycle that saves and commits them.

    Parameters
    ----------
    every, interval : int, float
        A cycle is due after ``every`` events or ``interval`` seconds, whichever comes first.
    drain, flush, save, commit : callables
        The steps, in this order; ``save(dirty)`` is told whether anything was consumed since
        the last save; ``commit(positions)`` returns False when the group moved on.
    """

    def __init__(self, every: int, interval: float, *, drain: Callable[[], None],
                 flush: Callable[[], None], save: Callable[[bool], None],
                 commit: Callable[[dict[Key, int]], bool]) -> None:
        self.every = int(every)
        self.interval = float(interval)
        self._steps = (drain, flush, save, commit)
        self.positions: dict[Key, int] = {}  # next offset to read, per owned partition
        # Positions the in-memory state covers, for every partition ever consumed (restored
        # from the checkpoint; kept when partitions are revoked or lost).
        self.state_positions: dict[Key, int] = {}
        self.dirty = False  # consumed something since the last save
        self.uncommitted = False  # positions not yet committed (a failed commit keeps it)
        self._since = 0
        self._last = time.monotonic()

    def consumed(self, offsets: dict[Key, int]) -> None:
        """Messages up to ``offsets`` (next offset to read, per partition) were taken."""
        self.positions.update(offsets)
        self.state_positions.update(self.positions)
        self.dirty = self.uncommitted = True

    def counted(self, events: int) -> None:
        """``events`` input events went into the state (the count behind ``every``)."""
        self._since += events

    def resume_at(self, key: Key, offset: int) -> None:
        """A partition starts at ``offset`` (the state already covers what is before it):
        the group is told at the next commit."""
        self.positions[key] = offset
        self.uncommitted = True

    def forget(self, key: Key) -> None:
        """A partition is no longer ours (revoked or lost); the state keeps its position."""
        self.positions.pop(key, None)

    def due(self, now: float) -> bool:
        if not (self.dirty or self.uncommitted):
            return False
        return self._since >= self.every or now - self._last >= self.interval

    def run(self, force: bool = False) -> None:
        """One cycle: drain, flush, save, commit (see the module docstring)."""
        if not (self.dirty or self.uncommitted or force):
            return
        drain, flush, save, commit = self._steps
        # the interval runs from this drain, not from the commit: a crash then replays at most
        # one interval of outputs however long the save takes (it was 1.3 intervals + a batch)
        self._last = time.monotonic()
        drain()
        flush()
        save(self.dirty)
        if self.uncommitted:
            self.uncommitted = not commit(dict(self.positions))
        self.dirty = False
        self._since = 0
