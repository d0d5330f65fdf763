"""End to end: `streamfusion replay` on generated streams and on the real samples."""

import gzip
import json
import re
import shutil
import tempfile

import pytest

from streamfusion import checkpoint
from streamfusion.cli import main
from streamfusion.data.generate import generate

ROWS = 40_000
SMALL_MODEL = ["--trees", "20", "--leaves", "15", "--refit-every", "10000", "--first-fit", "4000",
               "--window", "20000",
               "--hidden", "32,32", "--bits", "16", "--quiet", "--batch-size", "512"]


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "avazu.csv"
    generate(path, format="avazu", rows=ROWS, seed=7)
    return path


def replay(tmp_path, *args, name="report.json"):
    report = tmp_path / name
    code = main(["replay", *args, "--report", str(report)])
    return code, (json.loads(report.read_text()) if report.exists() else None)


def strip_timing(report):
    report = dict(report)
    for key in ("seconds", "events_per_second"):
        report.pop(key)
    return json.dumps(report, sort_keys=True)


def test_report_has_the_design_contract(stream, tmp_path):
    code, r = replay(tmp_path, "--file", str(stream), *SMALL_MODEL,
                     "--plot", str(tmp_path / "run.png"))
    assert code == 0
    assert r["rows"] == ROWS
    assert r["progressive"]["rows"] + r["holdout"]["rows"] == ROWS
    assert 0.08 < r["holdout"]["rows"] / ROWS < 0.12 and r["holdout"]["mode"] == "random"
    assert r["model"]["stages"] == ["trees", "deepfm"] and r["model"]["refits"] >= 3
    assert r["progressive"]["auc"] > 0.6 and r["holdout"]["auc"] > 0.6
    assert r["windows"] and r["windows"][-1]["end_row"] == r["progressive"]["rows"]
    assert {"end_row", "auc", "logloss"} <= set(r["windows"][0])
    assert r["skipped_rows"] == 0 and r["events_per_second"] > 0
    assert (tmp_path / "run.png").stat().st_size > 10_000


def test_rows_limit_and_chrono_holdout(stream, tmp_path):
    code, r = replay(tmp_path, "--file", str(stream), *SMALL_MODEL, "--rows", "20000",
                     "--holdout-mode", "chrono", "--model", "fm")
    assert code == 0 and r["rows"] == 20000
    assert r["holdout"]["mode"] == "chrono" and r["holdout"]["rows"] == 2000


class Crash(Exception):
    pass


def test_resume_after_a_crash_ends_with_the_same_report(stream, tmp_path, monkeypatch):
    from streamfusion import replay as replay_mod

    args = ["--file", str(stream), *SMALL_MODEL, "--checkpoint", str(tmp_path / "ckpt"),
            "--checkpoint-every", "8192"]
    code, whole = replay(tmp_path, "--file", str(stream), *SMALL_MODEL, name="whole.json")
    assert code == 0

    original_run = replay_mod.Replay.run

    def crashing_run(self, progress=None):
        def bomb(r):
            if r.rows_done >= 21_000:  # after the checkpoint at 16,384, before the next
                # events past the checkpoint reached the spill files before the crash
                r.progressive._spill.flush()
                r.holdout._flush()
                raise Crash
        return original_run(self, bomb)

    monkeypatch.setattr(replay_mod.Replay, "run", crashing_run)
    with pytest.raises(Crash):
        replay(tmp_path, *args, name="crashed.json")
    monkeypatch.setattr(replay_mod.Replay, "run", original_run)
    pinned = checkpoint.load(tmp_path / "ckpt")["progressive"]["spill"]["bytes"]
    assert (tmp_path / "ckpt" / "progressive.spill").stat().st_size > pinned
    code, resumed = replay(tmp_path, *args, "--resume", name="resumed.json")
    assert code == 0
    assert strip_timing(resumed) == strip_timing(whole)


def test_corrupt_checkpoint_is_refused(stream, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    code, _ = replay(tmp_path, "--file", str(stream), *SMALL_MODEL, "--rows", "10000",
                     "--checkpoint", str(ckpt), "--checkpoint-every", "5000")
    assert code == 0
    state = ckpt / "state.sfck"
    raw = bytearray(state.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    state.write_bytes(bytes(raw))
    code, _ = replay(tmp_path, "--file", str(stream), *SMALL_MODEL, "--checkpoint", str(ckpt),
                     "--resume", name="r2.json")
    assert code == 1
    assert "corrupt" in capsys.readouterr().err


@pytest.fixture(scope="module")
def finished_checkpoint(stream, tmp_path_factory):
    """A checkpoint directory of a finished 10,000-row run, and that run's report."""
    d = tmp_path_factory.mktemp("finished")
    code, r = replay(d, "--file", str(stream), *SMALL_MODEL, "--rows", "10000",
                     "--checkpoint", str(d / "ckpt"), "--checkpoint-every", "5000")
    assert code == 0
    return d / "ckpt", r


@pytest.mark.parametrize("name,damage,message", [
    (None, None, None),
    ("progressive.spill", "missing", "progressive metrics file .* is missing"),
    ("progressive.spill", "short", "progressive metrics file .* is shorter"),
    ("progressive.spill", "corrupt", "progressive metrics file .* is corrupt"),
    ("holdout.npy-stream", "missing", "held-out events file .* is missing"),
    ("holdout.npy-stream", "corrupt", "held-out events file .* is corrupt"),
])
def test_resume_refuses_a_checkpoint_whose_spill_is_damaged(
        finished_checkpoint, stream, tmp_path, capsys, name, damage, message):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(finished_checkpoint[0], ckpt)
    if name is not None:
        path = ckpt / name
        raw = bytearray(path.read_bytes())
        assert len(raw) > 1000
        if damage == "missing":
            path.unlink()
        elif damage == "short":  # shorter than the prefix the checkpoint pinned
            pinned = checkpoint.load(ckpt)["progressive"]["spill"]["bytes"]
            path.write_bytes(raw[:pinned - 9])
        else:
            raw[len(raw) // 2] ^= 0x10
            path.write_bytes(bytes(raw))
    capsys.readouterr()
    code, r = replay(tmp_path, "--file", str(stream), *SMALL_MODEL, "--rows", "10000",
                     "--checkpoint", str(ckpt), "--resume")
    err = capsys.readouterr().err
    if name is None:  # the undamaged checkpoint resumes to the same report
        assert code == 0 and strip_timing(r) == strip_timing(finished_checkpoint[1])
    else:
        assert code == 1 and r is None
        assert re.search(message, " ".join(err.split())), err


def test_spills_stay_bounded_and_leave_no_temporary_files(stream, tmp_path, monkeypatch):
    """A tiny AUC budget and small reads (hundreds of passes, buckets over the budget) give
    the same report, and a run without checkpoints removes its spill directory."""
    from streamfusion import replay as replay_mod
    from streamfusion.evaluate import Progressive

    class Tiny(Progressive):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, budget=150, chunk_rows=333, **kwargs)

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    code, default = replay(tmp_path, "--file", str(stream), *SMALL_MODEL, name="default.json")
    assert code == 0 and list(scratch.iterdir()) == []
    monkeypatch.setattr(replay_mod, "Progressive", Tiny)
    code, tiny = replay(tmp_path, "--file", str(stream), *SMALL_MODEL, name="tiny.json")
    assert code == 0 and list(scratch.iterdir()) == []
    assert strip_timing(tiny) == strip_timing(default)
    assert len(tiny["windows"]) >= 5 and tiny["refit_windows"]


def test_malformed_row_names_file_line_and_reason(tmp_path, stream, capsys):
    lines = stream.read_text().splitlines()[:3000]
    lines[1234] = lines[1234].rsplit(",", 2)[0]  # two columns short
    bad = tmp_path / "bad.csv.gz"
    with gzip.open(bad, "wt") as f:
        f.write("\n".join(lines) + "\n")
    code, _ = replay(tmp_path, "--file", str(bad), *SMALL_MODEL)
    err = capsys.readouterr().err
    assert code == 1 and "bad.csv.gz" in err and "1235" in err
    code, r = replay(tmp_path, "--file", str(bad), *SMALL_MODEL, "--on-error", "skip")
    assert code == 0 and r["skipped_rows"] == 1 and r["rows"] == 2998


@pytest.mark.parametrize("name,fmt", [("avazu/train", "avazu"), ("criteo/sample.train", "criteo")])
def test_real_samples_replay(shared_data, tmp_path, name, fmt):
    code, r = replay(tmp_path, "--file", str(shared_data / name), *SMALL_MODEL,
                     "--refit-every", "3000", "--window", "5000")
    assert code == 0 and r["format"] == fmt and r["rows"] > 8000
    assert r["progressive"]["auc"] > 0.6
