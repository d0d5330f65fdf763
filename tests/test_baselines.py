"""The paper's baselines really are what they claim: GBDT+LR reads leaf indices, NNres+GBDT
passes the DeepFM margin as ``init_score``, the blend is a fitted logistic regression, and
out-of-fold margins replace the training rows' margins only."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from streamfusion import offline
from streamfusion.baselines import Experiment, booster_of, default_config
from streamfusion.data.generate import generate
from streamfusion.offline import (
    FitOptions,
    apply_blend,
    blend_weights,
    fit_trees,
    fold_stage_factory,
    leaf_rows,
    load_encoded,
    stage_margin,
)
from streamfusion.stages.trees import TreeStage

BITS = 15


def config(seed: int = 0):
    cfg, _ = default_config(True, seed)
    cfg = replace(cfg, n_trees=12, num_leaves=7, bits=BITS, k=4, hidden=(8,))
    return cfg, FitOptions(epochs=1, patience=1, batch_size=512, seed=seed)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("baselines") / "criteo.txt"
    generate(path, format="criteo", rows=8_000, seed=11)
    return load_encoded(str(path), bits=BITS, seed=0)


def test_gbdt_lr_features_are_the_hashed_leaf_indices(data):
    cfg, opts = config()
    exp = Experiment(data, cfg, opts)
    exp.row("GBDT+LR")
    view = exp.part("GBDT+LR")["view"]
    booster = booster_of(exp.kchain.stages[0])
    rows = np.arange(0, 300)
    leaves = booster.predict(data.dense[rows], pred_leaf=True)
    assert view.n_fields == leaves.shape[1] == booster.num_trees()
    got = view.take(rows)
    assert np.array_equal(got.indices, leaf_rows(leaves, cfg.num_leaves, BITS))
    assert np.all(got.values == 1.0)
    # events in the same leaves share features; moving one event's tree features moves them
    # (compared in a 2**30 table, where 12 trees x 7 leaves cannot collide)
    moved = data.dense[rows][::-1]
    other = leaf_rows(booster.predict(moved, pred_leaf=True), cfg.num_leaves, 30)
    assert np.array_equal(other == leaf_rows(leaves, cfg.num_leaves, 30), leaves == leaves[::-1])
    exp.close()


def test_leaf_rows_are_distinct_per_tree_and_leaf():
    leaves = np.array([[0, 0, 5], [1, 0, 5]])
    rows = leaf_rows(leaves, num_leaves=7, bits=20)
    assert rows.dtype == np.int32 and rows.min() >= 0 and rows.max() < 2**20
    assert rows[0, 0] != rows[1, 0]  # two leaves of one tree
    assert rows[0, 0] != rows[0, 1]  # leaf 0 of two trees
    assert rows[0, 2] == rows[1, 2]


def test_nnres_gbdt_fits_its_trees_on_the_deepfm_margin(data, monkeypatch):
    calls = []
    real_fit = TreeStage.fit

    def spy(self, dense, y, init_score=None, valid=None, **kw):
        calls.append({"stage": self, "n": len(y), "init": None if init_score is None
                      else np.array(init_score, copy=True), "valid": valid})
        return real_fit(self, dense, y, init_score=init_score, valid=valid, **kw)

    monkeypatch.setattr(TreeStage, "fit", spy)
    cfg, opts = config()
    exp = Experiment(data, cfg, opts)
    row = exp.row("NNres+GBDT")
    deepfm = exp.part("DeepFM")["z"]
    (call,) = [c for c in calls if c["stage"] is exp.nnchain.stages[1]]
    assert call["init"] is not None and call["n"] == data.n_train
    assert np.array_equal(call["init"], deepfm[data.train])
    assert np.array_equal(call["valid"][2], deepfm[data.valid])
    # and the fused margin is DeepFM + the trees' own raw score
    trees = stage_margin(exp.nnchain.stages[1], None, data, data.test, "trees")
    assert np.allclose(exp.part("NNres+GBDT")["z_test"], deepfm[data.test] + trees)
    assert 0.5 < row["auc"] <= 1
    # GBDT alone is fitted without init_score: the residual trees are different trees
    exp.row("GBDT")
    (first,) = [c for c in calls if c["stage"] is exp.kchain.stages[0]]
    assert first["init"] is None
    assert not np.allclose(exp.part("K0")["z_test"], trees)
    exp.close()


def test_gbdt_res_nn_learns_on_the_tree_margin(data):
    cfg, opts = config()
    exp = Experiment(data, cfg, opts)
    exp.row("GBDTRes+NN")
    k0, k1 = exp.part("K0"), exp.part("K1")
    everything = slice(0, len(data))
    trees = stage_margin(exp.kchain.stages[0], None, data, everything, "trees")
    deepfm = stage_margin(exp.kchain.stages[1], exp.view, data, everything, "residual")
    assert np.array_equal(k0["z"], trees)
    assert np.allclose(k1["z"], trees + deepfm)
    assert np.array_equal(k1["z_test"], k1["z"][data.test])
    exp.close()


def test_blend_recovers_known_weights():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=200_000), rng.normal(size=200_000)
    z = 0.7 * a + 1.3 * b - 0.5
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(np.float32)
    w = blend_weights([a, b], y)
    assert np.allclose(w, [0.7, 1.3, -0.5], atol=0.03)
    assert np.allclose(apply_blend(w, [a, b]), w[0] * a + w[1] * b + w[2], atol=1e-5)


def test_out_of_fold_margins_replace_only_the_training_rows(data):
    cfg, _ = config()
    cfg = offline.offline_config(cfg)
    from streamfusion.fusion import build_stage

    insample = fit_trees(build_stage("trees", 0, cfg, 0), data, None)["margin"]
    oof = fit_trees(build_stage("trees", 0, cfg, 0), data, None, oof=3,
                    make_fold_stage=fold_stage_factory(cfg, 0))["margin"]
    rest = slice(data.n_train, len(data))
    assert np.array_equal(oof[rest], insample[rest])
    assert not np.allclose(oof[data.train], insample[data.train])
    # in-sample margins fit their own labels better than out-of-fold ones do
    y = data.y[data.train]
    ll = offline.logloss_from_margin
    assert ll(insample[data.train], y) < ll(oof[data.train], y)


def test_pieces_follow_the_dependencies():
    assert Experiment.pieces(("GBDTRes+NN",), ()) == ["K0", "K1"]
    assert Experiment.pieces(("NNres+GBDT", "GBDT+DeepFM"), (2,)) == [
        "DeepFM", "NNres+GBDT", "K0", "K1", "K2"]


def test_blend_curve_is_traced_whatever_the_model_order(data):
    cfg, opts = config()
    exp = Experiment(data, cfg, opts)
    rows = exp.table2(("DeepFM", "GBDT+DeepFM"))
    conv = exp.convergence()
    assert [r["model"] for r in rows] == ["DeepFM", "GBDT+DeepFM"]
    assert len(conv["GBDT+DeepFM"]) == len(conv["DeepFM"]) >= 1
    w = rows[1]["blend_weights"]
    assert len(w) == 3 and all(np.isfinite(w))
    exp.close()
