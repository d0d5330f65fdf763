"""Prometheus metrics and the rolling AUC / logloss (no broker needed)."""

from __future__ import annotations

import json
import socket
import urllib.request

import numpy as np

from streamfusion.evaluate import auc
from streamfusion.kafka.metrics import Rolling, ServeMetrics


def test_rolling_window_matches_exact_metrics_on_the_last_events(rng) -> None:
    r = Rolling(size=500)
    p = rng.random(1300)
    y = (rng.random(1300) < p).astype(float)
    for start in range(0, 1300, 170):
        r.add(p[start:start + 170], y[start:start + 170])
    a, ll = r.values()
    assert len(r) == 500
    assert a == auc(p[-500:], y[-500:])
    expected = -np.mean(y[-500:] * np.log(p[-500:]) + (1 - y[-500:]) * np.log1p(-p[-500:]))
    assert abs(ll - expected) < 1e-12


def test_rolling_is_nan_when_empty() -> None:
    a, ll = Rolling().values()
    assert np.isnan(a) and np.isnan(ll)


def test_lag_from_librdkafka_statistics() -> None:
    m = ServeMetrics()
    stats = {"topics": {"t": {"partitions": {
        "0": {"fetch_state": "active", "consumer_lag": 7},
        "1": {"fetch_state": "active", "consumer_lag": 5},
        "2": {"fetch_state": "none", "consumer_lag": 100},
        "-1": {"fetch_state": "none", "consumer_lag": 50}}}}}
    m.on_stats(json.dumps(stats))
    assert m.sample("streamfusion_consumer_lag") == 12


def test_metrics_are_served_over_http() -> None:
    m = ServeMetrics()
    m.events.inc(42)
    m.dead_lettered.inc(2)
    m.observe_predictions(np.array([0.9, 0.1, 0.8, 0.3]), np.array([1, 0, 1, 0]))
    m.tick(0.0, 0)
    m.tick(2.0, 42)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server, _ = m.serve_http(port)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        server.shutdown()
    text = text.decode()
    assert "streamfusion_events_total 42.0" in text
    assert "streamfusion_dead_lettered_total 2.0" in text
    assert "streamfusion_rolling_auc 1.0" in text
    assert "streamfusion_events_per_second 21.0" in text
