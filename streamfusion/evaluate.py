"""Metrics: exact AUC and logloss from margins, progressive (prequential) state, windows.

Logloss is computed from the margin (``softplus(z) - y*z``), never from a clipped probability,
so saturated predictions keep their exact loss; probabilities are clamped (1e-15) only where
one is exported. AUC is the exact, tie-aware Mann-Whitney statistic.

Streams too long to hold in memory are spilled to disk (:mod:`streamfusion.spill`) and
measured in chunks: ``auc_spilled`` and ``logloss_spilled`` give exactly the values of ``auc``
and ``logloss_from_margin`` over the same events, holding a bounded number of them at once.
"""

from __future__ import annotations

import itertools
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from streamfusion.checkpoint import CheckpointError
from streamfusion.spill import RecordSpill

PROB_EPS = 1e-15  # clamp for exported probabilities only (river's metrics use the same)
LOGLOSS_CAP = -np.log(PROB_EPS)  # per-event loss cap, so one saturated miss cannot dominate
AUC_BUDGET = 1 << 22  # events one AUC pass holds (about 16 MiB of keys): a real Avazu day
CHUNK_ROWS = 1 << 20  # events read from a spill at once (about 30 MiB of temporaries)
SEARCH_BLOCK = 1 << 20  # positives ranked at once among a group's sorted negatives
RECENT_EVENTS = 1 << 16  # in-memory ring behind ``Progressive.recent`` (the live AUC)
TOP_BITS = 16  # the AUC's first pass histograms the top 16 bits of the order keys
SIGN = np.uint32(0x80000000)
NAN_KEY = np.uint32(0xFFFFFFFF)  # every NaN ties with every other, above +inf (as in ``auc``)
PROGRESSIVE_FILE = "progressive.spill"

# (start, stop) -> (float32 margins, labels) of events [start, stop) of a spilled sequence
Reader = Callable[[int, int], tuple[np.ndarray, np.ndarray]]


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function, saturating at +-30 like river."""
    z = np.clip(np.asarray(z, dtype=np.float64), -30.0, 30.0)
    return 1.0 / (1.0 + np.exp(-z))


def _losses(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return np.minimum(np.logaddexp(0.0, z) - y * z, LOGLOSS_CAP)


def logloss_from_margin(z: np.ndarray, y: np.ndarray) -> float:
    """Mean logloss of labels ``y`` under margins ``z``; NaN for no events."""
    if np.size(z) == 0:
        return float("nan")
    # an exactly rounded sum: the same value whatever the order or chunking of the events
    return math.fsum(_losses(z, y).tolist()) / np.size(z)


def auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Exact ROC AUC with ties counted as one half; NaN when only one class is present.

    Equal scores tie (``-0.0 == 0.0``, ``inf == inf``); NaN scores tie with each other, above
    every number.
    """
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y) > 0.5
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")  # NaNs last
    s = scores[order]
    # Average ranks over runs of tied scores (1-based ranks).
    boundaries = np.flatnonzero(s[1:] != s[:-1]) + 1
    if np.isnan(s[-1]):  # NaN != NaN: one run for all of them
        boundaries = boundaries[boundaries <= np.argmax(np.isnan(s))]
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [s.size]))
    avg_rank = (starts + ends + 1) / 2.0
    ranks = np.repeat(avg_rank, ends - starts)
    pos_rank_sum = ranks[y[order]].sum()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def summarize(z: np.ndarray, y: np.ndarray) -> dict[str, float | int]:
    """``{"auc", "logloss", "rows"}`` for margins ``z`` and labels ``y``."""
    return {"auc": auc(z, y), "logloss": logloss_from_margin(z, y), "rows": int(len(z))}


# --------------------------------------------------------------------------- spilled sequences

def array_reader(z: np.ndarray, y: np.ndarray) -> Reader:
    """A :data:`Reader` over in-memory arrays (tests, small sequences)."""
    return lambda a, b: (z[a:b], y[a:b])


def spill_reader(spill: RecordSpill) -> Reader:
    """A :data:`Reader` over the records of a :class:`~streamfusion.spill.RecordSpill`."""
    def read(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        rec = spill.read(a, b)
        return rec["z"], rec["y"]
    return read


def ranges_reader(read: Reader, ranges: list[tuple[int, int]]) -> tuple[Reader, int]:
    """A :data:`Reader` over the concatenation of ``ranges`` of ``read``, and its length."""
    ends = np.cumsum([b - a for a, b in ranges])
    starts = ends - [b - a for a, b in ranges]

    def joined(va: int, vb: int) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        for i in range(int(np.searchsorted(ends, va, side="right")), len(ranges)):
            if starts[i] >= vb:
                break
            lo, hi = max(va, starts[i]), min(vb, ends[i])
            parts.append(read(ranges[i][0] + lo - starts[i], ranges[i][0] + hi - starts[i]))
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate(col) for col in zip(*parts, strict=True))

    return joined, int(ends[-1]) if ranges else 0


def order_keys(z: np.ndarray) -> np.ndarray:
    """uint32 keys ordered like the float32 scores ``z``: equal keys exactly for tied scores.

    The IEEE bit pattern, with the sign bit flipped for positives and all bits for negatives,
    sorts like the numbers; ``-0.0`` becomes ``+0.0`` first, and every NaN gets the top key.
    """
    z = np.asarray(z)
    if z.dtype != np.float32:
        raise TypeError(f"order keys need float32 scores, not {z.dtype}")
    bits = (z + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 == +0.0; a contiguous copy
    keys = np.where(bits >= SIGN, ~bits, bits | SIGN)
    keys[np.isnan(z)] = NAN_KEY
    return keys


def _keyed_chunks(read: Reader, start: int, stop: int,
                  chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(order keys, is-positive) of events [start, stop), ``chunk`` events at a time."""
    for a in range(start, stop, chunk):
        z, y = read(a, min(a + chunk, stop))
        yield order_keys(z), np.asarray(y) > 0.5


def _pairs_won(pos_keys: np.ndarray, neg_keys: np.ndarray) -> int:
    """Twice the positive-negative pairs ordered right, plus the tied pairs (sorts neg_keys)."""
    neg_keys.sort()
    won = 0
    for a in range(0, pos_keys.size, SEARCH_BLOCK):
        block = pos_keys[a : a + SEARCH_BLOCK]
        # negatives below + negatives at or below = 2 * below + tied
        won += int(np.searchsorted(neg_keys, block, "left").sum())
        won += int(np.searchsorted(neg_keys, block, "right").sum())
    return won


def _bucket_groups(count: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """Runs ``[lo, hi)`` of consecutive buckets holding at most ``budget`` events each.

    A bucket that alone holds more than ``budget`` events is a run of its own.
    """
    groups: list[tuple[int, int]] = []
    lo, held, last = -1, 0, -1
    for b in np.flatnonzero(count).tolist():
        c = int(count[b])
        if lo >= 0 and held + c > budget:
            groups.append((lo, last + 1))
            lo = -1
        if c > budget:
            groups.append((b, b + 1))
            continue
        if lo < 0:
            lo, held = b, 0
        held += c
        last = b
    if lo >= 0:
        groups.append((lo, last + 1))
    return groups


def _group_pairs_won(read: Reader, start: int, stop: int, chunk: int, lo: int, hi: int,
                     n_pos: int, n_neg: int) -> int:
    """Pairs won within the events whose top key bits lie in buckets [lo, hi)."""
    pos_keys = np.empty(n_pos, np.uint32)
    neg_keys = np.empty(n_neg, np.uint32)
    i_pos = i_neg = 0
    for keys, pos in _keyed_chunks(read, start, stop, chunk):
        top = keys >> TOP_BITS
        sel = (top >= lo) & (top < hi)
        k, p = keys[sel], pos[sel]
        kp, kn = k[p], k[~p]
        pos_keys[i_pos : i_pos + kp.size] = kp
        neg_keys[i_neg : i_neg + kn.size] = kn
        i_pos, i_neg = i_pos + kp.size, i_neg + kn.size
    return _pairs_won(pos_keys, neg_keys)


def _big_bucket_pairs_won(read: Reader, start: int, stop: int, chunk: int, bucket: int) -> int:
    """Pairs won within one bucket too large for the budget: counts of its low key bits."""
    size = 1 << (32 - TOP_BITS)
    pos_c = np.zeros(size, np.int64)
    neg_c = np.zeros(size, np.int64)
    for keys, pos in _keyed_chunks(read, start, stop, chunk):
        sel = (keys >> TOP_BITS) == bucket
        low, p = (keys[sel] & np.uint32(size - 1)).astype(np.intp), pos[sel]
        pos_c += np.bincount(low[p], minlength=size)
        neg_c += np.bincount(low[~p], minlength=size)
    below = np.cumsum(neg_c) - neg_c
    return int((pos_c * (2 * below + neg_c)).sum())


def auc_spilled(read: Reader, start: int, stop: int, budget: int = AUC_BUDGET,
                chunk: int = CHUNK_ROWS) -> float:
    """Exact AUC of events [start, stop) of a spilled sequence, equal to :func:`auc`.

    Holds at most ``budget`` events' keys (plus one ``chunk`` of reads) at once. When the
    range fits, one pass gathers it; otherwise a first pass counts positives and negatives
    by the top 16 bits of the order keys, and each run of buckets of at most ``budget``
    events is gathered and ranked in a pass of its own, a single larger bucket by counting
    its low 16 bits. Scores must be float32.
    """
    if budget < 1 or chunk < 1:
        raise ValueError("budget and chunk must be positive")
    n = max(0, stop - start)
    if n <= budget:
        keys = np.empty(n, np.uint32)
        pos = np.empty(n, bool)
        for i, (k, p) in enumerate(_keyed_chunks(read, start, stop, chunk)):
            keys[i * chunk : i * chunk + k.size], pos[i * chunk : i * chunk + k.size] = k, p
        n_pos = int(pos.sum())
        n_neg = n - n_pos
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        return _pairs_won(keys[pos], keys[~pos]) / (2 * n_pos * n_neg)
    buckets = 1 << TOP_BITS
    pos_h = np.zeros(buckets, np.int64)
    neg_h = np.zeros(buckets, np.int64)
    for keys, pos in _keyed_chunks(read, start, stop, chunk):
        top = (keys >> TOP_BITS).astype(np.intp)
        pos_h += np.bincount(top[pos], minlength=buckets)
        neg_h += np.bincount(top[~pos], minlength=buckets)
    n_pos, n_neg = int(pos_h.sum()), int(neg_h.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg_h) - neg_h
    count = pos_h + neg_h
    won = 0
    for lo, hi in _bucket_groups(count, budget):
        g_pos, g_neg = int(pos_h[lo:hi].sum()), int(neg_h[lo:hi].sum())
        won += 2 * g_pos * int(neg_below[lo])  # every negative of a lower bucket is beaten
        if g_pos and g_neg:
            if hi - lo == 1 and count[lo] > budget:
                won += _big_bucket_pairs_won(read, start, stop, chunk, lo)
            else:
                won += _group_pairs_won(read, start, stop, chunk, lo, hi, g_pos, g_neg)
    return won / (2 * n_pos * n_neg)  # exact integers: a correctly rounded quotient


def logloss_spilled(read: Reader, start: int, stop: int, chunk: int = CHUNK_ROWS) -> float:
    """Mean logloss of events [start, stop) of a spilled sequence, equal to
    :func:`logloss_from_margin` over them (both sum exactly), reading ``chunk`` at a time."""
    n = stop - start
    if n <= 0:
        return float("nan")
    losses = (_losses(*read(a, min(a + chunk, stop))).tolist() for a in range(start, stop, chunk))
    return math.fsum(itertools.chain.from_iterable(losses)) / n


def summarize_spilled(read: Reader, start: int, stop: int, budget: int = AUC_BUDGET,
                      chunk: int = CHUNK_ROWS) -> dict[str, float | int]:
    """:func:`summarize` of events [start, stop) of a spilled sequence, in bounded memory."""
    return {"auc": auc_spilled(read, start, stop, budget, chunk),
            "logloss": logloss_spilled(read, start, stop, chunk),
            "rows": int(max(0, stop - start))}


# --------------------------------------------------------------------------- progressive state

class Rolling:
    """The last ``capacity`` margins and labels, in a ring: the live figures of the replay's
    progress bar and the daemon's rolling AUC / logloss gauges.

    Examples
    --------
    >>> r = Rolling(4)
    >>> r.add(np.array([-1.0, 2.0, 0.5], np.float32), np.array([0, 1, 1]))
    >>> r.summary()["rows"], r.summary()["auc"]
    (3, 1.0)
    """

    def __init__(self, capacity: int) -> None:
        self.z = np.zeros(capacity, np.float32)
        self.y = np.zeros(capacity, np.uint8)
        self.seen = 0

    def add(self, z: np.ndarray, y: np.ndarray) -> None:
        """Append margins ``z`` of events labelled ``y`` (0/1); the oldest fall out."""
        cap, n = self.z.size, len(z)
        z, y = z[-cap:], y[-cap:]
        at = (self.seen + n - len(z)) % cap
        first = min(len(z), cap - at)
        self.z[at : at + first], self.y[at : at + first] = z[:first], y[:first]
        self.z[: len(z) - first], self.y[: len(z) - first] = z[first:], y[first:]
        self.seen += n

    def __len__(self) -> int:
        return min(self.seen, self.z.size)

    def last(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Margins and labels of the last ``n`` events (fewer when fewer were added)."""
        n = max(0, min(n, self.seen, self.z.size))
        idx = (self.seen - n + np.arange(n)) % self.z.size
        return self.z[idx], self.y[idx]

    def summary(self, n: int | None = None) -> dict[str, float | int]:
        """:func:`summarize` over the last ``n`` events (all of the ring by default)."""
        return summarize(*self.last(self.z.size if n is None else n))


class Progressive:
    """Progressive (test-then-train) validation state, spilled to disk.

    Every scored event's margin, label, window key and line is appended to a file of
    fixed-size records (17 bytes an event), so the final AUC is exact while memory stays flat
    in the stream's length: the report's figures are computed from the file at the end, each
    holding at most ``budget`` events. Windows are cut where the key changes (the day for
    Avazu, ``row // window_rows`` otherwise). The last ``RECENT_EVENTS`` events stay in
    memory for the progress bar's live figures.

    Parameters
    ----------
    window_rows : int
        Window length in events when the source has no day to cut on.
    path : Path, optional
        The spill file (truncated if present); by default one in a temporary directory,
        removed by :meth:`close`.
    budget : int
        Events an exact AUC holds at once.
    chunk_rows : int
        Events read from the file at once.

    Examples
    --------
    >>> p = Progressive(window_rows=2)
    >>> p.add(np.array([0.1, -2.0, 3.0], np.float32), np.array([1, 0, 1]))
    >>> p.overall()["auc"], [w["end_row"] for w in p.windows()]
    (1.0, [2, 3])
    >>> p.close()
    """

    def __init__(self, window_rows: int = 100_000, path: Path | None = None, *,
                 budget: int = AUC_BUDGET, chunk_rows: int = CHUNK_ROWS) -> None:
        self._tmpdir = None
        if path is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="streamfusion-progressive-"))
            path = self._tmpdir / PROGRESSIVE_FILE
        self._setup(window_rows, RecordSpill(path), budget, chunk_rows)

    def _setup(self, window_rows: int, spill: RecordSpill, budget: int, chunk_rows: int) -> None:
        self.window_rows = int(window_rows)
        self.budget, self.chunk_rows = int(budget), int(chunk_rows)
        self._spill = spill
        self._read = spill_reader(spill)
        self._recent = Rolling(RECENT_EVENTS)
        self.swaps: list[dict[str, int]] = []

    @classmethod
    def resume(cls, path: Path, state: dict[str, Any], *, budget: int = AUC_BUDGET,
               chunk_rows: int = CHUNK_ROWS) -> Progressive:
        """The state of a checkpoint over its spill file; ``CheckpointError`` unless the file
        holds exactly the prefix the checkpoint recorded."""
        try:
            window_rows = int(state["window_rows"])
            swaps = [{"row": int(s["row"]), "version": int(s["version"])} for s in state["swaps"]]
            spill_state = state["spill"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError("the checkpoint's progressive metric state is incomplete or "
                                  "of an older format") from None
        spill = RecordSpill.resume(path, spill_state, "progressive metrics")
        self = cls.__new__(cls)
        self._tmpdir = None
        self._setup(window_rows, spill, budget, chunk_rows)
        self.swaps = swaps
        tail = spill.read(len(spill) - RECENT_EVENTS, len(spill))
        self._recent.add(tail["z"], tail["y"])
        return self

    def add(self, z: np.ndarray, y: np.ndarray, day: np.ndarray | None = None,
            line: np.ndarray | None = None) -> None:
        """Record margins ``z`` scored before learning, labels ``y``, optional day keys and
        the events' lines in their source (default: their 1-based positions here)."""
        if day is None or line is None:  # (a replay gives its lines: no positions then)
            position = len(self) + np.arange(len(z))
            day = position // self.window_rows if day is None else day
            line = position + 1 if line is None else line
        self._spill.append(z, y, day, line)
        self._recent.add(z, y)

    def mark_swap(self, version: int) -> None:
        """Note that a new tree model went live before the next recorded event."""
        self.swaps.append({"row": len(self), "version": int(version)})

    def __len__(self) -> int:
        return len(self._spill)

    @property
    def spill(self) -> RecordSpill:
        """The records themselves (margin, label, window key, line), in stream order."""
        return self._spill

    def _summary(self, start: int, stop: int) -> dict[str, float | int]:
        return summarize_spilled(self._read, start, stop, self.budget, self.chunk_rows)

    def overall(self) -> dict[str, float | int]:
        """``{"auc", "logloss", "rows"}`` over every recorded event."""
        return self._summary(0, len(self))

    def recent(self, n: int) -> dict[str, float | int]:
        """Metrics over the last ``n`` events (the progress bar's live figures)."""
        if n <= RECENT_EVENTS:
            return self._recent.summary(n)
        return self._summary(max(0, len(self) - n), len(self))

    def _runs(self) -> list[tuple[int, int, int]]:
        """``(start, stop, key)`` of each run of equal window keys, read a chunk at a time."""
        n, starts, keys, prev = len(self), [], [], None
        for a in range(0, n, self.chunk_rows):
            key = self._spill.read(a, min(a + self.chunk_rows, n))["key"]
            new = np.empty(key.size, bool)
            new[0] = prev is None or key[0] != prev
            new[1:] = key[1:] != key[:-1]
            starts.extend((a + np.flatnonzero(new)).tolist())
            keys.extend(key[new].tolist())
            prev = key[-1]
        return list(zip(starts, [*starts[1:], n], keys, strict=True)) if starts else []

    def windows(self) -> list[dict[str, float | int]]:
        """One entry per window key (a day, or a run of ``window_rows`` events), in order of
        first appearance: ``{"end_row", "key", "auc", "logloss", "rows"}``. The runs of a key
        that recurs (an out-of-order log) are merged: ``end_row`` is where its last run ends."""
        runs: dict[int, list[tuple[int, int]]] = {}
        for a, b, k in self._runs():
            runs.setdefault(k, []).append((a, b))
        out = []
        for k, ranges in runs.items():
            read, n = ranges_reader(self._read, ranges)
            out.append({"end_row": ranges[-1][1], "key": k,
                        **summarize_spilled(read, 0, n, self.budget, self.chunk_rows)})
        return out

    def around_swaps(self, span: int = 10_000) -> list[dict[str, float | int]]:
        """Progressive logloss in the ``span`` events before and after each tree swap."""
        n, out = len(self), []
        for swap in self.swaps:
            r = swap["row"]
            out.append({
                "row": r,
                "version": swap["version"],
                "logloss_before": logloss_spilled(self._read, max(0, r - span), r,
                                                  self.chunk_rows),
                "logloss_after": logloss_spilled(self._read, r, min(n, r + span),
                                                 self.chunk_rows),
            })
        return out

    def state_dict(self) -> dict[str, Any]:
        """Small state plus the spill file's pinned prefix (made durable here)."""
        return {"window_rows": self.window_rows, "swaps": [dict(s) for s in self.swaps],
                "spill": self._spill.state_dict()}

    def close(self) -> None:
        """Close the spill file; remove it if it was a temporary one."""
        self._spill.close(remove=self._tmpdir is not None)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)


def holdout_mask(line: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Seeded, deterministic choice of held-out events by their line number (splitmix64)."""
    x = np.asarray(line, dtype=np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53) < fraction
