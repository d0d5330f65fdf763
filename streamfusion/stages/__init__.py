"""The stages of a chain: ``trees`` (LightGBM) and ``residual`` (the compiled learner)."""

from __future__ import annotations

import math


def click_logodds(clicks: float, n: int) -> float:
    """Smoothed log-odds of the click rate, (clicks + 1) / (n + 2): a first stage's margin
    before it has learned anything (trees before their first fit, a learner's prior)."""
    return math.log((clicks + 1.0) / (n - clicks + 1.0))


def state_config(state: object, fmt: str, version: int, what: str) -> dict:
    """Check a stage state's header and return its config; ValueError names what is wrong."""
    if not isinstance(state, dict):
        raise ValueError(f"{what} state must be a dict")
    if state.get("format") != fmt or state.get("format_version") != version:
        raise ValueError(f"not a {fmt} v{version} state: format={state.get('format')!r}, "
                         f"version={state.get('format_version')!r}")
    cfg = state.get("config")
    if not isinstance(cfg, dict):
        raise ValueError(f"{what} state has no config")
    return cfg
