"""Scale of ``streamfusion reproduce``: memory and time on a generated N-row file.

    python benchmarks/bench_reproduce.py --rows 10000000 --format avazu \
        [--file PATH] [--models GBDT,GBDTRes+NN] [--epochs 1] [--keep]

Measures, in one process: streaming the file into compact encoded arrays (time, bytes per
row, peak RSS), then fitting the chosen Table 2 models (time, peak RSS). Beside it, the peer
figure: pyarrow's ``read_csv`` of the first 1M rows (the in-memory table a DataFrame-based
pipeline starts from), in bytes per row. Prints a linear extrapolation to the full training
file of the same format (Avazu 40,428,967 rows, Criteo 45,840,617 rows).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time

AVAZU_ROWS = 40_428_967
CRITEO_ROWS = 45_840_617
PEER_ROWS = 1_000_000


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cpu_s() -> float:
    """CPU seconds of this process (all threads): stable when the machine is shared."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def pyarrow_bytes_per_row(path: str, fmt: str) -> float:
    """Bytes per row of a pyarrow Table read from the first PEER_ROWS lines (strings kept)."""
    import io
    import itertools

    import pyarrow.csv as pacsv

    with open(path, "rb") as f:
        head = b"".join(itertools.islice(f, PEER_ROWS + 1))
    opts = {}
    if fmt == "criteo":
        names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
        opts = dict(read_options=pacsv.ReadOptions(column_names=names),
                    parse_options=pacsv.ParseOptions(delimiter="\t"))
    table = pacsv.read_csv(io.BytesIO(head), **opts)
    return table.nbytes / table.num_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--format", choices=("avazu", "criteo"), default="avazu")
    ap.add_argument("--file", default=None, help="use this file instead of generating one")
    ap.add_argument("--models", default="GBDT,GBDTRes+NN")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the generated file")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from dataclasses import replace

    from streamfusion.batch import Experiment, FitOptions, default_config, load_log

    tmp = tempfile.mkdtemp(prefix="sf-bench-reproduce-")
    path = args.file
    gen_s = 0.0
    if path is None:
        from streamfusion.data.generate import generate

        path = os.path.join(tmp, f"gen.{args.format}")
        t = time.perf_counter()
        generate(path, format=args.format, rows=args.rows, seed=0)
        gen_s = time.perf_counter() - t
    out: dict = {"file": path, "rows_requested": args.rows, "generate_s": round(gen_s, 1),
                 "file_gb": round(os.path.getsize(path) / 2**30, 3)}
    rss0 = peak_rss_gb()
    t, c = time.perf_counter(), cpu_s()
    data = load_log(path, bits=20, seed=0)
    load_s = time.perf_counter() - t
    load_cpu = cpu_s() - c
    n = len(data)
    out.update(rows=n, load_s=round(load_s, 1), load_cpu_s=round(load_cpu, 1),
               load_rows_per_s=round(n / load_s),
               encoded_gb=round(data.nbytes() / 2**30, 3),
               encoded_bytes_per_row=round(data.nbytes() / n, 1), table_rows=data.table_rows,
               peak_rss_after_load_gb=round(peak_rss_gb(), 2), rss_before_load_gb=round(rss0, 2))
    print(json.dumps(out), flush=True)

    cfg, opts = default_config(False, 0)
    cfg = replace(cfg, threads=args.threads, tree_threads=args.threads)
    opts = FitOptions(epochs=args.epochs, patience=1, batch_size=opts.batch_size, seed=0)
    exp = Experiment(data, cfg, opts)
    fits = []
    for name in [m for m in args.models.split(",") if m]:
        t, c = time.perf_counter(), cpu_s()
        row = exp.row(name)
        fits.append({"model": name, "auc": round(row["auc"], 4),
                     "logloss": round(row["logloss"], 4), "seconds": row["seconds"],
                     "kept": row["kept"],
                     "wall_s": round(time.perf_counter() - t, 1),
                     "cpu_s": round(cpu_s() - c, 1),
                     "peak_rss_gb": round(peak_rss_gb(), 2)})
        print(json.dumps(fits[-1]), flush=True)
    exp.close()
    out["fits"] = fits
    out["peak_rss_gb"] = round(peak_rss_gb(), 2)
    out["peer_pyarrow_bytes_per_row"] = round(pyarrow_bytes_per_row(path, args.format), 1)
    fixed = out["peak_rss_gb"] - out["encoded_gb"]
    # extrapolate to the full file of the same format only: bytes per row differ by format
    fmt = data.format if data.format in ("avazu", "criteo") else args.format
    targets = {"avazu": ("avazu_40M", AVAZU_ROWS), "criteo": ("criteo_45M", CRITEO_ROWS)}
    for name, rows in (targets[fmt],):
        scale = rows / n
        out[f"extrapolated_{name}"] = {
            "encoded_gb": round(out["encoded_gb"] * scale, 1),
            "load_s": round(load_s * scale),
            "fit_s": {f["model"]: round(f["seconds"] * scale) for f in fits},
            "peak_gb_upper_bound": round(out["peak_rss_gb"] * scale, 1),
            "peak_gb_encoded_plus_fixed": round(out["encoded_gb"] * scale + fixed, 1),
        }
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    if args.file is None and not args.keep:
        os.remove(path)


if __name__ == "__main__":
    main()
