"""Prometheus metrics of the daemon, and the rolling AUC / logloss behind two of them.

Each daemon has its own registry (several daemons can live in one test process); ``serve``
exposes it with ``prometheus_client.start_http_server`` on ``--metrics-port``.
"""

from __future__ import annotations

import json
from collections import deque

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from streamfusion.evaluate import auc

ROLLING_EVENTS = 10_000  # labelled events behind the rolling AUC / logloss
PROB_EPS = 1e-15  # probabilities are clamped only here, in metrics


class Rolling:
    """AUC and logloss over the last ``size`` labelled predictions."""

    def __init__(self, size: int = ROLLING_EVENTS) -> None:
        self.size = int(size)
        self._p: deque[np.ndarray] = deque()
        self._y: deque[np.ndarray] = deque()
        self._n = 0

    def add(self, p: np.ndarray, y: np.ndarray) -> None:
        p = np.asarray(p, dtype=np.float64)[-self.size:]
        y = np.asarray(y, dtype=np.float64)[-self.size:]
        if p.size == 0:
            return
        self._p.append(p)
        self._y.append(y)
        self._n += p.size
        while self._n - self._p[0].size >= self.size:
            self._n -= self._p.popleft().size
            self._y.popleft()

    def __len__(self) -> int:
        return min(self._n, self.size)

    def values(self) -> tuple[float, float]:
        """``(auc, logloss)``; NaN when there is nothing (or one class only, for AUC)."""
        if not self._n:
            return float("nan"), float("nan")
        p = np.concatenate(self._p)[-self.size:]
        y = np.concatenate(self._y)[-self.size:]
        pc = np.clip(p, PROB_EPS, 1.0 - PROB_EPS)
        ll = float(-np.mean(y * np.log(pc) + (1.0 - y) * np.log1p(-pc)))
        return auc(p, y), ll


class ServeMetrics:
    """The daemon's counters and gauges in a registry of its own.

    Examples
    --------
    >>> m = ServeMetrics()
    >>> m.events.inc(3)
    >>> m.sample("streamfusion_events_total")
    3.0
    """

    def __init__(self, role: str = "both") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("streamfusion_events", "input events consumed", registry=r)
        self.scored = Counter("streamfusion_scored", "events scored and produced", registry=r)
        self.learned = Counter("streamfusion_learned", "labelled events learned", registry=r)
        self.dead_lettered = Counter("streamfusion_dead_lettered",
                                     "messages sent to the dead-letter topic", registry=r)
        self.expired = Counter("streamfusion_expired_joins",
                               "events or labels whose partner never came within the TTL",
                               registry=r)
        self.commits = Counter("streamfusion_commits", "offset commits", registry=r)
        self.kafka_errors = Counter("streamfusion_kafka_errors",
                                    "client errors (broker down, timeouts)", registry=r)
        self.lag = Gauge("streamfusion_consumer_lag", "messages behind the log end",
                         registry=r)
        self.events_per_second = Gauge("streamfusion_events_per_second",
                                       "input events per second, last interval", registry=r)
        self.auc = Gauge("streamfusion_rolling_auc",
                         f"progressive AUC over the last {ROLLING_EVENTS} labelled events",
                         registry=r)
        self.logloss = Gauge("streamfusion_rolling_logloss",
                             f"progressive logloss over the last {ROLLING_EVENTS} labelled events",
                             registry=r)
        self.model_version = Gauge("streamfusion_model_version",
                                   "model version scoring events", registry=r)
        self.pending_joins = Gauge("streamfusion_pending_joins", "events waiting for labels",
                                   registry=r)
        self.role = role
        self.rolling = Rolling()
        self._rate_t: float | None = None
        self._rate_n = 0.0

    def observe_predictions(self, p: np.ndarray, y: np.ndarray) -> None:
        """Feed test-then-train predictions of labelled events to the rolling metrics."""
        self.rolling.add(p, y)
        a, ll = self.rolling.values()
        self.auc.set(a)
        self.logloss.set(ll)

    def tick(self, now: float, total: float) -> None:
        """Update the events/s gauge from the running count of events."""
        if self._rate_t is not None and now > self._rate_t:
            self.events_per_second.set((total - self._rate_n) / (now - self._rate_t))
        self._rate_t, self._rate_n = now, total

    def on_stats(self, stats_json: str) -> None:
        """librdkafka statistics callback: sum of ``consumer_lag`` over owned partitions."""
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        lag = 0
        for topic in stats.get("topics", {}).values():
            for pid, part in topic.get("partitions", {}).items():
                if pid == "-1" or part.get("fetch_state") not in ("active", "offset-wait"):
                    continue
                value = part.get("consumer_lag", -1)
                if value is not None and value > 0:
                    lag += value
        self.lag.set(lag)

    def sample(self, name: str) -> float | None:
        """Current value of one sample, e.g. ``streamfusion_events_total`` (for tests)."""
        return self.registry.get_sample_value(name)

    def serve_http(self, port: int, addr: str = "127.0.0.1"):
        """Expose the registry on ``http://addr:port/metrics``; returns the server."""
        return start_http_server(port, addr=addr, registry=self.registry)
