"""Tree margins: streamfusion's compiled evaluator vs LightGBM's own predict.

    python benchmarks/bench_trees.py [--rows 200000] [--trees 100] [--leaves 63] [--threads 2]

Fits LightGBM on tree features of a generated Avazu-format stream (integer columns, hour of
day, weekday, frequency counts of the hex id columns), then times raw-margin prediction on the
same rows, in batches, and one row at a time: streamfusion's kernels (the AVX-512 and AVX2 ones
where the CPU has them, and the scalar one they fall back to) and LightGBM's predict. Prints
rows/s, us per row, and the largest absolute difference of each kernel to LightGBM (the oracle).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import lightgbm as lgb
import numpy as np
import pyarrow.csv as pacsv
from streamfusion._trees import HAVE_AVX2, HAVE_AVX512, TreeEnsemble

from streamfusion.data.generate import generate


def tree_features(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in for the real encoder: numeric columns, hour of day/weekday, id counts."""
    table = pacsv.read_csv(path)
    cols = []
    for name in table.column_names:
        if name in ("id", "click"):
            continue
        col = table.column(name)
        if name == "hour":
            h = col.to_numpy().astype(np.int64)
            cols += [h % 100, (h // 100) % 7]
        elif col.type.equals("string") or str(col.type) == "string":
            _, inv, cnt = np.unique(col.to_numpy(zero_copy_only=False).astype(str),
                                    return_inverse=True, return_counts=True)
            cols.append(cnt[inv])
        else:
            cols.append(col.to_numpy())
    X = np.stack(cols, 1).astype(np.float32)
    return X, table.column("click").to_numpy().astype(np.float64)


def rate(fn, rows: int, repeat: int = 3, clock=time.perf_counter) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return rows / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--trees", type=int, default=100)
    ap.add_argument("--leaves", type=int, default=63)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=10_000, help="rows per predict call")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "avazu.csv")
        generate(path, "avazu", rows=args.rows, seed=0)
        X, y = tree_features(path)
    params = dict(objective="binary", num_leaves=args.leaves, learning_rate=0.1,
                  min_data_in_leaf=100, feature_fraction=0.8, seed=0, verbose=-1,
                  num_threads=args.threads, deterministic=True)
    booster = lgb.train(params, lgb.Dataset(X, y), args.trees)
    ens = TreeEnsemble.from_booster(booster)
    kernels = (["avx512"] if HAVE_AVX512 else []) + (["avx2"] if HAVE_AVX2 else []) + ["scalar"]
    ref = booster.predict(X, raw_score=True, num_threads=args.threads)
    diffs = []
    for kernel in kernels:
        ens.kernel = kernel
        diff = np.abs(ens.predict_margin(X, threads=args.threads) - ref).max()
        diffs.append(f"{kernel} {diff:.3g}")
    print(f"{ens.n_trees} trees x <= {args.leaves} leaves, depth max {ens.depth.max()} "
          f"mean {ens.depth.mean():.1f}; {len(X):,} rows x {X.shape[1]} features; "
          f"max |ours - LightGBM|: {', '.join(diffs)}")
    print(f"load average at the start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    def ours(kernel, th, rows):
        def run():
            ens.kernel = kernel
            for b in rows:
                ens.predict_margin(b, threads=th)
        return run

    batches = [X[i:i + args.batch] for i in range(0, len(X), args.batch)]
    results = []
    for kernel in kernels:
        for th in sorted({1, args.threads}):
            results.append((f"streamfusion {kernel}, {th} thread(s), batches of {args.batch}",
                            rate(ours(kernel, th, batches), len(X))))
    results.append((f"LightGBM predict(raw_score), {args.threads} threads, batches of "
                    f"{args.batch}", rate(lambda: [booster.predict(
                        b, raw_score=True, num_threads=args.threads) for b in batches], len(X))))
    # CPU time of one thread: robust to other processes sharing the machine
    for kernel in kernels:
        results.append((f"streamfusion {kernel}, 1 thread, rows per CPU-second",
                        rate(ours(kernel, 1, batches), len(X), clock=time.process_time)))
    results.append(("LightGBM predict, 1 thread, rows per CPU-second",
                    rate(lambda: [booster.predict(b, raw_score=True, num_threads=1)
                                  for b in batches], len(X), clock=time.process_time)))
    one = [X[i:i + 1] for i in range(2000)]
    for kernel in kernels:  # a lone row runs the scalar kernel either way (SIMD_MIN_ROWS)
        results.append((f"streamfusion {kernel}, one row per call",
                        rate(ours(kernel, 1, one), len(one))))
    results.append(("LightGBM predict, one row per call",
                    rate(lambda: [booster.predict(r, raw_score=True, num_threads=1)
                                  for r in one], len(one), repeat=1)))
    load = os.getloadavg()[0]
    print(f"load average at the end: {load:.1f} on {os.cpu_count()} CPUs")
    print(f"| {'evaluator':<62} | {'rows/s':>12} | {'us/row':>7} |")
    print(f"|{'-' * 64}|{'-' * 14}|{'-' * 9}|")
    for name, r in results:
        print(f"| {name:<62} | {r:>12,.0f} | {1e6 / r:>7.3f} |")


if __name__ == "__main__":
    main()
