"""TreeStage: prior, refit schedule, deterministic swaps, purity, state round trip."""

from __future__ import annotations

import copy
import time
from types import SimpleNamespace

import lightgbm as lgb
import numpy as np
import pytest

from streamfusion.stages import trees
from streamfusion.stages.trees import RefitCancelled, TreeStage

T = 4


def _batch(rng: np.random.Generator, n: int, shift: float = 0.0) -> SimpleNamespace:
    X = rng.random((n, T), dtype=np.float32)
    logit = 3 * (X[:, 0] - 0.5) + 2 * (X[:, 1] > 0.7) + shift - 1
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return SimpleNamespace(dense=X, y=y)


def _stage(**kw) -> TreeStage:
    args = dict(n_trees=10, num_leaves=7, refit_every=1000, window=1500, min_data_in_leaf=20,
                min_fit_rows=200, swap_lag=300, seed=3, drift=True, guard=False)
    args.update(kw)
    return TreeStage(**args)


def _feed(stage: TreeStage, batches: list, log: list | None = None) -> None:
    for b in batches:
        z = np.zeros(len(b.y), np.float32)
        stage.observe(b, z, np.ones(len(b.y), bool))
        swapped = stage.poll()
        if log is not None:
            log.append((stage.n_seen, swapped, stage.version, stage.refits))


def _stream(seed: int, n_batches: int, size: int = 100) -> list:
    rng = np.random.default_rng(seed)
    return [_batch(rng, size) for _ in range(n_batches)]


def test_prior_before_first_fit(rng):
    stage = _stage()
    b = _batch(rng, 50)
    assert np.allclose(stage.margin(b), 0.0)  # (0 + 1) / (0 + 2)
    b.y[:] = 0
    b.y[:10] = 1
    stage.observe(b, np.zeros(50, np.float32), np.ones(50, bool))
    expect = np.log(11 / 41)
    assert stage.margin(b).dtype == np.float32
    np.testing.assert_allclose(stage.margin(b), expect, rtol=1e-6)
    assert _stage(use_init_score=True).margin(b).tolist() == [0.0] * 50


def test_mask_and_missing_labels_are_not_learned(rng):
    stage = _stage()
    b = _batch(rng, 100)
    b.y[:10] = np.nan
    mask = np.ones(100, bool)
    mask[10:40] = False
    stage.observe(b, np.zeros(100, np.float32), mask)
    assert stage.n_seen == 60


def test_refit_at_n_and_swap_at_the_deterministic_point():
    stage = _stage(drift=False)
    log: list = []
    _feed(stage, _stream(0, 20), log)
    # the refit starts once 1000 rows are seen, swaps at the first poll after 300 more
    assert [r for r in log if r[0] == 900][0][3] == 0
    assert [r for r in log if r[0] == 1000][0][2:] == (0, 1)
    swaps = [r[0] for r in log if r[1]]
    assert swaps == [1300]
    assert stage.version == 1 and stage.refits == 2  # second refit started at 2000
    stage.wait()
    assert stage.version == 1  # waiting does not swap
    b = _batch(np.random.default_rng(9), 300)
    stage.observe(b, np.zeros(300, np.float32), None)
    assert stage.poll() and stage.version == 2


def test_swaps_identical_whatever_the_thread_timing():
    runs = []
    for background in (True, False):
        stage = _stage(background=background)
        log: list = []
        _feed(stage, _stream(1, 40), log)
        b = _batch(np.random.default_rng(5), 200)
        runs.append((log, stage.margin(b).tobytes()))
    assert runs[0] == runs[1]


def test_margin_is_pure_and_matches_lightgbm():
    stage = _stage(drift=False)
    _feed(stage, _stream(2, 14))
    assert stage.version == 1
    b = _batch(np.random.default_rng(4), 500)
    before = copy.deepcopy(stage.state_dict())
    m1 = stage.margin(b)
    m2 = stage.margin(b)
    assert np.array_equal(m1, m2)
    after = stage.state_dict()
    assert before["n_seen"] == after["n_seen"]
    assert np.array_equal(before["window_X"], after["window_X"])
    ref = stage.booster.predict(b.dense, raw_score=True).astype(np.float32)
    np.testing.assert_allclose(m1, ref, atol=1e-6)


def test_use_init_score_fits_the_residual(rng):
    stage = _stage(use_init_score=True, drift=False, swap_lag=0)
    for _ in range(10):
        b = _batch(rng, 100)
        z = np.full(100, 5.0, np.float32)  # earlier stages already predict "click"
        stage.observe(b, z, np.ones(100, bool))
    assert stage.poll()
    # a residual on top of +5 must pull the margin strongly down
    assert stage.margin(_batch(rng, 200)).mean() < -3


def test_state_round_trip_same_margins_and_future_swaps():
    stream = _stream(3, 50)
    full = _stage()
    log_full: list = []
    _feed(full, stream, log_full)

    part = _stage()
    log_part: list = []
    cut = 0
    while cut < 12 or part._pending is None:  # stop while a refit is pending
        _feed(part, stream[cut:cut + 1], log_part)
        cut += 1
    state = part.state_dict()
    resumed = _stage(threads=2)  # threads may differ between runs
    resumed.load_state_dict(state)
    b = _batch(np.random.default_rng(6), 300)
    assert np.array_equal(resumed.margin(b), part.margin(b))
    _feed(resumed, stream[cut:], log_part)
    assert log_part == log_full
    assert np.array_equal(resumed.margin(b), full.margin(b))
    assert resumed.state_dict()["adwin_history"].tolist() == \
        full.state_dict()["adwin_history"].tolist()


def test_refit_interval_doubles_from_first_fit_to_refit_every():
    stage = _stage(refit_every=8000, first_fit=1000, swap_lag=3000, drift=False)
    log: list = []
    _feed(stage, _stream(6, 260), log)
    before = [(0, False, 0, 0)] + log[:-1]
    starts = [r[0] for prev, r in zip(before, log, strict=True) if r[3] > prev[3]]
    # each swap comes half the next interval (at most swap_lag) after its refit starts
    swaps = [r[0] for r in log if r[1]]
    assert swaps == [1500, 3000, 6000, 11000, 19000]
    assert starts == [1000, 2000, 4000, 8000, 16000, 24000]


def test_a_slow_refit_swaps_a_whole_interval_after_its_start():
    # windows of 4,000+ rows are slow here: their refits swap when the next refit is due
    stage = _stage(refit_every=8000, first_fit=1000, swap_lag=10_000, window=20_000,
                   drift=False, slow_fit_rows=4000)
    log: list = []
    _feed(stage, _stream(6, 260), log)
    before = [(0, False, 0, 0)] + log[:-1]
    starts = [r[0] for prev, r in zip(before, log, strict=True) if r[3] > prev[3]]
    swaps = [r[0] for r in log if r[1]]
    # the small refits swap half an interval on, the slow ones a whole one; a refit starts
    # only once the one before has swapped (one batch of 100 rows later)
    assert starts == [1000, 2000, 4000, 8100, 16200, 24300]
    assert swaps == [1500, 3000, 8000, 16100, 24200]
    assert stage.config()["slow_fit_rows"] == 4000
    # swap_lag still caps the lag: the slow refits of a whole 8,000-row interval swap 5,000
    # rows on
    capped = _stage(refit_every=8000, first_fit=1000, swap_lag=5000, window=20_000,
                    drift=False, slow_fit_rows=4000)
    log = []
    _feed(capped, _stream(6, 260), log)
    assert [r[0] for r in log if r[1]] == [1500, 3000, 8000, 13100, 21100]


def test_drift_triggers_an_early_refit():
    rng = np.random.default_rng(7)
    kw = dict(refit_every=20_000, window=3000, first_fit=1000, swap_lag=100,
              drift_min_gap=200, drift_delta=0.01)
    stage, quiet = _stage(**kw), _stage(**kw)
    start = [_batch(rng, 100) for _ in range(30)]
    drifted, steady = [], []
    _feed(stage, start)
    _feed(quiet, start)
    _feed(stage, [_batch(rng, 100, shift=3.0) for _ in range(9)], drifted)  # clicks jump
    _feed(quiet, [_batch(rng, 100) for _ in range(9)], steady)
    assert steady[-1][3] == 2  # the schedule alone: at 1000 and 2000 rows, next at 4000
    assert drifted[-1][3] == 3  # the drift refit came before row 4000


def test_fit_one_shot_with_early_stopping(rng):
    b, v = _batch(rng, 3000), _batch(rng, 1000)
    stage = _stage(n_trees=200)
    stage.fit(b.dense, b.y, valid=(v.dense, v.y, None))
    assert stage.version == 1
    assert stage.booster.num_trees() < 200
    init = rng.standard_normal(3000).astype(np.float32)
    s2 = _stage(use_init_score=True).fit(b.dense, b.y, init_score=init)
    assert isinstance(s2.booster, lgb.Booster)


def test_a_refit_of_a_window_not_yet_full_may_grow_more_trees():
    # n_trees 10, window 4000: rows x trees within a full window's fit, up to max_trees (30)
    stage = _stage(drift=False, window=4000, learning_rate=0.03)
    assert [stage._rounds(r) for r in (8000, 4000, 2000, 1000, 100)] == [10, 10, 20, 30, 30]
    _feed(stage, _stream(0, 13))  # the first refit, of 1,000 rows, went live at 1,300
    assert stage.version == 1 and 10 < stage.booster.num_trees() <= 30
    fast = _stage(drift=False, window=4000, learning_rate=0.5)  # overfits after a few trees
    _feed(fast, _stream(0, 13))
    assert fast.version == 1 and fast.booster.num_trees() < 10
    full = _stage(drift=False, window=1000, learning_rate=0.03)
    _feed(full, _stream(0, 13))
    assert full.version == 1 and full.booster.num_trees() == 10
    # too few newest rows to stop on (fewer than MIN_VALID_ROWS): n_trees
    blind = _stage(drift=False, window=4000, learning_rate=0.03, valid_fraction=0.05)
    _feed(blind, _stream(0, 13))
    assert blind.version == 1 and blind.booster.num_trees() == 10


def test_warm_start_keeps_old_trees(rng):
    stage = _stage(warm_start=True, warm_trees=3, drift=False)
    stream = _stream(8, 35)
    _feed(stage, stream[:15])
    assert stage.version == 1
    first = stage.booster.num_trees()  # a fresh fit (early-stopped)
    _feed(stage, stream[15:])
    assert stage.version >= 2
    # each warm start adds at most warm_trees (fewer where early stopping ends it)
    assert first + stage.version - 1 <= stage.booster.num_trees() <= first + 3 * (stage.version - 1)


def test_a_state_loads_into_a_stage_of_another_swap_lag():
    """The swap lag says when refits go live, not what a state holds: a pending refit keeps
    its swap row, the next ones swap at the loading stage's lag."""
    stream = _stream(3, 50)
    part = _stage()
    cut = 0
    while cut < 12 or part._pending is None:
        _feed(part, stream[cut:cut + 1])
        cut += 1
    swap_at = part._pending["swap_at"]
    later = _stage(swap_lag=450)
    later.load_state_dict(part.state_dict())
    assert later._pending["swap_at"] == swap_at and later.swap_lag == 450
    lags = []
    for batch in stream[cut:]:
        refits = later.refits
        _feed(later, [batch])
        if later.refits > refits:  # a refit started in this batch
            lags.append(later._pending["swap_at"] - later.n_seen)
    assert lags and set(lags) == {450}  # half the interval (500) would be more


@pytest.mark.parametrize("breaker", [
    lambda s: s.update(format="other"),
    lambda s: s["config"].update(window=7),
    lambda s: s.update(n_seen=-1),
    lambda s: s.update(clicks=10**9),
    lambda s: s.update(window_y=s["window_y"][:-1]),
    lambda s: s.update(window_X=s["window_X"].astype(np.float64)),
    lambda s: s.update(booster="not a model"),
    lambda s: s.update(adwin_history=[1.0]),
    lambda s: s.update(pending={"swap_at": 5, "booster": None}),
])
def test_bad_state_raises_and_changes_nothing(breaker):
    src = _stage()
    _feed(src, _stream(4, 15))
    target = _stage()
    _feed(target, _stream(5, 14))
    before = target.state_dict()
    b = _batch(np.random.default_rng(0), 100)
    m_before = target.margin(b)
    bad = src.state_dict()
    breaker(bad)
    with pytest.raises(ValueError):
        target.load_state_dict(bad)
    after = target.state_dict()
    assert np.array_equal(target.margin(b), m_before)
    for key in ("n_seen", "version", "refits", "booster", "clicks"):
        assert before[key] == after[key]
    assert np.array_equal(before["window_X"], after["window_X"])


def test_shrinkage_pulls_the_margin_towards_the_prior_before_during_and_after_a_fade():
    """Two stages on the same rows grow the same trees; the one with shrinkage 0.5 scores
    prior + 0.5 * (the other's margin - prior) at every step."""
    # no drift refits: the two stages' drift signals are their own (shrunk) margins
    full, half = (_stage(fade=500, drift=False, shrinkage=s) for s in (1.0, 0.5))
    probe = _batch(np.random.default_rng(5), 200)
    weights = set()
    for b in _stream(11, 25):
        for stage in (full, half):
            stage.observe(b, np.zeros(len(b.y), np.float32), np.ones(len(b.y), bool))
            stage.wait()
            stage.poll()
        prior = np.float32(full.prior)
        np.testing.assert_allclose(half.margin(probe), prior + 0.5 * (full.margin(probe) - prior),
                                   rtol=1e-6, atol=1e-6)
        weights.add(round(half.fade_weight, 2))
    assert half.version == full.version == 2 and len(weights) > 2  # two swaps, one fading
    assert TreeStage(**half.config()).shrinkage == 0.5
    with pytest.raises(ValueError, match="shrinkage 0.5"):  # it would score otherwise
        _stage(fade=500, drift=False).load_state_dict(half.state_dict())
    state = full.state_dict()
    del state["config"]["shrinkage"]  # a state from before shrinkage: unshrunk
    _stage(fade=500, drift=False).load_state_dict(state)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="shrinkage"):
            _stage(shrinkage=bad)


def test_prior_shift_is_how_far_the_margin_moves_with_the_batch_labels(rng):
    y = np.array([1, 0, 0, 1, 0], np.float32)
    for shrinkage in (1.0, 0.5):
        stage = _stage(drift=False, shrinkage=shrinkage)
        b = _batch(rng, 5)
        b.y = y
        before = stage.margin(b)
        shift = stage.prior_shift(y)  # before the first fit: the whole prior move
        stage.observe(b, np.zeros(5, np.float32))
        np.testing.assert_allclose(stage.margin(b), before + shift, rtol=1e-6)
        assert shift == pytest.approx(np.log(3 / 4))
        _feed(stage, _stream(4, 14))
        stage.wait()
        stage.poll()
        assert stage.version >= 1
        b = _batch(rng, 50)
        before, shift = stage.margin(b), stage.prior_shift(b.y)
        stage.observe(b, np.zeros(50, np.float32))
        np.testing.assert_allclose(stage.margin(b), before + shift, rtol=1e-5, atol=1e-6)
        assert (shift == 0.0) == (shrinkage == 1.0)  # a fitted, unshrunk model ignores it
    assert _stage(use_init_score=True).prior_shift(y) == 0.0


def _fading_stage() -> TreeStage:
    # first fit at 1000 rows, live at 1200, fading in until 2200 (the next interval, 1000)
    return _stage(fade=5000, drift=False, refit_every=2000, first_fit=1000, swap_lag=200)


def test_a_swap_fades_in_linearly_from_the_old_margin(rng):
    stage, sudden = _fading_stage(), _stage(drift=False, refit_every=2000, first_fit=1000,
                                            swap_lag=200)
    b = _batch(rng, 500)
    stream = _stream(11, 17)
    _feed(stage, stream[:12])
    _feed(sudden, stream[:12])
    assert stage.version == sudden.version == 1 and stage.n_seen == 1200
    prior = stage._fade_prior
    assert np.array_equal(stage.margin(b), np.full(500, prior, np.float32))  # w = 0
    new = sudden.margin(b)  # the same trees, switched at once
    assert not np.allclose(new, prior)
    for n_seen, batch in zip(range(1300, 1800, 100), stream[12:], strict=True):
        _feed(stage, [batch])
        _feed(sudden, [batch])
        w = (n_seen - 1200) / 1000
        assert stage.fade_weight == pytest.approx(w)
        np.testing.assert_allclose(stage.margin(b), prior + w * (new - prior), rtol=1e-5,
                                   atol=1e-6)
    s2 = _fading_stage()
    _feed(s2, _stream(11, 22))  # 2200 rows: the second refit swaps in, fading from the first
    assert s2.fade_weight == 0.0 and s2.version == 2
    first = s2._fade_from.predict_margin(b.dense).astype(np.float32)
    assert np.array_equal(s2.margin(b), first)
    short = _stage(fade=500, drift=False, refit_every=2000, first_fit=1000, swap_lag=200)
    _feed(short, stream[:18])  # live at 1200, faded in at 1700: the old model is dropped
    assert short.fade_weight == 1.0 and short.state_dict()["fade_from"] is None
    _feed(sudden, stream[17:18])
    assert np.array_equal(short.margin(b), sudden.margin(b))


def test_state_round_trip_in_the_middle_of_a_fade(rng):
    stream = _stream(12, 30)
    full, part = _fading_stage(), _fading_stage()
    _feed(full, stream)
    _feed(part, stream[:15])
    assert 0 < part.fade_weight < 1
    resumed = _fading_stage()
    resumed.load_state_dict(copy.deepcopy(part.state_dict()))
    b = _batch(rng, 300)
    assert np.array_equal(resumed.margin(b), part.margin(b))
    log_full, log_resumed = [], []
    _feed(resumed, stream[15:], log_resumed)
    _feed(part, stream[15:], log_full)
    assert log_resumed == log_full
    assert np.array_equal(resumed.margin(b), full.margin(b))


@pytest.mark.parametrize("breaker", [
    lambda f: f.update(start=10**9),
    lambda f: f.update(len=0),
    lambda f: f.update(len=10**9),
    lambda f: f.update(prior="0"),
    lambda f: f.update(booster="not a model"),
])
def test_bad_fade_state_raises_and_changes_nothing(breaker, rng):
    src, target = _fading_stage(), _fading_stage()
    _feed(src, _stream(13, 15))
    _feed(target, _stream(14, 16))
    b = _batch(rng, 100)
    m_before = target.margin(b)
    bad = src.state_dict()
    assert bad["fade_from"] is not None
    breaker(bad["fade_from"])
    with pytest.raises(ValueError, match="fade_from"):
        target.load_state_dict(bad)
    assert np.array_equal(target.margin(b), m_before)
    assert target.n_seen == 1600


def test_a_failed_refit_that_never_went_live_is_reported_at_close(monkeypatch):
    stage = _stage(drift=False)

    def broken(*args, **kwargs):
        raise RuntimeError("LightGBM said no")

    monkeypatch.setattr(stage, "_train", broken)
    _feed(stage, _stream(0, 11))  # the refit starts at 1000 rows and fails before its swap
    assert stage.refits == 1 and stage.version == 0
    with pytest.warns(UserWarning, match="last tree refit .* failed: RuntimeError"):
        stage.close()


def test_no_columns_no_refit():
    stage = _stage(drift=False)
    rng = np.random.default_rng(1)
    for _ in range(15):
        b = SimpleNamespace(dense=np.zeros((100, 0), np.float32),
                            y=(rng.random(100) < 0.3).astype(np.float32))
        stage.observe(b, np.zeros(100, np.float32), np.ones(100, bool))
    assert stage.refits == 0 and np.isfinite(stage.margin(b)).all()


def test_a_refit_worse_on_the_newest_rows_never_goes_live(monkeypatch):
    stage = _stage(drift=False, guard=True)
    _feed(stage, _stream(11, 14))  # first refit at 1000, live at 1300
    assert stage.version == 1
    good = stage.margin(_batch(np.random.default_rng(1), 200))
    real_train = stage._train

    def flipped(X, y, init, rounds, base, valid=None, cats=None, **kw):  # labels inverted
        return real_train(X, 1.0 - y, init, rounds, base, None, cats, **kw)

    monkeypatch.setattr(stage, "_train", flipped)
    log: list = []
    _feed(stage, _stream(12, 10), log)
    assert stage.refits == 2 and stage.rejected == 1 and stage.version == 1
    assert not any(r[1] for r in log)
    np.testing.assert_array_equal(stage.margin(_batch(np.random.default_rng(1), 200)), good)


def test_guarded_refits_go_live_when_they_help():
    # a full window at every refit, so every fit may grow as many trees
    stage = _stage(drift=False, guard=True, window=1000)
    _feed(stage, _stream(13, 40))
    assert stage.version >= 2 and stage.rejected + stage.version <= stage.refits


def test_finish_fits_the_whole_window_in_place_of_the_pending_refit():
    stage = _stage(drift=False, first_fit=1000, refit_every=4000, window=3000)
    _feed(stage, _stream(14, 11))  # the refit started at 1000 would go live at 1300
    assert stage._pending is not None and stage.version == 0
    assert stage.finish()  # the end of the stream: a fit of all 1100 rows goes live instead
    assert stage._pending is None and stage.version == 1 and stage.refits == 2
    assert stage.booster.num_feature() == T
    assert not stage.finish()  # no new rows: nothing more to fit
    _feed(stage, _stream(15, 5))  # 500 rows since the refit, the next is due at 2000
    assert stage.refits == 2 and stage.version == 1
    assert stage.finish()  # refit on the whole 1600-row window, installed at once
    assert stage.refits == 3 and stage.version == 2 and stage.since_refit == 0
    assert stage.fade_weight == 1.0 and stage._pending is None


def test_finish_cancels_the_pending_refit_it_replaces(monkeypatch):
    """The pending refit stops after its current tree: its trees would be thrown away."""
    real_train, pending_trees = TreeStage._train, []
    deadline = time.monotonic() + 30  # (without the cancel: 500 trees, and the test fails)

    def slow_stop(self, X, y, init, rounds, base, valid=None, cats=None, *, stop=None, **kw):
        if not pending_trees:  # the scheduled refit: after each tree, wait for finish()
            def watched() -> bool:
                pending_trees.append(1)
                while not stop() and time.monotonic() < deadline:
                    time.sleep(0.001)
                return stop()
            return real_train(self, X, y, init, 500, base, valid, cats, stop=watched, **kw)
        return real_train(self, X, y, init, rounds, base, valid, cats, stop=stop, **kw)

    monkeypatch.setattr(TreeStage, "_train", slow_stop)
    stage = _stage(drift=False, first_fit=1000, refit_every=4000, window=3000)
    _feed(stage, _stream(14, 11))  # the refit started at 1000 is running
    job = stage._pending
    assert stage.finish() and stage.version == 1
    assert job["cancel"] and isinstance(job["error"], RefitCancelled) and job["booster"] is None
    assert len(pending_trees) == 1  # one tree of 500, then it gave up
    b = _batch(np.random.default_rng(2), 300)
    with pytest.raises(RefitCancelled):  # the check itself, without threads
        real_train(stage, b.dense, b.y, None, 50, None, stop=lambda: True)


def _feed_with_rest(stage: TreeStage, seed: int, n_batches: int) -> None:
    """Batches whose label depends on the dense columns and on what only the other stages'
    margin (``rest``) knows."""
    rng = np.random.default_rng(seed)
    for _ in range(n_batches):
        b = _batch(rng, 100)
        rest = rng.normal(size=100).astype(np.float32)
        logit = 3 * (b.dense[:, 0] - 0.5) + rest - 1
        b.y = (rng.random(100) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        stage.observe(b, np.zeros(100, np.float32), np.ones(100, bool), rest=rest)
        stage.poll()


@pytest.fixture
def spied(monkeypatch):
    """Every ``fit_blend`` call's row count and result (and its trees' margins), and every
    ``_train`` call's rows."""
    calls = SimpleNamespace(blends=[], fits=[], owns=[])
    real_blend, real_train = trees.fit_blend, TreeStage._train

    def blend_spy(own, rest, y):
        calls.owns.append(np.array(own))
        calls.blends.append((len(y), real_blend(own, rest, y)))
        return calls.blends[-1][1]

    def train_spy(self, X, y, init, rounds, base, valid=None, *args, **kw):
        calls.fits.append((X, rounds, None if valid is None else len(valid[1])))
        return real_train(self, X, y, init, rounds, base, valid, *args, **kw)

    monkeypatch.setattr(trees, "fit_blend", blend_spy)
    monkeypatch.setattr(TreeStage, "_train", train_spy)
    return calls


def _small_window(seed: int = 31, **kw) -> TreeStage:
    stage = _stage(drift=False, first_fit=1000, refit_every=4000, window=3000, **kw)
    _feed_with_rest(stage, seed, 25)  # 2,500 rows, the last refit at 2,000 (swapped at 2,300)
    return stage


def test_the_end_refit_may_grow_as_many_trees_as_the_live_model(spied):
    # the first fit (1,000 rows of a 2,000-row window) may grow 20 trees, the end refit of
    # 1,900 rows 10 by its own budget, and as many as the live model has
    stage = _stage(drift=False, window=2000, first_fit=1000, learning_rate=0.03)
    _feed(stage, _stream(2, 19))
    live = stage.booster.num_trees()
    assert stage.version == 1 and live > 10 and stage._rounds(1900) == 10
    spied.fits.clear()
    stage.finish()
    assert spied.fits[0][1] == live  # the end refit's rounds


def test_a_small_window_blends_on_every_row_out_of_fold(spied):
    """The end blend of a window of at most FOLD_BLEND_ROWS rows is fitted on all its rows,
    each scored by trees fitted without its fold."""
    stage = _small_window()
    spied.fits.clear()
    assert stage.finish(blend=True)
    assert [n for n, _ in spied.blends[-2:]] == [250, 2500]  # held-back rows, whole window
    assert stage.end_blend == spied.blends[-1][1]
    end, folds = spied.fits[0], spied.fits[1:]
    assert len(end[0]) == 2250 and end[2] == 250  # the end refit, early-stopped on 250 rows
    assert [(len(X), valid) for X, _, valid in folds] == [(2000, None)] * trees.BLEND_FOLDS
    assert {rounds for _, rounds, _ in folds} == {stage.booster.num_trees()}
    window = {row.tobytes() for row in stage._snapshot()[0]}
    left_out = [window - {row.tobytes() for row in X} for X, _, _ in folds]
    assert [len(rows) for rows in left_out] == [500] * trees.BLEND_FOLDS
    assert set().union(*left_out) == window  # each row scored once, out of its fold
    a, b, _ = stage.end_blend[:3]
    assert a > 0.5 and 0.7 < b < 1.3  # rest is the true margin of what the trees cannot see
    twin = _small_window()
    twin.finish(blend=True)
    assert twin.end_blend == stage.end_blend  # folds fitted side by side, the same blend


def test_a_larger_window_blends_on_its_held_back_rows(spied, monkeypatch):
    monkeypatch.setattr(trees, "FOLD_BLEND_ROWS", 2499)
    stage = _small_window()
    spied.blends.clear()
    assert stage.finish(blend=True)
    assert [n for n, _ in spied.blends] == [250] and stage.end_blend == spied.blends[0][1]


def test_the_end_blends_take_the_trees_margins_as_they_score(spied):
    """With shrinkage, both end blends (held-back rows, out of fold) are fitted on the shrunk
    margins the trees score with."""
    owns = []
    for shrinkage in (1.0, 0.5):
        stage = _small_window(shrinkage=shrinkage)
        spied.owns.clear()
        assert stage.finish(blend=True)
        owns.append(spied.owns[-2:])
    prior = _small_window().prior
    for plain, shrunk in zip(*owns, strict=True):
        np.testing.assert_allclose(shrunk, prior + 0.5 * (plain - prior), rtol=1e-12)


def test_the_out_of_fold_blend_of_trees_fitted_over_other_margins(spied):
    stage = _small_window(use_init_score=True)
    spied.blends.clear()
    assert stage.finish(blend=True)
    assert [n for n, _ in spied.blends] == [250, 2500]
    assert np.isfinite(stage.end_blend[:3]).all() and stage.end_blend.b > 0.5


def test_a_failed_out_of_fold_blend_keeps_the_refit_and_its_own_blend(spied, monkeypatch):
    def fail(self, *args):
        raise MemoryError("no room for a fold")

    monkeypatch.setattr(TreeStage, "_fold_blend", fail)
    stage = _small_window()
    version = stage.version
    spied.blends.clear()
    with pytest.warns(RuntimeWarning, match="no room for a fold"):
        assert stage.finish(blend=True)
    assert stage.version == version + 1 and stage.end_blend == spied.blends[0][1]


def test_no_out_of_fold_blend_for_a_refit_the_guard_rejects(spied, monkeypatch):
    make = TreeStage._refit_job

    def rejected(self, *args, **kw):
        job, fit = make(self, *args, **kw)

        def fit_then_reject() -> None:
            fit()
            job["accept"] = False
        return job, fit_then_reject

    stage = _small_window()
    monkeypatch.setattr(TreeStage, "_refit_job", rejected)
    spied.fits.clear()
    assert not stage.finish(blend=True)
    assert stage.end_blend is None and len(spied.fits) == 1  # the end refit, no fold


def _coded_batch(rng: np.random.Generator, n: int) -> SimpleNamespace:
    """The label depends on a categorical field the dense columns cannot single out."""
    b = _batch(rng, n)
    b.indices = rng.integers(0, 30, size=(n, 2)).astype(np.int32)
    logit = np.where(b.indices[:, 0] % 7 == 0, 2.0, -1.5)
    b.y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return b


def test_finish_keeps_the_encoding_better_on_the_newest_rows(monkeypatch):
    tried = []
    make = TreeStage._refit_job

    def spy(self, *args, **kw):
        job, fit = make(self, *args, **kw)
        tried.append(job)
        return job, fit

    monkeypatch.setattr(TreeStage, "_refit_job", spy)
    stage = _stage(drift=False, first_fit=1000, refit_every=1000, window=3000, end_codes=8)
    rng = np.random.default_rng(21)
    _feed(stage, [_coded_batch(rng, 100) for _ in range(30)])
    tried.clear()
    assert stage.finish()
    assert len(tried) == 2  # without codes and with 8 per field
    losses = [job["loss"] for job in tried]
    assert losses[1] < losses[0]  # only the codes can tell the clicked values apart
    assert stage._codes is not None and stage._codes.width == 2
    b = _coded_batch(rng, 50)
    expect = stage._ensemble.predict_margin(
        np.hstack([b.dense, stage._codes.transform(b.indices)])) + stage.offset
    np.testing.assert_allclose(stage.margin(b), expect, rtol=1e-5, atol=1e-6)
    restored = _stage(drift=False, first_fit=1000, refit_every=1000, window=3000, end_codes=8)
    restored.load_state_dict(copy.deepcopy(stage.state_dict()))
    assert np.array_equal(restored.margin(b), stage.margin(b))


def test_init_score_fits_start_from_the_click_rate(rng):
    # a stage fitted on other stages' margins gets the constant LightGBM's init_score skips
    stage = _stage(drift=False, use_init_score=True, first_fit=1000, refit_every=1000)
    batches = _stream(17, 13)
    for b in batches:
        stage.observe(b, np.full(len(b.y), -3.0, np.float32), np.ones(len(b.y), bool))
        stage.poll()
    assert stage.version == 1
    rate = float(np.mean(np.concatenate([b.y for b in batches])))
    z = -3.0 + stage.margin(_batch(rng, 4000)).astype(np.float64)
    assert abs(float(np.mean(1 / (1 + np.exp(-z)))) - rate) < 0.05
    assert stage.offset > 1.0


def test_large_refits_train_on_quantized_gradients_deterministically():
    stage = _stage(quantize_rows=800)
    assert "use_quantized_grad" not in stage.lgb_params(799)
    assert "use_quantized_grad" not in stage.lgb_params()  # one-shot batch fits: exact
    assert stage.lgb_params(800)["use_quantized_grad"] is True
    assert "use_quantized_grad" not in _stage(quantize_rows=0).lgb_params(10**9)
    margins = []
    for quantize in (800, 800, 0):
        stage = _stage(drift=False, quantize_rows=quantize)
        _feed(stage, _stream(2, 14))
        assert stage.version == 1
        assert ("[use_quantized_grad: 1]" in stage.booster.model_to_string()) == bool(quantize)
        margins.append(stage.margin(_batch(np.random.default_rng(4), 500)).tobytes())
    assert margins[0] == margins[1]  # the same seed: the same quantized fit
    assert margins[0] != margins[2]


def test_drift_signal_from_the_callers_margin_equals_its_own():
    runs = []
    for given in (False, True):
        stage = _stage(refit_every=600, drift_min_gap=100)
        rng = np.random.default_rng(7)
        for i in range(30):
            b = _batch(rng, 100, shift=2.0 if i >= 15 else 0.0)
            z = np.zeros(100, np.float32)
            mask = np.ones(100, bool)
            mask[:5] = False  # rows left out of the window must be left out of ``own`` too
            stage.observe(b, z, mask, own=stage.margin(b) if given else None)
            stage.poll()
        runs.append((list(stage._adwin_history), stage.refits, stage.version))
    assert runs[0] == runs[1]
    assert runs[0][1] >= 2


def test_a_state_from_before_quantized_refits_loads():
    stage = _stage(drift=False)
    _feed(stage, _stream(2, 14))
    state = stage.state_dict()
    assert state["config"]["quantize_rows"] == stage.quantize_rows
    del state["config"]["quantize_rows"]  # as written before the setting existed
    again = _stage(drift=False)
    again.load_state_dict(state)
    b = _batch(np.random.default_rng(4), 300)
    assert np.array_equal(again.margin(b), stage.margin(b))
    assert TreeStage(**stage.config()).quantize_rows == stage.quantize_rows


@pytest.mark.parametrize("zeros", [0.0, 0.3, 0.9])
def test_dense_window_columns_fit_the_same_trees_without_sparse_bins(zeros):
    """Mostly non-zero columns train on dense bins, without feature bundles (faster); the
    trees are LightGBM's own defaults' bit for bit. Mostly-zero columns keep sparse bins."""
    b = _batch(np.random.default_rng(5), 3000)
    X = b.dense.copy()
    X[np.random.default_rng(6).random(X.shape) < zeros] = 0.0
    stage = _stage()
    ours = stage._train(X, b.y.astype(np.float64), None, 15, None)
    text = ours.model_to_string()
    dense = zeros < 0.5
    assert ("[is_enable_sparse: 0]" in text) == dense and ("[enable_bundle: 0]" in text) == dense
    plain = lgb.train(stage.lgb_params(len(b.y)),
                      lgb.Dataset(X, b.y.astype(np.float64), params={"verbose": -1}), 15)

    def trees(booster: lgb.Booster) -> str:
        return booster.model_to_string().split("\nparameters:")[0]

    assert trees(ours) == trees(plain)
