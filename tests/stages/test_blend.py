"""The blends: scales recovered from the data, pulled towards the plain sum; the live blend
learned batch by batch, bit for bit after a resume."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfusion.evaluate import logloss_from_margin
from streamfusion.stages.blend import LiveBlend, _newton, fit_blend


def _clicks(rng: np.random.Generator, z: np.ndarray) -> np.ndarray:
    return (rng.random(len(z)) < 1 / (1 + np.exp(-z))).astype(np.float64)


def _newton_reference(own, rest, y, sw, center, pull, steps, tol):
    """The blends' Newton fit in NumPy, as the compiled one must do it."""
    X = np.column_stack([own, rest, np.ones(len(own))])

    def objective(w):
        z, d = X @ w, w - center
        return sw @ (np.logaddexp(0.0, z) - y * z) + 0.5 * d @ pull @ d

    w, h, f = center, pull, objective(center)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(X @ w, -30, 30)))
        h = pull + (X * (sw * p * (1 - p))[:, None]).T @ X
        step = np.linalg.solve(h, X.T @ (sw * (p - y)) + pull @ (w - center))
        if np.abs(step).max() < tol:
            break
        t = 1.0
        while t > 1e-4 and not (f_new := objective(w - t * step)) < f:
            t /= 2
        if t <= 1e-4:
            break
        w, f = w - t * step, f_new
    return w, h


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 400), steps=st.integers(0, 30),
       scale=st.sampled_from([0.1, 1.0, 5.0, 40.0]), weighted=st.booleans())
def test_the_compiled_newton_fit_is_the_numpy_one(seed, n, steps, scale, weighted):
    rng = np.random.default_rng(seed)
    own, rest = rng.normal(0, scale, n), rng.normal(0, scale, n)
    y = _clicks(rng, own)
    sw = rng.uniform(0, 2, n) if weighted else np.ones(n)
    center = rng.normal(0, 1, 3)
    a = rng.normal(0, 1, (3, 3))
    pull = a @ a.T + np.diag(rng.uniform(1e-3, 100, 3))  # symmetric positive definite
    fit = _newton(own, rest, y, sw, center, pull, steps, 1e-9)
    w, h = _newton_reference(own, rest, y, sw, center, pull, steps, 1e-9)
    np.testing.assert_allclose(fit[0], w, rtol=1e-6, atol=1e-8)
    # curvature entries against the matrix's scale: saturated events (scale 40) leave a
    # small off-diagonal entry the sum of large ones, the last bits of each step's order
    np.testing.assert_allclose(fit[1], h, rtol=1e-6, atol=1e-6 * np.abs(h).max())


def test_the_newton_fit_refuses_overflow_and_mismatched_lengths():
    ones, pull = np.ones(4), 1e-300 * np.eye(3)
    assert _newton(np.full(4, 1e300), ones, ones, ones, np.zeros(3), pull, 3, 1e-9) is None
    with pytest.raises(ValueError, match="same length"):
        _newton(ones, ones[:3], ones, ones, np.zeros(3), np.eye(3), 3, 1e-9)


def test_a_rest_that_repeats_the_trees_is_scaled_down():
    rng = np.random.default_rng(1)
    own = rng.normal(size=20_000)
    y = _clicks(rng, own)
    blend = fit_blend(own, own + 0.1 * rng.normal(size=own.size), y)  # counted twice
    assert blend.a + blend.b == pytest.approx(1.0, abs=0.1)
    assert blend.loss < logloss_from_margin(2 * own, y)


def test_scales_and_bias_come_from_the_labels():
    rng = np.random.default_rng(2)
    own, rest = rng.normal(size=(2, 20_000))
    y = _clicks(rng, 0.5 * own + 1.5 * rest - 1.0)
    blend = fit_blend(own, rest, y)
    assert (blend.a, blend.b, blend.c) == pytest.approx((0.5, 1.5, -1.0), abs=0.1)


@pytest.mark.parametrize("scale", [2.0, 4.0])
def test_a_noisy_rest_is_dropped_without_overshooting(scale):
    """From the plain sum, a full Newton step overshoots on a loud noise: b went to -1, back
    to +1, and so on. The fit must end near b = 0 and below the plain sum's loss."""
    rng = np.random.default_rng(0)
    own = rng.normal(size=2000)
    y = _clicks(rng, own)
    rest = scale * rng.normal(size=2000)
    blend = fit_blend(own, rest, y)
    assert abs(blend.b) < 0.1 and blend.a == pytest.approx(1.0, abs=0.15)
    assert blend.loss < logloss_from_margin(own, y) < logloss_from_margin(own + rest, y)


def test_few_rows_stay_near_the_plain_sum():
    rng = np.random.default_rng(3)
    own, rest = rng.normal(size=(2, 20))
    blend = fit_blend(own, rest, _clicks(rng, own + rest))
    assert abs(blend.a - 1) < 0.5 and abs(blend.b - 1) < 0.5


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6), st.booleans()),
                min_size=1, max_size=50))
def test_extreme_margins_and_one_class_give_finite_scales(rows):
    own, rest, y = (np.array(c, np.float64) for c in zip(*rows, strict=True))
    blend = fit_blend(own, rest, y)
    assert np.isfinite([blend.a, blend.b, blend.c, blend.loss]).all()


def _batches(seed: int, n: int, rows: int = 1000, rest_scale: float = 1.0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        own, noise = rng.normal(size=(2, rows))
        yield own, rest_scale * noise, _clicks(rng, own)


def test_the_live_blend_starts_at_the_plain_sum_and_learns_a_noisy_rest_away():
    live = LiveBlend()
    assert live.weights == (1.0, 1.0, 0.0)
    live.update(np.zeros(0), np.zeros(0), np.zeros(0))
    assert live.weights == (1.0, 1.0, 0.0)
    for own, rest, y in _batches(0, 40):
        live.update(own, rest, y)
    a, b, c = live.weights
    assert a == pytest.approx(1.0, abs=0.1) and abs(b) < 0.1 and abs(c) < 0.1


def test_the_live_blend_scales_a_rest_that_repeats_the_trees():
    rng = np.random.default_rng(4)
    live = LiveBlend()
    for _ in range(40):
        own = rng.normal(size=1000)
        live.update(own, own + 0.1 * rng.normal(size=1000), _clicks(rng, own))
    a, b, _ = live.weights
    assert a + b == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("scale", [3.0, 10.0, 30.0])
def test_a_loud_noisy_rest_is_scaled_away_without_swinging(scale):
    """Confident noise: the curvature at the plain sum is small, so one full Newton step would
    swing b far below 0 and back (at 30: to -0.41, then +0.39); the damped steps towards each
    batch's minimum bring it down from above."""
    live = LiveBlend()
    for own, rest, y in _batches(6, 10, rest_scale=scale):
        live.update(own, rest, y)
        assert -0.02 < live.weights[1] < 1.0
    assert abs(live.weights[1]) < 0.05


def test_the_live_blend_learns_the_weighted_loss():
    own, rest, y = next(_batches(7, 1))
    unweighted, weighted, ignored = LiveBlend(), LiveBlend(), LiveBlend()
    unweighted.update(own, rest, y)
    weighted.update(own, rest, y, np.where(y == 1, 3.0, 1.0))  # clicks count three times
    ignored.update(own, rest, y, np.zeros(len(y)))
    assert ignored.weights == (1.0, 1.0, 0.0)
    assert weighted.weights[2] > unweighted.weights[2] + 0.1  # the bias follows the clicks


def test_a_few_events_barely_move_the_live_blend():
    live = LiveBlend()
    own, rest, y = next(_batches(1, 1, rows=20))
    live.update(own, rest, y)
    assert np.allclose(live.weights, (1.0, 1.0, 0.0), atol=0.05)


def test_the_live_blend_follows_a_change():
    """Old evidence fades: after the rest turns from signal to noise, its scale falls."""
    rng = np.random.default_rng(5)
    live = LiveBlend()
    for signal in (True, False):
        for _ in range(300):
            own, rest = rng.normal(size=(2, 1000))
            live.update(own, rest, _clicks(rng, own + rest if signal else own))
        b = live.weights[1]
        assert (b > 0.9) if signal else (b < 0.2)


def test_a_resumed_live_blend_learns_on_bit_for_bit():
    whole, first = LiveBlend(), LiveBlend()
    batches = list(_batches(2, 10))
    for own, rest, y in batches:
        whole.update(own, rest, y)
    for own, rest, y in batches[:4]:
        first.update(own, rest, y)
    resumed = LiveBlend()
    resumed.load_state_dict(first.state_dict())
    for own, rest, y in batches[4:]:
        resumed.update(own, rest, y)
    assert resumed.weights == whole.weights
    assert resumed.state_dict() == whole.state_dict()


@pytest.mark.parametrize("state", [{}, {"w": [1.0, 1.0], "h": np.eye(3).tolist()},
                                   {"w": [1.0, float("nan"), 0.0], "h": np.eye(3).tolist()},
                                   {"w": [1.0, 1.0, 0.0], "h": [[1.0]]},
                                   {"w": "1 1 0", "h": np.eye(3).tolist()}])
def test_a_bad_live_blend_state_is_refused(state):
    live = LiveBlend()
    with pytest.raises(ValueError, match="live blend"):
        live.load_state_dict(state)
    assert live.weights == (1.0, 1.0, 0.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e30, 1e30), st.floats(-1e30, 1e30), st.booleans()),
                min_size=1, max_size=50))
def test_extreme_margins_leave_the_live_blend_finite(rows):
    own, rest, y = (np.array(c, np.float64) for c in zip(*rows, strict=True))
    live = LiveBlend()
    live.update(own, rest, y)
    live.update(own, rest, y)
    assert np.isfinite(live.weights).all() and np.isfinite(live.h).all()
