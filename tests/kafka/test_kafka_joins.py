"""The bounded label join: matching, TTL expiry, capacity, early labels, state round trip."""

from __future__ import annotations

import numpy as np
import pytest

from streamfusion.features import Batch
from streamfusion.kafka.joins import LabelJoin, delayed_feedback_weights


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _batch(n: int, start: int = 0) -> Batch:
    idx = np.arange(start, start + n, dtype=np.int32)[:, None] * np.ones((1, 3), np.int32)
    return Batch(idx, np.ones((n, 3), np.float32), idx[:, :2].astype(np.float32),
                 np.full(n, np.nan, np.float32), np.arange(n, dtype=np.int64),
                 np.arange(n, dtype=np.int64), [str(start + i) for i in range(n)])


def test_labels_join_their_events_in_label_order() -> None:
    clock = Clock()
    join = LabelJoin(ttl=10, capacity=100, clock=clock)
    b = _batch(5)
    ready, _ = join.add_events(b, b.ids, np.linspace(0.1, 0.5, 5))
    assert len(ready) == 0 and len(join) == 5
    joined, p = join.add_labels([("3", 1), ("0", 0), ("nope", 1)])
    assert joined.ids == ["3", "0"]
    np.testing.assert_array_equal(joined.y, [1, 0])
    np.testing.assert_array_equal(joined.indices[:, 0], [3, 0])
    np.testing.assert_allclose(p, [0.4, 0.1])
    assert len(join) == 3 and join.pending_labels == 1 and join.joined == 2


def test_expired_events_are_counted_and_forgotten() -> None:
    clock = Clock()
    join = LabelJoin(ttl=10, capacity=100, clock=clock)
    b = _batch(3)
    join.add_events(b, b.ids, np.zeros(3))
    clock.t = 5
    b2 = _batch(2, start=10)
    join.add_events(b2, b2.ids, np.zeros(2))
    clock.t = 11  # the first three are past their deadline, the last two are not
    joined, _ = join.add_labels([("0", 1), ("10", 1)])
    assert joined.ids == ["10"]
    assert join.expired_events == 3
    clock.t = 100
    join.expire()
    assert join.expired_events == 4 and join.expired_labels == 1 and len(join) == 0


def test_capacity_bounds_memory_oldest_first() -> None:
    join = LabelJoin(ttl=1e9, capacity=4, clock=Clock())
    b = _batch(10)
    join.add_events(b, b.ids, np.zeros(10))
    assert len(join) == 4 and join.expired_events == 6
    joined, _ = join.add_labels([(str(i), 1) for i in range(10)])
    assert joined.ids == ["6", "7", "8", "9"]


def test_early_labels_wait_for_their_event() -> None:
    join = LabelJoin(ttl=10, capacity=10, clock=Clock())
    joined, _ = join.add_labels([("2", 1)])
    assert joined is None and join.pending_labels == 1
    b = _batch(4)
    ready, y = join.add_events(b, b.ids, np.zeros(4))
    np.testing.assert_array_equal(ready, [2])
    np.testing.assert_array_equal(y, [1])
    assert len(join) == 3 and join.pending_labels == 0


def test_redelivered_event_replaces_not_duplicates() -> None:
    join = LabelJoin(ttl=10, capacity=10, clock=Clock())
    b = _batch(2)
    join.add_events(b, b.ids, np.zeros(2))
    join.add_events(b, b.ids, np.zeros(2))
    assert len(join) == 2


def test_state_round_trip_keeps_pending_rows_and_remaining_ttl() -> None:
    clock = Clock()
    join = LabelJoin(ttl=10, capacity=10, clock=clock)
    b = _batch(3)
    join.add_events(b, b.ids, np.array([0.1, 0.2, 0.3]))
    join.add_labels([("99", 1)])
    clock.t = 4
    state = join.state_dict()
    clock2 = Clock()
    clock2.t = 1000
    other = LabelJoin(ttl=10, capacity=10, clock=clock2)
    other.load_state_dict(state)
    assert len(other) == 3 and other.pending_labels == 1
    clock2.t = 1005.9  # 6 s were left of the 10
    joined, p = other.add_labels([("1", 1)])
    assert joined.ids == ["1"] and p[0] == 0.2
    clock2.t = 1006.1
    other.expire()
    assert len(other) == 0


def test_bad_state_is_refused_before_changing_anything() -> None:
    join = LabelJoin(ttl=10, capacity=10, clock=Clock())
    b = _batch(2)
    join.add_events(b, b.ids, np.zeros(2))
    state = join.state_dict()
    state["event_margin"] = state["event_margin"][:1]
    fresh = LabelJoin(ttl=10, capacity=10, clock=Clock())
    try:
        fresh.load_state_dict(state)
    except ValueError:
        pass
    else:
        raise AssertionError("a malformed state was accepted")
    assert len(fresh) == 0


# ----------------------------------------------------------------------------- clicks only
def test_clicks_only_window_negatives_joined_clicks_and_late_corrections() -> None:
    clock = Clock()
    join = LabelJoin(ttl=100, capacity=100, clock=clock, window=10)
    b = _batch(4)
    join.add_events(b, b.ids, np.array([-1.0, -2.0, -3.0, -4.0]))
    # a click within the window is held: every event is learned when its window closes
    assert join.add_labels([("1", 1)])[0] is None and join.joined == 1
    assert join.due()[0] is None  # the window is still open
    clock.t = 5
    late_event = _batch(1, start=9)
    join.add_events(late_event, ["9"], np.array([-9.0]))
    clock.t = 10
    due, margin = join.due()  # impression order, positives and negatives together
    assert due.ids == ["0", "1", "2", "3"] and list(due.y) == [0, 1, 0, 0]
    np.testing.assert_array_equal(margin, [-1.0, -2.0, -3.0, -4.0])
    np.testing.assert_array_equal(due.indices[:, 0], [0, 1, 2, 3])
    assert join.window_negatives == 3 and len(join) == 1
    clock.t = 50  # a click after its event was learned as a negative: a counted correction
    late, margin = join.add_labels([("2", 1)])
    assert late.ids == ["2"] and list(late.y) == [1] and list(margin) == [-3.0]
    np.testing.assert_array_equal(late.indices[:, 0], [2])
    assert join.late_clicks == 1 and join.late_share() == 0.5
    assert [list(b.y) for b in [join.due()[0]]] == [[0]]  # event 9: no click came
    clock.t = 200  # past the ttl, no late click can be matched any more: it waits unmatched
    assert join.add_labels([("3", 1)])[0] is None and join.late_clicks == 1


def test_clicks_only_early_clicks_wait_for_the_window() -> None:
    clock = Clock()
    join = LabelJoin(ttl=100, capacity=100, clock=clock, window=5)
    assert join.add_labels([("1", 1)])[0] is None and join.pending_labels == 1
    b = _batch(2)
    ready, _ = join.add_events(b, b.ids, np.zeros(2))
    assert len(ready) == 0 and join.joined == 1
    clock.t = 5
    due, _ = join.due()
    assert due.ids == ["0", "1"] and list(due.y) == [0, 1]


def test_late_clicks_are_only_counted_without_correction() -> None:
    clock = Clock()
    join = LabelJoin(ttl=100, capacity=100, clock=clock, window=1, correct_late=False)
    b = _batch(2)
    join.add_events(b, b.ids, np.zeros(2))
    clock.t = 2
    assert len(join.due()[0]) == 2
    assert join.add_labels([("0", 1)])[0] is None and join.late_clicks == 1
    assert join.weights(np.array([1.0]), np.array([0.0])) is None


def test_clicks_only_state_round_trip() -> None:
    clock = Clock()
    join = LabelJoin(ttl=100, capacity=100, clock=clock, window=5)
    b = _batch(6)
    join.add_events(b, b.ids, np.arange(6, dtype=np.float32))
    join.add_labels([("4", 1), ("99", 1)])
    clock.t = 3
    join.add_events(_batch(1, start=7), ["7"], np.zeros(1))
    join.add_labels([("7", 1)])  # clicked, its window still open
    clock.t = 6
    join.due()  # five negatives and a positive, one event still waiting
    other = LabelJoin(ttl=100, capacity=100, clock=clock, window=5)
    other.load_state_dict(join.state_dict())
    for name in ("expired_events", "expired_labels", "joined", "window_negatives",
                 "late_clicks"):
        assert getattr(other, name) == getattr(join, name)
    assert len(other) == len(join) == 1 and other.pending_labels == 1
    late, margin = other.add_labels([("3", 1)])
    assert late.ids == ["3"] and list(margin) == [3.0]
    clock.t = 20
    assert list(other.due()[0].y) == [1]  # the click within its window survived the restore


@pytest.mark.parametrize("q", [0.0, 0.3, 1.0])
def test_delayed_feedback_weights_make_the_true_rate_the_optimum(q) -> None:
    """On the stream a label window gives (late clicks twice), the weighted logloss gradient
    vanishes at the true click probability: the correction removes the bias."""
    p = np.linspace(0.01, 0.9, 50)
    margin = np.log(p / (1 - p))
    b = p / (1 + p * q)  # the learned stream's click rate
    w_pos = delayed_feedback_weights(np.ones_like(p), margin, q)
    w_neg = delayed_feedback_weights(np.zeros_like(p), margin, q)
    gradient = b * w_pos * (p - 1) + (1 - b) * w_neg * p
    np.testing.assert_allclose(gradient, 0, atol=1e-6)
    if q == 1.0:  # Ktena et al.'s weights
        np.testing.assert_allclose(w_pos, 1 + p, rtol=1e-6)
        np.testing.assert_allclose(w_neg, (1 - p) * (1 + p), rtol=1e-6)
    if q == 0.0:
        assert (w_pos == 1).all() and (w_neg == 1).all()
