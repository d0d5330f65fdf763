"""The Python API: ``ResFusion``, the replay's model over columns, for users without the CLI.

Columns (a dict of arrays, a pyarrow Table or a pandas DataFrame) are written as CSV rows and
encoded by the same C tokenizer as a replayed file, so a column is typed, hashed and counted
exactly as ``streamfusion replay --format csv`` would do it, and a model saved here is the model
file that ``streamfusion score`` reads (and the other way round).
"""

from __future__ import annotations

import io
import os
from dataclasses import fields
from typing import Any

import numpy as np

from streamfusion.data.encoder import ST_ERR, ST_ERR_LINE, Encoder, new_state
from streamfusion.data.schema import Schema, detect_schema
from streamfusion.features import Batch
from streamfusion.fusion import ModelConfig
from streamfusion.model_file import FrozenEncoder, load_model, save_model
from streamfusion.online import OnlineModel, batch_size_at

_CONFIG_KEYS = frozenset(f.name for f in fields(ModelConfig))


def _table(X: Any) -> Any:
    """A pyarrow Table of the columns of ``X`` (dict of arrays, Table or DataFrame)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(X, pa.Table):
        table = X
    elif isinstance(X, dict):
        table = pa.table({str(k): np.asarray(v) if not isinstance(v, (pa.Array, pa.ChunkedArray))
                          else v for k, v in X.items()})
    elif hasattr(X, "columns") and hasattr(X, "iloc"):  # pandas, without importing it
        table = pa.Table.from_pandas(X, preserve_index=False)
    else:
        raise TypeError(f"X must be a dict of arrays, a pyarrow Table or a pandas DataFrame, "
                        f"not {type(X).__name__}")
    cols = []
    for col in table.columns:  # NaN is a missing number: an empty cell, as in a file
        if pa.types.is_floating(col.type):
            col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
        cols.append(col)
    return pa.table(cols, names=table.column_names)


def _labels(y: Any, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"y must have one label per row ({n}), got shape {y.shape}")
    if y.dtype == bool:
        return y.astype(np.int8)
    ok = np.isin(y, (0, 1))
    if not ok.all():
        raise ValueError(f"labels must be 0 or 1 (or bool): row {int(np.argmin(ok))} is "
                         f"{y[np.argmin(ok)]!r}")
    return y.astype(np.int8)


class ResFusion:
    """Online ResFusion over columns: LightGBM trees, then a DeepFM residual learner.

    The same chain as ``streamfusion replay`` with the same defaults (``ModelConfig``):
    ``partial_fit`` cuts its rows into the replay's mini-batch schedule (one event, doubling
    to 16 over the first 16 events, then growing to ``batch_size``) and learns
    test-then-train; a call learns all its rows, the last ones as a shorter batch when the
    call ends within one. Fed in chunks that end on the schedule's batch boundaries (one
    call, or multiples of the batch size), then ``finish``,
    it learns what a replay without holdout (``--holdout 0``) learns, bit for bit. Column
    kinds are inferred
    from the first ``partial_fit`` as replay infers a CSV's (``types`` overrides them), or come
    from ``schema``. ``predict_proba`` is pure. ``save`` writes the model file that
    ``streamfusion score`` reads; ``ResFusion.load`` reads one written by
    ``replay --save-model`` too.

    Parameters
    ----------
    schema : Schema, optional
        What each column is (``streamfusion.data.Schema``); default: inferred.
    label : str
        The label column's name in the schema (default ``"click"``).
    types : dict, optional
        Column kind overrides for the inference, ``{"zip": "cat", "price": "num"}``.
    batch_size : int
        The largest mini-batch (replay's ``--batch-size``).
    **config
        Any ``ModelConfig`` field: ``model``, ``residual``, ``bits``, ``k``, ``hidden``,
        ``n_trees``, ``seed``, ... (the CLI's defaults).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> n = 3000
    >>> X = {"site": rng.choice(["a", "b", "c"], n), "age": rng.integers(18, 80, n)}
    >>> y = (rng.random(n) < np.where(X["site"] == "a", 0.6, 0.1)).astype(int)
    >>> model = ResFusion(bits=14, seed=0).partial_fit(X, y)
    >>> p = model.predict_proba({"site": ["a", "c"], "age": [30, 30]})[:, 1]
    >>> bool(p[0] > p[1])
    True
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "model.sfm")
    >>> model.save(path)
    >>> again = ResFusion.load(path)
    >>> bool((again.predict_proba(X) == model.predict_proba(X)).all())
    True
    """

    def __init__(self, schema: Schema | None = None, *, label: str = "click",
                 types: dict[str, str] | None = None, batch_size: int = 1024,
                 **config: Any) -> None:
        unknown = set(config) - _CONFIG_KEYS
        if unknown:
            raise TypeError(f"unknown settings {sorted(unknown)}; see ModelConfig")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.config = ModelConfig(**config)
        self.schema = schema
        self.label = schema.label if schema is not None else label
        self.types = types
        self.batch_size = int(batch_size)
        self.events = 0  # rows learned: the position in the batch schedule
        self._encoder: Encoder | None = None
        self._model: OnlineModel | None = None

    # -- encoding ----------------------------------------------------------------------------
    def _csv(self, table: Any, y: np.ndarray | None, header: bool) -> bytes:
        """The rows of ``table`` as CSV lines in the schema's column order."""
        import pyarrow as pa
        from pyarrow import csv

        n = table.num_rows
        if self.schema is None:  # inference: the label first, then the columns as given
            names = [self.label, *table.column_names]
        else:
            names = [c.name for c in self.schema.columns]
        cols = []
        for name in names:
            if name == self.label:
                cols.append(pa.array(y) if y is not None else pa.nulls(n, pa.int8()))
            elif name in table.column_names:
                cols.append(table.column(name))
            elif self.schema is not None and self.schema.column_kinds().get(name) in (
                    None, "skip"):
                cols.append(pa.nulls(n, pa.string()))  # ids and skipped columns
            else:
                raise ValueError(f"column {name!r} is missing (the model's columns: "
                                 f"{', '.join(c.name for c in self.schema.columns)})")
        sink = io.BytesIO()
        csv.write_csv(pa.table(cols, names=names), sink,
                      csv.WriteOptions(include_header=header, quoting_style="needed"))
        return sink.getvalue()

    def _encode(self, encoder: Encoder, table: Any, y: np.ndarray | None) -> Batch:
        buf = self._csv(table, y, header=False)
        n = table.num_rows
        out = encoder.new_arrays(n)
        state = new_state()
        rows = encoder.parse_into(buf, 0, len(buf), n, out, 0, state,
                                  label_missing_ok=y is None)
        if state[ST_ERR] or rows != n:
            raise ValueError(f"row {int(state[ST_ERR_LINE]) - 1}: {encoder.reason(state)}")
        return Batch(**out)

    def _start(self, table: Any, y: np.ndarray) -> None:
        if self.schema is None:
            if self.label in table.column_names:
                raise ValueError(f"X has a column named {self.label!r}, the label's name: "
                                 "pass label=... to name the label otherwise")
            head = self._csv(table, y, header=True)
            self.schema = detect_schema(head, True, "csv", self.label, self.types, ",")
        self._encoder = Encoder(self.schema, bits=self.config.bits, seed=self.config.seed)
        self._model = OnlineModel(self.config, len(self.schema.field_names),
                                  slotted=self.schema.is_svm)

    # -- learning and scoring ------------------------------------------------------------------
    def partial_fit(self, X: Any, y: Any) -> ResFusion:
        """Learn from the rows of ``X`` with click labels ``y`` (0/1), test-then-train."""
        table = _table(X)
        labels = _labels(y, table.num_rows)
        if self._model is None:
            self._start(table, labels)
        batch = self._encode(self._encoder, table, labels)
        pos = 0
        while pos < len(batch):
            size = batch_size_at(self.events, self.batch_size)
            part = batch.take(slice(pos, pos + size))
            self._model.poll()  # refits go live between mini-batches, as in a replay
            self._model.step(part)
            pos += len(part)
            self.events += len(part)
        return self

    def finish(self) -> ResFusion:
        """The end of the data, as at the end of a replayed file: the trees are refit on their
        whole window, in place of any pending refit. Learning may go on after it."""
        if self._model is not None:
            self._model.finish()
        return self

    def _scores(self, X: Any) -> Any:
        if self._model is None:
            raise ValueError("this ResFusion has not learned anything yet: call partial_fit")
        table = _table(X)
        batch = self._encode(FrozenEncoder.of(self._encoder), table, None)
        return self._model.score(batch)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities ``[[1 - p, p], ...]`` of each row (float64 [n, 2]); changes nothing."""
        p = self._scores(X).p
        return np.stack([1.0 - p, p], axis=1)

    def predict_margin(self, X: Any) -> dict[str, np.ndarray]:
        """The fused margin and its tree and residual parts (float32 [n] each); pure."""
        s = self._scores(X)
        return {"margin": s.margin, "base_margin": s.base_margin,
                "residual_margin": s.residual_margin}

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the model file (``streamfusion score --model PATH`` reads it)."""
        if self._model is None:
            raise ValueError("nothing to save: call partial_fit first")
        save_model(path, self._model, self._encoder)

    @classmethod
    def load(cls, path: str | os.PathLike, batch_size: int = 1024) -> ResFusion:
        """A model from a file of ``save`` or ``streamfusion replay --save-model``; it scores
        and can learn on (optimizer moments start afresh). ``CheckpointError`` when the file
        is corrupt or foreign."""
        saved = load_model(path)
        obj = cls(saved.schema, batch_size=batch_size, **saved.config.to_dict())
        obj._model = saved.model
        obj._encoder = saved.learning_encoder()
        obj.events = saved.model.events_learned
        return obj
