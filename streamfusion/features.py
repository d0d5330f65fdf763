"""The encoded mini-batch every stage consumes.

A ``Batch`` is produced by the C tokenizer (``streamfusion._parse``) from file lines or Kafka
messages. The residual learner reads ``indices`` / ``values`` (hashed rows of one shared
table); the trees read ``dense`` (numeric columns as they are, categoricals as counts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Batch:
    """One mini-batch of encoded events.

    Attributes
    ----------
    indices : int32 array [n, fields]
        Hashed row of each (field, value) in the learner's shared table.
    values : float32 array [n, fields]
        1.0 for categorical fields, the scaled value for numeric ones (0 when missing).
    dense : float32 array [n, tree_features]
        Tree features: numeric columns as they are, categoricals as frequency counts.
    y : float32 array [n]
        Click label; NaN when the event carries none (live traffic).
    line : int64 array [n]
        Position of the event in its source (1-based line number for files).
    time : int64 array [n]
        Event time as an ordering key (Avazu: YYMMDDHH, a CSV's time column: YYYYMMDDHH; -1
        when the format has none or the cell is missing).
    ids : list or None
        Event ids as given by the source (Kafka), else None.
    """

    indices: np.ndarray
    values: np.ndarray
    dense: np.ndarray
    y: np.ndarray
    line: np.ndarray
    time: np.ndarray
    ids: list | None = field(default=None)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def take(self, rows: np.ndarray | slice) -> Batch:
        """Return the sub-batch of the given rows (a boolean mask, indices or a slice)."""
        ids = None
        if self.ids is not None:
            ids = list(np.asarray(self.ids, dtype=object)[rows])
        return Batch(
            np.ascontiguousarray(self.indices[rows]),
            np.ascontiguousarray(self.values[rows]),
            np.ascontiguousarray(self.dense[rows]),
            np.ascontiguousarray(self.y[rows]),
            np.ascontiguousarray(self.line[rows]),
            np.ascontiguousarray(self.time[rows]),
            ids,
        )

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        """Concatenate batches row-wise (ids kept only when every batch has them)."""
        ids = None
        if batches and all(b.ids is not None for b in batches):
            ids = [i for b in batches for i in b.ids]
        return Batch(
            *(np.concatenate([getattr(b, name) for b in batches])
              for name in ("indices", "values", "dense", "y", "line", "time")),
            ids,
        )
