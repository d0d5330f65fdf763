# cython: language_level=3
"""Compiled raw-margin evaluator for LightGBM tree ensembles.

A booster's ``dump_model()`` is flattened into one table of 16-byte split nodes for all trees
(a child index < 0 is ``~leaf``) plus a leaf-value table, and evaluated for a float32 matrix in
one ``nogil`` loop. Each thread keeps ``LANES`` rows in flight: every lane takes one step down
its current tree per round, and on reaching a leaf adds the leaf value and moves on to the
next tree's root (or the next row) without a branch. The lanes' walks are independent, so the
CPU overlaps their memory loads instead of waiting on one chain of mispredicted branches, and no
lane waits for a deeper row. Leaf values are summed in double in tree order, exactly as
LightGBM's ``predict(raw_score=True)`` does, so results agree with it bit for bit.

Where the CPU has AVX-512 (checked at run time; the build needs no flag), ``TreeEnsemble`` runs
``trees_simd.h`` instead: 64 rows walk each tree together in zmm registers, small trees' node
tables held in registers (about 4x fewer cycles per row on 63-leaf trees). Without AVX-512 but
with AVX2 it runs the twin in ``trees_avx2.h``: 32 rows in ymm registers, the top levels' nodes
picked by permutes instead of gathers (about 2.2x fewer CPU-seconds per row than the scalar
kernel on 63-leaf trees, on Zen 3). All kernels follow LightGBM's rules exactly;
``STREAMFUSION_TREES_KERNEL=scalar`` forces the scalar one.
"""

import os

import numpy as np

cimport numpy as cnp
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport isnan
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint32_t

cnp.import_array()


cdef extern from "trees_simd.h" nogil:
    ctypedef struct ts_model:
        const float* thr
        const uint32_t* meta
        const uint32_t* kids
        const double* leaf_value
        const int32_t* trees
        const int32_t* top
        int32_t n_trees
        int32_t n_feat
        const int32_t* cat_start
        const int32_t* cat_words
        const uint32_t* cat_bits
        const uint32_t* top_tab
    int TS_NAN_RIGHT, TS_MISS_ZERO, TS_CATEGORICAL, TS_LEFT_SHIFT, TS_RIGHT_SHIFT
    int TS_SMALL_LEAF, TS_BIG_LEAF, TS_KIND_SMALL32, TS_KIND_SMALL64, TS_KIND_BIG, TS_TABLE_PAD
    int TS_TOP, TS_TOP_NODES, TS_BLOCK
    float TS_ZERO_THRESHOLD
    int ts_have_avx512()
    int ts_category_right(double fval, const uint32_t* bits, int32_t words)
    void ts_chunk_avx512(const ts_model* M, const float* xb, int64_t ncol, int32_t m,
                         double* out, float* xt, int special)

cdef extern from "trees_avx2.h" nogil:
    int TS2_BLOCK, TS2_TOP, TS2_TOP_STRIDE
    int ts_have_avx2()
    void ts_chunk_avx2(const ts_model* M, const float* xb, int64_t ncol, int32_t m,
                       double* out, float* xt, int special)

# Node flags (uint8).
DEF F_DEFAULT_LEFT = 1   # missing values go left
DEF F_NAN_RIGHT = 2      # where a NaN goes, folded from missing_type and default_left
DEF F_SPECIAL = 4        # categorical or missing_type Zero: take the slow, exact path
DEF F_CATEGORICAL = 8
DEF F_MISS_ZERO = 16
DEF F_MISS_NAN = 32
DEF LANES = 16    # rows in flight per thread: enough independent loads to hide cache latency
DEF CHUNK = 512   # rows per parallel work item (lanes refill from it)
MAX_FEATURES = 32767  # feature index is stored in 16 bits
# Fewer rows than this go to the scalar kernel: a lone row's walk is a chain of dependent
# steps, shorter there than through a 16-lane gather (measured crossover 4 rows; 2-4 rows for
# the 8-lane AVX2 kernel).
SIMD_MIN_ROWS = 4

# LightGBM's kZeroThreshold (the float 1e-35f): |x| <= it counts as zero for missing_type
# Zero, and LightGBM's predict turns such inputs into 0.0 before any tree sees them.
cdef double ZERO_THRESHOLD = TS_ZERO_THRESHOLD
HAVE_AVX512 = bool(ts_have_avx512())
HAVE_AVX2 = bool(ts_have_avx2())

MISSING_TYPES = {"None": 0, "Zero": F_MISS_ZERO, "NaN": F_MISS_NAN}


cdef packed struct Node:
    # 16 bytes: one cache-line access per step. thr is the float rounded down from LightGBM's
    # double threshold: for a float x, x <= thr_double exactly when x <= thr_float.
    float thr
    int32_t child[2]   # left, right; < 0 means ~leaf
    int16_t feat
    uint8_t flags
    uint8_t pad


cdef inline int _special_right(double fval, int32_t node, uint8_t f, float thr,
                               const int32_t* cat_start, const int32_t* cat_words,
                               const uint32_t* cat_bits) noexcept nogil:
    """LightGBM's Tree::Decision for categorical and missing_type=Zero nodes (1 = right)."""
    if f & F_CATEGORICAL:
        return ts_category_right(fval, cat_bits + cat_start[node], cat_words[node])
    if isnan(fval):  # NumericalDecision: NaN becomes 0 unless missing_type is NaN
        fval = 0.0
    if fval >= -ZERO_THRESHOLD and fval <= ZERO_THRESHOLD:
        return 0 if f & F_DEFAULT_LEFT else 1
    return 0 if fval <= thr else 1


cdef inline int py_decision(double fval, uint8_t f, double thr) noexcept nogil:
    """The fast path: one compare, NaN folded into a flag (1 = right)."""
    return (fval > thr) | ((fval != fval) & ((f & F_NAN_RIGHT) != 0))


def decision(double fval, int flags, double threshold) -> int:
    """Python-visible twin of the fast numerical decision (tests); 1 means right."""
    return py_decision(fval, <uint8_t>flags, threshold)


cdef void _chunk(const float* xb, Py_ssize_t ncol, int32_t m, double* out,
                 const Node* tab, const double* lv, int32_t zero_slot, const int32_t* rt,
                 int32_t n_trees, const int32_t* cs, const int32_t* cw,
                 const uint32_t* bits) noexcept nogil:
    """Rows [0, m) of one chunk, LANES at a time; lane state lives in local arrays."""
    cdef int32_t lane_row[LANES]
    cdef int32_t lane_tree[LANES]
    cdef int32_t lane_node[LANES]
    cdef double lane_acc[LANES]
    cdef int32_t next_row = 0, active = 0, l, nd, nx, t, li, isleaf, go
    cdef const Node* p
    cdef float fval
    for l in range(LANES):
        if next_row < m:
            lane_row[l] = next_row
            lane_acc[l] = out[next_row]
            next_row += 1
            active += 1
        else:
            lane_row[l] = -1
        lane_tree[l] = 0
        lane_node[l] = rt[0]
    while active == LANES:  # steady state: every lane busy, no idle checks
        for l in range(LANES):
            nd = lane_node[l]
            p = &tab[nd]
            fval = xb[lane_row[l] * ncol + p.feat]
            if p.flags & F_SPECIAL:
                go = _special_right(fval, nd, p.flags, p.thr, cs, cw, bits)
            else:
                go = (fval > p.thr) | ((fval != fval) & ((p.flags & F_NAN_RIGHT) != 0))
            nx = p.child[go]
            # Branch-free leaf handling: a leaf adds its value and jumps to the next tree's
            # root; an internal step adds the zero slot (sums unchanged).
            isleaf = nx >> 31  # -1 at a leaf, else 0
            li = (~nx & isleaf) | (zero_slot & ~isleaf)
            lane_acc[l] += lv[li]
            t = lane_tree[l] - isleaf
            nx = (rt[t] & isleaf) | (nx & ~isleaf)  # roots has a pad entry
            if t == n_trees:  # the row is done: emit it, take the next one (rare)
                out[lane_row[l]] = lane_acc[l]
                t = 0
                nx = rt[0]
                if next_row < m:
                    lane_row[l] = next_row
                    lane_acc[l] = out[next_row]
                    next_row += 1
                else:
                    lane_row[l] = -1
                    active -= 1
            lane_tree[l] = t
            lane_node[l] = nx
    while active > 0:  # the chunk's tail: some lanes idle
        for l in range(LANES):
            if lane_row[l] < 0:
                continue
            nd = lane_node[l]
            p = &tab[nd]
            fval = xb[lane_row[l] * ncol + p.feat]
            if p.flags & F_SPECIAL:
                go = _special_right(fval, nd, p.flags, p.thr, cs, cw, bits)
            else:
                go = (fval > p.thr) | ((fval != fval) & ((p.flags & F_NAN_RIGHT) != 0))
            nx = p.child[go]
            isleaf = nx >> 31
            li = (~nx & isleaf) | (zero_slot & ~isleaf)
            lane_acc[l] += lv[li]
            t = lane_tree[l] - isleaf
            nx = (rt[t] & isleaf) | (nx & ~isleaf)
            if t == n_trees:
                out[lane_row[l]] = lane_acc[l]
                lane_row[l] = -1
                active -= 1
            lane_tree[l] = t
            lane_node[l] = nx


def predict_margin_kernel(const float[:, ::1] X, double[::1] out, const int32_t[::1] roots,
                          const int32_t[:, ::1] nodes, const double[::1] leaf_value,
                          const int32_t[::1] cat_start, const int32_t[::1] cat_words,
                          const uint32_t[::1] cat_bits, int threads=1) -> int:
    """Add the sum of the trees' leaf values to ``out`` (double, [n]); returns rows done.

    ``nodes`` is the int32 [n_nodes, 4] view of the packed node table built by
    ``TreeEnsemble``; ``roots`` the root node of each tree plus one pad entry; ``leaf_value``
    ends with one extra 0.0 (added by internal steps, which leaves sums unchanged). ``out``
    holds the starting score.
    """
    cdef Py_ssize_t n = X.shape[0], ncol = X.shape[1]
    cdef int32_t n_trees = <int32_t>roots.shape[0] - 1  # roots ends with a pad entry
    cdef Py_ssize_t n_chunks = (n + CHUNK - 1) // CHUNK
    cdef Py_ssize_t c, r0
    cdef int32_t m
    cdef const Node* tab = <const Node*>&nodes[0, 0]
    cdef const uint32_t* bits = &cat_bits[0] if cat_bits.shape[0] > 0 else NULL
    if nodes.shape[1] != 4 or sizeof(Node) != 16:
        raise ValueError("nodes must be the int32 [n, 4] view of the packed node table")
    if cat_start.shape[0] != nodes.shape[0] or cat_words.shape[0] != nodes.shape[0]:
        raise ValueError("cat_start / cat_words must have one entry per node")
    if leaf_value.shape[0] < 1:
        raise ValueError("leaf_value must end with the zero slot")
    if n == 0 or n_trees <= 0:
        return n
    if n >= 2**31:
        raise ValueError("too many rows for one call")
    with nogil:
        for c in prange(n_chunks, num_threads=max(threads, 1), schedule="static"):
            r0 = c * CHUNK
            m = <int32_t>min(CHUNK, n - r0)
            _chunk(&X[r0, 0], ncol, m, &out[r0], tab, &leaf_value[0],
                   <int32_t>leaf_value.shape[0] - 1, &roots[0], n_trees, &cat_start[0],
                   &cat_words[0], bits)
    return n


def predict_margin_simd(const float[:, ::1] X, double[::1] out, const int32_t[:, ::1] trees,
                        const int32_t[:, ::1] top, const uint32_t[:, :, ::1] top_tab,
                        const float[::1] thr, const uint32_t[::1] meta, const uint32_t[::1] kids,
                        const double[::1] leaf_value, const int32_t[::1] cat_start,
                        const int32_t[::1] cat_words, const uint32_t[::1] cat_bits, int n_feat,
                        bint special, int threads=1, str isa="avx512") -> int:
    """The vector twins of ``predict_margin_kernel``; returns rows done.

    ``isa`` is ``"avx512"`` (``trees_simd.h``) or ``"avx2"`` (``trees_avx2.h``); only call it
    where ``HAVE_AVX512`` / ``HAVE_AVX2`` is true. ``trees`` is int32 [n_trees, 4] (node base,
    leaf base, kind, split nodes), ``top`` [n_trees, TS_TOP_NODES] the features of each tree's
    top nodes and ``top_tab`` [n_trees, 3, TS2_TOP_STRIDE] their thr, meta and kids (read by
    the AVX2 kernel); ``thr``, ``meta``, ``kids`` are the local-id node tables built by
    ``TreeEnsemble``, each ending with ``TS_TABLE_PAD`` spare entries. ``n_feat`` columns of
    ``X`` are read; ``special``: the trees have categorical or missing_type Zero nodes.
    """
    cdef Py_ssize_t n = X.shape[0], ncol = X.shape[1], n_nodes = thr.shape[0] - TS_TABLE_PAD
    cdef Py_ssize_t n_chunks = (n + CHUNK - 1) // CHUNK
    cdef Py_ssize_t c, r0
    cdef int32_t m
    cdef int n_threads = max(threads, 1)
    cdef bint avx2 = isa == "avx2"
    cdef ts_model M
    if isa not in ("avx512", "avx2"):
        raise ValueError(f"isa must be avx512 or avx2, not {isa!r}")
    if not (HAVE_AVX2 if avx2 else HAVE_AVX512):
        raise RuntimeError(f"this CPU has no {isa}; use predict_margin_kernel")
    if trees.shape[1] != 4 or top.shape[0] != trees.shape[0] or top.shape[1] != TS_TOP_NODES:
        raise ValueError("trees must be [n_trees, 4] and top [n_trees, TS_TOP_NODES]")
    if (top_tab.shape[0] != trees.shape[0] or top_tab.shape[1] != 3
            or top_tab.shape[2] != TS2_TOP_STRIDE):
        raise ValueError("top_tab must be [n_trees, 3, TS2_TOP_STRIDE]")
    if n_nodes < 0 or meta.shape[0] != thr.shape[0] or kids.shape[0] != thr.shape[0]:
        raise ValueError("node tables must have one entry per node plus the padding")
    if cat_start.shape[0] != n_nodes or cat_words.shape[0] != n_nodes:
        raise ValueError("cat_start / cat_words must have one entry per node")
    if not 1 <= n_feat <= ncol:
        raise ValueError(f"n_feat must be in [1, {ncol}]")
    if trees.shape[0] == 0 or n == 0:
        return n
    if n >= 2**31:
        raise ValueError("too many rows for one call")
    # one feature-major block per thread (Python owns the memory)
    cdef float[:, ::1] scratch = np.empty((n_threads, n_feat * max(TS_BLOCK, TS2_BLOCK)),
                                          np.float32)
    M.thr = &thr[0]
    M.meta = &meta[0]
    M.kids = &kids[0]
    M.leaf_value = &leaf_value[0]
    M.trees = &trees[0, 0]
    M.top = &top[0, 0]
    M.n_trees = <int32_t>trees.shape[0]
    M.n_feat = n_feat
    M.cat_start = &cat_start[0] if n_nodes > 0 else NULL
    M.cat_words = &cat_words[0] if n_nodes > 0 else NULL
    M.cat_bits = &cat_bits[0] if cat_bits.shape[0] > 0 else NULL
    M.top_tab = &top_tab[0, 0, 0]
    with nogil:
        for c in prange(n_chunks, num_threads=n_threads, schedule="static"):
            r0 = c * CHUNK
            m = <int32_t>min(CHUNK, n - r0)
            if avx2:
                ts_chunk_avx2(&M, &X[r0, 0], ncol, m, &out[r0], &scratch[threadid(), 0],
                              special)
            else:
                ts_chunk_avx512(&M, &X[r0, 0], ncol, m, &out[r0], &scratch[threadid(), 0],
                                special)
    return n


def float_threshold(thr: np.ndarray) -> np.ndarray:
    """Largest float32 <= each double threshold (exact for float inputs: x <= t <=> x <= f)."""
    with np.errstate(over="ignore"):  # huge thresholds become +-inf, then step back
        f = thr.astype(np.float32)
    up = f.astype(np.float64) > thr
    f[up] = np.nextafter(f[up], np.float32(-np.inf))
    return f


def kernel_threshold(thr: np.ndarray) -> np.ndarray:
    """``float_threshold``, with thresholds in [-kZeroThreshold, kZeroThreshold) moved so that
    inputs with |x| <= kZeroThreshold compare like 0.0: LightGBM's predict zeroes them first."""
    thr = np.asarray(thr, np.float64)
    f = float_threshold(thr)
    kz = np.float32(TS_ZERO_THRESHOLD)
    near = (thr >= -float(kz)) & (thr < float(kz))
    f[near & (thr >= 0)] = kz
    f[near & (thr < 0)] = np.nextafter(-kz, np.float32(-np.inf))
    return f


def _pack_nodes(threshold, feature, left, right, flags) -> np.ndarray:
    """The packed 16-byte node table as an int32 [n, 4] array (see ``Node``)."""
    nodes = np.zeros((len(feature), 4), np.int32)
    nodes[:, 0] = kernel_threshold(threshold).view(np.int32)
    nodes[:, 1] = left
    nodes[:, 2] = right
    # little-endian: feat in the low 16 bits, flags in the next byte
    nodes[:, 3] = (np.asarray(feature, np.int32) & 0xFFFF) | (np.asarray(flags, np.int32) << 16)
    return nodes


def _simd_tables(roots, leaf_starts, n_leaves, threshold, feature, left, right, flags):
    """Node tables of ``trees_simd.h`` and ``trees_avx2.h`` (local ids per tree), or None if a
    tree is too big."""
    n_nodes = len(feature)
    n_split = np.diff(np.append(roots, n_nodes))
    n_leaf = np.diff(np.append(leaf_starts, n_leaves))
    if len(roots) == 0 or n_split.max() >= TS_BIG_LEAF or n_leaf.max() >= TS_BIG_LEAF:
        return None
    kind = np.where(n_leaf > TS_SMALL_LEAF, TS_KIND_BIG,
                    np.where(n_split <= 32, TS_KIND_SMALL32, TS_KIND_SMALL64))
    tree = np.repeat(np.arange(len(roots)), n_split)
    small = kind[tree] != TS_KIND_BIG
    leaf_bit = np.where(small, TS_SMALL_LEAF, TS_BIG_LEAF)

    def local(child):
        child = np.asarray(child, np.int64)
        return np.where(child >= 0, child - roots[tree], (~child - leaf_starts[tree]) | leaf_bit)

    lo, hi = local(left), local(right)
    flags = np.asarray(flags, np.int64)
    cat = (flags & F_CATEGORICAL) != 0
    zero = ((flags & F_MISS_ZERO) != 0) & ~cat
    # for missing_type Zero, NaN and zero both go to the default side
    nan_right = np.where(zero, (flags & F_DEFAULT_LEFT) == 0, (flags & F_NAN_RIGHT) != 0)
    meta = (np.asarray(feature, np.int64) | nan_right * TS_NAN_RIGHT | zero * TS_MISS_ZERO
            | cat * TS_CATEGORICAL)
    meta |= np.where(small, (lo << TS_LEFT_SHIFT) | (hi << TS_RIGHT_SHIFT), 0)
    pad = np.zeros(TS_TABLE_PAD, np.uint32)  # whole-register loads of the last tree's table
    thr = np.where(cat, np.float32(0), kernel_threshold(threshold)).astype(np.float32)
    trees = np.stack([roots, leaf_starts, kind, n_split], 1).astype(np.int32)
    # global ids of each tree's first levels in BFS order; -1: no node here (under a leaf)
    levels = max(TS_TOP, TS2_TOP)
    top_id = np.full((len(roots), (1 << levels) - 1), -1, np.int64)
    cand = np.zeros((len(roots), 1), np.int64)  # local ids; -1: no node here
    for level in range(levels):
        inside = cand >= 0
        g = np.where(inside, roots[:, None] + cand, 0)
        top_id[:, (1 << level) - 1:(2 << level) - 1] = np.where(inside, g, -1)
        pair = np.stack([np.where(inside, lo[g], -1), np.where(inside, hi[g], -1)], 2)
        cand = np.where(pair & leaf_bit[g][:, :, None], -1, pair).reshape(len(roots), -1)
    kids = (lo | (hi << 16)).astype(np.uint32)
    meta = meta.astype(np.uint32)
    inside, g = top_id >= 0, np.maximum(top_id, 0)
    # AVX-512: features of the first TS_TOP levels (0 under a leaf: read, unused)
    top = np.where(inside, np.asarray(feature, np.int32)[g], 0)[:, :TS_TOP_NODES]
    # AVX2: thr / meta / kids of the first TS2_TOP levels (zeros under a leaf), padded to a
    # power of 2 per tree and table
    n2 = TS2_TOP_STRIDE - 1
    top_tab = np.zeros((len(roots), 3, TS2_TOP_STRIDE), np.uint32)
    for k, table in enumerate((thr.view(np.uint32), meta, kids)):
        top_tab[:, k, :n2] = np.where(inside[:, :n2], table[g[:, :n2]], 0)
    return dict(trees=trees, top=np.ascontiguousarray(top, np.int32), top_tab=top_tab,
                thr=np.concatenate([thr, pad.view(np.float32)]),
                meta=np.concatenate([meta, pad]), kids=np.concatenate([kids, pad]),
                special=bool(zero.any() or cat.any()))


def _default_kernel() -> str:
    """The fastest kernel this CPU runs: "avx512", else "avx2", else "scalar".

    ``STREAMFUSION_TREES_KERNEL=scalar`` forces the scalar one.
    """
    forced = os.environ.get("STREAMFUSION_TREES_KERNEL", "auto")
    if forced not in ("auto", "scalar"):
        raise ValueError(f"STREAMFUSION_TREES_KERNEL must be auto or scalar, not {forced!r}")
    if forced == "scalar":
        return "scalar"
    return "avx512" if HAVE_AVX512 else "avx2" if HAVE_AVX2 else "scalar"


class TreeEnsemble:
    """Flattened LightGBM ensemble evaluated by a compiled loop.

    Parameters
    ----------
    model : dict
        ``booster.dump_model()`` of a single-output (binary / regression) model.

    Attributes
    ----------
    n_trees, n_features : int
        Trees in the ensemble and columns the input must have.
    kernel : str
        ``"avx512"``, ``"avx2"`` or ``"scalar"``: the compiled loop ``predict_margin`` runs
        (same results; tests and benchmarks set it to compare them).

    Examples
    --------
    >>> import lightgbm as lgb, numpy as np
    >>> X = np.random.default_rng(0).random((200, 3), dtype=np.float32)
    >>> b = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(X, X[:, 0] > .5), 5)
    >>> ens = TreeEnsemble.from_booster(b)
    >>> bool(np.allclose(ens.predict_margin(X), b.predict(X, raw_score=True)))
    True
    """

    def __init__(self, model: dict):
        if model.get("num_tree_per_iteration", 1) != 1:
            raise ValueError("TreeEnsemble supports single-output models only")
        self.n_features = int(model.get("max_feature_idx", -1)) + 1
        if self.n_features > MAX_FEATURES:
            raise ValueError(f"TreeEnsemble supports up to {MAX_FEATURES} features")
        feature, threshold, flags, left, right = [], [], [], [], []
        cat_start, cat_words, bits, leaves = [], [], [], []
        roots, depths = [], []
        pending_children = []

        def add_node(feat, thr, f):
            feature.append(feat)
            threshold.append(thr)
            flags.append(f)
            left.append(0)
            right.append(0)
            cat_start.append(0)
            cat_words.append(0)
            return len(feature) - 1

        leaf_starts = []
        for info in model["tree_info"]:
            root = info["tree_structure"]
            leaf_starts.append(len(leaves))
            if "leaf_value" not in root and "split_feature" not in root:
                raise ValueError("unexpected tree structure in the model dump")
            if "leaf_coeff" in root or model.get("linear_tree", False):
                raise ValueError("linear trees are not supported")
            if "leaf_value" in root:
                # a constant tree: one split that always goes left (x > inf never holds)
                i = add_node(0, np.inf, 0)
                leaves.append(float(root["leaf_value"]))
                left[i] = right[i] = ~(len(leaves) - 1)
                roots.append(i)
                depths.append(1)
                continue
            # Iterative walk (deep trees would overflow Python's recursion); a slot is
            # (parent's child list, index) to fill with the child's id.
            roots.append(len(feature))
            stack = [(root, None, 0, 1)]
            max_depth = 0
            while stack:
                nd, slot, side, dep = stack.pop()
                if "leaf_value" in nd:
                    leaves.append(float(nd["leaf_value"]))
                    slot[side] = ~(len(leaves) - 1)
                    max_depth = max(max_depth, dep)
                    continue
                f = 1 if nd.get("default_left", False) else 0
                thr = 0.0
                if nd["decision_type"] == "==":
                    cats = [int(c) for c in str(nd["threshold"]).split("||") if c != ""]
                    f |= F_CATEGORICAL | F_SPECIAL
                elif nd["decision_type"] == "<=":
                    thr = float(nd["threshold"])
                    miss = MISSING_TYPES[nd.get("missing_type", "None")]
                    f |= miss
                    if miss == F_MISS_ZERO:
                        f |= F_SPECIAL
                    # Where a NaN goes: missing_type NaN -> the default side; None -> as 0.0.
                    nan_right = (not (f & F_DEFAULT_LEFT)) if miss == F_MISS_NAN else not (
                        0.0 <= thr)
                    if nan_right:
                        f |= F_NAN_RIGHT
                else:
                    raise ValueError(f"unsupported decision type {nd['decision_type']!r}")
                i = add_node(int(nd["split_feature"]), thr, f)
                if f & F_CATEGORICAL:
                    words = (max(cats) >> 5) + 1 if cats else 0
                    cat_start[i] = len(bits)
                    cat_words[i] = words
                    w = [0] * words
                    for c in cats:
                        if c >= 0:
                            w[c >> 5] |= 1 << (c & 31)
                    bits.extend(w)
                if slot is not None:
                    slot[side] = i
                kids = [0, 0]
                stack.append((nd["right_child"], kids, 1, dep + 1))
                stack.append((nd["left_child"], kids, 0, dep + 1))
                # children ids are filled in as the stack unwinds; keep a handle to copy them
                pending_children.append((i, kids))
            max_depth = max(max_depth, 1)
            depths.append(max_depth)
            for i, kids in pending_children:
                left[i], right[i] = kids
            pending_children.clear()

        self.roots = np.asarray(roots + [0], np.int32)  # pad: read, never followed
        self.depth = np.asarray(depths, np.int32)
        self.feature = np.asarray(feature, np.int32)
        self.threshold = np.asarray(threshold, np.float64)
        self.flags = np.asarray(flags, np.uint8)
        self.left = np.asarray(left, np.int32)
        self.right = np.asarray(right, np.int32)
        self.nodes = _pack_nodes(self.threshold, self.feature, self.left, self.right,
                                 self.flags)
        self.leaf_value = np.asarray(leaves + [0.0], np.float64)  # + the zero slot
        self.cat_start = np.asarray(cat_start, np.int32)
        self.cat_words = np.asarray(cat_words, np.int32)
        self.cat_bits = np.asarray(bits, np.uint32)
        self.n_trees = len(roots)
        self._simd = _simd_tables(np.asarray(roots, np.int64), np.asarray(leaf_starts, np.int64),
                                  len(leaves), self.threshold, self.feature, self.left,
                                  self.right, self.flags)
        # "avx512", "avx2" or "scalar": which kernel predict_margin runs (tests set it)
        self.kernel = _default_kernel() if self._simd is not None else "scalar"

    @classmethod
    def from_booster(cls, booster) -> "TreeEnsemble":
        """Build from a ``lightgbm.Booster`` (all its trees)."""
        return cls(booster.dump_model())

    def predict_margin(self, X, init=None, threads: int = 1) -> np.ndarray:
        """Raw margin (float64 [n]) of float32 ``X`` [n, >= n_features].

        ``init`` (scalar or [n]) is the starting score, added before the trees; without it the
        result equals LightGBM's ``predict(X, raw_score=True)``. Results do not depend on
        ``threads``.
        """
        X = np.ascontiguousarray(X, dtype=np.float32)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D, got shape {X.shape}")
        if X.shape[1] < self.n_features:
            raise ValueError(f"X has {X.shape[1]} columns; the trees use {self.n_features}")
        n = X.shape[0]
        out = np.zeros(n, np.float64)
        if init is not None:
            out += np.asarray(init, np.float64)
        if X.shape[1] == 0:  # a model of constant trees on zero features
            X = np.zeros((n, 1), np.float32)
        if self.kernel != "scalar" and self._simd is not None and n >= SIMD_MIN_ROWS:
            t = self._simd
            predict_margin_simd(X, out, t["trees"], t["top"], t["top_tab"], t["thr"], t["meta"],
                                t["kids"], self.leaf_value, self.cat_start, self.cat_words,
                                self.cat_bits, max(self.n_features, 1), t["special"],
                                int(threads), self.kernel)
        else:
            predict_margin_kernel(X, out, self.roots, self.nodes, self.leaf_value,
                                  self.cat_start, self.cat_words, self.cat_bits, int(threads))
        return out

