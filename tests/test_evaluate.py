"""Metrics against brute-force references."""

import json

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from streamfusion.evaluate import (
    GrowingArray,
    Progressive,
    auc,
    holdout_mask,
    logloss_from_margin,
    sigmoid,
)


def brute_auc(s, y):
    pos, neg = s[y == 1], s[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


@given(st.lists(st.tuples(st.integers(-5, 5), st.integers(0, 1)), min_size=2, max_size=200))
def test_auc_matches_pairwise_count_with_ties(pairs):
    s = np.array([p[0] for p in pairs], dtype=np.float64)
    y = np.array([p[1] for p in pairs])
    if y.min() == y.max():
        assert np.isnan(auc(s, y))
    else:
        assert abs(auc(s, y) - brute_auc(s, y)) < 1e-12


def test_logloss_from_margin_matches_probability_form(rng):
    z = rng.normal(0, 3, 1000)
    y = rng.integers(0, 2, 1000)
    p = sigmoid(z)
    ref = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert abs(logloss_from_margin(z, y) - ref) < 1e-9


def test_logloss_is_finite_for_saturated_margins():
    z = np.array([1e6, -1e6, 80.0])
    y = np.array([0, 1, 1])
    assert np.isfinite(logloss_from_margin(z, y))


def test_growing_array_keeps_order():
    g = GrowingArray(np.int64, capacity=2)
    for i in range(10):
        g.extend(np.arange(i * 3, i * 3 + 3))
    assert np.array_equal(g.values, np.arange(30))


def test_windows_cut_on_key_and_state_round_trip(rng):
    p = Progressive(window_rows=10)
    z = rng.normal(size=35).astype(np.float32)
    y = (rng.random(35) < 0.5).astype(np.uint8)
    p.add(z[:20], y[:20])
    p.mark_swap(1)
    p.add(z[20:], y[20:])
    w = p.windows()
    assert [e["end_row"] for e in w] == [10, 20, 30, 35]
    assert p.around_swaps(5)[0]["row"] == 20
    q = Progressive()
    q.load_state_dict(p.state_dict())
    assert json.dumps(q.windows()) == json.dumps(w)  # NaN-safe comparison
    assert json.dumps(q.overall()) == json.dumps(p.overall())


def test_holdout_mask_is_seeded_and_about_ten_percent():
    line = np.arange(200_000)
    m = holdout_mask(line, 0.1, seed=3)
    assert abs(m.mean() - 0.1) < 0.005
    assert np.array_equal(m, holdout_mask(line, 0.1, seed=3))
    assert not np.array_equal(m, holdout_mask(line, 0.1, seed=4))
    # the choice of one event does not depend on which batch it arrives in
    assert np.array_equal(m[1000:2000], holdout_mask(line[1000:2000], 0.1, seed=3))
