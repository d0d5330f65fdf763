"""Metrics against brute-force references; spilled metrics against the in-memory ones."""

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamfusion import evaluate
from streamfusion.checkpoint import CheckpointError
from streamfusion.evaluate import (
    Progressive,
    array_reader,
    auc,
    auc_spilled,
    holdout_mask,
    logloss_from_margin,
    logloss_spilled,
    order_keys,
    sigmoid,
    summarize,
)
from streamfusion.spill import RecordSpill


def brute_auc(s, y):
    pos, neg = s[y == 1], s[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def same(a, b):
    """Equal floats, NaN equal to NaN (the report's JSON writes both the same)."""
    return a == b or (math.isnan(a) and math.isnan(b))


@given(st.lists(st.tuples(st.integers(-5, 5), st.integers(0, 1)), min_size=2, max_size=200))
def test_auc_matches_pairwise_count_with_ties(pairs):
    s = np.array([p[0] for p in pairs], dtype=np.float64)
    y = np.array([p[1] for p in pairs])
    if y.min() == y.max():
        assert np.isnan(auc(s, y))
    else:
        assert abs(auc(s, y) - brute_auc(s, y)) < 1e-12


def test_auc_ties_infinities_and_nans_whatever_their_order():
    inf, nan = np.inf, np.nan
    s = np.array([inf, inf, -inf, -inf, nan, nan, 0.0, -0.0])
    y = np.array([1, 0, 0, 1, 1, 0, 1, 0])
    # pairs: inf/inf tie, -inf/-inf tie, nan/nan tie, 0/-0 tie, every other positive wins
    # against the negatives below it: 4 ties, positives inf(>-inf,0), nan(>inf,-inf,0), 0(>-inf)
    expected = (4 * 0.5 + 2 + 3 + 1) / 16
    assert auc(s, y) == expected
    rng = np.random.default_rng(0)
    for _ in range(5):
        perm = rng.permutation(s.size)
        assert auc(s[perm], y[perm]) == expected


SPECIAL = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.4e38, 0.5]
score32 = st.one_of(st.sampled_from(SPECIAL), st.floats(width=32, allow_nan=True))


@given(st.lists(st.tuples(score32, st.integers(0, 1)), max_size=300),
       st.integers(1, 320), st.integers(1, 70))
def test_spilled_auc_equals_auc(pairs, budget, chunk):
    z = np.array([p[0] for p in pairs], dtype=np.float32)
    y = np.array([p[1] for p in pairs], dtype=np.uint8)
    got = auc_spilled(array_reader(z, y), 0, len(z), budget=budget, chunk=chunk)
    assert same(got, auc(z, y))


@given(st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 1)), min_size=1, max_size=400),
       st.sampled_from([1.0, -1.0, 7.5]), st.integers(1, 50), st.integers(1, 90))
def test_spilled_auc_resolves_buckets_larger_than_the_budget(pairs, base, budget, chunk):
    # neighbouring float32 values share their top 16 key bits: one bucket, many low keys
    bits = np.float32(base).view(np.uint32) + np.array([p[0] for p in pairs], np.uint32)
    z = bits.view(np.float32)
    y = np.array([p[1] for p in pairs], dtype=np.uint8)
    got = auc_spilled(array_reader(z, y), 0, len(z), budget=budget, chunk=chunk)
    assert same(got, auc(z, y))


@given(st.integers(1, 500), st.integers(0, 2), st.integers(1, 40))
def test_spilled_auc_all_equal_and_one_class(n, labels, budget):
    z = np.full(n, 0.25, np.float32)
    y = np.zeros(n, np.uint8) if labels == 0 else np.ones(n, np.uint8)
    if labels == 2:
        y[::2] = 0
    got = auc_spilled(array_reader(z, y), 0, n, budget=budget, chunk=7)
    if labels == 2 and n > 1:
        assert got == 0.5 == auc(z, y)
    else:
        assert math.isnan(got) and math.isnan(auc(z, y))


def test_spilled_auc_of_a_sub_range_and_of_nothing(rng):
    z = rng.normal(size=5000).astype(np.float32)
    y = (rng.random(5000) < 0.3).astype(np.uint8)
    read = array_reader(z, y)
    assert auc_spilled(read, 1234, 4321, budget=300, chunk=100) == auc(z[1234:4321], y[1234:4321])
    assert math.isnan(auc_spilled(read, 10, 10))


def test_spilled_auc_never_holds_more_than_the_budget(rng, monkeypatch):
    n, budget, chunk = 20_000, 1_500, 512
    z = np.round(rng.normal(size=n), 2).astype(np.float32)  # ties
    ulps = rng.integers(0, 5000, 4000).astype(np.uint32)
    z[::5] = (np.float32(1.5).view(np.uint32) + ulps).view(np.float32)  # one crowded bucket
    y = (rng.random(n) < 0.2).astype(np.uint8)
    reads, held = [], []
    inner = evaluate._pairs_won

    def spy(pos_keys, neg_keys):
        held.append(pos_keys.size + neg_keys.size)
        return inner(pos_keys, neg_keys)

    def read(a, b):
        reads.append(b - a)
        return z[a:b], y[a:b]

    monkeypatch.setattr(evaluate, "_pairs_won", spy)
    assert auc_spilled(read, 0, n, budget=budget, chunk=chunk) == auc(z, y)
    assert max(reads) <= chunk and max(held) <= budget and len(held) > 5


def test_spilled_auc_needs_float32():
    with pytest.raises(TypeError):
        auc_spilled(array_reader(np.zeros(3), np.array([0, 1, 0])), 0, 3)


def test_order_keys_sort_like_the_scores(rng):
    z = np.concatenate([rng.normal(0, 10, 1000), [0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45]])
    z = z.astype(np.float32)
    k = order_keys(z)
    i, j = rng.integers(0, z.size, (2, 20_000))
    assert np.array_equal(k[i] < k[j], z[i] < z[j])
    assert np.array_equal(k[i] == k[j], z[i] == z[j])
    assert order_keys(np.array([np.nan, -np.nan, np.inf], np.float32)).tolist() == [
        2**32 - 1, 2**32 - 1, int(order_keys(np.array([np.inf], np.float32))[0])]


def test_logloss_from_margin_matches_probability_form(rng):
    z = rng.normal(0, 3, 1000)
    y = rng.integers(0, 2, 1000)
    p = sigmoid(z)
    ref = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert abs(logloss_from_margin(z, y) - ref) < 1e-9


def test_logloss_is_finite_for_saturated_margins():
    z = np.array([1e6, -1e6, 80.0])
    y = np.array([0, 1, 1])
    assert np.isfinite(logloss_from_margin(z, y))


@given(st.integers(1, 3000), st.integers(1, 700), st.integers(0, 2**32 - 1))
def test_spilled_logloss_is_bit_identical(n, chunk, seed):
    rng = np.random.default_rng(seed)
    z = (rng.normal(0, 4, n) * rng.choice([1, 1e3], n)).astype(np.float32)
    y = (rng.random(n) < 0.2).astype(np.uint8)
    a = int(rng.integers(0, n))
    read = array_reader(z, y)
    assert logloss_spilled(read, 0, n, chunk) == logloss_from_margin(z, y)
    assert same(logloss_spilled(read, a, n, chunk), logloss_from_margin(z[a:], y[a:]))


def test_spilled_logloss_is_bit_identical_over_a_deep_tree(rng):
    n = 1_000_003
    z = rng.normal(0, 2, n).astype(np.float32)
    y = (rng.random(n) < 0.17).astype(np.uint8)
    assert logloss_spilled(array_reader(z, y), 0, n, chunk=1000) == logloss_from_margin(z, y)


# --------------------------------------------------------------------------- Progressive

def reference_windows(z, y, key):
    """One window per key in order of first appearance; a recurring key's runs are merged."""
    cuts = np.flatnonzero(np.diff(key)) + 1
    ends = {int(key[b - 1]): int(b) for b in np.concatenate((cuts, [key.size]))}
    _, first = np.unique(key, return_index=True)
    return [{"end_row": ends[int(k)], "key": int(k), **summarize(z[key == k], y[key == k])}
            for k in key[np.sort(first)]]


def feed(p, z, y, day, sizes):
    """Add the events in batches of the given sizes, marking a swap after every third."""
    i = 0
    for k, size in enumerate(sizes):
        p.add(z[i : i + size], y[i : i + size], None if day is None else day[i : i + size])
        i += size
        if k % 3 == 2:
            p.mark_swap(k)
    return i


def dumps(x):
    return json.dumps(x, sort_keys=True)  # NaN-safe comparison


@given(st.lists(st.integers(1, 400), min_size=1, max_size=25), st.booleans(),
       st.integers(1, 900), st.integers(16, 300))
def test_progressive_equals_in_memory_metrics(tmp_path_factory, sizes, by_day, budget, chunk):
    n = sum(sizes)
    rng = np.random.default_rng(n)
    z = np.round(rng.normal(size=n), 1).astype(np.float32)  # ties
    y = (rng.random(n) < 0.3).astype(np.float32)  # float labels, as the replay gives them
    day = np.repeat(np.array([3, 4, 3, 5, 5, 6], np.int32), -(-n // 6))[:n] if by_day else None
    path = tmp_path_factory.mktemp("p") / "progressive.spill"
    p = Progressive(window_rows=97, path=path, budget=budget, chunk_rows=chunk)
    feed(p, z, y, day, sizes)
    yu = y.astype(np.uint8)
    key = day if by_day else np.arange(n) // 97
    assert dumps(p.overall()) == dumps(summarize(z, yu))
    assert dumps(p.windows()) == dumps(reference_windows(z, yu, key))
    for s in p.around_swaps(span=50):
        r = s["row"]
        assert same(s["logloss_before"], logloss_from_margin(z[max(0, r - 50) : r],
                                                             yu[max(0, r - 50) : r]))
        assert same(s["logloss_after"], logloss_from_margin(z[r : r + 50], yu[r : r + 50]))
    assert dumps(p.recent(333)) == dumps(summarize(z[-333:], yu[-333:]))
    p.close()


def test_windows_cut_exactly_at_a_chunk_boundary(rng):
    z = rng.normal(size=1000).astype(np.float32)
    y = (rng.random(1000) < 0.5).astype(np.uint8)
    p = Progressive(window_rows=100, chunk_rows=100)
    p.add(z, y)
    assert [w["end_row"] for w in p.windows()] == list(range(100, 1001, 100))
    assert dumps(p.windows()) == dumps(reference_windows(z, y, np.arange(1000) // 100))
    p.close()


def test_recent_beyond_the_ring_reads_the_spill(rng):
    n = evaluate.RECENT_EVENTS + 5000
    z = rng.normal(size=n).astype(np.float32)
    y = (rng.random(n) < 0.3).astype(np.uint8)
    p = Progressive()
    p.add(z, y)
    assert dumps(p.recent(n - 10)) == dumps(summarize(z[10:], y[10:]))
    assert dumps(p.recent(1000)) == dumps(summarize(z[-1000:], y[-1000:]))
    p.close()


def test_progressive_memory_does_not_grow_with_the_events(rng):
    p = Progressive()
    z = rng.normal(size=100_000).astype(np.float32)
    y = (rng.random(100_000) < 0.3).astype(np.uint8)
    p.add(z, y)
    in_memory = sum(a.nbytes for a in vars(p._spill).values() if isinstance(a, np.ndarray))
    p.add(z, y)
    p.add(z, y)
    assert sum(a.nbytes for a in vars(p._spill).values()
               if isinstance(a, np.ndarray)) == in_memory
    assert p._spill.file.nbytes + p._spill._n_buf * 17 == 300_000 * 17
    p.close()


def test_temporary_spill_is_removed_on_close():
    p = Progressive()
    p.add(np.zeros(10, np.float32), np.ones(10))
    path = p._spill.file.path
    assert path.exists()
    p.close()
    assert not path.parent.exists()


def test_resume_truncates_to_the_checkpoint_and_continues_identically(tmp_path, rng):
    n = 5000
    z = np.round(rng.normal(size=n), 2).astype(np.float32)
    y = (rng.random(n) < 0.3).astype(np.uint8)
    sizes = [300] * 16 + [200]
    path = tmp_path / "progressive.spill"
    whole = Progressive(window_rows=700, path=tmp_path / "whole.spill", budget=400, chunk_rows=256)
    feed(whole, z, y, None, sizes)

    p = Progressive(window_rows=700, path=path, budget=400, chunk_rows=256)
    done = feed(p, z, y, None, sizes[:7])
    state = json.loads(json.dumps(p.state_dict()))  # the checkpoint's JSON header
    p.add(-z[done : done + 900], y[done : done + 900])  # after the checkpoint, then a crash
    p.mark_swap(99)
    p._spill.flush()
    q = Progressive.resume(path, state, budget=400, chunk_rows=256)
    assert len(q) == done and q.swaps == whole.swaps[: len(q.swaps)]
    assert dumps(q.recent(1000)) == dumps(summarize(z[done - 1000 : done], y[done - 1000 : done]))
    i = done
    for k, size in enumerate(sizes[7:], start=7):
        q.add(z[i : i + size], y[i : i + size])
        i += size
        if k % 3 == 2:
            q.mark_swap(k)
    for name in ("overall", "windows", "around_swaps"):
        assert dumps(getattr(q, name)()) == dumps(getattr(whole, name)())
    assert path.read_bytes() == (tmp_path / "whole.spill").read_bytes()


@pytest.mark.parametrize("damage,message", [
    ("missing", "missing"), ("short", "shorter"), ("corrupt", "corrupt"), ("rows", "row count"),
    ("old format", "older format")])
def test_resume_refuses_a_damaged_spill(tmp_path, rng, damage, message):
    path = tmp_path / "progressive.spill"
    p = Progressive(path=path)
    p.add(rng.normal(size=3000).astype(np.float32), np.ones(3000))
    state = p.state_dict()
    p.close()
    raw = bytearray(path.read_bytes())
    if damage == "missing":
        path.unlink()
    elif damage == "short":
        path.write_bytes(raw[:-1])
    elif damage == "corrupt":
        raw[1234] ^= 0x01
        path.write_bytes(bytes(raw))
    elif damage == "rows":
        state["spill"]["rows"] += 1
    else:
        state = {"window_rows": 10, "margin": np.zeros(3), "y": np.zeros(3), "key": np.zeros(3),
                 "swaps": []}
    with pytest.raises(CheckpointError, match=message):
        Progressive.resume(path, state)


def test_holdout_mask_is_seeded_and_about_ten_percent():
    line = np.arange(200_000)
    m = holdout_mask(line, 0.1, seed=3)
    assert abs(m.mean() - 0.1) < 0.005
    assert np.array_equal(m, holdout_mask(line, 0.1, seed=3))
    assert not np.array_equal(m, holdout_mask(line, 0.1, seed=4))
    # the choice of one event does not depend on which batch it arrives in
    assert np.array_equal(m[1000:2000], holdout_mask(line[1000:2000], 0.1, seed=3))


def test_predictions_that_fail_to_write_leave_the_old_file(tmp_path):
    from streamfusion.outputs import write_predictions

    path = tmp_path / "pred.csv"
    path.write_text("old\n")
    records = RecordSpill(tmp_path / "p.spill")
    records.append(np.zeros(10, np.float32), np.ones(10), np.zeros(10), np.arange(10))

    class Failing:
        def __len__(self):
            return 5

        def chunks(self, start, stop, rows):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_predictions(path, [("progressive", records), ("holdout", Failing())])
    assert path.read_text() == "old\n"
    assert sorted(tmp_path.iterdir()) == [tmp_path / "p.spill", path]
    write_predictions(path, [("holdout", records)])
    assert path.read_text().count("\n") == 11
    records.close()
