"""The model flags shared by ``replay`` and ``serve``, and the ``ModelConfig`` they give."""

from __future__ import annotations

import argparse

from streamfusion import argtypes as at
from streamfusion.fusion import MODELS, RESIDUAL_KINDS, ROW_STEP, ModelConfig


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model flags shared by ``replay`` and ``serve``."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", choices=MODELS, default="resfusion",
                   help="the chain: resfusion = trees then the residual learner (default)")
    g.add_argument("--residual", choices=RESIDUAL_KINDS, default="deepfm",
                   help="residual learner inside resfusion / nnres-gbdt / --iterations")
    g.add_argument("--iterations", type=at.nonneg_int, default=None, metavar="K",
                   help="paper Table 3: K+1 alternating stages (trees, +DeepFM, +trees, ...)")
    g.add_argument("--trees", type=at.positive_int, default=100,
                   help="trees per refit on a full window (early-stopped on its newest "
                   "rows after TREES / 10 trees, at least 5, without gain); a window not yet "
                   "full may grow up to 3 x TREES, as long as rows x trees stays within a full "
                   "window's fit")
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
                   "of n_trees past 3 x n_trees): cheaper refits, smaller shocks")
    g.add_argument("--backfit", action="store_true",
                   help="refit the first trees given the residual learner's margins "
                   "(init_score) instead of on the labels alone (the paper's setting)")
    g.add_argument("--bits", type=at.int_range(1, 31), default=20, help="hashed table size 2**bits")
    g.add_argument("--k", type=at.positive_int, default=8, help="embedding size")
    g.add_argument("--hidden", type=at.int_list, default="128,128",
                   help="DeepFM MLP sizes, comma separated")
    g.add_argument("--lr", type=at.positive_float, default=1.5e-3,
                   help="Adam learning rate of the residual")
    g.add_argument("--row-optimizer", choices=("mixed", "adagrad", "adam"), default="mixed",
                   help="steps of the hashed table rows: mixed = AdaGrad first-order weights "
                   "and Adam embeddings; adagrad = AdaGrad for both; adam = lazy Adam")
    g.add_argument("--row-lr", type=at.positive_float, default=None,
                   help="AdaGrad step of the table rows' first-order weights under "
                   "--row-optimizer mixed or adagrad (adam steps them with Adam at --lr); "
                   f"None: {ROW_STEP} / the learner's fields (0.05 at Avazu's 23)")
    g.add_argument("--emb-lr", type=at.positive_float, default=0.005,
                   help="AdaGrad step of the table rows' embeddings (FM / DeepFM) under "
                   "--row-optimizer adagrad (mixed and adam step them with Adam at --lr)")
    g.add_argument("--tree-codes", type=at.nonneg_int, default=0, metavar="K",
                   help="trees also split on codes of each categorical field's K most "
                   "frequent values (LightGBM categorical features; 0 = counts only): helped "
                   "trees alone on the Criteo sample, hurt the fusion on Avazu logs")
    g.add_argument("--tree-end-codes", type=at.nonneg_int, default=64, metavar="K",
                   help="the refit at the end of a file also tries K codes per categorical "
                   "field and keeps them if they win on the newest rows (0 = never)")
    g.add_argument("--no-standardize", dest="standardize", action="store_false",
                   help="feed the learner numbers as log-scaled values only, not as running "
                   "z-scores of them (default: z-scores, as a StandardScaler would)")
    g.add_argument("--no-pair-weights", dest="pair_weights", action="store_false",
                   help="DeepFM's FM part crosses every pair of fields alike, as in the paper "
                   "(default: a learned weight per pair of fields, FwFM, starting at 0.5: pairs "
                   "that carry signal grow, the others stay small)")
    g.add_argument("--no-field-weights", dest="field_weights", action="store_false",
                   help="with pair weights, every field's first-order term counts alike "
                   "(default: a learned weight per field, starting at 1: fields whose ids' "
                   "weights do not carry over to new events shrink)")
    g.add_argument("--no-live-blend", dest="live_blend", action="store_false",
                   help="trees and residual score as their plain sum until the end of a file "
                   "(default: a * trees + b * residual + c, the weights learned online from "
                   "each batch as it was scored)")
    g.add_argument("--tree-shrinkage", type=at.unit_interval, default=0.5, metavar="S",
                   help="online, the trees in front of a residual learner score prior + S * "
                   "(trees - prior), the prior being the click log-odds, and the residual "
                   "learns what they miss: small windows' noisy trees cost it less (1 = the "
                   "paper's plain residual; the blend scales both; trees alone or after a "
                   "learner are never shrunk)")
    g.add_argument("--pair-lr", type=at.positive_float, default=0.03,
                   help="Adam step of the pair and field weights (shared by every event: "
                   "larger than --lr)")
    g.add_argument("--step-rows", type=at.nonneg_int, default=256, metavar="N",
                   help="most events in one step of the residual learner: a larger mini-batch "
                   "is learned in consecutive steps of N events (0 = one step per mini-batch; "
                   "--threads share a step's backward pass in blocks of 256 events)")
    g.add_argument("--adam-batch", type=at.nonneg_int, default=32, metavar="N",
                   help="a learner step on fewer than N learned events (the first batches of "
                   "a stream, a small poll of labels) scales its Adam steps by sqrt(events / "
                   "N), the square-root rule for gradient noise (0 = unscaled)")
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
        standardize=args.standardize, pair_weights=args.pair_weights,
        field_weights=args.field_weights, pair_lr=args.pair_lr,
        step_rows=args.step_rows, adam_batch=args.adam_batch, live_blend=args.live_blend,
        tree_shrinkage=args.tree_shrinkage,
        tree_codes=args.tree_codes,
        tree_end_codes=args.tree_end_codes,
        threads=args.threads, tree_threads=args.threads, seed=args.seed,
        extra={"trees": {"warm_start": True}} if args.warm_start else {},
    )
