"""Parse + hash speed of streamfusion's C reader beside pyarrow's CSV readers, same file, same run.

The file is Avazu train.csv format. With /work/shared/data present, its real rows are
replicated with fresh ids and hours (ten days, chronological) up to --rows; otherwise rows are
synthesised with numpy in the same format. The file lives in a temporary directory.

    python benchmarks/bench_parse.py --rows 1000000
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "avazu" / "train"
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def write_avazu(path: Path, rows: int, seed: int = 0) -> None:
    """An Avazu-format csv of ``rows`` rows: real sample rows with fresh ids and hours."""
    rng = np.random.default_rng(seed)
    if SAMPLE.is_file():
        lines = SAMPLE.read_bytes().decode().splitlines()
        header, body = lines[0], lines[1:]
        tails = [ln.split(",", 3)[3] for ln in body]
        clicks = [ln.split(",", 2)[1] for ln in body]
    else:  # no real data: random codes in the same shape
        from streamfusion.data.schema import AVAZU_COLUMNS

        header = ",".join(AVAZU_COLUMNS)
        tails, clicks = [], []
        for _ in range(10_000):
            hexes = [f"{rng.integers(1 << 32):08x}" for _ in range(9)]
            ints = [str(x) for x in rng.integers(0, 3000, 8)]
            tails.append(",".join(["1005", "0", *hexes, "1", "0", *ints]))
            clicks.append(str(int(rng.random() < 0.17)))
    pick = rng.integers(0, len(tails), rows)
    ids = rng.integers(0, 2**63, rows, dtype=np.int64)
    # ten days 2014-10-21 .. 2014-10-30, 24 hours each, rows spread evenly in order
    slot = np.arange(rows) * 240 // max(rows, 1)
    hours = (14102100 + (slot // 24) * 100 + slot % 24).tolist()
    with open(path, "w") as f:
        f.write(header + "\n")
        block = []
        for i in range(rows):
            k = pick[i]
            block.append(f"{ids[i]},{clicks[k]},{hours[i]},{tails[k]}\n")
            if len(block) == 100_000:
                f.writelines(block)
                block = []
        f.writelines(block)


def timed(fn):
    """Run ``fn() -> rows``; return (rows, wall seconds, process CPU seconds)."""
    w0, c0 = time.perf_counter(), time.process_time()
    n = fn()
    return n, time.perf_counter() - w0, time.process_time() - c0


def bench_ours(path: Path, batch_rows: int) -> int:
    from streamfusion.data import open_source

    n = 0
    with open_source(path, bits=20, seed=0) as src:
        while (b := src.next_batch(batch_rows)) is not None:
            n += len(b)
    return n


def bench_arrow_streaming(path: Path) -> int:
    import pyarrow.csv as pacsv

    n = 0
    opts = pacsv.ReadOptions(use_threads=False, block_size=4 << 20)
    with pacsv.open_csv(path, read_options=opts) as reader:
        for rb in reader:
            n += rb.num_rows
    return n


def bench_arrow_threaded(path: Path) -> int:
    import pyarrow.csv as pacsv

    return pacsv.read_csv(path, read_options=pacsv.ReadOptions(use_threads=True)).num_rows


def bench_raw(path: Path, rows: int) -> int:
    with open(path, "rb") as f:
        while f.read(4 << 20):
            pass
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-rows", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs")
    ap.add_argument("--gzip", action="store_true", help="also time the gzip-compressed file")
    args = ap.parse_args()
    os.environ.setdefault("STREAMFUSION_SKIP_CHECK", "1")
    tmp = Path(tempfile.mkdtemp(prefix="sf_bench_parse_"))
    try:
        path = tmp / "train.csv"
        write_avazu(path, args.rows)
        mb = path.stat().st_size / 1e6
        cases = [
            ("raw read (4 MiB chunks, page cache)", lambda: bench_raw(path, args.rows)),
            ("streamfusion C parse+hash", lambda: bench_ours(path, args.batch_rows)),
            ("pyarrow open_csv, streaming 1 thread", lambda: bench_arrow_streaming(path)),
            ("pyarrow read_csv, threaded", lambda: bench_arrow_threaded(path)),
        ]
        if args.gzip:
            gz = tmp / "train.csv.gz"
            with open(path, "rb") as fi, gzip.open(gz, "wb", compresslevel=6) as fo:
                shutil.copyfileobj(fi, fo)
            cases.insert(2, ("streamfusion C parse+hash, .gz",
                             lambda: bench_ours(gz, args.batch_rows)))
        print(f"Avazu-format file: {args.rows:,} rows, {mb:.1f} MB; best of {args.repeat}; "
              f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
        print(f"| {'reader':40s} | {'rows/s (wall)':>13s} | {'MB/s (wall)':>11s} | "
              f"{'rows/s per CPU-second':>21s} |")
        print(f"|{'-' * 42}|{'-' * 14}:|{'-' * 12}:|{'-' * 22}:|")
        for name, fn in cases:
            runs = [timed(fn) for _ in range(args.repeat)]
            assert all(r[0] == args.rows for r in runs), (name, runs[0][0])
            wall = min(r[1] for r in runs)
            cpu = min(r[2] for r in runs)
            print(f"| {name:40s} | {args.rows / wall:13,.0f} | {mb / wall:11.0f} | "
                  f"{args.rows / max(cpu, 1e-9):21,.0f} |")
    finally:
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
