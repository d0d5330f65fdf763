"""Fitting one stage offline on the residual of the stages before it (the paper's protocol).

- A tree stage: ``TreeStage.fit(dense, y, init_score=z_prev, valid=...)``, LightGBM early
  stopping on the validation slice.
- A learner: mini-batch Adam (``partial_fit`` over seeded shuffled mini-batches,
  ``base_margin = z_prev``), scoring the validation slice a few times per epoch and keeping
  the check with the best validation logloss (CTR models often overfit within their first
  epochs: on a generated 1M Criteo log the residual DeepFM's test AUC falls from the first
  quarter epoch on).

A stage after the first never makes the validation logloss worse than the stages before it:
its epoch 0 is "add nothing" (margin 0), a candidate like any other check, and a tree stage
whose trees do not help is left out the same way. A learner after the first stage is also
weighed against its base: its fused margin is ``a * base + b * margin + c`` with the *stage
scales* fitted on the validation slice, so a learner that adds little counts little instead
of all or nothing. Each fit says what it kept.

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

from streamfusion.batch.blend import blend_weights
from streamfusion.batch.load import EncodedLog
from streamfusion.batch.views import CHUNK_ROWS, TreeView, stage_margin
from streamfusion.evaluate import auc, logloss_from_margin
from streamfusion.fusion import ModelConfig, build_stage


@dataclass
class FitOptions:
    """How the neural stages are trained offline.

    Parameters
    ----------
    epochs : int
        Most passes over the training rows.
    patience : int
        Epochs' worth of validation checks without improvement before stopping.
    batch_size : int
        Rows per mini-batch: one Adam step each with the paper's ``step_rows=0``.
    seed : int
        Seeds the order rows are visited in.
    checks : int
        Validation checks per epoch, each a candidate to keep: the best point is often inside
        an epoch (12 random splits of the Criteo sample: GBDTRes+NN +0.0017 +- 0.0008 test
        AUC with 4 checks against 1).
    scales : bool
        A learner after the first stage is kept with its stage scales (``a * base + b *
        margin + c``, fitted on the validation slice) rather than as the plain sum (the
        generated 1M Criteo log: GBDTRes+NN 0.6899, a tie with its trees, becomes 0.6903).
    """

    epochs: int = 8
    patience: int = 2
    batch_size: int = 1024
    seed: int = 0
    checks: int = 4
    scales: bool = True


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
                 on_epoch: Callable[[float, np.ndarray, np.ndarray | None], dict] | None = None,
                 tick: Callable[[], None] | None = None, track_test: bool = False,
                 margin_rows: slice | None = None) -> dict[str, Any]:
    """Mini-batch Adam on ``logloss(y, sigmoid(base + margin))`` over the training rows.

    Each epoch visits the training rows in a seeded random order (``partial_fit`` per
    mini-batch) and scores the validation slice ``opts.checks`` times, after evenly spaced
    mini-batches: each check is a candidate, labelled by the epochs it has seen (1.25 is a
    quarter into the second epoch). The learner ends in the state of the best check, stopping
    after ``patience`` epochs' worth of checks without improvement.

    With ``residual`` (a stage after the first), check 0 is ``base`` alone: if no check beats
    it, the learner is left adding exactly 0 and the scales are ``(1, 1, 0)``. With
    ``opts.scales`` (residual stages only) each check is judged, and kept, with the stage
    scales ``(a, b, c)`` fitted on the validation slice, ``a * base + b * margin + c``; check 0
    is then judged as ``a * base + c``, so a check wins by what the learner adds, not by a
    recalibration of the base. With ``track_test`` the test part is scored at every check too
    (the convergence curves). ``on_epoch(epoch, z_valid, z_test)`` may add fields to a check's
    history entry.

    Returns ``{"epochs_kept", "epochs_run", "history", "margin", "scales"}``: ``margin`` is the
    learner's own margin in its kept state on ``margin_rows`` (default: every row), float32;
    the stage's fused margin is ``apply_scales(scales, base, margin)``.
    """
    rng = np.random.default_rng(opts.seed)
    y = data.y
    yv = y[data.valid]
    history: list[dict[str, Any]] = []
    checks = max(1, int(opts.checks))
    scaled = bool(opts.scales) and residual  # a first stage has no base to weigh against

    def check(epoch: float, m_valid: np.ndarray | None,
              extra: dict[str, Any]) -> tuple[float, Scales]:
        """Score one candidate on the validation slice; returns (criterion, its scales)."""
        bv = base[data.valid]
        zv = bv if m_valid is None else bv + m_valid
        entry = {"epoch": epoch, **extra, "valid_logloss": logloss_from_margin(zv, yv)}
        w, criterion = NO_SCALES, entry["valid_logloss"]
        if scaled:
            fitted = stage_scales(bv, m_valid, yv)
            criterion = logloss_from_margin(apply_scales(fitted, bv, m_valid), yv)
            entry["valid_logloss_scaled"] = criterion
            if m_valid is not None:  # check 0 stays the base itself when it is kept
                w = fitted
                entry["scales"] = list(w)
                zv = apply_scales(w, bv, m_valid)
        zt = None
        if track_test:
            mt = None if m_valid is None else stage_margin(learner, view, data.test)
            zt = apply_scales(w, base[data.test], mt)
            entry.update(metrics(zt, y[data.test]))
        if on_epoch is not None:
            entry.update(on_epoch(epoch, zv, zt))
        history.append(entry)
        return criterion, w

    best: tuple[float, float, Any, Scales] | None = None
    if residual:
        criterion, w = check(0, None, {})
        best = (criterion, 0, None, w)
    at = check_points(data.n_train, opts.batch_size, checks)
    bad = 0
    stop = False
    for epoch in range(1, opts.epochs + 1):
        order = rng.permutation(data.n_train)
        loss_sum, n_sum, skipped, done = 0.0, 0, 0, 0
        for a in range(0, data.n_train, CHUNK_ROWS):
            rows = order[a:a + CHUNK_ROWS]
            xb, yb, bb = view.take(rows), y[rows], base[rows]
            for s in range(0, len(rows), opts.batch_size):
                sl = slice(s, s + opts.batch_size)
                res = learner.partial_fit(xb.slice(sl), bb[sl], yb[sl])
                loss_sum += float(res["loss"]) * int(res["n"])
                n_sum += int(res["n"])
                skipped += int(res.get("skipped", 0))
                done += 1
                if done not in at:
                    continue
                j = at[done]
                label = epoch if j == checks else round(epoch - 1 + j / checks, 6)
                criterion, w = check(label, stage_margin(learner, view, data.valid),
                                     {"train_loss": loss_sum / max(n_sum, 1),
                                      "skipped": skipped})
                if best is None or criterion < best[0]:
                    best = (criterion, label, _copy_state(learner.state_dict()), w)
                    bad = 0
                else:
                    bad += 1
                    stop = bad >= opts.patience * checks
                    if stop:
                        break
            if tick is not None:
                tick()
            if stop:
                break
        if stop:
            break
    assert best is not None
    if best[1] == 0:
        learner.load_state_dict(_silent(learner.state_dict()))
    elif best[1] != history[-1]["epoch"]:
        learner.load_state_dict(best[2])
    rows = slice(0, len(data)) if margin_rows is None else margin_rows
    return {"epochs_kept": best[1], "epochs_run": history[-1]["epoch"], "history": history,
            "margin": stage_margin(learner, view, rows), "scales": best[3]}


def check_points(n_train: int, batch_size: int, checks: int) -> dict[int, int]:
    """``{mini-batch number within an epoch: check number 1..checks}``: the checks after
    evenly spaced mini-batches, the last one after the epoch's last mini-batch.

    Examples
    --------
    >>> check_points(10_000, 1024, 4)
    {2: 1, 5: 2, 8: 3, 10: 4}
    """
    # mini-batches never straddle a gathered chunk of rows, so count them chunk by chunk
    full, rest = divmod(n_train, CHUNK_ROWS)
    n_batches = full * -(-CHUNK_ROWS // batch_size) + -(-rest // batch_size)
    checks = min(checks, n_batches)
    return {max(1, round(n_batches * (j + 1) / checks)): j + 1 for j in range(checks)}


Scales = tuple[float, float, float]
NO_SCALES: Scales = (1.0, 1.0, 0.0)  # the paper's sum: base + margin


def stage_scales(base: np.ndarray, margin: np.ndarray | None, y: np.ndarray) -> Scales:
    """The stage scales ``(a, b, c)`` of ``sigmoid(a * base + b * margin + c)``: a logistic
    regression on ``y`` (the validation slice, which no stage learned from); ``b = 1`` when
    there is no margin, ``b = 0`` (the base recalibrated) when the fitted ``b`` is negative.

    A stage learned to *add* its margin: a negative weight only says that its direction does
    not carry over to new rows (a small, noisy margin early in training, weighed against the
    base on a few hundred rows: the Criteo sample's residual got b = -2.1 after half an epoch,
    which lowered the validation logloss and the test AUC), so it counts as adding nothing.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> base, own = rng.normal(size=(2, 100_000))
    >>> y = rng.random(base.size) < 1 / (1 + np.exp(-(0.5 * base + 2 * own - 1)))
    >>> np.round(stage_scales(base, own, y), 1).tolist()
    [0.5, 2.0, -1.0]
    """
    if margin is None:
        a, c = blend_weights([base], y)
        return float(a), 1.0, float(c)
    a, b, c = blend_weights([base, margin], y)
    if b < 0:
        a, c = blend_weights([base], y)
        return float(a), 0.0, float(c)
    return float(a), float(b), float(c)


def apply_scales(w: Scales, base: np.ndarray, margin: np.ndarray | None) -> np.ndarray:
    """The fused margin ``a * base + b * margin + c``, float32 (no margin: ``a * base + c``);
    with ``NO_SCALES`` exactly the paper's ``base + margin``."""
    if tuple(w) == NO_SCALES:
        return base if margin is None else base + margin
    a, b, c = w
    z = a * np.asarray(base, np.float64) + c
    if margin is not None:
        z = z + b * np.asarray(margin, np.float64)
    return z.astype(np.float32)


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
    """A config for one-shot fitting: no background refits, no drift detection, and trees
    that score their plain margin (one fit on all the training rows, as in the paper)."""
    return replace(cfg, drift=False, tree_shrinkage=1.0, **changes)


def fold_stage_factory(cfg: ModelConfig, position: int) -> Callable[[int], Any]:
    """Tree stages for out-of-fold margins: same knobs, a seed derived from the fold."""

    def make(fold: int) -> Any:
        return build_stage("trees", position, replace(cfg, seed=cfg.seed * 31 + fold + 1), 0)

    return make
