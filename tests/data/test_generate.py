"""The generator: exact Kaggle formats, chronology, determinism, truth file, planted signal."""

from __future__ import annotations

import argparse
import gzip

import lightgbm as lgb
import numpy as np
import pytest

from streamfusion.data import generate as G

AVAZU_HEADER = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,"
                "app_domain,app_category,device_id,device_ip,device_model,device_type,"
                "device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21")
HEX_COLS = range(5, 14)


def _auc(p: np.ndarray, y: np.ndarray) -> float:
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    ranks[order] = np.arange(1, len(p) + 1)
    npos = y.sum()
    return float((ranks[y == 1].sum() - npos * (npos + 1) / 2) / (npos * (len(y) - npos)))


@pytest.fixture(scope="module")
def avazu(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    stats = G.generate(d / "a.csv", "avazu", rows=60_000, seed=3, truth_path=d / "a.truth")
    lines = (d / "a.csv").read_text().splitlines()
    truth = np.loadtxt(d / "a.truth")
    return stats, lines, truth, d


def test_avazu_exact_format(avazu):
    _, lines, _, _ = avazu
    assert lines[0] == AVAZU_HEADER
    rows = [ln.split(",") for ln in lines[1:]]
    assert len(rows) == 60_000 and all(len(r) == 24 for r in rows)
    for r in rows[:2000]:
        assert 0 <= int(r[0]) < 2**64  # uint64 ids
        assert r[1] in ("0", "1")
        for j in HEX_COLS:
            assert len(r[j]) == 8 and int(r[j], 16) >= 0
        for j in [3, 4] + list(range(14, 24)):
            int(r[j])
    assert '"' not in "".join(lines[:100])


def test_avazu_hours_chronological_over_ten_days(avazu):
    _, lines, _, _ = avazu
    hours = np.array([int(ln.split(",", 3)[2]) for ln in lines[1:]])
    assert hours[0] == 14102100 and hours[-1] == 14103023
    assert np.all(np.diff(hours) >= 0)
    assert len(np.unique(hours)) == 240
    assert set(hours // 100 % 100) == set(range(21, 31)) and set(hours % 100) == set(range(24))


def test_truth_file_and_stats(avazu):
    stats, lines, truth, _ = avazu
    y = np.array([int(ln.split(",", 2)[1]) for ln in lines[1:]])
    assert truth.shape == (60_000,) and np.all((truth > 0) & (truth < 1))
    assert 0.13 < y.mean() < 0.21 and stats["clicks"] == y.sum()
    auc = _auc(truth, y)
    assert auc > 0.72
    assert abs(stats["truth_auc"] - auc) < 1e-3


def test_same_seed_same_bytes_other_seed_differs(tmp_path, avazu):
    _, _, _, d = avazu
    G.generate(tmp_path / "b.csv", "avazu", rows=60_000, seed=3)
    assert (tmp_path / "b.csv").read_bytes() == (d / "a.csv").read_bytes()
    G.generate(tmp_path / "c.csv", "avazu", rows=1000, seed=4)
    assert (tmp_path / "c.csv").read_bytes()[:5000] != (d / "a.csv").read_bytes()[:5000]


def test_criteo_exact_format(tmp_path):
    G.generate(tmp_path / "c.txt.gz", "criteo", rows=5000, seed=1, truth_path=tmp_path / "t")
    lines = gzip.open(tmp_path / "c.txt.gz", "rt").read().splitlines()
    assert len(lines) == 5000
    rows = [ln.split("\t") for ln in lines]
    assert all(len(r) == 40 for r in rows)
    empty_int = empty_cat = 0
    for r in rows:
        assert r[0] in ("0", "1")
        for v in r[1:14]:
            if v == "":
                empty_int += 1
            else:
                int(v)
        for v in r[14:]:
            if v == "":
                empty_cat += 1
            else:
                assert len(v) == 8 and int(v, 16) >= 0
    assert empty_int > 0 and empty_cat > 0
    assert len(np.loadtxt(tmp_path / "t")) == 5000


def test_planted_signal(avazu):
    """Trees find the integer/hour signal; the id-cross signal is there beyond it."""
    _, lines, truth, _ = avazu
    rows = [ln.split(",") for ln in lines[1:]]
    y = np.array([int(r[1]) for r in rows], float)
    ints = np.array([[int(r[j]) for j in [3, 4] + list(range(14, 24))] for r in rows], float)
    hod = np.array([int(r[2]) % 100 for r in rows], float)
    X = np.column_stack([ints, hod]).astype(np.float32)
    ntr = 45_000
    params = dict(objective="binary", num_leaves=31, min_data_in_leaf=100, verbose=-1,
                  num_threads=1, learning_rate=0.1)
    booster = lgb.train(params, lgb.Dataset(X[:ntr], y[:ntr]), 60)
    tree_auc = _auc(booster.predict(X[ntr:], raw_score=True), y[ntr:])
    assert tree_auc > 0.62
    # what the trees cannot see is large: the truth is far better on the same rows
    assert _auc(truth[ntr:], y[ntr:]) > tree_auc + 0.04
    # and it lives in id crosses: the truth's logit beyond the trees varies with (site, model)
    resid = np.log(truth / (1 - truth)) - booster.predict(X, raw_score=True)
    pub = np.array([r[5] + r[8] for r in rows])
    pair = np.char.add(pub, np.array([r[13] for r in rows]))
    values, counts = np.unique(pair, return_counts=True)
    top = values[counts >= 25]
    means = [resid[pair == v].mean() for v in top]
    assert len(top) >= 5 and np.std(means) > 0.2


def test_cli_run(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    G.add_arguments(parser)
    args = parser.parse_args(["--format", "criteo", "--rows", "100", "--out",
                              str(tmp_path / "x.txt"), "--seed", "2"])
    assert G.run(args) == 0
    assert len((tmp_path / "x.txt").read_text().splitlines()) == 100
    assert "truth AUC" in capsys.readouterr().out
    with pytest.raises(ValueError):
        G.generate(tmp_path / "y", "libsvm", rows=1)
