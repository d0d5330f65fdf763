"""Prometheus metrics of the daemon; the rolling AUC / logloss come from ``evaluate.Rolling``.

Each daemon has its own registry (several daemons can live in one test process); ``serve``
exposes it with ``prometheus_client.start_http_server`` on ``--metrics-port``.
"""

from __future__ import annotations

import json

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from streamfusion.evaluate import Rolling

ROLLING_EVENTS = 10_000  # labelled events behind the rolling AUC / logloss


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
        self.joined_clicks = Counter("streamfusion_joined_labels",
                                     "labels joined with their waiting event", registry=r)
        self.window_negatives = Counter("streamfusion_window_negatives",
                                        "events learned as negatives: no click within the "
                                        "label window", registry=r)
        self.late_clicks = Counter("streamfusion_late_clicks",
                                   "clicks after their event was learned as a negative",
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
        self.rolling = Rolling(ROLLING_EVENTS)
        self._rate_t: float | None = None
        self._rate_n = 0.0

    def observe(self, margin: np.ndarray, y: np.ndarray) -> None:
        """Feed the test-then-train margins of labelled events to the rolling metrics (the
        replay's progress bar reads the same :class:`~streamfusion.evaluate.Rolling`)."""
        self.rolling.add(np.asarray(margin, np.float32), np.asarray(y))
        now = self.rolling.summary()
        self.auc.set(now["auc"])
        self.logloss.set(now["logloss"])

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
