"""``streamfusion`` whose online loop waits before each batch it scores, for tests only.

``python slow_scoring.py SECONDS serve ...``: serve's scoring thread sleeps SECONDS before
each batch of events, so a test knows batches are still in flight when it signals serve. The
wait is added here, from outside, so that serve itself has no test hook.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

# this checkout's package, whatever the working directory
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from streamfusion.cli import main  # noqa: E402
from streamfusion.online.loop import OnlineLoop  # noqa: E402


def slow_down(seconds: float) -> None:
    """Make every ``OnlineLoop.step`` (serve's scoring of a batch) wait ``seconds`` first."""
    step = OnlineLoop.step

    def slow_step(self, batch, sink):
        time.sleep(seconds)
        return step(self, batch, sink)

    OnlineLoop.step = slow_step


if __name__ == "__main__":
    slow_down(float(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
