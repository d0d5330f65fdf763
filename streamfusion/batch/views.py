"""What each stage reads from an ``EncodedLog``, gathered chunk by chunk on demand.

A view's ``take(rows)`` returns the inputs of a stage for some rows (a slice or an index
array): ``Rows`` (``indices``, ``values``) for a learner, ``TreeRows`` (``dense``) for trees.
Views never copy the log; ``stage_margin`` scores any stage through its view in chunks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from streamfusion.batch.load import EncodedLog

CHUNK_ROWS = 65_536  # rows gathered per fancy-index / predict call: amortises per-call overhead


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


class TreeRows:
    """What a tree stage reads: ``.dense`` (its ``margin`` needs nothing else)."""

    __slots__ = ("dense",)

    def __init__(self, dense: np.ndarray) -> None:
        self.dense = dense

    def __len__(self) -> int:
        return int(self.dense.shape[0])


class TreeView:
    """The trees' features of an ``EncodedLog``."""

    def __init__(self, data: EncodedLog) -> None:
        self.data = data

    def take(self, rows: np.ndarray | slice) -> TreeRows:
        return TreeRows(self.data.dense[rows])


class FeatureView:
    """The learner's features of an ``EncodedLog``, optionally with extra numeric fields.

    Parameters
    ----------
    data : EncodedLog
    extra : list of float32 [n] arrays
        Each adds one field whose embedding is a row of its own, just after the log's rows
        (``data.table_rows + j``), scaled by the event's value: e.g. the trees' score for
        GBDT2DNN / GBDT2DeepFM.

    Examples
    --------
    >>> log = EncodedLog(np.array([[0, 1], [2, 1]], np.int32), np.ones((2, 0), np.float32),
    ...                  np.zeros(0, np.int64), np.zeros((2, 1), np.float32),
    ...                  np.array([0, 1], np.float32), 1, 0, ["a", "b"], ["d"], 3, 10)
    >>> rows = FeatureView(log, [np.array([0.5, -2.0], np.float32)]).take(slice(0, 2))
    >>> rows.indices.tolist(), rows.values[:, -1].tolist()
    ([[0, 1, 3], [2, 1, 3]], [0.5, -2.0])
    """

    def __init__(self, data: EncodedLog, extra: list[np.ndarray] | None = None) -> None:
        self.data = data
        self.extra = list(extra or [])

    @property
    def n_fields(self) -> int:
        return self.data.n_fields + len(self.extra)

    @property
    def table_rows(self) -> int:
        """Rows a learner over this view needs."""
        return self.data.table_rows + len(self.extra)

    def take(self, rows: np.ndarray | slice) -> Rows:
        d = self.data
        idx = d.indices[rows]
        n = idx.shape[0]
        vals = np.ones((n, self.n_fields), np.float32)
        if d.value_cols.size:
            vals[:, d.value_cols] = d.values[rows]
        if self.extra:
            ext = np.empty((n, len(self.extra)), np.int32)
            for j, v in enumerate(self.extra):
                ext[:, j] = d.table_rows + j
                vals[:, d.n_fields + j] = v[rows]
            idx = np.concatenate([idx, ext], axis=1)
        return Rows(np.ascontiguousarray(idx), vals)


class LeafView:
    """GBDT+LR's input: the leaf each tree puts an event in, one categorical field per tree.

    Tree ``t``'s leaf ``l`` is table row ``t * num_leaves + l`` (the one-hot leaf encoding of
    He et al. 2014, without hashing: the table has exactly one row per leaf).
    """

    def __init__(self, data: EncodedLog, booster: Any, num_leaves: int) -> None:
        self.data = data
        self.booster = booster
        self.num_leaves = int(num_leaves)
        self.n_fields = int(booster.num_trees())
        self.table_rows = self.n_fields * self.num_leaves

    def take(self, rows: np.ndarray | slice) -> Rows:
        leaves = self.booster.predict(self.data.dense[rows], pred_leaf=True)
        idx = leaf_rows(leaves.reshape(leaves.shape[0], -1), self.num_leaves)
        return Rows(idx, np.ones(idx.shape, np.float32))


def leaf_rows(leaves: np.ndarray, num_leaves: int) -> np.ndarray:
    """Table rows of LightGBM's ``predict(pred_leaf=True)`` output, int32 [n, n_trees]."""
    leaves = np.asarray(leaves, dtype=np.int64)
    tree = np.arange(leaves.shape[1], dtype=np.int64)[None, :]
    return (tree * num_leaves + leaves).astype(np.int32)


def stage_margin(stage: Any, view: Any, rows: slice) -> np.ndarray:
    """A stage's margin on a contiguous row range through its view, in chunks (pure)."""
    out = np.empty(rows.stop - rows.start, np.float32)
    for a in range(rows.start, rows.stop, CHUNK_ROWS):
        b = min(a + CHUNK_ROWS, rows.stop)
        out[a - rows.start:b - rows.start] = stage.margin(view.take(slice(a, b)))
    return out
