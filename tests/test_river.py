"""streamfusion.river.ResFusionClassifier: river's own estimator checks, progressive validation
on river's Phishing stream, pure prediction, seeding, mini-batches and the feature encoding."""

from __future__ import annotations

import copy
import dataclasses
import doctest
import itertools
import os
import pickle
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from river import checks, datasets, evaluate, linear_model, metrics, optim, preprocessing
from streamfusion._parse import hash_value

from streamfusion.fusion import ROW_LR
from streamfusion.river import PAD_ROW, ResFusionClassifier

PHISHING = list(datasets.Phishing())  # 1250 events, 9 numeric features


def _river_checks():
    cases = []
    for p, params in enumerate(ResFusionClassifier._unit_test_params()):
        model = ResFusionClassifier(**params)
        found = list(checks.yield_checks(model))
        seen: dict[str, int] = {}
        for check in found:
            if check.__name__ in model._unit_test_skips():
                continue
            n = seen[check.__name__] = seen.get(check.__name__, 0) + 1
            cases.append(pytest.param(model, check, id=f"params{p}-{check.__name__}-{n}"))
    return cases


@pytest.mark.parametrize(("model", "check"), _river_checks())
def test_river_estimator_check(model, check):
    check(model.clone())  # exactly what river.checks.check_estimator does, one check at a time


def test_only_the_documented_check_is_skipped():
    assert ResFusionClassifier()._unit_test_skips() == {"check_learn_many_matches_learn_one"}
    assert ResFusionClassifier()._multiclass is False


# --------------------------------------------------------------------------- accuracy
def _progressive_auc(model, stream=PHISHING):
    return evaluate.progressive_val_score(stream, model, metrics.ROCAUC()).get()


def test_progressive_val_score_on_phishing():
    # Measured (progressive ROCAUC on all 1250 events): ResFusionClassifier() 0.9539 (seeds
    # 0-3, 42: 0.954-0.956; residual="deepfm" 0.9496, "lr" 0.9536). river's own:
    # StandardScaler | LogisticRegression(SGD(0.1)) 0.9543, LogisticRegression() 0.8936,
    # StandardScaler | FMClassifier 0.9493, HoeffdingTreeClassifier 0.9112, ARFClassifier
    # 0.9602. Trees with TreeStage's click-log defaults (first fit at 1000 rows, leaves of
    # 100) gave 0.924: hence first_fit / min_data_in_leaf.
    ours = _progressive_auc(ResFusionClassifier())
    lr = _progressive_auc(preprocessing.StandardScaler()
                          | linear_model.LogisticRegression(optimizer=optim.SGD(0.1)))
    print(f"progressive ROCAUC on Phishing: ResFusionClassifier {ours:.4f}, "
          f"StandardScaler | LogisticRegression {lr:.4f}")
    assert ours > 0.85  # a constant scores 0.5


def test_the_trees_capture_what_a_linear_model_cannot():
    # Bananas: two numeric features, classes in curved bands. Measured on 2000 events:
    # ResFusionClassifier 0.913 (all 5300: 0.939), StandardScaler | LogisticRegression 0.534.
    stream = list(datasets.Bananas().take(2000))
    model = ResFusionClassifier()
    assert _progressive_auc(model, stream) > 0.85
    assert model.model_.refits >= 3 and model.model_.version >= 3


@pytest.mark.parametrize("residual", ["deepfm", "lr"])
def test_other_residual_learners_learn_phishing(residual):
    assert _progressive_auc(ResFusionClassifier(residual=residual)) > 0.85


def test_categorical_features_are_learned():
    rng = np.random.default_rng(3)
    colors = ["red", "green", "blue", "cyan"]
    effect = {"red": 2.0, "green": -2.0, "blue": 1.0, "cyan": -1.0}
    stream = []
    for _ in range(1500):
        c = colors[rng.integers(4)]
        flag = bool(rng.integers(2))
        z = effect[c] + (1.0 if flag else -1.0)
        stream.append(({"color": c, "flag": flag}, bool(rng.random() < 1 / (1 + np.exp(-z)))))
    # no numeric feature at all: the trees only hold the prior, the residual learner does it all
    assert _progressive_auc(ResFusionClassifier(), stream) > 0.8


# --------------------------------------------------------------------------- purity, seeding
def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    return a == b or (a != a and b != b)


def _snapshot(model):
    return copy.deepcopy((model.model_.state_dict(), model._encoder.__dict__))


def _learned(n, **params):
    model = ResFusionClassifier(**params)
    for x, y in PHISHING[:n]:
        model.learn_one(x, y)
    return model


def test_prediction_is_pure():
    model = _learned(700)  # past the first tree refit (500 events)
    before = _snapshot(model)
    probes = [x for x, _ in PHISHING[700:760]]
    probes += [{"never_seen": 3.5, "a_category": "zzz", "flag": True}, {}, {"https": None}]
    first = [model.predict_proba_one(x) for x in probes]
    frame = pa.Table.from_pylist([x for x, _ in PHISHING[700:760]])
    many = model.predict_proba_many(frame)
    model.predict_one(probes[0])
    model.predict_many(frame)
    assert _same(before, _snapshot(model))
    assert [model.predict_proba_one(x) for x in probes] == first
    assert model.predict_proba_many(frame).equals(many)


def test_same_seed_same_predictions_and_the_seed_matters():
    def run(seed):
        model = ResFusionClassifier(seed=seed)
        out = []
        for x, y in PHISHING[:800]:
            out.append(model.predict_proba_one(x)[True])
            model.learn_one(x, y)
        return np.array(out)

    a, b, c = run(7), run(7), run(8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_pickle_round_trip_continues_identically():
    model = _learned(600)
    twin = pickle.loads(pickle.dumps(model))
    for x, y in PHISHING[600:900]:
        assert model.predict_proba_one(x) == twin.predict_proba_one(x)
        model.learn_one(x, y)
        twin.learn_one(x, y)
    assert model.model_.refits == twin.model_.refits >= 1


def test_a_pickle_from_before_pair_weights_loads_as_it_was(monkeypatch):
    """A DeepFM classifier pickled before pair and field weights existed continues as the
    plain DeepFM it was, whatever today's defaults."""
    config = ResFusionClassifier._config
    with monkeypatch.context() as m:
        m.setattr(ResFusionClassifier, "_config",
                  lambda self: dataclasses.replace(config(self), pair_weights=False))
        model = _learned(600, residual="deepfm")
    state = model.__getstate__()
    for cfg in (state["model_"]["config"], state["model_"]["chain"]["stages"]["1"]["config"]):
        del cfg["pair_weights"], cfg["pair_lr"], cfg["step_rows"]  # as the code before wrote them
        del cfg["field_weights"]
    old = ResFusionClassifier.__new__(ResFusionClassifier)
    old.__setstate__(state)
    assert old.model_.config.pair_weights is False and old.model_.config.step_rows == 0
    assert old.model_.config.field_weights is False
    assert model.model_.config.step_rows == 0  # learn_many: one step per frame
    assert model.model_.config.adam_batch == 0  # lr is set for steps of one event
    for x, y in PHISHING[600:700]:
        assert old.predict_proba_one(x) == model.predict_proba_one(x)
        old.learn_one(x, y)
        model.learn_one(x, y)


def test_clone_is_fresh():
    model = _learned(50, seed=3, residual="lr")
    clone = model.clone()
    assert clone.model_ is None and clone.seed == 3 and clone.residual == "lr"
    assert clone.predict_proba_one(PHISHING[0][0]) == {False: 0.5, True: 0.5}


# --------------------------------------------------------------------------- mini-batches
def test_learn_many_of_single_rows_is_learn_one():
    one, many = ResFusionClassifier(refit_every=100), ResFusionClassifier(refit_every=100)
    for x, y in PHISHING[:260]:
        one.learn_one(x, y)
        many.learn_many(pa.Table.from_pylist([x]), [y])
    assert one.model_.version == many.model_.version == 2
    probes = [x for x, _ in PHISHING[600:700]]
    assert [one.predict_proba_one(x) for x in probes] == [many.predict_proba_one(x) for x in probes]


def test_learn_many_learns_and_predict_many_matches_predict_one():
    model = ResFusionClassifier()
    metric = metrics.ROCAUC()
    for start in range(0, len(PHISHING), 50):
        chunk = PHISHING[start:start + 50]
        frame = pa.Table.from_pylist([x for x, _ in chunk])
        p = model.predict_proba_many(frame)
        assert p.column_names == ["False", "True"]
        for (_, y), pt in zip(chunk, p.column("True").to_pylist(), strict=True):
            metric.update(y, {True: pt, False: 1 - pt})
        model.learn_many(frame, [y for _, y in chunk])
    assert metric.get() > 0.85
    probes = PHISHING[:40]
    frame = pa.Table.from_pylist([x for x, _ in probes])
    many = model.predict_proba_many(frame).column("True").to_pylist()
    one = [model.predict_proba_one(x)[True] for x, _ in probes]
    np.testing.assert_allclose(many, one, rtol=1e-12)
    assert model.predict_many(frame).to_pylist() == [p > 0.5 for p in one]


def test_learn_many_with_pandas():
    pd = pytest.importorskip("pandas")
    model = ResFusionClassifier()
    X = pd.DataFrame([x for x, _ in PHISHING[:200]], index=range(100, 300))
    model.learn_many(X, pd.Series([y for _, y in PHISHING[:200]]))
    p = model.predict_proba_many(X)
    assert list(p.columns) == [False, True] and list(p.index) == list(X.index)
    assert np.allclose(p[False] + p[True], 1.0)
    # pandas' nulls are missing values, in frames as in dicts
    Y = pd.DataFrame({"https": pd.array([1, None], dtype="Int64"), "c": ["a", pd.NA]})
    many = model.predict_proba_many(Y)[True].tolist()
    assert many[1] == model.predict_proba_one({})[True]
    assert many == [model.predict_proba_one(dict(Y.iloc[i]))[True] for i in range(2)]


def test_learn_many_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="rows"):
        ResFusionClassifier().learn_many(pa.Table.from_pylist([{"a": 1.0}]), [True, False])


# --------------------------------------------------------------------------- encoding
def _encode(model, x, learn=False):
    return model._encode_one(x, True, learn=learn)


def test_feature_order_and_missing_values_do_not_matter():
    model = _learned(30)
    x = dict(PHISHING[40][0])
    shuffled = dict(reversed(list(x.items())))
    a, b = _encode(model, x), _encode(model, shuffled)
    assert np.array_equal(a.indices, b.indices) and np.array_equal(a.values, b.values)
    assert np.array_equal(a.dense, b.dense, equal_nan=True)
    name = next(iter(x))
    gone = {k: v for k, v in x.items() if k != name}
    for missing in (None, float("nan"), float("inf")):
        c, d = _encode(model, {**gone, name: missing}), _encode(model, gone)
        assert np.array_equal(c.indices, d.indices) and np.array_equal(c.values, d.values)
        assert np.array_equal(c.dense, d.dense, equal_nan=True)


def test_numeric_categorical_and_bool_encodings():
    model = ResFusionClassifier(bits=16, seed=5)
    b = _encode(model, {"n": 3.0, "s": "abc", "b": True}, learn=True)
    slots = model._encoder.slots
    assert sorted(slots, key=str) == ["b", "n", "s"]  # fields given in name order
    assert slots == {"b": 0, "n": 1, "s": 2}
    assert model._encoder.columns == {"n": 0}  # only numbers reach the trees
    row = b.indices[0]
    assert row[1] == hash_value(0, b"nn", 16, 5)  # numeric: the name's row, scaled value
    assert b.values[0, 1] == pytest.approx(np.log1p(3.0))
    assert row[2] == hash_value(0, b"cs\x00sabc", 16, 5)  # categorical: (name, value), 1.0
    assert row[0] == hash_value(0, b"cb\x00b1", 16, 5)  # bool is categorical, not 1
    assert list(b.values[0, :3]) == [1.0, pytest.approx(np.log1p(3.0)), 1.0]
    assert (b.indices[0, 3:] == PAD_ROW).all() and (b.values[0, 3:] == 0).all()
    assert b.dense[0, 0] == 3.0 and np.isnan(b.dense[0, 1:]).all()
    one = _encode(model, {"b": 1})
    assert one.indices[0, 0] != row[0]  # the number 1 is not the boolean True
    neg = _encode(model, {"n": -3.0})
    assert neg.values[0, 1] == -b.values[0, 1]


def test_hashing_is_stable_across_processes():
    # MurmurHash with the seed, not Python's per-process salted hash(): another process with
    # another hash seed computes the rows this encoder uses
    x = {"site": "abc", 7: "x", "n": 2.0}
    here = _encode(ResFusionClassifier(bits=20, seed=3), x, learn=True).indices[0, :3].tolist()
    keys = [b"nn", b"csite\x00sabc", b"c\x00int:7\x00sx"]  # fields in name order: n, site, 7
    code = ("from streamfusion._parse import hash_value as h; "
            f"print([h(0, k, 20, 3) for k in {keys!r}])")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == str(here)


def test_frame_encoding_equals_dict_encoding():
    rows = [{"a": 1.5, "b": "x", "c": True}, {"a": None, "b": 2, "d": float("nan")},
            {"b": "y", "e": np.int32(-3), "f": (1, 2)}, {}, {"c": False, "a": -1e40}]
    model = ResFusionClassifier(max_fields=4, max_dense=2)
    for x in rows[:2]:
        model.learn_one(x, True)
    names = sorted({k for x in rows for k in x})
    cols = {}
    for k in names:
        cols[k] = np.empty(len(rows), dtype=object)
        cols[k][:] = [x.get(k) for x in rows]
    many = model._encoder.encode(cols, len(rows), None, learn=False)
    for i, x in enumerate(rows):
        one = _encode(model, x)
        assert np.array_equal(one.indices[0], many.indices[i])
        assert np.array_equal(one.values[0], many.values[i])
        assert np.array_equal(one.dense[0], many.dense[i], equal_nan=True)


def test_field_overflow_packs_into_free_fields_then_drops():
    model = ResFusionClassifier(max_fields=3, max_dense=2)
    _encode(model, {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}, learn=True)
    enc = model._encoder
    assert enc.slots == {"a": 0, "b": 1, "c": 2} and enc.columns == {"a": 0, "b": 1}
    assert enc.dropped == 1  # "d" found no free field
    b = _encode(model, {"b": 2.0, "d": 4.0, "e": "x"})  # d and e take a's and c's fields
    assert b.indices[0, 0] == hash_value(0, b"nd", model.bits, 0)
    assert b.indices[0, 2] == hash_value(0, b"ce\x00sx", model.bits, 0)
    assert enc.dropped == 1  # prediction counts nothing


def test_unusual_values_and_names():
    model = ResFusionClassifier()
    x = {"i": np.int64(4), "f": np.float32(0.5), "nb": np.bool_(False), 7: "seven",
         ("t", 1): 2.0, "big": 1e300, "obj": (1, 2), "u": "é\ud800"}
    model.learn_one(x, True)
    model.learn_one(x, False)
    p = model.predict_proba_one(x)
    assert set(p) == {False, True} and 0 < p[True] < 1
    assert model._encoder.columns.keys() == {"i", "f", ("t", 1), "big"}


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="residual"):
        ResFusionClassifier(residual="gbdt")
    with pytest.raises(ValueError, match="max_fields"):
        ResFusionClassifier(max_fields=0)
    with pytest.raises(ValueError, match="tree_shrinkage"):
        ResFusionClassifier(tree_shrinkage=0.0)


def test_the_tree_shrinkage_reaches_the_chain():
    model = ResFusionClassifier(tree_shrinkage=0.5, bits=12)
    model.learn_one({"a": 1.0}, True)
    assert model.model_.chain.tree_stages[0].shrinkage == 0.5
    assert ResFusionClassifier().tree_shrinkage == 1.0


def test_docstring_example_runs():
    finder = doctest.DocTestFinder()
    tests = finder.find(ResFusionClassifier)
    (test,) = [t for t in tests if t.name.endswith("ResFusionClassifier")]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
    assert runner.summarize(verbose=False).attempted >= 4


def test_frequent_refits_with_features_coming_and_going():
    model = ResFusionClassifier(refit_every=100, window=150)
    for i, (x, y) in enumerate(itertools.islice(PHISHING, 400)):
        model.learn_one({k: v for j, (k, v) in enumerate(x.items()) if (i + j) % 3}, y)
    assert model.model_.refits >= 2
    p = model.predict_proba_one(PHISHING[500][0])
    assert 0 < p[True] < 1 and p[False] == 1 - p[True]


def test_the_first_order_step_does_not_count_padded_slots():
    """A dict fills some of the max_fields slots: the learner keeps the fixed step whatever
    max_fields is, where a chain of fixed fields spreads ROW_STEP over them."""
    for max_fields in (8, 32, 64):
        model = ResFusionClassifier(max_fields=max_fields)._build()
        assert model.config.row_lr == model.chain.stages[-1].row_lr == ROW_LR
