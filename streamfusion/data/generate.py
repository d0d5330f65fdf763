"""Synthetic click logs in the exact Kaggle formats, with planted structure and a known truth.

``streamfusion generate --format avazu|criteo --rows N --out PATH [--seed S] [--truth PATH]``

Each row's click probability is ``sigmoid(base(t) + trees(x, t) + latent(x, t))``:

- ``trees``: what gradient-boosted trees capture from the tree encoding (integer columns as
  values, hour of day): thresholds on integer columns with many values (Avazu ``C14``, ``C20``,
  Criteo ``I`` columns) and interactions of several of them with the hour of day. One-hot
  learners see these as thousands of unrelated values or as three-way products.
- ``latent``: what only factorization captures: low-rank dot products of latent vectors of two
  high-cardinality hex id columns (Avazu: publisher x device model, user x publisher; Criteo:
  ``C3 x C16``, ``C4 x C12``), Zipf popularity, zero-mean so no id carries the effect alone.
- drift: the latent vectors rotate slowly and the base rate moves over the ten days.

``--truth PATH`` writes each row's true click probability (one per line, same order), so the
best achievable AUC is known: the probability depends only on what the row shows and on its
time (an id the row does not show, e.g. an anonymous user's, has no effect). Rows are
generated in chunks of ``CHUNK_ROWS`` with vectorised numpy and written with pyarrow: memory
is bounded in the row count, the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

CHUNK_ROWS = 200_000  # big enough to vectorise well, small enough to keep memory flat
# bump whenever the planted world changes (names cached streams). 4: Criteo latent vectors
# shrink with popularity rank, as Avazu's do (Avazu streams are the same as in version 3)
GENERATOR_VERSION = 4
DAYS = 10
FIRST_DAY = 21  # Avazu's train.csv covers 14102100 .. 14103023
LATENT_DIM = 2
AUC_BINS = 1 << 16  # histogram resolution of the streamed truth AUC (error ~ 1e-5)

AVAZU_COLUMNS = (
    "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,"
    "app_category,device_id,device_ip,device_model,device_type,device_conn_type,"
    "C14,C15,C16,C17,C18,C19,C20,C21"
).split(",")
CRITEO_INT = 13
CRITEO_CAT = 26

# Criteo column shapes (vocabulary size, missing rate) after the public Kaggle sample.
CRITEO_CAT_VOCAB = (180, 390, 6000, 4500, 56, 8, 3000, 93, 3, 3200, 2500, 5500, 1700, 24,
                    2000, 5000, 9, 1100, 550, 4, 5000, 8, 12, 2500, 40, 1900)
CRITEO_CAT_MISSING = (0, 0, .036, .036, 0, .13, 0, 0, 0, 0, 0, .036, 0, 0, 0, .036, 0, 0,
                      .45, .45, .036, .8, 0, 0, .45, .45)
CRITEO_INT_MISSING = (.45, 0, .2, .2, .05, .25, .05, .001, .05, .45, .05, .77, .2)
CRITEO_INT_SCALE = (0.8, 2.5, 1.8, 1.3, 7.5, 4.5, 2.0, 2.3, 3.8, 0.5, 1.0, 0.6, 1.8)


# --------------------------------------------------------------------------- helpers

def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _hex_vocab(rng: np.random.Generator, size: int) -> pa.Array:
    """``size`` distinct 8-hex-char tokens (the shape of Kaggle's hashed ids)."""
    vals = np.unique(rng.integers(0, 1 << 32, size=size * 2, dtype=np.uint64))
    vals = rng.permutation(vals)[:size]
    return pa.array([f"{v:08x}" for v in vals.tolist()], pa.string())


def _zipf_cdf(size: int, a: float, shift: float = 2.0) -> np.ndarray:
    w = 1.0 / (np.arange(size) + shift) ** a
    c = np.cumsum(w)
    return c / c[-1]


def _draw(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)


def _choice(rng: np.random.Generator, values, probs, n: int) -> np.ndarray:
    cdf = np.cumsum(np.asarray(probs, dtype=np.float64))
    idx = _draw(rng, cdf / cdf[-1], n)
    return np.asarray(values)[idx]


def _latent(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Two orthogonal-ish zero-mean latent tables; the effective vector rotates between them."""
    a = rng.standard_normal((size, LATENT_DIM)) / np.sqrt(LATENT_DIM)
    b = rng.standard_normal((size, LATENT_DIM)) / np.sqrt(LATENT_DIM)
    return a, b


def _at(table: tuple[np.ndarray, np.ndarray], idx: np.ndarray, angle: np.ndarray) -> np.ndarray:
    a, b = table
    return a[idx] * np.cos(angle)[:, None] + b[idx] * np.sin(angle)[:, None]


def _popularity_scale(rank: np.ndarray, half: float = 150.0) -> np.ndarray:
    """Latent-vector scale by popularity rank: 1 at the top, shrinking over the tail."""
    return 1.0 / np.sqrt(1.0 + rank / half)


def _hour_of_rows(start: int, n: int, rows: int, weights: np.ndarray) -> np.ndarray:
    """Chronological hour index of rows start..start+n: volume follows ``weights``."""
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    pos = (np.arange(start, start + n, dtype=np.float64) + 0.5) / rows
    return np.minimum(np.searchsorted(cdf, pos, side="right"), len(weights) - 1)


def _hour_weights() -> np.ndarray:
    hod = np.arange(DAYS * 24) % 24
    day = np.arange(DAYS * 24) // 24
    return (1.0 + 0.6 * np.sin(2 * np.pi * (hod - 8) / 24)) * (1.0 + 0.1 * np.cos(day))


class _AucHistogram:
    """Streaming AUC of the truth probabilities (binned; memory independent of rows)."""

    def __init__(self) -> None:
        self.pos = np.zeros(AUC_BINS, np.int64)
        self.neg = np.zeros(AUC_BINS, np.int64)

    def add(self, p: np.ndarray, y: np.ndarray) -> None:
        b = np.minimum((p * AUC_BINS).astype(np.int64), AUC_BINS - 1)
        self.pos += np.bincount(b[y == 1], minlength=AUC_BINS)
        self.neg += np.bincount(b[y == 0], minlength=AUC_BINS)

    def auc(self) -> float:
        npos, nneg = self.pos.sum(), self.neg.sum()
        if npos == 0 or nneg == 0:
            return float("nan")
        neg_below = np.cumsum(self.neg) - self.neg
        wins = (self.pos * neg_below).sum() + 0.5 * (self.pos * self.neg).sum()
        return float(wins / (npos * nneg))


# --------------------------------------------------------------------------- Avazu

class _Avazu:
    """Vocabularies and effects of the Avazu-format world (fixed size, drawn from the seed)."""

    n_site, n_app, n_model, n_user, n_devid = 1000, 600, 300, 1500, 20000
    banners = ((320, 50), (300, 250), (216, 36), (728, 90), (320, 480), (480, 320))
    banner_p = (0.78, 0.12, 0.04, 0.03, 0.02, 0.01)
    banner_effect = np.array([0.0, 0.35, -0.45, 0.25, 0.4, -0.2])
    offset = -1.95  # calibrated so the mean click rate is about 0.17

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng([seed, 0])
        self.site = _hex_vocab(rng, self.n_site + 1)  # last entry: the "no site" token
        self.app = _hex_vocab(rng, self.n_app + 1)
        self.site_dom_of = np.append(rng.integers(0, 2400, self.n_site), 2400)
        self.app_dom_of = np.append(rng.integers(0, 60, self.n_app), 60)
        self.site_dom = _hex_vocab(rng, 2401)
        self.app_dom = _hex_vocab(rng, 61)
        self.site_cat_of = np.append(_draw(rng, _zipf_cdf(20, 1.2, 1.0), self.n_site), 20)
        self.app_cat_of = np.append(_draw(rng, _zipf_cdf(25, 1.2, 1.0), self.n_app), 25)
        self.site_cat = _hex_vocab(rng, 21)
        self.app_cat = _hex_vocab(rng, 26)
        self.model = _hex_vocab(rng, self.n_model)
        self.ip = _hex_vocab(rng, self.n_user + 30000)  # users + one-off ips
        self.devid = _hex_vocab(rng, self.n_devid + 1)
        self.site_cdf = _zipf_cdf(self.n_site, 1.05)
        self.app_cdf = _zipf_cdf(self.n_app, 1.1)
        self.model_cdf = _zipf_cdf(self.n_model, 1.0, 5.0)
        self.user_cdf = _zipf_cdf(self.n_user, 0.9, 10.0)
        # C14: creative ids (integers); C17 groups them; C19/C21 attributes of the group.
        self.c14 = np.sort(rng.choice(np.arange(15000, 24500), 2500, replace=False))
        self.c14_cdf = _zipf_cdf(2500, 0.8, 20.0)
        self.c14_perm = rng.permutation(2500)  # popularity independent of the value
        self.c17_of = np.searchsorted(np.sort(rng.choice(np.arange(15000, 24500), 400,
                                                         replace=False)), self.c14) + 1000
        self.c19_of = rng.choice(np.array([35, 39, 41, 43, 161, 163, 167, 297, 303, 419, 687,
                                           1063, 1319]), 2500)
        self.c21_of = rng.integers(1, 220, 2500)
        self.c20 = np.arange(100000, 100260)
        self.c20_cdf = _zipf_cdf(len(self.c20), 1.0, 3.0)
        # Latent tables for the factorization-only crosses (publisher = site or app).
        self.pub_a = _latent(rng, self.n_site + self.n_app)
        self.pub_b = _latent(rng, self.n_site + self.n_app)
        self.model_l = _latent(rng, self.n_model)
        self.user_l = _latent(rng, self.n_user)
        # Popular ids carry strong effects, rare ones weak: the truth stays learnable from the
        # stream (a rare id's vector cannot be estimated from a handful of clicks).
        pub_rank = np.concatenate([np.arange(self.n_site), np.arange(self.n_app)])
        for table, rank in ((self.pub_a, pub_rank), (self.pub_b, pub_rank),
                            (self.model_l, np.arange(self.n_model)),
                            (self.user_l, np.arange(self.n_user))):
            for part in table:
                part *= _popularity_scale(rank)[:, None]
        self.hour_w = _hour_weights()

    def chunk(self, rng: np.random.Generator, start: int, n: int, rows: int):
        hidx = _hour_of_rows(start, n, rows, self.hour_w)
        t = (hidx + rng.random(n)) / (DAYS * 24)  # 0..1 over the ten days
        hod = hidx % 24
        day = hidx // 24
        hour = 14100000 + (FIRST_DAY + day) * 100 + hod

        is_app = rng.random(n) < 0.3 + 0.1 * np.cos(2 * np.pi * (hod - 22) / 24)
        site = np.where(is_app, self.n_site, _draw(rng, self.site_cdf, n))
        app = np.where(is_app, _draw(rng, self.app_cdf, n), self.n_app)
        pub = np.where(is_app, self.n_site + app, site)
        model = _draw(rng, self.model_cdf, n)
        user = _draw(rng, self.user_cdf, n)
        one_off = rng.random(n) < 0.35  # ips seen about once: noise for the learner
        ip = np.where(one_off, self.n_user + rng.integers(0, 30000, n), user)
        no_devid = rng.random(n) < 0.85
        devid = np.where(no_devid, self.n_devid, user % self.n_devid)
        # A user with a one-off ip and no device id is anonymous: nothing in the row names
        # them, so no user effect (the truth stays a function of the row and the time, i.e.
        # the best achievable prediction).
        known_user = ~(one_off & no_devid)

        c1 = _choice(rng, [1005, 1002, 1010, 1007, 1001, 1008], [.92, .04, .03, .005, .003, .002],
                     n)
        dtype_ = np.where(c1 == 1002, 0, np.where(c1 == 1010, 4, _choice(
            rng, [1, 5, 4], [.97, .02, .01], n)))
        conn = _choice(rng, [0, 2, 3, 5], [.86, .09, .04, .01], n)
        banner_pos = _choice(rng, [0, 1, 7, 2, 4, 5], [.79, .19, .01, .005, .003, .002], n)
        b = _choice(rng, np.arange(len(self.banners)), self.banner_p, n)
        c15 = np.array([w for w, _ in self.banners])[b]
        c16 = np.array([h for _, h in self.banners])[b]
        cre = self.c14_perm[_draw(rng, self.c14_cdf, n)]
        c14 = self.c14[cre]
        c17 = self.c17_of[cre]
        c19 = self.c19_of[cre]
        c21 = self.c21_of[cre]
        c18 = _choice(rng, [0, 3, 2, 1], [.68, .18, .12, .02], n)
        c20 = np.where(rng.random(n) < 0.47, -1, self.c20[_draw(rng, self.c20_cdf, n)])

        # Tree signal: thresholds on many-valued integers, interactions with the hour of day.
        evening = (hod >= 17) & (hod <= 23)
        night = hod <= 5
        trees = (
            self.banner_effect[b]
            + 0.55 * np.tanh((c14 - 19800) / 350.0)
            - 0.45 * ((c14 > 22500) & night)
            + 0.5 * np.cos(2 * np.pi * (hod - np.where(dtype_ == 1, 20, 11)) / 24)
            * (1 + (banner_pos == 1))
            + 0.7 * ((banner_pos == 1) & evening & (c18 >= 2))
            - 0.35 * (c20 == -1) + 0.5 * (c20 > 100120) * (c19 > 200)
            + 0.4 * (c21 > 150) * (conn == 0) - 0.5 * (conn == 3) * (hod >= 12)
            + 0.3 * np.sin(2 * np.pi * (c17 - 1000) / 140.0) * (c18 == 0)
        )
        # Factorization-only signal: zero-mean low-rank crosses of hex ids, drifting.
        angle = 0.25 * np.pi * t
        latent = (
            1.2 * np.sum(_at(self.pub_a, pub, angle) * _at(self.model_l, model, angle), 1)
            + 1.1 * known_user
            * np.sum(_at(self.pub_b, pub, angle) * _at(self.user_l, user, angle), 1)
        )
        base = self.offset + 0.25 * np.sin(2 * np.pi * t * DAYS / 7) - 0.2 * t
        p = _sigmoid(base + trees + latent)
        y = (rng.random(n) < p).astype(np.int8)
        ids = rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)

        def take(vocab: pa.Array, idx: np.ndarray) -> pa.Array:
            return vocab.take(pa.array(idx.astype(np.int32)))

        cols = [
            pa.array(ids), pa.array(y), pa.array(hour), pa.array(c1), pa.array(banner_pos),
            take(self.site, site), take(self.site_dom, self.site_dom_of[site]),
            take(self.site_cat, self.site_cat_of[site]),
            take(self.app, app), take(self.app_dom, self.app_dom_of[app]),
            take(self.app_cat, self.app_cat_of[app]),
            take(self.devid, devid), take(self.ip, ip), take(self.model, model),
            pa.array(dtype_), pa.array(conn), pa.array(c14), pa.array(c15), pa.array(c16),
            pa.array(c17), pa.array(c18), pa.array(c19), pa.array(c20), pa.array(c21),
        ]
        parts = {"base": base, "trees": trees, "latent": latent}
        return pa.Table.from_arrays(cols, names=AVAZU_COLUMNS), p, y, parts


# --------------------------------------------------------------------------- Criteo

class _Criteo:
    """Criteo-format world: 13 count features (tree signal), 26 hashed categoricals."""

    offset = -1.48  # calibrated so the mean click rate is about 0.22 (Criteo's sample)

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng([seed, 0])
        self.vocab = [_hex_vocab(rng, v) for v in CRITEO_CAT_VOCAB]
        self.cdf = [_zipf_cdf(v, 1.05 if v > 100 else 1.3, 3.0) for v in CRITEO_CAT_VOCAB]
        self.lat = {c: (_latent(rng, CRITEO_CAT_VOCAB[c])) for c in (2, 3, 11, 15)}
        # as in the Avazu world: strong vectors for popular ids only, or the truth would rest
        # on ids seen a handful of times in the whole stream (not learnable, so not the best
        # achievable prediction)
        for c, table in self.lat.items():
            for part in table:
                part *= _popularity_scale(np.arange(CRITEO_CAT_VOCAB[c]))[:, None]
        self.hour_w = _hour_weights()

    def chunk(self, rng: np.random.Generator, start: int, n: int, rows: int):
        hidx = _hour_of_rows(start, n, rows, self.hour_w)
        t = (hidx + rng.random(n)) / (DAYS * 24)
        # Counts: a shared "activity" factor plus per-column noise, heavy tailed.
        act = rng.standard_normal(n)
        ints = np.empty((CRITEO_INT, n), np.int64)
        for j in range(CRITEO_INT):
            raw = np.exp(CRITEO_INT_SCALE[j] / 2.5 * (0.6 * act + 0.8 * rng.standard_normal(n))
                         + np.log1p(CRITEO_INT_SCALE[j]))
            ints[j] = np.floor(raw - 1).astype(np.int64)
        ints[1] = np.maximum(ints[1], -1)
        miss = np.stack([rng.random(n) < m for m in CRITEO_INT_MISSING])
        cats = np.stack([_draw(rng, cdf, n) for cdf in self.cdf])
        cmiss = np.stack([rng.random(n) < m for m in CRITEO_CAT_MISSING])
        i = np.where(miss, 0, ints).astype(np.float64)

        trees = 2.4 * (
            0.6 * np.tanh((i[0] - 1.5) * 0.8) * ~miss[0]
            - 0.4 * (i[4] > 2000) + 0.3 * (i[4] < 30) * ~miss[4]
            + 0.5 * ((i[2] > 8) & (i[6] <= 3))
            - 0.5 * ((i[10] >= 2) & (i[12] > 5) & (i[1] < 3))
            + 0.35 * np.sin(np.log1p(np.maximum(i[5], 0)) * 1.7) * (i[8] > 20)
            + 0.3 * (i[7] > 10) - 0.3 * miss[11] * (i[3] > 4)
        )
        angle = 0.5 * np.pi * t

        def cross(a: int, b: int) -> np.ndarray:
            # a missing id is unknown to every learner: no effect (the truth stays achievable)
            dot = np.sum(_at(self.lat[a], cats[a], angle) * _at(self.lat[b], cats[b], angle), 1)
            return dot * ~(cmiss[a] | cmiss[b])

        latent = 1.1 * cross(2, 15) + 1.0 * cross(3, 11)
        base = self.offset + 0.25 * np.sin(2 * np.pi * t * DAYS / 7) - 0.2 * t
        p = _sigmoid(base + trees + latent)
        y = (rng.random(n) < p).astype(np.int8)

        cols = [pa.array(y)]
        cols += [pa.array(ints[j], mask=miss[j]) for j in range(CRITEO_INT)]
        cols += [self.vocab[c].take(pa.array(cats[c].astype(np.int32), mask=cmiss[c]))
                 for c in range(CRITEO_CAT)]
        names = ["label"] + [f"I{j + 1}" for j in range(CRITEO_INT)]
        names += [f"C{c + 1}" for c in range(CRITEO_CAT)]
        parts = {"base": base, "trees": trees, "latent": latent}
        return pa.Table.from_arrays(cols, names=names), p, y, parts


# --------------------------------------------------------------------------- driver

def _open(path: Path) -> pa.NativeFile:
    if path.suffix == ".gz":
        return pa.CompressedOutputStream(str(path), "gzip")
    return pa.OSFile(str(path), "wb")


def generate(path: str | Path, format: str = "avazu", rows: int = 1_000_000, seed: int = 0,
             truth_path: str | Path | None = None) -> dict:
    """Write ``rows`` synthetic events in the exact Kaggle ``format`` to ``path``.

    Parameters
    ----------
    path : str or Path
        Output file (``.gz`` suffix: gzip-compressed).
    format : {"avazu", "criteo"}
        Avazu ``train.csv`` (header, comma-separated, ten days of ``hour`` in order) or Criteo
        ``train.txt`` (no header, tab-separated, label, I1..I13, C1..C26, empty = missing).
    rows : int
        Number of events.
    seed : int
        The same seed gives the same bytes.
    truth_path : str or Path, optional
        Where to write each row's true click probability, one per line.

    Returns
    -------
    dict
        ``rows``, ``clicks``, ``ctr``, ``truth_auc`` (binned, about 1e-5 accurate),
        ``truth_logloss``, ``seconds``, ``format``, ``seed``.

    Examples
    --------
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> s = generate(os.path.join(d, "t.csv"), "avazu", rows=1000, seed=1)
    >>> s["rows"]
    1000
    """
    if format not in ("avazu", "criteo"):
        raise ValueError(f"unknown format {format!r}: expected 'avazu' or 'criteo'")
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    t0 = time.perf_counter()
    world = _Avazu(seed) if format == "avazu" else _Criteo(seed)
    delimiter = "," if format == "avazu" else "\t"
    opts = pacsv.WriteOptions(include_header=False, quoting_style="none", delimiter=delimiter)
    hist = _AucHistogram()
    clicks, ll = 0, 0.0
    out = _open(Path(path))
    truth = _open(Path(truth_path)) if truth_path is not None else None
    try:
        if format == "avazu":
            out.write((",".join(AVAZU_COLUMNS) + "\n").encode())
        for k, start in enumerate(range(0, rows, CHUNK_ROWS)):
            n = min(CHUNK_ROWS, rows - start)
            rng = np.random.default_rng([seed, 1, k])
            table, p, y, _ = world.chunk(rng, start, n, rows)
            pacsv.write_csv(table, out, write_options=opts)
            if truth is not None:
                pacsv.write_csv(pa.table({"p": p}), truth,
                                write_options=pacsv.WriteOptions(include_header=False))
            hist.add(p, y)
            clicks += int(y.sum())
            pc = np.clip(p, 1e-15, 1 - 1e-15)
            ll += float(-np.sum(np.where(y == 1, np.log(pc), np.log1p(-pc))))
    finally:
        out.close()
        if truth is not None:
            truth.close()
    return {
        "format": format, "rows": rows, "seed": seed, "clicks": clicks,
        "ctr": clicks / rows if rows else float("nan"),
        "truth_auc": hist.auc(), "truth_logloss": ll / rows if rows else float("nan"),
        "seconds": time.perf_counter() - t0,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Attach ``streamfusion generate`` options to ``parser``."""
    parser.add_argument("--format", choices=("avazu", "criteo"), default="avazu",
                        help="file format to write (default: avazu)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="number of events")
    parser.add_argument("--out", required=True, help="output path (.gz: gzip)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--truth", default=None,
                        help="also write each row's true click probability here")


def run(args: argparse.Namespace) -> int:
    """Run ``streamfusion generate``; returns the exit code."""
    try:
        stats = generate(args.out, args.format, rows=args.rows, seed=args.seed,
                         truth_path=args.truth)
    except ValueError as exc:
        print(f"streamfusion generate: {exc}")
        return 2
    print(f"wrote {stats['rows']:,} {stats['format']} rows to {args.out} in "
          f"{stats['seconds']:.2f}s: ctr {stats['ctr']:.4f}, truth AUC {stats['truth_auc']:.4f}, "
          f"truth logloss {stats['truth_logloss']:.4f}")
    return 0
