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

from streamfusion.batch import CONVERGENCE, TABLE2, Experiment, FitOptions, default_config
from streamfusion.batch import load as batch_load
from streamfusion.batch.load import load_log
from streamfusion.data.generate import generate
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
    return load_log(str(log_file), bits=BITS, seed=0)


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
    # every row says what each of its stages kept
    assert [len(r["kept"]) for r in tables["table3"]] == [1, 2, 3, 4]
    assert by["GBDT2DNN"]["chain"][-1] == "dnn" and by["GBDT2DeepFM"]["chain"][-1] == "deepfm"
    assert by["GBDT2DNN"]["logloss"] != by["GBDT2DeepFM"]["logloss"]
    # a residual stage never makes the validation logloss worse than what it builds on
    for r in tables["table3"][1:]:
        assert r["logloss"] == tables["table3"][r["K"] - 1]["logloss"] or all(
            k.get("epochs_kept", 1) and k.get("trees_kept", 1) for k in r["kept"][-1:]), r


def test_convergence_curves_for_the_four_models(tables):
    conv = tables["convergence"]
    assert set(conv) == set(CONVERGENCE)
    checks = small_config()[1].checks
    for name, points in conv.items():
        first = 0 if name == "GBDTRes+NN" else 1 / checks  # epoch 0: the trees alone
        expect = [round(first + i / checks, 6) for i in range(len(points))]
        assert [p["epoch"] for p in points] == pytest.approx(expect), name
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
    monkeypatch.setattr(batch_load, "READ_ROWS", 777)
    again = load_log(str(log_file), bits=BITS, seed=0)
    assert (again.n_train, again.n_valid) == (data.n_train, data.n_valid)
    assert np.array_equal(again.indices, data.indices)
    assert np.array_equal(again.dense, data.dense)
    assert np.array_equal(again.y, data.y)
    other_seed = load_log(str(log_file), bits=BITS, seed=5)
    assert not np.array_equal(other_seed.y, data.y)


def test_chrono_split_holds_out_the_end_of_the_file(log_file):
    from streamfusion.data import open_source

    data = load_log(str(log_file), bits=BITS, seed=0, split="chrono")
    with open_source(str(log_file), bits=BITS, seed=0) as src:
        batches = []
        while (b := src.next_batch(5000)) is not None:
            batches.append(b)
    idx = np.concatenate([b.indices for b in batches])
    # file order kept (test = the last rows), hashed rows renumbered one to one
    pairs = np.unique(np.stack([idx.ravel(), data.indices.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(idx)) == len(np.unique(data.indices))
    assert data.table_rows == len(np.unique(idx))
    assert data.n_test == round(ROWS * 0.1)
    assert data.n_valid == round((ROWS - data.n_test) * 0.1)


def test_rows_caps_the_read(log_file):
    data = load_log(str(log_file), bits=BITS, seed=0, rows=5_000)
    assert len(data) == 5_000


def test_values_keep_only_numeric_columns_and_restore_exactly():
    rng = np.random.default_rng(0)
    parts = batch_load._Parts(4)
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


def _report(tables, data, fmt):
    from streamfusion.reproduce import paper_comparison

    report = {"table2": [dict(r) for r in tables["table2"]],
              "table3": [dict(r) for r in tables["table3"]],
              "data": {"file": "x.csv", "format": fmt, "rows": len(data), "train": data.n_train,
                       "valid": data.n_valid, "test": data.n_test, "split": "random",
                       "ctr_test": 0.17, "table_rows": data.table_rows},
              "settings": {"epochs": 2, "patience": 1, "n_trees": 25, "num_leaves": 15,
                           "k": 4, "hidden": [16, 16], "hash_bits": BITS},
              "leakage": {"mode": "in-sample", "folds": 0, "explain": "in-sample margins"}}
    report["paper"] = paper_comparison(report)
    return report


@pytest.mark.parametrize("fmt,dataset,top,gain", [
    ("avazu", "Avazu", "| GBDTRes+NN | {} | 0.7921 | {} | 0.3720 |", "+0.0069"),
    ("criteo", "Criteo", "| GBDTRes+NN | {} | 0.8065 | {} | 0.4348 |", "+0.0106"),
    ("csv", "ZhiHu", "| GBDTRes+NN | {} | 0.8676 | {} | 0.3679 |", "+0.0964"),
])
def test_markdown_puts_the_papers_figures_beside_ours(tables, data, fmt, dataset, top, gain):
    report = _report(tables, data, fmt)
    md = markdown(report)
    by = {r["model"]: r for r in report["table2"]}
    ours = by["GBDTRes+NN"]
    assert top.format(f"{ours['auc']:.4f}", f"{ours['logloss']:.4f}") in md
    assert f"paper {dataset} AUC" in md and "| 3 | trees + deepfm + trees + deepfm |" in md
    assert by["LR"]["paper"]["auc"] == {"avazu": 0.5453, "criteo": 0.5690,
                                        "csv": 0.6122}[fmt]
    assert report["table3"][2]["paper"]["auc"] == {"avazu": 0.7925, "criteo": 0.8073,
                                                   "csv": 0.8684}[fmt]
    mine = ours["auc"] - by["DeepFM"]["auc"]
    assert f"| GBDTRes+NN - DeepFM | {mine:+.4f} | {gain} |" in md
    assert "nearest reference" in md if fmt == "csv" else "nearest" not in md
    assert "Protocol differences" in md and f"of {len(data):,} rows" in md
    json.dumps(report, allow_nan=True)  # the report stays JSON


def test_cli_writes_report_markdown_and_plot(tmp_path, log_file, capsys):
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
    assert (report["leakage"]["mode"], report["leakage"]["folds"]) == ("oof", 2)
    assert report["data"]["format"] == "avazu"
    assert "GBDTRes+NN" in report["convergence"]
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert "**Table 2**" in (tmp_path / "r.md").read_text()
    assert report["paper"]["gains"]["GBDTRes+NN - GBDT"]["paper"] == pytest.approx(0.0313)
    assert report["table2"][0]["paper"] == {"auc": 0.7608, "logloss": 0.3895}
    assert "without that row" in report["leakage"]["explain"]
    # tables sized by the log: a 16k-row log needs far less than 2**bits rows per table
    assert report["data"]["table_rows"] < 2**BITS
    # the terminal shows the paper's Avazu figures and gains beside ours
    out = capsys.readouterr().out
    assert "paper: Avazu" in out and "0.7921" in out and "+0.0313" in out
    assert "without that row" in out


def test_cli_checks_and_scales_flags(tmp_path, log_file, capsys):
    from streamfusion.cli import main

    args = ["reproduce", "--file", str(log_file), "--quick", "--epochs", "1", "--table", "2",
            "--models", "GBDT,GBDTRes+NN", "--bits", str(BITS), "--no-progress"]
    out = tmp_path / "default.json"
    assert main([*args, "--report", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (report["settings"]["checks"], report["settings"]["scales"]) == (4, True)
    curve = [p["epoch"] for p in report["convergence"]["GBDTRes+NN"]]
    assert curve[:3] == [0, 0.25, 0.5]
    assert any("stage scales" in line for line in report["paper"]["differences"])
    # the paper's plain sum, one check per epoch
    out = tmp_path / "paper.json"
    assert main([*args, "--checks", "1", "--no-scales", "--report", str(out)]) == 0
    report = json.loads(out.read_text())
    assert (report["settings"]["checks"], report["settings"]["scales"]) == (1, False)
    assert [p["epoch"] for p in report["convergence"]["GBDTRes+NN"]] == [0, 1]
    assert all("scales" not in k for r in report["table2"] for k in r["kept"])
    assert not any("stage scales" in line for line in report["paper"]["differences"])
    capsys.readouterr()
    assert main([*args, "--checks", "0"]) == 2
    assert "--checks needs at least 1" in capsys.readouterr().err


def test_kept_shows_checks_and_stage_scales():
    from streamfusion.reproduce import kept

    row = {"kept": [{"stage": "trees", "trees_kept": 59},
                    {"stage": "deepfm", "epochs_kept": 1.25, "epochs_run": 3,
                     "scales": [0.912, 1.3049, -0.1]},
                    {"stage": "deepfm", "epochs_kept": 0, "epochs_run": 2}]}
    assert kept(row) == "59 trees, 1.25/3 epochs (x0.91 + x1.30), 0/2 epochs"


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
    ("2,s3,40,1", "line 301: bad label (must be 0, 1, true or false) in column 'clk'"),
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
            (["--label", "nope"], "label column 'nope' not in the header"),
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
