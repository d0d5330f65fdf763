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
import math
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
from streamfusion import checkpoint
from streamfusion.data import ParseError, open_source
from streamfusion.data.readers import InputFingerprint
from streamfusion.evaluate import (
    PROGRESSIVE_FILE,
    Progressive,
    holdout_mask,
    spill_reader,
    summarize_spilled,
)
from streamfusion.features import Batch
from streamfusion.inputs import add_input_arguments
from streamfusion.model_file import save_model
from streamfusion.online import (
    OnlineModel,
    add_model_arguments,
    batch_schedule,
    batch_size_at,
    config_from_args,
)
from streamfusion.outputs import check_output, write_json
from streamfusion.spill import RecordSpill, SpillFile

DEFAULT_ROWS = 1_000_000  # size of the embedded default (generated) stream
HOLDOUT_FILE = "holdout.npy-stream"
HOLDOUT_SCORES_FILE = "holdout-scores.spill"  # the final model's held-out margins
HOLDOUT_SCORE_ROWS = 8192  # held-out rows scored at once: the MLP's activations stay small
LIVE_AUC_EVENTS = 20_000  # events behind the progress bar's live AUC
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


def exact_batches(source: Any, max_size: int, limit: int | None,
                  done: int) -> Iterator[Batch]:
    """Batches of exactly ``batch_size_at(done, max_size)`` events (the last may be short),
    stopping after ``limit``.

    Batch boundaries that depend on the stream position alone make a resumed run take the same
    steps as an uninterrupted one.
    """
    while limit is None or done < limit:
        size = batch_size_at(done, max_size)
        want = size if limit is None else min(size, limit - done)
        parts: list[Batch] = []
        have = 0
        while have < want:  # a reader may return fewer rows at its chunk boundaries
            b = source.next_batch(want - have)
            if b is None or len(b) == 0:
                break
            parts.append(b)
            have += len(b)
        if not parts:
            return
        out = parts[0] if len(parts) == 1 else Batch.concat(parts)
        done += len(out)
        yield out
        if len(out) < want:
            return


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
                   help="largest mini-batch: batches start small and double with the events "
                   "seen up to this size (see the report's model.batch_schedule)")
    e = parser.add_argument_group("evaluation")
    e.add_argument("--holdout", type=at.fraction, default=0.1,
                   help="held-out fraction (paper: 9:1)")
    e.add_argument("--holdout-mode", choices=["random", "chrono"], default="random")
    e.add_argument("--window-rows", type=at.positive_int, default=100_000,
                   help="window length in events when the log has no days")
    e.add_argument("--report", type=Path, help="write the JSON report here")
    e.add_argument("--plot", type=Path, help="draw progressive AUC and logloss to this PNG")
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
                                 "report", "plot", "quiet", "threads", "save_model"})

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
        config = config_from_args(args)
        self.source = open_source(self.path, format=args.format, label=args.label,
                                  types=args.types,
                                  bits=config.bits, seed=config.seed, on_error=args.on_error,
                                  max_features=args.max_features,
                                  dense_features=args.dense_features)
        schema = self.source.schema
        if schema.is_svm and not schema.dense_features and "trees" in config.stage_kinds():
            warnings.warn(f"{schema.name} input with --dense-features 0 gives the trees no "
                          "columns: they keep the click prior", stacklevel=2)
        self.fingerprint = InputFingerprint(self.path)
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
        # a run's own directory goes at its end, or at exit if the run fails
        self._remove_tmpdir = (None if args.checkpoint else
                               weakref.finalize(self, shutil.rmtree, self.spill_dir, True))
        if self.state is None:
            self.model = OnlineModel(config, n_fields)
            self.progressive = Progressive(args.window_rows, self.spill_dir / PROGRESSIVE_FILE)
            self.holdout = HoldoutStore(self.spill_dir / HOLDOUT_FILE)
            self.rows_done, self.seconds_before = 0, 0.0
        else:
            self._restore(self.state)

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
        parser = argparse.ArgumentParser(add_help=False)
        add_arguments(parser)
        defaults = vars(parser.parse_args([]))
        return {k: _plain(getattr(self.args, k, v)) for k, v in sorted(defaults.items())
                if k not in self.RESUMABLE_FLAGS}

    def _check_resumable(self, state: dict[str, Any]) -> None:
        """Refuse a checkpoint this run cannot continue exactly; loads nothing."""
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
        # Defaults stand in for flags the checkpoint predates: such runs behaved like them.
        saved, now = state["flags"], self.run_flags()
        diffs = [f"--{k.replace('_', '-')}: checkpoint {saved.get(k, v)!r}, now {v!r}"
                 for k, v in now.items() if saved.get(k, v) != v]
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

    def _restore(self, state: dict[str, Any]) -> None:
        # What only reads comes first; reopening the spills truncates them to the checkpoint.
        try:
            # --threads may change on resume: it sets speed, not the state
            config = {**state["model"]["config"], "threads": self.args.threads,
                      "tree_threads": self.args.threads}
            model = OnlineModel.from_state({**state["model"], "config": config})
            self.source.encoder.load_state_dict(state["encoder"])
            self.source.seek(state["position"])
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
        self.rows_done = int(state["rows_done"])
        self.seconds_before = float(state["seconds"])

    def _held_out(self, batch: Batch, first_event: int) -> np.ndarray:
        if self.args.holdout <= 0:
            return np.zeros(len(batch), dtype=bool)
        if self.chrono_start is not None:
            return first_event + np.arange(len(batch)) >= self.chrono_start
        return holdout_mask(batch.line, self.args.holdout, self.args.seed)

    def _day(self, batch: Batch) -> np.ndarray | None:
        """Avazu-like logs window by day (YYMMDD); others by ``--window-rows`` events."""
        if len(batch) and batch.time[0] >= 0:
            return (batch.time // 100).astype(np.int32)
        return None

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
        every = args.checkpoint_every
        next_ckpt = (self.rows_done // every + 1) * every
        for batch in exact_batches(self.source, args.batch_size, args.rows, self.rows_done):
            size = batch_size_at(self.rows_done, args.batch_size)
            if self.model.poll():
                self.progressive.mark_swap(self.model.version)
            held = self._held_out(batch, self.rows_done)
            if held.any():
                self.holdout.append(batch.take(held))
            live = batch.take(~held) if held.any() else batch
            if len(live):
                scores = self.model.step(live)
                labelled = ~np.isnan(live.y)
                day = self._day(live)
                self.progressive.add(scores.margin[labelled], live.y[labelled],
                                     None if day is None else day[labelled])
            self.rows_done += len(batch)
            if progress is not None:
                progress(self)
            if not args.checkpoint:
                continue
            # Checkpoints only at boundaries of the uninterrupted batch schedule (after a
            # full batch, or a short one at the end of the file), so a resumed run takes the
            # same batches. A --rows stop cuts the last batch short: checkpoint before it
            # (and at a stop on a boundary), so a resume with a larger --rows redoes little.
            eof = len(batch) < size and (args.rows is None or self.rows_done < args.rows)
            cut_next = (args.rows is not None
                        and args.rows - self.rows_done < batch_size_at(self.rows_done,
                                                                       args.batch_size))
            if ((len(batch) == size or eof)
                    and (self.rows_done >= next_ckpt or eof or cut_next)):
                self.save_checkpoint(time.perf_counter() - t0)
                next_ckpt = (self.rows_done // every + 1) * every
        # the end of the file: the pending refit goes live now and the trees are refit on the
        # whole window, so the model that scores the holdout has seen the data
        self.model.finish()
        if args.save_model:
            save_model(args.save_model, self.model, self.source.encoder, str(self.path))
        seconds = self.seconds_before + time.perf_counter() - t0
        report = self.report(seconds)
        self.model.close()
        self._close_spills()
        self.source.close()
        self.fingerprint.close()
        return report

    def abort(self) -> None:
        """Release everything after an interrupted run (checkpoints already written stay)."""
        self.model.close()
        self._close_spills()
        self.source.close()
        self.fingerprint.close()

    def _close_spills(self) -> None:
        self.holdout.close()
        self.progressive.close()
        if self._remove_tmpdir is not None:
            self._remove_tmpdir()

    def holdout_metrics(self) -> dict[str, Any]:
        """The final model's metrics on the held-out events, through a spill like the
        progressive ones: memory flat in the number of held-out events."""
        scores = RecordSpill(self.spill_dir / HOLDOUT_SCORES_FILE)
        try:
            for stored in self.holdout.batches():
                for a in range(0, len(stored), HOLDOUT_SCORE_ROWS):
                    b = stored.take(slice(a, a + HOLDOUT_SCORE_ROWS))
                    keep = ~np.isnan(b.y)
                    z = self.model.score(b).margin[keep]
                    scores.append(z, b.y[keep], np.zeros(z.size, np.int32))
            metrics = summarize_spilled(spill_reader(scores), 0, len(scores),
                                        self.progressive.budget, self.progressive.chunk_rows)
        finally:
            scores.close(remove=True)
        return {**metrics, "mode": self.args.holdout_mode}

    def report(self, seconds: float) -> dict[str, Any]:
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
            "holdout": self.holdout_metrics(),
            "windows": self.progressive.windows(),
            "refit_windows": self.progressive.around_swaps(),
            "skipped_rows": int(pos.get("skipped_rows", 0)),
            "out_of_order": int(pos.get("out_of_order", 0)),
            "column_kinds": self.source.schema.column_kinds(),
            "unparsed_numbers": self.source.encoder.unparsed_numbers(),
        }


def _plain(value: Any) -> Any:
    """A flag value as the checkpoint's JSON gives it back (paths as text, tuples as lists)."""
    return json.loads(json.dumps(value, default=str))


def plot(report: dict[str, Any], path: Path) -> None:
    """Progressive AUC and logloss per window over the stream, tree swaps marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = report["windows"]
    x = [e["end_row"] for e in w]
    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(8, 5))
    ax1.plot(x, [e["auc"] for e in w], marker="o")
    ax1.set_ylabel("progressive AUC")
    ax2.plot(x, [e["logloss"] for e in w], marker="o", color="tab:red")
    ax2.set_ylabel("progressive logloss")
    ax2.set_xlabel("events (progressive, held-out excluded)")
    for swap in report["refit_windows"]:
        for ax in (ax1, ax2):
            ax.axvline(swap["row"], color="grey", lw=0.6, ls=":")
    fig.suptitle(f"streamfusion replay: {Path(report['file']).name}, "
                 f"{'+'.join(report['model']['stages'])}")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")  # the path as given, no ".png" added
    plt.close(fig)


def summary_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title=f"streamfusion replay: {'+'.join(report['model']['stages'])}")
    for col in ("", "AUC", "logloss", "events"):
        t.add_column(col, justify="right")
    for name in ("progressive", "holdout"):
        m = report[name]
        t.add_row(name, *(f"{m[k]:.4f}" if math.isfinite(m[k]) else "n/a"
                          for k in ("auc", "logloss")), f"{m['rows']:,}")
    t.caption = (f"{report['rows']:,} events in {report['seconds']:.1f} s = "
                 f"{report['events_per_second']:,.0f} events/s; tree refits: "
                 f"{report['model']['refits_live']} live of {report['model']['refits_started']}"
                 f"; skipped rows: {report['skipped_rows']}")
    return t


def _check_paths(args: argparse.Namespace) -> None:
    """Refuse unusable input and output paths before any work (a long run must not lose its
    results at the end)."""
    if args.file is not None and not args.file.is_file():
        what = ("no such file" if not args.file.exists() else
                "not a regular file (replay reopens and seeks its input: no directories, "
                "pipes or devices)")
        raise ValueError(f"--file {args.file}: {what}")
    for flag, path in (("--report", args.report), ("--plot", args.plot),
                       ("--save-model", args.save_model)):
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


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwind as for Ctrl-C: spills are closed, temp files removed


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    try:
        _check_paths(args)
        replay = Replay(args)
    except (ParseError, checkpoint.CheckpointError, ValueError) as exc:
        console.print(f"[red]streamfusion replay: {exc}", highlight=False, soft_wrap=True)
        return 1
    total = args.rows
    columns = [TextColumn("[bold]replay"), BarColumn(), TextColumn("{task.completed:,} events"),
               TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[auc]}"),
               TimeElapsedColumn()]
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        with Progress(*columns, console=console, disable=args.quiet, transient=True) as bar:
            task = bar.add_task("replay", total=total, rate="", auc="")
            last = [time.perf_counter(), replay.rows_done]

            def progress(r: Replay) -> None:
                now = time.perf_counter()
                if now - last[0] < 1.0:
                    return
                rate = (r.rows_done - last[1]) / (now - last[0])
                live = r.progressive.recent(LIVE_AUC_EVENTS)
                bar.update(task, completed=r.rows_done, rate=f"{rate:,.0f} ev/s",
                           auc=f"AUC {live['auc']:.4f}")
                last[:] = [now, r.rows_done]

            report = replay.run(None if args.quiet else progress)
    except ParseError as exc:
        console.print(f"[red]streamfusion replay: {exc}", highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        replay.abort()
        where = (f"; --resume continues from the last checkpoint in {args.checkpoint}"
                 if args.checkpoint else "")
        console.print(f"[red]streamfusion replay: interrupted after {replay.rows_done:,} "
                      f"events{where}", highlight=False, soft_wrap=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if report["progressive"]["rows"] == 0:
        console.print("streamfusion replay: no labelled event was scored, so the progressive "
                      "metrics are undefined (null in the report)", highlight=False,
                      soft_wrap=True)
    for flag, path, write in (("--report", args.report, write_json),
                              ("--plot", args.plot, lambda p, r: plot(r, p))):
        try:
            if path:
                write(path, report)
        except OSError as exc:  # e.g. a full disk: the pre-check could not foresee it
            console.print(f"[red]streamfusion replay: cannot write {flag} {path}: "
                          f"{exc.strerror}", highlight=False, soft_wrap=True)
            return 1
    if not args.quiet:
        console.print(summary_table(report))
    return 0
