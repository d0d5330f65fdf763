"""Offline (batch) fitting of a chain: the paper's protocol behind ``streamfusion reproduce``.

A click log is streamed once through the C reader into compact encoded arrays (int32 hashed
indices, float32 values for numeric fields only, float32 tree features), split 9:1 into
train and test with a validation slice of the training part, and kept as *contiguous* row
ranges ``[train | valid | test]`` so that every part is a view, never a copy: a 40M-row Avazu
file is about 7.6 GB in memory, a 45M-row Criteo file about 16.4 GB.

A chain is then fitted stage by stage, each stage on the residual of the stages before it:

- a tree stage with ``TreeStage.fit(dense, y, init_score=z_prev, valid=...)`` (LightGBM early
  stopping on the validation slice);
- a residual learner with mini-batch Adam (``partial_fit`` over seeded shuffled mini-batches,
  ``base_margin = z_prev``), keeping the epoch with the best validation logloss and stopping
  after ``patience`` epochs without improvement.

The fused margin on every row is kept as one float32 array ``z``. With ``oof=F`` the tree
margins on *training* rows are out-of-fold (F extra fits), so the next stage does not learn
against margins that have seen its own labels; validation and test rows always get the full
model's margins (they are never in a tree's training data).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from streamfusion.evaluate import auc, logloss_from_margin
from streamfusion.fusion import ModelConfig, build_stage

CHUNK_ROWS = 65_536  # rows gathered per fancy-index / predict call: amortises per-call overhead
READ_ROWS = 100_000  # rows per reader batch while loading
TRIM_EVERY = 16  # chunks copied between returns of freed memory to the OS
SPLIT_TEST = 0.1  # the paper's 9:1 train/test split
SPLIT_VALID = 0.1  # share of the training part held out for early stopping
_MASK64 = (1 << 64) - 1


# ----------------------------------------------------------------------------- data


@dataclass
class Encoded:
    """A whole click log as compact encoded arrays, rows ordered ``[train | valid | test]``.

    Attributes
    ----------
    indices : int32 [n, F]
        Hashed rows of the learner's table.
    values : float32 [n, len(value_cols)]
        Values of the fields that are not constant 1.0 (numeric fields); every other
        field's value is 1.0. Storing only these saves a third of the memory on Criteo.
    value_cols : int64 [m]
        Which of the F fields ``values`` holds.
    dense : float32 [n, T]
        Tree features.
    y : float32 [n]
        Labels (unlabelled rows are dropped while loading).
    n_train, n_valid : int
        Sizes of the first two parts; the test part is the rest.
    """

    indices: np.ndarray
    values: np.ndarray
    value_cols: np.ndarray
    dense: np.ndarray
    y: np.ndarray
    n_train: int
    n_valid: int
    field_names: list[str]
    dense_names: list[str]
    skipped_rows: int = 0
    format: str = "auto"
    column_kinds: dict[str, str] = field(default_factory=dict)
    unparsed_numbers: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def n_fields(self) -> int:
        return int(self.indices.shape[1])

    @property
    def n_test(self) -> int:
        return len(self) - self.n_train - self.n_valid

    @property
    def train(self) -> slice:
        return slice(0, self.n_train)

    @property
    def valid(self) -> slice:
        return slice(self.n_train, self.n_train + self.n_valid)

    @property
    def test(self) -> slice:
        return slice(self.n_train + self.n_valid, len(self))

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.indices, self.values, self.dense, self.y))


def split_key(line: np.ndarray, seed: int) -> np.ndarray:
    """A seeded uniform number in [0, 1) per source line (splitmix64 of line and seed).

    A function of the line alone, so the random split does not depend on batch sizes.
    """
    with np.errstate(over="ignore"):
        x = line.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + 1) & _MASK64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class _Parts:
    """Per-part lists of encoded chunks; values kept only for columns seen not equal to 1."""

    def __init__(self, n_fields: int) -> None:
        self.chunks: list[list[tuple]] = [[], [], []]
        self.value_cols = np.zeros(n_fields, dtype=bool)

    def add(self, part: int, indices, values, dense, y) -> None:
        self.value_cols |= (values != 1.0).any(axis=0)
        cols = np.flatnonzero(self.value_cols)
        self.chunks[part].append((indices, np.ascontiguousarray(values[:, cols]), cols, dense, y))

    def assemble(self) -> tuple[np.ndarray, ...]:
        """Copy every chunk into preallocated arrays, freeing each as it goes (peak + a few)."""
        n = sum(len(c[4]) for part in self.chunks for c in part)
        first = next(c for part in self.chunks for c in part)
        final_cols = np.flatnonzero(self.value_cols)
        indices = np.empty((n, first[0].shape[1]), np.int32)
        values = np.ones((n, final_cols.size), np.float32)
        dense = np.empty((n, first[3].shape[1]), np.float32)
        y = np.empty(n, np.float32)
        del first
        pos = 0
        copied = 0
        for part in self.chunks:
            part.reverse()  # pop() from the end: O(1), and each chunk is released when copied
            while part:
                idx, val, cols, den, lab = part.pop()
                end = pos + len(lab)
                indices[pos:end] = idx
                dense[pos:end] = den
                y[pos:end] = lab
                # a chunk stored fewer value columns when later chunks revealed more numeric
                # fields; the missing ones were all 1.0 in it, as ``values`` is initialised
                where = np.searchsorted(final_cols, cols)
                values[pos:end, where] = val
                pos = end
                del idx, val, den, lab
                copied += 1
                if copied % TRIM_EVERY == 0:
                    release_free_memory()
        release_free_memory()
        return indices, values, final_cols.astype(np.int64), dense, y


def release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Reader chunks of ~20 MB land on the heap once glibc's dynamic mmap threshold has grown,
    and memory freed below the top of the heap is not returned by itself: without this the
    peak while assembling would be the chunks *plus* the final arrays, twice the data.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


def load_encoded(path: str, format: str = "auto", label: str | None = None, bits: int = 20,
                 seed: int = 0, rows: int | None = None, split: str = "random",
                 on_error: str = "fail", progress: Callable[[int], None] | None = None,
                 **source: Any) -> Encoded:
    """Stream a click log through ``open_source`` into an ``Encoded`` (never a DataFrame).

    ``source`` holds further ``open_source`` options (``types``, ``max_features``,
    ``dense_features``, ...).

    ``split="random"``: each line goes to test with probability 0.1 and to the validation
    slice with probability 0.09 (a seeded hash of its line number); ``"chrono"``: the last 10%
    of the file (logs are written in time order) is the test part and the 10% of rows before
    it the validation slice. Rows without a label are dropped.
    """
    from streamfusion.data import open_source

    if split not in ("random", "chrono"):
        raise ValueError(f"split must be 'random' or 'chrono', got {split!r}")
    parts: _Parts | None = None
    seen = 0
    with open_source(path, format=format, label=label, bits=bits, seed=seed,
                     on_error=on_error, **source) as src:
        while rows is None or seen < rows:
            want = READ_ROWS if rows is None else min(READ_ROWS, rows - seen)
            batch = src.next_batch(want)
            if batch is None:
                break
            if len(batch) > want:  # a reader may return whole blocks
                batch = batch.take(slice(0, want))
            seen += len(batch)
            if progress is not None:
                progress(len(batch))
            keep = ~np.isnan(batch.y)
            if parts is None:
                parts = _Parts(batch.indices.shape[1])
            if split == "random":
                u = split_key(batch.line, seed)
                valid_edge = SPLIT_TEST + SPLIT_VALID * (1 - SPLIT_TEST)
                part = np.where(u < SPLIT_TEST, 2, np.where(u < valid_edge, 1, 0))
            else:
                part = np.zeros(len(batch), np.int64)
            for p in (0, 1, 2):
                sel = keep & (part == p)
                if sel.any():
                    parts.add(p, batch.indices[sel], batch.values[sel], batch.dense[sel],
                              batch.y[sel].astype(np.float32))
        field_names = list(src.schema.field_names)
        dense_names = list(src.schema.dense_names)
        skipped = int(getattr(src, "skipped_rows", 0) or 0)
        fmt = str(getattr(src.schema, "name", None) or getattr(src, "format", None) or format)
        kinds = src.schema.column_kinds()
        unparsed = src.encoder.unparsed_numbers()
    if parts is None or not any(parts.chunks):
        raise ValueError(f"{path}: no labelled rows to reproduce on")
    sizes = [sum(len(c[4]) for c in part) for part in parts.chunks]
    indices, values, value_cols, dense, y = parts.assemble()
    n = len(y)
    if split == "chrono":
        n_test = max(1, int(round(n * SPLIT_TEST)))
        n_valid = max(1, int(round((n - n_test) * SPLIT_VALID)))
        n_train, n_valid = n - n_test - n_valid, n_valid
    else:
        n_train, n_valid = sizes[0], sizes[1]
    if n_train < 2 or n_valid < 1 or n - n_train - n_valid < 1:
        raise ValueError(f"{path}: {n} labelled rows are too few to split 9:1")
    return Encoded(indices, values, value_cols, dense, y, n_train, n_valid,
                   field_names, dense_names, skipped, fmt, kinds, unparsed)


# ----------------------------------------------------------------------------- learner inputs


class Rows:
    """What a residual learner reads: ``.indices`` int32 [n, F] and ``.values`` float32."""

    __slots__ = ("indices", "values")

    def __init__(self, indices: np.ndarray, values: np.ndarray) -> None:
        self.indices = indices
        self.values = values

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def slice(self, s: slice) -> Rows:
        return Rows(self.indices[s], self.values[s])


class FeatureView:
    """The learner's features of an ``Encoded``, optionally with extra numeric fields.

    Parameters
    ----------
    data : Encoded
    extra : list of (row, values) pairs
        Each adds one field: the table row ``row`` (int) with a float32 [n] value per event
        (a value-scaled embedding, e.g. the trees' score for GBDT2DNN / GBDT2DeepFM).
    """

    def __init__(self, data: Encoded, extra: list[tuple[int, np.ndarray]] | None = None) -> None:
        self.data = data
        self.extra = list(extra or [])

    @property
    def n_fields(self) -> int:
        return self.data.n_fields + len(self.extra)

    def take(self, rows: np.ndarray | slice) -> Rows:
        d = self.data
        idx = d.indices[rows]
        n = idx.shape[0]
        vals = np.ones((n, d.n_fields + len(self.extra)), np.float32)
        if d.value_cols.size:
            vals[:, d.value_cols] = d.values[rows]
        if self.extra:
            ext = np.empty((n, len(self.extra)), np.int32)
            for j, (row, v) in enumerate(self.extra):
                ext[:, j] = row
                vals[:, d.n_fields + j] = v[rows]
            idx = np.concatenate([idx, ext], axis=1)
        return Rows(np.ascontiguousarray(idx), vals)


def table_row(key: int, bits: int) -> int:
    """A fixed row of the learner's table for a synthetic feature (hash of ``key``)."""
    x = (key * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _MASK64
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & _MASK64
    return int(x >> (64 - bits))


def leaf_rows(leaves: np.ndarray, num_leaves: int, bits: int) -> np.ndarray:
    """Hash each (tree, leaf) pair to a row of a ``2**bits`` table, int32 [n, n_trees].

    ``leaves`` is LightGBM's ``predict(pred_leaf=True)`` output; tree ``t``'s leaf ``l`` is
    the categorical value ``t * num_leaves + l`` (GBDT+LR's one-hot leaf encoding).
    """
    leaves = np.asarray(leaves, dtype=np.uint64)
    tree = np.arange(leaves.shape[1], dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        key = tree * np.uint64(num_leaves) + leaves + np.uint64(1)
        x = key * np.uint64(0x9E3779B97F4A7C15)
        x ^= x >> np.uint64(29)
        x = x * np.uint64(0xBF58476D1CE4E5B9)
    return (x >> np.uint64(64 - bits)).astype(np.int32)


class LeafView:
    """GBDT+LR's input: the leaf each tree puts an event in, one categorical field per tree."""

    def __init__(self, data: Encoded, booster: Any, num_leaves: int, bits: int) -> None:
        self.data = data
        self.booster = booster
        self.num_leaves = int(num_leaves)
        self.bits = int(bits)
        self.n_fields = int(booster.num_trees())

    def take(self, rows: np.ndarray | slice) -> Rows:
        leaves = self.booster.predict(self.data.dense[rows], pred_leaf=True)
        idx = leaf_rows(leaves.reshape(leaves.shape[0], -1), self.num_leaves, self.bits)
        return Rows(idx, np.ones(idx.shape, np.float32))


def stage_margin(stage: Any, view: Any, data: Encoded, rows: slice, kind: str) -> np.ndarray:
    """A stage's margin on a contiguous row range, in chunks (pure)."""
    out = np.empty(rows.stop - rows.start, np.float32)
    for a in range(rows.start, rows.stop, CHUNK_ROWS):
        b = min(a + CHUNK_ROWS, rows.stop)
        if kind == "trees":
            out[a - rows.start:b - rows.start] = stage.margin(_DenseRows(data.dense[a:b]))
        else:
            out[a - rows.start:b - rows.start] = stage.margin(view.take(slice(a, b)))
    return out


class _DenseRows:
    """What a tree stage reads: ``.dense`` (its ``margin`` needs nothing else)."""

    __slots__ = ("dense",)

    def __init__(self, dense: np.ndarray) -> None:
        self.dense = dense

    def __len__(self) -> int:
        return int(self.dense.shape[0])


# ----------------------------------------------------------------------------- fitting


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


@dataclass
class FitOptions:
    """How the neural stages are trained offline."""

    epochs: int = 8
    patience: int = 2
    batch_size: int = 1024
    seed: int = 0


def fit_residual(learner: Any, view: Any, data: Encoded, base: np.ndarray, opts: FitOptions,
                 on_epoch: Callable[[int, np.ndarray, np.ndarray], dict] | None = None,
                 tick: Callable[[], None] | None = None, track_test: bool = False,
                 margin_rows: slice | None = None) -> dict[str, Any]:
    """Mini-batch Adam on ``logloss(y, sigmoid(base + margin))`` over the training rows.

    Each epoch visits the training rows in a seeded random order (``partial_fit`` per
    mini-batch), then scores the validation slice; the learner ends in the state of the epoch
    with the best validation logloss. With ``track_test`` the test part is scored after every
    epoch too (the convergence curves). ``on_epoch(epoch, z_valid, z_test)`` may add fields to
    that epoch's history entry. Returns ``{"best_epoch", "history", "margin"}`` where
    ``margin`` is the learner's margin in its best state on ``margin_rows`` (default: every
    row), float32.
    """
    rng = np.random.default_rng(opts.seed)
    y = data.y
    best: tuple[float, int, Any] | None = None
    history: list[dict[str, Any]] = []
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
        zv = base[data.valid] + stage_margin(learner, view, data, data.valid, "residual")
        entry: dict[str, Any] = {"epoch": epoch, "train_loss": loss_sum / max(n_sum, 1),
                                 "skipped": skipped,
                                 "valid_logloss": logloss_from_margin(zv, y[data.valid])}
        zt = None
        if track_test:
            zt = base[data.test] + stage_margin(learner, view, data, data.test, "residual")
            entry.update(metrics(zt, y[data.test]))
        if on_epoch is not None:
            entry.update(on_epoch(epoch, zv, zt))
        history.append(entry)
        if best is None or entry["valid_logloss"] < best[0]:
            best = (entry["valid_logloss"], epoch, _copy_state(learner.state_dict()))
            bad = 0
        else:
            bad += 1
            if bad >= opts.patience:
                break
    assert best is not None
    if best[1] != history[-1]["epoch"]:
        learner.load_state_dict(best[2])
    rows = slice(0, len(data)) if margin_rows is None else margin_rows
    margin = stage_margin(learner, view, data, rows, "residual")
    return {"best_epoch": best[1], "history": history, "margin": margin}


def fit_trees(stage: Any, data: Encoded, init: np.ndarray | None, oof: int = 0,
              make_fold_stage: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Fit a tree stage on the training rows (early stopping on the validation slice).

    ``init`` is ``z_prev`` on every row (None for the first stage): the trees are fitted with
    ``init_score = init[train]``, i.e. on the residual of the stages before. Returns
    ``{"margin": float32 [n]}``: the trees' raw score on every row, where with ``oof = F > 1``
    the training rows hold out-of-fold scores from ``F`` extra fits.
    """
    tr, va = data.train, data.valid
    init_tr = None if init is None else init[tr]
    valid = (data.dense[va], data.y[va], None if init is None else init[va])
    stage.fit(data.dense[tr], data.y[tr], init_score=init_tr, valid=valid)
    margin = stage_margin(stage, None, data, slice(0, len(data)), "trees")
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
                margin[r] = fs.margin(_DenseRows(data.dense[r]))
            if hasattr(fs, "close"):
                fs.close()
    return {"margin": margin}


def offline_config(cfg: ModelConfig, **changes: Any) -> ModelConfig:
    """A config for one-shot fitting: no background refits, no drift detection."""
    return replace(cfg, drift=False, **changes)


def fold_stage_factory(cfg: ModelConfig, position: int) -> Callable[[int], Any]:
    """Tree stages for out-of-fold margins: same knobs, a seed derived from the fold."""

    def make(fold: int) -> Any:
        return build_stage("trees", position, replace(cfg, seed=cfg.seed * 31 + fold + 1), 0)

    return make


def blend_weights(margins: list[np.ndarray], y: np.ndarray, l2: float = 1e-6,
                  iters: int = 50) -> np.ndarray:
    """Logistic regression ``sigmoid(sum_i w_i m_i + b)`` by Newton's method; returns [w..., b].

    GBDT+DeepFM's learned combination of two models' outputs, fitted on the validation slice.
    """
    x = np.column_stack([np.asarray(m, np.float64) for m in margins] + [np.ones(len(y))])
    yy = np.asarray(y, np.float64)
    w = np.zeros(x.shape[1])
    w[:-1] = 1.0 / len(margins)
    for _ in range(iters):
        z = np.clip(x @ w, -30, 30)
        p = 1.0 / (1.0 + np.exp(-z))
        g = x.T @ (p - yy) + l2 * w
        h = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(h, g)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w


def apply_blend(w: np.ndarray, margins: list[np.ndarray]) -> np.ndarray:
    z = np.full(len(margins[0]), w[-1], np.float64)
    for wi, m in zip(w[:-1], margins, strict=True):
        z += wi * np.asarray(m, np.float64)
    return z.astype(np.float32)


class Timer:
    """Wall-clock seconds of a block: ``with Timer() as t: ...; t.seconds``."""

    def __enter__(self) -> Timer:
        self._t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
