"""Shared fixtures: hypothesis profiles, a fixed-seed rng, the real data samples, and the check
of every replay report a test writes against docs/report.schema.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=30,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real click-log samples beside the repository; skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data samples not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def reports_follow_the_schema(monkeypatch):
    """Every replay report a test writes is read back and validated against the documented
    schema: the docs cannot fall behind the reports."""
    from report_schema import check_report

    import streamfusion.replay as replay_mod

    write = replay_mod.write_json

    def write_and_check(path, report):
        write(path, report)
        check_report(json.loads(Path(path).read_text()))

    monkeypatch.setattr(replay_mod, "write_json", write_and_check)
