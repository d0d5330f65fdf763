"""The model side of the online loop: a chain of stages run test-then-train.

``OnlineModel.step`` scores every event with the whole chain, then lets the chain learn from
the labelled events it is allowed to learn from; ``poll`` swaps in finished tree refits
between mini-batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from streamfusion.evaluate import sigmoid
from streamfusion.features import Batch
from streamfusion.fusion import Chain, ModelConfig


@dataclass
class Scores:
    """The chain's output for one batch: fused margin, its two parts and the probability."""

    margin: np.ndarray
    base_margin: np.ndarray
    residual_margin: np.ndarray
    p: np.ndarray
    stage_margins: np.ndarray


class OnlineModel:
    """A chain of stages run test-then-train over a stream.

    Parameters
    ----------
    config : ModelConfig
        The chain and every stage's settings (one ``seed`` included).
    n_fields : int
        Number of learner fields of the stream's schema.
    slotted : bool
        Events fill a varying number of the fields (libsvm, libfm, libffm, river dicts): the
        first-order step is not spread over them (``ModelConfig.for_input``).

    Examples
    --------
    >>> from streamfusion.data import Encoder
    >>> from streamfusion.data.schema import avazu_schema
    >>> enc = Encoder(avazu_schema(), bits=12)
    >>> batch, _ = enc.encode_records([{"hour": 14102100, "C1": 1005, "click": i % 2}
    ...                                for i in range(4)])
    >>> model = OnlineModel(ModelConfig(model="fm", bits=12), n_fields=enc.F)
    >>> scores = model.step(batch)  # scores every row, then learns the labelled ones
    >>> scores.margin.shape
    (4,)
    """

    def __init__(self, config: ModelConfig, n_fields: int, slotted: bool = False) -> None:
        self.n_fields = int(n_fields)
        self.config = config.for_input(self.n_fields, slotted=slotted)  # the steps it takes
        self.chain = Chain.from_config(self.config, self.n_fields)
        self.events_learned = 0
        self.skipped_updates = 0

    def score(self, batch: Batch) -> Scores:
        """Score ``batch`` with the whole chain. Pure: changes no state."""
        return self._scores(self.chain.margins(batch), self.chain.blend)

    def _scores(self, margins: np.ndarray, blend: list[float] | None) -> Scores:
        margins = self.chain.blended(margins, blend)
        n = margins.shape[1]
        z = Chain.fuse(margins)
        zeros = np.zeros(n, dtype=np.float32)
        trees = self.chain.is_tree
        base = margins[trees].sum(axis=0, dtype=np.float32) if trees.any() else zeros
        resid = margins[~trees].sum(axis=0, dtype=np.float32) if (~trees).any() else zeros
        return Scores(z, base, resid, sigmoid(z), margins)

    def poll(self) -> bool:
        """Swap in finished tree refits; call between mini-batches. True when one went live."""
        return self.chain.poll()

    def finish(self) -> bool:
        """At the end of a stream: the trees are refit on their whole window in place of any
        pending refit (see ``TreeStage.finish``). True when a model changed."""
        return self.chain.finish()

    def step(self, batch: Batch, learn_mask: np.ndarray | None = None,
             weight: np.ndarray | None = None) -> Scores:
        """Score every event of ``batch`` and learn from the labelled ones in ``learn_mask``
        (their losses weighted by ``weight`` in the residual learners, when given); each
        event is scored before the step that learns it (``Chain.score_and_learn``), with the
        blend as it was before the batch (the live blend learns from these labels too)."""
        mask = ~np.isnan(batch.y)
        if learn_mask is not None:
            mask &= learn_mask
        blend = self.chain.blend
        margins, stats = self.chain.score_and_learn(batch, mask, weight)
        self.events_learned += int(mask.sum())
        self.skipped_updates += int(stats["skipped"])
        return self._scores(margins, blend)

    @property
    def version(self) -> int:
        return self.chain.version

    @property
    def refits(self) -> int:
        return self.chain.refits

    def describe(self) -> dict[str, Any]:
        """The report's ``model`` entry."""
        return {
            "stages": list(self.chain.kinds),
            "refits": self.refits,
            "refits_started": self.refits,
            "refits_live": self.chain.refits_live,
            "refits_rejected": self.chain.refits_rejected,
            "blend": self.chain.blend,
            "version": self.version,
            "events_learned": self.events_learned,
            "skipped_updates": self.skipped_updates,
            "config": self.config.to_dict(),
        }

    def close(self) -> None:
        self.chain.close()

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "n_fields": self.n_fields,
            "events_learned": self.events_learned,
            "skipped_updates": self.skipped_updates,
            "chain": self.chain.state_dict(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> OnlineModel:
        """Build a model from a checkpointed state; the state is validated before use."""
        try:
            config = ModelConfig.from_dict(dict(state["config"]))
            model = cls(config, int(state["n_fields"]))
            model.chain.load_state_dict(state["chain"])
            model.events_learned = int(state["events_learned"])
            model.skipped_updates = int(state["skipped_updates"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"model state is incomplete or malformed: {exc!r}") from None
        return model
