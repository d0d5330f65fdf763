"""Residual stage: an FM / DeepFM / DNN / LR learner over hashed features, compiled in csrc/.

The learner adds its own margin to the margin of the earlier stages and takes Adam steps on each
mini-batch of ``logloss(y, sigmoid(base_margin + margin))`` (ResFusion, paper eq. 5). All
arrays (parameters, Adam moments, step counter, scratch) are allocated and owned here; the
kernel ``streamfusion._learner`` only runs loops over them.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from streamfusion import _learner
from streamfusion.stages import click_logodds, state_config

FORMAT = "streamfusion.residual"
FORMAT_VERSION = 2  # 2: row optimizer, row_lr and the click prior
# Structural settings: a state can only be loaded into a learner that agrees on all of them.
_STRUCTURE = ("model", "n_fields", "bits", "k", "hidden", "row_optimizer", "prior",
              "standardize", "pair_weights", "field_weights")
# What a state from before a setting existed was trained with.
_BEFORE = {"pair_weights": False, "field_weights": False, "pair_lr": 0.03, "step_rows": 0,
           "adam_batch": 0}
_ARRAYS_STATS = ("value_mean", "value_m2")
# A field varies when its values' variance exceeds this: categoricals (always 1.0) never do
VARYING_M2 = 1e-12
# Optimiser settings travel with the state so a resumed run takes identical next steps.
_HYPER = ("lr", "row_lr", "emb_lr", "pair_lr", "l2", "clip", "beta1", "beta2", "eps",
          "init_std", "step_rows", "adam_batch")
_WHOLE = ("step_rows", "adam_batch")  # the hyper-parameters that count events
_ARRAYS = ("table", "table_m", "table_v", "dense", "dense_m", "dense_v")
MLP_MODELS = ("deepfm", "dnn")  # the learners with hidden layers


def _find_blas_threads_setter() -> Any:
    """scipy's bundled OpenBLAS thread-count setter, or None when scipy links another BLAS."""
    import scipy

    libs = Path(scipy.__file__).resolve().parent.parent / "scipy.libs"
    for path in sorted(glob.glob(str(libs / "libscipy_openblas*.so"))):
        try:
            lib = ctypes.CDLL(path)
            return lib.scipy_openblas_set_num_threads
        except (OSError, AttributeError):
            continue
    return None


_blas_setter: Any = None
_blas_current = -1


def _set_blas_threads(n: int) -> None:
    """Set scipy's OpenBLAS thread count (best effort; the learner keeps it at 1)."""
    global _blas_setter, _blas_current
    if _blas_current == n:
        return
    if _blas_setter is None:
        _blas_setter = _find_blas_threads_setter() or False
    if _blas_setter:
        _blas_setter(ctypes.c_int(n))
    _blas_current = n


class ResidualLearner:
    """Online FM / DeepFM / DNN / LR on hashed rows of one shared table, fitted to a residual.

    Parameters
    ----------
    model : {"deepfm", "fm", "dnn", "lr"}
        DeepFM = first order + FM pairwise term + ReLU MLP over the concatenated field
        embeddings; FM = first order + pairwise; DNN = the MLP alone (rows hold an embedding
        only, so ``row_optimizer="mixed"`` steps them with Adam); LR = first order only.
    n_fields : int
        Number of fields F per event (columns of ``batch.indices``).
    bits : int
        The table has ``2**bits`` rows; every index must lie in ``[0, 2**bits)``.
    k : int
        Embedding size (ignored by LR).
    hidden : tuple of int
        MLP hidden sizes (DeepFM and DNN).
    lr, beta1, beta2, eps : float
        Adam settings of the dense parameters (bias, MLP), and of the table rows when
        ``row_optimizer="adam"`` (lazy, as torch's SparseAdam).
    row_optimizer : {"mixed", "adagrad", "adam"}
        How the hashed table rows step. ``"adagrad"``: per-coordinate steps
        ``row_lr / sqrt(sum of squared gradients)`` on the summed per-example gradients (McMahan
        et al. 2013): a rare id learns from its first events at any batch size, a frequent one
        settles. ``"adam"``: one lazy Adam step of about ``lr`` per step. ``"mixed"``: AdaGrad
        for the first-order weight, lazy Adam for the embedding (which keeps adapting).
    row_lr, emb_lr : float
        AdaGrad steps of the table rows' first-order weight and of their embedding. Embeddings
        take smaller steps: every pair of fields crosses, so F fields moving by ``emb_lr`` move
        the margin by about ``F**2 * emb_lr**2``, and large early steps make noise.
    pair_weights : bool
        DeepFM only: the FM part weights each pair of fields f < g by a learned ``R_fg``
        starting at 0.5 (a field-weighted FM, Pan et al.'s FwFM, 2018). A plain FM crosses
        every pair of fields alike; in a click log few pairs carry signal, and the weights
        of the others stay small, rare ids' noisy embeddings with them. The MLP is unchanged.
    field_weights : bool
        With ``pair_weights``: each field's first-order term is weighted by a learned
        ``W_f`` starting at 1 (FwFM's field-weighted linear part). A field whose ids carry no
        signal still fits each id's weight to that id's past clicks; ``W_f`` learns from
        events scored before they are learned, so it shrinks where those fits do not carry
        over to new events.
    pair_lr : float
        Adam step of the pair and field weights. They are few and shared by every event, so
        they can settle faster than the MLP at ``lr``.
    step_rows : int
        Most events in one step: ``partial_fit`` learns a larger batch in consecutive steps
        of ``step_rows`` events, in order (0: one step per batch). A step moves each
        parameter by about ``lr`` whatever the batch size (below ``adam_batch`` events,
        less), so more steps per event learn more from a one-pass stream. The L2 decay of
        touched rows applies per step too.
    adam_batch : int
        A step on fewer than ``adam_batch`` learned events scales ``lr`` and ``pair_lr`` by
        ``sqrt(events / adam_batch)`` (0: never), the square-root rule for a batch's
        gradient noise; ``lr`` is set for steps of ``adam_batch`` events. What that scales:
        every Adam step (the dense parameters, pair and field weights, and the table columns
        Adam steps: embeddings under ``"mixed"``, whole rows under ``"adam"``); AdaGrad's steps
        (``row_lr``, ``emb_lr``) normalise themselves and are never scaled.
    standardize : bool
        Feed the kernel each varying field's values as z-scores under running statistics
        (mean and variance of the values learned so far, updated once per batch), as a
        ``StandardScaler`` would; fields whose values never varied (categoricals, value 1) pass
        as they are. Numeric-heavy logs then learn as fast as with a scaler.
    prior : bool
        Add the smoothed log-odds of the clicks learned so far to the margin: a learner that is
        the first stage of its chain starts at the click rate, not at p = 0.5.
    l2 : float
        L2 penalty on the table rows a batch touches.
    clip : float
        Bound on each example's gradient with respect to its margin, ``w (p - y)``.
    init_std : float
        Standard deviation of the initial embeddings.
    seed : int
        Seeds the initialisation; single-threaded runs are bit-for-bit reproducible.
    threads : int
        OpenMP threads. The batch is cut into fixed blocks of rows that threads take in
        turn (each block's GEMMs run single-threaded BLAS, scipy's OpenBLAS is set to one
        thread), so results are identical for any thread count.

    Examples
    --------
    >>> import numpy as np
    >>> from types import SimpleNamespace
    >>> learner = ResidualLearner("fm", n_fields=3, bits=10, k=4, seed=0)
    >>> batch = SimpleNamespace(indices=np.array([[1, 2, 3]], np.int32), values=None)
    >>> stats = learner.partial_fit(batch, np.zeros(1, np.float32), np.ones(1, np.float32))
    >>> stats["n"], learner.margin(batch).shape
    (1, (1,))
    """

    def __init__(
        self,
        model: str = "deepfm",
        n_fields: int = 22,
        bits: int = 20,
        k: int = 8,
        hidden: tuple[int, ...] = (128, 128),
        lr: float = 1e-3,
        l2: float = 0.0,
        clip: float = 10.0,
        seed: int = 0,
        threads: int = 1,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        init_std: float = 0.01,
        row_optimizer: str = "mixed",
        row_lr: float = 0.05,
        emb_lr: float = 0.005,
        standardize: bool = False,
        prior: bool = False,
        pair_weights: bool = False,
        field_weights: bool = False,
        pair_lr: float = 0.03,
        step_rows: int = 0,
        adam_batch: int = 0,
    ) -> None:
        if model not in _learner.MODELS:
            raise ValueError(f"model must be one of {sorted(_learner.MODELS)}, got {model!r}")
        if not 1 <= bits <= 30:
            raise ValueError(f"bits must be in [1, 30], got {bits}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if row_optimizer not in _learner.ROW_OPTIMIZERS:
            raise ValueError(f"row_optimizer must be one of {sorted(_learner.ROW_OPTIMIZERS)}, "
                             f"got {row_optimizer!r}")
        if not (row_lr > 0 and emb_lr > 0 and pair_lr > 0):
            raise ValueError(f"row_lr, emb_lr and pair_lr must be > 0, got {row_lr}, {emb_lr}, "
                             f"{pair_lr}")
        if step_rows < 0 or adam_batch < 0:
            raise ValueError(f"step_rows and adam_batch must be >= 0, got {step_rows}, "
                             f"{adam_batch}")
        if pair_weights and model != "deepfm":
            raise ValueError(f"pair_weights is a DeepFM option, not {model!r}")
        if field_weights and not pair_weights:
            raise ValueError("field_weights come with pair_weights")
        if not (lr > 0 and 0 <= beta1 < 1 and 0 <= beta2 < 1 and eps > 0 and l2 >= 0
                and clip > 0 and init_std >= 0):
            raise ValueError("need lr > 0, 0 <= beta1, beta2 < 1, eps > 0, l2 >= 0, clip > 0")
        self.model = model
        self.n_fields = int(n_fields)
        self.bits = int(bits)
        self.k = int(k)
        self.hidden = tuple(int(h) for h in hidden) if model in MLP_MODELS else ()
        self.lr, self.l2, self.clip = float(lr), float(l2), float(clip)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.init_std = float(init_std)
        self.row_optimizer, self.row_lr, self.emb_lr = row_optimizer, float(row_lr), float(emb_lr)
        self.prior = bool(prior)
        self.standardize = bool(standardize)
        self.pair_weights, self.pair_lr = bool(pair_weights), float(pair_lr)
        self.field_weights = bool(field_weights)
        self.step_rows, self.adam_batch = int(step_rows), int(adam_batch)
        # running value statistics per field (Chan et al.'s parallel update, float64)
        self.value_count = 0
        self.value_mean = np.zeros(self.n_fields, np.float64)
        self.value_m2 = np.zeros(self.n_fields, np.float64)
        self.clicks = 0.0  # labels learned so far (the prior's counts)
        self.seen = 0
        self.seed = int(seed)
        self.threads = int(threads)
        self._code = (_learner.MODELS[model] | (_learner.PAIR_WEIGHTS if pair_weights else 0)
                      | (_learner.FIELD_WEIGHTS if field_weights else 0))
        # validates n_fields, k and hidden in one place (the kernel's own checks)
        p = _learner.dense_size(self._code, self.n_fields, self.k, self.hidden)
        rows = 1 << self.bits
        d = _learner.table_width(self._code, self.k)
        self.table = np.empty((rows, d), np.float32)
        self.dense = np.empty(p, np.float32)
        self.table_m = np.zeros_like(self.table)
        self.table_v = np.zeros_like(self.table)
        self.dense_m = np.zeros_like(self.dense)
        self.dense_v = np.zeros_like(self.dense)
        self.step = np.zeros(1, np.int64)
        # a uint64 kernel seed derived from the one user seed
        kseed = int(np.random.default_rng(self.seed).integers(1, 2**63))
        _learner.init_params(self._code, self.n_fields, self.k, self.hidden, self.table,
                             self.dense, kseed, self.init_std)
        self._marker = np.full(rows, -1, np.int32)  # scratch: -1 between calls
        self._work: dict[bool, tuple[np.ndarray, np.ndarray]] = {}

    # -- scratch -------------------------------------------------------------------------------
    def _scratch(self, n: int, train: bool) -> tuple[np.ndarray, np.ndarray]:
        nf, ni = _learner.work_size(self._code, self.n_fields, self.k, self.hidden, n, train)
        work, iwork = self._work.get(train, (np.empty(0, np.float32), np.empty(0, np.int32)))
        if work.size < nf or iwork.size < ni:
            work = np.empty(max(nf, work.size), np.float32)
            iwork = np.empty(max(ni, iwork.size, 1), np.int32)
            self._work[train] = (work, iwork)
        return work, iwork

    def _inputs(self, batch: Any) -> tuple[np.ndarray, np.ndarray | None]:
        indices = np.ascontiguousarray(batch.indices, dtype=np.int32)
        if indices.ndim != 2 or indices.shape[1] != self.n_fields:
            raise ValueError(f"indices must have shape (n, {self.n_fields}), got "
                             f"{indices.shape}")
        values = getattr(batch, "values", None)
        if values is not None:
            values = np.ascontiguousarray(values, dtype=np.float32)
            if values.shape != indices.shape:
                raise ValueError(f"values must have shape {indices.shape}, got {values.shape}")
            if self.standardize and self.value_count > 1:
                varying = self.value_m2 > VARYING_M2 * self.value_count
                if varying.any():
                    sd = np.sqrt(self.value_m2[varying] / self.value_count)
                    values = values.copy()
                    values[:, varying] = ((values[:, varying] - self.value_mean[varying])
                                          / sd).astype(np.float32)
        return indices, values

    def _update_value_stats(self, batch: Any) -> None:
        """Merge the raw values of a learned batch into the running statistics."""
        values = getattr(batch, "values", None)
        if not self.standardize or values is None or len(values) == 0:
            return
        n, na = len(values), self.value_count
        if (na and (self.value_m2 == 0).all() and (self.value_mean == 1).all()
                and (np.asarray(values) == 1).all()):
            # no field ever varied (all categorical) and none does now: only the count moves
            self.value_count = na + n
            return
        v = np.asarray(values, np.float64)
        mean = v.mean(axis=0)
        m2 = ((v - mean) ** 2).sum(axis=0)
        delta = mean - self.value_mean
        total = na + n
        self.value_mean += delta * (n / total)
        self.value_m2 += m2 + delta ** 2 * (na * n / total)
        self.value_count = total

    @staticmethod
    def _vector(x: Any, n: int, name: str) -> np.ndarray:
        a = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        if a.shape[0] != n:
            raise ValueError(f"{name} needs {n} entries, got {a.shape[0]}")
        return a

    # -- learning ------------------------------------------------------------------------------
    def margin(self, batch: Any) -> np.ndarray:
        """The learner's own margin (log-odds) of each event; changes no state."""
        indices, values = self._inputs(batch)
        out = np.empty(indices.shape[0], np.float32)
        if indices.shape[0] == 0:
            return out
        work, _ = self._scratch(indices.shape[0], False)
        _set_blas_threads(1)
        _learner.forward(self._code, self.k, self.hidden, indices, values, self.table,
                         self.dense, out, work, self.threads)
        if self.prior:
            out += self.prior_margin
        return out

    @property
    def prior_margin(self) -> np.float32:
        """Smoothed log-odds of the labels learned so far, (clicks + 1) / (n + 2); 0 without
        ``prior``."""
        if not self.prior:
            return np.float32(0.0)
        return np.float32(click_logodds(self.clicks, self.seen))

    def partial_fit(self, batch: Any, base_margin: Any, y: Any,
                    sample_weight: Any = None, margin_out: np.ndarray | None = None) -> dict:
        """Learn ``logloss(y, sigmoid(base_margin + margin(batch)))``: one step
        (``row_optimizer`` for the table rows, Adam for the dense parameters), or consecutive
        steps of ``step_rows`` events in order when the batch is larger. A step on fewer than
        ``adam_batch`` events scales its Adam steps by ``sqrt(events / adam_batch)``.

        The click prior moves with the batch's labels before its first step (the steps learn
        against it; ``margin_out`` gets the prior as the batch found it), the value
        statistics (``standardize``) after its last step, so steps differ from separate calls
        on the batch's slices when either is on.

        Returns ``dict(loss=mean loss of the batch, each step's events before that step,
        n=events, skipped=events with a non-finite margin, label or weight plus parameter
        updates that would have been non-finite; all of them are left out)``.
        ``margin_out`` (float32 [n]), when given, receives each event's margin as it was
        before the step that learns it, bit for bit (the forward pass that step needs
        anyway): the first step's events get ``margin(batch)`` as it was before the call,
        the later ones the margin after the steps before theirs.
        """
        indices, values = self._inputs(batch)
        n = indices.shape[0]
        base = self._vector(base_margin, n, "base_margin")
        yy = self._vector(y, n, "y")
        sw = None if sample_weight is None else self._vector(sample_weight, n, "sample_weight")
        if n == 0:
            return {"loss": 0.0, "n": 0, "skipped": 0}
        step = self.step_rows if 0 < self.step_rows < n else n
        _set_blas_threads(1)
        work, iwork = self._scratch(step, True)
        prior = self.prior_margin  # what scored the batch's events (margin_out)
        if self.prior:
            # the steps learn against the prior the batch's own labels moved: against the
            # old one (p = 0.5 for a first batch) every weight would learn the batch's click
            # rate, which the prior then takes up as well
            labelled = yy[np.isfinite(yy)]
            self.clicks += float(labelled.sum())
            self.seen += int(labelled.size)
            base = base + self.prior_margin
        loss, skip_ex, skip_upd = 0.0, 0, 0
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            part = slice(lo, hi)
            scale = min(1.0, ((hi - lo) / self.adam_batch) ** 0.5) if self.adam_batch else 1.0
            l_, e_, u_, _ = _learner.train(
                self._code, self.k, self.hidden, indices[part],
                None if values is None else values[part], base[part], yy[part],
                None if sw is None else sw[part], self.table, self.table_m, self.table_v,
                self.dense, self.dense_m, self.dense_v, self.step, self._marker, work, iwork,
                self.lr * scale, self.beta1, self.beta2, self.eps, self.l2, self.clip,
                self.threads,
                None if margin_out is None else margin_out[part],
                _learner.ROW_OPTIMIZERS[self.row_optimizer], self.row_lr, self.emb_lr,
                self.pair_lr * scale)
            loss, skip_ex, skip_upd = loss + l_, skip_ex + e_, skip_upd + u_
        self._update_value_stats(batch)
        if self.prior and margin_out is not None:
            margin_out += prior
        used = n - skip_ex
        return {"loss": loss / used if used else float("nan"), "n": n,
                "skipped": int(skip_ex + skip_upd)}

    def gradients(self, batch: Any, base_margin: Any, y: Any,
                  sample_weight: Any = None) -> dict:
        """Gradients of the batch objective, not applied (for tests and diagnostics).

        Returns ``dict(loss=sum of weighted losses / n, rows, table_grad [len(rows), D],
        dense_grad [P])``; the objective is the mean weighted loss plus ``l2/2`` times the
        squared norm of the touched rows.
        """
        indices, values = self._inputs(batch)
        n = indices.shape[0]
        base = self._vector(base_margin, n, "base_margin")
        yy = self._vector(y, n, "y")
        sw = None if sample_weight is None else self._vector(sample_weight, n, "sample_weight")
        work, iwork = self._scratch(max(n, 1), True)
        _set_blas_threads(1)
        loss, _, rows, tgrad, dgrad = _learner.gradients(
            self._code, self.k, self.hidden, indices, values, base, yy, sw, self.table,
            self.dense, self._marker, work, iwork, self.l2, self.clip)
        return {"loss": loss / max(n, 1), "rows": rows, "table_grad": tgrad,
                "dense_grad": dgrad}

    # -- state ---------------------------------------------------------------------------------
    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable); ``ResidualLearner(**config())``."""
        return {"model": self.model, "n_fields": self.n_fields, "bits": self.bits,
                "k": self.k, "hidden": list(self.hidden), "lr": self.lr, "l2": self.l2,
                "clip": self.clip, "seed": self.seed, "threads": self.threads,
                "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "init_std": self.init_std, "row_optimizer": self.row_optimizer,
                "row_lr": self.row_lr, "emb_lr": self.emb_lr, "prior": self.prior,
                "standardize": self.standardize, "pair_weights": self.pair_weights,
                "field_weights": self.field_weights,
                "pair_lr": self.pair_lr, "step_rows": self.step_rows,
                "adam_batch": self.adam_batch}

    def state_dict(self) -> dict:
        """Parameters, Adam moments, step and config (arrays are copies)."""
        state: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION,
                                 "config": self.config(), "step": int(self.step[0]),
                                 "clicks": self.clicks, "seen": self.seen,
                                 "value_count": self.value_count}
        for name in _ARRAYS_STATS:
            state[name] = getattr(self, name).copy()
        for name in _ARRAYS:
            state[name] = getattr(self, name).copy()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Validate everything, then copy the state in; raises ValueError on any mismatch."""
        cfg = state_config(state, FORMAT, FORMAT_VERSION, "residual")
        mine = self.config()
        for key in _STRUCTURE:
            theirs = cfg.get(key, _BEFORE.get(key))
            theirs = list(theirs) if key == "hidden" else theirs
            if theirs != mine[key]:
                raise ValueError(f"residual state has {key}={theirs!r}, this learner "
                                 f"has {mine[key]!r}")
        hyper = {key: cfg.get(key, _BEFORE.get(key)) for key in _HYPER}
        for key, value in hyper.items():
            if not isinstance(value, (int, float)):
                raise ValueError(f"residual state config lacks a number for {key!r}")
        for key in _WHOLE:
            if not 0 <= hyper[key] < float("inf") or hyper[key] != int(hyper[key]):
                raise ValueError(f"residual state {key} must be a whole number >= 0, got "
                                 f"{hyper[key]!r}")
        step = state.get("step")
        if not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"residual state step must be a non-negative int, got {step!r}")
        count = state.get("value_count")
        if not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"residual state value_count must be a non-negative int, got "
                             f"{count!r}")
        for name in _ARRAYS_STATS:
            arr = state.get(name)
            if (not isinstance(arr, np.ndarray) or arr.shape != (self.n_fields,)
                    or arr.dtype != np.float64 or not np.isfinite(arr).all()):
                raise ValueError(f"residual state {name} must be {self.n_fields} finite float64")
        seen, clicks = state.get("seen"), state.get("clicks")
        if (not isinstance(seen, (int, np.integer)) or seen < 0
                or not isinstance(clicks, (int, float)) or not 0 <= clicks <= seen):
            raise ValueError(f"residual state prior counts must be 0 <= clicks <= seen, got "
                             f"{clicks!r} / {seen!r}")
        for name in _ARRAYS:
            arr, ref = state.get(name), getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.shape != ref.shape or arr.dtype != ref.dtype:
                got = (arr.shape, arr.dtype) if isinstance(arr, np.ndarray) else type(arr)
                raise ValueError(f"residual state {name}: expected {ref.shape} {ref.dtype}, "
                                 f"got {got}")
        # all checks passed: now change things
        for name in _ARRAYS:
            np.copyto(getattr(self, name), state[name])
        self.step[0] = int(step)
        self.seen, self.clicks = int(seen), float(clicks)
        self.value_count = int(count)
        for name in _ARRAYS_STATS:
            np.copyto(getattr(self, name), state[name])
        for key, value in hyper.items():
            setattr(self, key, int(value) if key in _WHOLE else float(value))
        self.seed = int(cfg.get("seed", self.seed))

    def save(self, path: str | os.PathLike) -> None:
        """Write a standalone file (npz with a JSON header); atomic via a temporary rename."""
        path = Path(path)
        state = self.state_dict()
        header = {k: state[k] for k in ("format", "format_version", "config", "step", "clicks",
                                        "seen", "value_count")}
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, header=np.array(json.dumps(header)),
                     **{name: state[name] for name in _ARRAYS + _ARRAYS_STATS})
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, threads: int | None = None) -> ResidualLearner:
        """Rebuild a learner from :meth:`save` output (config from the file)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                arrays = {name: data[name] for name in _ARRAYS + _ARRAYS_STATS}
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not a residual learner file ({exc})") from None
        cfg = header.get("config")
        if not isinstance(cfg, dict):
            raise ValueError(f"{path}: residual learner file has no config")
        kwargs = dict(cfg)
        if threads is not None:
            kwargs["threads"] = threads
        learner = cls(**kwargs)
        learner.load_state_dict({**header, **arrays})
        return learner
