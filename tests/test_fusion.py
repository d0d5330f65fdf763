"""The chain's invariants (DESIGN.md): fused margin = sum of stage margins, pure scoring,
batch-size independence, bit-exact checkpoint round trips, base swap changes only the base."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfusion import checkpoint
from streamfusion.batch.fit import offline_config
from streamfusion.features import Batch
from streamfusion.fusion import ROW_LR, ROW_STEP, Chain, ModelConfig, kept_settings
from streamfusion.online import OnlineModel
from streamfusion.stages import click_logodds
from streamfusion.stages.trees import SLOW_FIT_ROWS

N_FIELDS, N_DENSE, BITS = 6, 4, 12


def make_batch(rng, n):
    dense = rng.normal(size=(n, N_DENSE)).astype(np.float32)
    indices = rng.integers(0, 2**BITS, size=(n, N_FIELDS)).astype(np.int32)
    indices[:, 1] = rng.integers(0, 40, size=n)  # a categorical the residual learners can learn
    values = np.ones((n, N_FIELDS), np.float32)
    z = 1.5 * (dense[:, 0] > 0) + 1.5 * np.sin(indices[:, 1]) - 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.float32)
    return Batch(indices, values, dense, y, np.arange(n, dtype=np.int64),
                 np.full(n, -1, np.int64))


def trained_model(model="resfusion", iterations=None, seed=0, rows=6000, data_seed=None,
                  live_blend=True):
    rng = np.random.default_rng(seed if data_seed is None else data_seed)
    cfg = ModelConfig(model=model, iterations=iterations, bits=BITS, n_trees=10, num_leaves=7,
                      refit_every=2000, window=3000, hidden=(16, 16), seed=seed, drift=False,
                      live_blend=live_blend,
                      # every fit grows at most n_trees: a fit of a window not yet full may
                      # grow more, and the guard may then keep it live over a full window's;
                      # these tests are about the chain
                      extra={"trees": {"max_trees": 10}})
    m = OnlineModel(cfg, N_FIELDS)
    for _ in range(rows // 500):
        m.poll()
        m.step(make_batch(rng, 500))
    for stage in m.chain.tree_stages:
        stage.wait()
    m.poll()
    return m


@pytest.fixture(scope="module")
def resfusion():
    return trained_model()


def test_trees_were_refit_and_swapped_in(resfusion):
    assert resfusion.refits >= 2 and resfusion.version >= 2


def test_fused_margin_is_the_sum_of_stage_margins(resfusion, rng):
    b = make_batch(rng, 300)
    s = resfusion.score(b)
    assert np.array_equal(s.margin, s.stage_margins[0] + s.stage_margins[1])
    assert np.array_equal(s.margin, s.base_margin + s.residual_margin)
    assert np.all((s.p > 0) & (s.p < 1))


@given(st.integers(1, 400), st.integers(0, 2**31 - 1))
def test_scoring_is_pure_and_batch_size_free(resfusion, size, seed):
    b = make_batch(np.random.default_rng(seed), 400)
    whole = resfusion.score(b).margin
    parts = np.concatenate([resfusion.score(b.take(slice(i, i + size))).margin
                            for i in range(0, 400, size)])
    assert np.array_equal(whole, parts)
    assert np.array_equal(whole, resfusion.score(b).margin)


def test_checkpoint_round_trip_gives_identical_margins_and_updates(resfusion, tmp_path, rng):
    b = make_batch(rng, 500)
    checkpoint.save(tmp_path, resfusion.state_dict())
    twin = OnlineModel.from_state(checkpoint.load(tmp_path))
    assert np.array_equal(twin.score(b).margin, resfusion.score(b).margin)
    copy = OnlineModel.from_state(checkpoint.load(tmp_path))
    copy.step(b)
    twin.step(b)
    b2 = make_batch(rng, 200)
    assert np.array_equal(twin.score(b2).margin, copy.score(b2).margin)


def test_replacing_the_base_model_changes_only_the_base_term(rng):
    m = trained_model(seed=1, rows=3000)
    b = make_batch(rng, 200)
    before = m.score(b)
    other = trained_model(seed=1, rows=5000, data_seed=2)  # same structure, other data
    m.chain.stages[0].load_state_dict(other.chain.stages[0].state_dict())
    after = m.score(b)
    assert not np.array_equal(before.base_margin, after.base_margin)
    assert np.array_equal(before.residual_margin, after.residual_margin)


def test_same_seed_replays_bit_for_bit():
    a, b = trained_model(seed=5, rows=4000), trained_model(seed=5, rows=4000)
    batch = make_batch(np.random.default_rng(0), 300)
    assert np.array_equal(a.score(batch).margin, b.score(batch).margin)


@pytest.mark.parametrize("model,iterations,kinds", [
    ("gbdt", None, ["trees"]), ("fm", None, ["fm"]), ("lr", None, ["lr"]), ("dnn", None, ["dnn"]),
    ("nnres-gbdt", None, ["deepfm", "trees"]),
    ("resfusion", 2, ["trees", "deepfm", "trees"]),
    ("resfusion", 3, ["trees", "deepfm", "trees", "deepfm"]),
])
def test_every_chain_learns(model, iterations, kinds, rng):
    m = trained_model(model, iterations, rows=4000)
    assert m.chain.kinds == kinds
    b = make_batch(rng, 2000)
    s = m.score(b)
    assert np.array_equal(s.margin, Chain.fuse(s.stage_margins))
    from streamfusion.evaluate import auc
    assert auc(s.margin, b.y) > 0.6


def test_a_refused_stage_state_leaves_no_half_loaded_model(resfusion):
    state = resfusion.state_dict()
    state["chain"]["stages"]["1"] = {"garbage": 1}
    with pytest.raises(ValueError):
        OnlineModel.from_state(state)


def fused_and_separate(iterations, rng, steps):
    """Two equal models and one batch of ``steps`` residual steps: one scores and learns it in
    the fused pass, the other with ``margins`` then ``learn``."""
    a = trained_model(iterations=iterations, rows=3000)
    b = trained_model(iterations=iterations, rows=3000)
    batch = make_batch(rng, steps * a.config.step_rows)
    everything = np.ones(len(batch), dtype=bool)
    fused, _ = a.chain.score_and_learn(batch, everything)
    separate = b.chain.margins(batch)
    b.chain.learn(batch, separate, everything)
    return a, b, fused, separate


@pytest.mark.parametrize("iterations", [1, 3])
def test_fused_score_and_learn_equals_score_then_learn(iterations, rng):
    """A batch of one step: the fused pass gives what margins then learn give, bit for bit."""
    a, b, fused, separate = fused_and_separate(iterations, rng, steps=1)
    assert np.array_equal(fused, separate)
    probe = make_batch(rng, 300)
    assert np.array_equal(a.score(probe).margin, b.score(probe).margin)


@pytest.mark.parametrize("iterations", [None, 3])
def test_fused_score_and_learn_scores_each_step_before_it_learns(iterations, rng):
    """A batch of several steps: the trees score it as it came, a residual each step's
    events before that step (the residual's own test checks those margins bit for bit)."""
    a, b, fused, separate = fused_and_separate(iterations, rng, steps=3)
    step = a.config.step_rows
    trees = np.array([kind == "trees" for kind in a.chain.kinds])
    assert trees.any() and (~trees).sum() == (1 if iterations is None else 2)
    assert np.array_equal(fused[trees], separate[trees])
    assert np.array_equal(fused[~trees][:, :step], separate[~trees][:, :step])
    assert not np.array_equal(fused[~trees][:, step:], separate[~trees][:, step:])
    if iterations is None:  # one residual, nothing after it: it learns the same either way
        probe = make_batch(rng, 300)
        assert np.array_equal(a.chain.margins(probe), b.chain.margins(probe))
        # the live blend learns the margins each event was scored with: here they differ
        assert a.chain.blend != b.chain.blend


@pytest.mark.parametrize("live_blend", [True, False])
def test_finish_blends_trees_and_residual(tmp_path, rng, live_blend):
    m = trained_model(seed=7, rows=5000, live_blend=live_blend)
    raw = make_batch(rng, 300)
    live = list(m.chain.live.weights) if live_blend else None
    assert m.chain.blend == live
    assert m.finish()
    a, b, c = m.chain.blend
    assert np.isfinite([a, b, c]).all() and [a, b, c] not in ([1.0, 1.0, 0.0], live)
    s = m.score(raw)
    margins = m.chain.margins(raw)
    expect = (margins[0] * np.float32(a) + np.float32(c)) + margins[1] * np.float32(b)
    assert np.array_equal(s.margin, expect)
    assert np.array_equal(s.margin, s.base_margin + s.residual_margin)
    checkpoint.save(tmp_path, m.state_dict())
    twin = OnlineModel.from_state(checkpoint.load(tmp_path))
    assert twin.chain.blend == m.chain.blend
    assert np.array_equal(twin.score(raw).margin, s.margin)


def test_new_trees_drop_the_end_blend(rng):
    m = trained_model(seed=7, rows=5000, live_blend=False)
    m.finish()
    assert m.chain.blend is not None
    live = m.chain.refits_live
    for _ in range(20):  # learning goes on (serve --init-from): the next swap drops it
        m.step(make_batch(rng, 500))
        if m.poll():
            break
    assert m.chain.refits_live > live and m.chain.blend is None


def test_the_live_blend_learns_on_from_the_end_blend(rng):
    m = trained_model(seed=7, rows=5000)
    m.finish()
    end = m.chain.blend
    assert list(m.chain.live.weights) == end
    m.step(make_batch(rng, 500))
    assert m.chain.blend == list(m.chain.live.weights) != end


def test_a_batch_is_scored_with_the_blend_from_before_its_labels(rng):
    m = trained_model(seed=3, rows=2000)
    batch = make_batch(rng, m.config.step_rows)
    before = m.chain.blend
    margins = m.chain.margins(batch)  # one step: scored as the model stands
    s = m.step(batch)
    assert m.chain.blend != before
    assert np.array_equal(s.margin, Chain.fuse(m.chain.blended(margins, before)))


def test_a_fresh_live_blend_scores_as_the_plain_sum(rng):
    m = OnlineModel(ModelConfig(bits=BITS, hidden=(16, 16)), N_FIELDS)
    assert m.chain.blend == [1.0, 1.0, 0.0] and m.describe()["blend"] == [1.0, 1.0, 0.0]
    probe = make_batch(rng, 300)
    s = m.score(probe)
    assert np.array_equal(s.margin, Chain.fuse(m.chain.margins(probe)))


def test_the_live_blend_scores_and_resumes_bit_for_bit(tmp_path, rng):
    m = trained_model(seed=3, rows=4000)
    a, b, c = m.chain.live.weights
    assert m.chain.blend == [a, b, c] and (a, b, c) != (1.0, 1.0, 0.0)
    probe = make_batch(rng, 300)
    margins = m.chain.margins(probe)
    expect = (margins[0] * np.float32(a) + np.float32(c)) + margins[1] * np.float32(b)
    assert np.array_equal(m.score(probe).margin, expect)
    checkpoint.save(tmp_path, m.state_dict())
    twin = OnlineModel.from_state(checkpoint.load(tmp_path))
    more = [make_batch(rng, 500) for _ in range(3)]
    for batch in more:
        m.step(batch)
        twin.step(batch)
    assert twin.chain.live.state_dict() == m.chain.live.state_dict()
    assert np.array_equal(twin.score(probe).margin, m.score(probe).margin)


def test_a_checkpoint_without_the_live_blend_is_refused_unless_from_before_it(resfusion):
    state = resfusion.state_dict()
    del state["chain"]["live_blend"]
    with pytest.raises(ValueError, match="live blend"):
        OnlineModel.from_state(state)
    del state["config"]["live_blend"]  # a config written before the live blend existed
    state["chain"]["blend"] = None
    old = OnlineModel.from_state(state)
    assert old.config.live_blend is False and old.chain.live is None
    assert old.chain.blend is None


@pytest.mark.parametrize("model", ["resfusion", "nnres-gbdt"])
def test_a_loaded_blend_is_where_the_live_blend_learns_on(model):
    chain = Chain.from_config(ModelConfig(model=model, bits=BITS), N_FIELDS)
    trees = chain.kinds.index("trees")
    blend = [0.7, 0.7, -0.1]
    blend[trees] = 1.2
    chain.load_blend(blend)
    assert chain.blend == blend and chain.live.weights == (1.2, 0.7, -0.1)
    chain.load_blend(None)  # a model file from before any blend: the weights stay
    assert chain.blend == blend


def test_chains_of_several_tree_stages_keep_the_plain_sum():
    m = trained_model(iterations=2, rows=4000)
    assert m.chain.live is None and m.chain.blend is None
    m.finish()
    assert m.chain.blend is None


@pytest.mark.parametrize("blend", [[1.0, 1.0], ["1", 1.0, 0.0], [1.0, float("nan"), 0.0],
                                   (1.0, 1.0, 0.0)])
def test_a_bad_blend_is_refused(resfusion, blend):
    state = resfusion.state_dict()
    state["chain"]["blend"] = blend
    with pytest.raises(ValueError, match="blend"):
        OnlineModel.from_state(state)


def test_pair_weights_reach_deepfm_stages_only_and_old_configs_stay_plain():
    chain = Chain.from_config(ModelConfig(bits=BITS), N_FIELDS)
    assert chain.kinds == ["trees", "deepfm"] and chain.stages[1].pair_weights
    fm = Chain.from_config(ModelConfig(residual="fm", bits=BITS), N_FIELDS).stages[1]
    assert fm.pair_weights is False
    saved = ModelConfig().to_dict()
    assert saved["pair_weights"] is True and ModelConfig.from_dict(saved).pair_weights
    del saved["pair_weights"]  # a config written before pair weights existed
    assert ModelConfig.from_dict(saved).pair_weights is False


def test_field_weights_come_with_pair_weights_and_old_configs_go_without():
    assert Chain.from_config(ModelConfig(bits=BITS), N_FIELDS).stages[1].field_weights
    for cfg in (ModelConfig(bits=BITS, pair_weights=False),
                ModelConfig(bits=BITS, field_weights=False),
                ModelConfig(residual="fm", bits=BITS)):
        assert Chain.from_config(cfg, N_FIELDS).stages[1].field_weights is False
    saved = ModelConfig().to_dict()
    assert saved["field_weights"] is True
    del saved["field_weights"]  # a config written before field weights existed
    assert ModelConfig.from_dict(saved).field_weights is False


def test_kept_settings_name_what_a_run_asks_for_and_a_model_it_continues_keeps():
    running = ModelConfig().for_input(N_FIELDS)
    assert kept_settings(running, ModelConfig().for_input(N_FIELDS)) == []
    asked = dataclasses.replace(running, lr=0.002, hidden=(64, 64), adam_batch=0)
    assert kept_settings(running, asked) == [
        "hidden [128, 128] (asked: [64, 64])", "lr 0.0015 (asked: 0.002)",
        "adam_batch 32 (asked: 0)"]


def test_step_rows_reach_every_residual_learner_and_old_configs_take_one_step():
    cfg = ModelConfig(model="nnres-gbdt", residual="fm", bits=BITS, step_rows=64, adam_batch=8)
    stage = Chain.from_config(cfg, N_FIELDS).stages[0]
    assert stage.step_rows == 64 and stage.adam_batch == 8
    saved = ModelConfig().to_dict()
    assert saved["step_rows"] == 256 and saved["adam_batch"] == 32
    del saved["step_rows"], saved["adam_batch"]  # a config written before they existed
    assert ModelConfig.from_dict(saved).step_rows == 0
    assert ModelConfig.from_dict(saved).adam_batch == 0


def test_only_trees_in_front_of_residual_learners_are_shrunk_and_old_configs_not():
    def shrinkage(**kw):
        chain = Chain.from_config(ModelConfig(bits=BITS, **kw), N_FIELDS)
        return [s.shrinkage for s in chain.tree_stages]

    assert shrinkage() == shrinkage(iterations=1) == shrinkage(residual="fm") == [0.5]
    assert shrinkage(tree_shrinkage=0.8) == [0.8]
    # trees alone, trees after a residual learner, several tree stages (no blend scales them)
    assert shrinkage(model="gbdt") == shrinkage(model="nnres-gbdt") == [1.0]
    assert shrinkage(backfit=True) == [1.0]  # trees fitted over the learner's margin
    assert shrinkage(iterations=2) == [1.0, 1.0]
    assert offline_config(ModelConfig()).tree_shrinkage == 1.0  # the paper's batch fits
    saved = ModelConfig().to_dict()
    assert saved["tree_shrinkage"] == 0.5
    del saved["tree_shrinkage"]  # a config written before shrinkage existed
    assert ModelConfig.from_dict(saved).tree_shrinkage == 1.0
    with pytest.raises(ValueError, match="tree_shrinkage"):
        ModelConfig(tree_shrinkage=0.0)


def test_only_a_chain_with_a_residual_learner_lets_slow_refits_swap_later():
    def slow(model, **extra):
        cfg = ModelConfig(model=model, bits=BITS, extra={"trees": extra} if extra else {})
        chain = Chain.from_config(cfg, N_FIELDS)
        return [s.slow_fit_rows for s in chain.tree_stages]

    assert slow("gbdt") == [0]
    assert slow("resfusion") == slow("nnres-gbdt") == [SLOW_FIT_ROWS]
    assert slow("resfusion", slow_fit_rows=7) == [7]  # a caller's own setting wins


def test_the_first_order_step_is_spread_over_the_fields():
    """By default an event's first-order steps add up to the same margin move whatever its
    field count; an explicit step wins; the report states the step taken."""
    for n in (3, 23, 52):
        chain = Chain.from_config(ModelConfig(bits=BITS), n)
        assert [s.row_lr for s in chain.stages if hasattr(s, "row_lr")] == [ROW_STEP / n]
    chain = Chain.from_config(ModelConfig(bits=BITS, row_lr=0.07), 23)
    assert chain.stages[1].row_lr == 0.07
    model = OnlineModel(ModelConfig(bits=BITS), 23)
    assert model.config.row_lr == model.describe()["config"]["row_lr"] == ROW_STEP / 23
    assert OnlineModel.from_state(model.state_dict()).config == model.config


def test_inputs_of_slots_keep_the_fixed_first_order_step():
    """libsvm-like events fill some of their slots: ROW_STEP / slots would count the empty
    ones, so such input takes ROW_LR unless a step is set."""
    assert ModelConfig().for_input(64, slotted=True).row_lr == ROW_LR
    assert ModelConfig(row_lr=0.2).for_input(64, slotted=True).row_lr == 0.2
    assert ModelConfig().for_input(64).row_lr == ROW_STEP / 64
    model = OnlineModel(ModelConfig(bits=BITS), 64, slotted=True)
    assert model.config.row_lr == model.chain.stages[1].row_lr == ROW_LR


@pytest.mark.parametrize("path", ["learn", "score_and_learn", "learn some"])
def test_the_residual_learns_against_the_prior_its_batch_moved(rng, path):
    # before their first fit the trees score their click prior; the batch's labels move it,
    # and the residual learns the batch against the moved prior (against the old one it would
    # learn the batch's click rate a second time), while the events score with the old one
    cfg = ModelConfig(bits=BITS, n_trees=10, num_leaves=7, hidden=(16, 16), seed=3)
    chain, twin = Chain.from_config(cfg, N_FIELDS), Chain.from_config(cfg, N_FIELDS)
    batch = make_batch(rng, 64)
    mask = np.ones(64, bool)
    if path == "learn some":  # held-out rows and a missing label move nothing
        mask[::4] = False
        batch.y[1] = np.nan
    if path == "score_and_learn":
        margins, _ = chain.score_and_learn(batch, mask)
    else:
        margins = chain.margins(batch)
        chain.learn(batch, margins, mask)
    assert np.all(margins[0] == 0.0)  # click_logodds(0, 0): the prior as the batch found it
    sub = batch.take(mask)
    labelled = sub.y[~np.isnan(sub.y)]
    moved = np.full(len(sub), click_logodds(int(labelled.sum()), len(labelled)), np.float32)
    twin.stages[1].partial_fit(sub, moved, sub.y)
    for name in ("table", "table_m", "table_v", "dense", "dense_m", "dense_v"):
        assert np.array_equal(getattr(chain.stages[1], name), getattr(twin.stages[1], name))
    assert chain.stages[0].prior == moved[0]
