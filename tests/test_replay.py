"""End to end: `streamfusion replay` on generated streams and on the real samples."""

import gzip
import json
import re
import shutil
import tempfile

import numpy as np
import pytest

from streamfusion import checkpoint
from streamfusion.cli import main
from streamfusion.data.generate import generate
from streamfusion.evaluate import holdout_mask
from streamfusion.online import batch_size_at

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


@pytest.mark.parametrize("where", ["middle", "rows_done"])
def test_corrupt_checkpoint_is_refused(stream, tmp_path, capsys, where):
    ckpt = tmp_path / "ckpt"
    code, _ = replay(tmp_path, "--file", str(stream), *SMALL_MODEL, "--rows", "10000",
                     "--checkpoint", str(ckpt), "--checkpoint-every", "5000")
    assert code == 0
    state = ckpt / "state.sfck"
    raw = bytearray(state.read_bytes())
    if where == "middle":
        raw[len(raw) // 2] ^= 0x55
    else:  # a same-length edit of the JSON header: the checksum covers it too
        done = checkpoint.load(ckpt)["rows_done"]
        old = f'"rows_done": {done}'.encode()
        assert raw.count(old) == 1
        raw = raw.replace(old, f'"rows_done": {done + 1}'.encode())
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
                     "--refit-every", "3000", "--window", "5000", "--plot",
                     str(tmp_path / "run.png"))
    assert code == 0 and r["format"] == fmt and r["rows"] > 8000
    assert r["progressive"]["auc"] > 0.6
    # a 9k-row sample (Avazu's of one day) is cut into windows of events: a line, not a dot
    assert r["windowing"]["by"] == "events" and len(r["windows"]) >= 20
    assert (tmp_path / "run.png").stat().st_size > 10_000


def snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_a_run_without_resume_leaves_an_existing_checkpoint_alone(
        finished_checkpoint, stream, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(finished_checkpoint[0], ckpt)
    before = snapshot(ckpt)
    done = checkpoint.load(ckpt)["rows_done"]
    capsys.readouterr()
    code, r = replay(tmp_path, "--file", str(stream), *SMALL_MODEL, "--rows", "10000",
                     "--checkpoint", str(ckpt))
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and r is None
    assert f"already holds a checkpoint of {done:,} events of {stream}" in err
    assert "pass --resume" in err
    assert snapshot(ckpt) == before  # no spill truncated, nothing written
    code, r = replay(tmp_path, "--file", str(stream), *SMALL_MODEL, "--rows", "10000",
                     "--checkpoint", str(ckpt), "--resume")
    assert code == 0 and strip_timing(r) == strip_timing(finished_checkpoint[1])


@pytest.mark.parametrize("flags,messages", [
    (["--model", "fm"], ["--model: checkpoint 'resfusion', now 'fm'"]),
    (["--holdout", "0.2"], ["--holdout: checkpoint 0.1, now 0.2"]),
    (["--holdout-mode", "chrono"], ["--holdout-mode: checkpoint 'random', now 'chrono'"]),
    (["--batch-size", "256", "--window-rows", "5000", "--on-error", "skip", "--trees", "30"],
     ["--batch-size: checkpoint 512, now 256", "--window-rows: checkpoint None, now 5000",
      "--on-error: checkpoint 'fail', now 'skip'", "--trees: checkpoint 20, now 30"]),
    (["--seed", "3"], ["--seed: checkpoint 0, now 3"]),
    (["--no-live-blend", "--no-drift"],  # switches are named as they are typed
     ["--no-live-blend: not set in the checkpoint's run, set now",
      "--no-drift: not set in the checkpoint's run, set now"]),
])
def test_resume_refuses_changed_flags(finished_checkpoint, stream, tmp_path, capsys, flags,
                                      messages):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(finished_checkpoint[0], ckpt)
    before = snapshot(ckpt)
    capsys.readouterr()
    code, r = replay(tmp_path, "--file", str(stream), *SMALL_MODEL, "--rows", "10000",
                     "--checkpoint", str(ckpt), "--resume", *flags)
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and r is None
    assert "differ from the checkpoint's run" in err
    for message in messages:
        assert message in err, err
    assert snapshot(ckpt) == before


def test_resume_may_change_rows_threads_and_output_flags(finished_checkpoint, stream,
                                                         tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(finished_checkpoint[0], ckpt)
    code, r = replay(tmp_path, "--file", str(stream), *SMALL_MODEL, "--rows", "12000",
                     "--checkpoint", str(ckpt), "--resume", "--checkpoint-every", "3000",
                     "--threads", "2", "--plot", str(tmp_path / "p.png"))
    assert code == 0 and r["rows"] == 12000
    assert r["model"]["config"]["threads"] == 2


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("change,message", [
    (None, None),
    ("grown", None),  # rows appended after the consumed part: fine
    ("prefix", "is shorter .* than the checkpoint's position"),
    ("regenerated", "its first MiB differs"),
    ("edited", "the MiB before the checkpoint's position .* differs"),
])
def test_resume_refuses_a_changed_input(stream, tmp_path, capsys, gz, change, message):
    lines = stream.read_bytes().splitlines(keepends=True)
    path = tmp_path / ("in.csv.gz" if gz else "in.csv")

    def write(rows):
        data = b"".join(rows)
        path.write_bytes(gzip.compress(data, mtime=0) if gz else data)

    write(lines[:20_000])
    args = ["--file", str(path), *SMALL_MODEL, "--rows", "10000", "--checkpoint",
            str(tmp_path / "ckpt"), "--checkpoint-every", "5000"]
    code, first = replay(tmp_path, *args)
    assert code == 0
    done = checkpoint.load(tmp_path / "ckpt")["rows_done"]
    if change == "grown":
        write(lines)
    elif change == "prefix":
        write(lines[: done // 2])
    elif change == "regenerated":
        other = tmp_path / "other.csv"
        generate(other, format="avazu", rows=20_000, seed=8)
        write(other.read_bytes().splitlines(keepends=True))
    elif change == "edited":  # a row just before the checkpoint's position, past the first MiB
        assert sum(map(len, lines[:done - 5])) > (1 << 20)
        edited = (b"8" if lines[done - 5][:1] == b"9" else b"9") + lines[done - 5][1:]
        assert edited != lines[done - 5]
        write([*lines[:done - 5], edited, *lines[done - 4:20_000]])
    capsys.readouterr()
    code, resumed = replay(tmp_path, *args, "--resume", name="resumed.json")
    err = " ".join(capsys.readouterr().err.split())
    if message is None:
        assert code == 0 and strip_timing(resumed) == strip_timing(first)
    else:
        assert code == 1 and resumed is None
        assert "is not the input the checkpoint consumed" in err
        assert re.search(message, err), err


@pytest.mark.parametrize("drop,kind", [("encoder", None), ("rows_done", None),
                                       ("flags", None), ("rows_done", "str"),
                                       ("position", "list")])
def test_a_replay_state_missing_a_key_is_a_clear_error(finished_checkpoint, stream, tmp_path,
                                                        capsys, drop, kind):
    """A well-formed checkpoint file whose replay state lacks a key or has a wrong type."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(finished_checkpoint[0], ckpt)
    state = checkpoint.load(ckpt)
    if kind is None:
        del state[drop]
        expected = f"'{drop}' is missing"
    else:
        state[drop] = str(state[drop]) if kind == "str" else [1, 2]
        expected = f"'{drop}' should be"
    checkpoint.save(ckpt, state)
    capsys.readouterr()
    code, r = replay(tmp_path, "--file", str(stream), *SMALL_MODEL, "--rows", "10000",
                     "--checkpoint", str(ckpt), "--resume")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and r is None
    assert "checkpoint is malformed" in err and expected in err, err


RESUME_MODEL = [*SMALL_MODEL, "--refit-every", "8000", "--fade", "2000"]


@pytest.mark.parametrize("mode,first_rows,rows", [("random", "10000", "20000"),
                                                  ("random", "7777", "15000"),
                                                  ("chrono", "10000", "10000")])
def test_a_rows_stop_then_resume_ends_as_an_uninterrupted_run(
        stream, tmp_path, mode, first_rows, rows):
    """--rows N (not a multiple of --batch-size), then --resume, gives the report of one run."""
    assert int(first_rows) % 512
    opts = ["--file", str(stream), *RESUME_MODEL, "--holdout-mode", mode]
    code, whole = replay(tmp_path, *opts, "--rows", rows, name="whole.json")
    assert code == 0
    ckpt = ["--checkpoint", str(tmp_path / "ckpt"), "--checkpoint-every", "5000"]
    code, _ = replay(tmp_path, *opts, "--rows", first_rows, *ckpt, name="first.json")
    assert code == 0
    # the last checkpoint is the last full batch of the schedule before the cut: the resume
    # redoes the rest
    boundary = 0
    while boundary + batch_size_at(boundary, 512) <= int(first_rows):
        boundary += batch_size_at(boundary, 512)
    assert checkpoint.load(tmp_path / "ckpt")["rows_done"] == boundary < int(first_rows)
    code, resumed = replay(tmp_path, *opts, "--rows", rows, *ckpt, "--resume",
                           name="resumed.json")
    assert code == 0 and resumed["model"]["refits"] >= 1
    assert strip_timing(resumed) == strip_timing(whole)


def read_predictions(path):
    text = path.read_text().splitlines()
    assert text[0] == "set,line,label,margin,p_click"
    rows = [line.split(",") for line in text[1:]]
    sets = np.array([r[0] for r in rows])
    lines = np.array([int(r[1]) for r in rows])
    y, z, p = (np.array([float(r[i]) for r in rows]) for i in (2, 3, 4))
    return sets, lines, y, z, p


def test_predictions_are_the_events_the_report_scored_and_survive_a_resume(stream, tmp_path):
    """--predictions: progressive then held-out rows whose metrics are the report's, and
    a stopped and resumed run writes the same file as an uninterrupted one."""
    from streamfusion.evaluate import auc, logloss_from_margin

    opts = ["--file", str(stream), *RESUME_MODEL, "--rows", "15000"]
    whole = tmp_path / "whole.csv"
    code, r = replay(tmp_path, *opts, "--predictions", str(whole))
    assert code == 0
    sets, lines, y, z, p = read_predictions(whole)
    assert list(dict.fromkeys(sets)) == ["progressive", "holdout"]
    # every event once, by its line in the file (line 1 is the header), each set in file
    # order, held out as the seeded mask of those lines says
    assert sorted(lines.tolist()) == list(range(2, 15002))
    for name in ("progressive", "holdout"):
        assert (np.diff(lines[sets == name]) > 0).all()
    assert np.array_equal(holdout_mask(lines, 0.1, seed=0), sets == "holdout")
    for name in ("progressive", "holdout"):
        keep = sets == name
        assert keep.sum() == r[name]["rows"]
        zf = z[keep].astype(np.float32)
        assert auc(zf, y[keep]) == r[name]["auc"]
        assert logloss_from_margin(zf, y[keep]) == pytest.approx(r[name]["logloss"], rel=1e-12)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-z)), rtol=1e-6)
    # in stream order: each window of the report is its slice of the progressive rows
    zp, yp, start = z[sets == "progressive"].astype(np.float32), y[sets == "progressive"], 0
    for w in r["windows"]:
        assert auc(zp[start:w["end_row"]], yp[start:w["end_row"]]) == pytest.approx(w["auc"])
        start = w["end_row"]
    assert len(r["windows"]) > 3 and start == len(zp)
    ckpt = ["--checkpoint", str(tmp_path / "ckpt"), "--checkpoint-every", "5000"]
    assert replay(tmp_path, *opts[:-1], "7777", *ckpt)[0] == 0
    resumed = tmp_path / "resumed.csv"
    assert replay(tmp_path, *opts, *ckpt, "--resume", "--predictions", str(resumed))[0] == 0
    assert resumed.read_bytes() == whole.read_bytes()


def test_resume_refuses_a_moved_chrono_boundary(stream, tmp_path, capsys):
    opts = ["--file", str(stream), *SMALL_MODEL, "--holdout-mode", "chrono",
            "--checkpoint", str(tmp_path / "ckpt"), "--checkpoint-every", "5000"]
    code, _ = replay(tmp_path, *opts, "--rows", "10000")
    assert code == 0
    capsys.readouterr()
    code, r = replay(tmp_path, *opts, "--rows", "20000", "--resume", name="r2.json")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and r is None
    assert "chronological holdout of the checkpoint's run starts at event 9000" in err, err
    assert "would start at 18000" in err


# -------------------------------------------------------------- learning from the first events
def test_the_batch_schedule_grows_from_small_batches_to_the_largest():
    sizes, done = [], 0
    while done < 200_000:
        sizes.append(batch_size_at(done, 1024))
        done += sizes[-1]
    # one event, then doubling to 16 over the first 16 events, 16 until 8,192 events
    assert sizes[:7] == [1, 1, 2, 4, 8, 16, 16] and sum(sizes[:5]) == 16
    assert sizes[-1] == 512  # 200k events: not yet at full size
    assert all(b in (a, 2 * a) for a, b in zip(sizes, sizes[1:], strict=False))
    assert batch_size_at(10**7, 1024) == 1024 and batch_size_at(0, 8) == 1
    assert [batch_size_at(n, 8) for n in (4, 8, 9)] == [4, 8, 8]
    assert [batch_size_at(n, 1024) for n in (8191, 8192, 16383, 16384)] == [16, 32, 32, 64]


def test_trees_are_live_on_a_small_file_and_the_report_counts_them(stream, tmp_path):
    # the default tree schedule on 6,000 events: before, the first fit waited for 50k
    code, r = replay(tmp_path, "--file", str(stream), "--rows", "6000", "--model", "gbdt",
                     "--quiet")
    assert code == 0
    m = r["model"]
    assert m["refits_started"] >= 3 and 1 <= m["refits_live"] <= m["refits_started"]
    assert m["refits_live"] + m["refits_rejected"] <= m["refits_started"]
    assert r["holdout"]["auc"] > 0.55  # not the constant prior (0.5)
    assert m["batch_schedule"] == {"start": 1, "min": 16, "max": 1024, "growth": 512}


def test_first_stage_learners_start_at_the_click_rate(stream, tmp_path):
    # before any learning a first-stage learner predicts the smoothed click rate, not 0.5:
    # its progressive logloss beats a constant 0.5 by far on the very first events
    code, r = replay(tmp_path, "--file", str(stream), "--rows", "2000", "--model", "lr",
                     "--quiet")
    assert code == 0 and r["progressive"]["logloss"] < 0.55  # log(2) = 0.693 at p = 0.5


def test_extreme_numbers_never_give_nan(tmp_path):
    rows = ["label,x,y,c"]
    rng = np.random.default_rng(0)
    for i in range(3000):
        x = rng.choice([0.0, 1e-300, -1e-300, 1e300, -1e300, 3.0e38, float(i)])
        rows.append(f"{int(rng.random() < 0.3)},{x!r},{rng.normal()},c{i % 7}")
    path = tmp_path / "extreme.csv"
    path.write_text("\n".join(rows) + "\n")
    code, r = replay(tmp_path, "--file", str(path), "--format", "csv", "--label", "label",
                     "--quiet")
    assert code == 0 and r["model"]["skipped_updates"] == 0
    for part in ("progressive", "holdout"):
        assert np.isfinite(r[part]["auc"]) and np.isfinite(r[part]["logloss"])


@pytest.mark.parametrize("flags,stages", [(["--model", "dnn"], ["dnn"]),
                                          (["--residual", "dnn"], ["trees", "dnn"])])
def test_the_dnn_learner_replays_and_resumes(stream, tmp_path, flags, stages):
    args = ["--file", str(stream), *SMALL_MODEL, *flags, "--rows", "12000"]
    code, whole = replay(tmp_path, *args, name="whole.json")
    assert code == 0 and whole["model"]["stages"] == stages
    assert whole["progressive"]["auc"] > 0.55  # it learns (--model deepfm here: 0.585)
    ckpt = ["--checkpoint", str(tmp_path / "ckpt"), "--checkpoint-every", "4096"]
    assert replay(tmp_path, *args[:-1], "6000", *ckpt, name="part.json")[0] == 0
    code, resumed = replay(tmp_path, *args, *ckpt, "--resume", name="resumed.json")
    assert code == 0 and strip_timing(resumed) == strip_timing(whole)


def test_a_run_learning_in_several_steps_per_batch_resumes_bit_for_bit(stream, tmp_path):
    """Batches of 16 and 32 events learned in steps of 8 (Adam steps scaled by --adam-batch):
    a resumed run takes the same steps."""
    args = ["--file", str(stream), *RESUME_MODEL, "--step-rows", "8"]
    code, whole = replay(tmp_path, *args, "--rows", "9000", name="whole.json")
    assert code == 0 and whole["model"]["config"]["step_rows"] == 8
    ckpt = ["--checkpoint", str(tmp_path / "ckpt"), "--checkpoint-every", "4000"]
    assert replay(tmp_path, *args, "--rows", "6000", *ckpt, name="part.json")[0] == 0
    code, resumed = replay(tmp_path, *args, "--rows", "9000", *ckpt, "--resume",
                           name="resumed.json")
    assert code == 0 and strip_timing(resumed) == strip_timing(whole)
    code, one_step = replay(tmp_path, *args[:-2], "--rows", "9000", name="one.json")
    assert code == 0 and one_step["progressive"] != whole["progressive"]


def test_a_checkpoint_from_before_pair_weights_resumes_as_plain_deepfm(stream, tmp_path, capsys):
    """A run checkpointed before pair and field weights, step_rows and adam_batch existed
    continues as the plain DeepFM of one unscaled step per batch it was, and only with the
    flags that say so."""
    opts = ["--file", str(stream), *RESUME_MODEL]
    before = ["--no-pair-weights", "--no-field-weights", "--step-rows", "0", "--adam-batch", "0"]
    code, whole = replay(tmp_path, *opts, *before, "--rows", "9000", name="whole.json")
    assert code == 0
    ckpt = ["--checkpoint", str(tmp_path / "ckpt"), "--checkpoint-every", "4000"]
    code, _ = replay(tmp_path, *opts, *before, "--rows", "6000", *ckpt)
    assert code == 0
    state = checkpoint.load(tmp_path / "ckpt")
    for config in (state["flags"], state["model"]["config"],
                   state["model"]["chain"]["stages"]["1"]["config"]):
        del config["pair_weights"], config["pair_lr"], config["step_rows"]  # as written before
        del config["field_weights"], config["adam_batch"]
    checkpoint.save(tmp_path / "ckpt", state)
    capsys.readouterr()
    code, _ = replay(tmp_path, *opts, "--rows", "9000", *ckpt, "--resume")
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "--no-pair-weights: set in the checkpoint's run, not set now" in err, err
    assert "--no-field-weights: set in the checkpoint's run, not set now" in err, err
    assert "--step-rows: checkpoint 0, now 256" in err, err
    assert "--adam-batch: checkpoint 0, now 32" in err, err
    code, resumed = replay(tmp_path, *opts, *before, "--rows", "9000", *ckpt,
                           "--resume", name="resumed.json")
    assert code == 0 and resumed["model"]["config"]["pair_weights"] is False
    assert resumed["model"]["config"]["step_rows"] == 0
    assert resumed["model"]["config"]["adam_batch"] == 0
    assert strip_timing(resumed) == strip_timing(whole)
