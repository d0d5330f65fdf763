"""The bounded label join: unlabelled events wait for their ``{"id", "click"}`` message.

Events that arrive without ``click`` are kept (encoded, with the score they were given) under
their id until a label message with the same id arrives, for at most ``ttl`` seconds and at
most ``capacity`` entries; the oldest go first. Labels that arrive before their event wait the
same way. Whatever leaves unmatched is counted as expired, so memory stays bounded and the
loss is visible.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from streamfusion.features import Batch

DEFAULT_TTL = 900.0  # seconds: Avazu-style click labels arrive within minutes of the impression
DEFAULT_CAPACITY = 200_000  # pending rows; ~0.5 KB each encoded, so ~100 MB at most
_ROW_FIELDS = ("indices", "values", "dense", "time")


class LabelJoin:
    """Pending events and early labels keyed by id, bounded in age and count.

    Parameters
    ----------
    ttl : float
        Seconds an event (or an early label) waits for its partner.
    capacity : int
        Most entries kept on each side; the oldest is evicted (and counted expired) beyond it.
    clock : callable
        Returns seconds; ``time.monotonic`` unless a test injects its own.

    Examples
    --------
    >>> join = LabelJoin(ttl=60, capacity=1000)
    >>> join.add_event("a", row, p=0.1)  # doctest: +SKIP
    >>> matched = join.add_labels([("a", 1)])  # -> a Batch of the joined rows with y set
    """

    def __init__(self, ttl: float = DEFAULT_TTL, capacity: int = DEFAULT_CAPACITY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl <= 0 or capacity <= 0:
            raise ValueError("ttl and capacity must be positive")
        self.ttl = float(ttl)
        self.capacity = int(capacity)
        self.clock = clock
        # id -> (deadline, row arrays, score p); insertion order = deadline order
        self._events: OrderedDict[str, tuple[float, tuple[np.ndarray, ...], float]] = OrderedDict()
        self._labels: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self.expired_events = 0
        self.expired_labels = 0
        self.joined = 0

    def __len__(self) -> int:
        return len(self._events)

    @property
    def pending_labels(self) -> int:
        return len(self._labels)

    def expire(self) -> int:
        """Drop entries past their deadline; returns how many expired now."""
        now = self.clock()
        n = 0
        for store, is_event in ((self._events, True), (self._labels, False)):
            while store:
                key, entry = next(iter(store.items()))
                if entry[0] > now:
                    break
                store.popitem(last=False)
                n += 1
                if is_event:
                    self.expired_events += 1
                else:
                    self.expired_labels += 1
        return n

    def add_events(self, batch: Batch, keys: list[str], p: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Hold the rows of ``batch`` (unlabelled) under ``keys``.

        Returns ``(rows, y)``: rows of ``batch`` whose label had arrived first, with their
        labels; the caller learns from those at once. The other rows wait.
        """
        self.expire()
        deadline = self.clock() + self.ttl
        ready, ready_y = [], []
        for i, key in enumerate(keys):
            early = self._labels.pop(key, None)
            if early is not None:
                ready.append(i)
                ready_y.append(early[1])
                self.joined += 1
                continue
            row = tuple(getattr(batch, f)[i].copy() for f in _ROW_FIELDS)
            self._events.pop(key, None)  # a re-delivered id replaces (never duplicates) its row
            self._events[key] = (deadline, row, float(p[i]))
            if len(self._events) > self.capacity:
                self._events.popitem(last=False)
                self.expired_events += 1
        return np.asarray(ready, dtype=np.int64), np.asarray(ready_y, dtype=np.float32)

    def add_labels(self, labels: list[tuple[str, int]]) -> tuple[Batch | None, np.ndarray]:
        """Join labels with waiting events.

        Returns ``(batch, p)``: the joined rows (``y`` set, ``ids`` = keys) and the scores
        they were given when they arrived (for progressive metrics), or ``(None, [])``.
        Labels whose event has not arrived wait for it.
        """
        self.expire()
        deadline = self.clock() + self.ttl
        rows, ys, ps, ids = [], [], [], []
        for key, click in labels:
            entry = self._events.pop(key, None)
            if entry is None:
                self._labels.pop(key, None)
                self._labels[key] = (deadline, int(click))
                if len(self._labels) > self.capacity:
                    self._labels.popitem(last=False)
                    self.expired_labels += 1
                continue
            rows.append(entry[1])
            ys.append(click)
            ps.append(entry[2])
            ids.append(key)
        self.joined += len(rows)
        if not rows:
            return None, np.zeros(0)
        cols = [np.stack([r[j] for r in rows]) for j in range(len(_ROW_FIELDS))]
        n = len(rows)
        batch = Batch(indices=cols[0], values=cols[1], dense=cols[2],
                      y=np.asarray(ys, dtype=np.float32), line=np.full(n, -1, dtype=np.int64),
                      time=cols[3].astype(np.int64), ids=ids)
        return batch, np.asarray(ps, dtype=np.float64)

    # ------------------------------------------------------------------ state protocol
    def state_dict(self) -> dict[str, Any]:
        """Pending rows and labels with their remaining time to live (clock-independent)."""
        now = self.clock()
        keys = list(self._events)
        entries = list(self._events.values())
        state: dict[str, Any] = {
            "version": 1,
            "event_ids": keys,
            "event_ttl": np.asarray([e[0] - now for e in entries], dtype=np.float64),
            "event_p": np.asarray([e[2] for e in entries], dtype=np.float64),
            "label_ids": list(self._labels),
            "label_ttl": np.asarray([v[0] - now for v in self._labels.values()],
                                    dtype=np.float64),
            "label_click": np.asarray([v[1] for v in self._labels.values()], dtype=np.int8),
            "expired_events": self.expired_events,
            "expired_labels": self.expired_labels,
            "joined": self.joined,
        }
        for j, name in enumerate(_ROW_FIELDS):
            state[f"event_{name}"] = (np.stack([e[1][j] for e in entries]) if entries
                                      else np.zeros(0))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore pending entries; validated whole before anything changes."""
        try:
            if state["version"] != 1:
                raise ValueError(f"label join state version {state['version']!r}, expected 1")
            ids, ttl, ps = state["event_ids"], state["event_ttl"], state["event_p"]
            cols = [np.asarray(state[f"event_{name}"]) for name in _ROW_FIELDS]
            n = len(ids)
            if len(ttl) != n or len(ps) != n or (n and any(len(c) != n for c in cols)):
                raise ValueError("label join state: event arrays disagree in length")
            lids, lttl, lclick = state["label_ids"], state["label_ttl"], state["label_click"]
            if len(lttl) != len(lids) or len(lclick) != len(lids):
                raise ValueError("label join state: label arrays disagree in length")
            counters = (int(state["expired_events"]), int(state["expired_labels"]),
                        int(state["joined"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"label join state is incomplete: {exc!r}") from None
        now = self.clock()
        self._events = OrderedDict(
            (str(k), (now + float(ttl[i]), tuple(c[i] for c in cols), float(ps[i])))
            for i, k in enumerate(ids))
        self._labels = OrderedDict(
            (str(k), (now + float(lttl[i]), int(lclick[i]))) for i, k in enumerate(lids))
        self.expired_events, self.expired_labels, self.joined = counters
