"""The tree stage: LightGBM refit on a sliding window, scored by the compiled evaluator.

This is the only module that imports lightgbm. The stage keeps the last ``window`` learnable
rows in preallocated ring buffers, refits every ``refit_every`` observed rows (earlier when
river's ADWIN sees the stage's mini-batch logloss drift) in a background thread on a snapshot of
the window, and swaps the new trees in at a deterministic point: the first ``poll()`` after
``swap_lag`` more observed rows, and fades them in over the next ``fade`` rows. Whatever the
thread timing, a single-threaded run therefore replays bit for bit.

Each refit early-stops on the newest ``valid_fraction`` of its window and goes live only if it
is not worse there than the live model (a guarded swap): both are scored on rows neither was
fitted on. ``finish()`` at the end of a stream fits the whole window once more in place of a
pending refit (which it cancels), or when enough new rows arrived since the last one, so a
replay's final model has seen its data.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import lightgbm as lgb
import numpy as np
from lightgbm.basic import _LIB, _safe_call
from river.drift import ADWIN

from streamfusion._trees import TreeEnsemble
from streamfusion.evaluate import logloss_from_margin
from streamfusion.stages import click_logodds, state_config
from streamfusion.stages.blend import Blend, fit_blend

FORMAT = "streamfusion.TreeStage"
FORMAT_VERSION = 4  # 2: the fade-in of the last swap; 3: offsets, guard, rejected refits;
# 4: the other stages' margins of the window rows, the end refit's codes
ADWIN_CLOCK = 32  # ADWIN checks for a cut every 32 values (river's default)
DRIFT_LOSS_CAP = 4.0  # per-row logloss clipped here before ADWIN (which wants [0, 1])
# Config keys a checkpoint must agree on (threads is machine-specific and may differ).
_STRUCTURE = ("n_trees", "num_leaves", "learning_rate", "refit_every", "window", "drift",
              "seed", "use_init_score", "min_data_in_leaf", "feature_fraction", "lambda_l2",
              "first_fit", "min_fit_rows", "warm_start", "warm_trees", "max_trees",
              "drift_delta", "drift_min_gap", "drift_samples", "fade", "valid_fraction",
              "guard", "codes", "end_codes", "leaf_rows")
MIN_VALID_ROWS = 100  # fewer newest rows than this cannot early-stop or judge a swap
# a window of n rows grows trees of at most n / LEAF_ROWS leaves: small windows overfit (click
# log samples: 0.7252 / 0.6838 progressive AUC on Criteo / Avazu, uncapped 0.7213 / 0.6819)
LEAF_ROWS = 200
# a window refit on at least this many rows trains on quantized gradients (LightGBM 4's
# use_quantized_grad, leaves renewed with the exact gradients): 3M generated events, wall
# 56.1 -> 51.8 s, progressive / holdout AUC 0.7353 / 0.7222 -> 0.7355 / 0.7241. Small fits are
# quick already, and on a few thousand rows the rounding is noise the trees could fit.
QUANTIZE_ROWS = 100_000
# a refit of at least this many rows takes seconds of one core, longer than the half interval
# of stream it has while the schedule ramps up (64k-256k rows by default): in a chain with a
# residual learner it swaps a whole interval after its start instead of half (still at most
# swap_lag, so later refits are unchanged), and the stream stops less often at the swap
# point to wait for it (3M generated events: waits 3.6 -> 2.0 s; progressive AUC 0.7443
# either way, 1M 0.7230 -> 0.7225). Trees alone are the whole model and go live sooner (1M:
# 0.6600 at half an interval, 0.6541 at a whole one). Every window of the click-log samples
# is smaller; a whole interval for every refit hurt them (Criteo sample chrono-holdout AUC
# 0.7467 -> 0.7418).
SLOW_FIT_ROWS = 50_000
# On a window of at most FOLD_BLEND_ROWS rows the end-of-stream blend is fitted on every
# window row, the trees' margins out of fold (BLEND_FOLDS chronological folds, each scored by
# trees fitted on the others), instead of on the held-back 10% alone (at most 2,000 rows).
# Holdout AUC, mean of seeds 0-4, held-back rows -> 5 folds: chrono, the Criteo sample
# 0.7476 -> 0.7582 (higher at every seed; at seed 0 its 900 held-back rows gave the residual
# 1.3 times the trees' weight, the whole window 0.8 times), the Avazu sample 0.7212 -> 0.7218;
# random, 0.7563 -> 0.7575 and 0.7193 -> 0.7195. Folds early-stopped on themselves instead of
# growing the end refit's tree count: 0.7583, 0.7204; 0.7568, 0.7182. A larger window holds
# back thousands of rows, enough for three numbers (Adult, 44k rows, 4,400 held back: the
# same chrono AUC either way); the threshold rests on those two sizes.
FOLD_BLEND_ROWS = 20_000
BLEND_FOLDS = 5


class RefitCancelled(Exception):
    """Raised inside a refit that was cancelled because nothing will use its trees."""


class CodeTable:
    """Categorical codes for the trees, fitted on one refit's rows.

    For each learner field whose hashed rows vary, the ``k`` most frequent rows of the fit get
    the codes 0..k-1 and every other value the code k; the trees see the codes as LightGBM
    categorical features beside the dense columns. Counts alone cannot single out a value
    (the Criteo sample: batch LightGBM on counts 0.741 AUC, with 64 codes per field 0.760).

    Examples
    --------
    >>> idx = np.array([[5, 1], [5, 2], [7, 3], [5, 4]], np.int32)
    >>> t = CodeTable.fit(idx, 1)
    >>> t.fields.tolist(), t.transform(idx).tolist()
    ([0, 1], [[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    """

    def __init__(self, fields: np.ndarray, keys: list[np.ndarray]) -> None:
        self.fields = np.asarray(fields, np.int64)
        self.keys = [np.asarray(k, np.int32) for k in keys]  # sorted, per field

    @classmethod
    def fit(cls, indices: np.ndarray, k: int) -> CodeTable:
        fields, keys = [], []
        for f in range(indices.shape[1] if k > 0 else 0):
            rows, counts = np.unique(indices[:, f], return_counts=True)
            if len(rows) < 2:
                continue  # a numeric field (one hashed row) or a constant: nothing to code
            top = rows[np.argsort(-counts, kind="stable")[:k]]
            fields.append(f)
            keys.append(np.sort(top))
        return cls(np.asarray(fields, np.int64), keys)

    @property
    def width(self) -> int:
        return len(self.keys)

    def transform(self, indices: np.ndarray) -> np.ndarray:
        """float32 [n, width]: each coded field's code (k = any other value)."""
        out = np.empty((len(indices), self.width), np.float32)
        for j, (f, keys) in enumerate(zip(self.fields.tolist(), self.keys, strict=True)):
            col = indices[:, f]
            pos = np.searchsorted(keys, col).clip(0, len(keys) - 1)
            out[:, j] = np.where(keys[pos] == col, pos, len(keys))
        return out

    def to_state(self) -> dict[str, Any]:
        return {"fields": self.fields.copy(),
                "lengths": np.array([len(k) for k in self.keys], np.int64),
                "keys": np.concatenate(self.keys) if self.keys else np.zeros(0, np.int32)}

    @classmethod
    def from_state(cls, state: Any, n_fields: int | None) -> CodeTable:
        """Rebuild from ``to_state``; raises ValueError on any inconsistency."""
        try:
            fields, lengths, keys = (np.asarray(state[k]) for k in ("fields", "lengths", "keys"))
        except (TypeError, KeyError) as exc:
            raise ValueError(f"tree stage code table is malformed: {exc!r}") from None
        if (fields.ndim != 1 or lengths.shape != fields.shape or keys.ndim != 1
                or keys.dtype != np.int32 or (lengths < 1).any() or lengths.sum() != len(keys)
                or (n_fields is not None and len(fields) and not 0 <= fields.min() <= fields.max()
                    < n_fields)):
            raise ValueError("tree stage code table arrays disagree")
        return cls(fields, np.split(keys, np.cumsum(lengths)[:-1]) if len(fields) else [])


def _features(dense: np.ndarray, indices: np.ndarray | None,
              codes: CodeTable | None) -> np.ndarray:
    """The trees' input: the dense columns, then the code columns when a table is given."""
    if codes is None or codes.width == 0:
        return dense
    if indices is None:
        raise ValueError("these trees split on categorical codes: the batch needs indices")
    return np.hstack([np.asarray(dense, np.float32), codes.transform(indices)])


def _fit_input(dense: np.ndarray, indices: np.ndarray | None,
               codes: CodeTable | None) -> tuple[np.ndarray, list[int]]:
    """A fit's input (``_features``) and its categorical columns: the codes, after the
    dense ones."""
    XF = _features(dense, indices, codes)
    return XF, list(range(dense.shape[1], XF.shape[1]))


def _offset(y: np.ndarray, z: np.ndarray) -> float:
    """The constant ``c`` with ``mean(sigmoid(z + c)) = mean(y)`` (Newton steps, smoothed).

    A fit with ``init_score`` does not boost from the average: this constant stands in for it,
    so a stage fitted on other stages' margins still starts from the click rate."""
    c = 0.0
    target = (float(np.sum(y)) + 0.5) / (len(y) + 1.0)
    for _ in range(20):
        p = 1.0 / (1.0 + np.exp(-(z + c)))
        step = (target - float(p.mean())) / max(float(np.mean(p * (1 - p))), 1e-6)
        c += float(np.clip(step, -5.0, 5.0))
        if abs(step) < 1e-7:
            break
    return c


def _sample_rows(n: int, k: int) -> np.ndarray:
    """``k`` evenly spaced rows of ``n`` (all of them when ``n <= k``)."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).astype(np.int64))


def _drift_values(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Per-row logloss, clipped and scaled into [0, 1] for ADWIN.

    ADWIN's bound assumes values in [0, 1] and gains power with their number: one mean per
    mini-batch would need hundreds of batches to see even a large jump.
    """
    zz = z.astype(np.float64)
    loss = np.logaddexp(0.0, zz) - y * zz
    return np.minimum(loss, DRIFT_LOSS_CAP) / DRIFT_LOSS_CAP


class TreeStage:
    """LightGBM trees refit online on a sliding window; margins from ``streamfusion._trees``.

    Parameters
    ----------
    n_trees, num_leaves, learning_rate : LightGBM size and step. A refit early-stops on the
        window's newest rows (``valid_fraction``) after ``n_trees // 10`` trees (at least 5)
        without a better loss there. On a full window it grows at most ``n_trees``; a window
        not yet full may grow more, up to ``max_trees``, while rows x trees stays within a
        full window's fit (Adult, 44k rows: 0.9153 / 0.9290 -> 0.9164 / 0.9301 progressive /
        chrono-holdout AUC, mean of seeds 0-2; batch LightGBM stopped at 333 trees; the
        click-log samples stop before 100 and are unchanged). Without enough newest rows to
        stop on (``MIN_VALID_ROWS``), a fit grows ``n_trees``.
    refit_every : int
        Refit after this many observed (learnable) rows since the last refit started.
    window : int
        The refit uses the last ``window`` learnable rows.
    drift : bool
        Refit earlier when river's ADWIN detects a change in the stage's logloss (at least
        ``drift_min_gap`` rows after the last refit). ADWIN gets the clipped per-row logloss
        of ``drift_samples`` evenly spaced rows of each mini-batch.
    seed : int
        LightGBM seeds (feature fraction); fits are deterministic (``deterministic=True``).
    threads : int
        LightGBM training threads and evaluator threads; results do not depend on it for the
        evaluator, and LightGBM with a fixed thread count is deterministic.
    use_init_score : bool
        Fit on the residual of the stages before (``init_score = z_prev`` of the window rows);
        for any tree stage after the first in a chain. Such a stage's margin is 0 before its
        first fit; a first stage's is the smoothed log-odds of the clicks seen so far.
    swap_lag : int, optional
        Observed rows between the start of a refit and its swap (default ``refit_every // 10``).
        It is at most half the interval to the next refit (the whole interval for a window of
        ``slow_fit_rows`` or more), which matters while the schedule ramps up (see
        ``first_fit``): early trees see little data and should go live soon. Not part of a
        state: a state loads into a stage of another lag.
    first_fit : int, optional
        Observed rows before the first fit (default ``refit_every``). The interval between
        scheduled refits then doubles from ``first_fit`` up to ``refit_every``: the first
        window covers only the start of the stream (part of a day), and refits on small
        windows are cheap.
    warm_start : bool
        Against refit shocks: continue from the live booster (LightGBM ``init_model``) with
        ``warm_trees`` new trees on the window instead of a fresh fit, so that the new model
        agrees with the old one where the window says little. Once the model would exceed
        ``max_trees`` trees, the next refit is a fresh one. ``max_trees`` (default
        ``3 * n_trees``) also bounds a fresh fit of a window not yet full.
    fade : int
        Observed rows over which a swapped-in model fades in: its margin is
        ``old + w * (new - old)`` with ``w`` rising linearly from 0 to 1 (0: switch at once),
        over at most the interval to the next scheduled refit.
        The residual stages learned against the old margin; a sudden switch costs them a jump
        in loss at every refit. A swap during a fade starts from the model that was fading in.
    background : bool
        Fit in a background thread (default); False fits inside ``observe`` (same results).
    valid_fraction : float
        Each refit holds back the newest share of its window: LightGBM early-stops on it, and
        the guard compares the new and the live model on it. 0 fits the whole window.
    guard : bool
        A refit goes live only if its logloss on the held-back rows is not above the live
        model's (rejected refits are counted, the live model stays).
    leaf_rows : int
        A fit on n rows grows at most ``n // leaf_rows`` leaves (at least 4).
    quantize_rows : int
        A refit of at least this many window rows trains on quantized gradients (LightGBM's
        ``use_quantized_grad`` with ``quant_train_renew_leaf``): faster, as accurate at that
        size; 0: never.
    slow_fit_rows : int
        A refit of at least this many window rows swaps a whole interval after its start, at
        most ``swap_lag`` (``SLOW_FIT_ROWS`` in a chain with a residual learner, whose stream
        need not wait for it); 0: never.
    codes : int
        Each refit also splits on categorical codes of the ``codes`` most frequent values of
        every categorical learner field (``CodeTable``; needs ``batch.indices``); 0: off.
    end_codes : int
        ``finish`` fits the whole window both with ``codes`` and with ``end_codes`` codes per
        field and keeps the better on the held-back rows (the same as ``codes``: one fit).
        Codes help batch trees on some logs and hurt on others (see ``CodeTable``); online,
        they shock the residual learner, so only the end refit tries them.
    shrinkage : float
        The trees score ``prior + shrinkage * (trees - prior)`` (``prior``: their margin
        before the first fit, the click log-odds): the shrinkage of a boosting stage, for
        trees in front of a residual learner (1: their plain margin). The residual learner
        then learns what the shrunk trees miss instead of undoing each small window's noise,
        and the blend scales the two (``end_blend`` is fitted on the shrunk margins).

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> rng = np.random.default_rng(0)
    >>> stage = TreeStage(n_trees=5, num_leaves=4, refit_every=500, window=1000,
    ...                   min_data_in_leaf=10, min_fit_rows=100)
    >>> X = rng.random((500, 3), dtype=np.float32)
    >>> b = SimpleNamespace(dense=X, y=(X[:, 0] > .5).astype(np.float32))
    >>> stage.observe(b, np.zeros(500, np.float32), np.ones(500, bool))
    >>> stage.wait(); stage.version, stage.refits
    (0, 1)
    >>> stage.observe(b, np.zeros(500, np.float32), np.ones(500, bool)); stage.poll()
    True
    >>> stage.margin(b).dtype
    dtype('float32')
    """

    def __init__(self, n_trees: int = 100, num_leaves: int = 63, learning_rate: float = 0.1,
                 refit_every: int = 100_000, window: int = 200_000, drift: bool = True,
                 seed: int = 0, threads: int = 1, use_init_score: bool = False,
                 min_data_in_leaf: int = 100, feature_fraction: float = 0.8,
                 lambda_l2: float = 1.0, swap_lag: int | None = None,
                 first_fit: int | None = None, min_fit_rows: int = 1000,
                 warm_start: bool = False, warm_trees: int | None = None,
                 max_trees: int | None = None, drift_delta: float = 0.002,
                 drift_min_gap: int | None = None, drift_samples: int = 64,
                 fade: int = 0, background: bool = True, valid_fraction: float = 0.1,
                 guard: bool = True, codes: int = 0, end_codes: int = 0,
                 leaf_rows: int = LEAF_ROWS, quantize_rows: int = QUANTIZE_ROWS,
                 slow_fit_rows: int = 0, shrinkage: float = 1.0) -> None:
        if refit_every < 1 or window < 1 or n_trees < 1 or num_leaves < 2 or fade < 0:
            raise ValueError("refit_every, window, n_trees must be >= 1, num_leaves >= 2 and "
                             "fade >= 0")
        if not 0.0 < shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage}")
        self.n_trees = int(n_trees)
        self.num_leaves = int(num_leaves)
        self.learning_rate = float(learning_rate)
        self.refit_every = int(refit_every)
        self.window = int(window)
        self.drift = bool(drift)
        self.seed = int(seed)
        self.threads = max(1, int(threads))
        self.use_init_score = bool(use_init_score)
        self.min_data_in_leaf = int(min_data_in_leaf)
        self.feature_fraction = float(feature_fraction)
        self.lambda_l2 = float(lambda_l2)
        self.swap_lag = int(refit_every // 10 if swap_lag is None else swap_lag)
        self.first_fit = int(refit_every if first_fit is None else first_fit)
        self.min_fit_rows = int(min_fit_rows)
        self.warm_start = bool(warm_start)
        self.warm_trees = int(max(1, n_trees // 5) if warm_trees is None else warm_trees)
        self.max_trees = int(3 * n_trees if max_trees is None else max_trees)
        self.drift_delta = float(drift_delta)
        self.drift_min_gap = int(refit_every // 4 if drift_min_gap is None else drift_min_gap)
        self.drift_samples = max(1, int(drift_samples))
        self.fade = int(fade)
        self.background = bool(background)
        if not 0.0 <= valid_fraction < 0.5:
            raise ValueError(f"valid_fraction must be in [0, 0.5), got {valid_fraction}")
        self.valid_fraction = float(valid_fraction)
        self.guard = bool(guard)
        self.codes = max(0, int(codes))
        self.end_codes = max(0, int(end_codes))
        self.leaf_rows = max(1, int(leaf_rows))
        self.quantize_rows = max(0, int(quantize_rows))
        self.slow_fit_rows = max(0, int(slow_fit_rows))
        self.shrinkage = float(shrinkage)
        self._reset_state()

    # -- configuration -------------------------------------------------------------------------
    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable); ``TreeStage(**config())``."""
        cfg = {k: getattr(self, k) for k in _STRUCTURE}
        cfg["threads"] = self.threads
        cfg["background"] = self.background
        # how a refit trains and when it swaps, not what a state holds: states and model
        # files from other settings load (a pending refit keeps its swap row), and their next
        # refits train and swap as this code does
        cfg["quantize_rows"] = self.quantize_rows
        cfg["slow_fit_rows"] = self.slow_fit_rows
        cfg["swap_lag"] = self.swap_lag
        cfg["shrinkage"] = self.shrinkage  # how the trees score: a state loads only into a
        # stage of the same shrinkage
        return cfg

    def lgb_params(self, rows: int | None = None) -> dict:
        """LightGBM parameters of a fit on ``rows`` rows (None: the configured sizes).

        Small windows get fewer leaves and smaller leaves, so early trees do not memorise;
        large ones train on quantized gradients (``quantize_rows``)."""
        leaves, min_leaf = self.num_leaves, self.min_data_in_leaf
        if rows is not None:
            leaves = int(min(leaves, max(4, rows // self.leaf_rows)))
            min_leaf = int(min(min_leaf, max(20, rows // 100)))
        params = {
            "objective": "binary", "num_leaves": leaves,
            "learning_rate": self.learning_rate, "min_data_in_leaf": min_leaf,
            "feature_fraction": self.feature_fraction, "lambda_l2": self.lambda_l2,
            "seed": self.seed, "feature_fraction_seed": self.seed, "deterministic": True,
            "force_row_wise": True, "num_threads": self.threads, "verbose": -1,
        }
        if rows is not None and self.quantize_rows and rows >= self.quantize_rows:
            params.update(use_quantized_grad=True, quant_train_renew_leaf=True)
        return params

    def _reset_state(self) -> None:
        self.booster: lgb.Booster | None = None
        self._ensemble: TreeEnsemble | None = None
        self.version = 0
        self.refits = 0          # refits started
        self.rejected = 0        # refits the guard kept from going live
        self.offset = 0.0        # constant added to the live booster's margin (init-score fits)
        self.n_seen = 0          # learnable rows observed
        self.clicks = 0
        self.since_refit = 0     # learnable rows since the last refit started (or since start)
        self._n_features: int | None = None
        self._X: np.ndarray | None = None
        self._I: np.ndarray | None = None  # learner indices of the window rows (codes)
        self._codes: CodeTable | None = None  # the live model's code table
        self._fade_codes: CodeTable | None = None
        self._y: np.ndarray | None = None
        self._z: np.ndarray | None = None
        self._r: np.ndarray | None = None  # the other stages' margins as they scored the rows
        # the blend fitted at the end of the stream (finish), or None
        self.end_blend: Blend | None = None
        self._pos = 0            # next ring slot
        self._count = 0          # filled slots
        self._adwin = self._new_adwin()
        self._adwin_history: list[float] = []  # values fed since the last swap (exact restore)
        self._drift_now = False
        self._pending: dict[str, Any] | None = None
        # the fade-in of the last swap: the model before it (None: the constant prior)
        self._fade_from: TreeEnsemble | None = None
        self._fade_booster: lgb.Booster | None = None
        self._fade_prior = 0.0   # the replaced model's constant: prior, or its offset
        self._fade_start = -1    # n_seen at the last swap; -1: no fade
        self._fade_len = 0

    def _new_adwin(self) -> ADWIN:
        return ADWIN(delta=self.drift_delta, clock=ADWIN_CLOCK)

    # -- scoring -------------------------------------------------------------------------------
    @property
    def prior(self) -> float:
        """The margin before the first fit."""
        return 0.0 if self.use_init_score else click_logodds(self.clicks, self.n_seen)

    def margin(self, batch: Any) -> np.ndarray:
        """The trees' score on ``batch.dense`` (and ``batch.indices`` when the trees split
        on codes), shrunk towards the prior by ``shrinkage``, float32 [n]; pure."""
        dense = batch.dense
        if self._ensemble is None:
            return np.full(dense.shape[0], self.prior, dtype=np.float32)
        indices = getattr(batch, "indices", None)
        m = self._ensemble.predict_margin(_features(dense, indices, self._codes),
                                          threads=self.threads).astype(np.float32)
        if self.offset:
            m += np.float32(self.offset)
        w = self.fade_weight
        if w < 1.0:
            old = np.full(dense.shape[0], self._fade_prior, dtype=np.float32)
            if self._fade_from is not None:
                old += self._fade_from.predict_margin(
                    _features(dense, indices, self._fade_codes),
                    threads=self.threads).astype(np.float32)
            m -= old
            m *= np.float32(w)
            m += old
        return self._shrunk(m, self.prior)

    def prior_shift(self, y: np.ndarray) -> float:
        """How far ``margin`` moves once the stage has observed the labelled rows ``y``:
        its click prior moves, and the margin with it (all the way before the first fit, by
        ``1 - shrinkage`` after). A learner after the trees learns these rows against the
        moved margin; against the old one, both would learn the batch's click rate."""
        if self.use_init_score or not len(y):
            return 0.0
        moved = click_logodds(self.clicks + int(np.sum(y)), self.n_seen + len(y))
        return (1.0 if self._ensemble is None else 1.0 - self.shrinkage) * (moved - self.prior)

    def _shrunk(self, m: np.ndarray, prior: float) -> np.ndarray:
        """``prior + shrinkage * (m - prior)`` (``m`` itself at shrinkage 1)."""
        if self.shrinkage == 1.0:
            return m
        p = np.asarray(prior, m.dtype)
        return p + np.asarray(self.shrinkage, m.dtype) * (m - p)

    @property
    def fade_weight(self) -> float:
        """The weight of the live model against the one it replaced (1 once faded in)."""
        if self._fade_start < 0 or self.n_seen - self._fade_start >= self._fade_len:
            return 1.0
        return (self.n_seen - self._fade_start) / self._fade_len

    # -- learning ------------------------------------------------------------------------------
    def _ensure_buffers(self, n_features: int) -> None:
        if self._X is None:
            self._n_features = n_features
            self._X = np.zeros((self.window, n_features), np.float32)
            self._y = np.zeros(self.window, np.float32)
            self._z = np.zeros(self.window, np.float32)
            self._r = np.zeros(self.window, np.float32)
        elif n_features != self._n_features:
            raise ValueError(f"batch has {n_features} tree features, the stage was built with "
                             f"{self._n_features}")

    def _push(self, X: np.ndarray, y: np.ndarray, z: np.ndarray, r: np.ndarray,
              indices: np.ndarray | None) -> None:
        n = len(y)
        if ((self.codes or self.end_codes) and indices is not None and self._I is None
                and self._count == 0):
            self._I = np.zeros((self.window, indices.shape[1]), np.int32)
        if self._I is not None and (indices is None or indices.shape[1] != self._I.shape[1]):
            raise ValueError("the tree window keeps learner indices: every batch needs them, "
                             "with the same number of fields")
        if n >= self.window:  # only the newest `window` rows survive
            X, y, z, r = X[-self.window:], y[-self.window:], z[-self.window:], r[-self.window:]
            indices = None if indices is None else indices[-self.window:]
            self._pos, n = 0, self.window
        first = min(n, self.window - self._pos)
        pairs = [(self._X, X), (self._y, y), (self._z, z), (self._r, r)]
        if self._I is not None:
            pairs.append((self._I, indices))
        for dst, src in pairs:
            dst[self._pos:self._pos + first] = src[:first]
            dst[:n - first] = src[first:]
        self._pos = (self._pos + n) % self.window
        self._count = min(self.window, self._count + n)

    def _snapshot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                 np.ndarray | None]:
        """Copy of the window in chronological order (X, y, z, rest, learner indices or
        None)."""
        if self._count < self.window:
            idx = np.arange(self._count)
        else:
            idx = (self._pos + np.arange(self.window)) % self.window
        return (self._X[idx], self._y[idx].astype(np.float64), self._z[idx].astype(np.float64),
                self._r[idx].astype(np.float64), None if self._I is None else self._I[idx])

    def observe(self, batch: Any, z_prev: np.ndarray, mask: np.ndarray | None = None,
                rest: np.ndarray | None = None, own: np.ndarray | None = None) -> None:
        """Add the learnable rows (``mask`` and a label) to the window; maybe start a refit.

        ``z_prev`` (float32 [n]) is the sum of the margins of the stages before this one, as
        they scored the rows; the window keeps it for ``use_init_score`` fits and the drift
        signal. ``rest`` (float32 [n], default ``z_prev``) is the sum of all the other
        stages' margins, for the end-of-stream blend. ``own`` (float32 [n]), when given, is
        ``margin(batch)`` as the caller already has it (the drift signal then costs no
        second evaluation of the trees).
        """
        y = np.asarray(batch.y, np.float32)
        keep = ~np.isnan(y)
        if mask is not None:
            keep &= np.asarray(mask, bool)
        if not keep.any():
            return
        X = np.asarray(batch.dense, np.float32)[keep]
        indices = getattr(batch, "indices", None) if self.codes or self.end_codes else None
        if indices is not None:
            indices = np.asarray(indices, np.int32)[keep]
        yk = y[keep]
        zk = np.asarray(z_prev, np.float32)[keep]
        rk = zk if rest is None else np.asarray(rest, np.float32)[keep]
        self._ensure_buffers(X.shape[1])
        if self.drift:
            # the loss of the chain up to and including these trees, on a few sampled rows
            idx = _sample_rows(len(yk), self.drift_samples)
            mine = (np.asarray(own, np.float32)[keep][idx] if own is not None else
                    self.margin(SimpleNamespace(
                        dense=X[idx], indices=None if indices is None else indices[idx])))
            self._feed_adwin(_drift_values(yk[idx], zk[idx] + mine))
        self._push(X, yk, zk, rk, indices)
        n = len(yk)
        self.n_seen += n
        self.clicks += int(yk.sum())
        self.since_refit += n
        self._maybe_refit()

    def _feed_adwin(self, values: np.ndarray) -> None:
        detected = False
        for v in values.tolist():
            self._adwin_history.append(v)
            self._adwin.update(v)
            detected |= bool(self._adwin.drift_detected)
        self._drift_now = detected

    def _maybe_refit(self) -> None:
        if self._pending is not None or self._count < self.min_fit_rows:
            return
        if not self._n_features:  # nothing to split on (e.g. libsvm without dense columns):
            return                # the stage keeps the click prior
        due = self.since_refit >= self._interval(self.refits)
        drifted = (self.drift and self._drift_now and self.booster is not None
                   and self.since_refit >= self.drift_min_gap)
        self._drift_now = False
        if due or drifted:
            self._start_refit("drift" if drifted and not due else "schedule")

    def _rounds(self, rows: int) -> int:
        """Most trees a fresh fit of ``rows`` rows may grow before early stopping on its
        newest rows ends it: ``n_trees`` on a full window, more on a smaller one, up to
        ``max_trees``, as long as rows x trees stays within a full window's fit (refits that
        take longer hold the stream up at their swap point: 3M generated events grew 100-182
        trees a refit on full windows without this bound, 1.27x the wall time). Once the
        window is full, a refit may thus grow fewer trees than a live model fitted on a smaller
        window; the guard keeps whichever is better on the newest rows (the end refit may
        grow as many as the live model). With ``warm_start``, ``n_trees``: warm starts add
        trees up to ``max_trees``."""
        if self.warm_start:
            return self.n_trees
        return max(self.n_trees,
                   min(self.max_trees, self.n_trees * self.window // max(rows, 1)))

    def _interval(self, refits: int) -> int:
        """Scheduled rows between the start of refit ``refits - 1`` and the next one."""
        if refits == 0:
            return self.first_fit
        return min(self.refit_every, self.first_fit << min(refits - 1, 40))

    def _start_refit(self, reason: str, lag: int | None = None) -> dict[str, Any]:
        """Start a refit of the window (in the background unless ``background`` is off)."""
        job, fit = self._refit_job(reason, lag)
        self._launch(job, fit, wait=not self.background)
        return job

    def _launch(self, job: dict[str, Any], fit: Any, wait: bool) -> None:
        self.refits += 1
        self.since_refit = 0
        self._pending = job
        if wait:
            fit()
        else:
            job["thread"] = threading.Thread(target=fit, name="streamfusion-refit", daemon=True)
            job["thread"].start()

    def _refit_job(self, reason: str, lag: int | None = None, codes: int | None = None,
                   blend: bool = False, window: tuple | None = None
                   ) -> tuple[dict[str, Any], Any]:
        """A refit of the window as a job and the function that fits it (changes no state).

        ``codes``: code count of the fit (default ``self.codes``, or ``end_codes`` once the
        live trees use them); ``blend``: also fit the end-of-stream blend on the held-back
        rows (``job["blend"]``); ``window``: a ``_snapshot()`` to fit (the fit only reads it,
        so fits side by side can share one).
        """
        X, y, z, rest, ind = self._snapshot() if window is None else window
        init = z if self.use_init_score else None
        if codes is None:  # after an end refit chose codes, later refits keep them
            live_coded = self._codes is not None and self._codes.width > 0
            codes = self.codes or (self.end_codes if live_coded else 0)
        n_valid = int(len(y) * self.valid_fraction)
        if n_valid < MIN_VALID_ROWS:
            n_valid = 0
        base = None
        rounds = self._rounds(len(y)) if n_valid else self.n_trees
        if reason == "end" and n_valid and self.booster is not None:
            # the guard compares the end refit with the live trees: it may grow as many
            # (a window not yet full allowed earlier fits more; online refits are bounded)
            rounds = max(rounds, min(self.max_trees, self.booster.num_trees()))
        if (self.warm_start and self.booster is not None
                and self.booster.num_trees() + self.warm_trees <= self.max_trees):
            base, rounds = self.booster, self.warm_trees
        if lag is None:
            # half way to the next refit: early fits go live soon, a fit has time to finish
            # (1M generated events, before pair weights: 0.7150 / 0.7157 / 0.7157 progressive
            # AUC at a full / a half / a quarter interval for every refit); a slow fit a
            # whole interval on (slow_fit_rows); swap_lag caps both
            ahead = self._interval(self.refits + 1)
            slow = self.slow_fit_rows and len(y) >= self.slow_fit_rows
            lag = min(self.swap_lag, ahead if slow else ahead // 2)
        job: dict[str, Any] = {"swap_at": self.n_seen + lag, "reason": reason,
                               "booster": None, "error": None, "thread": None,
                               "offset": 0.0, "accept": True, "loss": float("inf"),
                               "blend": None, "cancel": False, "n_codes": codes}
        # the live model as of now, for the guard (it cannot change before the swap: one
        # refit is pending at a time)
        live_offset, live_ensemble, prior = self.offset, self._ensemble, self.prior
        live_codes = self._codes
        base_offset = self.offset if base is not None else 0.0

        def fit() -> None:
            try:
                if job["cancel"]:
                    raise RefitCancelled
                cut = len(y) - n_valid
                valid = None
                vz = init[cut:] if init is not None else np.zeros(n_valid)
                off = 0.0
                if init is not None:
                    off = base_offset or _offset(y[:cut], init[:cut])
                    valid = (X[cut:], y[cut:], vz + off) if n_valid else None
                elif n_valid:
                    valid = (X[cut:], y[cut:], None)
                fit_init = None if init is None else init[:cut] + off
                # codes from the fitted rows; a warm start keeps the live model's codes
                table = (live_codes if base is not None else
                         CodeTable.fit(ind[:cut], codes) if ind is not None and codes else None)
                XF, cats = _fit_input(X, ind, table)
                if valid is not None:
                    valid = (XF[cut:],) + valid[1:]
                booster = self._train(XF[:cut], y[:cut], fit_init, rounds, base, valid, cats,
                                      stop=lambda: job["cancel"])
                job["booster"], job["offset"], job["codes"] = booster, off, table
                # compile the evaluator here too, off the stream's thread
                job["ensemble"] = TreeEnsemble.from_booster(booster)
                if n_valid:
                    yv, iv = y[cut:], None if ind is None else ind[cut:]
                    own = off + job["ensemble"].predict_margin(XF[cut:], threads=self.threads)
                    job["loss"] = logloss_from_margin(vz + own, yv)
                    if blend:
                        job["blend"] = fit_blend(self._shrunk(own, prior), rest[cut:], yv)
                # the guard judges the trees as fitted (raw margins, the same prior for both
                # sides); the shrinkage that scales them in the chain is not theirs
                if self.guard and n_valid:
                    old = vz + (np.full(n_valid, prior) if live_ensemble is None else
                                live_ensemble.predict_margin(
                                    _features(X[cut:], iv, live_codes), threads=self.threads)
                                + live_offset)
                    job["accept"] = job["loss"] <= logloss_from_margin(old, yv)
            except BaseException as exc:  # reported by poll(), in the caller's thread
                job["error"] = exc

        return job, fit

    def _train(self, X: np.ndarray, y: np.ndarray, init: np.ndarray | None, rounds: int,
               base: lgb.Booster | None, valid: tuple | None = None,
               categorical: list[int] | None = None, window: bool = True,
               stop: Callable[[], bool] | None = None) -> lgb.Booster:
        # a window's refit is sized to its rows; a one-shot batch fit takes the sizes as given
        params = self.lgb_params(len(y) if window else None)
        if np.count_nonzero(X) * 2 >= X.size:
            # mostly non-zero columns (counts, numbers, codes): LightGBM's sparse bins and
            # feature bundles only cost time, for the same trees (an end refit of 180k rows
            # with codes 5.1 -> 4.4 s); sparse libsvm columns keep them
            params.update(enable_sparse=False, enable_bundle=False)
        if stop is not None and stop():  # before binning, often most of a large refit's cost
            raise RefitCancelled
        merge = base is not None and init is not None
        if merge:
            # warm start over other stages' margins: LightGBM's init_model would replace them
            # by the live trees' scores, so fit on both and merge the boosters (LightGBM's own
            # LGBM_BoosterMerge), as init_model does
            init = init + base.predict(X, raw_score=True, num_threads=self.threads)
            if valid is not None:
                vx, vy, vinit = valid
                valid = (vx, vy, vinit + base.predict(np.asarray(vx, np.float32),
                                                      raw_score=True, num_threads=self.threads))
        ds = lgb.Dataset(X, y, init_score=init, params={"verbose": -1}, free_raw_data=True,
                         categorical_feature=categorical or "auto")
        kwargs: dict[str, Any] = {"callbacks": []}
        if stop is not None:
            def check(env: Any) -> None:  # between two trees: give up a refit nobody will use
                if stop():
                    raise RefitCancelled
            kwargs["callbacks"].append(check)
        if valid is not None:
            vx, vy, vinit = valid
            kwargs["valid_sets"] = [lgb.Dataset(np.asarray(vx, np.float32),
                                                np.asarray(vy, np.float64), init_score=vinit,
                                                reference=ds)]
            # patience: a tenth of the trees a fresh fit would grow on a full window (of the
            # new trees for a warm start), whatever more it may grow
            patience = max(5, (rounds if base is not None else self.n_trees) // 10)
            kwargs["callbacks"].append(lgb.early_stopping(patience, verbose=False))
        if base is not None and not merge:
            kwargs["init_model"] = base  # LightGBM continues the live trees
        booster = lgb.train(params, ds, num_boost_round=rounds, **kwargs)
        if valid is not None and booster.best_iteration > 0:
            booster = lgb.Booster(model_str=booster.model_to_string(
                num_iteration=booster.best_iteration))
        if merge:
            merged = lgb.Booster(model_str=booster.model_to_string())
            _safe_call(_LIB.LGBM_BoosterMerge(merged._handle, base._handle))
            booster = merged
        return booster

    def poll(self) -> bool:
        """Swap in the pending refit once ``swap_lag`` rows have passed; True when swapped.

        Joins the refit thread if it is still running at its swap point, so the swap happens
        at the same row whatever the timing. Drops the old model once a fade is over.
        """
        if self._fade_start >= 0 and self.fade_weight == 1.0:
            self._fade_from = self._fade_booster = self._fade_codes = None
            self._fade_start = -1
        job = self._pending
        if job is None or self.n_seen < job["swap_at"]:
            return False
        return self._swap(job)

    def _swap(self, job: dict[str, Any]) -> bool:
        self._join(job)
        self._pending = None
        if job["error"] is not None:
            raise RuntimeError(f"tree refit failed: {job['error']!r}") from job["error"]
        if not job["accept"]:
            self.rejected += 1
            return False
        if self.fade:
            self._fade_from, self._fade_booster = self._ensemble, self.booster
            self._fade_codes = self._codes
            self._fade_prior = self.prior if self._ensemble is None else self.offset
            self._fade_start = self.n_seen
            self._fade_len = min(self.fade, self._interval(self.refits))
        self.offset = float(job["offset"])
        self._codes = job.get("codes")
        self._install(job["booster"], job.get("ensemble"))
        return True

    def finish(self, blend: bool = False) -> bool:
        """At the end of a stream: when a refit is pending or at least the held-back share of
        the window is newer than the last refit, fit the whole window once more, in place of
        the pending refit (guarded, installed at once; with and without ``end_codes``, the
        better on the held-back rows). ``blend``: fit the end-of-stream blend of this stage
        and the others (``end_blend``) and choose the fit by the blended loss; on a window of
        at most ``FOLD_BLEND_ROWS`` rows the chosen fit's blend is then refitted on every row
        (``_fold_blend``). True when the model changed."""
        changed = False
        self.end_blend = None
        pending, self._pending = self._pending, None
        if pending is not None:  # the end refit fits a superset of its rows: drop it
            pending["cancel"] = True  # (stops after its current tree instead of finishing)
            self._join(pending)
        enough = max(MIN_VALID_ROWS, int(self._count * self.valid_fraction))
        if (self._n_features and self._count >= self.min_fit_rows
                and (pending is not None or self.since_refit >= enough)):
            tries = [self.codes] if self._I is None else sorted({self.codes, self.end_codes})
            window = self._snapshot()  # one copy for all of them (a 200k-row window: 40 MB)
            jobs, fits = zip(*[self._refit_job("end", lag=0, codes=k, blend=blend,
                                               window=window)
                               for k in tries], strict=True)
            # independent single-threaded fits: side by side, each on a core of its own
            threads = [threading.Thread(target=fit, name="streamfusion-refit", daemon=True)
                       for fit in fits[1:]]
            for t in threads:
                t.start()
            fits[0]()
            for t in threads:
                t.join()
            errors = [j for j in jobs if j["error"] is not None]
            best = errors[0] if errors else min(
                jobs, key=lambda j: j["blend"].loss if j["blend"] is not None else j["loss"])
            self._launch(best, lambda: None, wait=True)
            if self._swap(best):
                changed = True
                self.end_blend = self._end_blend(window, best)
        self._fade_start = -1  # no fade: the final model scores whatever follows
        self._fade_from = self._fade_booster = self._fade_codes = None
        return changed

    def _end_blend(self, window: tuple, job: dict[str, Any]) -> Blend | None:
        """The blend of the end refit ``job`` that went live: fitted on its held-back rows,
        or, on a window of at most ``FOLD_BLEND_ROWS`` rows, on all of them out of fold
        (``_fold_blend``; should that fail, the held-back rows' blend, with a warning)."""
        if (job["blend"] is None or self._count > FOLD_BLEND_ROWS
                or self._count // BLEND_FOLDS < MIN_VALID_ROWS):
            return job["blend"]
        rounds = job["booster"].num_trees()  # the folds' fits mirror the end refit's trees
        try:
            return self._fold_blend(window, job["n_codes"], rounds)
        except Exception as exc:  # the refit itself is fine: keep it and its own blend
            warnings.warn(f"the out-of-fold end blend failed ({exc!r}); the blend of the "
                          "newest rows is used", RuntimeWarning, stacklevel=3)
            return job["blend"]

    def _fold_blend(self, window: tuple, codes: int, rounds: int) -> Blend:
        """The end-of-stream blend fitted on every row of ``window`` (a ``_snapshot()``),
        the trees' margins out of fold: ``BLEND_FOLDS`` chronological folds, each scored by
        a fresh fit of ``rounds`` trees (as many as the end refit grew; ``codes`` codes per
        field) on the other folds. Folds are fitted two at a time."""
        X, y, z, rest, ind = window
        own = np.empty(len(y))
        bounds = np.linspace(0, len(y), BLEND_FOLDS + 1).astype(int)

        def fit(fold: int) -> None:
            a, b = bounds[fold], bounds[fold + 1]
            rows = np.r_[0:a, b:len(y)]
            table = CodeTable.fit(ind[rows], codes) if ind is not None and codes else None
            XF, cats = _fit_input(X, ind, table)
            off, init = 0.0, None
            if self.use_init_score:
                off = _offset(y[rows], z[rows])
                init = z[rows] + off
            booster = self._train(XF[rows], y[rows], init, rounds, None, None, cats)
            own[a:b] = off + TreeEnsemble.from_booster(booster).predict_margin(
                XF[a:b], threads=self.threads)

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="streamfusion-refit") as pool:
            list(pool.map(fit, range(BLEND_FOLDS)))
        return fit_blend(self._shrunk(own, self.prior), rest, y)

    def _install(self, booster: lgb.Booster, ensemble: TreeEnsemble | None = None) -> None:
        self._ensemble = ensemble if ensemble is not None else TreeEnsemble.from_booster(booster)
        self.booster = booster
        self.version += 1
        # the loss level changes with the model: watch drift afresh
        self._adwin = self._new_adwin()
        self._adwin_history = []

    @staticmethod
    def _join(job: dict) -> None:
        if job.get("thread") is not None:
            job["thread"].join()
            job["thread"] = None

    def wait(self) -> None:
        """Block until a running refit has finished (it still swaps at its swap point)."""
        if self._pending is not None:
            self._join(self._pending)

    def close(self) -> None:
        """Finish any running refit thread; the stage stays usable. A refit that failed and
        never reached its swap point is reported as a warning, not dropped in silence."""
        self.wait()
        job = self._pending
        if job is not None and job["error"] is not None:
            warnings.warn(f"the last tree refit (not yet live) failed: {job['error']!r}",
                          stacklevel=2)

    def fit(self, dense: np.ndarray, y: np.ndarray, init_score: np.ndarray | None = None,
            valid: tuple | None = None) -> TreeStage:
        """One-shot batch fit (offline reproduction); installs the trees immediately.

        ``valid`` is ``(dense, y, init_score or None)``: early stopping on its logloss.
        """
        self.wait()
        self._pending = None
        dense = np.ascontiguousarray(dense, np.float32)
        init = None if init_score is None else np.asarray(init_score, np.float64)
        booster = self._train(dense, np.asarray(y, np.float64), init, self.n_trees, None, valid,
                              window=False)
        self._n_features = self._n_features or dense.shape[1]
        self.refits += 1
        self._fade_start = -1  # installed at once
        self._codes = None
        self._install(booster)
        return self

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume: booster, window, counters, ADWIN inputs, pending refit.

        A running refit is joined first; its booster and swap point are stored.
        """
        pending = None
        if self._pending is not None:
            self._join(self._pending)
            job = self._pending
            if job["error"] is not None:
                raise RuntimeError(f"tree refit failed: {job['error']!r}") from job["error"]
            pending = {"booster": job["booster"].model_to_string(),
                       "swap_at": int(job["swap_at"]), "reason": job["reason"],
                       "offset": float(job["offset"]), "accept": bool(job["accept"]),
                       "codes": _codes_state(job.get("codes"))}
        ind = None
        if self._X is not None:
            X, y, z, r, ind = self._snapshot()
        else:
            X = np.zeros((0, 0), np.float32)
            y = z = r = np.zeros(0, np.float64)
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "config": self.config(),
            "booster": None if self.booster is None else self.booster.model_to_string(),
            "version": self.version, "refits": self.refits, "rejected": self.rejected,
            "offset": self.offset, "n_seen": self.n_seen,
            "clicks": self.clicks, "since_refit": self.since_refit,
            "n_features": self._n_features,
            "window_X": X.copy(), "window_y": y.astype(np.float32),
            "window_z": z.astype(np.float32), "window_rest": r.astype(np.float32),
            "window_indices": None if ind is None else ind.copy(),
            "codes": _codes_state(self._codes),
            "adwin_history": np.asarray(self._adwin_history, np.float64),
            "pending": pending,
            "fade_from": None if self._fade_start < 0 else {
                "booster": None if self._fade_booster is None
                else self._fade_booster.model_to_string(),
                "prior": self._fade_prior, "start": self._fade_start, "len": self._fade_len,
                "codes": _codes_state(self._fade_codes)},
        }

    def load_state_dict(self, state: dict) -> None:
        """Validate everything, then restore; raises ValueError on any mismatch.

        ADWIN is restored exactly by re-feeding the values it received since the last swap.
        """
        cfg = state_config(state, FORMAT, FORMAT_VERSION, "tree stage")
        for key in _STRUCTURE:
            if cfg.get(key) != getattr(self, key):
                raise ValueError(f"tree stage state has {key}={cfg.get(key)!r}, this stage has "
                                 f"{getattr(self, key)!r}")
        shrinkage = cfg.get("shrinkage", 1.0)  # states from before it: unshrunk
        if shrinkage != self.shrinkage:
            raise ValueError(f"tree stage state scores with shrinkage {shrinkage!r}, this "
                             f"stage with {self.shrinkage!r}")
        ints = {}
        for key in ("version", "refits", "rejected", "n_seen", "clicks", "since_refit"):
            v = state.get(key)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"tree stage state {key} must be a non-negative int, got {v!r}")
            ints[key] = int(v)
        if ints["clicks"] > ints["n_seen"]:
            raise ValueError("tree stage state has more clicks than rows")
        offset = state.get("offset")
        if not isinstance(offset, float) or not np.isfinite(offset):
            raise ValueError(f"tree stage state offset must be a finite float, got {offset!r}")
        nf = state.get("n_features")
        if nf is not None and (not isinstance(nf, (int, np.integer)) or nf < 0):
            raise ValueError(f"tree stage state n_features must be an int or None, got {nf!r}")
        X, y, z, r = (state.get(k) for k in ("window_X", "window_y", "window_z", "window_rest"))
        for name, arr, dtype, ndim in (("window_X", X, np.float32, 2),
                                       ("window_y", y, np.float32, 1),
                                       ("window_z", z, np.float32, 1),
                                       ("window_rest", r, np.float32, 1)):
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != ndim:
                raise ValueError(f"tree stage state {name} must be a {ndim}-D {np.dtype(dtype)} "
                                 f"array")
        count = len(y)
        if len(z) != count or len(r) != count or X.shape[0] != count or count > self.window:
            raise ValueError(f"tree stage state window arrays disagree: X {X.shape}, y "
                             f"{y.shape}, z {z.shape}, rest {r.shape}, window {self.window}")
        if count and (nf is None or X.shape[1] != nf):
            raise ValueError(f"tree stage state window has {X.shape[1]} features, n_features "
                             f"is {nf!r}")
        WI = state.get("window_indices")
        if WI is not None and (not isinstance(WI, np.ndarray) or WI.dtype != np.int32
                               or WI.ndim != 2 or WI.shape[0] != count):
            raise ValueError("tree stage state window_indices must be a 2-D int32 array with "
                             "one row per window row")
        n_idx = None if WI is None else WI.shape[1]
        codes = _parse_codes(state.get("codes"), n_idx)
        hist = state.get("adwin_history")
        if not isinstance(hist, np.ndarray) or hist.ndim != 1:
            raise ValueError("tree stage state adwin_history must be a 1-D array")
        booster = _parse_booster(state.get("booster"), "booster")
        pending = state.get("pending")
        pend_booster = pend_codes = fade_codes = None
        if pending is not None:
            if (not isinstance(pending, dict)
                    or not isinstance(pending.get("swap_at"), (int, np.integer))
                    or not isinstance(pending.get("offset"), float)
                    or not isinstance(pending.get("accept"), bool)):
                raise ValueError("tree stage state pending must be a dict with an int swap_at, "
                                 "a float offset and a bool accept")
            pend_booster = _parse_booster(pending.get("booster"), "pending booster")
            if pend_booster is None:
                raise ValueError("tree stage state pending refit has no booster")
            pend_codes = _parse_codes(pending.get("codes"), n_idx)
        fade_from = state.get("fade_from")
        fade_booster = None
        if fade_from is not None:
            if (not isinstance(fade_from, dict)
                    or not isinstance(fade_from.get("start"), (int, np.integer))
                    or not 0 <= fade_from["start"] <= ints["n_seen"]
                    or not isinstance(fade_from.get("len"), (int, np.integer))
                    or not 0 < fade_from["len"] <= self.fade
                    or not isinstance(fade_from.get("prior"), (float, np.floating))
                    or booster is None):
                raise ValueError("tree stage state fade_from must be a dict with an int start "
                                 "<= n_seen, an int len in 1..fade and a float prior, after a "
                                 "swap")
            fade_booster = _parse_booster(fade_from.get("booster"), "fade_from booster")
            fade_codes = _parse_codes(fade_from.get("codes"), n_idx)
        for b, c in ((booster, codes), (pend_booster, pend_codes), (fade_booster, fade_codes)):
            width = 0 if c is None else c.width
            if b is not None and nf is not None and b.num_feature() > nf + width:
                raise ValueError(f"tree stage state booster uses {b.num_feature()} features, "
                                 f"the window has {nf} and {width} codes")
        ensemble = TreeEnsemble.from_booster(booster) if booster is not None else None
        fade_ensemble = (TreeEnsemble.from_booster(fade_booster) if fade_booster is not None
                         else None)
        adwin = self._new_adwin()
        for v in hist.tolist():
            adwin.update(v)

        # all checks passed: now change things
        self.wait()
        self._reset_state()
        self.booster, self._ensemble, self._codes = booster, ensemble, codes
        if fade_from is not None:
            self._fade_from, self._fade_booster = fade_ensemble, fade_booster
            self._fade_codes = fade_codes
            self._fade_prior, self._fade_start = float(fade_from["prior"]), int(fade_from["start"])
            self._fade_len = int(fade_from["len"])
        for key, v in ints.items():
            setattr(self, key, v)
        self.offset = float(offset)
        if nf is not None:
            self._n_features = None
            self._ensure_buffers(int(nf))
            self._X[:count], self._y[:count], self._z[:count], self._r[:count] = X, y, z, r
            self._count, self._pos = count, count % self.window
        if WI is not None:
            self._I = np.zeros((self.window, WI.shape[1]), np.int32)
            self._I[:count] = WI
        self._adwin, self._adwin_history = adwin, [float(v) for v in hist.tolist()]
        if pending is not None:
            self._pending = {"swap_at": int(pending["swap_at"]),
                             "reason": str(pending.get("reason", "schedule")),
                             "booster": pend_booster, "error": None, "thread": None,
                             "offset": float(pending["offset"]),
                             "accept": bool(pending["accept"]), "codes": pend_codes}


def _codes_state(codes: CodeTable | None) -> dict[str, Any] | None:
    return None if codes is None else codes.to_state()


def _parse_codes(state: Any, n_fields: int | None) -> CodeTable | None:
    return None if state is None else CodeTable.from_state(state, n_fields)


def _parse_booster(text: Any, what: str) -> lgb.Booster | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"tree stage state {what} must be a LightGBM model string")
    try:
        return lgb.Booster(model_str=text)
    except Exception as exc:  # LightGBM raises its own error type on a bad model string
        raise ValueError(f"tree stage state {what} is not a valid LightGBM model: {exc}") from None

