"""The daemon's scoring pipeline: one scoring thread, jobs in order, results in order.

The main thread consumes, decodes and encodes a mini-batch (``source.py``) while the scoring
thread scores and learns the one before it (compiled kernels that release the GIL), so the two
overlap on two cores. Jobs run one at a time in submission order, at most ``depth`` in flight;
each job's result goes to ``on_done`` on the main thread, in the same order. The model and the
label join are touched only by the scoring thread, or by the main thread after :meth:`drain`;
the encoder only by the main thread (its count tables advance as the source encodes).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

# mini-batches handed to the scoring thread and not yet done: it scores one while the main
# thread consumes and encodes the next
PIPELINE_DEPTH = 2


class Pipeline:
    """Jobs on one scoring thread, finished in order.

    Parameters
    ----------
    on_done : callable
        Called on the main thread with each job's result that is not None (the outputs).
    depth : int
        Most jobs in flight; ``submit`` waits for the oldest beyond it.
    """

    def __init__(self, on_done: Callable[..., None], depth: int = PIPELINE_DEPTH) -> None:
        self.on_done = on_done
        self.depth = depth
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="streamfusion-score")
        self._inflight: deque[Future] = deque()

    def __len__(self) -> int:
        """Jobs in flight."""
        return len(self._inflight)

    def submit(self, job: Callable[..., Any], *args: Any) -> None:
        """Run ``job(*args)`` on the scoring thread after the jobs before it."""
        while len(self._inflight) >= self.depth:
            self.finish_oldest()
        self._inflight.append(self._pool.submit(job, *args))

    def finish_oldest(self) -> None:
        """Wait for the oldest job (re-raising what it raised) and hand on its result."""
        done = self._inflight.popleft().result()
        if done is not None:
            self.on_done(*done)

    def reap(self) -> bool:
        """Finish the jobs that are done; True when none is left in flight."""
        while self._inflight and self._inflight[0].done():
            self.finish_oldest()
        return not self._inflight

    def drain(self) -> None:
        """Finish every job in flight: afterwards the main thread may touch the state."""
        while self._inflight:
            self.finish_oldest()

    def close(self, broken: bool) -> None:
        """Stop the thread. After a clean run the last jobs finish (raising what they
        raised); after a failure (``broken``) they are dropped: their batches are never
        committed."""
        self._pool.shutdown(wait=True, cancel_futures=broken)
        if not broken:
            self.drain()
        self._inflight.clear()
