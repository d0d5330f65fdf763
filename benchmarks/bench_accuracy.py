"""Accuracy on real click logs: streamfusion beside Vowpal Wabbit, river and batch LightGBM.

    python benchmarks/bench_accuracy.py [--data DIR] [--only NAME,...] [--skip-generated]
        [--gen-rows N] [--cache DIR] [--regenerate] [--markdown PATH]
        [--vw-numbers raw|cat|both] [--fm-max-rows N] [--no-fm-chrono] [--seeds N]

Issue 11, item 6. Data sets (names for ``--only``):

- ``avazu``: ``<data>/avazu/train`` (Avazu csv with header), replayed with ``--format avazu``;
- ``criteo``: ``<data>/criteo/sample.train`` (tab-separated), ``--format criteo``;
- ``adult``: ``<data>/adult/adult.csv``, ``--format csv --label label`` (not in time order);
- ``gen-avazu``, ``gen-criteo``: ``streamfusion generate --format avazu|criteo --rows N
  --seed 0`` streams (``--gen-rows``, default 1M), cached under ``--cache`` (default
  ``~/.cache/streamfusion/bench/accuracy``); their ``--truth`` probabilities give an extra row.

``<data>`` is ``../shared/data`` beside the repository (``--data`` overrides); data sets that
are absent are skipped with a note.

streamfusion runs through its CLI in a child process (``streamfusion replay --file F
[format flags] --quiet --report R.json``): the default model, ``--model gbdt`` and
``--model deepfm``, each once with the default random 10% holdout and once with
``--holdout-mode chrono`` (last 10% held out). Progressive metrics and events/s come from the
random-holdout run's report. Each of the three runs once more in chrono mode for each of
``--seed 1..N-1`` (``--seeds N``, default 3): the seed moves the learner's initial weights and
LightGBM's sampling while the rows stay the same, so the spread of those runs' progressive
(first 90%) and chrono AUCs is how far a figure moves on the model's chance alone, and the
default's mean difference to ``gbdt`` and ``deepfm`` over the seeds is the comparison without
it. On the generated streams, the share of the gap from trees alone (``--model gbdt``) to the
generator's truth that the default closes is given for the table's run and for each seed.

The peers see exactly the same rows in file order, parsed here with pandas (Criteo I1..I13
numbers, C* categorical; Avazu all categorical except ``click`` (label) and ``id`` (dropped),
``hour`` as the hour of day; a generic CSV: integer columns numbers, the rest categorical):

- Vowpal Wabbit (``vowpalwabbit`` package, its C++ driver reading a text file), logistic loss,
  ``-b 24``, default learning rate, linear and ``--interactions ::``; one namespace per column
  (``col=value`` for categoricals, ``col:value`` for numbers, missing values left out). Its
  ``-r`` raw margins are the progressive predictions (made before it learns each row, as ``-p``).
  Numbers go in raw; on data with numbers, two more rows give them as categories
  (``col=value``, ``--vw-numbers both``, the default): on Adult that is 0.02-0.03 AUC better
  (and is how issue 11's VW figures for Adult were measured).
- river ``LogisticRegression`` and ``FMClassifier`` (defaults), categoricals one-hot as dict
  keys ``col=value``, numbers through ``preprocessing.StandardScaler`` (updated on learn, as in a
  river pipeline); ``predict_proba_one`` then ``learn_one`` per row. FM only on files of at most
  ``--fm-max-rows`` rows (it is slow); ``--no-fm-chrono`` skips its second (chrono) pass.
- LightGBM batch fit (categoricals as pandas ``category`` dtype; one thread, like the replay's
  default ``--threads 1``), trained on the first 90% of the rows with early stopping on the last
  10% of those, scored on the last 10% (chrono holdout); when some categorical columns hold
  only numbers (Avazu's C1, banner_pos, C14..C21, the hour), a second fit reads them as numbers,
  as pandas would type them. (Issue 11's 0.7165 / 0.7270 on the Avazu sample came from other
  encodings; on that sample, category dtype gives 0.698, ordinal codes 0.707, counts 0.718.)

Progressive = over the rows our replay learns from (its random held-out rows excluded), each
scored before it is learned. Random holdout = the same rows as the replay's
(``streamfusion.evaluate.holdout_mask`` on the rows' 1-based physical line numbers, header
counted, fraction 0.1, seed 0), scored with the final model; the count is checked against each
report's ``holdout.rows``. Chrono holdout = the last ``n - round(0.9 n)`` rows, model trained on
the rest in file order (one pass).

Timing: streamfusion's events/s is the report's (read, parse, learn, refits). For the peers,
``time.perf_counter`` around learn + predict only: VW's workspace run over its text file (its
parse included, writing the text file not; the 2**24 table's allocation, about 10 ms, too),
river's ``predict_proba_one`` + ``learn_one`` (dict building not), LightGBM's Dataset + train +
predict (rows fitted and scored over that time).
Probabilities are clipped to [1e-15, 1 - 1e-15] for logloss.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HOLDOUT = 0.1  # streamfusion replay's defaults: --holdout 0.1 --seed 0
SEED = 0
VW_ARGS = "--loss_function logistic --link logistic -b 24 --quiet"
LGB_PARAMS = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 31,
              "min_data_in_leaf": 20, "feature_pre_filter": False, "verbose": -1, "seed": SEED,
              "num_threads": 1}  # as the replay's default --threads 1
LGB_ROUNDS, LGB_PATIENCE = 5000, 50
BOOTSTRAP_REPS = 1000  # replicates of each paired interval of a target's AUC difference
EPS = 1e-15
NAMESPACES = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"  # one per column
SF_MODELS = (("sf default", []), ("sf gbdt", ["--model", "gbdt"]),
             ("sf deepfm", ["--model", "deepfm"]))
NUM_CAT = ", numbers as categories"
LGB_NUM = "LightGBM batch, number-like categoricals as numbers"
ROWS = ("sf default", "sf gbdt", "sf deepfm", "VW linear", "VW ::", "VW linear" + NUM_CAT,
        "VW ::" + NUM_CAT, "river LR", "river FM", "LightGBM batch", LGB_NUM)
OPTIONAL_ROWS = ("VW linear" + NUM_CAT, "VW ::" + NUM_CAT, LGB_NUM)  # shown only when run
COLUMNS = ("progressive AUC", "progressive logloss", "random-holdout AUC", "chrono-holdout AUC",
           "events/s")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- metrics

def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Exact ROC AUC (ties count one half), NaN when one class is absent."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=bool)
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return math.nan
    r = rankdata(np.asarray(score, dtype=np.float64))
    return float((r[y].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _auc_order(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort order, tie-group ids (sorted) and sorted labels: what a weighted AUC needs."""
    order = np.argsort(np.asarray(score, np.float64), kind="stable")
    ranked = np.asarray(score, np.float64)[order]
    groups = np.concatenate([[0], np.cumsum(ranked[1:] != ranked[:-1])])
    return order, groups, np.asarray(y, np.float64)[order]


def _weighted_auc(prep: tuple[np.ndarray, np.ndarray, np.ndarray], w: np.ndarray) -> float:
    """AUC with each row counted ``w`` times (ties one half): a bootstrap replicate."""
    order, groups, ys = prep
    ws = w[order]
    pos = np.bincount(groups, ws * ys)
    neg = np.bincount(groups, ws * (1.0 - ys))
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def paired_interval(y: np.ndarray, ours: np.ndarray, theirs: np.ndarray,
                    reps: int = BOOTSTRAP_REPS) -> tuple[float, float]:
    """95% interval of AUC(ours) - AUC(theirs) on the same rows: a paired Poisson bootstrap
    (each replicate weighs every row by a Poisson(1) count, the same for both models)."""
    a, b = _auc_order(y, ours), _auc_order(y, theirs)
    rng = np.random.default_rng(SEED)
    diffs = []
    for _ in range(reps):
        w = rng.poisson(1.0, len(y)).astype(np.float64)
        diffs.append(_weighted_auc(a, w) - _weighted_auc(b, w))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(lo), float(hi)


def logloss(y: np.ndarray, p: np.ndarray) -> float:
    if len(y) == 0:
        return math.nan
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def sigmoid(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(np.asarray(z, dtype=np.float64))


# ----------------------------------------------------------------------------- data sets

@dataclass
class Spec:
    name: str
    path: Path
    kind: str  # avazu | criteo | csv
    replay_flags: list[str]
    label: str | None = None
    truth: Path | None = None  # generated streams: the generator's click probabilities


@dataclass
class Column:
    name: str
    kind: str  # "num" | "cat"
    codes: np.ndarray  # int32 code of each row's raw text; -1 = missing (empty)
    vocab: list[str]  # raw text of each code
    values: np.ndarray | None = None  # numbers: float64, NaN = missing


@dataclass
class Table:
    spec: Spec
    y: np.ndarray  # int8 labels
    line: np.ndarray  # 1-based physical line numbers (the header is line 1)
    columns: list[Column]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.y)


def _is_int(text: str) -> bool:
    t = text[1:] if text[:1] in "+-" else text
    return t.isdigit()


def _read_codes(path: Path, sep: str, header: bool) -> tuple[list[str], list[Column], int]:
    """Every column of a file as (codes, vocab) of its raw text, read in chunks."""
    import csv

    import pandas as pd

    reader = pd.read_csv(path, sep=sep, header=0 if header else None, dtype=str,
                         na_filter=False, keep_default_na=False, chunksize=200_000,
                         quoting=csv.QUOTE_MINIMAL if sep == "," else csv.QUOTE_NONE,
                         engine="c")
    names: list[str] | None = None
    maps: list[dict[str, int]] = []
    parts: list[list[np.ndarray]] = []
    n = 0
    for chunk in reader:
        if names is None:
            names = [str(c) for c in chunk.columns]
            maps = [{} for _ in names]
            parts = [[] for _ in names]
        for j, name in enumerate(chunk.columns):
            codes, uniques = pd.factorize(chunk[name].to_numpy(), sort=False)
            m = maps[j]
            glob = np.fromiter((m.setdefault(u, len(m)) for u in uniques), dtype=np.int32,
                               count=len(uniques))
            parts[j].append(glob[codes])
        n += len(chunk)
    if names is None:
        raise ValueError(f"{path}: no rows")
    cols = []
    for j, name in enumerate(names):
        vocab = list(maps[j])
        codes = np.concatenate(parts[j]).astype(np.int32)
        cols.append(Column(name, "cat", codes, vocab))
    return names, cols, n


def _missing_as_minus_one(col: Column) -> Column:
    """Empty text is a missing value: code -1, dropped from the vocabulary."""
    if "" not in col.vocab:
        return col
    old = col.vocab
    keep = [i for i, v in enumerate(old) if v != ""]
    remap = np.full(len(old), -1, dtype=np.int32)
    remap[keep] = np.arange(len(keep), dtype=np.int32)
    return Column(col.name, col.kind, remap[col.codes], [old[i] for i in keep])


def _recode(col: Column, fn: Any) -> Column:
    """Map each vocabulary entry through ``fn`` and merge equal results."""
    new: dict[str, int] = {}
    remap = np.fromiter((new.setdefault(fn(v), len(new)) for v in col.vocab), dtype=np.int32,
                        count=len(col.vocab))
    codes = np.where(col.codes >= 0, remap[np.maximum(col.codes, 0)], -1).astype(np.int32)
    return Column(col.name, col.kind, codes, list(new))


def _as_number(col: Column) -> Column:
    table = np.array([float(v) for v in col.vocab] + [math.nan], dtype=np.float64)
    return Column(col.name, "num", col.codes, col.vocab, table[col.codes])  # -1 -> NaN


def _labels(col: Column) -> np.ndarray:
    table = np.array([float(v) > 0 for v in col.vocab] + [False], dtype=np.int8)
    if (col.codes < 0).any():
        raise ValueError(f"label column {col.name!r} has empty values")
    return table[col.codes]


def count_lines(path: Path) -> int:
    """Physical lines (a last line without a newline counts)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def load(spec: Spec) -> Table:
    header = spec.kind in ("avazu", "csv")
    sep = "\t" if spec.kind == "criteo" else ","
    names, cols, n = _read_codes(spec.path, sep, header)
    cols = [_missing_as_minus_one(c) for c in cols]
    notes: list[str] = []
    if spec.kind == "criteo":
        if len(cols) != 40:
            raise ValueError(f"{spec.path}: {len(cols)} columns, Criteo has 40")
        names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
        for c, nm in zip(cols, names, strict=True):
            c.name = nm
        y = _labels(cols[0])
        feats = [_as_number(c) for c in cols[1:14]] + cols[14:]
    elif spec.kind == "avazu":
        by = {c.name: c for c in cols}
        y = _labels(by["click"])
        feats = []
        for c in cols:
            if c.name in ("click", "id"):
                continue
            if c.name == "hour":
                c = _recode(c, lambda v: str(int(v) % 100))
            feats.append(c)
    else:
        by = {c.name: c for c in cols}
        if spec.label not in by:
            raise ValueError(f"{spec.path}: no label column {spec.label!r}")
        y = _labels(by[spec.label])
        feats = []
        for c in cols:
            if c.name == spec.label:
                continue
            feats.append(_as_number(c) if c.vocab and all(map(_is_int, c.vocab)) else c)
    line = np.arange(n, dtype=np.int64) + 1 + int(header)
    physical = count_lines(spec.path)
    if physical != n + int(header):
        notes.append(f"WARNING: {physical} lines but {n} rows parsed (blank lines or quoted "
                     "line breaks?): the random holdout may not be the replay's")
    return Table(spec, y, line, feats, notes)


def generated(kind: str, rows: int, cache: Path, regenerate: bool) -> tuple[Path, Path]:
    cache.mkdir(parents=True, exist_ok=True)
    ext = "csv" if kind == "avazu" else "txt"
    path = cache / f"{kind}-{rows}-seed{SEED}.{ext}"
    truth = cache / f"{kind}-{rows}-seed{SEED}.truth"
    if regenerate or not (path.exists() and truth.exists()):
        tmp, tmp_truth = path.with_suffix(".tmp"), truth.with_suffix(".truth-tmp")
        log(f"generating {rows:,} {kind} rows -> {path}")
        subprocess.run([*cli(), "generate", "--format", kind, "--rows", str(rows), "--out",
                        str(tmp), "--seed", str(SEED), "--truth", str(tmp_truth)],
                       check=True, stdout=subprocess.DEVNULL)
        os.replace(tmp, path)
        os.replace(tmp_truth, truth)
    return path, truth


def read_floats(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        return np.array(f.read().split(), dtype=np.float64)


# ----------------------------------------------------------------------------- streamfusion

def cli() -> list[str]:
    exe = Path(sys.executable).parent / "streamfusion"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("streamfusion")
    return [found] if found else [sys.executable, "-m", "streamfusion.cli"]


def run_sf(spec: Spec, model: list[str], chrono: bool, work: Path) -> dict[str, Any]:
    import json

    name = ("-".join(a.lstrip("-") for a in model) or "default") + (
        "-chrono" if chrono else "-random")
    report, preds = work / f"sf-{name}.json", work / f"sf-{name}.csv"
    cmd = [*cli(), "replay", "--file", str(spec.path), *spec.replay_flags, "--quiet",
           "--report", str(report), "--predictions", str(preds), *model]
    if chrono:
        cmd += ["--holdout-mode", "chrono"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        log(f"  FAILED ({proc.returncode}): {shlex.join(cmd)}: {tail}")
        return {"error": f"exit {proc.returncode}: {tail}"}
    with open(report) as f:
        out = json.load(f)
    from pyarrow import csv as pacsv

    table = pacsv.read_csv(preds).to_pydict()
    sets = np.array(table["set"])
    out["predictions"] = {k: (np.array(table["line"])[sets == k],
                              np.array(table["label"])[sets == k],
                              np.array(table["margin"], np.float64)[sets == k])
                          for k in ("progressive", "holdout")}
    preds.unlink()
    log(f"  {shlex.join(cmd[1:])}: {time.perf_counter() - t0:.1f}s, progressive AUC "
        f"{out['progressive']['auc']:.4f} ({out['progressive']['rows']:,} rows), "
        f"{out['holdout']['mode']} holdout AUC {out['holdout']['auc']:.4f} "
        f"({out['holdout']['rows']:,} rows)")
    return out


# ----------------------------------------------------------------------------- peers

def _vw_clean(text: str) -> str:
    return text.replace(" ", "_").replace("\t", "_").replace("|", "_").replace(":", "_")


def vw_lines(table: Table, numbers_as_categories: bool = False) -> list[str]:
    """Each row as a VW example: label -1/1, one namespace per column."""
    if len(table.columns) > len(NAMESPACES):
        raise ValueError(f"more than {len(NAMESPACES)} columns: not enough VW namespaces")
    per_col = []
    for ns, c in zip(NAMESPACES, table.columns, strict=False):
        name = _vw_clean(c.name)
        if c.kind == "num" and not numbers_as_categories:
            toks = [f"|{ns} {name}:{float(v):.10g}" for v in c.vocab]
        else:
            toks = [f"|{ns} {name}={_vw_clean(v)}" for v in c.vocab]
        arr = np.array(toks + [""], dtype=object)  # code -1 -> missing -> nothing
        per_col.append(arr[c.codes])
    labels = np.where(table.y > 0, "1", "-1").astype(object)
    return [" ".join(t) for t in zip(labels, *per_col, strict=True)]


def _write(path: Path, lines: list[str], rows: np.ndarray) -> None:
    with open(path, "w") as f:
        for i in rows:
            f.write(lines[i])
            f.write("\n")


def run_vw(table: Table, held: np.ndarray, start: int, work: Path,
           numbers: str) -> dict[str, dict]:
    """VW linear and ``::``; with numbers raw (``col:value``) and/or as categories."""
    out: dict[str, dict] = {}
    has_numbers = any(c.kind == "num" for c in table.columns)
    if numbers in ("raw", "both") or not has_numbers:
        out.update(_run_vw(table, held, start, work, False, ""))
    if numbers in ("cat", "both") and has_numbers:
        out.update(_run_vw(table, held, start, work, True, NUM_CAT))
    return out


def _run_vw(table: Table, held: np.ndarray, start: int, work: Path, as_cat: bool,
            suffix: str) -> dict[str, dict]:
    from vowpalwabbit import Workspace

    n = len(table)
    lines = vw_lines(table, as_cat)
    learn = np.flatnonzero(~held)
    files = {"train": work / "vw-train.txt", "held": work / "vw-held.txt",
             "head": work / "vw-head.txt", "tail": work / "vw-tail.txt"}
    _write(files["train"], lines, learn)
    _write(files["held"], lines, np.flatnonzero(held))
    _write(files["head"], lines, np.arange(start))
    _write(files["tail"], lines, np.arange(start, n))
    del lines
    y = table.y
    out: dict[str, dict] = {}
    for label, extra in (("VW linear" + suffix, ""), ("VW ::" + suffix, "--interactions ::")):
        res: dict[str, Any] = {}
        for mode, train, test, test_rows in (("random", "train", "held", held),
                                             ("chrono", "head", "tail", np.arange(n) >= start)):
            raw, model = work / "vw-raw.txt", work / "vw-model.bin"
            t0 = time.perf_counter()  # with -d, the constructor runs VW's driver over the file
            ws = Workspace(f"{VW_ARGS} {extra} -d {files[train]} -r {raw} -f {model}")
            ws.run_parser()
            seconds = time.perf_counter() - t0
            ws.finish()
            if mode == "random":
                z = read_floats(raw)
                if len(z) != len(learn):
                    raise RuntimeError(f"VW gave {len(z)} predictions for {len(learn)} rows")
                yl = y[learn]
                res["prog_auc"], res["prog_logloss"] = auc(yl, z), logloss(yl, sigmoid(z))
                res["prog_pred"] = z
                res["eps"] = len(learn) / seconds
            ws = Workspace(f"--quiet -t -i {model} -d {files[test]} -r {raw}")
            ws.run_parser()
            ws.finish()
            z = read_floats(raw)
            res[f"{mode}_auc"], res[f"{mode}_pred"] = auc(y[test_rows], z), z
        out[label] = res
        log(f"  {label}: progressive AUC {res['prog_auc']:.4f}, random holdout "
            f"{res['random_auc']:.4f}, chrono {res['chrono_auc']:.4f}, "
            f"{res['eps']:,.0f} events/s")
    for p in files.values():
        p.unlink()
    return out


def run_river(table: Table, held: np.ndarray, start: int, fm: bool,
              fm_chrono: bool) -> dict[str, dict]:
    """river models on one-hot dicts; a random-holdout and a chrono model of each, one loop."""
    from river import facto, linear_model, preprocessing

    n = len(table)
    nums = [(c.name, c.values.tolist()) for c in table.columns if c.kind == "num"]
    cats = []
    for c in table.columns:
        if c.kind == "cat":
            keys = [f"{c.name}={v}" for v in c.vocab] + [None]
            cats.append([keys[k] for k in c.codes.tolist()])
    cat_rows = list(zip(*cats, strict=True)) if cats else [()] * n
    y = table.y.astype(bool).tolist()

    def make(kind: str) -> dict[str, Any]:
        m = linear_model.LogisticRegression() if kind == "lr" else facto.FMClassifier(seed=SEED)
        return {"scaler": preprocessing.StandardScaler(), "model": m, "seconds": 0.0}

    def x_of(st: dict[str, Any], xn: dict[str, float], xc: dict[str, float]) -> dict:
        return {**st["scaler"].transform_one(xn), **xc} if xn else xc

    def predict(st: dict[str, Any], xn: dict[str, float], xc: dict[str, float]) -> float:
        return st["model"].predict_proba_one(x_of(st, xn, xc)).get(True, 0.5)

    def learn(st: dict[str, Any], xn: dict[str, float], xc: dict[str, float], yi: bool) -> None:
        if xn:
            st["scaler"].learn_one(xn)
        st["model"].learn_one(x_of(st, xn, xc), yi)

    kinds = ["lr"] + (["fm"] if fm else [])
    rnd = {k: make(k) for k in kinds}
    chr_ = {k: make(k) for k in kinds if k == "lr" or fm_chrono}
    prog = {k: [] for k in kinds}
    held_list = held.tolist()
    perf = time.perf_counter

    def features(i: int) -> tuple[dict[str, float], dict[str, float]]:
        xn = {}
        for name, vals in nums:
            v = vals[i]
            if v == v:  # not NaN
                xn[name] = v
        return xn, {k: 1.0 for k in cat_rows[i] if k is not None}

    for i in range(n):
        xn, xc = features(i)
        yi = y[i]
        if not held_list[i]:
            for k, st in rnd.items():
                t0 = perf()
                prog[k].append(predict(st, xn, xc))
                learn(st, xn, xc, yi)
                st["seconds"] += perf() - t0
        if i < start:
            for st in chr_.values():
                learn(st, xn, xc, yi)
    yv = table.y
    learn_rows = np.flatnonzero(~held)
    out: dict[str, dict] = {}
    for k in kinds:
        p = np.array(prog[k])
        res = {"prog_auc": auc(yv[learn_rows], p), "prog_logloss": logloss(yv[learn_rows], p),
               "eps": len(learn_rows) / rnd[k]["seconds"], "prog_pred": p}
        hr = np.flatnonzero(held)
        res["random_auc"] = auc(yv[hr], [predict(rnd[k], *features(i)) for i in hr])
        if k in chr_:
            tail = range(start, n)
            res["chrono_pred"] = np.array([predict(chr_[k], *features(i)) for i in tail])
            res["chrono_auc"] = auc(yv[start:], res["chrono_pred"])
        label = "river LR" if k == "lr" else "river FM"
        out[label] = res
        log(f"  {label}: progressive AUC {res['prog_auc']:.4f}, random holdout "
            f"{res['random_auc']:.4f}, chrono {res.get('chrono_auc', math.nan):.4f}, "
            f"{res['eps']:,.0f} events/s")
    return out


def number_like(c: Column) -> bool:
    """A categorical column whose every value reads as a number (pandas would type it so)."""
    if c.kind != "cat" or not c.vocab:
        return False
    try:
        for v in c.vocab:
            float(v)
    except ValueError:
        return False
    return True


def run_lightgbm(table: Table, start: int, label: str,
                 numbers_for_number_like: bool = False) -> dict[str, Any]:
    import lightgbm as lgb
    import pandas as pd

    frame = {}
    for c in table.columns:
        if c.kind == "num":
            frame[c.name] = c.values
        elif numbers_for_number_like and number_like(c):
            frame[c.name] = _as_number(c).values
        else:
            frame[c.name] = pd.Categorical.from_codes(c.codes, categories=pd.Index(c.vocab))
    X = pd.DataFrame(frame)
    y = table.y
    n = len(table)
    val = int(round(start * 0.9))
    t0 = time.perf_counter()
    train = lgb.Dataset(X.iloc[:val], y[:val], free_raw_data=False)
    valid = lgb.Dataset(X.iloc[val:start], y[val:start], reference=train)
    booster = lgb.train(LGB_PARAMS, train, LGB_ROUNDS, valid_sets=[valid],
                        callbacks=[lgb.early_stopping(LGB_PATIENCE, verbose=False)])
    p = booster.predict(X.iloc[start:], num_iteration=booster.best_iteration)
    seconds = time.perf_counter() - t0
    res = {"chrono_auc": auc(y[start:], p), "chrono_logloss": logloss(y[start:], p),
           "chrono_pred": p,
           "eps": n / seconds, "best_iteration": booster.best_iteration}
    log(f"  {label}: chrono AUC {res['chrono_auc']:.4f}, best iteration "
        f"{res['best_iteration']}, {seconds:.1f}s")
    return res


# ----------------------------------------------------------------------------- one data set

def fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{digits}f}"


def bench(spec: Spec, args: argparse.Namespace, work: Path) -> str:
    from streamfusion.evaluate import holdout_mask

    log(f"{spec.name}: reading {spec.path}")
    table = load(spec)
    n = len(table)
    held = holdout_mask(table.line, HOLDOUT, SEED)
    start = int(round(n * (1.0 - HOLDOUT)))
    chrono = np.arange(n) >= start
    n_num = sum(c.kind == "num" for c in table.columns)
    notes = list(table.notes)
    rows: dict[str, dict[str, Any]] = {}
    checked = 0  # reports whose row counts match this benchmark's split

    for label, model in SF_MODELS:
        rnd = run_sf(spec, model, False, work)
        chr_ = run_sf(spec, model, True, work)
        res: dict[str, Any] = {}
        for rep, mode, want in ((rnd, "random", held), (chr_, "chrono", chrono)):
            if "error" in rep:
                notes.append(f"{label}, {mode} holdout: replay failed ({rep['error']})")
                continue
            res[f"{mode}_auc"] = rep["holdout"]["auc"]
            if mode == "chrono":  # the progressive AUC over the first 90%, for the seed runs
                res["chrono_prog_auc"] = rep["progressive"]["auc"]
            got = (rep["rows"], rep["holdout"]["rows"], rep["progressive"]["rows"])
            expect = (n, int(want.sum()), n - int(want.sum()))
            if got != expect:
                notes.append(f"WARNING: {label} {mode}: report rows/holdout/progressive {got}, "
                             f"this benchmark's {expect}: not the same rows")
            else:
                checked += 1
            # our predictions pair with the peers' only on the very same rows
            key, part, rows_ = (("chrono_pred", "holdout", want) if mode == "chrono" else
                                ("prog_pred", "progressive", ~held))
            line_, y_, z_ = rep["predictions"][part]
            if np.array_equal(line_, table.line[rows_]) and np.array_equal(y_, table.y[rows_]):
                res[key] = z_
            else:
                notes.append(f"WARNING: {label} {mode}: the replay's {part} lines or labels "
                             "differ from this benchmark's rows: no interval")
            if mode == "random":
                res["prog_auc"] = rep["progressive"]["auc"]
                res["prog_logloss"] = rep["progressive"]["logloss"]
                res["eps"] = rep["events_per_second"]
        rows[label] = res
    # each model's chrono runs by seed: {label: {seed: (progressive AUC, chrono AUC)}}
    seeds = {label: {0: (rows[label]["chrono_prog_auc"], rows[label]["chrono_auc"])}
             for label, _ in SF_MODELS if "chrono_auc" in rows[label]}
    for seed in range(1, args.seeds):
        for label, model in SF_MODELS:
            if label not in seeds:  # its seed-0 run failed (noted above)
                continue
            rep = run_sf(spec, [*model, "--seed", str(seed)], True, work)
            if "error" in rep:
                notes.append(f"{label} --seed {seed}, chrono holdout: replay failed "
                             f"({rep['error']})")
            else:
                seeds[label][seed] = (rep["progressive"]["auc"], rep["holdout"]["auc"])

    log(f"{spec.name}: Vowpal Wabbit")
    rows.update(run_vw(table, held, start, work, args.vw_numbers))
    fm = n <= args.fm_max_rows
    log(f"{spec.name}: river (LR{' + FM' if fm else ''})")
    rows.update(run_river(table, held, start, fm, args.fm_chrono))
    if not fm:
        notes.append(f"river FM not run: {n:,} rows > --fm-max-rows {args.fm_max_rows:,}")
    elif not args.fm_chrono:
        notes.append("river FM chrono holdout not run (--no-fm-chrono)")
    log(f"{spec.name}: LightGBM batch")
    lgbm = run_lightgbm(table, start, "LightGBM batch")
    rows["LightGBM batch"] = lgbm
    notes.append(f"LightGBM batch: categoricals as pandas `category` dtype, "
                 f"{LGB_PARAMS['num_leaves']} leaves, learning rate "
                 f"{LGB_PARAMS['learning_rate']}, 1 thread (as the replay's default), "
                 "early-stopped on rows "
                 f"{int(round(start * 0.9)):,}-{start:,} (best iteration "
                 f"{lgbm['best_iteration']}); events/s = rows fitted and scored over Dataset + "
                 "train + predict time.")
    like = [c.name for c in table.columns if number_like(c)]
    if like:
        res = run_lightgbm(table, start, LGB_NUM, True)
        rows[LGB_NUM] = res
        notes.append(f"{LGB_NUM}: the same fit with {', '.join(like)} as numbers (as "
                     f"pandas would type them; best iteration {res['best_iteration']}).")

    order = [r for r in ROWS if r in rows or r not in OPTIONAL_ROWS]
    closed = ""
    if spec.truth is not None:
        t = read_floats(spec.truth)
        if len(t) == n:
            learn_rows = np.flatnonzero(~held)
            rows["truth (generator)"] = {
                "prog_auc": auc(table.y[learn_rows], t[learn_rows]),
                "prog_logloss": logloss(table.y[learn_rows], t[learn_rows]),
                "random_auc": auc(table.y[held], t[held]),
                "chrono_auc": auc(table.y[start:], t[start:])}
            order.append("truth (generator)")
            closed = gap_closed(rows, seeds, auc(table.y[:start], t[:start]))

    out = [f"## {spec.name}: `{spec.path}`", "",
           f"{n:,} rows, {len(table.columns)} feature columns ({n_num} numeric, "
           f"{len(table.columns) - n_num} categorical), click rate {table.y.mean():.4f}; "
           f"replay flags `{' '.join(spec.replay_flags)}`; random holdout {int(held.sum()):,} "
           f"rows, chrono holdout the last {n - start:,} rows (row, holdout and progressive "
           f"counts equal to the replay reports': {checked} of {2 * len(SF_MODELS)}).", "",
           "| model | " + " | ".join(COLUMNS) + " |",
           "|---|" + "---:|" * len(COLUMNS)]
    for label in order:
        r = rows.get(label, {})
        eps = r.get("eps")
        out.append(f"| {label} | {fmt(r.get('prog_auc'))} | {fmt(r.get('prog_logloss'))} | "
                   f"{fmt(r.get('random_auc'))} | {fmt(r.get('chrono_auc'))} | "
                   f"{'—' if eps is None else f'{eps:,.0f}'} |")
    out.append("")
    out.append(targets(rows, {"prog": table.y[~held], "chrono": table.y[start:]}))
    out.append("")
    if args.seeds > 1:
        out += [seed_spread(seeds), ""]
    if closed:
        out += [closed, ""]
    out += [f"- {x}" for x in notes]
    out.append("")
    return "\n".join(out)


def targets(rows: dict[str, dict[str, Any]], labels: dict[str, np.ndarray]) -> str:
    """The issue's targets for ``sf default``, each with a paired 95% interval of the AUC
    difference on the same rows (``labels``: the progressive and the chrono rows' labels)."""
    sf = rows.get("sf default", {})

    def cmp(kind: str, other: str, what: str) -> str:
        ours, theirs = sf.get(f"{kind}_auc"), rows.get(other, {}).get(f"{kind}_auc")
        if ours is None or theirs is None or not (math.isfinite(ours) and math.isfinite(theirs)):
            return f"{what}: n/a"
        verdict = "met" if ours >= theirs else "MISSED"
        a, b = sf.get(f"{kind}_pred"), rows[other].get(f"{kind}_pred")
        if a is not None and b is not None and len(a) == len(b) == len(labels[kind]):
            lo, hi = paired_interval(labels[kind], a, b)
            ci = f", 95% interval {lo:+.4f} to {hi:+.4f}"
        else:
            ci = ", no interval: predictions not on the same rows"
        return f"{what}: {ours:.4f} vs {theirs:.4f} {verdict} ({ours - theirs:+.4f}{ci})"

    def best(kind: str, prefixes: tuple[str, ...]) -> str | None:
        got = [(rows[k][f"{kind}_auc"], k) for k in rows if k.startswith(prefixes)
               and math.isfinite(rows[k].get(f"{kind}_auc", math.nan))]
        return max(got)[1] if got else None

    peer, fit = best("prog", ("VW", "river")), best("chrono", ("LightGBM",))
    parts = [cmp("prog", peer, f"progressive AUC >= best of VW/river ({peer})"),
             cmp("chrono", fit, f"chrono AUC >= best LightGBM batch ({fit})")]
    for other in ("sf gbdt", "sf deepfm"):
        parts.append(cmp("prog", other, f"progressive >= {other}"))
        parts.append(cmp("chrono", other, f"chrono >= {other}"))
    return ("**targets** (sf default; intervals: paired bootstrap of the AUC difference on the "
            f"same rows, {BOOTSTRAP_REPS} replicates; rows resampled independently, so for "
            "progressive predictions, which drift together, the intervals are if anything too "
            "narrow): " + "; ".join(parts) + ".")


def _spread(by_seed: dict[int, float]) -> str:
    """``seed: value`` pairs, then their mean and range (two or more)."""
    values = list(by_seed.values())
    out = ", ".join(f"{s}: {v:.4f}" for s, v in by_seed.items())
    if len(values) < 2:
        return out
    return out + f" (mean {np.mean(values):.4f}, max - min {max(values) - min(values):.4f})"


def seed_spread(seeds: dict[str, dict[int, tuple[float, float]]]) -> str:
    """Each model's chrono runs by seed (``{label: {seed: (progressive AUC over the first
    90%, chrono AUC)}}``), and the default's mean difference to the others over the seeds
    all of them ran."""
    parts = [f"{label} progressive {_spread({s: p for s, (p, _) in by.items()})}, chrono "
             f"{_spread({s: c for s, (_, c) in by.items()})}" for label, by in seeds.items()]
    ours = seeds.get("sf default", {})
    for label, by in seeds.items():
        common = sorted(set(ours) & set(by))
        if label == "sf default" or not common:
            continue
        dp = np.mean([ours[s][0] - by[s][0] for s in common])
        dc = np.mean([ours[s][1] - by[s][1] for s in common])
        parts.append(f"default minus {label.removeprefix('sf ')}, mean over seeds "
                     f"{', '.join(map(str, common))}: progressive {dp:+.4f}, chrono {dc:+.4f}")
    return ("**seeds** (chrono runs by `--seed`, the same rows: the model's chance only; "
            "progressive AUC over the first 90%): " + "; ".join(parts) + ".")


def gap_closed(rows: dict[str, dict[str, Any]], seeds: dict[str, dict[int, tuple[float, float]]],
               truth_first: float) -> str:
    """The share of the gap from trees alone to the generator's truth that the default
    closes, progressive: the table's (random-holdout) run, and each seed's chrono runs over
    the first 90% (trees alone: ``sf gbdt``'s under the same seed)."""
    def share(ours: float | None, trees: float | None, truth: float | None) -> str:
        if None in (ours, trees, truth) or truth == trees:
            return "n/a"
        return f"{100 * (ours - trees) / (truth - trees):.1f}%"

    sf, gb = rows.get("sf default", {}), rows.get("sf gbdt", {})
    table = share(sf.get("prog_auc"), gb.get("prog_auc"),
                  rows.get("truth (generator)", {}).get("prog_auc"))
    trees = seeds.get("sf gbdt", {})
    per_seed = ", ".join(
        f"seed {s}: {share(p, trees.get(s, (None,))[0], truth_first)}"
        for s, (p, _) in seeds.get("sf default", {}).items()) or "none ran"
    return (f"**gap closed** from trees alone to the truth, progressive AUC (target 50%): "
            f"the table's run {table}; chrono runs over the first 90% {per_seed}.")


# ----------------------------------------------------------------------------- main

def git_head() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, text=True, capture_output=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def specs(args: argparse.Namespace) -> tuple[list[Spec], list[str]]:
    data: Path = args.data
    real = [Spec("avazu", data / "avazu" / "train", "avazu", ["--format", "avazu"]),
            Spec("criteo", data / "criteo" / "sample.train", "criteo", ["--format", "criteo"]),
            Spec("adult", data / "adult" / "adult.csv", "csv",
                 ["--format", "csv", "--label", "label"], label="label")]
    names = [s.name for s in real] + ["gen-avazu", "gen-criteo"]
    only = set(args.only.split(",")) if args.only else set(names)
    unknown = only - set(names)
    if unknown:
        raise SystemExit(f"--only: unknown data set(s) {sorted(unknown)}; known: {names}")
    out, skipped = [], []
    for s in real:
        if s.name not in only:
            continue
        if s.path.is_file():
            out.append(s)
        else:
            skipped.append(f"{s.name}: {s.path} absent, skipped")
    if not args.skip_generated:
        for kind in ("avazu", "criteo"):
            if f"gen-{kind}" not in only:
                continue
            path, truth = generated(kind, args.gen_rows, args.cache, args.regenerate)
            flags = ["--format", kind]
            out.append(Spec(f"gen-{kind}", path, kind, flags, truth=truth))
    return out, skipped


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="real samples' folder")
    ap.add_argument("--only", help="comma-separated data sets: avazu,criteo,adult,gen-avazu,"
                    "gen-criteo")
    ap.add_argument("--skip-generated", action="store_true", help="real samples only")
    ap.add_argument("--gen-rows", type=int, default=1_000_000, help="rows of generated streams")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    ap.add_argument("--cache", type=Path, default=cache / "streamfusion" / "bench" / "accuracy",
                    help="where generated streams are cached")
    ap.add_argument("--regenerate", action="store_true", help="regenerate cached streams")
    ap.add_argument("--markdown", type=Path, help="also write the Markdown here")
    ap.add_argument("--vw-numbers", choices=["raw", "cat", "both"], default="both",
                    help="VW's numeric columns: raw `col:value`, as categories `col=value`, or "
                    "both (extra rows on data with numbers)")
    ap.add_argument("--fm-max-rows", type=int, default=50_000,
                    help="river FMClassifier only on files up to this many rows")
    ap.add_argument("--fm-chrono", action=argparse.BooleanOptionalAction, default=True,
                    help="also train river FM a second time for its chrono holdout")
    ap.add_argument("--seeds", type=int, default=3,
                    help="each sf model's chrono run under --seed 0..N-1 (1: seed 0 only)")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")

    import lightgbm
    import river
    import vowpalwabbit

    head = ["# streamfusion accuracy benchmark (issue 11)", "",
            f"- command: `{shlex.join(['python', 'benchmarks/bench_accuracy.py', *sys.argv[1:]])}`"
            if argv is None else f"- command: `bench_accuracy.main({argv!r})`",
            f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- commit: {git_head()}",
            f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}; vowpalwabbit {vowpalwabbit.__version__}, river "
            f"{river.__version__}, lightgbm {lightgbm.__version__}",
            f"- VW: `{VW_ARGS}` (+ `--interactions ::`), one namespace per column, "
            "categoricals `col=value`, numbers `col:value` (rows marked 'numbers as "
            "categories': `col=value`); river: "
            "defaults, numbers through StandardScaler; progressive = each row scored before "
            "it is learned, over the rows the replay learns from; random holdout = the "
            "replay's held-out rows, final model; chrono = the last 10%, trained on the first "
            "90% in file order (LightGBM: batch fit, early-stopped).", ""]
    parts = ["\n".join(head)]
    print(parts[0], flush=True)
    todo, skipped = specs(args)
    if skipped:
        parts.append("\n".join(f"- {s}" for s in skipped) + "\n")
        print(parts[-1], flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as tmp:
        for spec in todo:
            t1 = time.perf_counter()
            work = Path(tmp) / spec.name
            work.mkdir()
            parts.append(bench(spec, args, work))
            parts[-1] += f"\n({spec.name}: {time.perf_counter() - t1:.0f} s)\n"
            print(parts[-1], flush=True)
            if args.markdown:
                args.markdown.write_text("\n".join(parts))
    log(f"done in {time.perf_counter() - t0:.0f} s")
    if args.markdown:
        args.markdown.write_text("\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
