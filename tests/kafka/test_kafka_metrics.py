"""Prometheus metrics and the rolling AUC / logloss (no broker needed)."""

from __future__ import annotations

import json
import socket
import urllib.request

import numpy as np

from streamfusion.evaluate import Rolling, auc, logloss_from_margin
from streamfusion.kafka.metrics import ServeMetrics


def test_rolling_window_matches_exact_metrics_on_the_last_events(rng) -> None:
    r = Rolling(500)
    z = rng.normal(size=1300).astype(np.float32)
    y = (rng.random(1300) < 1 / (1 + np.exp(-z))).astype(np.uint8)
    for start in range(0, 1300, 170):
        r.add(z[start:start + 170], y[start:start + 170])
    got = r.summary()
    assert len(r) == 500 and got["rows"] == 500
    assert got["auc"] == auc(z[-500:], y[-500:])
    assert got["logloss"] == logloss_from_margin(z[-500:], y[-500:])


def test_rolling_is_nan_when_empty() -> None:
    got = Rolling(10).summary()
    assert np.isnan(got["auc"]) and np.isnan(got["logloss"]) and got["rows"] == 0


def test_the_gauges_read_the_rolling_window() -> None:
    m = ServeMetrics()
    m.observe(np.array([2.0, -2.0, 1.0, -1.0]), np.array([1, 0, 1, 0]))
    assert m.sample("streamfusion_rolling_auc") == 1.0
    assert m.sample("streamfusion_rolling_logloss") == logloss_from_margin(
        np.array([2.0, -2.0, 1.0, -1.0], np.float32), np.array([1, 0, 1, 0]))


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
    m.observe(np.array([2.0, -2.0, 1.0, -1.0]), np.array([1, 0, 1, 0]))
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
