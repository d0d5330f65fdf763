"""Model files: a trained chain kept for scoring, compact, versioned and checksummed.

A model file holds what scoring needs and nothing a learner only needs to go on learning:

- the chain's config and, per stage, the live trees (LightGBM text, offset, categorical codes,
  the click prior) or the residual learner's weights: the dense parameters and only the rows of
  the hashed table that learning touched (a row equal to its seeded initial value is rebuilt
  from the seed), plus the prior counts and the value standardisation;
- the encoder: schema, hashing config, and the non-zero slots of the count table.

No Adam / AdaGrad moments, no tree window, no pending refit: a file grows with what was
learned, not with ``2**bits``. The container is the checkpoint's (``checkpoint.save_file``):
magic bytes, JSON header with a format version, deflated arrays, SHA-256 of every byte; a
corrupt, truncated or foreign file is refused whole with one ``CheckpointError`` line.

    >>> saved = load_model("model.sfm")  # doctest: +SKIP
    >>> saved.model.score(batch).p  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamfusion import _parse, checkpoint
from streamfusion.checkpoint import CheckpointError
from streamfusion.data.encoder import ENCODER_VERSION, Encoder
from streamfusion.data.schema import Schema
from streamfusion.fusion import ModelConfig
from streamfusion.online import OnlineModel
from streamfusion.stages import residual
from streamfusion.stages.residual import ResidualLearner

MAGIC = b"SFMODEL\x01"
FORMAT = "streamfusion-model"
FORMAT_VERSION = 2  # 2: the chain's end-of-stream blend
_KIND = {"magic": MAGIC, "fmt": FORMAT, "version": FORMAT_VERSION}
# the tree stage's learning state: left out of a model file (scoring never reads it)
_TREE_LEARNING = ("window_X", "window_y", "window_z", "window_rest", "window_indices",
                  "adwin_history", "pending")


class FrozenEncoder(Encoder):
    """An :class:`Encoder` that scores: the count table and row counter are read, never
    written, so encoding a row changes nothing (a row's count feature is the one it would get
    as the next row seen). Diagnostics of the input (``unparsed``) are still counted.

    Examples
    --------
    >>> from streamfusion.data.encoder import new_state
    >>> from streamfusion.data.schema import avazu_schema
    >>> learning = Encoder(avazu_schema(header=False), bits=12)
    >>> line = b"1,0,14102100,1005,0,a,b,c,d,e,f,g,h,i,1,2,3,4,5,6,7,8,9,10" + bytes([10])
    >>> frozen = FrozenEncoder.of(learning)
    >>> frozen.parse_into(line, 0, len(line), 1, frozen.new_arrays(1), 0, new_state())
    1
    >>> int(learning.seen[0]), int(learning.counts.sum())
    (0, 0)
    """

    def parse_into(self, buf: bytes, start: int, end: int, max_rows: int,
                   out: Any, offset: int, state: np.ndarray,
                   label_missing_ok: bool = True) -> int:
        """As :meth:`Encoder.parse_into`, frozen; a missing label is NaN (unlabelled logs)."""
        if self.schema.is_svm:  # libsvm rows have no count features: pure already
            return super().parse_into(buf, start, end, max_rows, out, offset, state, True)
        o = {k: v[offset:] for k, v in out.items()}
        return _parse.parse_delim(
            self._kind, self._field, self._dslot, self._dmode, self._salt, self._num_row,
            self._lenient, self.counts, self.seen, self.unparsed, self._delim, self.bits,
            self.count_bits, label_missing_ok, buf, start, end, max_rows, o["indices"],
            o["values"], o["dense"], o["y"], o["line"], o["time"], state, frozen=True)

    @classmethod
    def of(cls, encoder: Encoder) -> FrozenEncoder:
        """A frozen encoder sharing ``encoder``'s tables (it sees the encoder learn)."""
        frozen = cls(encoder.schema, encoder.bits, encoder.seed, encoder.count_bits)
        frozen.counts, frozen.seen = encoder.counts, encoder.seen
        return frozen


@dataclass
class SavedModel:
    """What :func:`load_model` returns: a chain ready to score (or to go on learning).

    Attributes
    ----------
    model : OnlineModel
        The chain; ``model.score(batch)`` gives the margins of every stage. Optimizer moments
        start at zero if it learns on.
    encoder : FrozenEncoder
        Turns lines / records of ``schema`` into batches exactly as the trained model saw them;
        :meth:`learning_encoder` gives one that counts on.
    config : ModelConfig
        The chain's settings (one seed included).
    meta : dict
        ``events_learned`` and ``source`` (the log it was trained on, if any).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from streamfusion import ResFusion
    >>> rng = np.random.default_rng(0)
    >>> X = {"site": rng.choice(["a", "b"], 500), "n": rng.integers(0, 9, 500)}
    >>> path = os.path.join(tempfile.mkdtemp(), "m.sfm")
    >>> ResFusion(model="fm", bits=10).partial_fit(X, rng.integers(0, 2, 500)).save(path)
    >>> saved = load_model(path)
    >>> saved.model.chain.kinds, saved.schema.label, saved.meta["events_learned"]
    (['fm'], 'click', 500)
    """

    model: OnlineModel
    encoder: FrozenEncoder
    config: ModelConfig
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def schema(self) -> Schema:
        return self.encoder.schema

    def learning_encoder(self) -> Encoder:
        """A new encoder that counts on from the saved tables (a driver that learns on)."""
        return Encoder.from_state_dict(self.encoder.state_dict())


# ---------------------------------------------------------------------------------- export
def _learner_state(learner: ResidualLearner) -> dict[str, Any]:
    cfg = learner.config()
    # the rows learning never touched equal the seeded initialisation: rebuilt at load
    fresh = ResidualLearner(**{**cfg, "threads": 1}).table
    touched = np.flatnonzero((learner.table != fresh).any(axis=1)).astype(np.uint32)
    return {"config": cfg, "dense": learner.dense.copy(), "rows": touched,
            "table_rows": learner.table[touched], "clicks": float(learner.clicks),
            "seen": int(learner.seen), "value_count": int(learner.value_count),
            "value_mean": learner.value_mean.copy(), "value_m2": learner.value_m2.copy()}


def _tree_state(stage: Any) -> dict[str, Any]:
    state = stage.state_dict()  # joins a running refit; its trees never went live
    for key in _TREE_LEARNING:
        state.pop(key)
    return state


def _encoder_state(encoder: Encoder) -> dict[str, Any]:
    slots = np.flatnonzero(encoder.counts).astype(np.uint32)
    return {"version": ENCODER_VERSION, "schema": encoder.schema.to_dict(),
            "bits": encoder.bits, "seed": encoder.seed, "count_bits": encoder.count_bits,
            "seen": int(encoder.seen[0]), "count_slots": slots,
            "count_values": encoder.counts[slots]}


def _model_state(model: OnlineModel, encoder: Encoder, source: str | None) -> dict[str, Any]:
    stages = []
    for stage, kind in zip(model.chain.stages, model.chain.kinds, strict=True):
        stages.append(_tree_state(stage) if kind == "trees" else _learner_state(stage))
    return {"config": model.config.to_dict(), "n_fields": model.n_fields,
            "kinds": list(model.chain.kinds), "stages": stages, "blend": model.chain.blend,
            "encoder": _encoder_state(encoder),
            "meta": {"events_learned": model.events_learned, "source": source}}


def save_model(path: str | os.PathLike, model: OnlineModel, encoder: Encoder,
               source: str | None = None) -> Path:
    """Write the scoring model of ``model`` (its live stages) and ``encoder`` to ``path``.

    Atomic (temporary file, fsync, rename). ``source`` names the log it learned from.
    """
    return checkpoint.save_file(path, _model_state(model, encoder, source), **_KIND,
                                compress=True)


def model_bytes(model: OnlineModel, encoder: Encoder, source: str | None = None) -> bytes:
    """The bytes :func:`save_model` would write (the daemon's snapshots travel as these)."""
    return checkpoint.dumps(_model_state(model, encoder, source), **_KIND, compress=True)


# ---------------------------------------------------------------------------------- import
def _load_learner(learner: ResidualLearner, state: dict[str, Any]) -> None:
    rows, values = state["rows"], state["table_rows"]
    table = learner.table  # the seeded initialisation, as when the saved learner started
    if (not isinstance(rows, np.ndarray) or rows.dtype != np.uint32 or rows.ndim != 1
            or not isinstance(values, np.ndarray) or values.shape != (len(rows), table.shape[1])
            or (len(rows) and int(rows.max()) >= table.shape[0])):
        raise ValueError("residual rows do not fit the learner's table")
    table[rows] = values
    learner.load_state_dict({
        "format": residual.FORMAT, "format_version": residual.FORMAT_VERSION,
        "config": state["config"],
        "step": 0, "clicks": state["clicks"], "seen": state["seen"],
        "value_count": state["value_count"], "value_mean": state["value_mean"],
        "value_m2": state["value_m2"], "table": table, "dense": state["dense"],
        "table_m": learner.table_m, "table_v": learner.table_v,
        "dense_m": learner.dense_m, "dense_v": learner.dense_v})


def _load_trees(stage: Any, state: dict[str, Any]) -> None:
    empty = np.zeros(0, np.float32)
    width = state.get("n_features") or 0
    stage.load_state_dict({**state, "window_X": np.zeros((0, width), np.float32),
                           "window_y": empty, "window_z": empty, "window_rest": empty,
                           "window_indices": None,
                           "adwin_history": np.zeros(0, np.float64), "pending": None})


def _load_encoder(state: dict[str, Any]) -> FrozenEncoder:
    encoder = FrozenEncoder(Schema.from_dict(state["schema"]), int(state["bits"]),
                            int(state["seed"]), int(state["count_bits"]))
    slots, values = state["count_slots"], state["count_values"]
    if (not isinstance(slots, np.ndarray) or slots.dtype != np.uint32
            or not isinstance(values, np.ndarray) or values.dtype != np.int32
            or slots.shape != values.shape
            or (len(slots) and int(slots.max()) >= len(encoder.counts))):
        raise ValueError("encoder count slots do not fit its table")
    counts = np.zeros_like(encoder.counts)
    counts[slots] = values
    encoder.load_state_dict({**state, "counts": counts})
    return encoder


def load_model(path: str | os.PathLike, threads: int = 1) -> SavedModel:
    """Read a model file; ``CheckpointError`` (one line) when it is corrupt or foreign.

    ``threads`` sets the learner's and the trees' threads (scores do not depend on it).
    """
    state = checkpoint.load_file(path, **_KIND, what="model file")
    return _saved_model(state, f"model file {path}", threads)


def model_from_bytes(raw: bytes, name: str, max_array_bytes: int,
                     threads: int = 1) -> SavedModel:
    """The model in :func:`model_bytes`' bytes (``name`` in messages); ``CheckpointError``
    (one line) when they are corrupt or foreign, or inflate past ``max_array_bytes``."""
    state = checkpoint.loads(raw, name, max_array_bytes, **_KIND, what="model file")
    return _saved_model(state, name, threads)


def _saved_model(state: dict[str, Any], name: str, threads: int) -> SavedModel:
    try:
        config = ModelConfig.from_dict({**state["config"], "threads": threads,
                                        "tree_threads": threads})
        model = OnlineModel(config, int(state["n_fields"]))
        if list(state["kinds"]) != model.chain.kinds or len(state["stages"]) != len(
                model.chain.stages):
            raise ValueError(f"stages {state['kinds']} do not match the config's chain")
        for stage, kind, st in zip(model.chain.stages, model.chain.kinds, state["stages"],
                                   strict=True):
            if kind == "trees":
                _load_trees(stage, {**st, "config": {**st["config"], "threads": threads}})
            else:
                _load_learner(stage, {**st, "config": {**st["config"], "threads": threads}})
        model.chain.load_blend(state["blend"])
        encoder = _load_encoder(state["encoder"])
        if len(encoder.schema.field_names) != model.n_fields and not encoder.schema.is_svm:
            raise ValueError("the encoder's fields do not match the learner's")
        meta = dict(state.get("meta") or {})
        model.events_learned = int(meta.get("events_learned", 0))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{name} is malformed: {exc}") from None
    return SavedModel(model, encoder, config, meta)
