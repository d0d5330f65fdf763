"""The bounded label join: unlabelled events wait for their label message.

Two ways labels come, both bounded in age and count (the oldest go first, and whatever leaves
unmatched is counted, so memory stays bounded and the loss is visible):

- **Explicit labels** ``{"id", "click": 0|1}``: an event waits for its label at most ``ttl``
  seconds; a label that comes before its event waits the same way.
- **Clicks only** (``window`` seconds, the "online joiner" of He et al. 2014): when its window
  closes, an event is learned as a positive if a click for it came within the window, else as
  a negative. Every event is learned the same time after its impression, in impression order,
  whatever its label: learning a click the moment it comes would let the model see recent
  positives beside older negatives (a click-rate bias) and learn in batches of one class
  (which on generated logs cost 0.07 AUC). A click that comes after its event was learned as
  a negative is a *late click*:
  counted, and (``correct_late``) learned as a positive too, the fake-negative treatment of
  Ktena et al. 2019 (*Addressing delayed feedback for continuous training with neural
  networks in CTR prediction*). Their importance weights undo the bias the duplicated
  positives give the training distribution (:func:`delayed_feedback_weights`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from streamfusion.evaluate import sigmoid
from streamfusion.features import Batch

DEFAULT_TTL = 900.0  # seconds: Avazu-style click labels arrive within minutes of the impression
DEFAULT_CAPACITY = 200_000  # pending rows; ~0.5 KB each encoded, so ~100 MB at most
STATE_VERSION = 2
_ROW_FIELDS = ("indices", "values", "dense", "time")
COUNTERS = ("expired_events", "expired_labels", "joined", "window_negatives", "late_clicks")

# id -> (deadline, row arrays, margin the event was scored with); insertion = deadline order
_Rows = OrderedDict[str, tuple[float, tuple[np.ndarray, ...], float]]


def delayed_feedback_weights(y: np.ndarray, margin: np.ndarray, late_share: float
                             ) -> np.ndarray:
    """Loss weights of the fake-negative correction, for a label window.

    With a window, the learned stream holds every negative once, every click within the
    window once (a positive) and every late click twice (a negative, then a positive). If a
    click is late with probability ``q`` (``late_share``, as observed) and ``p`` is the
    model's click probability (the event's score, held constant), the stream's click rate is
    ``b = p / (1 + p q)``, and importance weights ``p / b = 1 + p q`` for positives and
    ``(1 - p) / (1 - b) = (1 - p)(1 + p q) / (1 - p + p q)`` for negatives make its expected
    loss the true one. With ``q = 1`` (every positive first learned as a negative) these are
    Ktena et al.'s ``1 + p`` and ``(1 - p)(1 + p)``; with no late click, 1.
    """
    p = sigmoid(margin)
    q = float(late_share)
    pos = 1.0 + p * q
    neg = (1.0 - p) * pos / (1.0 - p + p * q)
    return np.where(np.asarray(y) > 0.5, pos, neg).astype(np.float32)


class LabelJoin:
    """Pending events and early labels keyed by id, bounded in age and count.

    Parameters
    ----------
    ttl : float
        Seconds an event waits for an explicit label, an early label for its event, and a
        learned negative for a late click.
    capacity : int
        Most entries kept in each store; the oldest is evicted (and counted) beyond it.
    clock : callable
        Returns seconds; ``time.monotonic`` unless a test injects its own.
    window : float, optional
        Clicks only: seconds after which an event without a click is a negative (0: at once,
        and every click is a late click: Ktena et al.'s own setting).
    correct_late : bool
        Clicks only: learn a late click as a positive (weighted), besides counting it.

    Examples
    --------
    >>> join = LabelJoin(window=60)
    >>> join.add_events(batch, ["a", "b"], margins)  # doctest: +SKIP
    >>> join.add_labels([("a", 1)])  # -> ("a" as a positive, its margin, ...)  # doctest: +SKIP
    >>> join.due()  # 60 s later: "b" as a negative  # doctest: +SKIP
    """

    def __init__(self, ttl: float = DEFAULT_TTL, capacity: int = DEFAULT_CAPACITY,
                 clock: Callable[[], float] = time.monotonic, window: float | None = None,
                 correct_late: bool = True) -> None:
        if ttl <= 0 or capacity <= 0 or (window is not None and window < 0):
            raise ValueError("ttl and capacity must be positive, the label window not negative")
        self.ttl = float(ttl)
        self.capacity = int(capacity)
        self.clock = clock
        self.window = None if window is None else float(window)
        self.correct_late = bool(correct_late)
        self._events: _Rows = OrderedDict()
        self._clicked: set[str] = set()  # clicks only: waiting events that got their click
        self._negatives: _Rows = OrderedDict()  # learned as negatives: a click may come late
        self._labels: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self.expired_events = 0
        self.expired_labels = 0
        self.joined = 0
        self.window_negatives = 0
        self.late_clicks = 0

    def __len__(self) -> int:
        return len(self._events)

    @property
    def pending_labels(self) -> int:
        return len(self._labels)

    @property
    def clicks_only(self) -> bool:
        return self.window is not None

    def late_share(self) -> float:
        """Share of the clicks seen so far that came after their window (0 before any)."""
        clicks = self.joined + self.late_clicks
        return self.late_clicks / clicks if clicks else 0.0

    def _drop_old(self, store: OrderedDict, now: float) -> int:
        n = 0
        while store and next(iter(store.values()))[0] <= now:
            store.popitem(last=False)
            n += 1
        return n

    def expire(self) -> int:
        """Drop early labels and (explicit labels) events past their deadline; returns how
        many expired now. Clicks-only events are not dropped: :meth:`due` learns them."""
        now = self.clock()
        n = self._drop_old(self._labels, now)
        self.expired_labels += n
        if not self.clicks_only:
            dropped = self._drop_old(self._events, now)
            self.expired_events += dropped
            n += dropped
        self._drop_old(self._negatives, now)  # no late click will come for these now
        return n

    def due(self) -> tuple[Batch | None, np.ndarray]:
        """Clicks only: the events whose window passed, in impression order, each a positive
        if its click came within the window, else a negative (``(batch, margins at
        scoring)``, or ``(None, [])``)."""
        if not self.clicks_only:
            return None, np.zeros(0)
        now = self.clock()
        keys, rows, ys, margins = [], [], [], []
        while self._events and next(iter(self._events.values()))[0] <= now:
            key, (_, row, margin) = self._events.popitem(last=False)
            clicked = key in self._clicked
            keys.append(key)
            rows.append(row)
            ys.append(int(clicked))
            margins.append(margin)
            if clicked:
                self._clicked.discard(key)
            else:
                self.window_negatives += 1
                self._keep(self._negatives, key, (now + self.ttl, row, margin))  # late clicks
        return self._batch(keys, rows, ys), np.asarray(margins, np.float32)

    def _keep(self, store: OrderedDict, key: str, entry: tuple) -> None:
        store.pop(key, None)  # a re-delivered id replaces (never duplicates) its entry
        store[key] = entry
        if len(store) > self.capacity:
            old, _ = store.popitem(last=False)
            if store is self._events:
                self._clicked.discard(old)
                self.expired_events += 1
            elif store is self._labels:
                self.expired_labels += 1

    def add_events(self, batch: Batch, keys: list[str], margin: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Hold the rows of ``batch`` (unlabelled, scored with ``margin``) under ``keys``.

        Returns ``(rows, y)``: rows of ``batch`` whose label had arrived first, with their
        labels; the caller learns from those at once. The other rows wait.
        """
        self.expire()
        deadline = self.clock() + (self.window if self.clicks_only else self.ttl)
        ready, ready_y = [], []
        for i, key in enumerate(keys):
            early = self._labels.pop(key, None)
            if early is not None:
                self.joined += 1
                if not self.clicks_only:
                    ready.append(i)
                    ready_y.append(early[1])
                    continue
                if early[1] == 1:  # learned with the others when its window closes
                    self._clicked.add(key)
            row = tuple(getattr(batch, f)[i].copy() for f in _ROW_FIELDS)
            self._keep(self._events, key, (deadline, row, float(margin[i])))
        return np.asarray(ready, dtype=np.int64), np.asarray(ready_y, dtype=np.float32)

    def add_labels(self, labels: list[tuple[str, int]]) -> tuple[Batch | None, np.ndarray]:
        """Join labels with waiting events (and, clicks only, late clicks with the events
        learned as negatives).

        Returns ``(batch, margins)``: the rows to learn (``y`` set, ``ids`` = keys) and the
        margins they were scored with when they arrived (for progressive metrics), or
        ``(None, [])``. Labels whose event has not arrived wait for it.
        """
        self.expire()
        deadline = self.clock() + self.ttl
        keys, rows, ys, margins = [], [], [], []
        for key, click in labels:
            if self.clicks_only and key in self._events:
                self.joined += 1
                if click == 1:  # within the window: learned when the window closes
                    self._clicked.add(key)
                continue
            entry = self._events.pop(key, None)
            if entry is None and self.clicks_only and click == 1:
                entry = self._negatives.pop(key, None)
                if entry is not None:
                    self.late_clicks += 1
                    if not self.correct_late:
                        continue
            elif entry is not None:
                self.joined += 1
            if entry is None:
                self._keep(self._labels, key, (deadline, int(click)))
                continue
            keys.append(key)
            rows.append(entry[1])
            ys.append(click)
            margins.append(entry[2])
        return self._batch(keys, rows, ys), np.asarray(margins, dtype=np.float32)

    @staticmethod
    def _batch(keys: list[str], rows: list, ys: list) -> Batch | None:
        if not rows:
            return None
        cols = [np.stack([r[j] for r in rows]) for j in range(len(_ROW_FIELDS))]
        n = len(rows)
        return Batch(indices=cols[0], values=cols[1], dense=cols[2],
                     y=np.asarray(ys, dtype=np.float32), line=np.full(n, -1, dtype=np.int64),
                     time=cols[3].astype(np.int64), ids=list(keys))

    def weights(self, y: np.ndarray, margin: np.ndarray) -> np.ndarray | None:
        """Loss weights of rows this join hands out (clicks only, with the late-click
        correction); None otherwise."""
        if not (self.clicks_only and self.correct_late):
            return None
        return delayed_feedback_weights(y, margin, self.late_share())

    # ------------------------------------------------------------------ state protocol
    def state_dict(self) -> dict[str, Any]:
        """Pending rows, learned negatives and early labels with their remaining time to
        live (clock-independent), and the counters."""
        now = self.clock()
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "label_ids": list(self._labels),
            "label_ttl": np.asarray([v[0] - now for v in self._labels.values()],
                                    dtype=np.float64),
            "label_click": np.asarray([v[1] for v in self._labels.values()], dtype=np.int8),
            "clicked_ids": sorted(self._clicked),
            **{name: getattr(self, name) for name in COUNTERS},
        }
        for name, store in (("event", self._events), ("negative", self._negatives)):
            entries = list(store.values())
            state[f"{name}_ids"] = list(store)
            state[f"{name}_ttl"] = np.asarray([e[0] - now for e in entries], dtype=np.float64)
            state[f"{name}_margin"] = np.asarray([e[2] for e in entries], dtype=np.float32)
            for j, field in enumerate(_ROW_FIELDS):
                state[f"{name}_{field}"] = (np.stack([e[1][j] for e in entries]) if entries
                                            else np.zeros(0))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore pending entries; validated whole before anything changes."""
        now = self.clock()
        try:
            if state["version"] != STATE_VERSION:
                raise ValueError(f"label join state version {state['version']!r}, expected "
                                 f"{STATE_VERSION}")
            stores = []
            for name in ("event", "negative"):
                ids, ttl, margin = (state[f"{name}_ids"], state[f"{name}_ttl"],
                                    state[f"{name}_margin"])
                cols = [np.asarray(state[f"{name}_{f}"]) for f in _ROW_FIELDS]
                n = len(ids)
                if len(ttl) != n or len(margin) != n or (n and any(len(c) != n for c in cols)):
                    raise ValueError(f"label join state: {name} arrays disagree in length")
                stores.append(OrderedDict(
                    (str(k), (now + float(ttl[i]), tuple(c[i] for c in cols),
                              float(margin[i]))) for i, k in enumerate(ids)))
            lids, lttl, lclick = state["label_ids"], state["label_ttl"], state["label_click"]
            if len(lttl) != len(lids) or len(lclick) != len(lids):
                raise ValueError("label join state: label arrays disagree in length")
            counters = [int(state[name]) for name in COUNTERS]
            clicked = {str(k) for k in state["clicked_ids"]}
        except (KeyError, TypeError) as exc:
            raise ValueError(f"label join state is incomplete: {exc!r}") from None
        self._events, self._negatives = stores
        self._clicked = clicked & set(self._events)
        self._labels = OrderedDict(
            (str(k), (now + float(lttl[i]), int(lclick[i]))) for i, k in enumerate(lids))
        for name, value in zip(COUNTERS, counters, strict=True):
            setattr(self, name, value)
