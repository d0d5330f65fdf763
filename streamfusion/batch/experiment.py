"""The paper's Table 2 and Table 3 models, fitted offline from a registry of named pieces.

A *piece* is one fitted model: a name, the pieces it builds on, and how it is fitted (a
function of the experiment). Shared pieces are fitted once and reused, exactly as the paper's
models share them:

=============  ==============================================================================
LR, FM         one learner on the log's features
GBDT           LightGBM trees (Table 3's K = 0)
DeepFM         one DeepFM learner (first order + FM term + MLP)
GBDT+LR        an LR whose fields are GBDT's trees: the leaf of each event in each tree
GBDT2DNN       GBDT's score as one more numeric field (a value-scaled embedding) of a DNN
               (an MLP over the field embeddings, no first-order or FM term)
GBDT2DeepFM    the same extra field into DeepFM
GBDT+DeepFM    GBDT and DeepFM fitted independently, their margins combined by a 3-parameter
               logistic regression ``w1 * gbdt + w2 * deepfm + b`` fitted on the validation slice
NNres+GBDT     trees fitted with ``init_score`` = DeepFM's margin
GBDTRes+NN     ResFusion: DeepFM fitted on GBDT's residual (K = 1)
K=2, K=3       trees again on the residual of K = 1, then DeepFM again (Table 3)
=============  ==============================================================================

A stage fitted on a residual keeps the check (a point within its epochs) or the trees with the
best validation logloss, "nothing" included, so it never makes the validation logloss worse
than what it builds on; a learner on a residual is kept with its stage scales (``a * base + b *
margin + c`` fitted on the validation slice; the paper's sum when it adds nothing).
``seconds`` of a row counts every piece it needs (GBDTRes+NN = its trees + its DeepFM), so rows
are comparable although pieces are fitted once.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from streamfusion.batch.blend import apply_blend, blend_weights
from streamfusion.batch.fit import (
    NO_SCALES,
    FitOptions,
    apply_scales,
    fit_residual,
    fit_trees,
    fold_stage_factory,
    metrics,
    offline_config,
)
from streamfusion.batch.load import EncodedLog
from streamfusion.batch.views import CHUNK_ROWS, FeatureView, LeafView
from streamfusion.fusion import ModelConfig, build_stage


@dataclass
class Fitted:
    """A fitted piece.

    ``z`` is its fused margin on every row when other pieces build on it (else None: only
    ``z_test`` is kept, so a 45M-row run holds a few full-length margin arrays, not twelve);
    ``seconds`` its own fitting time, ``total`` with the pieces it needs; ``kept`` what each
    stage of its chain kept (``{"stage", "epochs_kept", "epochs_run"}``, plus ``"scales"`` when
    a residual learner was weighed against its base, or ``{"stage", "trees_kept"}``).
    """

    z_test: np.ndarray
    seconds: float
    total: float
    kept: list[dict[str, Any]]
    z: np.ndarray | None = None
    stage: Any = None
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Piece:
    """One registered model: ``fit(experiment) -> Fitted`` after the pieces in ``needs``."""

    name: str
    needs: tuple[str, ...]
    fit: Callable[[Experiment], Fitted]
    chain: tuple[str, ...]  # what the model is made of, for the report
    curve: bool = False  # traced on the test part after every epoch (the paper's Fig. 3)


class NullTracker:
    """Progress callbacks; ``streamfusion.reproduce`` passes a rich progress bar instead."""

    def begin(self, name: str, units: int) -> None:
        pass

    def tick(self) -> None:
        pass

    def end(self) -> None:
        pass


def table_bits(rows: int) -> int:
    """log2 of the smallest power-of-two table with ``rows`` rows."""
    return max(1, (int(rows) - 1).bit_length())


class Experiment:
    """Fits the paper's models on one ``EncodedLog`` and reports test metrics.

    Parameters
    ----------
    data : EncodedLog
        Rows ordered ``[train | valid | test]`` (see ``streamfusion.batch.load_log``).
    cfg : ModelConfig
        Stage knobs (trees, learner sizes, Adam step, seed); learner tables get as many rows
        as their inputs have distinct values, rounded up to a power of two.
    opts : FitOptions
        Epochs, patience, mini-batch size for the neural stages.
    oof : int
        0: residual stages learn from in-sample tree margins (the paper); F > 1: from F-fold
        out-of-fold margins on the training rows.
    tracker : object with ``begin(name, units)``, ``tick()``, ``end()``

    Examples
    --------
    >>> from streamfusion.batch import default_config, load_log
    >>> cfg, opts = default_config(quick=True, seed=1)
    >>> exp = Experiment(load_log("train.csv"), cfg, opts)  # doctest: +SKIP
    >>> rows = exp.table2(("GBDT", "GBDTRes+NN"))  # doctest: +SKIP
    """

    def __init__(self, data: EncodedLog, cfg: ModelConfig, opts: FitOptions, oof: int = 0,
                 tracker: Any = None) -> None:
        self.data = data
        self.cfg = offline_config(cfg)
        self.opts = opts
        self.oof = int(oof)
        self.tracker = tracker or NullTracker()
        self.view = FeatureView(data)
        self.y_test = data.y[data.test]
        self._fitted: dict[str, Fitted] = {}
        self._stages: list[Any] = []

    # ---------------------------------------------------------------- the registry's tools

    def fitted(self, name: str) -> Fitted:
        """The piece ``name``, fitted on first use (after the pieces it needs)."""
        if name not in self._fitted:
            piece = PIECES.get(name)
            if piece is None:
                raise ValueError(f"unknown model {name!r}; choose from {', '.join(PIECES)}")
            for dep in piece.needs:
                self.fitted(dep)
            res = piece.fit(self)
            if name not in FEEDS:
                res.z = None
            self._fitted[name] = res
        return self._fitted[name]

    def stage(self, kind: str, position: int, rows: int = 0, n_fields: int = 0) -> Any:
        """A new stage of ``kind`` at chain ``position`` (its seed); learners get a table of
        ``rows`` rows (rounded up to a power of two)."""
        cfg = replace(self.cfg, bits=table_bits(rows)) if kind != "trees" else self.cfg
        stage = build_stage(kind, position, cfg, n_fields)
        self._stages.append(stage)
        return stage

    def trees(self, name: str, position: int, on: str | None) -> Fitted:
        """Trees at chain ``position`` fitted on the residual of piece ``on`` (or the labels)."""
        d = self.data
        prev = self.fitted(on) if on is not None else None
        feeds_next = name in FEEDS  # out-of-fold margins only matter for margins learned from
        oof = self.oof if feeds_next else 0
        stage = self.stage("trees", position)
        self.tracker.begin(name, 1)
        make = fold_stage_factory(self.cfg, position) if oof > 1 else None
        t0 = time.perf_counter()
        res = fit_trees(stage, d, None if prev is None else prev.z, oof=oof,
                        make_fold_stage=make)
        seconds = time.perf_counter() - t0
        self.tracker.tick()
        self.tracker.end()
        z = res["margin"] if prev is None else prev.z + res["margin"]
        kept = [{"stage": "trees", "trees_kept": res["trees_kept"]}]
        return Fitted(z[d.test], seconds, seconds + (prev.total if prev else 0.0),
                      (prev.kept if prev else []) + kept, z=z, stage=stage)

    def learner(self, name: str, kind: str, position: int, on: str | None,
                view: Any = None, track: bool = False,
                on_epoch: Callable | None = None) -> Fitted:
        """A ``kind`` learner at chain ``position`` over ``view`` (default: the log's fields),
        fitted on the residual of piece ``on`` (or the labels)."""
        d = self.data
        view = view or self.view
        prev = self.fitted(on) if on is not None else None
        learner = self.stage(kind, position, view.table_rows, view.n_fields)
        base = prev.z if prev is not None else np.zeros(len(d), np.float32)
        keep_all = name in FEEDS
        chunks = -(-d.n_train // CHUNK_ROWS)
        self.tracker.begin(name, self.opts.epochs * chunks)
        # the shuffling seed depends on the model's name, not on the order models are fitted
        opts = replace(self.opts, seed=self.opts.seed * 7919 + zlib.crc32(name.encode()))
        t0 = time.perf_counter()
        res = fit_residual(learner, view, d, base, opts, residual=prev is not None,
                           on_epoch=on_epoch, tick=self.tracker.tick, track_test=track,
                           margin_rows=None if keep_all else d.test)
        seconds = time.perf_counter() - t0
        self.tracker.end()
        m = res["margin"]
        z = apply_scales(res["scales"], base if keep_all else base[d.test], m)
        kept: list[dict[str, Any]] = [{"stage": kind, "epochs_kept": res["epochs_kept"],
                                       "epochs_run": res["epochs_run"]}]
        if tuple(res["scales"]) != NO_SCALES:
            kept[0]["scales"] = [round(float(x), 4) for x in res["scales"]]
        return Fitted(z[d.test] if keep_all else z, seconds,
                      seconds + (prev.total if prev else 0.0),
                      (prev.kept if prev else []) + kept, z=z if keep_all else None,
                      stage=learner, history=res["history"])

    # ---------------------------------------------------------------- tables

    @staticmethod
    def pieces(models: tuple[str, ...], ks: tuple[int, ...]) -> list[str]:
        """The pieces that train something for the given rows, in fitting order."""
        out: list[str] = []

        def need(name: str) -> None:
            for dep in PIECES[name].needs:
                need(dep)
            if name not in out:
                out.append(name)

        for m in models:
            need(m)
        for k in ks:
            need(TABLE3[k])
        return [p for p in out if p != "GBDT+DeepFM"]  # a blend: nothing to train

    def row(self, name: str) -> dict[str, Any]:
        """One row: ``{"model", "auc", "logloss", "seconds", "chain", "kept", ...}``;
        ``epochs_kept`` is that of the row's last learner stage (0: it adds nothing)."""
        res = self.fitted(name)
        out: dict[str, Any] = {"model": name}
        out.update(metrics(res.z_test, self.y_test))
        out["seconds"] = round(float(res.total), 3)
        out["chain"] = list(PIECES[name].chain)
        out["kept"] = [dict(k) for k in res.kept]
        learners = [k for k in res.kept if "epochs_kept" in k]
        if learners:
            out["epochs_kept"] = learners[-1]["epochs_kept"]
        if "weights" in res.extra:
            out["blend_weights"] = res.extra["weights"]
        return out

    def table2(self, models: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        """Table 2 rows (default: all ten models)."""
        models = TABLE2 if models is None else models
        if "GBDT+DeepFM" in models:
            self.fitted("GBDT")  # trees before DeepFM, so DeepFM's epochs also trace the blend
        return [self.row(m) for m in models]

    def table3(self, ks: tuple[int, ...] = (0, 1, 2, 3)) -> list[dict[str, Any]]:
        """Table 3: the rows of K = 0..3 alternating stages (``{"K", ...}`` first)."""
        return [{"K": k, **{a: b for a, b in self.row(TABLE3[k]).items() if a != "model"}}
                for k in ks]

    def convergence(self) -> dict[str, list[dict[str, Any]]]:
        """Test AUC / logloss after every epoch (the paper's Fig. 3) of the fitted models."""
        out: dict[str, list[dict[str, Any]]] = {}
        for name in CONVERGENCE:
            res = self._fitted.get(name)
            if name == "GBDT+DeepFM":
                deep = self._fitted.get("DeepFM")
                pts = [{"epoch": h["epoch"], **h["blend_test"]}
                       for h in (deep.history if deep else []) if "blend_test" in h]
            else:
                pts = [_curve_point(h) for h in res.history] if res else []
            if pts:
                out[name] = pts
        return out

    def close(self) -> None:
        """Stop the tree stages' background machinery, if any."""
        for stage in self._stages:
            if hasattr(stage, "close"):
                stage.close()


def _curve_point(h: dict[str, Any]) -> dict[str, Any]:
    return {k: h[k] for k in ("epoch", "auc", "logloss", "valid_logloss") if k in h}


# ------------------------------------------------------------------- how each piece is fitted


def _single(kind: str) -> Callable[[Experiment], Fitted]:
    def fit(exp: Experiment) -> Fitted:
        return exp.learner(kind.upper(), kind, 0, None)

    return fit


def _deepfm(exp: Experiment) -> Fitted:
    blend = None
    gbdt = exp._fitted.get("GBDT")
    if gbdt is not None:  # GBDT fitted: also trace GBDT+DeepFM's convergence
        d = exp.data
        gv, gt, yv = gbdt.z[d.valid], gbdt.z[d.test], d.y[d.valid]

        def blend(epoch: int, zv: np.ndarray, zt: np.ndarray | None) -> dict[str, Any]:
            # the blend re-fitted on the validation slice after each DeepFM epoch
            w = blend_weights([gv, zv], yv)
            out: dict[str, Any] = {"blend": [float(x) for x in w]}
            if zt is not None:
                out["blend_test"] = metrics(apply_blend(w, [gt, zt]), exp.y_test)
            return out

    return exp.learner("DeepFM", "deepfm", 0, None, track=True, on_epoch=blend)


def _gbdt_lr(exp: Experiment) -> Fitted:
    gbdt = exp.fitted("GBDT")
    view = LeafView(exp.data, gbdt.stage.booster, exp.cfg.num_leaves)
    res = exp.learner("GBDT+LR", "lr", 1, None, view=view)
    res.total += gbdt.total
    res.kept = gbdt.kept + res.kept
    res.extra["view"] = view
    return res


def _tree_score(kind: str, name: str) -> Callable[[Experiment], Fitted]:
    def fit(exp: Experiment) -> Fitted:
        d = exp.data
        gbdt = exp.fitted("GBDT")
        g = gbdt.z
        mu, sd = float(g[d.train].mean()), float(g[d.train].std()) or 1.0
        view = FeatureView(d, [((g - mu) / sd).astype(np.float32)])
        res = exp.learner(name, kind, 1, None, view=view, track=name in CURVES)
        res.total += gbdt.total
        res.kept = gbdt.kept + res.kept
        return res

    return fit


def _blend(exp: Experiment) -> Fitted:
    d = exp.data
    g, f = exp.fitted("GBDT"), exp.fitted("DeepFM")
    t0 = time.perf_counter()
    w = blend_weights([g.z[d.valid], f.z[d.valid]], d.y[d.valid])
    z = apply_blend(w, [g.z[d.test], f.z[d.test]])
    seconds = time.perf_counter() - t0
    return Fitted(z, seconds, g.total + f.total + seconds, g.kept + f.kept,
                  extra={"weights": [float(x) for x in w]})


_PIECES = (
    Piece("LR", (), _single("lr"), ("lr",)),
    Piece("FM", (), _single("fm"), ("fm",)),
    Piece("GBDT", (), lambda e: e.trees("GBDT", 0, None), ("trees",)),
    Piece("DeepFM", (), _deepfm, ("deepfm",), curve=True),
    Piece("GBDT+LR", ("GBDT",), _gbdt_lr, ("trees -> leaf indices", "lr")),
    Piece("GBDT2DNN", ("GBDT",), _tree_score("dnn", "GBDT2DNN"),
          ("trees -> score field", "dnn")),
    Piece("GBDT2DeepFM", ("GBDT",), _tree_score("deepfm", "GBDT2DeepFM"),
          ("trees -> score field", "deepfm"), curve=True),
    Piece("GBDT+DeepFM", ("GBDT", "DeepFM"), _blend, ("trees | deepfm", "blend"), curve=True),
    Piece("NNres+GBDT", ("DeepFM",), lambda e: e.trees("NNres+GBDT", 1, "DeepFM"),
          ("deepfm", "trees")),
    Piece("GBDTRes+NN", ("GBDT",),
          lambda e: e.learner("GBDTRes+NN", "deepfm", 1, "GBDT", track=True),
          ("trees", "deepfm"), curve=True),
    Piece("K=2", ("GBDTRes+NN",), lambda e: e.trees("K=2", 2, "GBDTRes+NN"),
          ("trees", "deepfm", "trees")),
    Piece("K=3", ("K=2",), lambda e: e.learner("K=3", "deepfm", 3, "K=2"),
          ("trees", "deepfm", "trees", "deepfm")),
)
PIECES: dict[str, Piece] = {p.name: p for p in _PIECES}
TABLE2 = ("LR", "FM", "GBDT", "DeepFM", "GBDT+LR", "GBDT2DNN", "GBDT2DeepFM", "GBDT+DeepFM",
          "NNres+GBDT", "GBDTRes+NN")
TABLE3 = {0: "GBDT", 1: "GBDTRes+NN", 2: "K=2", 3: "K=3"}
CURVES = frozenset(p.name for p in _PIECES if p.curve)
CONVERGENCE = tuple(p.name for p in _PIECES if p.curve)
# pieces whose margin on every row another piece builds on (the rest keep test margins only)
FEEDS = frozenset(dep for p in _PIECES for dep in p.needs)


def default_config(quick: bool, seed: int) -> tuple[ModelConfig, FitOptions]:
    """Offline knobs: the paper's protocol (mini-batch Adam on every parameter, one step per
    mini-batch; the paper's DeepFM, every pair of fields alike; numbers as the reader gives
    them, ``sign(x) * log1p(|x|)``, not standardised: standardising them changed no figure
    beyond its noise on the Criteo sample, Adult or a generated 1M Criteo log), smaller under
    ``--quick``; ``FitOptions``' validation checks and stage scales."""
    paper = {"row_optimizer": "adam", "standardize": False, "pair_weights": False,
             "field_weights": False, "step_rows": 0, "adam_batch": 0, "seed": seed}
    if quick:
        cfg = ModelConfig(n_trees=60, num_leaves=31, tree_learning_rate=0.15, bits=18, k=8,
                          hidden=(64, 64), lr=2e-3, **paper)
        return cfg, FitOptions(epochs=2, patience=1, batch_size=1024, seed=seed)
    cfg = ModelConfig(n_trees=300, num_leaves=63, tree_learning_rate=0.1, bits=20, k=16,
                      hidden=(128, 128), lr=1e-3, l2=1e-5, **paper)
    return cfg, FitOptions(epochs=8, patience=2, batch_size=1024, seed=seed)
