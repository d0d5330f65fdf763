"""The stages of a chain: ``base`` (LightGBM trees) and ``residual`` (the compiled learner)."""

from __future__ import annotations


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
