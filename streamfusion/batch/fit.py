"""Fitting one stage offline on the residual of the stages before it (the paper's protocol).

- A tree stage: ``TreeStage.fit(dense, y, init_score=z_prev, valid=...)``, LightGBM early
  stopping on the validation slice.
- A learner: mini-batch Adam (``partial_fit`` over seeded shuffled mini-batches,
  ``base_margin = z_prev``), keeping the epoch with the best validation logloss.

A stage after the first never makes the validation logloss worse than the stages before it:
its epoch 0 is "add nothing" (margin 0), a candidate like any other epoch, and a tree stage
whose trees do not help is left out the same way. Each fit says what it kept.

With ``oof=F`` a tree stage's margins on the *training* rows are out-of-fold (F extra fits), so
the next stage does not learn against margins that have seen its own labels; validation and
test rows always get the full model's margins (they are never in a tree's training data).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from streamfusion.batch.load import EncodedLog
from streamfusion.batch.views import CHUNK_ROWS, TreeView, stage_margin
from streamfusion.evaluate import auc, logloss_from_margin
from streamfusion.fusion import ModelConfig, build_stage


@dataclass
class FitOptions:
    """How the neural stages are trained offline."""

    epochs: int = 8
    patience: int = 2
    batch_size: int = 1024
    seed: int = 0


def metrics(z: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Test metrics of a margin: exact tie-aware AUC and logloss."""
    return {"auc": auc(z, y), "logloss": logloss_from_margin(z, y)}


def _copy_state(state: Any) -> Any:
    if isinstance(state, np.ndarray):
        return state.copy()
    if isinstance(state, dict):
        return {k: _copy_state(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_copy_state(v) for v in state]
    return copy.deepcopy(state)


def _silent(state: dict[str, Any]) -> dict[str, Any]:
    """A learner state whose margin is exactly 0 (every parameter and moment zero): the
    learner's epoch 0, when it is to add nothing to the stages before it."""
    out = dict(state)
    for name in ("table", "table_m", "table_v", "dense", "dense_m", "dense_v"):
        out[name] = np.zeros_like(state[name])
    out["step"] = 0
    return out


def fit_residual(learner: Any, view: Any, data: EncodedLog, base: np.ndarray,
                 opts: FitOptions, residual: bool = True,
                 on_epoch: Callable[[int, np.ndarray, np.ndarray | None], dict] | None = None,
                 tick: Callable[[], None] | None = None, track_test: bool = False,
                 margin_rows: slice | None = None) -> dict[str, Any]:
    """Mini-batch Adam on ``logloss(y, sigmoid(base + margin))`` over the training rows.

    Each epoch visits the training rows in a seeded random order (``partial_fit`` per
    mini-batch), then scores the validation slice; the learner ends in the state of the epoch
    with the best validation logloss, stopping after ``patience`` epochs without improvement.
    With ``residual`` (a stage after the first), epoch 0 is ``base`` alone: if no epoch beats
    it the learner is left adding exactly 0. With ``track_test`` the test part is scored after
    every epoch too (the convergence curves). ``on_epoch(epoch, z_valid, z_test)`` may add
    fields to that epoch's history entry.

    Returns ``{"epochs_kept", "epochs_run", "history", "margin"}``, ``margin`` being the
    learner's margin in its kept state on ``margin_rows`` (default: every row), float32.
    """
    rng = np.random.default_rng(opts.seed)
    y = data.y
    history: list[dict[str, Any]] = []

    def record(epoch: int, zv: np.ndarray, extra: dict[str, Any]) -> dict[str, Any]:
        entry = {"epoch": epoch, **extra, "valid_logloss": logloss_from_margin(zv, y[data.valid])}
        zt = None
        if track_test:
            zt = base[data.test] + (stage_margin(learner, view, data.test) if epoch else 0)
            entry.update(metrics(zt, y[data.test]))
        if on_epoch is not None:
            entry.update(on_epoch(epoch, zv, zt))
        history.append(entry)
        return entry

    best: tuple[float, int, Any] | None = None
    if residual:
        entry = record(0, base[data.valid], {})
        best = (entry["valid_logloss"], 0, None)
    bad = 0
    for epoch in range(1, opts.epochs + 1):
        order = rng.permutation(data.n_train)
        loss_sum, n_sum, skipped = 0.0, 0, 0
        for a in range(0, data.n_train, CHUNK_ROWS):
            rows = order[a:a + CHUNK_ROWS]
            xb, yb, bb = view.take(rows), y[rows], base[rows]
            for s in range(0, len(rows), opts.batch_size):
                sl = slice(s, s + opts.batch_size)
                res = learner.partial_fit(xb.slice(sl), bb[sl], yb[sl])
                loss_sum += float(res["loss"]) * int(res["n"])
                n_sum += int(res["n"])
                skipped += int(res.get("skipped", 0))
            if tick is not None:
                tick()
        zv = base[data.valid] + stage_margin(learner, view, data.valid)
        entry = record(epoch, zv, {"train_loss": loss_sum / max(n_sum, 1), "skipped": skipped})
        if best is None or entry["valid_logloss"] < best[0]:
            best = (entry["valid_logloss"], epoch, _copy_state(learner.state_dict()))
            bad = 0
        else:
            bad += 1
            if bad >= opts.patience:
                break
    assert best is not None
    if best[1] == 0:
        learner.load_state_dict(_silent(learner.state_dict()))
    elif best[1] != history[-1]["epoch"]:
        learner.load_state_dict(best[2])
    rows = slice(0, len(data)) if margin_rows is None else margin_rows
    return {"epochs_kept": best[1], "epochs_run": history[-1]["epoch"], "history": history,
            "margin": stage_margin(learner, view, rows)}


def fit_trees(stage: Any, data: EncodedLog, init: np.ndarray | None, oof: int = 0,
              make_fold_stage: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Fit a tree stage on the training rows (early stopping on the validation slice).

    ``init`` is ``z_prev`` on every row (None for the first stage): the trees are fitted with
    ``init_score = init[train]``, i.e. on the residual of the stages before. Trees after the
    first stage that do not lower the validation logloss are left out (``trees_kept`` 0, margin
    0). Returns ``{"margin": float32 [n], "trees_kept": int}``: the trees' raw score on every
    row, where with ``oof = F > 1`` the training rows hold out-of-fold scores from ``F``
    extra fits.
    """
    tr, va = data.train, data.valid
    init_tr = None if init is None else init[tr]
    valid = (data.dense[va], data.y[va], None if init is None else init[va])
    stage.fit(data.dense[tr], data.y[tr], init_score=init_tr, valid=valid)
    view = TreeView(data)
    margin = stage_margin(stage, view, slice(0, len(data)))
    kept = int(stage.booster.num_trees())
    if init is not None:
        yv = data.y[va]
        if logloss_from_margin(init[va] + margin[va], yv) >= logloss_from_margin(init[va], yv):
            return {"margin": np.zeros_like(margin), "trees_kept": 0}
    if oof > 1:
        if make_fold_stage is None:
            raise ValueError("out-of-fold margins need make_fold_stage")
        fold = np.arange(data.n_train) % oof
        for f in range(oof):
            fit_rows = np.flatnonzero(fold != f)
            held = np.flatnonzero(fold == f)
            fs = make_fold_stage(f)
            fs.fit(data.dense[fit_rows], data.y[fit_rows],
                   init_score=None if init is None else init[fit_rows], valid=valid)
            for a in range(0, held.size, CHUNK_ROWS):
                r = held[a:a + CHUNK_ROWS]
                margin[r] = fs.margin(view.take(r))
            fs.close()
    return {"margin": margin, "trees_kept": kept}


def offline_config(cfg: ModelConfig, **changes: Any) -> ModelConfig:
    """A config for one-shot fitting: no background refits, no drift detection."""
    return replace(cfg, drift=False, **changes)


def fold_stage_factory(cfg: ModelConfig, position: int) -> Callable[[int], Any]:
    """Tree stages for out-of-fold margins: same knobs, a seed derived from the fold."""

    def make(fold: int) -> Any:
        return build_stage("trees", position, replace(cfg, seed=cfg.seed * 31 + fold + 1), 0)

    return make
