"""The end-of-stream blend: scales recovered from the data, pulled towards the plain sum."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamfusion.evaluate import logloss_from_margin
from streamfusion.stages.blend import fit_blend


def _clicks(rng: np.random.Generator, z: np.ndarray) -> np.ndarray:
    return (rng.random(len(z)) < 1 / (1 + np.exp(-z))).astype(np.float64)


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
