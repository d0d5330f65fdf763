"""The paper's Table 2 and Table 3 models as chains (or small variations of one) fitted offline.

Every model is built from the stages of ``streamfusion.fusion`` and fitted stage-wise by
``streamfusion.offline``; shared pieces are fitted once and reused, exactly as the paper's
models share them:

=============  ==============================================================================
LR, FM         one-stage chains ``["lr"]``, ``["fm"]``
GBDT           stage 0 of the Table 3 chain ``["trees", "deepfm", "trees", "deepfm"]``
DeepFM         stage 0 of the NNres+GBDT chain ``["deepfm", "trees"]``
GBDT+LR        an LR whose fields are the GBDT's trees: the leaf of each event in tree ``t``
               (``booster.predict(pred_leaf=True)``) hashed as the categorical value (t, leaf)
GBDT2DNN       the GBDT's score appended as one numeric field (a value-scaled embedding) of a
               DNN learner (``model="mlp"`` when the compiled learner offers it, else DeepFM)
GBDT2DeepFM    the same extra field into DeepFM
GBDT+DeepFM    GBDT and DeepFM fitted independently, their margins combined by a 3-parameter
               logistic regression ``w1 * gbdt + w2 * deepfm + b`` fitted on the validation slice
NNres+GBDT     the chain ``["deepfm", "trees"]``: trees fitted with ``init_score`` = DeepFM margin
GBDTRes+NN     ResFusion, stages 0-1 of the Table 3 chain: DeepFM on the trees' residual
=============  ==============================================================================

Table 3's K = 0..3 are the prefixes of the chain ``trees, +DeepFM, +trees, +DeepFM``.

``seconds`` of a model counts every piece it needs (GBDTRes+NN = its trees + its DeepFM), so
rows are comparable although pieces are fitted once.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from streamfusion.fusion import Chain, ModelConfig, build_stage
from streamfusion.offline import (
    CHUNK_ROWS,
    Encoded,
    FeatureView,
    FitOptions,
    LeafView,
    Timer,
    apply_blend,
    blend_weights,
    fit_residual,
    fit_trees,
    fold_stage_factory,
    metrics,
    offline_config,
    table_row,
)

TABLE2 = ("LR", "FM", "GBDT", "DeepFM", "GBDT+LR", "GBDT2DNN", "GBDT2DeepFM", "GBDT+DeepFM",
          "NNres+GBDT", "GBDTRes+NN")
CONVERGENCE = ("DeepFM", "GBDT2DeepFM", "GBDT+DeepFM", "GBDTRes+NN")
TABLE3_K = (0, 1, 2, 3)
TREE_SCORE_KEY = 0x7EE5C0DE  # table row of the "tree score" field in GBDT2DNN / GBDT2DeepFM
DNN_KINDS = ("mlp", "dnn")  # learner models without the FM part, when the learner has one
# pieces no other piece builds on: only their test margins are kept
TERMINAL = frozenset({"LR", "FM", "GBDT+LR", "GBDT2DNN", "GBDT2DeepFM", "GBDT+DeepFM",
                      "NNres+GBDT", "K3"})


class NullTracker:
    """Progress callbacks; ``streamfusion.reproduce`` passes a rich progress bar instead."""

    def begin(self, name: str, units: int) -> None:
        pass

    def tick(self) -> None:
        pass

    def end(self) -> None:
        pass


def dnn_kind() -> str:
    """The learner model used for GBDT2DNN: an MLP-only model if the learner offers one."""
    from streamfusion import _learner

    offered = tuple(getattr(_learner, "MODELS", ()))
    for kind in DNN_KINDS:
        if kind in offered:
            return kind
    return "deepfm"


class Experiment:
    """Fits the paper's models on one ``Encoded`` data set and reports test metrics.

    Parameters
    ----------
    data : Encoded
        Rows ordered ``[train | valid | test]`` (see ``streamfusion.offline.load_encoded``).
    cfg : ModelConfig
        Stage knobs (trees, learner sizes, Adam step, seed).
    opts : FitOptions
        Epochs, patience, mini-batch size for the neural stages.
    oof : int
        0: residual stages learn from in-sample tree margins (the paper); F > 1: from F-fold
        out-of-fold margins on the training rows.
    tracker : object with ``begin(name, units)``, ``tick()``, ``end()``

    Examples
    --------
    >>> exp = Experiment(data, ModelConfig(seed=1), FitOptions(epochs=2))  # doctest: +SKIP
    >>> rows = exp.table2()  # doctest: +SKIP
    """

    def __init__(self, data: Encoded, cfg: ModelConfig, opts: FitOptions, oof: int = 0,
                 tracker: Any = None) -> None:
        self.data = data
        self.cfg = offline_config(cfg)
        self.opts = opts
        self.oof = int(oof)
        self.tracker = tracker or NullTracker()
        n_fields = data.n_fields
        self.kchain = Chain.from_config(replace(self.cfg, iterations=3), n_fields)
        self.nnchain = Chain.from_config(replace(self.cfg, model="nnres-gbdt", iterations=None),
                                         n_fields)
        self.view = FeatureView(data)
        self._parts: dict[str, dict[str, Any]] = {}
        self.y_test = data.y[data.test]

    # ---------------------------------------------------------------- shared pieces

    def _residual(self, name: str, learner: Any, view: Any, base: np.ndarray, track: bool,
                  on_epoch: Callable | None = None, terminal: bool = False) -> dict[str, Any]:
        chunks = -(-self.data.n_train // CHUNK_ROWS)
        self.tracker.begin(name, self.opts.epochs * chunks)
        # the shuffling seed depends on the model's name, not on the order models are fitted
        opts = replace(self.opts, seed=self.opts.seed * 7919 + zlib.crc32(name.encode()))
        with Timer() as t:
            res = fit_residual(learner, view, self.data, base, opts, on_epoch=on_epoch,
                               tick=self.tracker.tick, track_test=track,
                               margin_rows=self.data.test if terminal else None)
        self.tracker.end()
        res["seconds"] = t.seconds
        return res

    def _trees(self, name: str, stage: Any, position: int, init: np.ndarray | None,
               feeds_next: bool = True) -> dict[str, Any]:
        # out-of-fold margins only matter for trees whose margins another stage learns from
        oof = self.oof if feeds_next else 0
        self.tracker.begin(name, 1)
        make = fold_stage_factory(self.cfg, position) if oof > 1 else None
        with Timer() as t:
            res = fit_trees(stage, self.data, init, oof=oof, make_fold_stage=make)
        self.tracker.tick()
        self.tracker.end()
        res["seconds"] = t.seconds
        return res

    def part(self, key: str) -> dict[str, Any]:
        """A fitted piece, fitted on first use.

        ``z_test`` is its fused margin on the test rows; pieces that other pieces build on
        also keep ``z``, the fused margin on every row (float32 [n]). Terminal pieces keep only
        test margins, so a 45M-row run holds five full-length margin arrays, not twelve.
        """
        if key in self._parts:
            return self._parts[key]
        d = self.data
        terminal = key in TERMINAL
        zeros = np.zeros(len(d), np.float32)
        if key == "K0":  # GBDT
            res = self._trees("GBDT", self.kchain.stages[0], 0, None)
            res["z"] = res["margin"]
            res["total"] = res["seconds"]
        elif key in ("K1", "K3"):  # +DeepFM on the residual of the prefix
            k = int(key[1])
            prev = self.part(f"K{k - 1}")
            name = "GBDTRes+NN" if k == 1 else "K=3"
            res = self._residual(name, self.kchain.stages[k], self.view, prev["z"], k == 1,
                                 terminal=terminal)
            res["z"] = (prev["z"][d.test] if terminal else prev["z"]) + res["margin"]
            res["total"] = prev["total"] + res["seconds"]
        elif key == "K2":  # +trees through init_score
            prev = self.part("K1")
            res = self._trees("K=2", self.kchain.stages[2], 2, prev["z"])
            res["z"] = prev["z"] + res["margin"]
            res["total"] = prev["total"] + res["seconds"]
        elif key == "DeepFM":
            blend = None
            if "K0" in self._parts:  # GBDT fitted: also trace GBDT+DeepFM's convergence
                g = self._parts["K0"]["z"]
                gv, gt = g[d.valid], g[d.test]
                yv = d.y[d.valid]

                def blend(epoch: int, zv: np.ndarray, zt: np.ndarray | None) -> dict[str, Any]:
                    # the blend re-fitted on the validation slice after each DeepFM epoch
                    w = blend_weights([gv, zv], yv)
                    out: dict[str, Any] = {"blend": [float(x) for x in w]}
                    if zt is not None:
                        out["blend_test"] = metrics(apply_blend(w, [gt, zt]), self.y_test)
                    return out

            res = self._residual("DeepFM", self.nnchain.stages[0], self.view, zeros, True, blend)
            res["z"] = res["margin"]
            res["total"] = res["seconds"]
        elif key == "NNres+GBDT":
            prev = self.part("DeepFM")
            res = self._trees("NNres+GBDT", self.nnchain.stages[1], 1, prev["z"],
                              feeds_next=False)
            res["z"] = prev["z"] + res["margin"]
            res["total"] = prev["total"] + res["seconds"]
        elif key in ("LR", "FM"):
            chain = Chain.from_config(replace(self.cfg, model=key.lower()), d.n_fields)
            res = self._residual(key, chain.stages[0], self.view, zeros, False, terminal=True)
            res["z"] = res["margin"]
            res["total"] = res["seconds"]
        elif key == "GBDT+LR":
            gb = self.part("K0")
            stage = self.kchain.stages[0]
            view = LeafView(d, booster_of(stage), self.cfg.num_leaves, self.cfg.bits)
            learner = build_stage("lr", 1, self.cfg, view.n_fields)
            res = self._residual(key, learner, view, zeros, False, terminal=True)
            res["z"] = res["margin"]
            res["total"] = gb["total"] + res["seconds"]
            res["view"] = view
        elif key in ("GBDT2DNN", "GBDT2DeepFM"):
            gb = self.part("K0")
            g = gb["z"]
            mu, sd = float(g[d.train].mean()), float(g[d.train].std()) or 1.0
            score = ((g - mu) / sd).astype(np.float32)
            view = FeatureView(d, [(table_row(TREE_SCORE_KEY, self.cfg.bits), score)])
            kind = dnn_kind() if key == "GBDT2DNN" else "deepfm"
            # its own seed: with no MLP-only learner, GBDT2DNN is a second DeepFM draw
            learner = build_stage(kind, 2 if key == "GBDT2DNN" else 1, self.cfg, view.n_fields)
            res = self._residual(key, learner, view, zeros, key == "GBDT2DeepFM", terminal=True)
            res["z"] = res["margin"]
            res["total"] = gb["total"] + res["seconds"]
            res["kind"] = kind
        elif key == "GBDT+DeepFM":
            g, f = self.part("K0"), self.part("DeepFM")
            with Timer() as t:
                w = blend_weights([g["z"][d.valid], f["z"][d.valid]], d.y[d.valid])
                z = apply_blend(w, [g["z"][d.test], f["z"][d.test]])
            res = {"z": z, "weights": [float(x) for x in w], "seconds": t.seconds,
                   "total": g["total"] + f["total"] + t.seconds}
        else:
            raise ValueError(f"unknown model {key!r}; Table 2 has {', '.join(TABLE2)}")
        full = len(res["z"]) == len(d)
        res["z_test"] = res["z"][d.test] if full else res["z"]
        res.pop("margin", None)
        if terminal or not full:
            del res["z"]
        self._parts[key] = res
        return res

    # ---------------------------------------------------------------- tables

    _DEPS: dict[str, tuple[str, ...]] = {
        "K0": (), "K1": ("K0",), "K2": ("K1",), "K3": ("K2",), "DeepFM": (),
        "NNres+GBDT": ("DeepFM",), "LR": (), "FM": (), "GBDT+LR": ("K0",),
        "GBDT2DNN": ("K0",), "GBDT2DeepFM": ("K0",), "GBDT+DeepFM": ("K0", "DeepFM"),
    }

    @classmethod
    def pieces(cls, models: tuple[str, ...], ks: tuple[int, ...]) -> list[str]:
        """The fitted pieces (trees or learners) the given rows need, in fitting order."""
        out: list[str] = []

        def need(key: str) -> None:
            for dep in cls._DEPS[key]:
                need(dep)
            if key not in out:
                out.append(key)

        for m in models:
            need(cls._TABLE2_KEY.get(m, m))
        for k in ks:
            need(f"K{k}")
        return [p for p in out if p != "GBDT+DeepFM"]  # a blend: nothing to train

    def close(self) -> None:
        """Stop the tree stages' background machinery, if any."""
        self.kchain.close()
        self.nnchain.close()

    _TABLE2_KEY = {"GBDT": "K0", "GBDTRes+NN": "K1"}
    _CHAINS = {
        "LR": ["lr"], "FM": ["fm"], "GBDT": ["trees"], "DeepFM": ["deepfm"],
        "GBDT+LR": ["trees -> leaf indices", "lr"], "GBDT2DNN": ["trees -> score field", "dnn"],
        "GBDT2DeepFM": ["trees -> score field", "deepfm"],
        "GBDT+DeepFM": ["trees | deepfm", "blend"], "NNres+GBDT": ["deepfm", "trees"],
        "GBDTRes+NN": ["trees", "deepfm"],
    }

    def row(self, name: str) -> dict[str, Any]:
        """One Table 2 row: ``{"model", "auc", "logloss", "seconds", "chain", ...}``."""
        res = self.part(self._TABLE2_KEY.get(name, name))
        out: dict[str, Any] = {"model": name}
        out.update(metrics(res["z_test"], self.y_test))
        out["seconds"] = round(float(res["total"]), 3)
        chain = list(self._CHAINS[name])
        if name == "GBDT2DNN":
            chain[-1] = res.get("kind", "deepfm")
        out["chain"] = chain
        if "best_epoch" in res:
            out["best_epoch"] = res["best_epoch"]
        if "weights" in res:
            out["blend_weights"] = res["weights"]
        return out

    def table2(self, models: tuple[str, ...] = TABLE2) -> list[dict[str, Any]]:
        """Table 2 rows: ``{"model", "auc", "logloss", "seconds", "chain", ...}``."""
        if "GBDT+DeepFM" in models:
            self.part("K0")  # trees before DeepFM, so DeepFM's epochs also trace the blend
        return [self.row(m) for m in models]

    def table3(self, ks: tuple[int, ...] = TABLE3_K) -> list[dict[str, Any]]:
        """Table 3: ``{"K", "auc", "logloss", "seconds", "chain"}`` for each K."""
        kinds = self.kchain.kinds
        out = []
        for k in ks:
            res = self.part(f"K{k}")
            row: dict[str, Any] = {"K": k}
            row.update(metrics(res["z_test"], self.y_test))
            row["seconds"] = round(float(res["total"]), 3)
            row["chain"] = list(kinds[:k + 1])
            out.append(row)
        return out

    def convergence(self) -> dict[str, list[dict[str, Any]]]:
        """Test AUC / logloss after every epoch (the paper's Fig. 3) of the fitted models."""
        out: dict[str, list[dict[str, Any]]] = {}
        sources = {"DeepFM": "DeepFM", "GBDT2DeepFM": "GBDT2DeepFM", "GBDTRes+NN": "K1"}
        for name, key in sources.items():
            if key in self._parts:
                out[name] = [_curve_point(h) for h in self._parts[key]["history"]]
        if "DeepFM" in self._parts:
            out["GBDT+DeepFM"] = [{"epoch": h["epoch"], **h["blend_test"]}
                                  for h in self._parts["DeepFM"]["history"] if "blend_test" in h]
        return {k: out[k] for k in CONVERGENCE if k in out}


def _curve_point(h: dict[str, Any]) -> dict[str, Any]:
    return {k: h[k] for k in ("epoch", "auc", "logloss", "valid_logloss") if k in h}


def booster_of(stage: Any) -> Any:
    """The LightGBM booster inside a fitted ``TreeStage`` (GBDT+LR reads its leaves)."""
    for attr in ("booster", "booster_", "_booster"):
        b = getattr(stage, attr, None)
        if b is not None and hasattr(b, "predict"):
            return b
    raise AttributeError("TreeStage exposes no fitted LightGBM booster (expected .booster)")


def default_config(quick: bool, seed: int) -> tuple[ModelConfig, FitOptions]:
    """Offline knobs: the paper's protocol (mini-batch Adam on every parameter, numbers as
    they are), smaller under ``--quick``."""
    paper = {"row_optimizer": "adam", "standardize": False, "seed": seed}
    if quick:
        cfg = ModelConfig(n_trees=60, num_leaves=31, tree_learning_rate=0.15, bits=18, k=8,
                          hidden=(64, 64), lr=2e-3, **paper)
        return cfg, FitOptions(epochs=2, patience=1, batch_size=1024, seed=seed)
    cfg = ModelConfig(n_trees=300, num_leaves=63, tree_learning_rate=0.1, bits=20, k=16,
                      hidden=(128, 128), lr=1e-3, l2=1e-5, **paper)
    return cfg, FitOptions(epochs=8, patience=2, batch_size=1024, seed=seed)
