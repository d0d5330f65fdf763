"""``streamfusion serve``: score live events from Kafka, learn from their labels.

Reads impression events from ``--input-topic`` in mini-batches, scores each with the whole
chain and writes ``{"id", "p_click", "margin", "base_margin", "residual_margin",
"model_version"}`` to ``--output-topic`` keyed by id. Learns test-then-train from events that
carry ``click`` and from ``{"id", "click"}`` messages on ``--label-topic`` (joined by id within
``--label-ttl``). At-least-once: offsets are committed after outputs are acknowledged and the
state covering them is checkpointed. SIGTERM / SIGINT finish the batch, flush, checkpoint,
commit and exit 0. See ``streamfusion.kafka.daemon`` for the loop.

Labels are joined in the process that holds the event: key label messages by id and give the
label topic as many partitions as the input topic (the default range assignor then hands
partition i of both topics to the same member). ``model_version`` in the outputs is the
chain's tree version for ``--role both``, the snapshot number for ``train`` and ``score``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from streamfusion import argtypes as at
from streamfusion import checkpoint
from streamfusion.data.readers import log_schema
from streamfusion.data.schema import Schema, avazu_schema, criteo_schema
from streamfusion.inputs import add_input_arguments, source_options
from streamfusion.kafka.daemon import ROLES, Daemon, ServeConfig, StartupError, replay_schema
from streamfusion.kafka.joins import DEFAULT_CAPACITY, DEFAULT_TTL
from streamfusion.kafka.snapshot_wire import read_key
from streamfusion.kafka.source import DEFAULT_POLL_TIMEOUT
from streamfusion.online import add_model_arguments, config_from_args


def _kv(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Attach ``streamfusion serve`` options to ``parser``."""
    k = parser.add_argument_group("kafka")
    k.add_argument("--bootstrap-servers", required=True, help="Kafka bootstrap HOST:PORT")
    k.add_argument("--input-topic", required=True, help="impression events (JSON)")
    k.add_argument("--output-topic", required=True, help="scores, keyed by event id")
    k.add_argument("--label-topic", default=None, help='click labels {"id", "click"}')
    k.add_argument("--dead-letter-topic", default=None,
                   help="invalid messages, with the reason in header 'error'")
    k.add_argument("--group-id", default="streamfusion", help="consumer group")
    k.add_argument("--model-topic", default=None,
                   help="model snapshots, in chunks (--role train writes, score reads): "
                   "scorers need nothing but the broker")
    k.add_argument("--model-key-file", type=Path, default=None, metavar="FILE",
                   help="a secret of at least 16 bytes: the trainer signs each snapshot with "
                   "HMAC-SHA256, scorers load only snapshots it verifies (default: "
                   "unauthenticated, with a warning)")
    k.add_argument("--role", choices=ROLES, default="both",
                   help="both: score and learn; train: also publish snapshots; score: never "
                        "learn, load announced snapshots")
    k.add_argument("--batch-size", type=int, default=5000, help="max events per mini-batch")
    k.add_argument("--poll-timeout", type=float, default=DEFAULT_POLL_TIMEOUT, metavar="SECONDS",
                   help="below full load, how long a mini-batch may gather events after its "
                        "first (bounds the added latency; larger batches cost less CPU)")
    k.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="checkpoint directory (resume from it; snapshots go there too)")
    k.add_argument("--checkpoint-every", type=int, default=200_000, metavar="N",
                   help="checkpoint + commit every N events ...")
    k.add_argument("--checkpoint-interval", type=float, default=30.0, metavar="SECONDS",
                   help="... or every SECONDS, whichever comes first")
    k.add_argument("--label-ttl", type=float, default=DEFAULT_TTL, metavar="SECONDS",
                   help="how long an event waits for its label")
    k.add_argument("--label-capacity", type=int, default=DEFAULT_CAPACITY,
                   help="most events waiting for labels (oldest expire first)")
    k.add_argument("--label-window", type=at.nonneg_float, default=None, metavar="SECONDS",
                   help="clicks only: an event without a click message within SECONDS is "
                   "learned as a negative (0: at once, every click then corrects it); default: "
                   "labels are explicit, click 0 or 1")
    k.add_argument("--no-late-correction", dest="correct_late", action="store_false",
                   help="with --label-window: count a click that comes after its event was "
                   "learned as a negative, but do not learn it (default: learn it as a "
                   "positive, weighted as Ktena et al. 2019's fake-negative correction)")
    k.add_argument("--metrics-port", type=int, default=None,
                   help="HTTP port of /metrics (Prometheus), /healthz and /readyz")
    k.add_argument("--metrics-host", default="127.0.0.1",
                   help="address the metrics port binds (0.0.0.0: every interface)")
    k.add_argument("--exit-when-idle", type=float, default=None, metavar="SECONDS",
                   help="stop cleanly after SECONDS without messages (batch jobs, tests)")
    k.add_argument("--consumer-config", action="append", default=[], metavar="KEY=VALUE",
                   help="extra librdkafka consumer setting (repeatable)")
    k.add_argument("--producer-config", action="append", default=[], metavar="KEY=VALUE",
                   help="extra librdkafka producer setting (repeatable)")
    k.add_argument("--log-level", default="INFO", help="logging level")
    e = parser.add_argument_group(
        "events", "the schema of the input events: any the replay reads. Events are JSON "
        "objects with the schema's event fields under their column names (libsvm-like: the "
        "idx:val tokens under 'features'), 'id' and optionally 'click'")
    e.add_argument("--schema", type=Path, default=None, metavar="FILE",
                   help="the schema.json a replay wrote beside its checkpoint")
    e.add_argument("--sample", type=Path, default=None, metavar="LOG",
                   help="a log in the events' format to type them from, as replay types it "
                   "(a csv or libsvm-like format needs it, or --schema)")
    add_input_arguments(e)
    parser.set_defaults(format="avazu")
    e.add_argument("--init-from", type=Path, default=None, metavar="DIR|FILE",
                   help="start from a replay's checkpoint folder (trees, learner and its "
                   "optimizer state, encoder, schema) or a model file of replay --save-model, "
                   "and go on learning live; its model flags replace serve's. A serve "
                   "--checkpoint that already holds state takes precedence (a restart)")
    add_model_arguments(parser)


def serve_schema(args: argparse.Namespace) -> Schema:
    """The schema of the input events, from --schema, --init-from, --sample or --format."""
    if args.schema is not None:
        try:
            return Schema.from_dict(json.loads(args.schema.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"--schema {args.schema}: not a schema file ({exc})") from None
    if args.sample is not None:
        return log_schema(args.sample, **source_options(args))
    if args.init_from is not None:
        return replay_schema(args.init_from)
    if args.format in ("avazu", "auto"):
        return avazu_schema().with_types(args.types)
    if args.format == "criteo":
        return criteo_schema().with_types(args.types)
    raise ValueError(f"--format {args.format}: its columns come from a log; pass --sample LOG "
                     "(a log in that format) or --schema FILE (the schema.json of a replay)")


def config_from(args: argparse.Namespace) -> ServeConfig:
    """The daemon's settings from parsed arguments."""
    return ServeConfig(
        bootstrap=args.bootstrap_servers, input_topic=args.input_topic,
        output_topic=args.output_topic, label_topic=args.label_topic,
        dead_letter_topic=args.dead_letter_topic, group_id=args.group_id,
        checkpoint_dir=args.checkpoint, role=args.role, metrics_port=args.metrics_port,
        metrics_host=args.metrics_host, model_topic=args.model_topic,
        model_key=None if args.model_key_file is None else read_key(args.model_key_file),
        batch_size=args.batch_size, schema=serve_schema(args),
        init_from=None if args.init_from is None else str(args.init_from),
        label_window=args.label_window, correct_late=args.correct_late,
        poll_timeout=args.poll_timeout,
        checkpoint_every=args.checkpoint_every, checkpoint_interval=args.checkpoint_interval,
        label_ttl=args.label_ttl, label_capacity=args.label_capacity,
        exit_when_idle=args.exit_when_idle, consumer_extra=_kv(args.consumer_config),
        producer_extra=_kv(args.producer_config),
    )


def run(args: argparse.Namespace) -> int:
    """Run ``streamfusion serve`` until SIGTERM / SIGINT; returns the exit code."""
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        daemon = Daemon(config_from(args), config_from_args(args))
    except ValueError as exc:  # ParseError and CheckpointError too: one line, no traceback
        print(f"streamfusion serve: {exc}", file=sys.stderr)
        return 2
    daemon.install_signal_handlers()
    try:
        return daemon.run()
    except (checkpoint.CheckpointError, StartupError) as exc:  # before anything is consumed
        print(f"streamfusion serve: {exc}", file=sys.stderr)
        return 2
