"""Residual learner training throughput beside PyTorch, river and Vowpal Wabbit.

    python benchmarks/bench_kernel.py [--quick] [--json PATH] [--threads 2]

Every learner trains on the same hashed mini-batches: 22 fields, batch 1024, k = 8, indices in
a 2**20-row table (per-field Zipf(1.3) values over cardinalities from 4 to 2M, hashed).
Measured in one run:

- ours: FM, DeepFM with MLP 400-400-400 and with 128-128 (the replay default's MLP), 1 and N
  threads; plain DeepFM, as the peers' (the replay also weights each pair of fields and each
  field's first-order term);
- PyTorch (CPU, torch.set_num_threads(N)): the same models, nn.Embedding(sparse=True) with
  SparseAdam for the table, Adam for bias and MLP, BCE-with-logits on base + margin;
- river FMClassifier.learn_one (one-hot dict per event; a small number of events: it is slow);
- Vowpal Wabbit --lrq aa8 (logistic loss, -b 20), examples learned one by one from Python.

Also a quality check: a stream with a planted FM structure, one pass of our FM and the PyTorch
FM from the same initial parameters with the same Adam settings, AUC on the held-out last 10%.
And the DeepFM 400-400-400 step's achieved GFLOP/s against the machine's peak (theoretical
AVX2-FMA float32, and a large NumPy float32 matmul as the practical ceiling).

Peers that are not installed (`pip install -e .[bench]`) are skipped with a printed note.
The machine may be shared: each figure is the best of several repeats, and the events per
CPU-second of this process are printed beside the wall-clock rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from types import SimpleNamespace

import numpy as np

from streamfusion.evaluate import auc
from streamfusion.stages.residual import ResidualLearner

FIELDS, BITS, K, BATCH = 22, 20, 8, 1024
ROWS = 1 << BITS
ZIPF_A = 1.3  # heavy-tailed category frequencies, like click-log ids


def make_indices(rng: np.random.Generator, n: int) -> np.ndarray:
    """Hashed indices int32 [n, FIELDS]: per-field Zipf values, multiplicative hash."""
    card = np.geomspace(4, 2e6, FIELDS).astype(np.int64)
    cols = []
    for f in range(FIELDS):
        v = np.minimum(rng.zipf(ZIPF_A, n), card[f]).astype(np.uint64)
        h = (v * np.uint64(2654435761) + np.uint64(f * 0x9E3779B1)) % np.uint64(ROWS)
        cols.append(h.astype(np.int32))
    return np.ascontiguousarray(np.stack(cols, axis=1))


def make_batches(seed: int, count: int) -> list[SimpleNamespace]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        out.append(SimpleNamespace(
            indices=make_indices(rng, BATCH), values=None,
            base=rng.normal(-1.6, 0.5, BATCH).astype(np.float32),
            y=(rng.random(BATCH) < 0.17).astype(np.float32)))
    return out


def timed(run_once, events: int, repeats: int) -> dict:
    """Best-of-repeats wall rate, and the events per CPU-second of that same repeat."""
    best = None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        run_once()
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        if best is None or wall < best[0]:
            best = (wall, cpu)
    wall, cpu = best
    return {"events_per_second": events / wall, "events_per_cpu_second": events / cpu,
            "seconds": wall, "events": events}


# -- ours -------------------------------------------------------------------------------------
def bench_ours(model: str, hidden: tuple, threads: int, batches, repeats: int) -> dict:
    m = ResidualLearner(model, n_fields=FIELDS, bits=BITS, k=K, hidden=hidden, lr=1e-3,
                        threads=threads, seed=0)
    for b in batches[:3]:  # warm-up: page in the table, size the scratch buffers
        m.partial_fit(b, b.base, b.y)

    def run():
        for b in batches:
            m.partial_fit(b, b.base, b.y)

    return timed(run, len(batches) * BATCH, repeats)


# -- PyTorch ----------------------------------------------------------------------------------
def torch_model(hidden: tuple, init: ResidualLearner | None = None):
    import torch
    from torch import nn

    class FM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(ROWS, K, sparse=True)
            self.lin = nn.Embedding(ROWS, 1, sparse=True)
            self.bias = nn.Parameter(torch.zeros(1))
            nn.init.normal_(self.emb.weight, 0.0, 0.01)
            nn.init.zeros_(self.lin.weight)
            layers: list = []
            d = FIELDS * K
            for h in hidden:
                layers += [nn.Linear(d, h), nn.ReLU()]
                d = h
            self.mlp = nn.Sequential(*layers, nn.Linear(d, 1)) if hidden else None

        def forward(self, idx):
            e = self.emb(idx)                                   # [n, F, k]
            s = e.sum(1)
            z = self.bias + self.lin(idx).sum((1, 2)) + 0.5 * (s * s - (e * e).sum(1)).sum(1)
            if self.mlp is not None:
                z = z + self.mlp(e.reshape(idx.shape[0], -1)).squeeze(1)
            return z

    net = FM()
    if init is not None:  # start from our exact initial parameters
        with torch.no_grad():
            net.emb.weight.copy_(torch.from_numpy(init.table[:, :K]))
            net.lin.weight.copy_(torch.from_numpy(init.table[:, K:]))
            net.bias.fill_(float(init.dense[0]))
    return net


def torch_trainer(hidden: tuple, lr: float, init: ResidualLearner | None = None):
    import torch
    import torch.nn.functional as F

    net = torch_model(hidden, init)
    sparse = [net.emb.weight, net.lin.weight]
    dense = [p for name, p in net.named_parameters() if not name.startswith(("emb", "lin"))]
    opt_s = torch.optim.SparseAdam(sparse, lr=lr)
    opt_d = torch.optim.Adam(dense, lr=lr)

    def step(b):
        idx = torch.from_numpy(b.indices.astype(np.int64))
        z = net(idx) + torch.from_numpy(b.base)
        loss = F.binary_cross_entropy_with_logits(z, torch.from_numpy(b.y))
        opt_s.zero_grad()
        opt_d.zero_grad()
        loss.backward()
        opt_s.step()
        opt_d.step()

    def score(b):
        with torch.no_grad():
            return net(torch.from_numpy(b.indices.astype(np.int64))).numpy()

    return step, score


def bench_torch(hidden: tuple, threads: int, batches, repeats: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    step, _ = torch_trainer(hidden, 1e-3)
    for b in batches[:3]:
        step(b)

    def run():
        for b in batches:
            step(b)

    return timed(run, len(batches) * BATCH, repeats)


# -- river and Vowpal Wabbit -------------------------------------------------------------------
def bench_river(batches, events: int) -> dict:
    from river import facto

    model = facto.FMClassifier(n_factors=K, seed=0)
    rows = [({f"{f}_{v}": 1.0 for f, v in enumerate(b.indices[i])}, bool(b.y[i]))
            for b in batches for i in range(BATCH)][:events]

    def run():
        for x, y in rows:
            model.learn_one(x, y)

    return timed(run, len(rows), 1)


def bench_vw(batches, events: int) -> dict:
    import vowpalwabbit

    vw = vowpalwabbit.Workspace(f"--loss_function logistic --lrq aa{K} -b {BITS} --quiet")
    lines = [f"{1 if b.y[i] else -1} |a " + " ".join(f"{f}_{v}" for f, v in
                                                      enumerate(b.indices[i]))
             for b in batches for i in range(BATCH)][:events]

    def run():
        for line in lines:
            vw.learn(line)

    out = timed(run, len(lines), 1)
    vw.finish()
    return out


# -- quality ----------------------------------------------------------------------------------


def planted_stream(seed: int, n_batches: int) -> list[SimpleNamespace]:
    """Labels from a true FM over the hashed rows (first order + rank-4 pairwise)."""
    rng = np.random.default_rng(seed)
    w_true = rng.normal(0, 0.2, ROWS).astype(np.float32)
    u_true = rng.normal(0, 0.18, (ROWS, 4)).astype(np.float32)
    out = []
    for _ in range(n_batches):
        idx = make_indices(rng, BATCH)
        e = u_true[idx]
        s = e.sum(1)
        z = -1.5 + w_true[idx].sum(1) + 0.5 * (s * s - (e * e).sum(1)).sum(1)
        y = (rng.random(BATCH) < 1 / (1 + np.exp(-z))).astype(np.float32)
        out.append(SimpleNamespace(indices=idx, values=None, y=y,
                                   base=np.zeros(BATCH, np.float32)))
    return out


def quality(n_batches: int, lr: float) -> dict:
    stream = planted_stream(7, n_batches)
    cut = int(0.9 * n_batches)
    train, hold = stream[:cut], stream[cut:]
    y = np.concatenate([b.y for b in hold])
    ours = ResidualLearner("fm", n_fields=FIELDS, bits=BITS, k=K, lr=lr, seed=0, threads=1)
    out = {"train_events": cut * BATCH, "holdout_events": len(y), "lr": lr,
           "init": "same parameters (embeddings N(0, 0.01), first order 0)"}
    try:
        step, score = torch_trainer((), lr, init=ours)
        for b in train:
            step(b)
        out["torch_auc"] = auc(np.concatenate([score(b) for b in hold]), y)
    except ImportError:
        out["torch_auc"] = None
    for b in train:
        ours.partial_fit(b, b.base, b.y)
    out["ours_auc"] = auc(np.concatenate([ours.margin(b) for b in hold]), y)
    return out


# -- FLOP/s -----------------------------------------------------------------------------------
def mlp_step_flops(hidden: tuple) -> float:
    """FLOPs of one example's MLP training step: forward, input gradient, weight gradient."""
    dims = [FIELDS * K, *hidden, 1]
    macs = sum(a * b for a, b in zip(dims[:-1], dims[1:], strict=True))
    return 3 * 2.0 * macs


def peak_flops(threads: int) -> dict:
    mhz = 0.0
    try:
        with open("/proc/cpuinfo") as fh:
            mhz = max(float(line.split(":")[1]) for line in fh if line.startswith("cpu MHz"))
    except (OSError, ValueError):
        pass
    n = 3072
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a
    best = min(_timeit(lambda: a @ a) for _ in range(3))
    return {"theoretical_gflops": threads * mhz / 1e3 * 32, "cpu_mhz": mhz,
            "theoretical_gflops_1core": mhz / 1e3 * 32,
            "numpy_matmul_gflops": 2 * n**3 / best / 1e9}


def _timeit(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# -- main -------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer batches and events")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    q = args.quick
    th = args.threads
    reps = 2 if q else 3
    res: dict = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                             "load_average": os.getloadavg()}, "threads": th,
                 "batch": BATCH, "fields": FIELDS, "k": K, "bits": BITS}
    print(f"load average at start: {os.getloadavg()}")
    fm_b = make_batches(1, 60 if q else 300)
    deep_b = fm_b[: 8 if q else 30]
    mid_b = fm_b[: 30 if q else 120]
    ours = {}
    for label, model, hidden, batches in (("fm", "fm", (), fm_b),
                                          ("deepfm_400", "deepfm", (400, 400, 400), deep_b),
                                          ("deepfm_128", "deepfm", (128, 128), mid_b)):
        for t in sorted({1, th}):
            key = f"{label}_t{t}"
            ours[key] = bench_ours(model, hidden, t, batches, reps)
            print(f"ours   {key:16s} {ours[key]['events_per_second']:>12,.0f} ev/s "
                  f"({ours[key]['events_per_cpu_second']:,.0f} per CPU-s)")
    res["ours"] = ours
    peers: dict = {}
    try:
        import torch  # noqa: F401

        for label, hidden, batches in (("fm", (), fm_b[: 20 if q else 80]),
                                       ("deepfm_400", (400, 400, 400), deep_b[: 6 if q else 15]),
                                       ("deepfm_128", (128, 128), mid_b[: 10 if q else 40])):
            for t in sorted({1, th}):
                key = f"torch_{label}_t{t}"
                peers[key] = bench_torch(hidden, t, batches, reps)
                print(f"torch  {label}_t{t:<10d} {peers[key]['events_per_second']:>12,.0f} ev/s")
            # each side is credited with its faster thread setting
            peers[f"torch_{label}"] = max((peers[f"torch_{label}_t{t}"] for t in {1, th}),
                                          key=lambda r: r["events_per_second"])
    except ImportError:
        print("note: torch not installed (pip install -e .[bench]); PyTorch skipped")
    try:
        peers["river_fm"] = bench_river(fm_b, 300 if q else 2000)
        print(f"river  FMClassifier     {peers['river_fm']['events_per_second']:>12,.0f} ev/s")
    except ImportError:
        print("note: river not installed; river skipped")
    try:
        peers["vw_lrq"] = bench_vw(fm_b, 3000 if q else 20000)
        print(f"vw     --lrq aa{K}        {peers['vw_lrq']['events_per_second']:>12,.0f} ev/s")
    except ImportError:
        print("note: vowpalwabbit not installed (pip install -e .[bench]); VW skipped")
    res["peers"] = peers

    def best(label: str) -> float:
        return max(ours[f"{label}_t{t}"]["events_per_second"] for t in {1, th})

    fm = best("fm")
    deep = best("deepfm_400")

    def ratio(a: float, peer: str) -> float | None:
        return a / peers[peer]["events_per_second"] if peer in peers else None

    res["fm"] = {"events_per_second": fm, "torch_ratio": ratio(fm, "torch_fm"),
                 "river_ratio": ratio(fm, "river_fm"), "vw_ratio": ratio(fm, "vw_lrq")}
    res["deepfm"] = {"events_per_second": deep, "torch_ratio": ratio(deep, "torch_deepfm_400"),
                     "hidden": [400, 400, 400]}
    d128 = best("deepfm_128")
    res["deepfm_128"] = {"events_per_second": d128,
                         "torch_ratio": ratio(d128, "torch_deepfm_128")}
    peak = peak_flops(th)
    flops = mlp_step_flops((400, 400, 400)) * deep / 1e9
    flops_1 = mlp_step_flops((400, 400, 400)) * ours["deepfm_400_t1"]["events_per_second"] / 1e9
    res["flops"] = {**peak, "deepfm_400_gflops": flops, "deepfm_400_gflops_1thread": flops_1,
                    "fraction_of_theoretical": flops / peak["theoretical_gflops"]
                    if peak["theoretical_gflops"] else None,
                    "fraction_of_numpy_matmul": flops / peak["numpy_matmul_gflops"]}
    print(f"DeepFM 400-400-400 step: {flops:.1f} GFLOP/s best, {flops_1:.1f} on 1 thread "
          f"(MLP only); peak "
          f"{peak['theoretical_gflops']:.0f} theoretical, {peak['numpy_matmul_gflops']:.0f} "
          "numpy matmul")
    res["quality"] = quality(60 if q else 300, lr=0.01)
    print(f"quality (planted FM, AUC on held-out 10%): ours {res['quality']['ours_auc']:.4f}"
          f"  torch {res['quality']['torch_auc']}")
    print(json.dumps({k: res[k] for k in ("fm", "deepfm", "deepfm_128")}, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
