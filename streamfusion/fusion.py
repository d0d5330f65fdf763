"""The chain of stages: ``z(x) = sum_k margin_k(x)``, ``p(x) = sigmoid(z(x))``.

Every model streamfusion runs is a ``Chain``: trees alone, a residual learner alone, ResFusion
(trees then DeepFM), NNres+GBDT (DeepFM then trees fitted through ``init_score``) and the
paper's Table 3 iterations (trees, +DeepFM, +trees, +DeepFM). Each stage learns the residual of
the stages before it: a residual stage minimises ``logloss(y, sigmoid(z_prev + m))`` and a tree
stage after the first is fitted with ``init_score = z_prev``. A chain of one tree stage and
others scores with a blend of the two, ``a * trees + b * rest + c`` (``stages.blend``):
learned online, and refitted at the end of a stream.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from streamfusion.features import Batch
from streamfusion.stages.blend import LiveBlend
from streamfusion.stages.residual import ResidualLearner
from streamfusion.stages.trees import SLOW_FIT_ROWS, TreeStage

MODELS = ("resfusion", "gbdt", "fm", "deepfm", "dnn", "lr", "nnres-gbdt")
RESIDUAL_KINDS = ("fm", "deepfm", "dnn", "lr")


# An event moves each of its fields' first-order weights, so a fixed step moves its margin in
# proportion to the field count (Vowpal Wabbit's normalised updates divide by the squared norm
# of the features for the same reason): the step is ROW_STEP / fields, 0.05 at Avazu's 23
# fields as before (a number column is two fields, its value and its bin). Progressive AUC,
# 0.05 for every log -> ROW_STEP / fields: Criteo sample (52 fields) 0.7242 -> 0.7261,
# generated Criteo 1M (52) 0.6913 -> 0.6942, Adult (19) 0.9142 -> 0.9145, the Avazu sample and
# generated Avazu (23) unchanged. Fixed steps instead: 0.03 / 0.08 gave the Criteo sample
# 0.7266 / 0.7171 and the Avazu sample 0.6791 / 0.6827; 0.0435 / 0.061 generated Avazu 0.7326
# / 0.7281, 0.0256 / 0.0295 / 0.036 generated Criteo 0.6925 / 0.6938 / 0.6926
ROW_STEP = 1.15
# The fixed step (ROW_STEP / 23) where events fill a varying number of learner slots
# (ModelConfig.for_input): the empty slots would count as fields
ROW_LR = 0.05
# Settings a saved config (or a checkpoint's flags) may predate whose default has changed
# since: how such runs behaved (no pair or field weights, one step per mini-batch, Adam steps
# whatever a step's size, the plain sum until the end of a stream).
CONFIG_BEFORE = {"pair_weights": False, "field_weights": False, "step_rows": 0,
                 "adam_batch": 0, "live_blend": False, "tree_shrinkage": 1.0}


@dataclass
class ModelConfig:
    """Every knob of a chain, with the defaults of ``streamfusion replay``.

    Parameters
    ----------
    model : str
        One of ``MODELS``. ``resfusion`` = trees then a ``residual`` learner.
    iterations : int or None
        Table 3's K: K + 1 alternating stages starting with trees (overrides ``model``).
    residual : str
        The residual learner inside ``resfusion`` / ``nnres-gbdt`` / iterations.
    extra : dict
        ``{"trees": {...}}``: further ``TreeStage`` arguments (``first_fit``,
        ``min_data_in_leaf``, ``warm_start``, ...) passed through unchanged.
    backfit : bool
        Online refits of a tree stage fit the labels given the margins of all the *other*
        stages (``init_score``), so new trees add to what the residual learner already knows
        instead of re-learning it (which shocks the fused margin at every swap). False: the
        first tree stage refits on the labels alone, as in the paper's batch setting.
    """

    model: str = "resfusion"
    iterations: int | None = None
    residual: str = "deepfm"
    # trees
    n_trees: int = 100
    num_leaves: int = 63
    # 0.1 overfits the window: the residual learner then pays for the trees' noise at every
    # refit (3M-event stream, progressive AUC 0.7351 at 0.1, 0.7369 at 0.05 and at 0.03)
    tree_learning_rate: float = 0.05
    refit_every: int = 500_000
    first_fit: int = 1_000
    window: int = 200_000
    drift: bool = True
    fade: int = 100_000  # a refit fades in over this many learned events (0: at once)
    backfit: bool = False  # True: 0.6817 vs 0.6895 progressive AUC on the 1M generated stream
    tree_threads: int = 1
    # residual learner
    bits: int = 20
    k: int = 8
    hidden: tuple[int, ...] = (128, 128)
    # Adam step of the residual's dense parameters and embeddings. 3e-3 was chosen with one
    # step per mini-batch of up to 1,024 events; steps of 256 (step_rows) take up to four times
    # the steps per event. Progressive AUC at 3e-3 / 2e-3 / 1.5e-3 / 1e-3: generated 1M Avazu
    # 0.7346 / 0.7363 / 0.7359 / 0.7338, generated Criteo 0.6956 / 0.6982 / 0.6991 / 0.7007
    # (7e-4: 0.7006), the Avazu sample 0.6830 / 0.6828 / 0.6832 / 0.6829, the Criteo sample
    # 0.7265 / 0.7282 / 0.7287 / 0.7288, Adult 0.9146 / 0.9145 / 0.9143 / 0.9141; 3M generated
    # Avazu 0.7469 -> 0.7494 at 1.5e-3. Chrono holdout AUC at 3e-3 -> 1.5e-3: the Avazu
    # sample 0.7219 -> 0.7232, the Criteo sample 0.7539 -> 0.7511, Adult 0.9295 -> 0.9293
    lr: float = 1.5e-3
    # AdaGrad first-order weights learn real logs fast (Criteo sample 0.7124 -> 0.7205
    # progressive AUC), Adam embeddings keep up with a drifting stream (1M generated: AdaGrad
    # embeddings 0.6895, Adam 0.7153)
    row_optimizer: str = "mixed"
    # AdaGrad step of the first-order weights; None: ROW_STEP / the learner's fields
    row_lr: float | None = None
    emb_lr: float = 0.005  # embeddings: 0.1 x Avazu's first-order step (0.02-0.3 x tried)
    # DeepFM's FM part weights each pair of fields (FwFM), the weights stepped at pair_lr:
    # generated Avazu progressive AUC 1M 0.7155 -> 0.7230, 3M 0.7355 -> 0.7443; the real
    # samples within -0.0003..+0.0008. pair_lr 0.0009 / 0.003 / 0.009 / 0.09 gave 1M 0.7162 /
    # 0.7170 / 0.7211 / 0.7222 (3M 0.7347 / 0.7366 / 0.7394 / 0.7402). Per-field scales
    # instead (pair weight s_f s_g) gained at 1M (0.7181) but lost at 3M (0.7345)
    pair_weights: bool = True
    # with pair weights, a learned weight on each field's first-order term too (FwFM's
    # linear part), stepped at pair_lr: _learner.FIELD_WEIGHTS has the figures
    field_weights: bool = True
    pair_lr: float = 0.03
    # an Adam step learns from at most 256 events (batches reach 1,024): a step moves each
    # weight by about lr whatever its size (from adam_batch events up), so more steps learn
    # more in one pass. Progressive AUC, generated 1M Avazu / Criteo: steps of 1,024 0.7225 /
    # 0.6684, 512 0.7267 / 0.6756, 256 0.7296 / 0.6832, 128 0.7285 / 0.6805; 3M Avazu 0.7443
    # -> 0.7455. Batches of the click-log samples stay at or below 256 events, so they learn
    # as before.
    step_rows: int = 256
    # a step on fewer learned events than this scales lr and pair_lr by sqrt(events /
    # adam_batch), the square-root rule for gradient noise: lr was chosen with batches of
    # 32, and the schedule's batches of 16 (online.schedule.MIN_BATCH) or a small poll of
    # labels (serve) step less far. Mean of seeds 0-2 with batches of 16, unscaled / scaled:
    # generated 1M Criteo, deepfm alone, progressive AUC of random-holdout runs 0.6917 /
    # 0.6963 (batches of 32: 0.6990); the Criteo sample's chrono holdout 0.7624 / 0.7658
    # (0.7642)
    adam_batch: int = 32
    standardize: bool = True  # numbers as running z-scores for the learner
    # trees also split on categorical codes of each field's most frequent values (LightGBM
    # categorical features; 0: counts only)
    tree_codes: int = 0
    # the end-of-stream refit also tries codes of each field's 64 most frequent values and
    # keeps them when they win on the held-back rows (Criteo sample, trees alone: 0.7427 ->
    # 0.7593 chrono-holdout AUC; batch LightGBM on native categoricals 0.7591)
    tree_end_codes: int = 64
    # one tree stage and others score as a * trees + b * rest + c, learned online from each
    # batch as it was scored (stages.blend.LiveBlend); False: the plain sum until the end
    live_blend: bool = True
    # trees in front of a residual learner score prior + 0.5 * (trees - prior) online, and
    # the residual learns what they miss (TreeStage.shrinkage). Trees fitted on a few
    # thousand rows are noisy, and a residual learner that learns against their full margin
    # spends itself undoing that noise at every refit. Mean of seeds 0-2, progressive /
    # chrono-holdout AUC, 1 -> 0.5: Criteo sample 0.7259 / 0.7565 -> 0.7292 / 0.7647 (DeepFM
    # alone 0.7288 / 0.7631), Avazu sample 0.6830 / 0.7227 -> 0.6833 / 0.7227, Adult 0.9159 /
    # 0.9288 -> 0.9155 / 0.9291 (seeds 0-1), generated 1M Criteo 0.6984 / 0.7073 -> 0.6988 /
    # 0.7078, generated 1M Avazu 0.7363 / 0.7395 -> 0.7360 / 0.7395. At 0.3 / 0.7: Criteo
    # sample 0.7297 / 0.7671 and 0.7282 / 0.7620, Adult progressive 0.9143 and 0.9159.
    # Shrinking by the fit's rows instead, n / (n + 2000), cost generated Criteo 0.0025 (the
    # residual learned what early trees missed, then had to unlearn it)
    tree_shrinkage: float = 0.5
    l2: float = 1e-6
    threads: int = 1
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.residual not in RESIDUAL_KINDS:
            raise ValueError(f"unknown residual learner {self.residual!r}")
        if self.iterations is not None and not 0 <= self.iterations <= 8:
            raise ValueError(f"--iterations must be in 0..8, got {self.iterations}")
        if not 0.0 < self.tree_shrinkage <= 1.0:
            raise ValueError(f"tree_shrinkage must be in (0, 1], got {self.tree_shrinkage}")
        self.hidden = tuple(int(h) for h in self.hidden)

    def stage_kinds(self) -> list[str]:
        """The chain as a list of stage kinds: ``"trees"`` or a residual learner's name."""
        if self.iterations is not None:
            return ["trees" if i % 2 == 0 else self.residual for i in range(self.iterations + 1)]
        return {
            "resfusion": ["trees", self.residual],
            "gbdt": ["trees"],
            "fm": ["fm"],
            "deepfm": ["deepfm"],
            "dnn": ["dnn"],
            "lr": ["lr"],
            "nnres-gbdt": [self.residual, "trees"],
        }[self.model]

    def for_input(self, n_fields: int, *, slotted: bool = False) -> ModelConfig:
        """The config a chain over ``n_fields`` learner fields runs: the first-order step
        set where none is given, ``ROW_STEP / n_fields``, or the fixed ``ROW_LR`` where events
        fill a varying number of the fields (``slotted``: libsvm, libfm, libffm, river dicts),
        as ``ROW_STEP / n_fields`` would count empty slots."""
        if self.row_lr is not None:
            return self
        return replace(self, row_lr=ROW_LR if slotted else ROW_STEP / n_fields)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**{**CONFIG_BEFORE, **d})


def kept_settings(running: ModelConfig, asked: ModelConfig) -> list[str]:
    """The settings in which ``asked`` (a run's flags) differs from ``running``, the config of
    a model the run goes on from, which keeps its own: ``name running (asked: value)``.

    Examples
    --------
    >>> kept_settings(ModelConfig(lr=0.001), ModelConfig(lr=0.002, adam_batch=0))
    ['lr 0.001 (asked: 0.002)', 'adam_batch 32 (asked: 0)']
    """
    have, want = running.to_dict(), asked.to_dict()
    return [f"{k} {have[k]!r} (asked: {want[k]!r})" for k in want if have[k] != want[k]]


def build_stage(kind: str, position: int, cfg: ModelConfig, n_fields: int):
    """Create one stage; stage seeds are derived from the one ``seed``."""
    seed = (cfg.seed * 1_000_003 + position) % (2**31)
    kinds = cfg.stage_kinds()
    backfit = cfg.backfit and len(kinds) > 1
    if kind == "trees":
        return TreeStage(
            n_trees=cfg.n_trees,
            num_leaves=cfg.num_leaves,
            learning_rate=cfg.tree_learning_rate,
            refit_every=cfg.refit_every,
            first_fit=min(cfg.first_fit, cfg.refit_every),
            window=cfg.window,
            drift=cfg.drift,
            seed=seed,
            threads=cfg.tree_threads,
            use_init_score=position > 0 or backfit,
            fade=cfg.fade,
            codes=cfg.tree_codes,
            end_codes=cfg.tree_end_codes,
            # a refit (100 trees x 63 leaves on 200k rows) takes 2-3 s of the other core while
            # the stream learns 100k events a second: a slow fit (slow_fit_rows) swaps at most
            # three quarters of a period of stream after it starts (small fits half the
            # interval ahead, below either cap). At half a period the stream stopped to wait
            # at 9 of 12 swaps (about 4.5 s of a 3M-event replay; wall 28.7 -> 25.4 s at three
            # quarters, progressive / holdout AUC 0.7456 / 0.7255 -> 0.7455 / 0.7255;
            # generated 1M streams unchanged or +0.0002). An explicit early first fit is
            # honoured
            # the first and only tree stage, in front of residual learners: the blend scales
            # it (backfit trees correct the learners' margin instead: not measured shrunk)
            **{"shrinkage": (cfg.tree_shrinkage if position == 0 and not backfit
                             and len(kinds) > 1 and kinds.count("trees") == 1 else 1.0),
               "swap_lag": cfg.refit_every * 3 // 4,
               "min_fit_rows": min(1000, cfg.first_fit, cfg.refit_every),
               "slow_fit_rows": SLOW_FIT_ROWS if len(kinds) > 1 else 0,
               **cfg.extra.get("trees", {})},
        )
    pairs = cfg.pair_weights and kind == "deepfm"
    return ResidualLearner(
        model=kind,
        n_fields=n_fields,
        bits=cfg.bits,
        k=cfg.k,
        hidden=cfg.hidden,
        lr=cfg.lr,
        l2=cfg.l2,
        seed=seed,
        threads=cfg.threads,
        row_optimizer=cfg.row_optimizer,
        row_lr=cfg.for_input(n_fields).row_lr,  # as set, or spread over the fields
        emb_lr=cfg.emb_lr,
        standardize=cfg.standardize,
        pair_weights=pairs,
        field_weights=pairs and cfg.field_weights,
        pair_lr=cfg.pair_lr,
        step_rows=cfg.step_rows,
        adam_batch=cfg.adam_batch,
        prior=position == 0,  # a first stage starts at the click log-odds, as trees do
    )


class Chain:
    """A sequence of stages whose margins add up (scaled by ``blend``, when there is one).

    Parameters
    ----------
    stages : list
        ``TreeStage`` and ``ResidualLearner`` objects, in fitting order.
    kinds : list of str
        The kind of each stage (``"trees"``, ``"fm"``, ``"deepfm"``, ``"dnn"``, ``"lr"``).
    backfit : bool
        Tree refits fit the labels given every other stage's margin.
    live_blend : bool
        One tree stage and others score with the blend learned online (``LiveBlend``).

    Examples
    --------
    >>> chain = Chain.from_config(ModelConfig(model="fm", bits=10), n_fields=3)  # doctest: +SKIP
    >>> z = chain.margin(batch)  # doctest: +SKIP
    """

    def __init__(self, stages: list, kinds: list[str], backfit: bool = False,
                 live_blend: bool = False) -> None:
        if len(stages) != len(kinds) or not stages:
            raise ValueError("a chain needs one kind per stage and at least one stage")
        self.stages = stages
        self.kinds = kinds
        self.tree_stages = [s for s, k in zip(stages, kinds, strict=True) if k == "trees"]
        self.is_tree = np.array([k == "trees" for k in kinds])
        self.backfit = bool(backfit) and len(stages) > 1
        # blends need one tree stage and others: a * trees + b * the rest + c
        self.can_blend = len(self.tree_stages) == 1 and len(stages) > 1
        self.live = LiveBlend() if live_blend and self.can_blend else None
        # the blend as it scores: one weight per stage, then a bias (None: the plain sum);
        # a live blend starts at the plain sum's weights
        self.blend: list[float] | None = self._live_weights()

    @classmethod
    def from_config(cls, cfg: ModelConfig, n_fields: int) -> Chain:
        kinds = cfg.stage_kinds()
        return cls([build_stage(kind, i, cfg, n_fields) for i, kind in enumerate(kinds)], kinds,
                   cfg.backfit, cfg.live_blend)

    def margins(self, batch: Batch) -> np.ndarray:
        """Each stage's margin, float32 [n_stages, n]. Pure: changes no state."""
        out = np.empty((len(self.stages), len(batch)), dtype=np.float32)
        for s, stage in enumerate(self.stages):
            out[s] = stage.margin(batch)
        return out

    @staticmethod
    def fuse(margins: np.ndarray) -> np.ndarray:
        """The fused margin: the stage margins added in chain order, float32."""
        z = margins[0].copy()
        for m in margins[1:]:
            z += m
        return z

    def margin(self, batch: Batch) -> np.ndarray:
        """The fused margin ``z(x)``, float32 [n]. Pure."""
        return self.fuse(self.blended(self.margins(batch), self.blend))

    def blended(self, margins: np.ndarray, blend: list[float] | None) -> np.ndarray:
        """The stage margins as they score with ``blend`` (``self.blend``'s form): each scaled
        by its weight, the bias added to the first tree stage's (unchanged for None)."""
        if blend is None:
            return margins
        out = margins * np.asarray(blend[:-1], np.float32)[:, None]
        out[self.kinds.index("trees")] += np.float32(blend[-1])
        return out

    def _blend_list(self, a: float, b: float, c: float) -> list[float]:
        """``self.blend`` of ``a * trees + b * rest + c``."""
        return [a if kind == "trees" else b for kind in self.kinds] + [c]

    def _live_weights(self) -> list[float] | None:
        """The live blend's weights as ``self.blend`` takes them (None without one)."""
        return None if self.live is None else self._blend_list(*self.live.weights)

    def load_blend(self, blend: list[float] | None) -> None:
        """Score with a saved ``blend`` (a model file's, ``check_blend``'s form); a live blend
        learns on from its weights."""
        blend = self.check_blend(blend)
        if self.live is not None and blend is not None:
            rest = next(i for i, kind in enumerate(self.kinds) if kind != "trees")
            self.live.start_from(blend[self.kinds.index("trees")], blend[rest], blend[-1])
        self.blend = blend if self.live is None else self._live_weights()

    def _learn_blend(self, batch: Batch, margins: np.ndarray, mask: np.ndarray,
                     weight: np.ndarray | None) -> None:
        """The live blend learns the rows in ``mask`` (weighted by ``weight``, as the
        residual learners' losses are) from their stage margins as scored."""
        if self.live is None or not mask.any():
            return
        trees = self.is_tree
        self.live.update(margins[trees][0][mask], margins[~trees].sum(axis=0)[mask],
                         batch.y[mask], None if weight is None else weight[mask])
        self.blend = self._live_weights()

    def learn(self, batch: Batch, margins: np.ndarray, mask: np.ndarray,
              weight: np.ndarray | None = None) -> dict[str, float]:
        """Learn from the rows of ``batch`` selected by ``mask`` (labelled, not held out).

        ``margins`` are the stage margins computed *before* learning (test-then-train), so
        each stage sees the residual of the stages before it as they scored these rows,
        with the trees' click prior as these rows' labels move it (``_base_shifts``).
        ``weight`` (per row of ``batch``) weighs the residual learners' losses; the trees'
        window keeps the rows unweighted.
        """
        stats = {"loss": 0.0, "n": 0, "skipped": 0}
        sub = batch if mask.all() else batch.take(mask)
        z_prev = np.zeros(len(batch), dtype=np.float32)
        shifts = self._base_shifts(sub.y)
        for stage, kind, m, shift in zip(self.stages, self.kinds, margins, shifts, strict=True):
            if kind != "trees" and len(sub):
                res = stage.partial_fit(sub, z_prev[mask] + shift, sub.y,
                                        sample_weight=None if weight is None else weight[mask])
                stats["loss"], stats["n"] = float(res["loss"]), int(res["n"])
                stats["skipped"] += int(res["skipped"])
            z_prev += m
        self._observe_trees(batch, margins, mask)
        self._learn_blend(batch, margins, mask, weight)
        return stats

    def _base_shifts(self, y: np.ndarray) -> list[np.float32]:
        """For each stage, how far the margins of the tree stages before it move once they
        observe the labels ``y`` of the learned rows (``TreeStage.prior_shift``): a learner
        learns these rows against the trees' prior as their own labels move it; against the
        old one, both would learn the batch's click rate."""
        labels = np.asarray(y, np.float32)
        labels = labels[~np.isnan(labels)]
        out, shift = [], 0.0
        for stage, kind in zip(self.stages, self.kinds, strict=True):
            out.append(np.float32(shift))
            if kind == "trees":
                shift += stage.prior_shift(labels)
        return out

    def _observe_trees(self, batch: Batch, margins: np.ndarray, mask: np.ndarray) -> None:
        """Give each tree stage its window rows with the margin it is to be refit against:
        the stages before it, or with ``backfit`` every other stage."""
        z_prev = np.zeros(len(batch), dtype=np.float32)
        total = self.fuse(margins)
        for stage, kind, m in zip(self.stages, self.kinds, margins, strict=True):
            if kind == "trees":
                stage.observe(batch, total - m if self.backfit else z_prev.copy(), mask,
                              rest=total - m, own=m)
            z_prev += m

    def score_and_learn(self, batch: Batch, mask: np.ndarray,
                        weight: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
        """Score then learn ``batch`` in one pass, each event scored before the step that
        learns it.

        When every row is learned, a residual stage's margins come out of its own training
        steps (the forward pass they need anyway), so scoring costs nothing extra. A batch
        of one step gives bit for bit what ``margins`` then ``learn`` give. In a larger one
        a residual stage scores each step's events after the steps before theirs (the trees
        do not change within a batch), and the stages after it, and the trees' windows, take
        those margins: each event's base is what the chain scored it with (a learner learns
        it with the trees' prior as the batch's labels move it, as in ``learn``).
        """
        if not mask.all():
            margins = self.margins(batch)
            return margins, self.learn(batch, margins, mask, weight)
        margins = np.empty((len(self.stages), len(batch)), dtype=np.float32)
        stats = {"loss": 0.0, "n": 0, "skipped": 0}
        z_prev = np.zeros(len(batch), dtype=np.float32)
        shifts = self._base_shifts(batch.y)
        for s, (stage, kind) in enumerate(zip(self.stages, self.kinds, strict=True)):
            if kind == "trees":
                margins[s] = stage.margin(batch)
            else:
                res = stage.partial_fit(batch, z_prev + shifts[s], batch.y,
                                        sample_weight=weight, margin_out=margins[s])
                stats["loss"], stats["n"] = float(res["loss"]), int(res["n"])
                stats["skipped"] += int(res["skipped"])
            z_prev += margins[s]
        self._observe_trees(batch, margins, mask)
        self._learn_blend(batch, margins, mask, weight)
        return margins, stats

    def poll(self) -> bool:
        """Swap in finished tree refits (between mini-batches). True when any stage changed.
        New trees score with the live blend, which follows them from the next batch (it
        learns on from an end-of-stream blend); without one they drop an end-of-stream blend,
        which was fitted for the trees before them."""
        changed = any([bool(stage.poll()) for stage in self.tree_stages])
        if changed:
            self.blend = self._live_weights()
        return changed

    def finish(self) -> bool:
        """End of the stream: every tree stage installs its pending refit and refits its whole
        window (``TreeStage.finish``). A chain of one tree stage and other stages then scores
        with the blend fitted on that refit's held-back rows, or on a small window's every
        row out of fold (``stages.blend``): the residual learned against weaker trees is not
        counted twice (a live blend learns on from it). True when any stage changed."""
        changed = any([bool(stage.finish(blend=self.can_blend)) for stage in self.tree_stages])
        if changed:
            fitted = self.tree_stages[0].end_blend if self.can_blend else None
            if fitted is None:
                self.blend = self._live_weights()
            elif self.live is None:
                self.blend = self._blend_list(fitted.a, fitted.b, fitted.c)
            else:
                self.live.start_from(fitted.a, fitted.b, fitted.c)
                self.blend = self._live_weights()
        return changed

    @property
    def version(self) -> int:
        """Sum of the tree stages' versions: changes whenever any booster is swapped."""
        return sum(s.version for s in self.tree_stages)

    @property
    def refits(self) -> int:
        """Refits started."""
        return sum(s.refits for s in self.tree_stages)

    @property
    def refits_live(self) -> int:
        """Refits that went live (a swap is a version)."""
        return self.version

    @property
    def refits_rejected(self) -> int:
        """Refits the guard kept from going live."""
        return sum(s.rejected for s in self.tree_stages)

    def close(self) -> None:
        for stage in self.tree_stages:
            stage.close()

    def state_dict(self) -> dict[str, Any]:
        return {"kinds": list(self.kinds), "blend": self.blend,
                "live_blend": None if self.live is None else self.live.state_dict(),
                "stages": {str(i): s.state_dict() for i, s in enumerate(self.stages)}}

    def check_blend(self, blend: Any) -> list[float] | None:
        """A stored blend as ``self.blend`` takes it; ValueError unless None or one finite
        float per stage and a bias."""
        if blend is None:
            return None
        if (not isinstance(blend, list) or len(blend) != len(self.stages) + 1
                or not all(isinstance(v, float) and np.isfinite(v) for v in blend)):
            raise ValueError(f"the chain's blend must be {len(self.stages) + 1} finite floats, "
                             f"got {blend!r}")
        return list(blend)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state.get("kinds", [])) != list(self.kinds):
            raise ValueError(
                f"checkpoint holds a chain of {state.get('kinds')}, this model is {self.kinds}")
        # Callers load into a freshly built chain (OnlineModel.from_state) so a stage that
        # refuses its state never leaves a half-loaded model in service.
        missing = [str(i) for i in range(len(self.stages)) if str(i) not in state["stages"]]
        if missing:
            raise ValueError(f"checkpoint lacks stage states {missing}")
        blend = self.check_blend(state.get("blend"))
        live = None
        if self.live is not None:
            if state.get("live_blend") is None:
                raise ValueError("checkpoint lacks the live blend's state")
            live = LiveBlend()
            live.load_state_dict(state["live_blend"])
        for i, stage in enumerate(self.stages):
            stage.load_state_dict(state["stages"][str(i)])
        self.blend = blend
        if live is not None:  # it scores with what it learns with
            self.live = live
            self.blend = self._live_weights()
