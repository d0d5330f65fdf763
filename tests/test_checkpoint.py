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


def raw_file(header, payload=b"", digest=None):
    """Bytes of a checkpoint file with any header, checksummed as the current format does."""
    import hashlib
    import json
    import struct

    head = json.dumps(header).encode()
    body = checkpoint.MAGIC + struct.pack("<Q", len(head)) + head + payload
    return body + (hashlib.sha256(body).digest() if digest is None else digest)


@pytest.mark.parametrize("old,new", [
    (b'"rows_done": 10240', b'"rows_done": 10249'),  # a count in the JSON header
    (b"leaf_value=0.125", b"leaf_value=0.725"),  # a digit of the booster text
    (b'"bytes": 1578421', b'"bytes": 1578420'),  # a source position
])
def test_a_same_length_edit_of_the_header_is_refused(tmp_path, rng, old, new):
    state = {**sample_state(rng), "rows_done": 10240, "position": {"bytes": 1578421},
             "booster": "tree\nnum_leaves=2\nleaf_value=0.125 -0.5\n"}
    path = checkpoint.save(tmp_path, state)
    raw = path.read_bytes()
    assert raw.count(old) == 1
    path.write_bytes(raw.replace(old, new))
    with pytest.raises(CheckpointError, match="corrupt: checksum mismatch"):
        checkpoint.load(tmp_path)


def test_any_flipped_byte_is_refused(tmp_path, rng):
    path = checkpoint.save(tmp_path, sample_state(rng))
    good = path.read_bytes()
    for i in [*range(0, len(good), 7), len(good) - 1]:
        raw = bytearray(good)
        raw[i] ^= 0x01
        path.write_bytes(bytes(raw))
        with pytest.raises(CheckpointError):
            checkpoint.load(tmp_path)


def test_a_version_1_file_is_named_as_such(tmp_path):
    import hashlib

    # version 1: no trailing digest, the payload's SHA-256 in the header
    header = {"format": "streamfusion-checkpoint", "version": 1, "payload_bytes": 0,
              "sha256": hashlib.sha256(b"").hexdigest(), "state": {"n": 1}}
    (tmp_path / checkpoint.STATE_FILE).write_bytes(raw_file(header, digest=b""))
    with pytest.raises(CheckpointError, match="format version 1, this streamfusion reads "
                       f"version {checkpoint.FORMAT_VERSION}"):
        checkpoint.load(tmp_path)


def _empty_npz():
    import io

    buf = io.BytesIO()
    np.savez(buf)
    return buf.getvalue()


EMPTY_NPZ = _empty_npz()
GOOD_HEADER = {"format": "streamfusion-checkpoint", "version": checkpoint.FORMAT_VERSION,
               "payload_bytes": 0, "state": {"n": 1}}


@pytest.mark.parametrize("header,message", [
    ({k: v for k, v in GOOD_HEADER.items() if k != "payload_bytes"}, "malformed header"),
    ({**GOOD_HEADER, "payload_bytes": "0"}, "malformed header"),
    ({k: v for k, v in GOOD_HEADER.items() if k != "state"}, "malformed header"),
    ({**GOOD_HEADER, "state": [1, 2]}, "malformed header"),
    ({**GOOD_HEADER, "state": {"w": {"__array__": "a0"}}}, "malformed payload"),  # no npz
    ({**GOOD_HEADER, "payload_bytes": len(EMPTY_NPZ), "state": {"w": {"__array__": "a0"}}},
     "malformed payload"),  # an npz without the array
    ([1, 2], "not a streamfusion checkpoint"),
])
def test_a_malformed_header_with_a_valid_checksum_is_a_clear_error(tmp_path, header, message):
    """A writer's bug, not corruption: still a CheckpointError, never a KeyError."""
    payload = EMPTY_NPZ if isinstance(header, dict) and header.get("payload_bytes") else b""
    (tmp_path / checkpoint.STATE_FILE).write_bytes(raw_file(header, payload))
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(tmp_path)


def test_require_names_a_missing_or_mistyped_key():
    state = {"rows_done": 5, "flag": True, "file": "x"}
    assert checkpoint.require(state, "rows_done", int) == 5
    with pytest.raises(CheckpointError, match="'encoder' is missing"):
        checkpoint.require(state, "encoder", dict)
    with pytest.raises(CheckpointError, match="'file' should be int, got str"):
        checkpoint.require(state, "file", int)
    with pytest.raises(CheckpointError, match="'flag' should be int, got bool"):
        checkpoint.require(state, "flag", int)
    with pytest.raises(CheckpointError, match="is missing"):
        checkpoint.require([1], "rows_done", int)
