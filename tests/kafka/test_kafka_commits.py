"""The commit cycle's order and timing (no broker: the steps are recorded)."""

from __future__ import annotations

from streamfusion.kafka import commits
from streamfusion.kafka.commits import CommitCycle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_steps_run_in_order_and_the_interval_runs_from_the_drain(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(commits.time, "monotonic", clock)
    steps = []

    def save(dirty: bool) -> None:
        steps.append(("save", dirty))
        clock.now += 1.5  # a slow checkpoint write

    cycle = CommitCycle(10**9, 2.0, drain=lambda: steps.append("drain"),
                        flush=lambda: steps.append("flush"), save=save,
                        commit=lambda pos: steps.append(("commit", pos)) or True)
    cycle.consumed({("in", 0): 7})
    started = clock.now
    cycle.run()
    assert steps == ["drain", "flush", ("save", True), ("commit", {("in", 0): 7})]
    assert not cycle.due(clock.now)  # nothing consumed since
    cycle.consumed({("in", 0): 9})
    # due one interval after the last drain, not after its 1.5 s save: a crash replays at
    # most one interval of outputs
    assert not cycle.due(started + 1.9)
    assert cycle.due(started + 2.0)


def test_a_failed_commit_is_tried_again_at_the_next_cycle():
    results = iter([False, True])
    commits_seen = []
    cycle = CommitCycle(1, 60.0, drain=lambda: None, flush=lambda: None,
                        save=lambda dirty: None,
                        commit=lambda pos: commits_seen.append(pos) or next(results))
    cycle.consumed({("in", 0): 3})
    cycle.counted(1)
    cycle.run()
    assert cycle.uncommitted and cycle.due(0.0) is False  # no events counted since
    cycle.run(force=True)
    assert not cycle.uncommitted and commits_seen == [{("in", 0): 3}, {("in", 0): 3}]
