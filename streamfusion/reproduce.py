"""``streamfusion reproduce``: the paper's Tables 2 and 3 in its batch setting.

    streamfusion reproduce --file train.csv [--format auto|avazu|criteo|csv|libsvm|libfm|libffm]
        [--label COL] [--types COL=KIND,...] [--on-error fail|skip] [--table 2|3|all]
        [--split random|chrono] [--epochs N] [--checks N] [--no-scales] [--quick] [--oof F]
        [--rows N]
        [--models LR,GBDT,...] [--report out.json] [--markdown out.md] [--plot out.png]
        [--seed S]

The file is streamed once through the C reader into compact arrays, split 9:1 (seeded random
or chronological) with a validation slice of the training part for early stopping, and the
ten Table 2 models / the Table 3 iterations are fitted from the registry of
``streamfusion.batch``, with the paper's published figures beside ours.
Without ``--file`` a generated Avazu-format stream with planted tree and latent structure is
used. ``--quick`` (fewer trees, smaller DeepFM, two epochs) is meant for CI on 300k rows.
The input flags are replay's (``streamfusion.inputs``); a malformed input ends the run with a
one-line error and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from streamfusion.batch import TABLE2, Experiment, default_config, load_log
from streamfusion.batch import paper as published
from streamfusion.batch.experiment import CONVERGENCE, table_bits
from streamfusion.data import ParseError
from streamfusion.inputs import add_input_arguments, source_options
from streamfusion.outputs import check_output, write_json

DEFAULT_GENERATED_ROWS = 300_000
LEAKAGE = {
    "in-sample": ("in-sample margins: a stage after the trees learns against the trees' scores "
                  "on the very rows the trees were fitted on (the paper's way); those scores "
                  "fit their labels better than they will on new rows"),
    "oof": ("out-of-fold margins: each training row's tree score comes from trees fitted "
            "without that row (--oof F), as the trees will score new rows"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Attach ``reproduce``'s options to ``parser``."""
    parser.add_argument("--file", default=None,
                        help="click log to reproduce on (default: a generated Avazu stream)")
    add_input_arguments(parser)
    parser.add_argument("--table", choices=("2", "3", "all"), default="all",
                        help="which of the paper's tables to produce")
    parser.add_argument("--split", choices=("random", "chrono"), default="random",
                        help="seeded random 9:1 split, or the last 10%% of the file as test")
    parser.add_argument("--epochs", type=int, default=None,
                        help="max epochs of the neural models (early stopping on validation)")
    parser.add_argument("--patience", type=int, default=None,
                        help="epochs without validation improvement before stopping")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="mini-batch size of the neural models (default: 1024)")
    parser.add_argument("--checks", type=int, default=None, metavar="N",
                        help="validation checks per epoch, each a candidate for early "
                             "stopping (default: 4)")
    parser.add_argument("--no-scales", action="store_true",
                        help="residual learners add their margin as the paper does, without "
                             "stage scales fitted on the validation slice")
    parser.add_argument("--quick", action="store_true",
                        help="CI setting: fewer trees, a smaller DeepFM, two epochs")
    parser.add_argument("--oof", type=int, default=0, metavar="F",
                        help="residual stages learn from F-fold out-of-fold tree margins")
    parser.add_argument("--rows", type=int, default=None,
                        help="read at most N rows (generated stream: its length, default 300k)")
    parser.add_argument("--generate-format", choices=("avazu", "criteo"), default="avazu",
                        help="format of the generated stream when no --file is given")
    parser.add_argument("--models", default=None,
                        help="comma-separated subset of Table 2 (default: all ten)")
    parser.add_argument("--bits", type=int, default=None,
                        help="log2 of the hash space of (field, value) pairs (default: 20, 18 "
                             "with --quick); the learners' tables hold the distinct ones")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads for LightGBM and the learner (1 = bit-for-bit runs)")
    parser.add_argument("--report", default=None, metavar="PATH.json", help="write JSON")
    parser.add_argument("--markdown", default=None, metavar="PATH.md", help="write Markdown")
    parser.add_argument("--plot", default=None, metavar="PATH.png",
                        help="write the convergence curves (the paper's Fig. 3)")
    parser.add_argument("--seed", type=int, default=0, help="the one seed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


class RichTracker:
    """Two bars: the pieces being fitted, and the current piece (epochs x chunks of rows)."""

    def __init__(self, progress: Any, total_pieces: int) -> None:
        self.progress = progress
        self.overall = progress.add_task("models", total=total_pieces)
        self.inner = progress.add_task("", total=1, visible=False)

    def begin(self, name: str, units: int) -> None:
        self.progress.update(self.overall, description=f"models: {name}")
        self.progress.reset(self.inner, total=units, description=f"  {name}",
                            visible=True)

    def tick(self) -> None:
        self.progress.advance(self.inner)

    def end(self) -> None:
        self.progress.update(self.inner, completed=self.progress.tasks[self.inner].total)
        self.progress.advance(self.overall)


def _models(arg: str | None) -> tuple[str, ...]:
    if not arg:
        return TABLE2
    names = tuple(m.strip() for m in arg.split(",") if m.strip())
    unknown = [m for m in names if m not in TABLE2]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; Table 2 has {', '.join(TABLE2)}")
    return names


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reproduce(path: str, fmt: str = "auto", label: str | None = None, table: str = "all",
              split: str = "random", epochs: int | None = None, patience: int | None = None,
              batch_size: int | None = None, quick: bool = False, oof: int = 0,
              rows: int | None = None, models: tuple[str, ...] = TABLE2,
              bits: int | None = None, threads: int = 1, seed: int = 0,
              progress: Any = None, on_error: str = "fail",
              source: dict[str, Any] | None = None, checks: int | None = None,
              scales: bool | None = None) -> dict[str, Any]:
    """Run the reproduction and return the report dict (see ``run`` for the CLI).

    ``source`` holds further :func:`~streamfusion.data.open_source` options (``types``,
    ``max_features``, ``dense_features``; :func:`streamfusion.inputs.source_options`); it
    wins over ``fmt``, ``label`` and ``on_error``.
    """
    cfg, opts = default_config(quick, seed)
    changes: dict[str, Any] = {"threads": threads, "tree_threads": threads}
    if bits is not None:
        changes["bits"] = bits
    cfg = replace(cfg, **changes)
    opts = replace(opts, epochs=epochs if epochs is not None else opts.epochs,
                   patience=patience if patience is not None else opts.patience,
                   batch_size=batch_size or opts.batch_size, seed=seed,
                   checks=checks if checks is not None else opts.checks,
                   scales=opts.scales if scales is None else scales)
    t0 = time.perf_counter()
    read_task = None
    if progress is not None:
        read_task = progress.add_task("reading", total=rows)

    def on_rows(n: int) -> None:
        if progress is not None:
            progress.advance(read_task, n)

    options = {"format": fmt, "label": label, "on_error": on_error, **(source or {})}
    data = load_log(path, bits=cfg.bits, seed=seed, rows=rows, split=split,
                    progress=on_rows, **options)
    load_seconds = time.perf_counter() - t0
    if progress is not None:
        progress.update(read_task, visible=False)
    want2 = table in ("2", "all")
    want3 = table in ("3", "all")
    names = models if want2 else ()
    ks = (0, 1, 2, 3) if want3 else ()
    tracker = None
    if progress is not None:
        tracker = RichTracker(progress, len(Experiment.pieces(names, ks)))
    exp = Experiment(data, cfg, opts, oof=oof, tracker=tracker)
    table2 = exp.table2(names) if want2 else []
    table3 = exp.table3(ks) if want3 else []
    leakage = "oof" if oof > 1 else "in-sample"
    report: dict[str, Any] = {
        "table2": table2,
        "table3": table3,
        "convergence": exp.convergence(),
        "data": {
            "file": str(path), "format": data.format, "rows": len(data),
            "train": data.n_train, "valid": data.n_valid, "test": data.n_test,
            "fields": data.n_fields, "tree_features": int(data.dense.shape[1]),
            "ctr_test": float(data.y[data.test].mean()), "split": split,
            "skipped_rows": data.skipped_rows, "encoded_bytes": data.nbytes(),
            "table_rows": data.table_rows,
            "column_kinds": data.column_kinds, "unparsed_numbers": data.unparsed_numbers,
        },
        "settings": {
            "quick": quick, "seed": seed, "epochs": opts.epochs, "patience": opts.patience,
            "checks": opts.checks, "scales": opts.scales, "batch_size": opts.batch_size,
            "n_trees": cfg.n_trees, "num_leaves": cfg.num_leaves,
            "tree_learning_rate": cfg.tree_learning_rate, "hash_bits": cfg.bits,
            "table_bits": table_bits(data.table_rows), "k": cfg.k, "hidden": list(cfg.hidden),
            "lr": cfg.lr, "l2": cfg.l2, "threads": threads,
        },
        "leakage": {"mode": leakage, "folds": oof if oof > 1 else 0,
                    "explain": LEAKAGE[leakage]},
        "load_seconds": round(load_seconds, 3),
    }
    exp.close()
    report["paper"] = paper_comparison(report)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    report["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    return report


def paper_comparison(report: dict[str, Any]) -> dict[str, Any]:
    """The paper's figures for the log's nearest data set, added beside each of our rows
    (``row["paper"]``), our AUC gains beside the paper's, and how our protocol differs."""
    d, st = report["data"], report["settings"]
    dataset, note = published.reference_set(d["format"])
    ref = published.published(dataset)
    for r in report["table2"]:
        r["paper"] = ref["table2"].get(r["model"])
    for r in report["table3"]:
        r["paper"] = ref["table3"].get(r["K"])
    ours = published.gains({r["model"]: r["auc"] for r in report["table2"]})
    gains = {k: {"ours": v, "paper": ref["gains"][k]} for k, v in ours.items()}
    info = ref["dataset"]
    differences = [
        f"split: ours {d['split']} 9:1 of {d['rows']:,} rows ({d['train']:,} train, "
        f"{d['valid']:,} validation for early stopping, {d['test']:,} test); the paper's "
        f"random 9:1 of {info['rows']:,} rows ({info['name']})",
        f"epochs: ours at most {st['epochs']} (patience {st['patience']}), the validation "
        f"slice checked {st.get('checks', 1)} times per epoch, each stage keeping its best "
        f"check, epoch 0 (the stages before alone) included; the paper prints no epoch count "
        f"(its Fig. 3: DeepFM about six, GBDTRes+NN two)",
        f"sizes: ours {st['n_trees']} trees x {st['num_leaves']} leaves (early-stopped), "
        f"embeddings k = {st['k']}, MLP {'-'.join(map(str, st['hidden']))}, tables of "
        f"{d['table_rows']:,} rows (the log's distinct values hashed into 2^{st['hash_bits']});"
        f" the paper prints no sizes",
        f"tree margins: ours {report['leakage']['mode']}; the paper's in-sample",
    ]
    if st.get("scales"):
        differences.append(
            "stage scales: a residual learner's score is a * (stages before) + b * (its margin)"
            " + c, fitted on the validation slice (the paper's: the plain sum; ours too when "
            "the learner adds nothing)")
    return {"reference": published.REFERENCE, "dataset": dataset, "note": note,
            "protocol": published.PROTOCOL, "differences": differences, "gains": gains}


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _paper(r: dict[str, Any], key: str) -> str:
    return _fmt((r.get("paper") or {}).get(key))


def kept(r: dict[str, Any]) -> str:
    """What each stage of a row kept: ``"287 trees, 2.25/4 epochs (x0.97 + x0.81)"`` (0 = adds
    nothing; in brackets the stage scales of what came before and of the stage's own margin)."""
    parts = []
    for k in r.get("kept", []):
        if "trees_kept" in k:
            parts.append(f"{k['trees_kept']} trees")
        else:
            part = f"{k['epochs_kept']:g}/{k['epochs_run']:g} epochs"
            if "scales" in k:  # a * before + b * own margin + c
                part += f" (x{k['scales'][0]:.2f} + x{k['scales'][1]:.2f})"
            parts.append(part)
    return ", ".join(parts)


def _title(report: dict[str, Any]) -> str:
    d = report["data"]
    return f"{Path(d['file']).name} ({d['format']}, {d['split']} split)"


def markdown(report: dict[str, Any]) -> str:
    """The tables as Markdown, the paper's published figures beside ours."""
    d = report["data"]
    paper = report["paper"]
    name = published.DATASETS[paper["dataset"]]["name"]
    lines = [f"Data: `{Path(d['file']).name}` ({d['format']}), {d['rows']:,} rows: train "
             f"{d['train']:,} / valid {d['valid']:,} / test {d['test']:,} ({d['split']} split),"
             f" test CTR {d['ctr_test']:.4f}.", "",
             f"Paper figures: {paper['note']}. Source: {paper['reference']}.", "",
             f"Tree margins: {report['leakage']['explain']}.", ""]
    if report["table2"]:
        lines += ["**Table 2** (test part; kept: trees after early stopping, best validation "
                  "check / epochs run, 0 = the stage adds nothing; (xa + xb): the stage scales "
                  "of the stages before and of the stage's own margin)", "",
                  f"| Model | AUC | paper {name} AUC | Logloss | paper {name} Logloss | kept | "
                  "seconds |",
                  "|---|---|---|---|---|---|---|"]
        for r in report["table2"]:
            lines.append(f"| {r['model']} | {_fmt(r['auc'])} | {_paper(r, 'auc')} | "
                         f"{_fmt(r['logloss'])} | {_paper(r, 'logloss')} | {kept(r)} | "
                         f"{r['seconds']:.1f} |")
        lines.append("")
    if report["table3"]:
        lines += ["**Table 3** (K alternating residual iterations)", "",
                  f"| K | chain | AUC | paper {name} AUC | Logloss | paper {name} Logloss | kept |"
                  " seconds |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in report["table3"]:
            lines.append(f"| {r['K']} | {' + '.join(r['chain'])} | {_fmt(r['auc'])} | "
                         f"{_paper(r, 'auc')} | {_fmt(r['logloss'])} | {_paper(r, 'logloss')} |"
                         f" {kept(r)} | {r['seconds']:.1f} |")
        lines.append("")
    if paper["gains"]:
        lines += [f"| AUC gain | ours | {name} (paper) |", "|---|---|---|"]
        for k, v in paper["gains"].items():
            lines.append(f"| {k} | {v['ours']:+.4f} | {v['paper']:+.4f} |")
        lines.append("")
    lines += ["Protocol differences:", ""] + [f"- {x}" for x in paper["differences"]]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: str) -> None:
    """Test AUC and logloss per epoch for the convergence models (Agg backend, PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in CONVERGENCE:
        pts = report["convergence"].get(name)
        if not pts:
            continue
        ep = [p["epoch"] for p in pts]
        axes[0].plot(ep, [p["auc"] for p in pts], marker="o", label=name)
        axes[1].plot(ep, [p["logloss"] for p in pts], marker="o", label=name)
    from matplotlib.ticker import MaxNLocator

    for ax, what in zip(axes, ("test AUC", "test logloss"), strict=True):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (0: the stages before alone)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Convergence on the test part of {_title(report)}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_summary(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    paper = report["paper"]
    name = published.DATASETS[paper["dataset"]]["name"]
    if report["table2"]:
        t = Table(title=f"Table 2, test part of {_title(report)}; paper: {name}")
        for col in ("model", "AUC", "paper", "logloss", "paper", "kept", "s"):
            t.add_column(col, justify="left" if col in ("model", "kept") else "right",
                         no_wrap=col == "model")
        for r in report["table2"]:
            t.add_row(r["model"], _fmt(r["auc"]), _paper(r, "auc"), _fmt(r["logloss"]),
                      _paper(r, "logloss"), kept(r), f"{r['seconds']:.1f}")
        console.print(t)
    if report["table3"]:
        t = Table(title=f"Table 3 (K iterations); paper: {name}")
        for col in ("K", "AUC", "paper", "logloss", "paper", "kept", "s"):
            t.add_column(col, justify="left" if col == "kept" else "right")
        for r in report["table3"]:
            t.add_row(str(r["K"]), _fmt(r["auc"]), _paper(r, "auc"), _fmt(r["logloss"]),
                      _paper(r, "logloss"), kept(r), f"{r['seconds']:.1f}")
        console.print(t)
    if paper["gains"]:
        t = Table(title="AUC gains of GBDTRes+NN")
        for col in ("over", "ours", f"{name} (paper)"):
            t.add_column(col, justify="left" if col == "over" else "right")
        for k, v in paper["gains"].items():
            t.add_row(k.split(" - ")[1], f"{v['ours']:+.4f}", f"{v['paper']:+.4f}")
        console.print(t)
    console.print(f"paper figures: {paper['note']}")
    for line in paper["differences"]:
        console.print(f"- {line}", highlight=False)
    console.print(f"tree margins: {report['leakage']['explain']}")
    console.print(f"rows {report['data']['rows']:,}, total {report['seconds']:.1f} s, "
                  f"peak RSS {report['peak_rss_mb']:.0f} MB")


def _check_paths(args: argparse.Namespace) -> None:
    """Refuse an unreadable input and unwritable outputs before any work (ValueError)."""
    if args.file is not None and not os.path.isfile(args.file):
        what = "no such file" if not os.path.exists(args.file) else "not a regular file"
        raise ValueError(f"--file {args.file}: {what}")
    for flag, path in (("--report", args.report), ("--markdown", args.markdown),
                       ("--plot", args.plot)):
        if path is not None:
            check_output(Path(path), flag)


def _input(args: argparse.Namespace, tmp: str) -> tuple[str, int | None, dict[str, Any]]:
    """The file to read, its row cap and its ``open_source`` options: the given ``--file``, or
    a generated stream written to ``tmp``."""
    options = source_options(args)
    if args.file is not None:
        return args.file, args.rows, options
    from streamfusion.data.generate import generate

    rows = args.rows or DEFAULT_GENERATED_ROWS
    path = os.path.join(tmp, f"generated.{args.generate_format}.csv")
    generate(path, format=args.generate_format, rows=rows, seed=args.seed)
    return path, rows, {**options, "format": args.generate_format}


def _progress() -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=True)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``streamfusion reproduce``; returns the exit code.

    Bad input (a missing file, a malformed row, flags that do not fit the file) and unwritable
    outputs end the run with one line on stderr and exit code 1, never a traceback.
    """
    from rich.console import Console

    models = _models(args.models)
    if args.oof == 1 or args.oof < 0:
        print("--oof needs at least 2 folds", file=sys.stderr)
        return 2
    if args.checks is not None and args.checks < 1:
        print("--checks needs at least 1 check per epoch", file=sys.stderr)
        return 2
    progress = None if args.no_progress else _progress()
    try:
        _check_paths(args)
        with tempfile.TemporaryDirectory(prefix="sf-reproduce-") as tmp:
            path, rows, options = _input(args, tmp)
            if progress is not None:
                progress.start()
            try:
                report = reproduce(path, table=args.table, split=args.split,
                                   epochs=args.epochs, patience=args.patience,
                                   checks=args.checks, scales=False if args.no_scales else None,
                                   batch_size=args.batch_size, quick=args.quick, oof=args.oof,
                                   rows=rows, models=models, bits=args.bits,
                                   threads=args.threads, seed=args.seed, progress=progress,
                                   source=options)
            finally:
                if progress is not None:
                    progress.stop()
        if args.file is None:
            report["data"]["file"] = f"generated {args.generate_format} stream (seed {args.seed})"
        _write_outputs(args, report)
    except (ParseError, ValueError, OSError) as exc:
        print(f"streamfusion reproduce: {_one_line(exc)}", file=sys.stderr)
        return 1
    print_summary(report, Console())
    return 0


def _write_outputs(args: argparse.Namespace, report: dict[str, Any]) -> None:
    if args.report:
        # strict JSON: an undefined metric (a test part with one class) is null, not NaN
        write_json(Path(args.report), report)
    if args.markdown:
        Path(args.markdown).write_text(markdown(report))
    if args.plot:
        plot(report, args.plot)


def _one_line(exc: BaseException) -> str:
    """An error as one line (an OSError by its reason and file name)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return " ".join(str(exc).split())
