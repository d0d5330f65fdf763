"""`streamfusion replay` at its edges: bad flags and paths refused up front, empty and odd
inputs (header only, unlabelled, byte-order mark, gzip trailing garbage, out-of-order days),
strict JSON reports, and interrupts that leave nothing behind."""

import gzip
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from streamfusion.cli import main
from streamfusion.data.generate import generate
from streamfusion.evaluate import PROGRESSIVE_FILE
from streamfusion.fusion import ROW_LR
from streamfusion.replay import HOLDOUT_FILE, count_events

SMALL = ["--trees", "10", "--leaves", "7", "--refit-every", "3000", "--first-fit", "1500",
         "--window", "4000", "--hidden", "16", "--bits", "14", "--quiet", "--batch-size", "256"]


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "avazu.csv"
    generate(path, format="avazu", rows=6000, seed=3)
    return path


def replay(tmp_path, *args):
    report = tmp_path / "report.json"
    code = main(["replay", *args, "--report", str(report)])
    # strict JSON: NaN or Infinity would fail here
    text = report.read_text() if report.exists() else None
    return code, (json.loads(text, parse_constant=_refuse) if text else None)


def _refuse(name):
    raise ValueError(f"report holds {name}: not strict JSON")


@pytest.mark.parametrize("flag,value", [
    ("--rows", "0"), ("--rows", "-5"), ("--batch-size", "0"), ("--holdout", "1"),
    ("--holdout", "1.5"), ("--holdout", "-0.1"), ("--holdout", "nan"),
    ("--checkpoint-every", "0"), ("--window-rows", "-5"), ("--trees", "0"), ("--leaves", "1"),
    ("--lr", "-1"), ("--fade", "-1"), ("--window", "0"), ("--refit-every", "0"),
    ("--hidden", "abc"), ("--hidden", "32,0"), ("--max-features", "0"), ("--bits", "0"),
    ("--bits", "40"), ("--threads", "0"), ("--seed", "-1"), ("--dense-features", "-1"),
    ("--types", "n=cat,n=num"), ("--types", "n=text"), ("--delimiter", ";;"),
    ("--delimiter", '"'),
])
def test_bad_flag_values_are_refused_before_any_work(stream, flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["replay", "--file", str(stream), "--quiet", flag, value])
    assert exc.value.code == 2
    assert f"argument {flag}: '{value}' is not" in capsys.readouterr().err


def test_iterations_cannot_be_combined_with_another_model(stream, tmp_path, capsys):
    code, _ = replay(tmp_path, "--file", str(stream), *SMALL, "--model", "fm",
                     "--iterations", "2")
    assert code == 1
    assert "--iterations 2 builds its own chain" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing", "directory", "device"])
def test_unreadable_input_is_refused_with_its_reason(tmp_path, case, capsys):
    path = {"missing": tmp_path / "nope.csv", "directory": tmp_path,
            "device": "/dev/null"}[case]
    code = main(["replay", "--file", str(path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and f"--file {path}:" in err
    assert ("no such file" if case == "missing" else "not a regular file") in err


@pytest.mark.parametrize("flag", ["--report", "--plot", "--predictions"])
def test_unusable_output_paths_are_refused_before_the_run(stream, tmp_path, flag, capsys):
    (tmp_path / "adir").mkdir()
    code = main(["replay", "--file", str(stream), *SMALL, flag, str(tmp_path / "adir")])
    assert code == 1 and "is a directory" in capsys.readouterr().err
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code = main(["replay", "--file", str(stream), *SMALL, flag, str(blocker / "sub" / "r")])
    assert code == 1 and "cannot create its directory" in capsys.readouterr().err
    code = main(["replay", "--file", str(stream), *SMALL, "--checkpoint", str(blocker)])
    assert code == 1 and "is not a directory" in capsys.readouterr().err
    code = main(["replay", "--file", str(stream), *SMALL, "--checkpoint", str(blocker / "ck")])
    assert code == 1 and "cannot create it" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
@pytest.mark.parametrize("flag", ["--report", "--plot", "--predictions"])
def test_an_output_that_fails_at_the_end_is_an_error_not_a_traceback(stream, flag, capsys,
                                                                     tmp_path):
    others = {f: tmp_path / f"out-{f[2:]}" for f in ("--report", "--plot", "--predictions")
              if f != flag}
    code = main(["replay", "--file", str(stream), *SMALL, "--rows", "2000", flag, "/dev/full",
                 *(a for f, p in others.items() for a in (f, str(p)))])
    assert code == 1
    assert f"cannot write {flag} /dev/full: No space left on device" in capsys.readouterr().err
    assert not os.path.exists("/dev/full.png")  # the plot goes to the path as given
    assert all(p.stat().st_size > 0 for p in others.values())  # the others are written


@pytest.mark.parametrize("fmt,token", [("libsvm", "{j}:1"), ("libfm", "{j}:1"),
                                       ("libffm", "{f}:{j}:1")])
def test_libsvm_like_input_gives_the_trees_columns_by_default(tmp_path, fmt, token):
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(4000):
        feats = np.sort(rng.choice(200, 10, replace=False))
        label = "+1" if feats[0] % 3 == 0 else "-1"  # libsvm's and libFM's own labels
        lines.append(label + " " + " ".join(token.format(f=k, j=j) for k, j in enumerate(feats)))
    path = tmp_path / f"w.{fmt}"
    path.write_text("\n".join(lines) + "\n")
    args = ["--file", str(path), *SMALL, "--first-fit", "500", "--model", "gbdt"]
    code, r = replay(tmp_path, *args, "--format", fmt)
    assert code == 0 and r["format"] == fmt
    # every id of the sample is a tree column, and the trees learn from them
    assert len(r["column_kinds"]) == 201 and r["column_kinds"]["x0"] == "num"
    assert r["model"]["version"] >= 1 and r["holdout"]["auc"] > 0.75
    with pytest.warns(UserWarning, match="--dense-features 0 gives the trees no columns"):
        code, r = replay(tmp_path, *args, "--dense-features", "0")
    assert code == 0 and r["holdout"]["auc"] == 0.5 and r["column_kinds"] == {"label": "label"}
    code, r = replay(tmp_path, *args, "--dense-features", "100")
    assert code == 0 and len(r["column_kinds"]) == 101
    # an event fills 10 of the 64 slots: the learner keeps the fixed first-order step
    code, r = replay(tmp_path, "--file", str(path), *SMALL, "--format", fmt)
    assert code == 0 and r["model"]["config"]["row_lr"] == ROW_LR


def test_header_only_file_gives_an_empty_report_in_strict_json(stream, tmp_path, capsys):
    path = tmp_path / "header.csv"
    path.write_text(stream.read_text().split("\n", 1)[0] + "\n")
    code, r = replay(tmp_path, "--file", str(path), *SMALL)
    assert code == 0 and r["rows"] == 0 and r["windows"] == []
    assert r["progressive"] == {"auc": None, "logloss": None, "rows": 0}
    assert r["holdout"]["auc"] is None
    assert "no labelled event was scored" in capsys.readouterr().err


def test_unlabelled_events_are_scored_but_give_no_metrics(tmp_path, shared_data):
    code, r = replay(tmp_path, "--file", str(shared_data / "criteo" / "sample.test"), *SMALL)
    assert code == 0 and r["rows"] > 0 and r["progressive"]["rows"] == 0
    assert r["progressive"]["auc"] is None


def test_a_window_with_one_class_is_null_not_nan(stream, tmp_path):
    lines = stream.read_text().splitlines()
    head, rows = lines[0], [ln for ln in lines[1:] if ln.split(",")[1] == "0"][:300]
    path = tmp_path / "no_clicks.csv"
    path.write_text("\n".join([head, *rows]) + "\n")
    code, r = replay(tmp_path, "--file", str(path), *SMALL)
    assert code == 0 and r["progressive"]["auc"] is None
    assert math.isfinite(r["progressive"]["logloss"])


def test_byte_order_mark_is_not_part_of_the_stream(stream, tmp_path):
    _, plain = replay(tmp_path, "--file", str(stream), *SMALL)
    data = b"\xef\xbb\xbf" + stream.read_bytes()
    (tmp_path / "bom.csv").write_bytes(data)
    with gzip.open(tmp_path / "bom.csv.gz", "wb") as f:
        f.write(data)
    for name in ("bom.csv", "bom.csv.gz"):
        code, r = replay(tmp_path, "--file", str(tmp_path / name), *SMALL)
        assert code == 0
        assert r["progressive"] == plain["progressive"] and r["holdout"] == plain["holdout"]


def test_trailing_garbage_after_gzip_is_ignored_with_a_warning(stream, tmp_path):
    _, plain = replay(tmp_path, "--file", str(stream), *SMALL)
    path = tmp_path / "tail.csv.gz"
    path.write_bytes(gzip.compress(stream.read_bytes()) + b"not gzip\n")
    with pytest.warns(UserWarning, match="trailing garbage after the last gzip member"):
        code, r = replay(tmp_path, "--file", str(path), *SMALL)
    assert code == 0 and r["progressive"] == plain["progressive"]


def test_out_of_order_days_get_one_window_each(stream, tmp_path):
    # exactness of merged windows: tests/test_evaluate.py, test_progressive_equals_...
    lines = stream.read_text().splitlines()
    rows = lines[1:]
    order = np.random.default_rng(5).permutation(len(rows))
    path = tmp_path / "shuffled.csv"
    path.write_text("\n".join([lines[0], *(rows[i] for i in order)]) + "\n")
    code, r = replay(tmp_path, "--file", str(path), *SMALL, "--holdout", "0")
    assert code == 0 and r["out_of_order"] > 0
    days = {int(row.split(",")[2]) // 100 for row in rows}
    assert sorted(w["key"] for w in r["windows"]) == sorted(days)
    assert sum(w["rows"] for w in r["windows"]) == len(rows)


def test_count_events_skips_blank_lines(tmp_path):
    cases = {b"a\nb\n": 2, b"a\nb": 2, b"\n\na\n\nb\n\n": 2, b"a\r\n\r\nb\r\n": 2, b"": 0,
             b"\n": 0, b"a": 1}
    for data, want in cases.items():
        (tmp_path / "c.txt").write_bytes(data)
        assert count_events(tmp_path / "c.txt") == want, data


def test_chrono_holdout_ignores_blank_lines(stream, tmp_path):
    lines = stream.read_text().splitlines()
    path = tmp_path / "blanks.csv"
    path.write_text("\n".join([lines[0], *[""] * 3000, *lines[1:]]) + "\n")
    code, r = replay(tmp_path, "--file", str(path), *SMALL, "--holdout-mode", "chrono")
    assert code == 0 and r["holdout"]["rows"] == 600


def test_an_early_first_fit_is_honoured(stream, tmp_path):
    code, r = replay(tmp_path, "--file", str(stream), *SMALL, "--model", "gbdt",
                     "--first-fit", "300", "--refit-every", "100000", "--no-drift",
                     "--rows", "1000", "--batch-size", "100")
    assert code == 0 and r["model"]["refits"] >= 1  # 900 learned rows: below the old 1000


def _default_sigint() -> None:
    """SIGINT as an interactive terminal gives it: a suite started in the background, or
    after tests that ran a daemon in this process, can pass it on ignored or blocked."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupt_ends_cleanly_and_removes_temporary_files(stream, tmp_path, sig):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamfusion.cli", "replay", "--file", str(stream), *SMALL,
         "--batch-size", "1"], env=env, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_sigint)
    deadline = time.monotonic() + 60
    while not any(tmp.iterdir()) and time.monotonic() < deadline:  # the run has started
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted after" in err and "Traceback" not in err
    assert list(tmp.iterdir()) == []


def _file_size_limit(limit: int):
    def apply() -> None:  # writes past ``limit`` bytes fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize(("limit", "checkpoint", "failing"), [
    (4_096, False, "tmp/streamfusion-"),  # a spill of the run, in TMPDIR
    (1_000_000, True, "ckpt/state.sfck"),  # the checkpoint (bits 14: about 2 MB)
])
def test_a_write_that_fails_during_the_run_is_one_line_and_leaves_nothing_behind(
        stream, tmp_path, limit, checkpoint, failing):
    tmp, ckpt = tmp_path / "tmp", tmp_path / "ckpt"
    tmp.mkdir()
    extra = ["--checkpoint", str(ckpt), "--checkpoint-every", "2000"] if checkpoint else []
    proc = subprocess.run(
        [sys.executable, "-m", "streamfusion.cli", "replay", "--file", str(stream), *SMALL,
         *extra], env={**os.environ, "TMPDIR": str(tmp)}, capture_output=True, text=True,
        preexec_fn=_file_size_limit(limit), timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and "File too large, after" in err, err
    assert str(tmp_path / failing) in err and "--resume" not in err  # no checkpoint yet
    assert list(tmp.iterdir()) == []
    if checkpoint:  # the unfinished checkpoint's temporary file is gone too
        assert sorted(p.name for p in ckpt.iterdir() if "sfck" in p.name) == []


def test_a_write_that_fails_after_a_checkpoint_says_how_to_resume(stream, tmp_path):
    ckpt = tmp_path / "ckpt"
    opts = ["--file", str(stream), *SMALL, "--checkpoint", str(ckpt), "--checkpoint-every",
            "2000"]
    assert main(["replay", *opts, "--rows", "4000"]) == 0
    largest = max((ckpt / name).stat().st_size for name in (PROGRESSIVE_FILE, HOLDOUT_FILE))
    proc = subprocess.run(  # the spills may grow 1 kB: the resumed run fails in their writes
        [sys.executable, "-m", "streamfusion.cli", "replay", *opts, "--resume"],
        capture_output=True, text=True, preexec_fn=_file_size_limit(largest + 1000),
        timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"; --resume continues from the last checkpoint in {ckpt}" in err, err
    assert main(["replay", *opts, "--resume"]) == 0  # and it does


def test_a_model_that_cannot_be_saved_keeps_the_other_outputs(stream, tmp_path):
    out = {f: tmp_path / name for f, name in (("--report", "r.json"), ("--save-model", "m.sfm"),
                                              ("--predictions", "p.csv"))}
    proc = subprocess.run(
        [sys.executable, "-m", "streamfusion.cli", "replay", "--file", str(stream), *SMALL,
         "--rows", "2000", *(a for f, p in out.items() for a in (f, str(p)))],
        env={**os.environ, "TMPDIR": str(tmp_path)}, capture_output=True, text=True,
        preexec_fn=_file_size_limit(140_000), timeout=120)  # model 170 kB, predictions 100
    err = proc.stderr.strip()
    assert proc.returncode == 1 and err.splitlines() == [
        f"streamfusion replay: cannot write --save-model {out['--save-model']}: File too large"]
    assert json.loads(out["--report"].read_text())["rows"] == 2000
    assert out["--predictions"].read_text().count("\n") == 2001
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "r.json"]  # no partial model


def test_a_model_path_that_is_not_a_regular_file_is_refused_before_the_run(stream, tmp_path,
                                                                            capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code = main(["replay", "--file", str(stream), *SMALL, "--save-model", str(fifo)])
    assert code == 1 and "--save-model" in capsys.readouterr().err and fifo.is_fifo()


def test_rare_words_are_counted_in_the_report_and_types_override(tmp_path):
    rows = ["a,target,n,user_id", *(f"{i},{i % 2},{i % 17},{i % 50}" for i in range(1500)),
            "1501,1,N/A,3", "1502,0,unknown,4"]
    path = tmp_path / "infer.csv"
    path.write_text("\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match="column 'n': values that are not numbers"):
        code, r = replay(tmp_path, "--file", str(path), "--label", "target", *SMALL)
    assert code == 0 and r["rows"] == 1502
    # a: distinct integers (a row key), user_id: an id by its name; n stays numeric
    assert r["column_kinds"] == {"a": "cat", "target": "label", "n": "num", "user_id": "cat"}
    assert r["unparsed_numbers"] == {"n": 2}
    code, r = replay(tmp_path, "--file", str(path), "--label", "target", *SMALL,
                     "--types", "n=cat,user_id=num,a=skip")
    assert code == 0 and r["rows"] == 1502 and r["unparsed_numbers"] == {}
    assert r["column_kinds"] == {"a": "skip", "target": "label", "n": "cat", "user_id": "num"}


def test_unparsed_counts_survive_a_resume(tmp_path):
    rows = ["target,score", *(f"{i % 2},{'?' if i % 101 == 0 else i * 0.5}" for i in range(6000))]
    path = tmp_path / "words.csv"
    path.write_text("\n".join(rows) + "\n")
    opts = ["--file", str(path), "--label", "target", *SMALL, "--model", "lr"]
    with pytest.warns(UserWarning, match="column 'score'"):
        code, whole = replay(tmp_path, *opts)
    assert code == 0 and whole["unparsed_numbers"] == {"score": 60}
    ckpt = ["--checkpoint", str(tmp_path / "ckpt"), "--checkpoint-every", "1024"]
    with pytest.warns(UserWarning, match="column 'score'"):
        code, first = replay(tmp_path, *opts, *ckpt, "--rows", "3000")
    assert code == 0 and 0 < first["unparsed_numbers"]["score"] < 60
    code, resumed = replay(tmp_path, *opts, *ckpt, "--resume")
    assert code == 0 and resumed["unparsed_numbers"] == {"score": 60}


def test_a_resumed_run_keeps_its_kinds_when_the_log_grew(tmp_path):
    """Rows appended after the checkpoint would type a column otherwise (the sample spans
    the file): the resumed run reads it as it began."""
    path = tmp_path / "grow.csv"
    rng = np.random.default_rng(5)
    path.write_text("clk,z,c\n" + "".join(f"{int(rng.random() < 0.3)},,c{i % 9}\n"
                                         for i in range(3000)))
    ckpt = ["--checkpoint", str(tmp_path / "ckpt"), "--checkpoint-every", "1000"]
    code, first = replay(tmp_path, "--file", str(path), "--label", "clk", *SMALL, *ckpt,
                         "--rows", "2000")
    assert code == 0 and first["column_kinds"]["z"] == "cat"  # empty: nothing says number
    with open(path, "a") as f:
        f.writelines(f"{i % 2},{rng.normal():.4f},c{i % 9}\n" for i in range(3000))
    fresh = tmp_path / "fresh.json"
    assert main(["replay", "--file", str(path), "--label", "clk", *SMALL, "--report",
                 str(fresh)]) == 0
    assert json.loads(fresh.read_text())["column_kinds"]["z"] == "num"  # a new run: numbers
    code, resumed = replay(tmp_path, "--file", str(path), "--label", "clk", *SMALL, *ckpt,
                           "--resume")
    assert code == 0 and resumed["rows"] == 6000 and resumed["column_kinds"] == first[
        "column_kinds"]


def test_resuming_with_another_file_names_the_checkpoints_file(stream, tmp_path, capsys):
    other = tmp_path / "other.csv"
    other.write_text("clk,a\n" + "".join(f"{i % 2},x{i % 5}\n" for i in range(500)))
    ckpt = ["--checkpoint", str(tmp_path / "ckpt"), "--checkpoint-every", "1000"]
    assert main(["replay", "--file", str(stream), *SMALL, *ckpt, "--rows", "2000"]) == 0
    capsys.readouterr()
    code = main(["replay", "--file", str(other), "--label", "clk", *SMALL, *ckpt, "--resume"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and f"checkpoint belongs to {stream}, not {other}" in err, err


def test_avazu_and_criteo_kinds_are_in_the_report(stream, tmp_path, shared_data):
    code, r = replay(tmp_path, "--file", str(stream), *SMALL, "--rows", "1000")
    assert code == 0 and r["unparsed_numbers"] == {}
    assert (r["column_kinds"]["id"], r["column_kinds"]["click"], r["column_kinds"]["hour"],
            r["column_kinds"]["site_id"]) == ("skip", "label", "hour", "cat")
    code, r = replay(tmp_path, "--file", str(shared_data / "criteo" / "sample.train"), *SMALL,
                     "--rows", "1000")
    assert code == 0 and len(r["column_kinds"]) == 40
    assert r["column_kinds"]["I1"] == "num" and r["column_kinds"]["C1"] == "cat"


def test_corrupt_gzip_says_how_far_the_rows_got(tmp_path):
    from streamfusion.data import ParseError, read_all
    path = tmp_path / "big.csv"
    generate(path, format="avazu", rows=60_000, seed=4)  # about 9 MB: several read chunks
    comp = bytearray(gzip.compress(path.read_bytes()))
    comp[len(comp) * 3 // 4] ^= 0xFF
    bad = tmp_path / "flip.csv.gz"
    bad.write_bytes(comp)
    with pytest.raises(ParseError, match=r"corrupt gzip stream .*, after line (\d+)") as exc:
        read_all(bad, on_error="skip")
    # zlib may only notice at the member's checksum, after the damaged rows were read
    assert int(str(exc.value).rsplit(" ", 1)[1]) > 1000
