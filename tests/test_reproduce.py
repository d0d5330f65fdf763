"""``streamfusion reproduce``: both tables produced and sane, seeded reproducibility, the split,
the compact loader and the CLI outputs, on a small generated Avazu-format file."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from streamfusion import offline
from streamfusion.baselines import CONVERGENCE, TABLE2, Experiment, default_config
from streamfusion.data.generate import generate
from streamfusion.offline import FitOptions, load_encoded
from streamfusion.reproduce import markdown

ROWS = 16_000
BITS = 16


def small_config(seed: int = 0):
    cfg, _ = default_config(True, seed)
    # a large Adam step and small batches: 13k training rows must be enough to learn from
    cfg = replace(cfg, n_trees=25, num_leaves=15, bits=BITS, k=4, hidden=(16, 16), lr=1e-2)
    return cfg, FitOptions(epochs=2, patience=1, batch_size=256, seed=seed)


@pytest.fixture(scope="module")
def log_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("reproduce") / "avazu.csv"
    generate(path, format="avazu", rows=ROWS, seed=3)
    return path


@pytest.fixture(scope="module")
def data(log_file):
    return load_encoded(str(log_file), bits=BITS, seed=0)


def run_tables(data, seed: int = 0):
    cfg, opts = small_config(seed)
    exp = Experiment(data, cfg, opts)
    out = {"table2": exp.table2(), "table3": exp.table3(), "convergence": exp.convergence()}
    exp.close()
    return out


@pytest.fixture(scope="module")
def tables(data):
    return run_tables(data)


def test_every_row_of_both_tables_is_produced_and_sane(tables):
    assert [r["model"] for r in tables["table2"]] == list(TABLE2)
    assert [r["K"] for r in tables["table3"]] == [0, 1, 2, 3]
    for r in tables["table2"] + tables["table3"]:
        assert 0.5 < r["auc"] <= 1.0, r
        assert math.isfinite(r["logloss"]) and 0 < r["logloss"] < 1.0, r
        assert r["seconds"] >= 0
    # K = 0 is the GBDT row and K = 1 the GBDTRes+NN row: the same fitted chain prefixes
    by = {r["model"]: r for r in tables["table2"]}
    assert tables["table3"][0]["auc"] == by["GBDT"]["auc"]
    assert tables["table3"][1]["logloss"] == by["GBDTRes+NN"]["logloss"]
    assert tables["table3"][3]["chain"] == ["trees", "deepfm", "trees", "deepfm"]


def test_convergence_curves_for_the_four_models(tables):
    conv = tables["convergence"]
    assert set(conv) == set(CONVERGENCE)
    for name, points in conv.items():
        assert [p["epoch"] for p in points] == list(range(1, len(points) + 1)), name
        assert all(0.5 < p["auc"] <= 1 and math.isfinite(p["logloss"]) for p in points), name


def _strip_seconds(t):
    return json.loads(json.dumps(t, default=float).replace("NaN", "null"),
                      object_hook=lambda d: {k: v for k, v in d.items() if k != "seconds"})


def test_same_seed_gives_the_same_tables(data, tables):
    again = run_tables(data, seed=0)
    assert _strip_seconds(again) == _strip_seconds(tables)


def test_another_seed_changes_the_neural_rows(data, tables):
    cfg, opts = small_config(seed=1)
    other = Experiment(data, cfg, opts).row("DeepFM")
    (same,) = [r for r in tables["table2"] if r["model"] == "DeepFM"]
    assert other["logloss"] != same["logloss"]


def test_random_split_is_9_to_1_with_a_validation_slice(data):
    n = len(data)
    assert data.n_train + data.n_valid + data.n_test == n == ROWS
    assert abs(data.n_test / n - 0.1) < 0.02
    assert abs(data.n_valid / (n - data.n_test) - 0.1) < 0.02
    assert data.indices.dtype == np.int32 and data.dense.dtype == np.float32
    assert data.values.dtype == np.float32 and data.y.dtype == np.float32


def test_split_does_not_depend_on_read_batch_size(log_file, data, monkeypatch):
    monkeypatch.setattr(offline, "READ_ROWS", 777)
    again = load_encoded(str(log_file), bits=BITS, seed=0)
    assert (again.n_train, again.n_valid) == (data.n_train, data.n_valid)
    assert np.array_equal(again.indices, data.indices)
    assert np.array_equal(again.dense, data.dense)
    assert np.array_equal(again.y, data.y)
    other_seed = load_encoded(str(log_file), bits=BITS, seed=5)
    assert not np.array_equal(other_seed.y, data.y)


def test_chrono_split_holds_out_the_end_of_the_file(log_file):
    from streamfusion.data import open_source

    data = load_encoded(str(log_file), bits=BITS, seed=0, split="chrono")
    with open_source(str(log_file), bits=BITS, seed=0) as src:
        batches = []
        while (b := src.next_batch(5000)) is not None:
            batches.append(b)
    idx = np.concatenate([b.indices for b in batches])
    assert np.array_equal(data.indices, idx)  # file order kept: test = the last rows
    assert data.n_test == round(ROWS * 0.1)
    assert data.n_valid == round((ROWS - data.n_test) * 0.1)


def test_rows_caps_the_read(log_file):
    data = load_encoded(str(log_file), bits=BITS, seed=0, rows=5_000)
    assert len(data) == 5_000


def test_values_keep_only_numeric_columns_and_restore_exactly():
    rng = np.random.default_rng(0)
    parts = offline._Parts(4)
    full = []
    for i in range(3):
        vals = np.ones((5, 4), np.float32)
        if i >= 1:  # field 2 turns out numeric only in the second chunk
            vals[:, 2] = rng.random(5)
        vals[:, 0] = rng.random(5)
        idx = rng.integers(0, 100, (5, 4)).astype(np.int32)
        parts.add(i % 3, idx, vals, np.zeros((5, 1), np.float32), np.zeros(5, np.float32))
        full.append(vals)
    indices, values, cols, dense, y = parts.assemble()
    assert cols.tolist() == [0, 2]
    expect = np.concatenate(full)[:, [0, 2]]  # parts 0, 1, 2 hold one chunk each, in order
    assert np.array_equal(values, expect)


def test_markdown_quotes_the_paper_only_for_avazu_and_criteo(tables, data):
    report = {"table2": tables["table2"], "table3": tables["table3"],
              "data": {"file": "x.csv", "format": "avazu", "rows": len(data),
                       "train": data.n_train, "valid": data.n_valid, "test": data.n_test,
                       "split": "random", "ctr_test": 0.17},
              "leakage": {"mode": "in-sample", "folds": 0}}
    from streamfusion.reproduce import paper_comparison

    report["paper"] = paper_comparison("avazu", tables["table2"])
    md = markdown(report)
    assert "| GBDTRes+NN - DeepFM |" in md and "+0.0069" in md and "not found" in md
    report["data"]["format"] = "csv"
    report["paper"] = paper_comparison("csv", tables["table2"])
    assert "paper AUC" not in markdown(report)


def test_cli_writes_report_markdown_and_plot(tmp_path, log_file):
    from streamfusion.cli import main

    out = tmp_path / "r.json"
    code = main(["reproduce", "--file", str(log_file), "--quick", "--epochs", "1",
                 "--models", "GBDT,DeepFM,GBDT+DeepFM,GBDTRes+NN", "--table", "all",
                 "--bits", str(BITS), "--report", str(out), "--markdown", str(tmp_path / "r.md"),
                 "--plot", str(tmp_path / "r.png"), "--no-progress", "--oof", "2"])
    assert code == 0
    report = json.loads(out.read_text())
    assert [r["model"] for r in report["table2"]] == ["GBDT", "DeepFM", "GBDT+DeepFM",
                                                      "GBDTRes+NN"]
    assert [r["K"] for r in report["table3"]] == [0, 1, 2, 3]
    assert set(report["table2"][0]) >= {"model", "auc", "logloss", "seconds"}
    assert set(report["table3"][0]) >= {"K", "auc", "logloss"}
    assert report["leakage"] == {"mode": "oof", "folds": 2}
    assert report["data"]["format"] == "avazu"
    assert "GBDTRes+NN" in report["convergence"]
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert "**Table 2**" in (tmp_path / "r.md").read_text()


def test_cli_rejects_a_missing_file_and_an_unknown_model(tmp_path, capsys):
    from streamfusion.cli import main

    assert main(["reproduce", "--file", str(tmp_path / "nope.csv"), "--no-progress"]) == 1
    assert "nope.csv: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reproduce", "--models", "GBDT,XGBoost", "--no-progress"])


def _reproduce_cli(*args: str) -> subprocess.CompletedProcess:
    """`streamfusion reproduce` in its own process, so that a traceback would be seen."""
    return subprocess.run([sys.executable, "-m", "streamfusion.cli", "reproduce", *args,
                           "--no-progress"], capture_output=True, text=True, timeout=300)


def _word_log(path, bad_line: str | None = None) -> None:
    rng = np.random.default_rng(1)
    lines = ["clk,site,age,user_id"]
    for i in range(600):
        age = "unknown" if i % 150 == 7 else str(int(rng.integers(18, 80)))
        lines.append(f"{int(rng.random() < 0.3)},s{rng.integers(0, 9)},{age},{i % 40}")
    if bad_line is not None:
        lines.insert(300, bad_line)
    path.write_text("\n".join(lines) + "\n")


QUICK = ["--quick", "--epochs", "1", "--table", "2", "--models", "GBDT,LR", "--bits", "12"]


@pytest.mark.parametrize("bad,reason", [
    ("1,s3,40", "line 301: wrong column count (got 3, want 4)"),
    ("2,s3,40,1", "line 301: bad label (must be 0 or 1) in column 'clk'"),
])
def test_cli_a_bad_row_is_one_line_not_a_traceback(tmp_path, bad, reason):
    path = tmp_path / "log.csv"
    _word_log(path, bad)
    out = _reproduce_cli("--file", str(path), "--format", "csv", "--label", "clk", *QUICK)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert "Traceback" not in out.stderr and all(ln.startswith("streamfusion") for ln in lines)
    assert lines[-1] == f"streamfusion reproduce: {path}, {reason}"
    # replay's input flags: --on-error skip goes on, the row counted
    report = tmp_path / "r.json"
    out = _reproduce_cli("--file", str(path), "--format", "csv", "--label", "clk", *QUICK,
                         "--on-error", "skip", "--report", str(report))
    assert out.returncode == 0, out.stderr
    assert json.loads(report.read_text())["data"]["skipped_rows"] == 1


def test_cli_bad_input_flags_are_one_line_errors(tmp_path):
    path = tmp_path / "log.csv"
    _word_log(path)
    for args, message in (
            (["--format", "csv"], "format='csv' needs label=COLUMN"),
            (["--label", "clk", "--types", "nope=cat"], "no column 'nope'"),
            (["--format", "avazu"], "not an Avazu file"),
            (["--label", "clk", "--report", str(tmp_path)], "is a directory")):
        out = _reproduce_cli("--file", str(path), *QUICK, *args)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr


def test_cli_takes_replay_input_flags(tmp_path):
    path = tmp_path / "log.csv"
    _word_log(path)
    report = tmp_path / "r.json"
    code = main_cli("--file", str(path), "--label", "clk", *QUICK, "--report", str(report))
    assert code == 0
    data = json.loads(report.read_text())["data"]
    assert data["column_kinds"] == {"clk": "label", "site": "cat", "age": "num",
                                    "user_id": "cat"}
    assert data["unparsed_numbers"] == {"age": 4}  # words are missing values, not errors
    code = main_cli("--file", str(path), "--label", "clk", *QUICK, "--report", str(report),
                    "--types", "age=cat,user_id=skip")
    data = json.loads(report.read_text())["data"]
    assert code == 0 and data["unparsed_numbers"] == {}
    assert (data["column_kinds"]["age"], data["column_kinds"]["user_id"]) == ("cat", "skip")
    assert data["fields"] == 2


def test_reproduce_and_replay_share_the_input_flags():
    import argparse

    from streamfusion import replay, reproduce
    from streamfusion.inputs import SOURCE_OPTIONS

    def options(module) -> dict:
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        return {a.dest: (a.default, a.choices, a.help) for a in parser._actions
                if a.dest in SOURCE_OPTIONS}

    assert set(options(replay)) == set(SOURCE_OPTIONS)
    assert options(replay) == options(reproduce)
    assert "libffm" in options(reproduce)["format"][1]


def main_cli(*args: str) -> int:
    import warnings

    from streamfusion.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return main(["reproduce", *args, "--no-progress"])


def test_a_csv_log_with_a_one_class_test_part_gives_null_auc(tmp_path):
    from streamfusion.cli import main

    rng = np.random.default_rng(0)
    path = tmp_path / "log.csv"
    lines = ["clk,site,price"]
    for i in range(400):
        lines.append(f"{int(i in (3, 150))},s{rng.integers(0, 20)},{rng.integers(0, 100)}")
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "r.json"
    code = main(["reproduce", "--file", str(path), "--format", "csv", "--label", "clk",
                 "--quick", "--epochs", "1", "--table", "3", "--bits", "12", "--no-progress",
                 "--report", str(out)])
    assert code == 0
    report = json.loads(out.read_text())  # strict JSON: no NaN
    assert [r["K"] for r in report["table3"]] == [0, 1, 2, 3]
    for r in report["table3"]:
        assert r["auc"] is None or 0 <= r["auc"] <= 1
        assert math.isfinite(r["logloss"])
