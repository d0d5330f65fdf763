"""Atomic checkpoints: round trip, and every kind of corruption refused whole."""

import numpy as np
import pytest

from streamfusion import checkpoint
from streamfusion.checkpoint import CheckpointError


def sample_state(rng):
    return {
        "kind": "test",
        "n": 3,
        "nested": {"w": rng.normal(size=(4, 3)).astype(np.float32), "name": "x",
                   "items": [1, 2.5, None, {"a": np.arange(5)}]},
        "booster": "tree\nversion=v4\n",
    }


def test_round_trip_is_exact(tmp_path, rng):
    state = sample_state(rng)
    checkpoint.save(tmp_path, state)
    back = checkpoint.load(tmp_path)
    assert back["n"] == 3 and back["booster"] == state["booster"]
    assert np.array_equal(back["nested"]["w"], state["nested"]["w"])
    assert back["nested"]["w"].dtype == np.float32
    assert np.array_equal(back["nested"]["items"][3]["a"], np.arange(5))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic", "empty"])
def test_corrupt_checkpoint_is_refused(tmp_path, rng, damage):
    path = checkpoint.save(tmp_path, sample_state(rng))
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[-10] ^= 0xFF
    elif damage == "truncate":
        raw = raw[: len(raw) - 50]
    elif damage == "magic":
        raw[:4] = b"XXXX"
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError):
        checkpoint.load(tmp_path)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "nowhere")


def test_other_format_version_is_refused(tmp_path, rng, monkeypatch):
    checkpoint.save(tmp_path, sample_state(rng))
    monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 99)
    with pytest.raises(CheckpointError, match="format version"):
        checkpoint.load(tmp_path)
