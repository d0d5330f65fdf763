"""The one online step shared by file replay and the Kafka daemon: score, then learn.

``OnlineModel.step`` swaps in finished tree refits (between mini-batches only), scores every
event with the whole chain, then lets the chain learn from the labelled events it is allowed
to learn from. Both drivers call it; they differ only in their source and sink.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamfusion import argtypes as at
from streamfusion.evaluate import sigmoid
from streamfusion.features import Batch
from streamfusion.fusion import MODELS, RESIDUAL_KINDS, Chain, ModelConfig

# The mini-batch schedule: a batch holds about 1/BATCH_GROWTH of the events seen before it,
# between MIN_BATCH and the largest size, in powers of two. Early events take many small steps
# (a 10k-event log learns from hundreds of updates, not ten) and at scale batches are full size
# (1,024 from about half a million events on), so learning fast early costs no throughput.
MIN_BATCH = 32
BATCH_GROWTH = 512


def batch_size_at(events: int, max_size: int) -> int:
    """The size of the mini-batch that starts after ``events`` events: deterministic, so a
    resumed run cuts the same batches as an uninterrupted one."""
    size = MIN_BATCH
    while size < max_size and size * BATCH_GROWTH <= events:
        size *= 2
    return min(size, max_size)


def batch_schedule(max_size: int) -> dict[str, int]:
    """The schedule of ``batch_size_at`` as the report's model block states it."""
    return {"min": min(MIN_BATCH, max_size), "max": max_size, "growth": BATCH_GROWTH}


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

    Examples
    --------
    >>> model = OnlineModel(ModelConfig(model="fm", bits=12), n_fields=23)  # doctest: +SKIP
    >>> scores = model.step(batch)  # scores every row, then learns the labelled ones
    """

    def __init__(self, config: ModelConfig, n_fields: int) -> None:
        self.config = config
        self.n_fields = int(n_fields)
        self.chain = Chain.from_config(config, self.n_fields)
        self.is_tree = np.array([k == "trees" for k in self.chain.kinds])
        self.events_learned = 0
        self.skipped_updates = 0

    def score(self, batch: Batch) -> Scores:
        """Score ``batch`` with the whole chain. Pure: changes no state."""
        return self._scores(self.chain.margins(batch))

    def _scores(self, margins: np.ndarray) -> Scores:
        n = margins.shape[1]
        z = Chain.fuse(margins)
        zeros = np.zeros(n, dtype=np.float32)
        base = margins[self.is_tree].sum(axis=0, dtype=np.float32) if self.is_tree.any() else zeros
        resid = (margins[~self.is_tree].sum(axis=0, dtype=np.float32)
                 if (~self.is_tree).any() else zeros)
        return Scores(z, base, resid, sigmoid(z), margins)

    def poll(self) -> bool:
        """Swap in finished tree refits; call between mini-batches. True when one went live."""
        return self.chain.poll()

    def finish(self) -> bool:
        """At the end of a stream: pending refits go live now and the trees are refit on their
        whole window (see ``TreeStage.finish``). True when a model changed."""
        return self.chain.finish()

    def step(self, batch: Batch, learn_mask: np.ndarray | None = None) -> Scores:
        """Score every event of ``batch``, then learn from the labelled ones in ``learn_mask``."""
        mask = ~np.isnan(batch.y)
        if learn_mask is not None:
            mask &= learn_mask
        margins, stats = self.chain.score_and_learn(batch, mask)
        self.events_learned += int(mask.sum())
        self.skipped_updates += int(stats["skipped"])
        return self._scores(margins)

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


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model flags shared by ``replay`` and ``serve``."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", choices=MODELS, default="resfusion",
                   help="the chain: resfusion = trees then the residual learner (default)")
    g.add_argument("--residual", choices=RESIDUAL_KINDS, default="deepfm",
                   help="residual learner inside resfusion / nnres-gbdt / --iterations")
    g.add_argument("--iterations", type=at.nonneg_int, default=None, metavar="K",
                   help="paper Table 3: K+1 alternating stages (trees, +DeepFM, +trees, ...)")
    g.add_argument("--trees", type=at.positive_int, default=100, help="trees per refit")
    g.add_argument("--leaves", type=at.at_least(2), default=63, help="leaves per tree")
    g.add_argument("--tree-lr", type=at.positive_float, default=0.05, help="LightGBM learning rate")
    g.add_argument("--refit-every", type=at.positive_int, default=500_000, metavar="N",
                   help="refit the trees every N learned events (earlier on drift)")
    g.add_argument("--first-fit", type=at.positive_int, default=1_000, metavar="N",
                   help="first tree fit after N learned events (before it: the click log-odds)")
    g.add_argument("--window", type=at.positive_int, default=200_000, metavar="W",
                   help="the trees are refit on the last W learned events")
    g.add_argument("--no-drift", action="store_true", help="refit on schedule only (no ADWIN)")
    g.add_argument("--fade", type=at.nonneg_int, default=100_000, metavar="N",
                   help="a refit's trees fade in over N learned events, so the residual "
                   "learner is not shocked by the swap (0 = switch at once)")
    g.add_argument("--warm-start", action="store_true",
                   help="refits add trees to the live model (n_trees/5 per refit, a fresh fit "
                   "past 3 x n_trees): cheaper refits, smaller shocks")
    g.add_argument("--backfit", action="store_true",
                   help="refit the first trees given the residual learner's margins "
                   "(init_score) instead of on the labels alone (the paper's setting)")
    g.add_argument("--bits", type=at.int_range(1, 31), default=20, help="hashed table size 2**bits")
    g.add_argument("--k", type=at.positive_int, default=8, help="embedding size")
    g.add_argument("--hidden", type=at.int_list, default="128,128",
                   help="DeepFM MLP sizes, comma separated")
    g.add_argument("--lr", type=at.positive_float, default=3e-3,
                   help="Adam learning rate of the residual")
    g.add_argument("--row-optimizer", choices=("mixed", "adagrad", "adam"), default="mixed",
                   help="steps of the hashed table rows: mixed = AdaGrad first-order weights "
                   "and Adam embeddings; adagrad = AdaGrad for both; adam = lazy Adam")
    g.add_argument("--row-lr", type=at.positive_float, default=0.05,
                   help="AdaGrad step of the table rows' first-order weights")
    g.add_argument("--emb-lr", type=at.positive_float, default=0.005,
                   help="AdaGrad step of the table rows' embeddings (FM / DeepFM)")
    g.add_argument("--tree-codes", type=at.nonneg_int, default=0, metavar="K",
                   help="trees also split on codes of each categorical field's K most "
                   "frequent values (LightGBM categorical features; 0 = counts only): helped "
                   "trees alone on the Criteo sample, hurt the fusion on Avazu logs")
    g.add_argument("--no-standardize", dest="standardize", action="store_false",
                   help="feed the learner numbers as log-scaled values only, not as running "
                   "z-scores of them (default: z-scores, as a StandardScaler would)")
    g.add_argument("--l2", type=at.nonneg_float, default=1e-6, help="L2 on touched rows")
    g.add_argument("--threads", type=at.positive_int, default=1,
                   help="threads for the residual learner and tree refits (1 = bit-for-bit)")
    g.add_argument("--seed", type=at.nonneg_int, default=0, help="the one seed")


def config_from_args(args: argparse.Namespace) -> ModelConfig:
    """Turn the model flags into a ``ModelConfig``.

    ``--iterations K`` defines the chain itself, so it cannot be combined with a ``--model``
    other than the default, ``resfusion`` (the K = 1 chain).
    """
    hidden = args.hidden if isinstance(args.hidden, tuple) else at.int_list(str(args.hidden))
    if args.iterations is not None and args.model != "resfusion":
        raise ValueError(f"--iterations {args.iterations} builds its own chain (trees, "
                         f"+{args.residual}, +trees, ...): drop --model {args.model}")
    return ModelConfig(
        model=args.model, residual=args.residual, iterations=args.iterations,
        n_trees=args.trees, num_leaves=args.leaves, tree_learning_rate=args.tree_lr,
        refit_every=args.refit_every,
        first_fit=args.first_fit, window=args.window, drift=not args.no_drift, fade=args.fade,
        backfit=args.backfit, bits=args.bits, k=args.k, hidden=hidden, lr=args.lr, l2=args.l2,
        row_optimizer=args.row_optimizer, row_lr=args.row_lr, emb_lr=args.emb_lr,
        standardize=args.standardize, tree_codes=args.tree_codes,
        threads=args.threads, tree_threads=args.threads, seed=args.seed,
        extra={"trees": {"warm_start": True}} if args.warm_start else {},
    )
