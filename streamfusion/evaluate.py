"""Metrics: exact AUC and logloss from margins, progressive (prequential) state, windows.

Logloss is computed from the margin (``softplus(z) - y*z``), never from a clipped probability,
so saturated predictions keep their exact loss; probabilities are clamped (1e-15) only where
one is exported. AUC is the exact, tie-aware Mann-Whitney statistic.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PROB_EPS = 1e-15  # clamp for exported probabilities only (river's metrics use the same)
LOGLOSS_CAP = -np.log(PROB_EPS)  # per-event loss cap, so one saturated miss cannot dominate


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function, saturating at +-30 like river."""
    z = np.clip(np.asarray(z, dtype=np.float64), -30.0, 30.0)
    return 1.0 / (1.0 + np.exp(-z))


def logloss_from_margin(z: np.ndarray, y: np.ndarray) -> float:
    """Mean logloss of labels ``y`` under margins ``z``; NaN for no events."""
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if z.size == 0:
        return float("nan")
    losses = np.logaddexp(0.0, z) - y * z
    return float(np.mean(np.minimum(losses, LOGLOSS_CAP)))


def auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Exact ROC AUC with ties counted as one half; NaN when only one class is present."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y) > 0.5
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    # Average ranks over runs of tied scores (1-based ranks).
    boundaries = np.flatnonzero(np.diff(s)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [s.size]))
    avg_rank = (starts + ends + 1) / 2.0
    ranks = np.repeat(avg_rank, ends - starts)
    pos_rank_sum = ranks[y[order]].sum()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def summarize(z: np.ndarray, y: np.ndarray) -> dict[str, float | int]:
    """``{"auc", "logloss", "rows"}`` for margins ``z`` and labels ``y``."""
    return {"auc": auc(z, y), "logloss": logloss_from_margin(z, y), "rows": int(len(z))}


class GrowingArray:
    """An append-only 1-D numpy buffer that doubles its capacity when full."""

    def __init__(self, dtype: Any, capacity: int = 1 << 16) -> None:
        self._data = np.empty(capacity, dtype=dtype)
        self._n = 0

    def extend(self, values: np.ndarray) -> None:
        need = self._n + len(values)
        if need > self._data.size:
            grown = np.empty(max(need, 2 * self._data.size), dtype=self._data.dtype)
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        self._data[self._n : need] = values
        self._n = need

    @property
    def values(self) -> np.ndarray:
        return self._data[: self._n]

    def __len__(self) -> int:
        return self._n


class Progressive:
    """Progressive (test-then-train) validation state: every scored event's margin and label.

    Keeps 9 bytes per event (margin, window key, label) so the final AUC is exact; windows
    are cut by a key (the day for Avazu, ``row // every`` otherwise).

    Parameters
    ----------
    window_rows : int
        Window length in events when the source has no day to cut on.
    """

    def __init__(self, window_rows: int = 100_000) -> None:
        self.window_rows = int(window_rows)
        self.margin = GrowingArray(np.float32)
        self.y = GrowingArray(np.uint8)
        self.key = GrowingArray(np.int32)
        self.swaps: list[dict[str, int]] = []

    def add(self, z: np.ndarray, y: np.ndarray, day: np.ndarray | None = None) -> None:
        """Record margins ``z`` scored before learning, labels ``y`` and optional day keys."""
        start = len(self.margin)
        if day is None:
            day = (start + np.arange(len(z))) // self.window_rows
        self.margin.extend(z)
        self.y.extend(y)
        self.key.extend(day)

    def mark_swap(self, version: int) -> None:
        """Note that a new tree model went live before the next recorded event."""
        self.swaps.append({"row": len(self.margin), "version": int(version)})

    def __len__(self) -> int:
        return len(self.margin)

    def overall(self) -> dict[str, float | int]:
        return summarize(self.margin.values, self.y.values)

    def recent(self, n: int) -> dict[str, float | int]:
        """Metrics over the last ``n`` events (the progress bar's live figures)."""
        return summarize(self.margin.values[-n:], self.y.values[-n:])

    def windows(self) -> list[dict[str, float | int]]:
        """One entry per window, in stream order: ``{"end_row", "auc", "logloss", "rows"}``."""
        key = self.key.values
        if key.size == 0:
            return []
        cuts = np.flatnonzero(np.diff(key)) + 1
        bounds = zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [key.size])), strict=True)
        out = []
        for a, b in bounds:
            entry = {"end_row": int(b), "key": int(key[a])}
            entry.update(summarize(self.margin.values[a:b], self.y.values[a:b]))
            out.append(entry)
        return out

    def around_swaps(self, span: int = 10_000) -> list[dict[str, float | int]]:
        """Progressive logloss in the ``span`` events before and after each tree swap."""
        z, y = self.margin.values, self.y.values
        out = []
        for swap in self.swaps:
            r = swap["row"]
            before = slice(max(0, r - span), r)
            after = slice(r, r + span)
            out.append({
                "row": r,
                "version": swap["version"],
                "logloss_before": logloss_from_margin(z[before], y[before]),
                "logloss_after": logloss_from_margin(z[after], y[after]),
            })
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "window_rows": self.window_rows,
            "margin": self.margin.values.copy(),
            "y": self.y.values.copy(),
            "key": self.key.values.copy(),
            "swaps": [dict(s) for s in self.swaps],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        n = len(state["margin"])
        if len(state["y"]) != n or len(state["key"]) != n:
            raise ValueError("progressive metric state has arrays of different lengths")
        fresh = Progressive(int(state["window_rows"]))
        fresh.margin.extend(np.asarray(state["margin"], np.float32))
        fresh.y.extend(np.asarray(state["y"], np.uint8))
        fresh.key.extend(np.asarray(state["key"], np.int32))
        fresh.swaps = [dict(s) for s in state["swaps"]]
        self.__dict__.update(fresh.__dict__)


def holdout_mask(line: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Seeded, deterministic choice of held-out events by their line number (splitmix64)."""
    x = np.asarray(line, dtype=np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(2**53) < fraction
