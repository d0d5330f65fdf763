"""The paper's models really are what they claim: GBDT+LR reads leaf indices, GBDT2DNN trains
the DNN, NNres+GBDT passes the DeepFM margin as ``init_score``, the blend is a fitted logistic
regression, a residual stage that cannot help adds nothing, and out-of-fold margins replace the
training rows' margins only."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from streamfusion.batch import Experiment, FitOptions, default_config, load_log
from streamfusion.batch.blend import apply_blend, blend_weights
from streamfusion.batch.experiment import table_bits
from streamfusion.batch.fit import (
    NO_SCALES,
    apply_scales,
    check_points,
    fit_residual,
    fit_trees,
    fold_stage_factory,
    offline_config,
    stage_scales,
)
from streamfusion.batch.load import EncodedLog
from streamfusion.batch.views import FeatureView, TreeView, leaf_rows, stage_margin
from streamfusion.data.generate import generate
from streamfusion.evaluate import logloss_from_margin
from streamfusion.fusion import build_stage
from streamfusion.stages.residual import ResidualLearner
from streamfusion.stages.trees import TreeStage

BITS = 15


def config(seed: int = 0, **changes):
    cfg, _ = default_config(True, seed)
    small = {"n_trees": 12, "num_leaves": 7, "bits": BITS, "k": 4, "hidden": (8,)}
    cfg = replace(cfg, **{**small, **changes})
    return cfg, FitOptions(epochs=1, patience=1, batch_size=512, seed=seed)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("experiment") / "criteo.txt"
    generate(path, format="criteo", rows=8_000, seed=11)
    return load_log(str(path), bits=BITS, seed=0)


def test_gbdt_lr_features_are_the_leaf_indices(data):
    cfg, opts = config()
    exp = Experiment(data, cfg, opts)
    exp.row("GBDT+LR")
    view = exp.fitted("GBDT+LR").extra["view"]
    booster = exp.fitted("GBDT").stage.booster
    rows = np.arange(0, 300)
    leaves = booster.predict(data.dense[rows], pred_leaf=True)
    assert view.n_fields == leaves.shape[1] == booster.num_trees()
    got = view.take(rows)
    assert np.array_equal(got.indices, np.arange(leaves.shape[1]) * cfg.num_leaves + leaves)
    assert np.all(got.values == 1.0)
    # one table row per leaf: the learner's table is sized by the trees, not by the log
    learner = exp.fitted("GBDT+LR").stage
    assert learner.table.shape[0] == 2 ** table_bits(booster.num_trees() * cfg.num_leaves)
    exp.close()


def test_leaf_rows_are_distinct_per_tree_and_leaf():
    rows = leaf_rows(np.array([[0, 0, 5], [1, 0, 5]]), num_leaves=7)
    assert rows.dtype == np.int32
    assert rows.tolist() == [[0, 7, 19], [1, 7, 19]]


def test_gbdt2dnn_trains_the_dnn_on_the_tree_score(data, monkeypatch):
    calls = []
    real = ResidualLearner.partial_fit

    def spy(self, batch, base_margin, y, *args, **kw):
        calls.append((self, np.array(batch.indices[:, -1]), np.array(batch.values[:, -1])))
        return real(self, batch, base_margin, y, *args, **kw)

    monkeypatch.setattr(ResidualLearner, "partial_fit", spy)
    cfg, opts = config()
    exp = Experiment(data, cfg, opts)
    dnn_row, deep_row = exp.row("GBDT2DNN"), exp.row("GBDT2DeepFM")
    dnn, deep = exp.fitted("GBDT2DNN").stage, exp.fitted("GBDT2DeepFM").stage
    assert (dnn.model, deep.model) == ("dnn", "deepfm")
    assert dnn.table.shape[1] == cfg.k and deep.table.shape[1] == cfg.k + 1
    assert dnn.n_fields == data.n_fields + 1 and dnn.hidden == cfg.hidden
    mine = [c for c in calls if c[0] is dnn]
    assert mine and len(mine) == len([c for c in calls if c[0] is deep])
    # its last field is the trees' standardised score, one row of its own
    score_row = np.concatenate([c[1] for c in mine])
    assert (score_row == data.table_rows).all()
    gbdt = exp.fitted("GBDT").z
    z = (gbdt - gbdt[data.train].mean()) / gbdt[data.train].std()
    assert np.isin(np.concatenate([c[2] for c in mine]), z[data.train].astype(np.float32)).all()
    assert dnn_row["chain"][-1] == "dnn"
    assert (dnn_row["auc"], dnn_row["logloss"]) != (deep_row["auc"], deep_row["logloss"])
    exp.close()


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
    deepfm = exp.fitted("DeepFM").z
    stage = exp.fitted("NNres+GBDT").stage
    (call,) = [c for c in calls if c["stage"] is stage]
    assert call["init"] is not None and call["n"] == data.n_train
    assert np.array_equal(call["init"], deepfm[data.train])
    assert np.array_equal(call["valid"][2], deepfm[data.valid])
    # the fused margin is DeepFM + the trees' own raw score (when the trees were kept)
    trees = stage_margin(stage, TreeView(data), data.test)
    assert row["kept"][-1]["trees_kept"] > 0
    assert np.allclose(exp.fitted("NNres+GBDT").z_test, deepfm[data.test] + trees)
    assert 0.5 < row["auc"] <= 1
    # GBDT alone is fitted without init_score: the residual trees are different trees
    exp.row("GBDT")
    (first,) = [c for c in calls if c["stage"] is exp.fitted("GBDT").stage]
    assert first["init"] is None
    assert not np.allclose(exp.fitted("GBDT").z_test, trees)
    exp.close()


@pytest.fixture(scope="module")
def avazu(tmp_path_factory):
    path = tmp_path_factory.mktemp("experiment") / "avazu.csv"
    generate(path, format="avazu", rows=16_000, seed=3)
    return load_log(str(path), bits=BITS, seed=0)


@pytest.mark.parametrize("scales", [False, True])
def test_gbdt_res_nn_learns_on_the_tree_margin(avazu, scales):
    data = avazu  # a log where the residual helps: its first epoch lowers validation logloss
    cfg, _ = config(lr=3e-3)
    opts = FitOptions(epochs=2, patience=1, batch_size=256, checks=1, scales=scales)
    exp = Experiment(data, cfg, opts)
    exp.row("GBDTRes+NN")
    k0, k1 = exp.fitted("GBDT"), exp.fitted("GBDTRes+NN")
    everything = slice(0, len(data))
    trees = stage_margin(k0.stage, TreeView(data), everything)
    deepfm = stage_margin(k1.stage, exp.view, everything)
    assert np.array_equal(k0.z, trees)
    kept = k1.kept[-1]
    assert kept["epochs_kept"] > 0 and np.abs(deepfm).max() > 0
    if scales:  # the stage scales fitted on the validation slice weigh the two margins
        a, b, c = kept["scales"]
        assert (a, b, c) != (1, 1, 0)
        assert np.allclose(k1.z, a * trees + b * deepfm + c, atol=1e-3)
        fitted = stage_scales(trees[data.valid], deepfm[data.valid], data.y[data.valid])
        assert np.allclose(kept["scales"], fitted, atol=1e-4)
    else:  # the paper's sum
        assert "scales" not in kept
        assert np.allclose(k1.z, trees + deepfm)
    assert np.array_equal(k1.z_test, k1.z[data.test])
    exp.close()


def test_scales_weigh_a_residual_by_what_it_adds_on_validation(avazu):
    cfg, _ = config(lr=3e-3)
    exp = Experiment(avazu, cfg, FitOptions(epochs=2, patience=1, batch_size=256, checks=2))
    exp.row("GBDTRes+NN")
    hist = exp.fitted("GBDTRes+NN").history
    # check 0 is judged recalibrated (a * trees + c) but, if kept, is the trees themselves
    first = hist[0]
    assert first["epoch"] == 0 and "scales" not in first
    assert first["valid_logloss_scaled"] <= first["valid_logloss"]
    # every later check is judged with its own scales, the kept one the best of all
    scored = [h["valid_logloss_scaled"] for h in hist]
    kept = exp.fitted("GBDTRes+NN").kept[-1]
    assert scored[[h["epoch"] for h in hist].index(kept["epochs_kept"])] == min(scored)
    assert all(h["valid_logloss_scaled"] <= h["valid_logloss"] + 1e-9 for h in hist[1:])
    exp.close()


def test_stage_scales_never_weigh_a_stage_negatively():
    rng = np.random.default_rng(0)
    base, own = rng.normal(size=(2, 50_000))
    y = rng.random(base.size) < 1 / (1 + np.exp(-(0.8 * base - 0.3 * own + 0.2)))
    a, b, c = stage_scales(base, own, y)  # the margin's direction does not carry over
    assert b == 0.0
    assert (a, c) == tuple(stage_scales(base, None, y)[::2])
    assert abs(a - 0.8) < 0.05 and abs(c - 0.2) < 0.05
    a, b, c = stage_scales(base, -own, y)  # the same margin the right way round
    assert abs(b - 0.3) < 0.05
    assert np.allclose(apply_scales((a, b, c), base, -own), a * base - b * own + c, atol=1e-5)
    assert np.array_equal(apply_scales(NO_SCALES, base, own), base + own)


def test_checks_score_validation_within_each_epoch(avazu):
    cfg, _ = config(lr=3e-3)
    calls = []
    real = ResidualLearner.partial_fit

    def count(self, *args, **kw):
        calls.append(self)
        return real(self, *args, **kw)

    opts = FitOptions(epochs=2, patience=2, batch_size=256, checks=4, scales=False)
    exp = Experiment(avazu, cfg, opts)
    learner = exp.stage("deepfm", 1, exp.view.table_rows, exp.view.n_fields)
    base = np.zeros(len(avazu), np.float32)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ResidualLearner, "partial_fit", count)
        res = fit_residual(learner, exp.view, avazu, base, opts)
    epochs = [h["epoch"] for h in res["history"]]
    assert epochs == [0, 0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2]
    assert len(calls) == 2 * -(-avazu.n_train // 256)  # two whole epochs of mini-batches
    # the learner is left in the state of the best check, wherever it fell
    best = min(res["history"], key=lambda h: h["valid_logloss"])
    assert res["epochs_kept"] == best["epoch"] and res["epochs_run"] == 2
    zv = stage_margin(learner, exp.view, avazu.valid)
    assert logloss_from_margin(zv, avazu.y[avazu.valid]) == pytest.approx(
        best["valid_logloss"], abs=1e-6)
    exp.close()


def test_check_points_end_each_epoch_whatever_the_batch_size():
    for n, bs, checks in [(10_000, 1024, 4), (70_000, 1000, 3), (100, 1024, 4), (5, 1, 8)]:
        at = check_points(n, bs, checks)
        full, rest = divmod(n, 65_536)
        batches = full * -(-65_536 // bs) + -(-rest // bs)
        assert max(at) == batches and sorted(at.values()) == list(range(1, len(at) + 1))
        assert len(at) == min(checks, batches)


def test_a_residual_that_cannot_help_leaves_the_base_unchanged(data):
    # an absurd Adam step: every epoch of the residual DeepFM makes validation worse
    cfg, _ = config(lr=3.0)
    opts = FitOptions(epochs=2, patience=2, batch_size=64, seed=0, checks=2)
    exp = Experiment(data, cfg, opts)
    gbdt, res = exp.row("GBDT"), exp.row("GBDTRes+NN")
    hist = exp.fitted("GBDTRes+NN").history
    assert [h["epoch"] for h in hist] == [0, 0.5, 1, 1.5, 2]
    assert all(h["valid_logloss_scaled"] >= hist[0]["valid_logloss_scaled"] for h in hist[1:])
    # nothing kept, no scales: the trees exactly, not a recalibration of them
    assert res["epochs_kept"] == 0 and res["kept"][-1] == {
        "stage": "deepfm", "epochs_kept": 0, "epochs_run": 2}
    assert (res["auc"], res["logloss"]) == (gbdt["auc"], gbdt["logloss"])
    # the learner itself is left adding exactly nothing
    assert not stage_margin(exp.fitted("GBDTRes+NN").stage, exp.view, data.test).any()
    k3 = exp.table3((3,))[0]
    assert k3["kept"][-1]["epochs_kept"] == 0
    assert k3["logloss"] == exp.table3((2,))[0]["logloss"]
    exp.close()


def test_trees_that_cannot_help_a_residual_are_left_out():
    rng = np.random.default_rng(0)
    n = 6_000
    y = (rng.random(n) < 0.3).astype(np.float32)  # labels independent of the features
    data = EncodedLog(np.zeros((n, 1), np.int32), np.ones((n, 0), np.float32),
                      np.zeros(0, np.int64), rng.normal(size=(n, 5)).astype(np.float32), y,
                      4_800, 600, ["f"], [f"d{i}" for i in range(5)], 1, 1)
    init = np.full(n, np.log(0.3 / 0.7), np.float32)  # the base already knows all there is
    cfg = offline_config(config(num_leaves=31, tree_learning_rate=0.5)[0])
    stage = build_stage("trees", 1, cfg, 0)
    res = fit_trees(stage, data, init)
    va = data.valid
    own = stage_margin(stage, TreeView(data), va)
    assert logloss_from_margin(init[va] + own, y[va]) >= logloss_from_margin(init[va], y[va])
    assert res["trees_kept"] == 0 and not res["margin"].any()


def test_learner_tables_follow_the_log_not_the_hash_width(data):
    cfg, opts = config()
    cfg = replace(cfg, bits=22)  # a wide hash: the tables still follow the log
    exp = Experiment(data, cfg, opts)
    exp.row("DeepFM")
    learner = exp.fitted("DeepFM").stage
    assert data.table_rows <= learner.table.shape[0] < 2 * data.table_rows
    assert data.indices.min() == 0 and data.indices.max() == data.table_rows - 1
    view = FeatureView(data, [np.zeros(len(data), np.float32)])
    assert view.table_rows == data.table_rows + 1
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
    cfg = offline_config(cfg)
    insample = fit_trees(build_stage("trees", 0, cfg, 0), data, None)["margin"]
    oof = fit_trees(build_stage("trees", 0, cfg, 0), data, None, oof=3,
                    make_fold_stage=fold_stage_factory(cfg, 0))["margin"]
    rest = slice(data.n_train, len(data))
    assert np.array_equal(oof[rest], insample[rest])
    assert not np.allclose(oof[data.train], insample[data.train])
    # in-sample margins fit their own labels better than out-of-fold ones do
    y = data.y[data.train]
    assert logloss_from_margin(insample[data.train], y) < logloss_from_margin(oof[data.train], y)


def test_pieces_follow_the_dependencies():
    assert Experiment.pieces(("GBDTRes+NN",), ()) == ["GBDT", "GBDTRes+NN"]
    assert Experiment.pieces(("NNres+GBDT", "GBDT+DeepFM"), (2,)) == [
        "DeepFM", "NNres+GBDT", "GBDT", "GBDTRes+NN", "K=2"]


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


def test_the_paper_protocol_takes_one_unscaled_adam_step_per_mini_batch():
    for quick in (True, False):
        cfg, _ = default_config(quick, 0)
        assert cfg.row_optimizer == "adam" and cfg.step_rows == 0 and cfg.adam_batch == 0
