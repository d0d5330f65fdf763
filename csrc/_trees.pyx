# cython: language_level=3
"""Compiled raw-margin evaluator for LightGBM tree ensembles.

A booster's ``dump_model()`` is flattened into arrays (one node table for all trees, leaves
included as self-looping nodes) and evaluated for a float32 matrix in one ``nogil`` loop.
Rows are processed in small blocks that walk every tree in lockstep: the per-row walks are
independent, so the CPU overlaps their memory loads instead of waiting on one chain of
mispredicted branches. Leaf values are summed in double in tree order, exactly as LightGBM's
``predict(raw_score=True)`` does, so results agree with it to the last bit or so.
"""

import numpy as np

cimport numpy as cnp
from cython.parallel cimport parallel, prange
from libc.math cimport isnan
from libc.stdint cimport int32_t, uint8_t, uint32_t
from libc.stdlib cimport free, malloc

cnp.import_array()

# Node flags (uint8).
DEF F_DEFAULT_LEFT = 1   # missing values go left
DEF F_NAN_RIGHT = 2      # where a NaN goes, folded from missing_type and default_left
DEF F_SPECIAL = 4        # categorical or missing_type Zero: take the slow, exact path
DEF F_CATEGORICAL = 8
DEF F_MISS_ZERO = 16
DEF F_MISS_NAN = 32
DEF BLOCK = 32  # rows walked in lockstep: enough independent loads to hide cache latency

# LightGBM's kZeroThreshold: |x| <= 1e-35 counts as zero for missing_type Zero.
cdef double ZERO_THRESHOLD = 1e-35

MISSING_TYPES = {"None": 0, "Zero": F_MISS_ZERO, "NaN": F_MISS_NAN}


cdef packed struct Node:
    # 16 bytes: one cache-line access per step. thr is the float rounded down from LightGBM's
    # double threshold: for a float x, x <= thr_double exactly when x <= thr_float.
    float thr
    int32_t feat
    int32_t left     # right child is left + 1; a leaf is its own left child (thr = +inf)
    uint8_t flags
    uint8_t pad0
    uint8_t pad1
    uint8_t pad2


cdef inline int _special_right(double fval, int32_t node, uint8_t f, float thr,
                               const int32_t* cat_start, const int32_t* cat_words,
                               const uint32_t* cat_bits) noexcept nogil:
    """LightGBM's Tree::Decision for categorical and missing_type=Zero nodes (1 = right)."""
    cdef int iv
    if f & F_CATEGORICAL:
        # CategoricalDecision: NaN and negative values go right; else bit set -> left.
        if isnan(fval):
            return 1
        iv = <int>fval
        if iv >= 0 and (iv >> 5) < cat_words[node]:
            if (cat_bits[cat_start[node] + (iv >> 5)] >> (iv & 31)) & 1:
                return 0
        return 1
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


def predict_margin_kernel(const float[:, ::1] X, double[::1] out,
                          const int32_t[::1] roots, const int32_t[::1] depth,
                          const int32_t[:, ::1] nodes, const double[::1] value,
                          const int32_t[::1] cat_start, const int32_t[::1] cat_words,
                          const uint32_t[::1] cat_bits, int threads=1) -> int:
    """Add the sum of the trees' leaf values to ``out`` (double, [n]); returns rows done.

    ``nodes`` is the int32 [n_nodes, 4] view of the packed node table built by
    ``TreeEnsemble``; ``out`` holds the starting score.
    """
    cdef Py_ssize_t n = X.shape[0], ncol = X.shape[1]
    cdef Py_ssize_t n_trees = roots.shape[0]
    cdef Py_ssize_t n_blocks = (n + BLOCK - 1) // BLOCK
    cdef Py_ssize_t b, r, r0, m, t, d
    cdef int32_t* node = NULL
    cdef double* acc = NULL
    cdef int32_t nd, nx
    cdef int moving, go
    cdef const Node* p
    cdef float fval
    cdef const float* xb
    cdef const Node* tab = <const Node*>&nodes[0, 0]
    cdef const uint32_t* bits = &cat_bits[0] if cat_bits.shape[0] > 0 else NULL
    cdef int failed = 0
    cdef int* failp = &failed  # written through a pointer: shared, not thread-private
    if nodes.shape[1] != 4 or sizeof(Node) != 16:
        raise ValueError("nodes must be the int32 [n, 4] view of the packed node table")
    if n == 0 or n_trees == 0:
        return n
    if threads < 1:
        threads = 1
    with nogil, parallel(num_threads=threads):
        # Per-thread block state (C arrays declared at function level would be shared).
        node = <int32_t*>malloc(BLOCK * sizeof(int32_t))
        acc = <double*>malloc(BLOCK * sizeof(double))
        if node == NULL or acc == NULL:
            failp[0] = 1
        else:
            for b in prange(n_blocks, schedule="static"):
                r0 = b * BLOCK
                m = n - r0
                if m > BLOCK:
                    m = BLOCK
                xb = &X[r0, 0]
                for r in range(m):
                    acc[r] = out[r0 + r]
                for t in range(n_trees):
                    for r in range(m):
                        node[r] = roots[t]
                    # Walk all rows one level at a time; stop once every row sits on a leaf.
                    for d in range(depth[t]):
                        moving = 0
                        for r in range(m):
                            nd = node[r]
                            p = &tab[nd]
                            fval = xb[r * ncol + p.feat]
                            if p.flags & F_SPECIAL:
                                go = _special_right(fval, nd, p.flags, p.thr, &cat_start[0],
                                                    &cat_words[0], bits)
                            else:
                                go = (fval > p.thr) | ((fval != fval) & (
                                    (p.flags & F_NAN_RIGHT) != 0))
                            nx = p.left + go
                            moving = moving | (nx != nd)
                            node[r] = nx
                        if not moving:
                            break
                    for r in range(m):
                        acc[r] = acc[r] + value[node[r]]
                for r in range(m):
                    out[r0 + r] = acc[r]
        free(node)
        free(acc)
    if failed:
        raise MemoryError("predict_margin_kernel: out of memory for block buffers")
    return n


def float_threshold(thr: np.ndarray) -> np.ndarray:
    """Largest float32 <= each double threshold (exact for float inputs: x <= t <=> x <= f)."""
    with np.errstate(over="ignore"):  # huge thresholds become +-inf, then step back
        f = thr.astype(np.float32)
    up = f.astype(np.float64) > thr
    f[up] = np.nextafter(f[up], np.float32(-np.inf))
    return f


def _pack_nodes(threshold, feature, left, flags) -> np.ndarray:
    """The packed 16-byte node table as an int32 [n, 4] array (see ``Node``)."""
    nodes = np.zeros((len(feature), 4), np.int32)
    nodes[:, 0] = float_threshold(threshold).view(np.int32)
    nodes[:, 1] = feature
    nodes[:, 2] = left
    nodes[:, 3] = flags.astype(np.int32)  # little-endian: flags land in the first byte
    return nodes


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
        feature, threshold, flags, value = [], [], [], []
        left_of, cat_start, cat_words, bits = [], [], [], []
        roots, depths = [], []

        def add_node():
            feature.append(0)
            threshold.append(np.inf)  # leaves: x > inf is never true, so they stay put
            flags.append(0)
            value.append(0.0)
            left_of.append(len(left_of))
            cat_start.append(0)
            cat_words.append(0)
            return len(feature) - 1

        for info in model["tree_info"]:
            root = info["tree_structure"]
            if "leaf_value" not in root and "split_feature" not in root:
                raise ValueError("unexpected tree structure in the model dump")
            if "leaf_coeff" in root or model.get("linear_tree", False):
                raise ValueError("linear trees are not supported")
            # Iterative walk (deep trees would overflow Python's recursion).
            root_id = add_node()
            stack = [(root, root_id, 0)]
            max_depth = 0
            while stack:
                nd, i, dep = stack.pop()
                if "leaf_value" in nd:
                    value[i] = float(nd["leaf_value"])
                    max_depth = max(max_depth, dep)
                    continue
                feature[i] = int(nd["split_feature"])
                f = 1 if nd.get("default_left", False) else 0
                if nd["decision_type"] == "==":
                    cats = [int(c) for c in str(nd["threshold"]).split("||") if c != ""]
                    words = (max(cats) >> 5) + 1 if cats else 0
                    cat_start[i] = len(bits)
                    cat_words[i] = words
                    w = [0] * words
                    for c in cats:
                        if c >= 0:
                            w[c >> 5] |= 1 << (c & 31)
                    bits.extend(w)
                    f |= F_CATEGORICAL | F_SPECIAL
                elif nd["decision_type"] == "<=":
                    thr = float(nd["threshold"])
                    threshold[i] = thr
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
                flags[i] = f
                left = add_node()
                right = add_node()  # always left + 1: the kernel computes left + go_right
                left_of[i] = left
                stack.append((nd["right_child"], right, dep + 1))
                stack.append((nd["left_child"], left, dep + 1))
            roots.append(root_id)
            depths.append(max_depth)

        self.roots = np.asarray(roots, np.int32)
        self.depth = np.asarray(depths, np.int32)
        self.feature = np.asarray(feature, np.int32)
        self.threshold = np.asarray(threshold, np.float64)
        self.flags = np.asarray(flags, np.uint8)
        self.left = np.asarray(left_of, np.int32)
        self.nodes = _pack_nodes(self.threshold, self.feature, self.left, self.flags)
        self.value = np.asarray(value, np.float64)
        self.cat_start = np.asarray(cat_start, np.int32)
        self.cat_words = np.asarray(cat_words, np.int32)
        self.cat_bits = np.asarray(bits, np.uint32)
        self.n_trees = len(roots)

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
        predict_margin_kernel(X, out, self.roots, self.depth, self.nodes, self.value,
                              self.cat_start, self.cat_words, self.cat_bits, int(threads))
        return out

