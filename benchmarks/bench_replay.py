"""End-to-end ``streamfusion replay`` speed, accuracy and peak memory (issue 3's speed target).

    python benchmarks/bench_replay.py [--quick] [--json PATH] [--sizes 1000000,3000000,10000000]
        [--markdown PATH] [--threads N] [--no-peers] [--work DIR] [--render JSON]

1. Generates an Avazu-format stream of each size once, with its ``--truth`` probabilities,
   cached under ``~/.cache/streamfusion/bench/`` (``$XDG_CACHE_HOME`` respected).
2. Replays each stream with the default model (trees 100 x 63 leaves on the replay's default
   refit schedule, DeepFM k=8 with MLP 128-128) as ``streamfusion replay --file F --quiet
   --report R.json`` in a child process, and records events/s (the report's, and rows over
   the child's wall time), progressive and holdout AUC / logloss, and the child's peak RSS
   from ``os.wait4``: peak memory must be flat in the stream's length. A ``--threads 2`` run
   on the first size too. The parent stays small (generation and conversion run in children
   too): Linux counts a parent's peak RSS at exec time into each child's ``ru_maxrss``.
3. On the same stream (the first size, or a prefix of it for the slow peers), in the same run:
   Vowpal Wabbit 9 (logistic, linear and ``--lrq pd8``) learning from a text file inside its
   C++ driver, and river (LogisticRegression over one-hot features; FMClassifier on a short
   prefix). Each peer runs in its own child process so its peak RSS is measured the same way.
   Progressive AUC comes from each peer's predictions made before it learns on the event.
   Peers that cannot be imported (they are in the ``bench`` extra) are skipped with a note.

What is timed: for streamfusion, ``events_per_second`` of the report (the replay loop: read,
parse, hash, score, learn, refits; not interpreter start-up or the final holdout scoring) and,
beside it, rows over the child's whole wall time and over its whole CPU time (all threads,
start-up included: the stable figure when the machine is shared). For Vowpal Wabbit, the
workspace run over its text file (parse + predict + learn + writing predictions), not the
CSV -> VW conversion. For river, the whole loop: reading the CSV with ``csv.reader``, building
each event's one-hot feature dict, ``predict_proba_one`` then ``learn_one``. Peers' CPU time
covers the same timed region (``time.process_time``, all threads).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent  # the checkout measured (an install need not exist)
SEED = 0
SIZES = (1_000_000, 3_000_000, 10_000_000)
QUICK_SIZES = (100_000, 300_000, 1_000_000)
TARGET_EVENTS_PER_SECOND = 250_000  # issue 3: end to end, default model, refits included
FLAT_RSS_RATIO = 1.25  # "flat": peak RSS of the largest size within 25% of the smallest's
# Peers' rows on the first stream; None = all of it. The slow ones get a prefix so the whole
# benchmark stays within minutes (DESIGN.md anchors: VW --lrq ~6k/s, river FM ~350/s).
PEER_ROWS = {"vw-linear": None, "vw-lrq": 300_000, "river-lr": 300_000, "river-fm": 20_000}
QUICK_PEER_ROWS = {"vw-linear": None, "vw-lrq": 50_000, "river-lr": 50_000, "river-fm": 5_000}
VW_BITS = 20  # the same hashed table size as streamfusion's default --bits 20
# Avazu columns grouped into Vowpal Wabbit namespaces (first letter = namespace id). The
# generator plants latent crosses of publisher (site / app) ids with device ids, so --lrq pd.
VW_NAMESPACES = {
    "p": ("site_id", "site_domain", "site_category", "app_id", "app_domain", "app_category"),
    "d": ("device_id", "device_ip", "device_model", "device_type", "device_conn_type"),
    "c": ("C1", "banner_pos", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21"),
}
FEATURE_COLUMNS = tuple(c for cols in VW_NAMESPACES.values() for c in cols)
PROB_EPS = 1e-15  # clamp of probabilities in logloss only


# --------------------------------------------------------------------------- data

def _with_checkout() -> dict[str, str]:
    """Import streamfusion from this checkout, here and in the children."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


CHILD_ENV = _with_checkout()


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "streamfusion" / "bench"


def stream(rows: int, seed: int = SEED) -> dict[str, Any]:
    """The cached Avazu-format stream of ``rows`` events: paths and the generator's stats.

    Cached files are named by the generator's version, so a changed planted world is
    regenerated rather than silently reused.
    """
    from streamfusion.data import generate as gen

    d = cache_dir()
    version = getattr(gen, "GENERATOR_VERSION", 1)
    path = d / f"avazu-v{version}-{rows}-seed{seed}.csv"
    truth = path.with_suffix(".truth.csv")
    stats_path = path.with_suffix(".stats.json")
    if not (path.exists() and truth.exists() and stats_path.exists()):
        d.mkdir(parents=True, exist_ok=True)
        tmp, tmp_truth = (p.with_name(p.name + f".tmp{os.getpid()}") for p in (path, truth))
        print(f"generating {rows:,} Avazu-format rows -> {path}", file=sys.stderr)
        stats = gen.generate(tmp, format="avazu", rows=rows, seed=seed, truth_path=tmp_truth)
        os.replace(tmp_truth, truth)
        os.replace(tmp, path)
        stats_path.write_text(json.dumps(stats, indent=2))
    return {"rows": rows, "path": path, "truth": truth, "generator_version": version,
            "stats": json.loads(stats_path.read_text())}


def read_truth(truth: Path, rows: int | None = None) -> np.ndarray:
    import pyarrow.csv as pacsv

    col = pacsv.read_csv(truth, read_options=pacsv.ReadOptions(column_names=["p"])).column(0)
    p = col.to_numpy()
    return p if rows is None else p[:rows]


def hour_features(hour: str, cache: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """Avazu ``hour`` YYMMDDHH -> (hour of day, weekday with Monday = 0), as strings."""
    out = cache.get(hour)
    if out is None:
        day = datetime.date(2000 + int(hour[:2]), int(hour[2:4]), int(hour[4:6]))
        out = cache[hour] = (hour[6:8], str(day.weekday()))
    return out


def read_rows(path: Path, rows: int | None) -> Iterator[tuple[list[str], int]]:
    """Stream the first ``rows`` events: strings of FEATURE_COLUMNS + (hod, weekday), label."""
    cache: dict[str, tuple[str, str]] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        idx = [header.index(c) for c in FEATURE_COLUMNS]
        i_click, i_hour = header.index("click"), header.index("hour")
        for n, rec in enumerate(reader):
            if rows is not None and n >= rows:
                break
            yield ([rec[i] for i in idx] + list(hour_features(rec[i_hour], cache)),
                   int(rec[i_click]))


def vw_file(src: dict[str, Any]) -> tuple[Path, Path]:
    """Vowpal Wabbit text of a stream (label 1/-1, namespaces p, d, c, t) and its labels."""
    vw = src["path"].with_suffix(".vw")
    labels = src["path"].with_suffix(".labels.npy")
    if vw.exists() and labels.exists():
        return vw, labels
    print(f"converting {src['path'].name} to Vowpal Wabbit text -> {vw}", file=sys.stderr)
    names = [n for cols in VW_NAMESPACES.values() for n in cols]
    spans, start = [], 0
    for ns, cols in VW_NAMESPACES.items():
        spans.append((ns, start, start + len(cols)))
        start += len(cols)
    tmp = vw.with_name(vw.name + f".tmp{os.getpid()}")
    ys: list[np.ndarray] = []
    chunk = 200_000
    with open(src["path"], newline="") as f, open(tmp, "w") as out:
        reader = csv.reader(f)
        header = next(reader)
        idx = [header.index(c) for c in FEATURE_COLUMNS]
        i_click, i_hour = header.index("click"), header.index("hour")
        cache: dict[str, tuple[str, str]] = {}
        buf: list[str] = []
        y: list[int] = []
        for rec in reader:
            click = rec[i_click] == "1"
            y.append(int(click))
            vals = [rec[i] for i in idx]
            hod, wd = hour_features(rec[i_hour], cache)
            parts = ["1 |" if click else "-1 |"]
            for ns, a, b in spans:
                if ns != "p":
                    parts.append(f" |{ns}")
                else:
                    parts[0] += ns
                parts.extend(f" {names[j]}={vals[j]}" for j in range(a, b))
            parts.append(f" |t hod={hod} wd={wd} hw={hod}_{wd}\n")
            buf.append("".join(parts))
            if len(buf) >= chunk:
                out.write("".join(buf))
                buf.clear()
                ys.append(np.asarray(y, np.int8))
                y.clear()
        out.write("".join(buf))
        ys.append(np.asarray(y, np.int8))
    np.save(labels, np.concatenate(ys))
    os.replace(tmp, vw)
    return vw, labels


# --------------------------------------------------------------------------- metrics

def auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Exact ROC AUC, ties as one half (the same definition as streamfusion.evaluate.auc)."""
    from scipy.stats import rankdata

    y = np.asarray(y) > 0
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, np.float64))
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(np.asarray(p, np.float64), PROB_EPS, 1 - PROB_EPS)
    y = np.asarray(y) > 0
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


# --------------------------------------------------------------------------- child processes

def measure(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` as a child; exit code, wall seconds and the child's peak RSS (MiB)."""
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env=CHILD_ENV if env is None else env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    # ru_maxrss is in kilobytes on Linux (bytes on macOS)
    scale = 1 if sys.platform == "darwin" else 1024
    result = {"returncode": proc.returncode, "wall_seconds": wall,
              "peak_rss_mib": usage.ru_maxrss * scale / 2**20,
              "cpu_seconds": usage.ru_utime + usage.ru_stime, "log": str(log)}
    if proc.returncode != 0:
        result["error"] = log.read_text(errors="replace")[-2000:]
    return result


def run_replay(src: dict[str, Any], work: Path, extra: list[str], tag: str) -> dict[str, Any]:
    report = work / f"replay-{tag}.json"
    cmd = [sys.executable, "-m", "streamfusion.cli", "replay", "--file", str(src["path"]),
           "--quiet", "--report", str(report), *extra]
    print(f"[replay {tag}] {' '.join(cmd[2:])}", file=sys.stderr)
    res = measure(cmd, work / f"replay-{tag}.log")
    label = "streamfusion replay, default model" + (f" {' '.join(extra)}" if extra else "")
    res.update(system="streamfusion", label=label, variant=tag,
               command=" ".join(["streamfusion", *cmd[4:]]),
               truth_auc=src["stats"]["truth_auc"], stream_rows=src["rows"])
    if res["returncode"] == 0 and report.exists():
        rep = json.loads(report.read_text())
        res.update(rows=rep["rows"], seconds=rep["seconds"],
                   events_per_second=rep["events_per_second"],
                   wall_events_per_second=rep["rows"] / res["wall_seconds"],
                   progressive=rep["progressive"], holdout=rep["holdout"],
                   model=rep["model"], skipped_rows=rep.get("skipped_rows"))
    print(f"[replay {tag}] " + _one_line(res), file=sys.stderr)
    return res


def run_peer(name: str, src: dict[str, Any], rows: int | None, work: Path) -> dict[str, Any]:
    out = work / f"peer-{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peer", name,
           "--peer-file", str(src["path"]), "--peer-out", str(out), "--peer-work", str(work)]
    if rows is not None:
        cmd += ["--peer-rows", str(rows)]
    print(f"[peer {name}] rows={rows or src['rows']:,}", file=sys.stderr)
    res = measure(cmd, work / f"peer-{name}.log")
    res.update(system=name, label=LABELS[name])
    if res["returncode"] == 0 and out.exists():
        res.update(json.loads(out.read_text()))
    print(f"[peer {name}] " + _one_line(res), file=sys.stderr)
    return res


def truth_auc(csv_path: Path, rows: int) -> float:
    """Exact AUC of the true click probabilities over the first ``rows`` events."""
    p = read_truth(csv_path.with_suffix(".truth.csv"), rows)
    y = np.load(csv_path.with_suffix(".labels.npy"))[:rows]
    return auc(p, y)


def _one_line(res: dict[str, Any]) -> str:
    if res.get("returncode") != 0 or "events_per_second" not in res:
        return f"FAILED (exit {res.get('returncode')}), see {res.get('log')}"
    auc_ = res["progressive"]["auc"]
    return (f"{res['rows']:,} events, {res['events_per_second']:,.0f} events/s, "
            f"progressive AUC {auc_:.4f}, peak RSS {res['peak_rss_mib']:,.0f} MiB")


# --------------------------------------------------------------------------- peers (in a child)

def peer_vw(args: argparse.Namespace, lrq: bool) -> dict[str, Any]:
    import vowpalwabbit

    src = {"path": Path(args.peer_file)}
    vw, labels_path = vw_file(src)
    y = np.load(labels_path)
    rows = len(y) if args.peer_rows is None else min(args.peer_rows, len(y))
    preds = Path(args.peer_work) / f"vw-{'lrq' if lrq else 'linear'}.preds"
    opts = (f"-d {vw} --loss_function logistic --link logistic -b {VW_BITS} -p {preds} "
            f"--quiet --examples {rows}")
    if lrq:
        opts += " --lrq pd8"
    t0, c0 = time.perf_counter(), time.process_time()
    ws = vowpalwabbit.Workspace(opts)  # with -d, runs the parser + learner over the file
    ws.finish()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    p = np.loadtxt(preds, dtype=np.float64, usecols=0)
    y = y[: len(p)]
    return {"rows": int(len(p)), "seconds": seconds, "events_per_second": len(p) / seconds,
            "timed_cpu_seconds": cpu,
            "progressive": {"auc": auc(p, y), "logloss": logloss(p, y), "rows": int(len(p))},
            "options": opts.replace(str(vw), vw.name).replace(str(preds), preds.name)}


def peer_river(args: argparse.Namespace, fm: bool) -> dict[str, Any]:
    from river import facto, linear_model, optim

    names = [*FEATURE_COLUMNS, "hod", "weekday"]
    if fm:
        model = facto.FMClassifier(n_factors=8, seed=SEED)
        desc = "facto.FMClassifier(n_factors=8)"
    else:
        model = linear_model.LogisticRegression(optimizer=optim.SGD(0.05))
        desc = "linear_model.LogisticRegression(optimizer=optim.SGD(0.05))"
    ps: list[float] = []
    ys: list[int] = []
    t0, c0 = time.perf_counter(), time.process_time()
    for vals, label in read_rows(Path(args.peer_file), args.peer_rows):
        x = {f"{n}={v}": 1.0 for n, v in zip(names, vals, strict=True)}
        ps.append(model.predict_proba_one(x)[True])
        model.learn_one(x, label == 1)
        ys.append(label)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    p, y = np.asarray(ps), np.asarray(ys, np.int8)
    return {"rows": int(len(y)), "seconds": seconds, "events_per_second": len(y) / seconds,
            "timed_cpu_seconds": cpu,
            "progressive": {"auc": auc(p, y), "logloss": logloss(p, y), "rows": int(len(y))},
            "options": desc + ", one-hot dict features, predict_proba_one then learn_one"}


LABELS = {
    "vw-linear": "Vowpal Wabbit 9, logistic, linear",
    "vw-lrq": "Vowpal Wabbit 9, logistic, --lrq pd8",
    "river-lr": "river LogisticRegression",
    "river-fm": "river FMClassifier, k=8",
}
PEERS = {
    "vw-linear": ("vowpalwabbit", lambda a: peer_vw(a, lrq=False)),
    "vw-lrq": ("vowpalwabbit", lambda a: peer_vw(a, lrq=True)),
    "river-lr": ("river", lambda a: peer_river(a, fm=False)),
    "river-fm": ("river", lambda a: peer_river(a, fm=True)),
}


def peer_main(args: argparse.Namespace) -> int:
    _, fn = PEERS[args.peer]
    res = fn(args)
    Path(args.peer_out).write_text(json.dumps(res, indent=2))
    return 0


def prepare(rows: int, convert: bool, truth_rows: list[int]) -> dict[str, Any]:
    """In a child: the stream of ``rows`` events (generated once) and, if asked, its VW text.

    Kept out of the parent process because Linux counts the parent's peak RSS at exec time
    into each child's ``ru_maxrss``: a parent that once held a big stream would set a floor
    under every figure measured after it.
    """
    src = stream(rows)
    if convert:
        vw_file(src)
    out = {**src, "path": str(src["path"]), "truth": str(src["truth"])}
    out["truth_auc_of_prefix"] = {str(n): truth_auc(src["path"], n) for n in truth_rows}
    return out


def prepared(rows: int, convert: bool = False,
             truth_rows: list[int] | None = None) -> dict[str, Any]:
    """The parent's view of :func:`prepare`, run in a child process."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--prepare", str(rows)]
    if convert:
        cmd.append("--prepare-vw")
    if truth_rows:
        cmd += ["--prepare-truth-rows", ",".join(map(str, truth_rows))]
    out = subprocess.run(cmd, env=CHILD_ENV, check=True, stdout=subprocess.PIPE, text=True)
    src = json.loads(out.stdout.strip().splitlines()[-1])
    src["path"], src["truth"] = Path(src["path"]), Path(src["truth"])
    return src


def importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# --------------------------------------------------------------------------- output

def table_rows(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """The two result tables as (title, header, rows) of strings, for rich and for markdown."""
    ours = [r for r in results["replay"] if r.get("variant", "").startswith("default")]
    head1 = ["", *[f"{r['stream_rows']:,} rows" for r in ours]]
    rows1 = []
    for label, fn in (
        ("events/s (report)", lambda r: f"{r['events_per_second']:,.0f}"),
        ("events/s (rows / child wall time)", lambda r: f"{r['wall_events_per_second']:,.0f}"),
        ("events per child CPU-second", lambda r: f"{r['rows'] / r['cpu_seconds']:,.0f}"),
        ("child wall seconds", lambda r: f"{r['wall_seconds']:.1f}"),
        ("peak RSS MiB", lambda r: f"{r['peak_rss_mib']:,.0f}"),
        ("tree refits", lambda r: str(r["model"].get("refits", "?"))),
        ("progressive AUC", lambda r: f"{r['progressive']['auc']:.4f}"),
        ("progressive logloss", lambda r: f"{r['progressive']['logloss']:.4f}"),
        ("holdout AUC", lambda r: f"{r['holdout']['auc']:.4f}"),
        ("holdout logloss", lambda r: f"{r['holdout']['logloss']:.4f}"),
        ("truth AUC (generator)", lambda r: f"{r['truth_auc']:.4f}"),
    ):
        rows1.append([label, *[fn(r) if "events_per_second" in r else "failed" for r in ours]])
    cfg = next((r["model"]["config"] for r in ours if "model" in r), None)
    title1 = "streamfusion replay, default model, by stream length"
    if cfg:
        title1 = (f"streamfusion replay, default model (trees {cfg['n_trees']} x "
                  f"{cfg['num_leaves']} leaves refit every {cfg['refit_every']:,} events"
                  f"{' or on drift' if cfg.get('drift') else ''}, {cfg['residual']} k={cfg['k']}"
                  f" MLP {'-'.join(map(str, cfg['hidden']))}), by stream length")

    head2 = ["system", "events", "events/s", "events per CPU-second", "progressive AUC",
             "truth AUC (same rows)", "peak RSS MiB"]
    rows2 = []
    first = [r for r in results["replay"] if r.get("stream_rows") == results["first_size"]]
    for r in [*first, *results["peers"]]:
        name = r.get("label", r["system"])
        if "events_per_second" not in r:
            rows2.append([name, "", r.get("note", f"failed, see {r.get('log')}"),
                          "", "", "", ""])
            continue
        rows2.append([name, f"{r['rows']:,}", f"{r['events_per_second']:,.0f}",
                      f"{r['rows'] / r.get('timed_cpu_seconds', r['cpu_seconds']):,.0f}",
                      f"{r['progressive']['auc']:.4f}", f"{r['truth_auc']:.4f}",
                      f"{r['peak_rss_mib']:,.0f}"])
    title2 = (f"Beside the peers: the same {results['first_size']:,}-row stream (or its first "
              "rows), same run")
    return [(title1, head1, rows1), (title2, head2, rows2)]


def rich_tables(results: dict[str, Any]) -> list[Any]:
    from rich.table import Table

    out = []
    for title, head, rows in table_rows(results):
        t = Table(title=title)
        for i, h in enumerate(head):
            t.add_column(h, justify="left" if i == 0 else "right")
        for r in rows:
            t.add_row(*r)
        out.append(t)
    return out


def _own_peak_rss_mib() -> float:
    import resource

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _git_head() -> str:
    """The commit measured, with ``+dirty`` when the working tree has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _load(avg: Any) -> str:
    return "/".join(f"{x:.1f}" for x in avg)


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Command: `{results['command']}`", ""]
    for title, head, rows in table_rows(results):
        lines += [f"**{title}**", "", "| " + " | ".join(head) + " |",
                  "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    m = results["machine"]
    lines += [results["verdict"], "",
              f"Commit {results['git']}. Machine: {m['cpus']} CPUs, Python {m['python']}; "
              "load average (1, 5, 15 min) "
              f"{_load(m['load_average_at_start'])} at start, "
              f"{_load(m['load_average_at_end'])} at end. A child's peak RSS includes its "
              "parent's peak at exec time (Linux), here "
              f"{results['parent_peak_rss_mib']:.0f} MiB: no figure can be below that."]
    return "\n".join(lines) + "\n"


def verdict(results: dict[str, Any]) -> str:
    ours = [r for r in results["replay"]
            if r.get("variant", "").startswith("default") and "events_per_second" in r]
    if not ours:
        return "no successful replay"
    slowest = min(r["events_per_second"] for r in ours)
    rss = [r["peak_rss_mib"] for r in ours]
    ratio = max(rss) / min(rss)
    speed_ok = slowest >= TARGET_EVENTS_PER_SECOND
    flat_ok = ratio <= FLAT_RSS_RATIO
    return (f"target >= {TARGET_EVENTS_PER_SECOND:,} events/s: "
            f"{'MET' if speed_ok else 'NOT MET'} (slowest size {slowest:,.0f} events/s); "
            f"memory flat (largest/smallest peak RSS <= {FLAT_RSS_RATIO}): "
            f"{'MET' if flat_ok else 'NOT MET'} (ratio {ratio:.2f}: "
            + ", ".join(f"{r['stream_rows']:,} -> {r['peak_rss_mib']:,.0f} MiB" for r in ours)
            + ")")


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"sizes {','.join(map(str, QUICK_SIZES))} and shorter peer prefixes")
    ap.add_argument("--sizes", help="comma-separated stream lengths (default 1M,3M,10M)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--markdown", type=Path, help="write the tables as markdown here")
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="only print (and --markdown) the tables of an earlier --json file")
    ap.add_argument("--threads", type=int, default=2,
                    help="also replay the first size with --threads N (0: skip)")
    ap.add_argument("--no-peers", action="store_true", help="skip Vowpal Wabbit and river")
    ap.add_argument("--work", type=Path, help="keep reports, logs and predictions here")
    # internal: one peer in a child process
    ap.add_argument("--prepare", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--prepare-vw", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prepare-truth-rows", default="", help=argparse.SUPPRESS)
    ap.add_argument("--peer", choices=sorted(PEERS), help=argparse.SUPPRESS)
    ap.add_argument("--peer-file", help=argparse.SUPPRESS)
    ap.add_argument("--peer-rows", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--peer-out", help=argparse.SUPPRESS)
    ap.add_argument("--peer-work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.peer:
        return peer_main(args)
    if args.prepare is not None:
        truth_rows = [int(n) for n in args.prepare_truth_rows.split(",") if n]
        print(json.dumps(prepare(args.prepare, args.prepare_vw, truth_rows)))
        return 0

    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 150)
    if args.render:
        results = json.loads(args.render.read_text())
        for t in rich_tables(results):
            console.print(t)
        if args.markdown:
            args.markdown.write_text(markdown(results))
        return 0
    sizes = (tuple(int(s) for s in args.sizes.split(",")) if args.sizes
             else QUICK_SIZES if args.quick else SIZES)
    peer_rows = QUICK_PEER_ROWS if args.quick else PEER_ROWS
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-replay-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_average_at_start": os.getloadavg()},
        "git": _git_head(),
        "sizes": list(sizes), "first_size": sizes[0], "target": TARGET_EVENTS_PER_SECOND,
        "work": str(work), "streams": [], "replay": [], "peers": [],
    }
    streams = [prepared(n) for n in sizes]
    results["streams"] = [{"rows": s["rows"], "path": str(s["path"]),
                           "generator_version": s["generator_version"], **s["stats"]}
                          for s in streams]
    for s in streams:
        results["replay"].append(run_replay(s, work, [], f"default-{s['rows']}"))
    if args.threads:
        results["replay"].append(run_replay(streams[0], work, ["--threads", str(args.threads)],
                                            f"threads{args.threads}-{sizes[0]}"))
    if not args.no_peers:
        first = streams[0]
        prefixes = sorted({min(n or first["rows"], first["rows"]) for n in peer_rows.values()})
        # convert once, untimed, before the timed children run (labels come with it); the
        # truth AUC of each prefix is computed there too, outside the peers' processes
        truth = prepared(first["rows"], convert=True, truth_rows=prefixes)["truth_auc_of_prefix"]
        for name in PEERS:
            module = PEERS[name][0]
            if not importable(module):
                results["peers"].append({"system": name, "label": LABELS[name],
                                         "note": f"skipped: {module} not importable "
                                                 "(pip install -e '.[bench]')"})
                continue
            rows = peer_rows[name]
            rows = None if rows is None or rows >= first["rows"] else rows
            res = run_peer(name, first, rows, work)
            if "rows" in res:
                res["truth_auc"] = truth.get(str(res["rows"]), float("nan"))
            results["peers"].append(res)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["parent_peak_rss_mib"] = _own_peak_rss_mib()
    results["verdict"] = verdict(results)
    for t in rich_tables(results):
        console.print(t)
    console.print(results["verdict"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))
        console.print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.write_text(markdown(results))
        console.print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
