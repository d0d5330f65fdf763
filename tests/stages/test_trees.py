"""The compiled tree evaluator against its oracle, LightGBM's raw score."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamfusion._trees import TreeEnsemble, decision, float_threshold


def _data(rng: np.random.Generator, n: int, t: int, nan_rate: float, zero_rate: float):
    X = rng.standard_normal((n, t)).astype(np.float32)
    X[rng.random((n, t)) < zero_rate] = 0.0
    X[rng.random((n, t)) < nan_rate] = np.nan
    Z = np.nan_to_num(X)
    y = (Z[:, 0] + Z[:, -1] * Z[:, t // 2] + 0.5 * rng.standard_normal(n) > 0).astype(float)
    return X, y


def _check(booster: lgb.Booster, X: np.ndarray) -> None:
    ens = TreeEnsemble.from_booster(booster)
    ref = booster.predict(X, raw_score=True)
    for threads in (1, 2):
        got = ens.predict_margin(X, threads=threads)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)


@settings(max_examples=15)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 400),
    t=st.integers(1, 8),
    trees=st.integers(1, 40),
    leaves=st.sampled_from([2, 3, 7, 31, 63]),
    nan_rate=st.sampled_from([0.0, 0.1, 0.5]),
    zero_rate=st.sampled_from([0.0, 0.3]),
    missing=st.sampled_from(["nan", "zero", "none"]),
    objective=st.sampled_from(["binary", "regression"]),
)
def test_matches_lightgbm_raw_score(seed, n, t, trees, leaves, nan_rate, zero_rate, missing,
                                    objective):
    rng = np.random.default_rng(seed)
    X, y = _data(rng, 600, t, nan_rate, zero_rate)
    params = dict(objective=objective, num_leaves=leaves, min_data_in_leaf=5, verbose=-1,
                  num_threads=1, seed=seed, zero_as_missing=missing == "zero",
                  use_missing=missing != "none")
    booster = lgb.train(params, lgb.Dataset(X, y), trees)
    X_test, _ = _data(np.random.default_rng(seed + 1), n, t, nan_rate, zero_rate)
    _check(booster, X_test)
    _check(booster, X)


def test_categorical_splits_match(rng):
    n = 3000
    X = rng.standard_normal((n, 3)).astype(np.float32)
    X[:, 1] = rng.integers(0, 70, n)
    X[rng.random(n) < 0.05, 1] = np.nan
    y = ((X[:, 1] % 7 < 3) ^ (X[:, 0] > 0.5)).astype(float)
    params = dict(objective="binary", num_leaves=15, min_data_in_leaf=5, verbose=-1,
                  num_threads=1, min_data_per_group=5, cat_smooth=1)
    booster = lgb.train(params, lgb.Dataset(X, y, categorical_feature=[1]), 30)
    assert "==" in str(booster.dump_model())
    X_test = X.copy()
    X_test[:50, 1] = -3.0  # negative categories go right, like LightGBM
    X_test[50:100, 1] = 200.0  # unseen category
    _check(booster, X_test)


def test_many_deep_trees(rng):
    X, y = _data(rng, 5000, 10, 0.05, 0.1)
    params = dict(objective="binary", num_leaves=127, min_data_in_leaf=2, verbose=-1,
                  num_threads=1, learning_rate=0.3)
    _check(lgb.train(params, lgb.Dataset(X, y), 150), X)


def test_init_is_added_and_threads_do_not_change_results(rng):
    X, y = _data(rng, 2000, 4, 0.1, 0.0)
    booster = lgb.train(dict(objective="binary", verbose=-1, num_threads=1),
                        lgb.Dataset(X, y), 20)
    ens = TreeEnsemble.from_booster(booster)
    init = rng.standard_normal(len(X))
    base = ens.predict_margin(X)
    np.testing.assert_allclose(ens.predict_margin(X, init=init), base + init, atol=1e-12)
    assert np.array_equal(ens.predict_margin(X, threads=1), ens.predict_margin(X, threads=2))
    assert ens.predict_margin(X[:0]).shape == (0,)


def test_shape_errors(rng):
    X, y = _data(rng, 500, 4, 0.0, 0.0)
    ens = TreeEnsemble.from_booster(
        lgb.train(dict(objective="binary", verbose=-1), lgb.Dataset(X, y), 3))
    with pytest.raises(ValueError, match="columns"):
        ens.predict_margin(X[:, :2])
    with pytest.raises(ValueError, match="2-D"):
        ens.predict_margin(X[0])


def test_float_threshold_is_exact_for_float_inputs(rng):
    thr = rng.standard_normal(1000) * 10.0 ** rng.integers(-5, 5, 1000)
    f = float_threshold(thr)
    assert np.all(f.astype(np.float64) <= thr)
    # float inputs at and just above each rounded threshold compare the same both ways
    x = np.concatenate([f, np.nextafter(f, np.float32(np.inf))])
    ff = np.concatenate([f, f])
    assert np.array_equal(x.astype(np.float64) <= np.concatenate([thr, thr]), x <= ff)


def test_fast_decision_twin():
    nan = float("nan")
    assert decision(1.0, 0, 0.5) == 1 and decision(0.5, 0, 0.5) == 0
    assert decision(nan, 0, 0.5) == 0 and decision(nan, 2, 0.5) == 1  # 2 = NaN goes right
