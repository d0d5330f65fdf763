"""The Python API: `streamfusion.ResFusion` over columns, and its model files."""

import doctest

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest

import streamfusion
from streamfusion import api
from streamfusion.cli import main
from streamfusion.data.generate import generate
from streamfusion.data.schema import avazu_schema
from streamfusion.evaluate import auc

SMALL = {"n_trees": 20, "num_leaves": 15, "refit_every": 5000, "first_fit": 2000,
         "window": 10_000, "hidden": (32, 32), "bits": 16}
MARGINS = ("margin", "base_margin", "residual_margin")


def test_docstring_examples_run():
    result = doctest.testmod(api, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 5 and result.failed == 0


def test_exported_from_the_package():
    assert streamfusion.ResFusion is api.ResFusion and "ResFusion" in streamfusion.__all__


@pytest.fixture(scope="module")
def adult(shared_data):
    table = pcsv.read_csv(shared_data / "adult" / "adult.csv")
    y = table.column("label").to_numpy()
    return table.drop_columns(["label"]), y


def test_learns_real_columns_and_scoring_is_pure(adult):
    X, y = adult
    cut = int(0.9 * len(y))
    model = api.ResFusion(seed=0, **SMALL)
    for a in range(0, cut, 10_000):  # any chunking: the batch schedule is the replay's
        model.partial_fit(X.slice(a, min(10_000, cut - a)), y[a:min(a + 10_000, cut)])
    assert model.events == cut
    kinds = model.schema.column_kinds()
    assert kinds["age"] == "num" and kinds["workclass"] == "cat" and model.schema.label == "click"
    test = X.slice(cut)
    counts = model._encoder.counts.copy()
    p1 = model.predict_proba(test)
    p2 = model.predict_proba(test)
    assert np.array_equal(p1, p2) and np.array_equal(model._encoder.counts, counts)
    assert p1.shape == (len(y) - cut, 2) and np.allclose(p1.sum(axis=1), 1.0)
    assert auc(p1[:, 1], y[cut:]) > 0.88  # batch LightGBM: 0.93 on these rows
    # a pandas DataFrame and a dict of arrays are the same columns
    frame = test.to_pandas()
    assert np.array_equal(model.predict_proba(frame), p1)
    as_dict = {name: test.column(name).to_numpy(zero_copy_only=False)
               for name in test.column_names}
    assert np.array_equal(model.predict_proba(as_dict), p1)


def test_api_model_scores_in_the_cli_bit_for_bit(adult, tmp_path):
    X, y = adult
    X, y = X.slice(0, 12_000), y[:12_000]
    model = api.ResFusion(seed=3, **SMALL).partial_fit(X, y)
    model.save(tmp_path / "api.sfm")
    # the same rows as a file with the label first, the order the API infers the schema in
    pcsv.write_csv(pa.table([pa.array(y), *X.columns], names=["click", *X.column_names]),
                   tmp_path / "rows.csv")
    out = tmp_path / "preds.csv"
    assert main(["score", "--model", str(tmp_path / "api.sfm"), "--file",
                 str(tmp_path / "rows.csv"), "--out", str(out)]) == 0
    got = pcsv.read_csv(out, convert_options=pcsv.ConvertOptions(
        column_types={k: pa.float32() for k in MARGINS}))
    want = model.predict_margin(X)
    for name in MARGINS:
        assert np.array_equal(got[name].to_numpy(), want[name]), name


def test_replay_model_loads_in_the_api(tmp_path):
    path = tmp_path / "avazu.csv"
    generate(path, format="avazu", rows=12_000, seed=5)
    model_path = tmp_path / "replay.sfm"
    assert main(["replay", "--file", str(path), "--quiet", "--trees", "20", "--leaves", "15",
                 "--refit-every", "5000", "--first-fit", "2000", "--window", "10000",
                 "--hidden", "32,32", "--bits", "16", "--save-model", str(model_path)]) == 0
    out = tmp_path / "preds.csv"
    assert main(["score", "--model", str(model_path), "--file", str(path),
                 "--out", str(out)]) == 0
    got = pcsv.read_csv(out, convert_options=pcsv.ConvertOptions(
        column_types={k: pa.float32() for k in MARGINS}))
    names = pcsv.read_csv(path, read_options=pcsv.ReadOptions(skip_rows_after_names=12_000))
    columns = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
        column_types={n: pa.string() for n in names.column_names}))
    model = api.ResFusion.load(model_path)
    assert model.schema.name == "avazu" and model.events > 0
    # the id and click columns are not needed to score
    want = model.predict_margin(columns.drop_columns(["id", "click"]))
    for name in MARGINS:
        assert np.array_equal(got[name].to_numpy(), want[name]), name
    # and it learns on from where the replay stopped
    before = model.predict_margin(columns.slice(0, 100))["margin"]
    model.partial_fit(columns.slice(0, 2000).drop_columns(["click"]),
                      columns.column("click").to_numpy()[:2000].astype(int))
    assert not np.array_equal(model.predict_margin(columns.slice(0, 100))["margin"], before)


def test_bad_input_is_a_clear_error(adult):
    X, y = adult
    X, y = X.slice(0, 3000), y[:3000]
    model = api.ResFusion(seed=0, **SMALL).partial_fit(X, y)
    with pytest.raises(ValueError, match="column 'age' is missing"):
        model.predict_proba(X.drop_columns(["age"]))
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        model.partial_fit(X.slice(0, 3), [0, 2, 1])
    with pytest.raises(ValueError, match="one label per row"):
        model.partial_fit(X.slice(0, 3), [0, 1])
    with pytest.raises(TypeError, match="unknown settings"):
        api.ResFusion(trees=5)
    with pytest.raises(ValueError, match="has not learned"):
        api.ResFusion().predict_proba(X)
    with pytest.raises(TypeError, match="dict of arrays"):
        model.predict_proba([[1, 2]])


def test_partial_fit_learns_what_a_replay_learns(tmp_path):
    """Same chain, same defaults, same batch schedule: a table fed in any chunks, then
    finish(), is the model of `replay --holdout 0` on the same rows, bit for bit."""
    path = tmp_path / "avazu.csv"
    generate(path, format="avazu", rows=9000, seed=9)
    flags = ["--trees", "20", "--leaves", "15", "--refit-every", "5000", "--first-fit", "2000",
             "--window", "10000", "--hidden", "32,32", "--bits", "16"]
    assert main(["replay", "--file", str(path), "--quiet", "--holdout", "0", *flags,
                 "--save-model", str(tmp_path / "replay.sfm")]) == 0
    names = pcsv.read_csv(path, read_options=pcsv.ReadOptions(skip_rows_after_names=9000))
    table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
        column_types={n: pa.string() for n in names.column_names}))
    y = table.column("click").to_numpy().astype(int)
    X = table.drop_columns(["click"])
    model = api.ResFusion(avazu_schema(), **SMALL)
    step = 94 * 32  # after the first 16 events the batches are 16 (to 8,192), then 32 (to 16,384)
    for a in range(0, 9000, step):
        model.partial_fit(X.slice(a, step), y[a:a + step])
    model.finish().save(tmp_path / "api.sfm")
    replayed = api.ResFusion.load(tmp_path / "replay.sfm")
    assert replayed.events == model.events == 9000
    a, b = model.predict_margin(X), replayed.predict_margin(X)
    for name in MARGINS:
        assert np.array_equal(a[name], b[name]), name
    assert np.std(a["base_margin"]) > 0 and np.std(a["residual_margin"]) > 0
