"""The compiled residual learner against NumPy references, finite differences and invariants."""

from __future__ import annotations

import platform
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfusion import _learner
from streamfusion.stages.residual import ResidualLearner

PAIRED = "deepfm+pairs"  # DeepFM with pair weights (FwFM)
FIELDED = "deepfm+fields"  # and field weights on the first-order terms
MODELS = ("lr", "fm", "deepfm", "dnn", PAIRED, FIELDED)
HIDDEN = (7, 4)


def make_batch(rng, n, fields, rows, with_values=True, dup=True):
    indices = rng.integers(0, rows, (n, fields)).astype(np.int32)
    if dup and n > 1 and fields > 2:
        indices[1, 2] = indices[0, 1]  # a row seen twice in one batch: gradients must add up
    values = rng.uniform(0.3, 2.0, (n, fields)).astype(np.float32) if with_values else None
    return SimpleNamespace(indices=indices, values=values)


def make(model, **kw):
    if model in (PAIRED, FIELDED):
        return ResidualLearner("deepfm", pair_weights=True, field_weights=model == FIELDED,
                               **kw)
    return ResidualLearner(model, **kw)


def learner(model, seed=1, **kw):
    kw = {"n_fields": 5, "bits": 6, "k": 3, "hidden": HIDDEN, "init_std": 0.3, **kw}
    out = make(model, seed=seed, **kw)
    # non-zero first-order weights (DNN: a larger last embedding column) and biases so every
    # term is exercised
    out.table[:, -1] = np.random.default_rng(seed).normal(0, 0.2, out.table.shape[0])
    out.dense[0] = 0.1
    if out.field_weights:  # away from their start at 1, so the reference must apply them
        out.dense[-out.n_fields:] = np.random.default_rng(seed).uniform(0.5, 1.5, out.n_fields)
    return out


# -- NumPy float64 reference, written without the sum-square trick -----------------------------
def ref_margin(m: ResidualLearner, table, dense, batch) -> np.ndarray:
    t = np.asarray(table, np.float64)
    d = np.asarray(dense, np.float64)
    idx = batch.indices
    x = np.ones(idx.shape) if batch.values is None else np.asarray(batch.values, np.float64)
    rows = t[idx]
    if m.model == "dnn":  # the MLP alone: rows are embeddings, no first-order weight
        assert t.shape[1] == m.k
        z = np.full(idx.shape[0], d[0])
    else:
        n_f = idx.shape[1]
        # field weights: the last F dense parameters
        fw = d[d.size - n_f:] if m.field_weights else np.ones(n_f)
        z = d[0] + np.sum(fw * rows[:, :, -1] * x, axis=1)
        d = d[: d.size - n_f] if m.field_weights else d
    if m.model == "lr":
        return z
    e = rows[:, :, : m.k] * x[:, :, None]
    n_f = idx.shape[1]
    # pair weights: the last F (F - 1) / 2 dense parameters before those, pairs in row order
    pw = d[d.size - n_f * (n_f - 1) // 2:] if m.pair_weights else np.ones(n_f * n_f)
    if m.model != "dnn":
        p = 0
        for a in range(n_f):
            for b in range(a + 1, n_f):
                z = z + pw[p] * np.sum(e[:, a] * e[:, b], axis=1)
                p += 1
    if m.model in ("deepfm", "dnn"):
        h = e.reshape(len(z), n_f * m.k)
        cur = 1
        for d_out in m.hidden:
            w = d[cur: cur + h.shape[1] * d_out].reshape(h.shape[1], d_out)
            cur += w.size
            h = np.maximum(h @ w + d[cur: cur + d_out], 0.0)
            cur += d_out
        z = z + h @ d[cur: cur + h.shape[1]] + d[cur + h.shape[1]]
    return z


def ref_objective(m, table, dense, batch, base, y, weight=None):
    z = np.asarray(base, np.float64) + ref_margin(m, table, dense, batch)
    w = np.ones_like(z) if weight is None else np.asarray(weight, np.float64)
    loss = np.mean(w * (np.logaddexp(0.0, z) - y * z))
    touched = np.unique(batch.indices)
    return loss + 0.5 * m.l2 * np.sum(np.asarray(table, np.float64)[touched] ** 2)


def params_finite(m: ResidualLearner) -> bool:
    return all(np.isfinite(getattr(m, a)).all()
               for a in ("table", "table_m", "table_v", "dense", "dense_m", "dense_v"))


# -- loss twins ---------------------------------------------------------------------------------
@given(t=st.floats(-800, 800), y=st.sampled_from([0.0, 1.0]))
def test_loss_twins_match_stable_reference(t, y):
    assert _learner.py_loss(t, y) == pytest.approx(np.logaddexp(0.0, t) - y * t, rel=1e-12,
                                                   abs=1e-12)
    p = 0.5 * (1.0 + np.tanh(0.5 * t))
    assert _learner.py_dloss(t, y) == pytest.approx(p - y, rel=1e-9, abs=1e-12)
    assert np.isfinite(_learner.py_loss(t, y))


def test_loss_has_no_overflow_at_extremes():
    assert _learner.py_loss(1e4, 1.0) == 0.0
    assert _learner.py_loss(-1e4, 1.0) == pytest.approx(1e4)
    assert _learner.py_dloss(1e4, 0.0) == 1.0
    assert _learner.py_dloss(-1e4, 0.0) == 0.0


# -- forward and gradients ----------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("with_values", [True, False])
@pytest.mark.parametrize("k", [3, 8])  # 8: the kernel's vector path
# (40, 19), (56, 19): the MLP kernel's groups of 32 outputs (AVX-512), of 16 and the outputs
# past them
@pytest.mark.parametrize("hidden", [HIDDEN, (40, 19), (56, 19)])
def test_forward_matches_numpy_reference(model, with_values, k, hidden, rng):
    m = learner(model, k=k, hidden=hidden)
    m.dense[:] += rng.normal(0, 0.2, m.dense.shape).astype(np.float32)
    batch = make_batch(rng, 40, 5, 64, with_values)
    expect = ref_margin(m, m.table, m.dense, batch)
    np.testing.assert_allclose(m.margin(batch), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("k", [3, 8])
def test_gradients_match_finite_differences(model, k, rng):
    m = learner(model, k=k, l2=0.05, clip=1e6)
    m.dense[:] += rng.normal(0, 0.2, m.dense.shape).astype(np.float32)
    batch = make_batch(rng, 9, 5, 64)
    base = rng.normal(0, 1, 9).astype(np.float32)
    y = (rng.random(9) < 0.5).astype(np.float32)
    weight = rng.uniform(0.5, 2.0, 9).astype(np.float32)
    g = m.gradients(batch, base, y, weight)
    assert sorted(g["rows"]) == sorted(np.unique(batch.indices))
    table = m.table.astype(np.float64)
    dense = m.dense.astype(np.float64)

    def objective():
        return ref_objective(m, table, dense, batch, base, y, weight)

    h = 1e-6
    for arr, grads in ((table, None), (dense, g["dense_grad"])):
        coords = ([(r, j) for r in g["rows"] for j in range(table.shape[1])]
                  if grads is None else [(j,) for j in range(dense.size)])
        for c in coords:
            old = arr[c]
            arr[c] = old + h
            up = objective()
            arr[c] = old - h
            down = objective()
            arr[c] = old
            fd = (up - down) / (2 * h)
            got = (g["table_grad"][list(g["rows"]).index(c[0]), c[1]] if grads is None
                   else grads[c[0]])
            assert got == pytest.approx(fd, abs=2e-5, rel=1e-3), (model, c)
    assert g["loss"] == pytest.approx(
        ref_objective(m, table, dense, batch, base, y, weight)
        - 0.5 * m.l2 * np.sum(table[np.unique(batch.indices)] ** 2), rel=1e-5)


def test_gradient_clipping_bounds_each_example(rng):
    m = learner("lr", clip=0.1)
    batch = make_batch(rng, 1, 5, 64, with_values=False, dup=False)
    g = m.gradients(batch, np.array([-20.0], np.float32), np.array([1.0], np.float32))
    # dloss/dz = sigmoid(-20) - 1 ~ -1, clipped to -0.1; LR row gradient = g * x (x = 1)
    np.testing.assert_allclose(g["table_grad"][:, 0], -0.1, rtol=1e-6)


@pytest.mark.parametrize("model", MODELS)
def test_partial_fit_is_lazy_adam_on_the_gradients(model, rng):
    m = learner(model, l2=0.01, lr=0.05, row_optimizer="adam")
    batch = make_batch(rng, 16, 5, 64)
    base = rng.normal(0, 1, 16).astype(np.float32)
    y = (rng.random(16) < 0.5).astype(np.float32)
    before = m.state_dict()
    for t in (1, 2):
        g = m.gradients(batch, base, y)
        table, tm, tv = m.table.copy(), m.table_m.copy(), m.table_v.copy()
        dense, dm, dv = m.dense.copy(), m.dense_m.copy(), m.dense_v.copy()
        m.partial_fit(batch, base, y)
        assert m.step[0] == t
        bc1, bc2 = 1 - m.beta1 ** t, 1 - m.beta2 ** t
        step = m.lr * np.sqrt(bc2) / bc1
        r = g["rows"]
        gt = g["table_grad"].astype(np.float64)
        em = m.beta1 * tm[r] + (1 - m.beta1) * gt
        ev = m.beta2 * tv[r] + (1 - m.beta2) * gt ** 2
        np.testing.assert_allclose(m.table_m[r], em, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(m.table[r], table[r] - step * em / (np.sqrt(ev) + m.eps),
                                   rtol=1e-5, atol=1e-6)
        untouched = np.setdiff1d(np.arange(table.shape[0]), r)
        assert np.array_equal(m.table[untouched], table[untouched])
        assert np.array_equal(m.table_v[untouched], tv[untouched])
        gd = g["dense_grad"].astype(np.float64)
        em = m.beta1 * dm + (1 - m.beta1) * gd
        ev = m.beta2 * dv + (1 - m.beta2) * gd ** 2
        # the dense parameters at lr, the pair and field weights (the last ones) at their
        # own step
        lr = np.full(dense.size, m.lr)
        if m.pair_weights:  # one per pair of the 5 fields, then one per field
            lr[dense.size - 5 * 4 // 2 - (5 if m.field_weights else 0):] = m.pair_lr
        expect = dense - (lr / bc1) * em / (np.sqrt(ev / bc2) + m.eps)
        np.testing.assert_allclose(m.dense, expect, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(m.table, before["table"])
    assert (m._marker == -1).all()


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="flush-to-zero is set on x86 only")
def test_dense_adam_flushes_denormal_moments_and_restores_the_float_mode(rng):
    """A moment that decays below the normal floats is 0 after the step (each operation on a
    denormal costs x86 a microcode assist); the caller's float mode is left as it was."""
    m = learner("deepfm")
    n_in, (h1, _) = 5 * 3, HIDDEN
    m.dense[1 + n_in * h1] = -1e6  # the first hidden unit's bias: it never fires
    dead = 1 + np.arange(n_in) * h1  # the weights into it: their gradient is exactly 0
    batch = make_batch(rng, 16, 5, 64)
    base, y = np.zeros(16, np.float32), (rng.random(16) < 0.5).astype(np.float32)
    assert not m.gradients(batch, base, y)["dense_grad"][dead].any()
    tiny = np.float32(1e-39)
    assert 0 < tiny < np.finfo(np.float32).tiny  # a denormal
    m.dense_m[dead] = tiny
    m.partial_fit(batch, base, y)
    assert not m.dense_m[dead].any()
    assert tiny * np.float32(0.5) > 0  # this thread still keeps denormals


@pytest.mark.parametrize("model", MODELS)
def test_partial_fit_is_adagrad_on_the_summed_gradients(model, rng):
    m = learner(model, l2=0.01, lr=0.05, row_optimizer="adagrad", row_lr=0.1, emb_lr=0.02)
    n = 16
    batch = make_batch(rng, n, 5, 64)
    base = rng.normal(0, 1, n).astype(np.float32)
    y = (rng.random(n) < 0.5).astype(np.float32)
    for _ in (1, 2):
        g = m.gradients(batch, base, y)
        table, tv = m.table.copy(), m.table_v.copy()
        m.partial_fit(batch, base, y)
        r = g["rows"]
        # gradients() includes l2 * row once; AdaGrad steps on n * (mean-loss gradient) + l2 row
        gt = (g["table_grad"].astype(np.float64) - m.l2 * table[r]) * n + m.l2 * table[r]
        ev = tv[r] + gt ** 2
        lr = np.full(table.shape[1], m.emb_lr)
        if model != "dnn":  # the first-order weight is the row's last column; DNN has none
            lr[-1] = m.row_lr
        np.testing.assert_allclose(m.table_v[r], ev, rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(m.table[r], table[r] - lr * gt / (np.sqrt(ev) + m.eps),
                                   rtol=1e-4, atol=1e-6)
        untouched = np.setdiff1d(np.arange(table.shape[0]), r)
        assert np.array_equal(m.table[untouched], table[untouched])
    assert (m._marker == -1).all()


@pytest.mark.parametrize("model", ["fm", "deepfm", "dnn"])
def test_mixed_rows_are_adagrad_weights_and_adam_embeddings(model, rng):
    batch = make_batch(rng, 16, 5, 64)
    base = rng.normal(0, 1, 16).astype(np.float32)
    y = (rng.random(16) < 0.5).astype(np.float32)
    kw = dict(l2=0.01, lr=0.05, row_lr=0.1, emb_lr=0.02)
    fits = {opt: learner(model, row_optimizer=opt, **kw) for opt in ("mixed", "adam", "adagrad")}
    for m in fits.values():
        m.partial_fit(batch, base, y)
    if model == "dnn":  # embeddings only: mixed is Adam on the whole row
        np.testing.assert_array_equal(fits["mixed"].table, fits["adam"].table)
        assert not np.array_equal(fits["mixed"].table, fits["adagrad"].table)
        return
    np.testing.assert_array_equal(fits["mixed"].table[:, :-1], fits["adam"].table[:, :-1])
    np.testing.assert_array_equal(fits["mixed"].table[:, -1], fits["adagrad"].table[:, -1])
    np.testing.assert_array_equal(fits["mixed"].dense, fits["adam"].dense)


def test_standardize_feeds_varying_fields_as_running_z_scores(rng):
    m = learner("fm", standardize=True)
    plain = learner("fm")
    batches = [make_batch(rng, 32, 5, 64) for _ in range(3)]
    for b in batches:
        b.values[:, 0] = 1.0  # a categorical field: never varies, passes as it is
        b.values[:, 1] = rng.normal(50.0, 7.0, 32).astype(np.float32)
    z = np.zeros(32, np.float32)
    y = (rng.random(32) < 0.5).astype(np.float32)
    m.partial_fit(batches[0], z, y)  # learns the statistics after its step
    seen = np.concatenate([b.values for b in batches[:2]]).astype(np.float64)
    m.partial_fit(batches[1], z, y)
    np.testing.assert_allclose(m.value_mean, seen.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(m.value_m2 / m.value_count, seen.var(axis=0), rtol=1e-9)
    expect = batches[2].values.astype(np.float64).copy()
    varying = seen.var(axis=0) > 0
    assert not varying[0] and varying[1:].all()
    expect[:, varying] = (expect[:, varying] - seen.mean(axis=0)[varying]) / seen.std(
        axis=0)[varying]
    plain.table[:], plain.dense[:] = m.table, m.dense
    std_batch = SimpleNamespace(indices=batches[2].indices, values=expect.astype(np.float32))
    np.testing.assert_allclose(m.margin(batches[2]), plain.margin(std_batch), rtol=1e-5,
                               atol=1e-6)
    other = learner("fm", standardize=True)
    other.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(other.margin(batches[2]), m.margin(batches[2]))


def test_extreme_values_never_give_a_nan_margin(rng):
    m = learner("deepfm", standardize=True, prior=True)
    for scale in (0.0, 1e-30, 1e30):
        b = make_batch(rng, 16, 5, 64)
        b.values[:, 2] = scale
        b.values[::2, 3] = -scale
        m.partial_fit(b, np.zeros(16, np.float32), (rng.random(16) < 0.5).astype(np.float32))
        assert np.isfinite(m.margin(b)).all()


def test_first_stage_learner_starts_at_the_click_log_odds(rng):
    m = learner("fm", prior=True)
    batch = make_batch(rng, 40, 5, 64)
    y = np.zeros(40, np.float32)
    y[:10] = 1.0
    z0 = m.margin(batch)
    out = np.empty(40, np.float32)
    m.partial_fit(batch, np.zeros(40, np.float32), y, margin_out=out)
    np.testing.assert_array_equal(out, z0)  # the pre-step margins, prior included
    assert m.prior_margin == pytest.approx(np.log(11 / 31), rel=1e-6)
    state = m.state_dict()
    other = learner("fm", prior=True)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.margin(batch), m.margin(batch))


# -- invariants ---------------------------------------------------------------------------------
# 40: the forward kernel's groups of 32 (AVX-512) or of 16 outputs and 8 past them in one layer
TRAINED_HIDDEN = (40, 8)


def trained(model, seed=3, steps=3, bits=8):
    m = make(model, n_fields=6, bits=bits, k=4, hidden=TRAINED_HIDDEN, seed=seed, lr=0.02)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        b = make_batch(rng, 64, 6, 1 << bits)
        m.partial_fit(b, rng.normal(0, 1, 64), (rng.random(64) < 0.3).astype(np.float32))
    return m


@pytest.fixture(scope="module")
def models():
    return {name: trained(name) for name in MODELS}


@given(model=st.sampled_from(MODELS), n=st.integers(1, 40), seed=st.integers(0, 2**16),
       scale=st.floats(-50, 50))
def test_fused_margin_is_base_plus_learner_margin(models, model, n, seed, scale):
    m = models[model]
    rng = np.random.default_rng(seed)
    batch = make_batch(rng, n, 6, 256)
    base = (scale * rng.normal(size=n)).astype(np.float32)
    y = (rng.random(n) < 0.5).astype(np.float32)
    z = base.astype(np.float64) + m.margin(batch)
    expect = np.mean(np.logaddexp(0, z) - y * z)
    # the loss the learner trains on is computed from exactly base + margin
    assert m.gradients(batch, base, y)["loss"] == pytest.approx(expect, rel=1e-5, abs=1e-6)


@given(model=st.sampled_from(MODELS), n=st.integers(0, 30), seed=st.integers(0, 2**16))
def test_scoring_is_pure(models, model, n, seed):
    m = models[model]
    before = m.state_dict()
    batch = make_batch(np.random.default_rng(seed), n, 6, 256)
    first = m.margin(batch)
    second = m.margin(batch)
    assert np.array_equal(first, second)
    after = m.state_dict()
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(value, after[key]), key
        else:
            assert value == after[key], key


@given(model=st.sampled_from(MODELS), sizes=st.lists(st.integers(1, 300), min_size=1,
                                                     max_size=5), seed=st.integers(0, 2**16))
def test_batch_size_does_not_change_margins(models, model, sizes, seed):
    m = models[model]
    rng = np.random.default_rng(seed)
    batch = make_batch(rng, sum(sizes), 6, 256)
    whole = m.margin(batch)
    parts, start = [], 0
    for s in sizes:
        parts.append(m.margin(SimpleNamespace(indices=batch.indices[start:start + s],
                                              values=batch.values[start:start + s])))
        start += s
    assert np.array_equal(np.concatenate(parts), whole)


@pytest.mark.parametrize("model", MODELS)
def test_save_load_gives_identical_margins_and_next_updates(model, tmp_path, rng):
    m = trained(model)
    path = tmp_path / "residual.npz"
    m.save(path)
    loaded = ResidualLearner.load(path)
    batch = make_batch(rng, 50, 6, 256)
    assert np.array_equal(m.margin(batch), loaded.margin(batch))
    base = rng.normal(size=50).astype(np.float32)
    y = (rng.random(50) < 0.4).astype(np.float32)
    assert m.partial_fit(batch, base, y) == loaded.partial_fit(batch, base, y)
    for name in ("table", "table_m", "table_v", "dense", "dense_m", "dense_v", "step"):
        assert np.array_equal(getattr(m, name), getattr(loaded, name)), name
    # the in-memory protocol round trip as well
    other = make(model, n_fields=6, bits=8, k=4, hidden=TRAINED_HIDDEN, seed=99)
    other.load_state_dict(m.state_dict())
    assert np.array_equal(other.margin(batch), m.margin(batch))


def test_pair_weights_start_at_half_the_plain_fm_and_at_1_are_the_plain_fm(rng):
    batch = make_batch(rng, 40, 5, 64)
    plain, paired = learner("deepfm", k=8), learner(PAIRED, k=8)
    assert np.array_equal(plain.table, paired.table)
    pairs = paired.dense[plain.dense.size:]
    assert np.array_equal(pairs, np.full(5 * 4 // 2, _learner.PAIR_START, np.float32))
    assert _learner.PAIR_START == 0.5
    half = paired.margin(batch)
    pairs[:] = 1.0
    np.testing.assert_allclose(paired.margin(batch), plain.margin(batch), rtol=1e-5, atol=1e-6)
    assert not np.allclose(half, plain.margin(batch), rtol=1e-3, atol=1e-4)


def test_field_weights_start_at_1_and_weigh_each_first_order_term(rng):
    """At 1 the field weights are the pair-weighted DeepFM; off 1, field f's first-order
    term w_f x_f counts W_f times."""
    assert np.array_equal(make(FIELDED, n_fields=5, bits=6).dense[-5:], np.ones(5, np.float32))
    batch = make_batch(rng, 40, 5, 64)
    paired, fielded = learner(PAIRED, k=8), learner(FIELDED, k=8)  # the same start
    assert np.array_equal(fielded.table, paired.table)
    w = fielded.dense[-5:].copy()
    assert not np.allclose(w, 1.0)
    fielded.dense[-5:] = 1.0
    assert np.array_equal(fielded.margin(batch), paired.margin(batch))
    fielded.dense[-5:] = w
    lin = paired.table[batch.indices, -1].astype(np.float64) * batch.values
    np.testing.assert_allclose(fielded.margin(batch) - paired.margin(batch), lin @ (w - 1.0),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", [PAIRED, FIELDED])
def test_gradients_of_many_blocks_are_the_sums_of_their_slices(model, rng):
    """A batch over several backward blocks: the dense gradients of its mean loss are the
    size-weighted sums of its slices' (each block sums its own pair and field weights)."""
    m = learner(model, k=8)
    n, cut = 600, 250
    batch = make_batch(rng, n, 5, 64)
    base = rng.normal(0, 1, n).astype(np.float32)
    y = (rng.random(n) < 0.3).astype(np.float32)
    whole = m.gradients(batch, base, y)["dense_grad"].astype(np.float64)
    parts = [(slice(0, cut), cut), (slice(cut, n), n - cut)]
    summed = sum(w * m.gradients(SimpleNamespace(indices=batch.indices[s],
                                                 values=batch.values[s]),
                                 base[s], y[s])["dense_grad"].astype(np.float64)
                 for s, w in parts) / n
    np.testing.assert_allclose(whole, summed, rtol=1e-4, atol=1e-6)


def test_one_field_has_a_field_weight_and_no_pairs(rng):
    """One field: no pair of fields, but its first-order term is weighted and learned."""
    m = learner(FIELDED, n_fields=1)
    batch = make_batch(rng, 20, 1, 64)
    np.testing.assert_allclose(m.margin(batch), ref_margin(m, m.table, m.dense, batch),
                               rtol=1e-5, atol=1e-5)
    y = (rng.random(20) < 0.5).astype(np.float32)
    g = m.gradients(batch, np.zeros(20, np.float32), y)["dense_grad"]
    rows = m.table[batch.indices[:, 0], -1].astype(np.float64) * batch.values[:, 0]
    p = 1 / (1 + np.exp(-ref_margin(m, m.table, m.dense, batch)))
    assert g[-1] == pytest.approx(np.mean((p - y) * rows), rel=1e-4, abs=1e-7)


def test_a_state_from_before_field_weights_loads_without_them():
    state = trained(PAIRED).state_dict()
    del state["config"]["field_weights"]
    paired = make(PAIRED, n_fields=6, bits=8, k=4, hidden=TRAINED_HIDDEN)
    paired.load_state_dict(state)
    assert np.array_equal(paired.dense, state["dense"])
    with pytest.raises(ValueError, match="field_weights"):
        make(FIELDED, n_fields=6, bits=8, k=4, hidden=TRAINED_HIDDEN).load_state_dict(state)


def test_a_state_from_before_pair_weights_loads_as_plain_deepfm():
    state = trained("deepfm").state_dict()
    del state["config"]["pair_weights"], state["config"]["pair_lr"]
    plain = ResidualLearner("deepfm", n_fields=6, bits=8, k=4, hidden=TRAINED_HIDDEN)
    plain.load_state_dict(state)
    assert np.array_equal(plain.dense, state["dense"])
    with pytest.raises(ValueError, match="pair_weights"):
        make(PAIRED, n_fields=6, bits=8, k=4, hidden=TRAINED_HIDDEN).load_state_dict(state)


@pytest.mark.parametrize("model", MODELS)
def test_a_batch_larger_than_step_rows_takes_the_steps_of_its_slices(model, rng):
    """Steps of step_rows events are the steps of the batch's consecutive slices, bit for
    bit, and margin_out gives each event's margin as it was before the step that learns it."""
    n, step = 50, 16
    batch = make_batch(rng, n, 5, 64)
    base = rng.normal(0, 0.3, n).astype(np.float32)
    y = (rng.random(n) < 0.3).astype(np.float32)
    stepped, sliced = learner(model, step_rows=step), learner(model)
    before, out = stepped.margin(batch), np.empty(n, np.float32)
    res = stepped.partial_fit(batch, base, y, margin_out=out)
    losses, margins = [], []
    for lo in range(0, n, step):
        part = SimpleNamespace(indices=batch.indices[lo:lo + step],
                               values=batch.values[lo:lo + step])
        margins.append(np.empty(len(part.indices), np.float32))
        r = sliced.partial_fit(part, base[lo:lo + step], y[lo:lo + step],
                               margin_out=margins[-1])
        losses.append(r["loss"] * r["n"])
    assert stepped.step[0] == sliced.step[0] == 4
    for name in ("table", "table_m", "table_v", "dense", "dense_m", "dense_v"):
        assert np.array_equal(getattr(stepped, name), getattr(sliced, name)), name
    assert np.array_equal(out, np.concatenate(margins))
    # the first step's events as the batch found the learner, the later ones after it learned
    assert np.array_equal(out[:step], before[:step]) and not np.array_equal(out, before)
    assert res["n"] == n and res["loss"] == pytest.approx(sum(losses) / n, rel=1e-6)


def test_a_first_stage_learns_against_the_prior_its_batch_moved(rng):
    # the same steps as a learner without a prior given the moved prior as its base; the
    # events score with the prior as the batch found it
    y = (rng.random(40) < 0.3).astype(np.float32)
    y[5] = np.nan  # unlabelled: moves nothing
    own, plain = learner("fm", prior=True), learner("fm", prior=False)
    for i in (1, 2):
        batch = make_batch(rng, 40, 5, 64)
        found = own.prior_margin
        out, twin = np.empty(40, np.float32), np.empty(40, np.float32)
        own.partial_fit(batch, np.zeros(40, np.float32), y, margin_out=out)
        plain.partial_fit(batch, np.full(40, own.prior_margin, np.float32), y, margin_out=twin)
        assert own.seen == 39 * i and own.clicks == np.nansum(y) * i
        assert np.array_equal(own.table, plain.table) and np.array_equal(own.dense, plain.dense)
        np.testing.assert_array_equal(out, twin + found)


def test_margin_out_with_steps_counts_the_prior_and_the_scaled_values(rng):
    """The value statistics stay as the batch found them through its steps; the steps learn
    against the prior the batch's labels moved, and its events score with the prior as
    found."""
    m = learner("deepfm", step_rows=8, prior=True, standardize=True)
    batch = make_batch(rng, 30, 5, 64)
    y = (rng.random(30) < 0.3).astype(np.float32)
    m.partial_fit(batch, np.zeros(30, np.float32), y)  # statistics and prior now move
    batch = make_batch(rng, 30, 5, 64)
    frozen = ResidualLearner(**m.config())
    frozen.load_state_dict(m.state_dict())
    before, out = m.margin(batch), np.empty(30, np.float32)
    m.partial_fit(batch, np.zeros(30, np.float32), y, margin_out=out)
    assert np.array_equal(out[:8], before[:8])
    # the second step's events: scored after the first step, with the batch's prior and stats
    first = SimpleNamespace(indices=batch.indices[:8], values=batch.values[:8])
    kept = ("value_mean", "value_m2", "value_count", "clicks", "seen")
    stats = {name: np.copy(getattr(frozen, name)) for name in kept}
    # the steps learn against the prior of the whole batch's labels: add the other steps'
    # labels here, the call adds the first step's
    frozen.clicks += float(y[8:].sum())
    frozen.seen += 22
    frozen.partial_fit(first, np.zeros(8, np.float32), y[:8])
    for name, value in stats.items():
        setattr(frozen, name, value[()] if value.ndim == 0 else value)
    second = SimpleNamespace(indices=batch.indices[8:16], values=batch.values[8:16])
    assert np.array_equal(out[8:16], frozen.margin(second))
    assert not np.array_equal(out[8:16], before[8:16])


@pytest.mark.parametrize("key", ["step_rows", "adam_batch"])
def test_event_counts_travel_with_the_state_and_states_before_them_load_as_0(key):
    """step_rows (0: one step per batch) and adam_batch (0: unscaled Adam steps)."""
    state = ResidualLearner("fm", n_fields=6, bits=8, k=4, **{key: 16}).state_dict()
    other = ResidualLearner("fm", n_fields=6, bits=8, k=4, **{key: 256})
    other.load_state_dict(state)
    assert getattr(other, key) == 16 and other.config()[key] == 16
    del state["config"][key]  # as the code before wrote it
    other.load_state_dict(state)
    assert getattr(other, key) == 0
    with pytest.raises(ValueError, match=key):
        ResidualLearner("fm", n_fields=3, bits=6, **{key: -1})
    for bad in (-1, 2.5, float("inf"), float("nan")):
        state["config"][key] = bad
        with pytest.raises(ValueError, match=key):
            other.load_state_dict(state)
        assert getattr(other, key) == 0


@pytest.mark.parametrize("model", MODELS)
def test_a_small_step_scales_its_adam_steps_by_the_square_root_rule(model, rng):
    """A step on fewer than adam_batch events takes the Adam steps of a learner whose lr and
    pair_lr are scaled by sqrt(events / adam_batch), bit for bit; AdaGrad's are unchanged; a
    step of adam_batch events or more is unscaled."""
    scaled, plain = learner(model, adam_batch=32), learner(model)
    twin = learner(model, lr=plain.lr * 0.5, pair_lr=plain.pair_lr * 0.5)  # sqrt(8 / 32)
    for n, fit in ((8, twin), (32, plain), (40, plain)):
        batch = make_batch(rng, n, 5, 64)
        base = rng.normal(0, 0.3, n).astype(np.float32)
        y = (rng.random(n) < 0.3).astype(np.float32)
        # the twins start where scaled is, with their own settings
        other = learner(model)
        for twin_ in (fit, other):
            twin_.load_state_dict({**scaled.state_dict(), "config": twin_.config()})
        scaled.partial_fit(batch, base, y)
        fit.partial_fit(batch, base, y)
        other.partial_fit(batch, base, y)  # unscaled, from the same state
        for name in ("table", "table_m", "table_v", "dense", "dense_m", "dense_v"):
            assert np.array_equal(getattr(scaled, name), getattr(fit, name)), (n, name)
        assert (n < 32) != np.array_equal(scaled.dense, other.dense), n
    # steps of step_rows events: each step scales by its own events (32 unscaled, then 8)
    stepped, sliced = learner(model, step_rows=32, adam_batch=32), learner(model, adam_batch=32)
    batch = make_batch(rng, 40, 5, 64)
    base, y = rng.normal(0, 0.3, 40).astype(np.float32), (rng.random(40) < 0.3).astype(np.float32)
    stepped.partial_fit(batch, base, y)
    for part in (slice(0, 32), slice(32, 40)):
        sliced.partial_fit(SimpleNamespace(indices=batch.indices[part],
                                           values=batch.values[part]), base[part], y[part])
    assert np.array_equal(stepped.table, sliced.table)
    assert np.array_equal(stepped.dense, sliced.dense)


@pytest.mark.parametrize(("kw", "code", "match"), [
    ({"model": "fm", "pair_weights": True}, _learner.MODELS["dnn"] | _learner.PAIR_WEIGHTS,
     "(pair_weights is a|pair weights are a) DeepFM option"),
    ({"model": "deepfm", "field_weights": True},
     _learner.MODELS["deepfm"] | _learner.FIELD_WEIGHTS, "come with pair[_ ]weights")])
def test_pair_weights_are_a_deepfm_option_and_field_weights_come_with_them(kw, code, match):
    with pytest.raises(ValueError, match=match):
        ResidualLearner(n_fields=3, bits=6, **kw)
    with pytest.raises(ValueError, match=match):
        _learner.dense_size(code, 3, 4, (4,))


def test_load_state_dict_rejects_mismatch_without_changing_anything():
    m = trained("fm")
    state = m.state_dict()
    other = ResidualLearner("fm", n_fields=6, bits=8, k=4, seed=5)
    snapshot = other.state_dict()
    bad_shape = {**state, "table_v": state["table_v"][:-1]}
    bad_dtype = {**state, "dense": state["dense"].astype(np.float64)}
    bad_version = {**state, "format_version": 99}
    bad_config = {**state, "config": {**state["config"], "k": 5}}
    for bad in (bad_shape, bad_dtype, bad_version, bad_config, {}):
        with pytest.raises(ValueError):
            other.load_state_dict(bad)
    for key, value in snapshot.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(value, getattr(other, key)), key


def test_load_rejects_foreign_file(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a residual learner file"):
        ResidualLearner.load(path)


@pytest.mark.parametrize("model", MODELS)
def test_same_seed_identical_runs_different_seed_differs(model):
    a, b, c = trained(model, seed=7), trained(model, seed=7), trained(model, seed=8)
    for name in ("table", "dense", "table_v", "dense_v"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.table, c.table)


@pytest.mark.parametrize("model", ["fm", "deepfm", "dnn", PAIRED, FIELDED])
def test_threads_do_not_change_results(model):
    def run(threads):
        k = 8 if model in (PAIRED, FIELDED) else 4  # the pair kernel's vector path
        m = make(model, n_fields=6, bits=10, k=k, hidden=(32, 16), seed=2, threads=threads)
        rng = np.random.default_rng(0)
        for _ in range(3):  # batches above the parallel threshold
            b = make_batch(rng, 600, 6, 1024)
            m.partial_fit(b, np.zeros(600), (rng.random(600) < 0.3).astype(np.float32))
        return m

    one, two = run(1), run(2)
    assert np.array_equal(one.table, two.table)
    assert np.array_equal(one.dense, two.dense)
    _learner.set_dynamic_threads(True)  # OpenMP may then give fewer threads: same results
    try:
        dyn = run(2)
    finally:
        _learner.set_dynamic_threads(False)
    assert np.array_equal(one.table, dyn.table)


# -- extreme inputs -----------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_extreme_inputs_never_produce_nan_parameters(model, rng):
    m = trained(model)
    n = 40
    batch = make_batch(rng, n, 6, 256)
    for base in (np.full(n, 1e30), np.full(n, -1e30), np.full(n, 80.0)):
        for label in (0.0, 1.0):  # all-same labels, huge margins either way
            out = m.partial_fit(batch, base, np.full(n, label))
            assert np.isfinite(out["loss"])
            assert params_finite(m)
    # non-finite margins or labels are skipped (and counted), never applied
    base = rng.normal(size=n)
    base[:3] = [np.inf, -np.inf, np.nan]
    y = (rng.random(n) < 0.5).astype(np.float32)
    y[3] = np.nan
    out = m.partial_fit(batch, base, y)
    assert out["skipped"] >= 4 and np.isfinite(out["loss"])
    assert params_finite(m)
    # absurd feature values: any update that would overflow is skipped
    huge = SimpleNamespace(indices=batch.indices, values=np.full((n, 6), 1e30, np.float32))
    out = m.partial_fit(huge, np.zeros(n), np.ones(n))
    assert out["skipped"] > 0
    assert params_finite(m)
    assert (m._marker == -1).all()


@pytest.mark.parametrize("model", MODELS)
def test_empty_batch_is_a_no_op(model):
    m = trained(model)
    before = m.state_dict()
    empty = SimpleNamespace(indices=np.zeros((0, 6), np.int32), values=None)
    assert m.partial_fit(empty, np.zeros(0), np.zeros(0)) == {"loss": 0.0, "n": 0, "skipped": 0}
    assert m.margin(empty).shape == (0,)
    assert m.step[0] == before["step"]
    assert np.array_equal(m.table, before["table"])


@pytest.mark.parametrize("bad", [256, -1, 2**31 - 1])
def test_out_of_range_indices_raise_before_any_change(bad, rng):
    m = trained("deepfm")
    before = m.state_dict()
    batch = make_batch(rng, 10, 6, 256)
    batch.indices[4, 2] = bad
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 256\)"):
        m.partial_fit(batch, np.zeros(10), np.ones(10))
    with pytest.raises(ValueError, match="indices must lie"):
        m.margin(batch)
    assert np.array_equal(m.table, before["table"]) and m.step[0] == before["step"]
    assert (m._marker == -1).all()


def test_shape_errors_are_clear(rng):
    m = trained("fm")
    batch = make_batch(rng, 10, 6, 256)
    with pytest.raises(ValueError, match="base_margin needs 10"):
        m.partial_fit(batch, np.zeros(9), np.ones(10))
    with pytest.raises(ValueError, match="indices must have shape"):
        m.margin(SimpleNamespace(indices=np.zeros((3, 5), np.int32), values=None))
    with pytest.raises(ValueError, match="model must be"):
        ResidualLearner("gbdt", n_fields=3)


def test_dnn_is_the_mlp_of_deepfm_without_first_order_and_fm_terms(rng):
    """The same embeddings and MLP weights: DeepFM's margin minus its linear and pairwise
    terms is the DNN's margin."""
    dnn = learner("dnn")
    deep = learner("deepfm")
    assert dnn.table.shape[1] == dnn.k and deep.table.shape[1] == deep.k + 1
    deep.table[:, :-1] = dnn.table
    deep.dense[:] = dnn.dense
    batch = make_batch(rng, 30, 5, 64)
    deep.table[:, -1] = 0.0
    z_deep = deep.margin(batch).astype(np.float64)
    x = batch.values.astype(np.float64)
    e = dnn.table.astype(np.float64)[batch.indices] * x[:, :, None]
    pair = 0.5 * (e.sum(axis=1) ** 2 - (e ** 2).sum(axis=1)).sum(axis=1)
    np.testing.assert_allclose(dnn.margin(batch), z_deep - pair, rtol=1e-4, atol=1e-5)
    assert np.abs(pair).max() > 1e-3  # the FM term is really there in DeepFM


def test_value_statistics_skip_only_what_would_not_change(rng):
    """Batches of categoricals only (every value 1) move the count alone; the statistics stay
    bit for bit those of the plain two-pass update, before and after a field varies."""
    m = ResidualLearner("fm", n_fields=4, bits=8, standardize=True)
    count, mean, m2 = 0, np.zeros(4), np.zeros(4)
    for i in range(60):
        v = np.ones((int(rng.integers(1, 200)), 4), np.float32)
        if i >= 30:
            v[:, 2] = rng.normal(3, 2, len(v))
        m._update_value_stats(SimpleNamespace(values=v))
        x = v.astype(np.float64)
        bm = x.mean(axis=0)
        delta, total = bm - mean, count + len(x)
        mean += delta * (len(x) / total)
        m2 += ((x - bm) ** 2).sum(axis=0) + delta ** 2 * (count * len(x) / total)
        count = total
        assert m.value_count == count
        assert np.array_equal(m.value_mean, mean) and np.array_equal(m.value_m2, m2)
    assert m2[2] > 0 and m2[0] == 0
