"""The compiled tree evaluator against its oracle, LightGBM's raw score."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamfusion._trees import (
    HAVE_AVX2,
    HAVE_AVX512,
    TreeEnsemble,
    decision,
    float_threshold,
    kernel_threshold,
)

from streamfusion import _trees

# Every test runs the scalar kernel and each vector kernel the CPU has (an AVX-512 CPU runs
# the AVX2 kernel too).
KERNELS = ["scalar"] + (["avx512"] if HAVE_AVX512 else []) + (["avx2"] if HAVE_AVX2 else [])
THREADS = (1, 2, 3)
KZ = float(np.float32(1e-35))  # LightGBM's kZeroThreshold (the float 1e-35f)
needs_avx2 = pytest.mark.skipif(not HAVE_AVX2, reason="this CPU has no AVX2")


def _assert_same(got: np.ndarray, ref: np.ndarray, msg: str) -> None:
    """Equal values, and the same bytes (the sign of zero too)."""
    np.testing.assert_array_equal(got, ref, err_msg=msg)
    assert got.tobytes() == ref.tobytes(), msg


def _data(rng: np.random.Generator, n: int, t: int, nan_rate: float, zero_rate: float):
    X = rng.standard_normal((n, t)).astype(np.float32)
    X[rng.random((n, t)) < zero_rate] = 0.0
    X[rng.random((n, t)) < nan_rate] = np.nan
    Z = np.nan_to_num(X)
    y = (Z[:, 0] + Z[:, -1] * Z[:, t // 2] + 0.5 * rng.standard_normal(n) > 0).astype(float)
    return X, y


def _check(booster: lgb.Booster, X: np.ndarray) -> None:
    """Every kernel, 1 to 3 threads, equals LightGBM's raw score bit for bit."""
    ens = TreeEnsemble.from_booster(booster)
    ref = booster.predict(X, raw_score=True)
    for kernel in KERNELS:
        ens.kernel = kernel
        for threads in THREADS:
            got = ens.predict_margin(X, threads=threads)
            assert got.dtype == np.float64
            _assert_same(got, ref, f"{kernel}, {threads} threads")


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


# ---- hand-built ensembles against a plain-Python LightGBM reference -------------------------

def _reference(model: dict, X: np.ndarray) -> np.ndarray:
    """LightGBM's Tree::Decision and predict, one row and one node at a time.

    Its predict first turns inputs with |x| <= kZeroThreshold into 0.0; trees are summed in
    double in tree order.
    """
    out = np.zeros(len(X))
    for r, row in enumerate(X.astype(np.float64)):
        vals = np.where(np.abs(row) <= KZ, 0.0, row)  # NaN stays NaN
        total = 0.0
        for info in model["tree_info"]:
            nd = info["tree_structure"]
            while "leaf_value" not in nd:
                fval = float(vals[nd["split_feature"]])
                if nd["decision_type"] == "==":
                    cats = {int(c) for c in str(nd["threshold"]).split("||") if c != ""}
                    # static_cast<int>: truncation; out of range gives INT_MIN (right)
                    iv = int(fval) if not np.isnan(fval) and abs(fval) < 2**31 else -1
                    left = iv >= 0 and iv in cats
                else:
                    miss = nd["missing_type"]
                    if np.isnan(fval) and miss != "NaN":
                        fval = 0.0
                    if (miss == "Zero" and -KZ <= fval <= KZ) or (
                            miss == "NaN" and np.isnan(fval)):
                        left = nd["default_left"]
                    else:
                        left = fval <= nd["threshold"]
                nd = nd["left_child"] if left else nd["right_child"]
            total += nd["leaf_value"]
        out[r] = total
    return out


# Values that sit on LightGBM's edge cases: NaN, signed zeros, +-kZeroThreshold and values
# just inside / outside it, thresholds themselves, categories (negative, huge, fractional).
EDGE_VALUES = [np.nan, 0.0, -0.0, KZ, -KZ, 1e-36, -1e-36, 2e-35, -2e-35, 0.5, -0.5, 1.0, 3.0,
               7.0, 3.7, -3.0, 40.0, 65.0, 1e10, -1e10, 3e9, np.inf, -np.inf]
THRESHOLDS = [0.0, KZ, -KZ, 5e-36, -5e-36, 0.5, -0.5, 1.0, 3.0, 1.5, -2.0, 1e300, 0.1]


@st.composite
def _tree(draw, n_features: int, shape: str, max_leaves: int):
    """A random tree in dump_model() form; shape 'chain' makes it as deep as it is wide."""
    leaves = draw(st.integers(1, max_leaves))
    value = st.floats(-2.0, 2.0, allow_nan=False, width=64)

    def split():
        if draw(st.integers(0, 5)) == 0:
            cats = draw(st.lists(st.integers(0, 70), min_size=0, max_size=6))
            return dict(decision_type="==", split_feature=draw(st.integers(0, n_features - 1)),
                        threshold="||".join(map(str, sorted(set(cats)))), default_left=False,
                        missing_type="None")
        return dict(decision_type="<=", split_feature=draw(st.integers(0, n_features - 1)),
                    threshold=draw(st.sampled_from(THRESHOLDS + [draw(value)])),
                    default_left=draw(st.booleans()),
                    missing_type=draw(st.sampled_from(["None", "Zero", "NaN"])))

    root = {"leaf_value": draw(value)}
    frontier = [root]
    for _ in range(leaves - 1):  # split a leaf: the last one for a chain, any one otherwise
        i = len(frontier) - 1 if shape == "chain" else draw(st.integers(0, len(frontier) - 1))
        nd = frontier.pop(i)
        del nd["leaf_value"]
        nd.update(split())
        nd["left_child"], nd["right_child"] = {"leaf_value": draw(value)}, {
            "leaf_value": draw(value)}
        frontier += [nd["right_child"], nd["left_child"]] if draw(st.booleans()) else [
            nd["left_child"], nd["right_child"]]
    return {"tree_structure": root}


@st.composite
def _ensemble(draw):
    # a few wide inputs: feature offsets far into the block copy
    n_features = draw(st.one_of(st.integers(1, 6), st.sampled_from([40, 300])))
    trees = []
    for _ in range(draw(st.integers(1, 8))):
        shape = draw(st.sampled_from(["random", "chain"]))
        max_leaves = draw(st.sampled_from([1, 2, 33, 64, 65, 150]))
        trees.append(draw(_tree(n_features, shape, max_leaves)))
    return {"max_feature_idx": n_features - 1, "tree_info": trees}


@settings(max_examples=60)
@given(model=_ensemble(),
       n=st.sampled_from([0, 1, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 530]),
       extra_cols=st.integers(0, 2), seed=st.integers(0, 2**31 - 1))
def test_kernels_match_reference_on_hand_built_trees(model, n, extra_cols, seed):
    """Categorical, NaN / Zero / None missing types, single-leaf trees, chains 149 deep, tables
    of every size (permutes and gathers), row counts around the 8- and 16-lane groups and the
    blocks (the vector kernels run from 1 row on here), 0 rows."""
    rng = np.random.default_rng(seed)
    cols = model["max_feature_idx"] + 1 + extra_cols
    X = np.where(rng.random((n, cols)) < 0.6,
                 rng.choice(np.array(EDGE_VALUES, np.float32), (n, cols)),
                 rng.standard_normal((n, cols)) * 2).astype(np.float32)
    ref = _reference(model, X)
    ens = TreeEnsemble(model)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_trees, "SIMD_MIN_ROWS", 1)
        for kernel in KERNELS:
            ens.kernel = kernel
            for threads in THREADS:
                got = ens.predict_margin(X, threads=threads)
                _assert_same(got, ref, f"{kernel}, {threads} threads")


def test_tiny_inputs_count_as_zero_like_lightgbm(rng):
    """|x| <= kZeroThreshold is 0.0 for LightGBM's predict, with or without zero_as_missing."""
    X = rng.standard_normal((3000, 2)).astype(np.float32)
    X[rng.random(3000) < 0.3, 0] = 0.0
    y = (np.where(X[:, 0] == 0, 1, X[:, 0] > 0.3) ^ (rng.random(3000) < 0.1)).astype(float)
    tiny = np.float32(KZ)
    probe = np.array([0.0, -0.0, tiny, -tiny, 1e-36, -1e-36, np.nextafter(tiny, np.inf),
                      -np.nextafter(tiny, np.inf), np.nan, 2e-35], np.float32)
    X_test = np.stack([np.resize(probe, 200), rng.standard_normal(200)], 1).astype(np.float32)
    for zero_as_missing in (False, True):
        params = dict(objective="binary", verbose=-1, num_leaves=4, num_threads=1,
                      zero_as_missing=zero_as_missing)
        booster = lgb.train(params, lgb.Dataset(X, y), 5)
        thresholds = str(booster.dump_model())
        assert ("Zero" in thresholds) == zero_as_missing
        # the reference is LightGBM's rules: check it against LightGBM itself
        np.testing.assert_array_equal(_reference(booster.dump_model(), X_test),
                                      booster.predict(X_test, raw_score=True))
        _check(booster, X_test)


def test_kernel_threshold_moves_only_near_zero_thresholds():
    kz = np.float32(KZ)
    thr = np.array([-1.0, -KZ, -5e-36, 0.0, 5e-36, KZ, 1.0])
    f = kernel_threshold(thr)
    below = np.nextafter(-kz, np.float32(-np.inf))
    assert f.tolist() == [-1.0, below, below, kz, kz, kz, 1.0]


@pytest.mark.parametrize("kernel", KERNELS)
def test_categorical_zero_and_nan_missing_boosters(rng, kernel):
    """A LightGBM booster mixing categorical, zero_as_missing and NaN inputs."""
    n = 4000
    X = rng.standard_normal((n, 4)).astype(np.float32)
    X[:, 2] = rng.integers(0, 40, n)
    X[rng.random((n, 4)) < 0.1] = np.nan
    X[rng.random((n, 4)) < 0.2] = 0.0
    y = ((np.nan_to_num(X[:, 2]) % 5 < 2) ^ (np.nan_to_num(X[:, 0]) > 0.3)).astype(float)
    params = dict(objective="binary", num_leaves=40, min_data_in_leaf=5, verbose=-1,
                  num_threads=1, zero_as_missing=True, min_data_per_group=5, cat_smooth=1)
    booster = lgb.train(params, lgb.Dataset(X, y, categorical_feature=[2]), 25)
    ens = TreeEnsemble.from_booster(booster)
    ens.kernel = kernel
    X_test = X[:1001].copy()
    X_test[:30, 2] = -1.0
    X_test[30:60, 2] = 3e9  # beyond int range: goes right
    ref = booster.predict(X_test, raw_score=True)
    np.testing.assert_array_equal(_reference(booster.dump_model(), X_test), ref)
    np.testing.assert_array_equal(ens.predict_margin(X_test), ref)


def test_default_kernel_and_forced_scalar(monkeypatch):
    X = np.random.default_rng(0).random((300, 3), dtype=np.float32)
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(X, X[:, 0] > .5), 5)
    best = "avx512" if HAVE_AVX512 else "avx2" if HAVE_AVX2 else "scalar"
    assert TreeEnsemble.from_booster(booster).kernel == best
    ens = TreeEnsemble.from_booster(booster)
    for kernel, have in (("avx512", HAVE_AVX512), ("avx2", HAVE_AVX2)):
        if not have:  # forcing a kernel the CPU lacks is an error, not a crash
            ens.kernel = kernel
            with pytest.raises(RuntimeError, match=kernel):
                ens.predict_margin(X)
    monkeypatch.setenv("STREAMFUSION_TREES_KERNEL", "scalar")
    assert TreeEnsemble.from_booster(booster).kernel == "scalar"
    monkeypatch.setenv("STREAMFUSION_TREES_KERNEL", "fast")
    with pytest.raises(ValueError, match="STREAMFUSION_TREES_KERNEL"):
        TreeEnsemble.from_booster(booster)


@needs_avx2
@pytest.mark.parametrize("leaves", [20, 63, 255])
def test_avx2_kernel_gives_the_scalar_bytes(rng, leaves):
    """The AVX2 kernel against the scalar one and LightGBM on a booster with categorical,
    missing_type Zero and NaN inputs: small (permutes) and big (gathers) trees, deeper than the
    top levels, row counts off the 32-row blocks, 1 to 3 threads."""
    n = 3000
    X = rng.standard_normal((n, 6)).astype(np.float32)
    X[:, 2] = rng.integers(0, 40, n)
    X[rng.random((n, 6)) < 0.1] = np.nan
    X[rng.random((n, 6)) < 0.2] = 0.0
    y = ((np.nan_to_num(X[:, 2]) % 5 < 2) ^ (np.nan_to_num(X[:, 0]) > 0.3)
         ^ (rng.random(n) < 0.2)).astype(float)
    params = dict(objective="binary", num_leaves=leaves, min_data_in_leaf=3, verbose=-1,
                  num_threads=1, zero_as_missing=True, min_data_per_group=5, cat_smooth=1)
    booster = lgb.train(params, lgb.Dataset(X, y, categorical_feature=[2]), 20)
    ens = TreeEnsemble.from_booster(booster)
    assert ens.depth.max() > 6  # the AVX2 kernel's deep levels run
    for rows in (1, 5, 33, 1001):
        Xt = X[:rows]
        ens.kernel = "scalar"
        scalar = ens.predict_margin(Xt)
        _assert_same(scalar, booster.predict(Xt, raw_score=True), "scalar")
        ens.kernel = "avx2"
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_trees, "SIMD_MIN_ROWS", 1)
            for threads in THREADS:
                _assert_same(ens.predict_margin(Xt, threads=threads), scalar,
                             f"{rows} rows, {threads} threads")
