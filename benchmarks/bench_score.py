"""Scoring a log with a model file: `streamfusion score` vs LightGBM's own Booster.predict.

    python benchmarks/bench_score.py [--model model.sfm] [--file gen.csv] [--rows 1000000]

Without ``--model`` it trains the default model first (``streamfusion replay --rows N
--save-model``, about a minute per 500k rows); without ``--file`` it scores the Avazu-format
generated stream of N rows (``streamfusion generate --format avazu --rows N``, seed 0: the
replay's default stream, cached). Then, on the same rows:

- ``streamfusion score`` end to end: read, C tokenizer with the frozen count tables, every
  stage (trees + DeepFM residual), CSV out; and its parts on rows already in memory (encode
  only, trees only, the whole chain);
- LightGBM ``Booster.predict(raw_score=True)`` of the model's own trees on the same encoded
  tree features (encoding not timed: the peer is given its input), 1 thread and all threads.

Prints rows/s (wall; best of ``--repeat``) and rows per CPU-second as a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from streamfusion.data import open_source
from streamfusion.features import Batch
from streamfusion.model_file import load_model
from streamfusion.replay import default_stream
from streamfusion.score import SCORE_ROWS, score_file

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streamfusion" / "bench"


def timed(fn, repeat: int) -> tuple[float, float]:
    """Best wall and CPU seconds of ``repeat`` calls."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - t)
        cpu = min(cpu, time.process_time() - c)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model file (default: train the default model)")
    ap.add_argument("--file", type=Path, help="log to score (default: generated Avazu rows)")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="streamfusion score --threads (its default: the CPUs)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    CACHE.mkdir(parents=True, exist_ok=True)
    path = args.file or default_stream(args.rows, 0)
    model_path = args.model or CACHE / f"score-default-{args.rows}.sfm"
    if not model_path.exists():
        print(f"training the default model: streamfusion replay --rows {args.rows} "
              f"--save-model {model_path}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "streamfusion.cli", "replay", "--rows",
                        str(args.rows), "--quiet", "--save-model", str(model_path)], check=True)
    saved = load_model(model_path, threads=args.threads)
    rows: list[tuple[str, float, float, int]] = []

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "preds.csv"
        n = 0

        def end_to_end() -> None:
            nonlocal n
            n = score_file(saved, path, out)

        wall, cpu = timed(end_to_end, args.repeat)
        rows.append((f"streamfusion score (read, encode, trees + {saved.model.chain.kinds[-1]}"
                     f", CSV out), {args.threads} thread(s)", wall, cpu, n))

    with open_source(path, encoder=saved.encoder) as src:
        batches = list(iter(lambda: src.next_batch(SCORE_ROWS), None))
    batch = Batch.concat(batches)

    def encode() -> None:
        with open_source(path, encoder=saved.encoder) as src:
            while src.next_batch(SCORE_ROWS) is not None:
                pass

    rows.append(("  part: read + encode (frozen counts)", *timed(encode, args.repeat), n))
    rows.append(("  part: whole chain on encoded rows",
                 *timed(lambda: [saved.model.score(b) for b in batches], args.repeat), n))
    tree_stages = saved.model.chain.tree_stages
    if tree_stages:
        stage = tree_stages[0]
        rows.append(("  part: streamfusion trees on encoded rows",
                     *timed(lambda: [stage.margin(b) for b in batches], args.repeat), n))
        booster = stage.booster
        X = batch.dense
        for threads in (1, os.cpu_count() or 1):
            rows.append((f"LightGBM Booster.predict(raw_score), same trees and rows, {threads} "
                         "thread(s)", *timed(lambda t=threads: booster.predict(
                             X, raw_score=True, num_threads=t), args.repeat), n))
        ours = stage.margin(batch)
        ref = booster.predict(X, raw_score=True) + stage.offset
        print(f"trees: {booster.num_trees()} trees, max |ours - LightGBM| = "
              f"{np.abs(ours - ref).max():.2e}", file=sys.stderr)

    print(f"- command: `python benchmarks/bench_score.py {' '.join(sys.argv[1:])}`".rstrip())
    print(f"- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"- commit: {commit}")
    print(f"- machine: {platform.platform()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"- log: {path} ({n:,} rows); model: {model_path} "
          f"({model_path.stat().st_size / 1e6:.1f} MB, {'+'.join(saved.model.chain.kinds)})")
    print()
    print("| what | rows/s (wall) | rows per CPU-second |")
    print("|---|---:|---:|")
    for name, wall, cpu, count in rows:
        print(f"| {name} | {count / wall:,.0f} | {count / cpu:,.0f} |")


if __name__ == "__main__":
    main()
