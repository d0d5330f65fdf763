"""``streamfusion replay``: progressive evaluation of a click log plus a held-out 9:1 test.

Reads the log in mini-batches, holds out a seeded 10% (or the last 10%), scores every event
with the chain before learning from it (``online.OnlineModel.step``), records the progressive
metrics, checkpoints atomically every N events, and at the end scores the held-out events
with the final model and writes the report of DESIGN.md. Progressive and held-out events are
spilled to disk (``streamfusion.spill``), so memory stays flat in the stream's length.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from streamfusion import argtypes as at
from streamfusion import checkpoint, windowing
from streamfusion.data import Encoder, ParseError, open_source
from streamfusion.data.readers import InputFingerprint
from streamfusion.evaluate import (
    PROGRESSIVE_FILE,
    Progressive,
    holdout_mask,
    spill_reader,
    summarize_spilled,
)
from streamfusion.features import Batch
from streamfusion.fusion import CONFIG_BEFORE
from streamfusion.inputs import add_input_arguments, source_options
from streamfusion.model_file import save_model
from streamfusion.online import (
    OnlineLoop,
    OnlineModel,
    Scores,
    add_model_arguments,
    batch_schedule,
    config_from_args,
)
from streamfusion.outputs import OutputError, check_output, write_json, write_predictions
from streamfusion.progress import ReplayProgress
from streamfusion.report_view import plot, summary_table
from streamfusion.spill import RecordSpill, SpillFile

DEFAULT_ROWS = 1_000_000  # size of the embedded default (generated) stream
HOLDOUT_FILE = "holdout.npy-stream"
SCHEMA_FILE = "schema.json"  # beside a checkpoint: the log's schema, for serve --schema
HOLDOUT_SCORES_FILE = "holdout-scores.spill"  # the final model's held-out margins
HOLDOUT_SCORE_ROWS = 8192  # held-out rows scored at once: the MLP's activations stay small
HOLDOUT_FLUSH_ROWS = 65_536  # held-out rows written at once: few, large records to re-read
ARRAYS = ("indices", "values", "dense", "y", "line", "time")


class HoldoutStore:
    """Held-out events spilled to disk, so memory stays flat in the stream's length.

    Each flush writes a run of ``.npy`` records (one per batch array) to a
    :class:`~streamfusion.spill.SpillFile`, whose CRC and length let a checkpoint pin the
    prefix that belongs to it.
    """

    def __init__(self, path: Path, file: SpillFile | None = None, rows: int = 0) -> None:
        self.file = file if file is not None else SpillFile(path)
        self.rows = int(rows)
        self._pending: list[Batch] = []
        self._pending_rows = 0

    @classmethod
    def resume(cls, path: Path, state: dict[str, int]) -> HoldoutStore:
        """Reopen the spill file of a checkpoint, refusing it unless its prefix matches."""
        file = SpillFile.resume(path, state, "held-out events")
        return cls(path, file, int(state.get("rows", 0)))

    def append(self, batch: Batch) -> None:
        self._pending.append(batch)
        self._pending_rows += len(batch)
        if self._pending_rows >= HOLDOUT_FLUSH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        batch = Batch.concat(self._pending)
        self._pending, self._pending_rows = [], 0
        buf = io.BytesIO()
        for name in ARRAYS:
            np.save(buf, getattr(batch, name), allow_pickle=False)
        self.file.append(buf.getbuffer())
        self.rows += len(batch)

    def batches(self) -> Iterator[Batch]:
        self._flush()
        with self.file.reader() as f:
            while f.tell() < self.file.nbytes:
                yield Batch(*(np.load(f, allow_pickle=False) for _ in ARRAYS))

    def state_dict(self) -> dict[str, int]:
        self._flush()
        return {**self.file.state_dict(), "rows": self.rows}

    def close(self) -> None:
        self.file.close()


_BLANK_LINE = re.compile(rb"(?<=\n)\r?\n")


def count_events(path: Path) -> int:
    """Number of non-blank lines in a (possibly gzipped) file: the chrono holdout needs the
    end. Malformed rows count too (that needs a parse); with ``--on-error skip`` the boundary
    is then a few rows early."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    n, blank, last = 0, 0, b"\n"
    with opener(path, "rb") as f:
        while chunk := f.read(1 << 24):
            n += chunk.count(b"\n")
            blank += len(_BLANK_LINE.findall(chunk))
            if last == b"\n" and (chunk[:1] == b"\n" or chunk[:2] == b"\r\n"):
                blank += 1  # a blank line at the start of this chunk (or of the file)
            last = chunk[-1:]
    return n + (last != b"\n") - blank


def default_stream(rows: int, seed: int) -> Path:
    """The embedded default: a generated Avazu-format stream, cached by size and seed."""
    from streamfusion.data.generate import GENERATOR_VERSION, generate

    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streamfusion"
    path = cache / f"generated-v{GENERATOR_VERSION}-avazu-{rows}-seed{seed}.csv"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        print(f"generating the default stream ({rows:,} Avazu-format rows) -> {path}",
              file=sys.stderr)
        generate(tmp, format="avazu", rows=rows, seed=seed)
        os.replace(tmp, path)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("input")
    g.add_argument("--file", type=Path, help="click log to replay (default: a generated stream)")
    add_input_arguments(g)
    g.add_argument("--rows", type=at.positive_int,
                   help="stop after N events (sizes the default stream)")
    g.add_argument("--batch-size", type=at.positive_int, default=1024,
                   help="largest mini-batch: batches start at one event and double with the events "
                   "seen up to this size (see the report's model.batch_schedule); serve and "
                   "the river classifier batch differently (docs/cli.md)")
    e = parser.add_argument_group("evaluation")
    e.add_argument("--holdout", type=at.fraction, default=0.1,
                   help="held-out fraction (paper: 9:1)")
    e.add_argument("--holdout-mode", choices=["random", "chrono"], default="random",
                   help="random: a seeded share of the events; chrono: the last ones")
    e.add_argument("--window-rows", type=at.positive_int, default=None,
                   help="window length in events when the log is not cut by day (default: "
                   "from the file's length, about 40 windows of at least 250 events; a log "
                   "with an hour column spanning several days is cut by day)")
    e.add_argument("--report", type=Path, help="write the JSON report here")
    e.add_argument("--predictions", type=Path, metavar="CSV",
                   help="write every scored event's prediction here (set,line,label,margin,"
                   "p_click; line: the event's line in the file): the progressive ones in "
                   "stream order, each made before the model learned the event, then the "
                   "held-out ones as the final model scores them")
    e.add_argument("--plot", type=Path, help="draw each window's AUC and logloss, the "
                   "holdout AUC and every refit that went live to this PNG")
    e.add_argument("--quiet", action="store_true", help="no progress bar or summary table")
    c = parser.add_argument_group("checkpoints")
    c.add_argument("--checkpoint", type=Path, metavar="DIR", help="checkpoint directory")
    c.add_argument("--checkpoint-every", type=at.positive_int, default=500_000, metavar="N",
                   help="checkpoint every N events")
    c.add_argument("--resume", action="store_true", help="continue from --checkpoint DIR")
    c.add_argument("--save-model", type=Path, metavar="PATH",
                   help="at the end, write the final model for `streamfusion score` (trees, "
                   "learner weights, encoder; no optimizer state)")
    add_model_arguments(parser)


class Replay:
    """One replay run: source, model, metrics, holdout and checkpoints."""

    # Flags that may differ on --resume: they change how far or how visibly a run goes, not
    # what it computes (--threads: the user asked for speed over bit-for-bit). --file is
    # checked on its own; every other replay flag defines the run.
    RESUMABLE_FLAGS = frozenset({"file", "rows", "checkpoint", "checkpoint_every", "resume",
                                 "report", "plot", "quiet", "threads", "save_model",
                                 "predictions"})

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        if args.resume and not args.checkpoint:
            raise SystemExit("streamfusion replay: --resume needs --checkpoint DIR")
        if args.checkpoint and not args.resume and checkpoint.exists(args.checkpoint):
            # refused before any file is touched: a new run would truncate the spills of
            # the checkpoint it leaves behind
            raise checkpoint.CheckpointError(
                f"{args.checkpoint} already holds {self._describe_checkpoint()}; pass --resume "
                "to continue it, or choose another directory (or delete it)")
        self.path = args.file or default_stream(args.rows or DEFAULT_ROWS, args.seed)
        self.state = checkpoint.load(args.checkpoint) if args.resume else None
        if self.state is not None:
            self._check_belongs(self.state)  # before its schema reads the file
        config = config_from_args(args)
        self.source = open_source(self.path, bits=config.bits, seed=config.seed,
                                  encoder=self._checkpoint_encoder(), **source_options(args))
        schema = self.source.schema
        if schema.is_svm and not schema.dense_features and "trees" in config.stage_kinds():
            warnings.warn(f"{schema.name} input with --dense-features 0 gives the trees no "
                          "columns: they keep the click prior", stacklevel=2)
        self.fingerprint = InputFingerprint(self.path)
        self.windowing = windowing.choose(self.path, schema, args.window_rows, args.rows,
                                          args.holdout)
        self.chrono_start = None
        if args.holdout_mode == "chrono":
            total = count_events(self.path) - int(self.source.schema.has_header)
            if args.rows:
                total = min(total, args.rows)
            self.chrono_start = int(round(total * (1.0 - args.holdout)))
        if self.state is not None:
            self._check_resumable(self.state)  # everything is checked before a file is touched
        n_fields = len(self.source.schema.field_names)
        # Spills live beside the checkpoint they belong to, else in a directory of this run.
        self.spill_dir = args.checkpoint or Path(tempfile.mkdtemp(prefix="streamfusion-"))
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        if args.checkpoint:  # what `serve --schema` reads to take events of this log
            (args.checkpoint / SCHEMA_FILE).write_text(json.dumps(schema.to_dict(), indent=1))
        # a run's own directory goes at its end, or at exit if the run fails
        self._remove_tmpdir = (None if args.checkpoint else
                               weakref.finalize(self, shutil.rmtree, self.spill_dir, True))
        if self.state is None:
            self.model = OnlineModel(config, n_fields, slotted=schema.is_svm)
            self.progressive = Progressive(self.windowing.events, self.spill_dir / PROGRESSIVE_FILE)
            self.holdout = HoldoutStore(self.spill_dir / HOLDOUT_FILE)
            events, self.seconds_before = 0, 0.0
        else:
            events = self._restore(self.state)
        self.loop = OnlineLoop(self.model, holdout=self._held_out, events=events)
        self._held: RecordSpill | None = None  # the final model's held-out scores (run)

    def _checkpoint_encoder(self) -> Encoder | None:
        """On --resume, the run's own schema and counts: a log that grew since samples its
        kinds differently, and the run must go on as it began."""
        if self.state is None:
            return None
        try:
            return Encoder.from_state_dict(self.state["encoder"])
        except (ValueError, KeyError, TypeError) as exc:
            raise checkpoint.CheckpointError(f"checkpoint state is malformed: {exc}") from None

    def _describe_checkpoint(self) -> str:
        """'a checkpoint of N events of FILE', for the refusal of a run without --resume."""
        try:
            state = checkpoint.load(self.args.checkpoint)
            return (f"a checkpoint of {checkpoint.require(state, 'rows_done', int):,} events "
                    f"of {checkpoint.require(state, 'file', str)}")
        except checkpoint.CheckpointError as exc:
            return f"a checkpoint ({exc})"

    def run_flags(self) -> dict[str, Any]:
        """The flags that define this run (all but ``RESUMABLE_FLAGS``), JSON-ready."""
        defaults = vars(_run_parser().parse_args([]))
        return {k: _plain(getattr(self.args, k, v)) for k, v in sorted(defaults.items())
                if k not in self.RESUMABLE_FLAGS}

    def _check_belongs(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint of another kind, of another file, or missing a part."""
        req = checkpoint.require
        if state.get("kind") != "replay":
            raise checkpoint.CheckpointError("checkpoint was not written by streamfusion replay")
        for key, kind in (("file", str), ("rows_done", int), ("seconds", (int, float)),
                          ("position", dict), ("encoder", dict), ("model", dict),
                          ("progressive", dict), ("holdout", dict), ("flags", dict),
                          ("input", dict)):
            req(state, key, kind)
        if req(state["position"], "bytes", int, "checkpoint position") < 0:
            raise checkpoint.CheckpointError("checkpoint position is negative")
        if Path(state["file"]).resolve() != Path(self.path).resolve():
            raise checkpoint.CheckpointError(
                f"checkpoint belongs to {state['file']}, not {self.path}")

    def _check_resumable(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint this run cannot continue exactly (after ``_check_belongs``);
        loads nothing."""
        # Defaults stand in for flags the checkpoint predates: such runs behaved like them,
        # except where CONFIG_BEFORE says how they behaved.
        saved, now = state["flags"], self.run_flags()
        saved = {k: saved.get(k, CONFIG_BEFORE.get(k, v)) for k, v in now.items()}
        actions = {a.dest: a for a in _run_parser()._actions}
        diffs = [_flag_change(actions[k], saved[k], v) for k, v in now.items() if saved[k] != v]
        if diffs:
            raise checkpoint.CheckpointError(
                "--resume with flags that differ from the checkpoint's run: "
                + "; ".join(diffs) + ". Resume with the checkpoint's flags, or start a new "
                "run in another directory")
        if state.get("chrono_start") != self.chrono_start:
            raise checkpoint.CheckpointError(
                f"the chronological holdout of the checkpoint's run starts at event "
                f"{state.get('chrono_start')}, this run's would start at {self.chrono_start} "
                "(--rows or the file's length differ): resume with the first run's --rows")
        reason = self.fingerprint.verify(state["input"], state["position"]["bytes"])
        if reason:
            raise checkpoint.CheckpointError(
                f"{self.path} is not the input the checkpoint consumed: {reason}")

    def _restore(self, state: dict[str, Any]) -> int:
        """Restore the model, encoder, source position and spills; returns the events done."""
        # What only reads comes first; reopening the spills truncates them to the checkpoint.
        try:
            # --threads may change on resume: it sets speed, not the state
            config = {**state["model"]["config"], "threads": self.args.threads,
                      "tree_threads": self.args.threads}
            model = OnlineModel.from_state({**state["model"], "config": config})
            self.source.seek(state["position"])  # (the encoder is the checkpoint's already)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise checkpoint.CheckpointError(f"checkpoint state is malformed: {exc}") from None
        self.model = model
        try:
            self.progressive = Progressive.resume(self.spill_dir / PROGRESSIVE_FILE,
                                                  state["progressive"])
        except checkpoint.CheckpointError:
            model.close()
            raise
        try:
            self.holdout = HoldoutStore.resume(self.spill_dir / HOLDOUT_FILE, state["holdout"])
        except checkpoint.CheckpointError:
            self.progressive.close()
            model.close()
            raise
        self.seconds_before = float(state["seconds"])
        return int(state["rows_done"])

    def _held_out(self, batch: Batch, first_event: int) -> np.ndarray:
        if self.args.holdout <= 0:
            return np.zeros(len(batch), dtype=bool)
        if self.chrono_start is not None:
            return first_event + np.arange(len(batch)) >= self.chrono_start
        return holdout_mask(batch.line, self.args.holdout, self.args.seed)

    def _day(self, batch: Batch) -> np.ndarray | None:
        """Logs of several days window by day (an hour column's YYMMDD, a time column's
        YYYYMMDD); others by ``--window-rows`` events. An event whose time was missing or
        unreadable (-1) stays in the window of the event before it."""
        if not (self.windowing.by_day and len(batch)):
            return None
        day, known = batch.time // 100, batch.time >= 0
        if not known.all():
            # events before the batch's first time: the last recorded window's day (else
            # the log's first); the others: the day of the last event with a time
            n = len(self.progressive)
            start = (self.progressive.spill.read(n - 1, n)["key"][0] if n
                     else self.windowing.first_day)
            last = np.maximum.accumulate(np.where(known, np.arange(len(batch)), -1))
            day = np.where(last >= 0, day[np.maximum(last, 0)], start)
        return day.astype(np.int32)

    def save_checkpoint(self, elapsed: float) -> None:
        position = self.source.position()
        checkpoint.save(self.args.checkpoint, {
            "kind": "replay",
            "file": str(Path(self.path).resolve()),
            "flags": self.run_flags(),
            "chrono_start": self.chrono_start,
            "input": self.fingerprint.state(position["bytes"]),
            "rows_done": self.rows_done,
            "seconds": self.seconds_before + elapsed,
            "position": position,
            "encoder": self.source.encoder.state_dict(),
            "model": self.model.state_dict(),
            "progressive": self.progressive.state_dict(),
            "holdout": self.holdout.state_dict(),
        })

    def run(self, progress: Any = None) -> dict[str, Any]:
        args = self.args
        t0 = time.perf_counter()
        self.loop.run(self.source, self, max_batch=args.batch_size, limit=args.rows,
                      checkpoint=(lambda: self.save_checkpoint(time.perf_counter() - t0))
                      if args.checkpoint else None,
                      every=args.checkpoint_every,
                      progress=None if progress is None else lambda: progress(self))
        # the end of the file: the trees are refit on the whole window (in place of a pending
        # refit), so the model that scores the holdout has seen the data
        self.model.finish()
        seconds = self.seconds_before + time.perf_counter() - t0
        self._held = self.score_holdout()
        return self.report(seconds)

    def write_model(self, path: Path) -> None:
        """After ``run``: the final model for ``streamfusion score`` (``model_file``)."""
        save_model(path, self.model, self.source.encoder, str(self.path))

    def write_predictions(self, path: Path) -> None:
        """After ``run``: every scored event's prediction (``outputs.write_predictions``)."""
        write_predictions(path, [("progressive", self.progressive.spill),
                                 ("holdout", self._held)])

    # ------------------------------------------------------------------ the loop's sink
    def swapped(self, version: int) -> None:
        self.progressive.mark_swap(version)

    def held_out(self, batch: Batch) -> None:
        self.holdout.append(batch)

    def scored(self, batch: Batch, scores: Scores) -> None:
        labelled = ~np.isnan(batch.y)
        day = self._day(batch)
        self.progressive.add(scores.margin[labelled], batch.y[labelled],
                             None if day is None else day[labelled], batch.line[labelled])

    @property
    def rows_done(self) -> int:
        """Events behind the run (held-out ones included)."""
        return self.loop.events

    def close(self) -> None:
        """Release everything, after a run or an interrupted one (checkpoints stay)."""
        if self._held is not None:
            self._held.close(remove=True)
            self._held = None
        self.model.close()
        self._close_spills()
        self.source.close()
        self.fingerprint.close()

    def _close_spills(self) -> None:
        self.holdout.close()
        self.progressive.close()
        if self._remove_tmpdir is not None:
            self._remove_tmpdir()

    def score_holdout(self) -> RecordSpill:
        """The final model's margins of the held-out events, spilled like the progressive
        ones: memory flat in the number of held-out events (``run`` keeps it until ``close``)."""
        scores = RecordSpill(self.spill_dir / HOLDOUT_SCORES_FILE)
        try:
            for stored in self.holdout.batches():
                for a in range(0, len(stored), HOLDOUT_SCORE_ROWS):
                    b = stored.take(slice(a, a + HOLDOUT_SCORE_ROWS))
                    keep = ~np.isnan(b.y)
                    z = self.model.score(b).margin[keep]
                    scores.append(z, b.y[keep], np.zeros(z.size, np.int32), b.line[keep])
        except BaseException:
            scores.close(remove=True)
            raise
        return scores

    def report(self, seconds: float) -> dict[str, Any]:
        """The report of DESIGN.md, after ``run`` scored the held-out events."""
        pos = self.source.position()
        return {
            "file": str(self.path),
            "format": self.source.schema.name,
            "rows": self.rows_done,
            "seconds": seconds,
            "events_per_second": self.rows_done / seconds if seconds > 0 else float("nan"),
            "model": {**self.model.describe(),
                      "batch_schedule": batch_schedule(self.args.batch_size)},
            "progressive": self.progressive.overall(),
            "holdout": {**summarize_spilled(spill_reader(self._held), 0, len(self._held),
                                            self.progressive.budget,
                                            self.progressive.chunk_rows),
                        "mode": self.args.holdout_mode},
            "windowing": self.windowing.describe(self.progressive.window_rows),
            "windows": self.progressive.windows(),
            "refit_windows": self.progressive.around_swaps(),
            "skipped_rows": int(pos.get("skipped_rows", 0)),
            "out_of_order": int(pos.get("out_of_order", 0)),
            "column_kinds": self.source.schema.column_kinds(),
            "unparsed_numbers": self.source.encoder.unparsed_numbers(),
        }


def _run_parser() -> argparse.ArgumentParser:
    """The replay's flags alone, for their defaults and names."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return parser


def _flag_change(action: argparse.Action, saved: Any, now: Any) -> str:
    """How a flag differs from the checkpoint's run, named as it is typed: a switch such as
    ``--no-live-blend`` says which run had it, a value both values."""
    flag = action.option_strings[0]
    if action.nargs == 0 and isinstance(action.const, bool):  # store_true / store_false
        def used(value: Any) -> str:
            return "set" if value == action.const else "not set"
        return f"{flag}: {used(saved)} in the checkpoint's run, {used(now)} now"
    return f"{flag}: checkpoint {saved!r}, now {now!r}"


def _plain(value: Any) -> Any:
    """A flag value as the checkpoint's JSON gives it back (paths as text, tuples as lists)."""
    return json.loads(json.dumps(value, default=str))


def _check_paths(args: argparse.Namespace) -> None:
    """Refuse unusable input and output paths before any work (a long run must not lose its
    results at the end)."""
    if args.file is not None and not args.file.is_file():
        what = ("no such file" if not args.file.exists() else
                "not a regular file (replay reopens and seeks its input: no directories, "
                "pipes or devices)")
        raise ValueError(f"--file {args.file}: {what}")
    model = args.save_model
    if model is not None and model.exists() and not (model.is_file() or model.is_dir()):
        # a pipe or a device (before the write test below, which would wait on a pipe)
        raise ValueError(f"--save-model {model}: not a regular file (a model is "
                         "written whole and renamed into place)")
    for flag, path in (("--report", args.report), ("--plot", args.plot),
                       ("--save-model", args.save_model), ("--predictions", args.predictions)):
        if path is not None:
            check_output(path, flag)
    if args.checkpoint is not None:
        if args.checkpoint.exists() and not args.checkpoint.is_dir():
            raise ValueError(f"--checkpoint {args.checkpoint}: exists and is not a directory")
        try:
            args.checkpoint.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"--checkpoint {args.checkpoint}: cannot create it "
                             f"({exc.strerror})") from None


def _os_error(exc: OSError) -> str:
    """'FILE: reason' of a failed read or write."""
    return f"{exc.filename}: {exc.strerror or exc}" if exc.filename else str(exc)


def _resume_hint(args: argparse.Namespace) -> str:
    return (f"; --resume continues from the last checkpoint in {args.checkpoint}"
            if args.checkpoint and checkpoint.exists(args.checkpoint) else "")


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwind as for Ctrl-C: spills are closed, temp files removed


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    try:
        _check_paths(args)
        replay = Replay(args)
    except (ParseError, checkpoint.CheckpointError, ValueError) as exc:
        console.print(f"[red]streamfusion replay: {exc}", highlight=False, soft_wrap=True)
        return 1
    except OSError as exc:  # e.g. a full disk under the checkpoint directory's schema.json
        console.print(f"[red]streamfusion replay: {_os_error(exc)}", highlight=False,
                      soft_wrap=True)
        return 1
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        with ReplayProgress(console, args.rows, disable=args.quiet) as progress:
            report = replay.run(None if args.quiet else progress)
        if report["progressive"]["rows"] == 0:
            console.print("streamfusion replay: no labelled event was scored, so the "
                          "progressive metrics are undefined (null in the report)",
                          highlight=False, soft_wrap=True)
        failed = []
        for flag, path, write in (
                ("--report", args.report, lambda p: write_json(p, report)),
                ("--plot", args.plot, lambda p: plot(report, p)),
                ("--predictions", args.predictions, replay.write_predictions),
                ("--save-model", args.save_model, replay.write_model)):
            try:
                if path:
                    write(path)
            except OSError as exc:  # e.g. a full disk: the pre-check could not foresee it
                failed.append(OutputError(flag, path, exc))  # the other outputs still come
        for exc in failed:  # (each names its flag: the run itself is complete)
            console.print(f"[red]streamfusion replay: {exc}", highlight=False, soft_wrap=True)
        if failed:
            return 1
    except ParseError as exc:
        console.print(f"[red]streamfusion replay: {exc}", highlight=False, soft_wrap=True)
        return 1
    except OSError as exc:  # a spill or checkpoint write during the run, e.g. a full disk
        console.print(f"[red]streamfusion replay: {_os_error(exc)}, after "
                      f"{replay.rows_done:,} events{_resume_hint(args)}", highlight=False,
                      soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        console.print(f"[red]streamfusion replay: interrupted after {replay.rows_done:,} "
                      f"events{_resume_hint(args)}", highlight=False, soft_wrap=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        replay.close()
    if not args.quiet:
        console.print(summary_table(report))
    return 0
