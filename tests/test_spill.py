"""Append-only spill files: CRC'd prefixes, resume, fixed-size records."""

import zlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfusion.checkpoint import CheckpointError
from streamfusion.spill import RECORD, RecordSpill, SpillFile


def test_spill_file_tracks_length_and_crc_of_what_it_wrote(tmp_path):
    f = SpillFile(tmp_path / "a.spill")
    f.append(b"hello ")
    f.append(np.arange(5, dtype=np.int32))
    state = f.state_dict()
    raw = (tmp_path / "a.spill").read_bytes()
    assert state == {"bytes": len(raw), "crc": zlib.crc32(raw)} and len(raw) == 26
    assert f.pread(6, 4) == np.int32(0).tobytes()
    with f.reader() as r:
        assert r.read() == raw
    f.close()


def test_resume_keeps_the_pinned_prefix_and_drops_the_rest(tmp_path):
    path = tmp_path / "a.spill"
    f = SpillFile(path)
    f.append(b"x" * 100)
    state = f.state_dict()
    f.append(b"written after the checkpoint")
    f.close()
    g = SpillFile.resume(path, state, "test")
    assert path.stat().st_size == 100 and g.nbytes == 100
    g.append(b"y")
    assert g.state_dict()["crc"] == zlib.crc32(b"x" * 100 + b"y")
    g.close()


@pytest.mark.parametrize("damage,message", [("missing", "missing"), ("short", "shorter"),
                                            ("flip", "corrupt"), ("no state", "no valid state")])
def test_resume_refuses_a_damaged_file(tmp_path, damage, message):
    path = tmp_path / "a.spill"
    f = SpillFile(path)
    f.append(bytes(range(256)) * 300)
    state = f.state_dict()
    f.close()
    raw = bytearray(path.read_bytes())
    if damage == "missing":
        path.unlink()
    elif damage == "short":
        path.write_bytes(raw[:-10])
    elif damage == "flip":
        raw[-3] ^= 0x80
        path.write_bytes(bytes(raw))
    else:
        state = {}
    with pytest.raises(CheckpointError, match=message):
        SpillFile.resume(path, state, "test")


@given(st.lists(st.integers(0, 50), max_size=30), st.integers(1, 40))
def test_records_do_not_depend_on_batch_or_flush_sizes(tmp_path_factory, sizes, flush_rows):
    n = sum(sizes)
    rng = np.random.default_rng(n)
    z = rng.normal(size=n).astype(np.float32)
    y = (rng.random(n) < 0.5).astype(np.float32)
    key = rng.integers(-5, 5, n)
    line = np.cumsum(rng.integers(1, 3, n)) + 2**33  # past int32: Criteo's 4e9 lines fit
    d = tmp_path_factory.mktemp("r")
    s = RecordSpill(d / "a.spill", flush_rows=flush_rows)
    i = 0
    for size in sizes:
        s.append(z[i : i + size], y[i : i + size], key[i : i + size], line[i : i + size])
        i += size
    assert len(s) == n
    rec = s.read(0, n)
    assert np.array_equal(rec["z"], z) and np.array_equal(rec["y"], y.astype(np.uint8))
    assert np.array_equal(rec["key"], key) and np.array_equal(rec["line"], line)
    chunks = list(s.chunks(1, n, 7))
    assert all(len(c) <= 7 for c in chunks)
    if n > 1:
        assert np.array_equal(np.concatenate(chunks)["z"], z[1:])
    state = s.state_dict()
    s.close()
    one = RecordSpill(d / "b.spill", flush_rows=10**6)
    one.append(z, y, key, line)
    assert one.state_dict() == state  # same bytes, same CRC
    one.close(remove=True)
    assert not (d / "b.spill").exists()
    assert (d / "a.spill").stat().st_size == n * RECORD.itemsize


def test_record_resume_checks_the_row_count(tmp_path):
    s = RecordSpill(tmp_path / "a.spill")
    s.append(np.ones(10, np.float32), np.ones(10), np.zeros(10), np.arange(10))
    state = s.state_dict()
    s.close()
    again = RecordSpill.resume(tmp_path / "a.spill", state, "test")
    assert len(again) == 10
    again.close()
    with pytest.raises(CheckpointError, match="row count"):
        RecordSpill.resume(tmp_path / "a.spill", {**state, "rows": 11}, "test")


def test_records_of_another_layout_are_refused_not_misread(tmp_path):
    """A checkpoint of the 9-byte records (no line) written before lines were kept."""
    path = tmp_path / "old.spill"
    path.write_bytes(bytes(9 * 17))  # 17 old records: as many bytes as 9 new ones
    old = {"bytes": 9 * 17, "crc": zlib.crc32(bytes(9 * 17)), "rows": 17}
    with pytest.raises(CheckpointError, match=r"another layout \(z<f4,y\|u1,key<i4, this "
                                              r"version writes z<f4,y\|u1,key<i4,line<i8\)"):
        RecordSpill.resume(path, old, "progressive metrics")
    assert path.stat().st_size == 9 * 17  # refused before the file was touched
