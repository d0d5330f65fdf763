"""Prometheus metrics of the daemon; the rolling AUC / logloss come from ``evaluate.Rolling``.

Each daemon has its own registry (several daemons can live in one test process); ``serve``
exposes it on ``--metrics-host``:``--metrics-port``: ``/metrics`` (Prometheus), ``/healthz``
(the process is alive: always 200), ``/readyz`` (200 once it owns partitions and has a model,
else 503 with the reason); any other path is 404.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from streamfusion.evaluate import Rolling

ROLLING_EVENTS = 10_000  # labelled events behind the rolling AUC / logloss
# seconds from an event's produce timestamp to its output: from a few ms at full speed to
# minutes behind a backlog
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 300.0)


class LatencyHistogram(Collector):
    """A Prometheus histogram fed a whole mini-batch at once (one ``np.searchsorted`` per
    batch, where ``Histogram.observe`` per event would cost the scoring budget).

    Examples
    --------
    >>> h = LatencyHistogram("lat", "latency")
    >>> h.observe_many(np.array([0.002, 0.02, 7.0]))
    >>> h.count, round(h.sum, 3)
    (3, 7.022)
    """

    def __init__(self, name: str, documentation: str,
                 buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = np.asarray(buckets, dtype=np.float64)
        self.counts = np.zeros(len(buckets) + 1, dtype=np.int64)  # the last: +Inf
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe_many(self, seconds: np.ndarray) -> None:
        seconds = np.asarray(seconds, dtype=np.float64)
        seconds = seconds[np.isfinite(seconds)]
        if not len(seconds):
            return
        where = np.searchsorted(self.bounds, seconds, side="left")  # le: x <= bound
        add = np.bincount(where, minlength=len(self.counts))
        with self._lock:
            self.counts += add
            self.sum += float(seconds.sum())
            self.count += len(seconds)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self.counts).tolist()
            total = self.sum
        buckets = [(repr(float(b)), c) for b, c in zip(self.bounds.tolist(), cumulative,
                                                        strict=False)]
        buckets.append(("+Inf", cumulative[-1]))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets,
                                    sum_value=total)


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
        self.latency = LatencyHistogram(
            "streamfusion_end_to_end_latency_seconds",
            "from an event's produce timestamp to the production of its score")
        r.register(self.latency)
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

    def serve_http(self, port: int, addr: str = "127.0.0.1",
                   ready: Callable[[], str | None] = lambda: None
                   ) -> tuple[ThreadingHTTPServer, threading.Thread]:
        """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``http://addr:port``.

        ``ready`` returns None when the daemon is ready, else why not (the 503 body).
        Returns the server (``shutdown()`` stops it) and its thread."""
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server interface
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n")
                elif path == "/readyz":
                    why = ready()
                    self._send(503, f"not ready: {why}\n".encode()) if why else \
                        self._send(200, b"ready\n")
                else:
                    self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # scrapes every few seconds would flood the daemon's log

        server = ThreadingHTTPServer((addr, port), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, name="streamfusion-metrics",
                                  daemon=True)
        thread.start()
        return server, thread
