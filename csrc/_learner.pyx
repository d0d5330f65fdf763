"""Compiled residual learner: LR, FM, DNN and DeepFM forward, backward and Adam over hashed rows.

Functions over arrays that the Python wrapper (``streamfusion.stages.residual``) allocates
and owns: the shared table (``rows x D`` floats, ``D = k + 1`` for FM/DeepFM with the
first-order weight in column ``k``, ``D = 1`` for LR, ``D = k`` for the DNN, an MLP over the
embeddings without first-order or FM term), the flat dense vector (global bias, MLP
layers, output layer), their Adam moments, the step counter, a row marker (all -1 between
calls) and scratch buffers. Inputs are validated here with the GIL held; each call then runs
one ``with nogil:`` block and returns counts. Hot loops live in ``learner_ops.h``.

Objective of one mini-batch of n examples (gradients are exact derivatives of it when clipping
is inactive)::

    J = (1/n) sum_i w_i logloss(y_i, base_i + z_i) + (l2/2) sum_{touched rows r} |table[r]|^2
"""

import numpy as np

from cython.parallel cimport prange
cimport openmp
from libc.math cimport cos, log, pow, sqrt
from libc.stdint cimport int32_t, int64_t, uint64_t
from libc.string cimport memcpy, memset
from scipy.linalg.cython_blas cimport sgemm

cdef extern from "learner_ops.h" nogil:
    int SF_MAX_K
    double sf_logloss(double t, double y)
    double sf_sigmoid(double t)
    void sf_fm_forward(int model, int64_t lo, int64_t hi, int F, int k, const int32_t *idx,
                       const float *val, const float *table, float bias, const float *R,
                       const float *Wf, float *z, float *s, float *h0)
    void sf_fm_backward(int model, int64_t lo, int64_t hi, int F, int k, const int32_t *idx,
                        const float *val, const float *table, const float *g, const float *s,
                        int has_dh0, float *gv, float *gw, const float *h0, const float *R,
                        float *dRv, const float *Wf, float *dWf)
    void sf_pairs_reduce(int64_t pairs, int k, const float *dRv, float *out)
    int64_t sf_dedupe(int64_t n_occ, const int32_t *idx, int32_t *marker, int32_t *touched,
                      int32_t *slot)
    void sf_reset_marker(int64_t nt, const int32_t *touched, int32_t *marker)
    void sf_reduce(int model, int64_t n_occ, int k, const int32_t *slot, const float *gv,
                   const float *gw, float *gsum)
    void sf_add_l2(int64_t lo, int64_t hi, int D, const int32_t *touched, const float *table,
                   float l2, float *gsum)
    int64_t sf_row_updates(int64_t lo, int64_t hi, int D, int first_ada,
                           const int32_t *touched, const float *gsum, float scale, float l2,
                           float *table, float *m, float *v, float step_size, float b1,
                           float b2, float eps, float lr_w, float lr_emb, int32_t *marker)
    int64_t sf_adam_dense(int64_t lo, int64_t hi, const float *grad, float *p, float *m,
                          float *v, float step_size, float b1, float b2, float eps_hat)
    void sf_dense_relu(int64_t lo, int64_t hi, int din, int dout, const float *In,
                       const float *W, const float *b, float *Out)
    void sf_out_forward(int64_t lo, int64_t hi, int d, const float *H, const float *w,
                        float b0, float *z)
    void sf_outer(int64_t lo, int64_t hi, int d, const float *g, const float *w, float *dH)
    void sf_wcolsum(int64_t n, int d, const float *A, const float *g, float *out)
    void sf_relu_back(int64_t lo, int64_t hi, int d, const float *H, float *dH)
    void sf_colsum(int64_t n, int d, const float *A, float *out)
    uint64_t sf_xorshift(uint64_t *state)
    double sf_uniform(uint64_t *state)

cdef enum:
    MAX_LAYERS = 16

MODELS = {"lr": 0, "fm": 1, "deepfm": 2, "dnn": 3}
# Or-ed into DeepFM's model code: its FM part weights each pair of fields f < g by a learned
# R_fg (FwFM, Pan et al. 2018; dense parameters after the MLP's). A plain FM crosses every
# pair of fields alike; in a click log few pairs carry signal, and the weights of the rest
# stay small, rare ids' noisy embeddings with them.
PAIR_WEIGHTS = 8
# Or-ed in with PAIR_WEIGHTS: a learned weight Wf_f on each field's first-order term (FwFM's
# field-weighted linear term; F dense parameters after the pair weights, starting at 1, the
# plain sum, stepped as the pair weights are). A field whose ids carry no signal still fits
# each id's weight to its own past clicks; its Wf_f learns from events scored before they are
# learned, so it shrinks where those fits do not carry over (generated 1M Avazu / Criteo,
# progressive AUC: 0.7308 / 0.6942 without, 0.7346 / 0.6956 with; the Avazu / Criteo samples
# and Adult +0.0016 / +0.0004 / +0.0001; Wf stepped at 0.3 or 3 times the pair weights' step:
# the Avazu sample 0.6819 / 0.6827, generated Criteo 0.6952 / 0.6897).
FIELD_WEIGHTS = 16
# Where the pair weights start: half the plain FM, so a pair earns its way up rather than
# having to fade out from 1 (generated 1M Avazu / Criteo, progressive AUC: 0.7296 / 0.6831
# from 1, 0.7304 / 0.6861 from 0.5; the real samples' AUCs within 0.0025 either way).
PAIR_START = 0.5
# How table rows step: lazy Adam (one bounded step per batch), per-coordinate AdaGrad on the
# summed per-example gradients (steps shrink with each row's own history), or mixed: AdaGrad
# for the first-order weight, lazy Adam for the embedding.
ROW_OPTIMIZERS = {"adam": 0, "adagrad": 1, "mixed": 2}
MAX_K = SF_MAX_K
# Below this many examples a batch runs on one thread: OpenMP start-up would cost more.
PARALLEL_MIN_ROWS = 256
# The MLP forward runs over blocks of FWD_BLOCK rows (the last one zero-padded; a multiple of
# the 8 rows sf_dense_relu takes at a time on AVX-512, 4 on AVX2), a block per thread task.
# Its own kernel sums every row alike, so an event's margin does not depend on the batch it
# arrives in (scoring in batches of 1 or 10,000 agrees); BLAS kernels do not promise that.
# The block is small because a batch pays for whole blocks: one event scored alone (serve)
# costs 32 rows. The backward pass runs BLAS over blocks of MLP_BLOCK rows and sums weight
# gradients block by block (the order of a sum is fixed by the blocks, whatever the thread
# count).
cdef enum:
    FWD_BLOCK = 32
    MLP_BLOCK = 256  # a multiple of FWD_BLOCK: the work buffers are padded to it


cdef struct Net:
    int model
    int F
    int k
    int D
    int L                       # hidden layers (DeepFM, DNN)
    int dims[MAX_LAYERS + 1]    # dims[0] = F * k, dims[1..L] hidden sizes
    int64_t off_w[MAX_LAYERS + 1]
    int64_t off_b[MAX_LAYERS + 1]
    int64_t off_wout
    int64_t off_bout
    int64_t off_r               # pair weights (PAIR_WEIGHTS), -1 without them
    int64_t pairs               # F (F - 1) / 2 with pair weights, else 0
    int64_t off_f               # field weights (FIELD_WEIGHTS), -1 without them
    int64_t P                   # dense parameter count


cdef struct Work:
    # float scratch, carved from one buffer; see _carve
    float *z
    float *g
    float *s
    float *gv
    float *gw
    float *gsum
    float *dgrad
    float *H[MAX_LAYERS + 1]
    float *dA
    float *dB
    float *blk                  # per-block dense gradients [blocks, P] (DeepFM, DNN)
    float *pairv                # per-block pair-weight products [blocks, pairs, k]
    int32_t *touched
    int32_t *slot


cdef inline bint _has_mlp(int model) noexcept nogil:
    return model == 2 or model == 3


cdef Net _make_net(int model, int F, int k, dims) except *:
    cdef Net net
    cdef int l
    cdef int64_t cur
    cdef bint weighted = model & PAIR_WEIGHTS
    cdef bint fielded = model & FIELD_WEIGHTS
    model &= ~(PAIR_WEIGHTS | FIELD_WEIGHTS)
    if model not in (0, 1, 2, 3):
        raise ValueError(f"model code must be 0 (lr), 1 (fm), 2 (deepfm) or 3 (dnn), got "
                         f"{model}")
    if weighted and model != 2:
        raise ValueError("pair weights are a DeepFM option")
    if fielded and not weighted:
        raise ValueError("field weights come with pair weights")
    if F < 1:
        raise ValueError(f"need at least one field, got {F}")
    if model != 0 and not 1 <= k <= SF_MAX_K:
        raise ValueError(f"k must be in [1, {SF_MAX_K}], got {k}")
    net.model = model
    net.F = F
    net.k = k if model != 0 else 0
    net.D = 1 if model == 0 else k if model == 3 else k + 1
    hidden = list(dims) if _has_mlp(model) else []
    if len(hidden) > MAX_LAYERS:
        raise ValueError(f"at most {MAX_LAYERS} hidden layers, got {len(hidden)}")
    net.L = len(hidden)
    net.dims[0] = F * net.k
    cur = 1  # dense[0] is the global bias
    for l in range(1, net.L + 1):
        if int(hidden[l - 1]) < 1:
            raise ValueError(f"hidden sizes must be positive, got {hidden}")
        net.dims[l] = int(hidden[l - 1])
        net.off_w[l] = cur
        cur += <int64_t>net.dims[l - 1] * net.dims[l]
        net.off_b[l] = cur
        cur += net.dims[l]
    if _has_mlp(model):
        net.off_wout = cur
        cur += net.dims[net.L]
        net.off_bout = cur
        cur += 1
    net.off_r = -1
    net.pairs = 0
    if weighted:
        net.off_r = cur
        net.pairs = <int64_t>F * (F - 1) // 2
        cur += net.pairs
    net.off_f = -1
    if fielded:
        net.off_f = cur
        cur += F
    net.P = cur
    return net


cdef inline int64_t _padded(int64_t n) noexcept nogil:
    return (n + MLP_BLOCK - 1) // MLP_BLOCK * MLP_BLOCK


cdef int64_t _h_total(Net *net) noexcept nogil:
    cdef int64_t t = 0
    cdef int l
    if not _has_mlp(net.model):
        return 0
    for l in range(net.L + 1):
        t += net.dims[l]
    return t


cdef int _max_hidden(Net *net) noexcept nogil:
    cdef int l, mx = 1
    for l in range(1, net.L + 1):
        if net.dims[l] > mx:
            mx = net.dims[l]
    return mx


cdef tuple _sizes(Net *net, int64_t n, bint train):
    """Float and int32 scratch sizes for a batch of n examples."""
    cdef int64_t occ = n * net.F
    cdef int64_t nf = _h_total(net) * _padded(n)
    cdef int64_t ni = 0
    if train:
        nf += 2 * n + n * net.k + occ * net.k + occ + occ * net.D + net.P
        if _has_mlp(net.model):
            nf += (2 * _padded(n) * _max_hidden(net)
                   + _padded(n) // MLP_BLOCK * (net.P + net.pairs * net.k))
        ni = 2 * occ
    return nf, ni


cdef void _carve(Net *net, int64_t n, bint train, float *fw, int32_t *iw, Work *w) noexcept nogil:
    cdef int64_t occ = n * net.F
    cdef int l
    cdef float *p = fw
    if train:
        w.z = p; p += n
        w.g = p; p += n
        w.s = p; p += n * net.k
        w.gv = p; p += occ * net.k
        w.gw = p; p += occ
        w.gsum = p; p += occ * net.D
        w.dgrad = p; p += net.P
        w.touched = iw
        w.slot = iw + occ
    if _has_mlp(net.model):
        for l in range(net.L + 1):
            w.H[l] = p
            p += _padded(n) * net.dims[l]
        if train:
            w.dA = p; p += _padded(n) * _max_hidden(net)
            w.dB = p; p += _padded(n) * _max_hidden(net)
            w.blk = p; p += _padded(n) // MLP_BLOCK * net.P
            w.pairv = p; p += _padded(n) // MLP_BLOCK * net.pairs * net.k


cdef int _dynamic_threads = 0


def set_dynamic_threads(bint on) -> None:
    """Let OpenMP give fewer threads than asked when the machine is busy (libgomp's dynamic
    mode: one thread whenever the load average exceeds the free cores). Off by default:
    waiting threads sleep instead of spinning (``OMP_WAIT_POLICY=passive``, set by the
    package), which already keeps a loaded machine from stalling on preempted threads."""
    global _dynamic_threads
    _dynamic_threads = 1 if on else 0


def table_width(int model, int k) -> int:
    """Floats per table row: k + 1 for FM / DeepFM (embedding, then first-order), 1 for LR,
    k for the DNN (embedding only)."""
    model &= ~(PAIR_WEIGHTS | FIELD_WEIGHTS)
    return 1 if model == 0 else k if model == 3 else k + 1


def dense_size(int model, int n_fields, int k, hidden) -> int:
    """Length of the flat dense vector: bias, then per layer W [d_in, d_out] and b, then out,
    then the pair weights (PAIR_WEIGHTS), then the field weights (FIELD_WEIGHTS)."""
    cdef Net net = _make_net(model, n_fields, k, hidden)
    return net.P


def work_size(int model, int n_fields, int k, hidden, int64_t n, bint train) -> tuple:
    """(float32 count, int32 count) of scratch needed for a batch of n examples."""
    cdef Net net = _make_net(model, n_fields, k, hidden)
    return _sizes(&net, n, train)


def py_loss(double t, double y) -> float:
    """Twin of the stable logit loss ``log(1 + exp(t)) - y t``."""
    return sf_logloss(t, y)


def py_dloss(double t, double y) -> float:
    """Twin of the loss gradient with respect to the margin, ``sigmoid(t) - y``."""
    return sf_sigmoid(t) - y


def py_sigmoid(double t) -> float:
    """Twin of the stable sigmoid."""
    return sf_sigmoid(t)


def init_params(int model, int n_fields, int k, hidden, float[:, ::1] table, float[::1] dense,
                uint64_t seed, float init_std):
    """Seeded initialisation in place (xorshift64*).

    Embeddings ~ N(0, init_std) (Box-Muller), first-order weights (FM, DeepFM, LR) and all
    biases 0, MLP and output weights ~ U(-a, a) with a = sqrt(6 / (fan_in + fan_out))
    (Glorot), pair weights PAIR_START (half the plain FM), field weights 1.
    """
    cdef Net net = _make_net(model, n_fields, k, hidden)
    cdef int64_t rows = table.shape[0], r, j, i
    cdef int l
    cdef uint64_t state = seed if seed != 0 else 0x9E3779B97F4A7C15ULL  # zero state is stuck
    cdef double u1, u2, a
    cdef float *tp
    cdef float *dp
    cdef float pair_start = PAIR_START
    if table.shape[1] != net.D:
        raise ValueError(f"table has {table.shape[1]} columns, expected {net.D}")
    if dense.shape[0] != net.P:
        raise ValueError(f"dense has {dense.shape[0]} entries, expected {net.P}")
    tp = &table[0, 0] if rows > 0 else NULL
    dp = &dense[0]
    with nogil:
        for r in range(rows):
            for j in range(net.k):
                u1 = sf_uniform(&state)
                u2 = sf_uniform(&state)
                tp[r * net.D + j] = <float>(init_std * sqrt(-2.0 * log(u1))
                                            * cos(6.283185307179586 * u2))
            if net.model != 3:
                tp[r * net.D + net.D - 1] = 0.0
        memset(dp, 0, net.P * sizeof(float))
        for l in range(1, net.L + 1):
            a = sqrt(6.0 / (net.dims[l - 1] + net.dims[l]))
            for i in range(<int64_t>net.dims[l - 1] * net.dims[l]):
                dp[net.off_w[l] + i] = <float>(a * (2.0 * sf_uniform(&state) - 1.0))
        if _has_mlp(net.model):
            a = sqrt(6.0 / (net.dims[net.L] + 1))
            for i in range(net.dims[net.L]):
                dp[net.off_wout + i] = <float>(a * (2.0 * sf_uniform(&state) - 1.0))
        for i in range(net.pairs):
            dp[net.off_r + i] = pair_start
        if net.off_f >= 0:
            for i in range(net.F):
                dp[net.off_f + i] = 1.0


cdef void _check_indices(const int32_t[:, ::1] indices, int64_t rows) except *:
    """Raise ValueError (GIL held, before any nogil loop) on an index outside the table."""
    cdef int64_t n = indices.shape[0] * indices.shape[1], o
    cdef const int32_t *p
    cdef int32_t lo = 0, hi = 0, x
    if n == 0:
        return
    p = &indices[0, 0]
    lo = p[0]
    hi = p[0]
    with nogil:
        for o in range(n):
            x = p[o]
            if x < lo:
                lo = x
            if x > hi:
                hi = x
    if lo < 0 or hi >= rows:
        raise ValueError(
            f"indices must lie in [0, {rows}) (the table has 2**bits rows); "
            f"got values in [{lo}, {hi}]")


cdef void _check_batch(Net *net, const int32_t[:, ::1] indices, const float[:, ::1] values,
                       const float[:, ::1] table, const float[::1] dense) except *:
    if indices.shape[1] != net.F:
        raise ValueError(f"indices has {indices.shape[1]} fields, expected {net.F}")
    if values is not None and (values.shape[0] != indices.shape[0]
                               or values.shape[1] != net.F):
        raise ValueError(f"values has shape ({values.shape[0]}, {values.shape[1]}), expected "
                         f"({indices.shape[0]}, {net.F})")
    if table.shape[1] != net.D:
        raise ValueError(f"table has {table.shape[1]} columns, expected {net.D}")
    if dense.shape[0] != net.P:
        raise ValueError(f"dense has {dense.shape[0]} entries, expected {net.P}")
    _check_indices(indices, table.shape[0])


cdef void _check_work(Net *net, int64_t n, bint train, float[::1] work,
                      int32_t[::1] iwork) except *:
    nf, ni = _sizes(net, n, train)
    if work is None or work.shape[0] < nf:
        raise ValueError(f"float scratch too small: need {nf}")
    if ni > 0 and (iwork is None or iwork.shape[0] < ni):
        raise ValueError(f"int scratch too small: need {ni}")


cdef void _gemm(char ta, char tb, int m, int n, int k, const float *a, int lda, const float *b,
                int ldb, float *c, int ldc) noexcept nogil:
    """Column-major C = op(A) op(B) through BLAS; row-major callers swap operands."""
    cdef float one = 1.0, zero = 0.0
    sgemm(&ta, &tb, &m, &n, &k, &one, <float *>a, &lda, <float *>b, &ldb, &zero, c, &ldc)


cdef void _forward_block(Net *net, int64_t blk, int64_t n, const int32_t *idx,
                        const float *val, const float *table, const float *dense, float *z,
                        float *s, Work *w) noexcept nogil:
    """DeepFM / DNN forward of rows [blk * FWD_BLOCK, ...): FM part (DNN: the embeddings
    only), then the MLP block by block."""
    cdef int64_t lo = blk * FWD_BLOCK, hi = min(lo + FWD_BLOCK, n)
    cdef int l
    cdef int d0 = net.dims[0]
    sf_fm_forward(net.model, lo, hi, net.F, net.k, idx, val, table, dense[0],
                  dense + net.off_r if net.off_r >= 0 else NULL,
                  dense + net.off_f if net.off_f >= 0 else NULL, z, s, w.H[0])
    if hi - lo < FWD_BLOCK:  # zero padding: the kernel runs whole blocks on finite rows
        memset(w.H[0] + hi * d0, 0, (lo + FWD_BLOCK - hi) * d0 * sizeof(float))
    for l in range(1, net.L + 1):
        sf_dense_relu(lo, lo + FWD_BLOCK, net.dims[l - 1], net.dims[l], w.H[l - 1],
                      dense + net.off_w[l], dense + net.off_b[l], w.H[l])
    sf_out_forward(lo, hi, net.dims[net.L], w.H[net.L], dense + net.off_wout,
                   dense[net.off_bout], z)


cdef void _forward(Net *net, int64_t n, const int32_t *idx, const float *val,
                   const float *table, const float *dense, float *z, float *s, Work *w,
                   int nth) noexcept nogil:
    """Margins of n examples into z (s: FM sums for the backward pass, may be NULL).

    Work is split into fixed blocks of rows (DeepFM, DNN) or equal chunks (FM, LR); each block is
    computed the same way whatever the thread count, so results do not depend on threads."""
    cdef int t
    cdef int64_t b, nblk
    if _has_mlp(net.model):
        nblk = (n + FWD_BLOCK - 1) // FWD_BLOCK
        if nth > 1 and nblk > 1:
            for b in prange(nblk, num_threads=nth, schedule="dynamic"):
                _forward_block(net, b, n, idx, val, table, dense, z, s, w)
        else:
            for b in range(nblk):
                _forward_block(net, b, n, idx, val, table, dense, z, s, w)
    elif nth > 1:
        for t in prange(nth, num_threads=nth, schedule="static"):
            sf_fm_forward(net.model, n * t // nth, n * (t + 1) // nth, net.F, net.k, idx, val,
                          table, dense[0], NULL, NULL, z, s, NULL)
    else:
        sf_fm_forward(net.model, 0, n, net.F, net.k, idx, val, table, dense[0], NULL, NULL, z,
                      s, NULL)


def forward(int model, int k, hidden, const int32_t[:, ::1] indices,
            const float[:, ::1] values, const float[:, ::1] table, const float[::1] dense,
            float[::1] out, float[::1] work, int threads=1):
    """Write the learner's own margin of each example into ``out``; changes nothing else.

    ``values`` may be None (every value 1). ``work`` must hold ``work_size(..., train=False)``.
    """
    cdef Net net = _make_net(model, indices.shape[1], k, hidden)
    cdef int64_t n = indices.shape[0]
    cdef Work w
    cdef const float *val = NULL
    cdef int nth = threads if n >= PARALLEL_MIN_ROWS else 1
    cdef int dyn
    _check_batch(&net, indices, values, table, dense)
    if out.shape[0] != n:
        raise ValueError(f"out has {out.shape[0]} entries, expected {n}")
    if n == 0:
        return
    _check_work(&net, n, False, work, None)
    if values is not None:
        val = &values[0, 0]
    _carve(&net, n, False, &work[0], NULL, &w)
    with nogil:
        dyn = openmp.omp_get_dynamic()
        openmp.omp_set_dynamic(_dynamic_threads)
        _forward(&net, n, &indices[0, 0], val, &table[0, 0], &dense[0], &out[0], NULL, &w,
                 nth)
        openmp.omp_set_dynamic(dyn)


cdef void _backward_block(Net *net, int64_t blk, int64_t n, const int32_t *idx,
                         const float *val, const float *table, const float *dense,
                         Work *w) noexcept nogil:
    """Backward of rows [blk * MLP_BLOCK, ...) through the MLP (weight gradients into this
    block's own slice of w.blk) and the FM part (per-occurrence gradients into gv, gw)."""
    cdef int64_t lo = blk * MLP_BLOCK, hi = min(lo + MLP_BLOCK, n), i
    cdef int rows = <int>(hi - lo), l, d
    cdef float *bb = w.blk + blk * net.P
    cdef float *cur = w.dA + lo * _max_hidden(net)
    cdef float *nxt = w.dB + lo * _max_hidden(net)
    cdef float *tmp
    cdef float *pv
    cdef const float *fw = NULL
    cdef float *dfw = NULL
    cdef float gs = 0.0
    for i in range(lo, hi):
        gs = gs + w.g[i]
    bb[0] = gs
    bb[net.off_bout] = gs
    d = net.dims[net.L]
    sf_wcolsum(rows, d, w.H[net.L] + lo * d, w.g + lo, bb + net.off_wout)
    if net.L == 0:
        cur = w.gv + lo * net.dims[0]
    sf_outer(0, rows, d, w.g + lo, dense + net.off_wout, cur)
    for l in range(net.L, 0, -1):
        sf_relu_back(0, rows, net.dims[l], w.H[l] + lo * net.dims[l], cur)
        sf_colsum(rows, net.dims[l], cur, bb + net.off_b[l])
        # dW_l = H_{l-1}^T dA_l ; dH_{l-1} = dA_l W_l^T (into gv for the input layer)
        _gemm(b"N", b"T", net.dims[l], net.dims[l - 1], rows, cur, net.dims[l],
              w.H[l - 1] + lo * net.dims[l - 1], net.dims[l - 1], bb + net.off_w[l],
              net.dims[l])
        if l == 1:
            nxt = w.gv + lo * net.dims[0]
        _gemm(b"T", b"N", net.dims[l - 1], rows, net.dims[l], dense + net.off_w[l],
              net.dims[l], cur, net.dims[l], nxt, net.dims[l - 1])
        tmp = cur
        cur = nxt
        nxt = tmp
    if net.off_r >= 0:  # pair weights (none for one field) and field weights
        pv = w.pairv + blk * net.pairs * net.k
        memset(pv, 0, net.pairs * net.k * sizeof(float))
        if net.off_f >= 0:  # summed straight into this block's dense gradients
            fw = dense + net.off_f
            dfw = bb + net.off_f
            memset(dfw, 0, net.F * sizeof(float))
        sf_fm_backward(net.model, lo, hi, net.F, net.k, idx, val, table, w.g, w.s, 1, w.gv,
                       w.gw, w.H[0], dense + net.off_r, pv, fw, dfw)
        sf_pairs_reduce(net.pairs, net.k, pv, bb + net.off_r)
    else:
        sf_fm_backward(net.model, lo, hi, net.F, net.k, idx, val, table, w.g, w.s, 1, w.gv,
                       w.gw, NULL, NULL, NULL, NULL, NULL)


cdef int64_t _backprop(Net *net, int64_t n, const int32_t *idx, const float *val,
                       const float *base, const float *y, const float *sw, float clip,
                       const float *table, const float *dense, int32_t *marker, Work *w,
                       int nth, double *loss_out) noexcept nogil:
    """Forward, loss and gradients of one batch; leaves the summed gradient of each touched
    row in w.gsum (rows in w.touched, marker set) and the dense gradient in w.dgrad (MLP:
    per-block parts in w.blk, summed by _dense_sum). Returns the number of touched rows; loss
    and skipped examples via loss_out[0..1]."""
    cdef int64_t i, j, nt, occ = n * net.F, b, nblk
    cdef int t, l, d
    cdef double ti, lsum = 0.0, gi, wi
    cdef float inv_n = 1.0 / n
    cdef int64_t skipped = 0

    _forward(net, n, idx, val, table, dense, w.z, w.s, w, nth)

    # per-example gradient of the mean loss with respect to the margin, clipped
    for i in range(n):
        ti = <double>base[i] + w.z[i]
        wi = sw[i] if sw != NULL else 1.0
        if not (ti - ti == 0.0) or not (y[i] - y[i] == 0.0) or not (wi - wi == 0.0):
            w.g[i] = 0.0  # non-finite margin, label or weight: skip the example
            skipped += 1
            continue
        lsum += wi * sf_logloss(ti, y[i])
        gi = wi * (sf_sigmoid(ti) - y[i])
        if gi > clip:
            gi = clip
        elif gi < -clip:
            gi = -clip
        w.g[i] = <float>gi * inv_n
    loss_out[0] = lsum
    loss_out[1] = <double>skipped

    if skipped > 0:
        # a skipped example may hold inf/NaN activations; zero them so 0 * inf never reaches
        # the GEMM weight gradients
        for i in range(n):
            if w.g[i] == 0.0:
                for j in range(net.k):
                    w.s[i * net.k + j] = 0.0
                if _has_mlp(net.model):
                    for l in range(net.L + 1):
                        d = net.dims[l]
                        for j in range(d):
                            w.H[l][i * d + j] = 0.0

    if _has_mlp(net.model):
        nblk = _padded(n) // MLP_BLOCK
        if nth > 1 and nblk > 1:
            for b in prange(nblk, num_threads=nth, schedule="dynamic"):
                _backward_block(net, b, n, idx, val, table, dense, w)
        else:
            for b in range(nblk):
                _backward_block(net, b, n, idx, val, table, dense, w)
    else:
        w.dgrad[0] = 0.0
        for i in range(n):
            w.dgrad[0] += w.g[i]
        if nth > 1:
            for t in prange(nth, num_threads=nth, schedule="static"):
                sf_fm_backward(net.model, n * t // nth, n * (t + 1) // nth, net.F, net.k, idx,
                               val, table, w.g, w.s, 0, w.gv, w.gw, NULL, NULL, NULL, NULL,
                               NULL)
        else:
            sf_fm_backward(net.model, 0, n, net.F, net.k, idx, val, table, w.g, w.s, 0, w.gv,
                           w.gw, NULL, NULL, NULL, NULL, NULL)
    if skipped > 0:
        for i in range(n):
            if w.g[i] == 0.0:
                for j in range(net.F):
                    w.gw[i * net.F + j] = 0.0
                if net.model != 0:
                    for j in range(net.F * net.k):
                        w.gv[i * net.F * net.k + j] = 0.0

    nt = sf_dedupe(occ, idx, marker, w.touched, w.slot)
    memset(w.gsum, 0, nt * net.D * sizeof(float))
    sf_reduce(net.model, occ, net.k, w.slot, w.gv, w.gw, w.gsum)
    return nt


cdef void _dense_sum(Net *net, int64_t n, int64_t lo, int64_t hi, Work *w) noexcept nogil:
    """dgrad[lo:hi] = sum of the per-block gradients, blocks in a fixed order (MLP models)."""
    cdef int64_t nblk = _padded(n) // MLP_BLOCK, b, j
    cdef float *src
    if not _has_mlp(net.model):
        return
    for j in range(lo, hi):
        w.dgrad[j] = w.blk[j]
    for b in range(1, nblk):
        src = w.blk + b * net.P
        for j in range(lo, hi):
            w.dgrad[j] += src[j]


cdef object _prepare(Net *net, const int32_t[:, ::1] indices, const float[:, ::1] values,
                     const float[::1] base_margin, const float[::1] y,
                     const float[::1] sample_weight, const float[:, ::1] table,
                     const float[::1] dense, int32_t[::1] marker, float[::1] work,
                     int32_t[::1] iwork):
    cdef int64_t n = indices.shape[0]
    _check_batch(net, indices, values, table, dense)
    if base_margin.shape[0] != n or y.shape[0] != n:
        raise ValueError(f"base_margin and y need {n} entries, got "
                         f"{base_margin.shape[0]} and {y.shape[0]}")
    if sample_weight is not None and sample_weight.shape[0] != n:
        raise ValueError(f"sample_weight needs {n} entries, got {sample_weight.shape[0]}")
    if marker.shape[0] != table.shape[0]:
        raise ValueError("marker must have one entry per table row")
    if n > 0:
        _check_work(net, n, True, work, iwork)


cdef inline int64_t _row_step(int opt, int model, int64_t lo, int64_t hi, int D, Work *w,
                              int64_t n, float l2, float *table, float *m, float *v,
                              float step_size, float row_lr, float emb_lr, float b1, float b2,
                              float eps, int32_t *marker) noexcept nogil:
    """Update the touched rows [lo, hi) with the chosen row optimizer (columns from the
    first AdaGrad one on: all for adagrad, the first-order weight for mixed, none for adam).
    The DNN's rows hold an embedding only: mixed steps them with Adam, adagrad with emb_lr."""
    cdef int first_ada = 0 if opt == 1 else D - 1 if opt == 2 else D
    if model == 3:
        first_ada = 0 if opt == 1 else D
        row_lr = emb_lr
    return sf_row_updates(lo, hi, D, first_ada, w.touched, w.gsum, <float>n, l2, table, m, v,
                          step_size, b1, b2, eps, row_lr, emb_lr, marker)


cdef inline int64_t _dense_step(Net *net, int64_t lo, int64_t hi, Work *w, float *dense,
                                float *m, float *v, float step_size, float pair_step, float b1,
                                float b2, float eps_hat) noexcept nogil:
    """Adam on the dense parameters [lo, hi): the pair and field weights (the last ones) at
    their own step."""
    cdef int64_t cut = net.off_r if net.off_r >= 0 else net.P
    cdef int64_t skipped = 0
    if lo < cut:
        skipped += sf_adam_dense(lo, min(hi, cut), w.dgrad, dense, m, v, step_size, b1, b2,
                                 eps_hat)
    if hi > cut:
        skipped += sf_adam_dense(max(lo, cut), hi, w.dgrad, dense, m, v, pair_step, b1, b2,
                                 eps_hat)
    return skipped


def train(int model, int k, hidden, const int32_t[:, ::1] indices,
          const float[:, ::1] values, const float[::1] base_margin, const float[::1] y,
          const float[::1] sample_weight, float[:, ::1] table, float[:, ::1] table_m,
          float[:, ::1] table_v, float[::1] dense, float[::1] dense_m, float[::1] dense_v,
          int64_t[::1] step, int32_t[::1] marker, float[::1] work, int32_t[::1] iwork,
          float lr, float beta1, float beta2, float eps, float l2, float clip, int threads=1,
          float[::1] margin_out=None, int row_optimizer=0, float row_lr=0.0,
          float emb_lr=0.0, float pair_lr=0.0):
    """One Adam step on the batch. Returns (loss_sum, skipped_examples, skipped_updates, rows).

    ``margin_out``, when given, receives the learner's own margins *before* the step (the
    forward pass the step needed anyway): test-then-train scoring at no extra cost.

    loss_sum is sum_i w_i logloss_i over the examples not skipped; skipped_updates counts
    table rows and dense parameters whose update would have been non-finite (left unchanged).
    Table rows follow lazy Adam (torch SparseAdam) or, with ``row_optimizer`` 1, AdaGrad with
    step ``row_lr`` on the summed per-example gradients (``table_m`` unused, ``table_v`` the
    accumulator); dense parameters torch Adam, the pair and field weights (PAIR_WEIGHTS,
    FIELD_WEIGHTS) at step ``pair_lr``; the step counter ``step[0]`` advances once per
    non-empty batch.
    """
    cdef Net net = _make_net(model, indices.shape[1], k, hidden)
    cdef int64_t n = indices.shape[0], nt, t64, skipped_upd = 0, P
    cdef Work w
    cdef const float *val = NULL
    cdef const float *sw = NULL
    cdef double loss[2]
    cdef double bc1, bc2
    cdef float step_size, eps_hat, pair_step
    cdef int64_t lo, hi
    cdef int nth = threads if n >= PARALLEL_MIN_ROWS else 1
    cdef int t, dyn
    _prepare(&net, indices, values, base_margin, y, sample_weight, table, dense, marker, work,
             iwork)
    if table_m.shape[0] != table.shape[0] or table_v.shape[0] != table.shape[0] \
            or table_m.shape[1] != net.D or table_v.shape[1] != net.D:
        raise ValueError("table moments must match the table's shape")
    if dense_m.shape[0] != net.P or dense_v.shape[0] != net.P:
        raise ValueError("dense moments must match the dense vector's shape")
    if step.shape[0] != 1:
        raise ValueError("step must be an int64 array of length 1")
    if margin_out is not None and margin_out.shape[0] != n:
        raise ValueError(f"margin_out has {margin_out.shape[0]} entries, expected {n}")
    if row_optimizer not in (0, 1, 2):
        raise ValueError(f"row_optimizer must be 0 (adam), 1 (adagrad) or 2 (mixed), got "
                         f"{row_optimizer}")
    if row_optimizer == 1 and not (row_lr > 0 and emb_lr > 0):
        raise ValueError(f"AdaGrad rows need row_lr, emb_lr > 0, got {row_lr}, {emb_lr}")
    if net.pairs and not pair_lr > 0:
        raise ValueError(f"pair weights need pair_lr > 0, got {pair_lr}")
    if n == 0:
        return 0.0, 0, 0, 0
    if values is not None:
        val = &values[0, 0]
    if sample_weight is not None:
        sw = &sample_weight[0]
    _carve(&net, n, True, &work[0], &iwork[0], &w)
    P = net.P
    with nogil:
        dyn = openmp.omp_get_dynamic()
        openmp.omp_set_dynamic(_dynamic_threads)
        nt = _backprop(&net, n, &indices[0, 0], val, &base_margin[0], &y[0], sw, clip,
                       &table[0, 0], &dense[0], &marker[0], &w, nth, loss)
        if margin_out is not None:
            memcpy(&margin_out[0], w.z, n * sizeof(float))
        step[0] += 1
        t64 = step[0]
        # bias correction folded into one step size per batch
        bc1 = 1.0 - pow(beta1, <double>t64)
        bc2 = 1.0 - pow(beta2, <double>t64)
        step_size = <float>(lr * sqrt(bc2) / bc1)
        pair_step = <float>(pair_lr * sqrt(bc2) / bc1)
        eps_hat = <float>(eps * sqrt(bc2))
        if nth > 1:
            for t in prange(nth, num_threads=nth, schedule="static"):
                skipped_upd += _row_step(row_optimizer, net.model, nt * t // nth,
                                         nt * (t + 1) // nth, net.D, &w, n, l2, &table[0, 0],
                                         &table_m[0, 0], &table_v[0, 0], step_size, row_lr,
                                         emb_lr, beta1, beta2, eps, &marker[0])
            for t in prange(nth, num_threads=nth, schedule="static"):
                lo = P * t // nth
                hi = P * (t + 1) // nth
                _dense_sum(&net, n, lo, hi, &w)
                skipped_upd += _dense_step(&net, lo, hi, &w, &dense[0], &dense_m[0],
                                           &dense_v[0], step_size, pair_step, beta1, beta2,
                                           eps_hat)
        else:
            skipped_upd += _row_step(row_optimizer, net.model, 0, nt, net.D, &w, n, l2,
                                     &table[0, 0], &table_m[0, 0], &table_v[0, 0], step_size,
                                     row_lr, emb_lr, beta1, beta2, eps, &marker[0])
            _dense_sum(&net, n, 0, P, &w)
            skipped_upd += _dense_step(&net, 0, P, &w, &dense[0], &dense_m[0], &dense_v[0],
                                       step_size, pair_step, beta1, beta2, eps_hat)
        openmp.omp_set_dynamic(dyn)
    return loss[0], int(loss[1]), skipped_upd, nt


def gradients(int model, int k, hidden, const int32_t[:, ::1] indices,
              const float[:, ::1] values, const float[::1] base_margin, const float[::1] y,
              const float[::1] sample_weight, const float[:, ::1] table,
              const float[::1] dense, int32_t[::1] marker, float[::1] work,
              int32_t[::1] iwork, float l2, float clip):
    """Gradients of the batch objective without applying them (the twin used by tests).

    Returns (loss_sum, skipped_examples, rows int32 [t], table_grad float32 [t, D],
    dense_grad float32 [P]); table_grad includes the L2 term of the touched rows.
    """
    cdef Net net = _make_net(model, indices.shape[1], k, hidden)
    cdef int64_t n = indices.shape[0], nt = 0
    cdef Work w
    cdef const float *val = NULL
    cdef const float *sw = NULL
    cdef double loss[2]
    _prepare(&net, indices, values, base_margin, y, sample_weight, table, dense, marker, work,
             iwork)
    if n == 0:
        return (0.0, 0, np.zeros(0, np.int32), np.zeros((0, net.D), np.float32),
                np.zeros(net.P, np.float32))
    if values is not None:
        val = &values[0, 0]
    if sample_weight is not None:
        sw = &sample_weight[0]
    _carve(&net, n, True, &work[0], &iwork[0], &w)
    with nogil:
        nt = _backprop(&net, n, &indices[0, 0], val, &base_margin[0], &y[0], sw, clip,
                       &table[0, 0], &dense[0], &marker[0], &w, 1, loss)
        _dense_sum(&net, n, 0, net.P, &w)
        sf_add_l2(0, nt, net.D, w.touched, &table[0, 0], l2, w.gsum)
        sf_reset_marker(nt, w.touched, &marker[0])
    rows = np.asarray(<int32_t[:nt]>w.touched).copy() if nt > 0 else np.zeros(0, np.int32)
    grad = (np.asarray(<float[:nt * net.D]>w.gsum).reshape(nt, net.D).copy() if nt > 0
            else np.zeros((0, net.D), np.float32))
    dgrad = np.asarray(<float[:net.P]>w.dgrad).copy()
    return loss[0], int(loss[1]), rows, grad, dgrad
