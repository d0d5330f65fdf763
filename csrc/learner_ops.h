/* Hot loops of the residual learner (LR / FM / DNN / DeepFM), called from _learner.pyx.
 *
 * Every function works on a half-open range of examples [lo, hi) or of touched rows, so the
 * Cython side can split work across OpenMP threads without any shared writes. Nothing here
 * allocates, raises or touches Python objects.
 *
 * Table layout: one shared table of `rows` x D floats. For FM / DeepFM, D = k + 1: columns
 * 0..k-1 hold the embedding, column k the first-order weight. For LR, D = 1. For DNN (an MLP
 * over the embeddings, no first-order or FM term), D = k.
 *
 * target_clones builds an AVX2+FMA copy next to the baseline one and picks it at load time,
 * so wheels stay portable (no -march=native in setup.py).
 */
#ifndef SF_LEARNER_OPS_H
#define SF_LEARNER_OPS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define SF_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SF_CLONES
#endif

#if defined(__GNUC__)
#define SF_PREFETCH(p, rw) __builtin_prefetch((p), (rw), 1)
#else
#define SF_PREFETCH(p, rw) ((void)0)
#endif
/* Flush-to-zero and denormals-are-zero for the calling thread, returning the state to restore.
 * A dense parameter whose gradient stays 0 (a ReLU that never fires) has its Adam moment
 * decay by b1 a step into denormal floats, and each operation on those takes a microcode
 * assist: about a tenth of a 1M-event replay's learning time on x86. Elsewhere a no-op. */
#if defined(__SSE2__)
#include <xmmintrin.h>
static inline unsigned sf_flush_denormals(void) {
    const unsigned old = _mm_getcsr();
    _mm_setcsr(old | 0x8040u);  /* FTZ (bit 15) | DAZ (bit 6) */
    return old;
}
static inline void sf_restore_fp(unsigned old) { _mm_setcsr(old); }
#else
static inline unsigned sf_flush_denormals(void) { return 0; }
static inline void sf_restore_fp(unsigned old) { (void)old; }
#endif

/* Rows ahead to prefetch: table rows are random accesses into arrays far larger than cache. */
#define SF_PF_ROWS 8
#define SF_PF_EXAMPLES 2

#define SF_MAX_K 64 /* stack buffers per example; the wrapper rejects larger k */
#define SF_LR 0
#define SF_FM 1
#define SF_DEEPFM 2
#define SF_DNN 3

/* Floats per table row of a model (see the layout above). */
static inline int sf_width(int model, int k) {
    return model == SF_LR ? 1 : model == SF_DNN ? k : k + 1;
}

/* Stable log(1 + exp(t)) - y * t: branch on the sign so exp never overflows. */
static inline double sf_logloss(double t, double y) {
    if (t > 0) return t + log1p(exp(-t)) - y * t;
    return log1p(exp(t)) - y * t;
}

/* Stable sigmoid: exp of a non-positive number only. */
static inline double sf_sigmoid(double t) {
    if (t >= 0) return 1.0 / (1.0 + exp(-t));
    double e = exp(t);
    return e / (1.0 + e);
}

/* Field-weighted pairs of DeepFM's FM part (FwFM, Pan et al. 2018): the pair of fields f < g
 * weighs R_fg, stored in row order (0,1), (0,2), ..., (1,2), ... e: one example's value-scaled
 * embeddings, F x k. k = 8 (the default) takes one vector per embedding. */

/* Eight floats as one value (GCC vector extension): one AVX register in the x86-64-v3 clone,
 * two SSE ones in the default; aligned(4) makes loads and stores through it unaligned, and
 * may_alias lets it read and write the float arrays it points into. */
typedef float sf_v8 __attribute__((vector_size(32), aligned(4), may_alias));
#define SF_V8(p) (*(sf_v8 *)(p))

static inline float sf_hsum8(sf_v8 v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

/* sum_{f<g} R_fg <e_f, e_g>. */
static inline float sf_pairs_forward(int F, int k, const float *e, const float *R) {
    const float *r = R;
    if (k == 8) {  /* four accumulators: the additions of successive pairs do not wait */
        sf_v8 a[4] = {{0}, {0}, {0}, {0}};
        int q = 0;
        for (int f = 0; f < F; f++) {
            const sf_v8 ef = SF_V8(e + f * 8);
            for (int g = f + 1; g < F; g++, r++, q = (q + 1) & 3)
                a[q] += *r * (ef * SF_V8(e + g * 8));
        }
        return sf_hsum8((a[0] + a[1]) + (a[2] + a[3]));
    }
    float pair = 0.0f;
    for (int f = 0; f < F; f++) {
        for (int g = f + 1; g < F; g++, r++) {
            float d = 0.0f;
            for (int j = 0; j < k; j++) d += e[f * k + j] * e[g * k + j];
            pair += *r * d;
        }
    }
    return pair;
}

/* Its backward for an example of margin gradient gi: ge_f += gi sum_{g != f} R_fg e_g, and
 * dRv[p, j] += gi e_fj e_gj for pair p = (f, g): the sum over j is left to sf_pairs_reduce, once
 * per block of examples instead of once per pair and example. */
static inline void sf_pairs_backward(int F, int k, const float *e, const float *R, float gi,
                                     float *ge, float *dRv) {
    const float *r = R;
    float *dr = dRv;
    if (k == 8) {
        for (int f = 0; f < F; f++) {
            const sf_v8 gf = gi * SF_V8(e + f * 8);
            sf_v8 m[2] = {{0}, {0}};
            int q = 0;
            for (int g = f + 1; g < F; g++, r++, dr += 8, q ^= 1) {
                const sf_v8 eg = SF_V8(e + g * 8);
                m[q] += *r * eg;
                SF_V8(ge + g * 8) += *r * gf;
                SF_V8(dr) += gf * eg;
            }
            SF_V8(ge + f * 8) += gi * (m[0] + m[1]);
        }
        return;
    }
    for (int f = 0; f < F; f++) {
        for (int g = f + 1; g < F; g++, r++, dr += k) {
            for (int j = 0; j < k; j++) {
                const float gfj = gi * e[f * k + j];
                ge[f * k + j] += *r * gi * e[g * k + j];
                ge[g * k + j] += *r * gfj;
                dr[j] += gfj * e[g * k + j];
            }
        }
    }
}

/* out[p] = sum_j dRv[p, j]: the pair weights' gradient of a block. */
static void sf_pairs_reduce(int64_t pairs, int k, const float *dRv, float *out) {
    for (int64_t p = 0; p < pairs; p++) {
        float t = 0.0f;
        for (int j = 0; j < k; j++) t += dRv[p * k + j];
        out[p] = t;
    }
}

/* Forward of the linear + FM part for examples [lo, hi).
 * z[i] = bias + sum_f w_f x_f + 0.5 * sum_j ((sum_f e_fj)^2 - sum_f e_fj^2), e_fj = v_fj x_f.
 * s (n x k, may be NULL) receives sum_f e_fj for the backward pass; h0 (n x F*k, may be NULL)
 * receives the value-scaled embeddings, i.e. the MLP input. DNN: z[i] = bias and h0 only.
 * R (DeepFM, may be NULL): pair weights, the pair term is sum_{f<g} R_fg <e_f, e_g> (s unused).
 * Wf (with R, may be NULL): field weights, the first-order term is sum_f Wf_f w_f x_f. */
SF_CLONES static void sf_fm_forward(int model, int64_t lo, int64_t hi, int F, int k,
                                    const int32_t *idx, const float *val, const float *table,
                                    float bias, const float *R, const float *Wf, float *z,
                                    float *s, float *h0) {
    const int D = sf_width(model, k);
    float acc[SF_MAX_K], sq[SF_MAX_K];
    for (int64_t i = lo; i < hi; i++) {
        const int32_t *ri = idx + i * F;
        const float *xi = val ? val + i * F : NULL;
        float lin = 0.0f;
        if (i + SF_PF_EXAMPLES < hi) {
            const int32_t *rn = ri + SF_PF_EXAMPLES * F;
            for (int f = 0; f < F; f++) {
                const float *row = table + (int64_t)rn[f] * D;
                SF_PREFETCH(row, 0);
                SF_PREFETCH(row + D - 1, 0);
            }
        }
        if (model == SF_LR) {
            for (int f = 0; f < F; f++) {
                float x = xi ? xi[f] : 1.0f;
                lin += table[(int64_t)ri[f]] * x;
            }
            z[i] = bias + lin;
            continue;
        }
        float *hi0 = h0 ? h0 + i * (int64_t)F * k : NULL;
        if (model == SF_DNN) {  /* the MLP adds its output later */
            for (int f = 0; f < F; f++) {
                const float *row = table + (int64_t)ri[f] * D;
                float x = xi ? xi[f] : 1.0f;
                if (hi0) for (int j = 0; j < k; j++) hi0[f * k + j] = row[j] * x;
            }
            z[i] = bias;
            continue;
        }
        if (R && hi0) {
            for (int f = 0; f < F; f++) {
                const float *row = table + (int64_t)ri[f] * D;
                float x = xi ? xi[f] : 1.0f;
                lin += (Wf ? Wf[f] * row[k] : row[k]) * x;
                for (int j = 0; j < k; j++) hi0[f * k + j] = row[j] * x;
            }
            z[i] = bias + lin + sf_pairs_forward(F, k, hi0, R);
            continue;
        }
        for (int j = 0; j < k; j++) { acc[j] = 0.0f; sq[j] = 0.0f; }
        for (int f = 0; f < F; f++) {
            const float *row = table + (int64_t)ri[f] * D;
            float x = xi ? xi[f] : 1.0f;
            lin += row[k] * x;
            for (int j = 0; j < k; j++) {
                float e = row[j] * x;
                acc[j] += e;
                sq[j] += e * e;
            }
            if (hi0) for (int j = 0; j < k; j++) hi0[f * k + j] = row[j] * x;
        }
        float pair = 0.0f;
        for (int j = 0; j < k; j++) pair += acc[j] * acc[j] - sq[j];
        if (s) for (int j = 0; j < k; j++) s[i * k + j] = acc[j];
        z[i] = bias + lin + 0.5f * pair;
    }
}

/* Backward of the linear + FM part into per-occurrence buffers (o = i * F + f):
 * gw[o] = g_i x_f and gv[o, j] = x_f (dh0[o, j] + g_i (s_ij - v_fj x_f)), where dh0 is what the
 * MLP sent back into its input (DeepFM; has_dh0 = 1, read in place from gv) or zero.
 * With pair weights R (DeepFM; h0 the forward's embeddings): gv[o, j] = x_f (dh0[o, j] +
 * g_i sum_{g != f} R_fg e_gj), and dRv (pairs x k) accumulates for sf_pairs_reduce; with
 * field weights Wf too, gw[o] = g_i x_f Wf_f and dWf[f] += g_i x_f w_f.
 * DNN: gv[o, j] = x_f dh0[o, j] only (no first-order weight, no FM term; gw unused). */
SF_CLONES static void sf_fm_backward(int model, int64_t lo, int64_t hi, int F, int k,
                                     const int32_t *idx, const float *val, const float *table,
                                     const float *g, const float *s, int has_dh0, float *gv,
                                     float *gw, const float *h0, const float *R,
                                     float *dRv, const float *Wf, float *dWf) {
    const int D = sf_width(model, k);
    for (int64_t i = lo; i < hi; i++) {
        const float gi = g[i];
        if (R) {
            const float *e = h0 + i * (int64_t)F * k;
            float *ge = gv + i * (int64_t)F * k;
            sf_pairs_backward(F, k, e, R, gi, ge, dRv);
            for (int f = 0; f < F; f++) {
                const int64_t o = i * F + f;
                const float x = val ? val[o] : 1.0f;
                if (Wf) {
                    gw[o] = gi * x * Wf[f];
                    /* a skipped example (gi = 0) may carry a non-finite value */
                    if (gi != 0.0f) dWf[f] += gi * x * table[(int64_t)idx[o] * D + k];
                } else {
                    gw[o] = gi * x;
                }
                for (int j = 0; j < k; j++) ge[f * k + j] *= x;
            }
            continue;
        }
        for (int f = 0; f < F; f++) {
            const int64_t o = i * F + f;
            const float x = val ? val[o] : 1.0f;
            gw[o] = gi * x;
            if (model == SF_LR) continue;
            const float *row = table + (int64_t)idx[o] * D;
            const float *si = s + i * k;
            float *go = gv + o * k;
            if (model == SF_DNN) {
                for (int j = 0; j < k; j++) go[j] = x * go[j];
            } else if (has_dh0) {
                for (int j = 0; j < k; j++) go[j] = x * (go[j] + gi * (si[j] - row[j] * x));
            } else {
                for (int j = 0; j < k; j++) go[j] = x * (gi * (si[j] - row[j] * x));
            }
        }
    }
}

/* Map every occurrence to a slot of distinct touched rows. marker[row] is -1 for rows not yet
 * seen in this batch; it holds the slot while the batch runs and is reset by sf_row_updates or
 * sf_reset_marker. Order of slots = order of first appearance, so the result is deterministic. */
static int64_t sf_dedupe(int64_t n_occ, const int32_t *idx, int32_t *marker, int32_t *touched,
                         int32_t *slot) {
    int64_t nt = 0;
    for (int64_t o = 0; o < n_occ; o++) {
        int32_t r = idx[o];
        int32_t sl = marker[r];
        if (sl < 0) {
            sl = (int32_t)nt;
            marker[r] = sl;
            touched[nt++] = r;
        }
        slot[o] = sl;
    }
    return nt;
}

static void sf_reset_marker(int64_t nt, const int32_t *touched, int32_t *marker) {
    for (int64_t t = 0; t < nt; t++) marker[touched[t]] = -1;
}

/* Sum the per-occurrence gradients of each touched row (duplicates within a batch add up,
 * as torch's SparseAdam does after coalescing). gsum must hold nt x D zeros. */
SF_CLONES static void sf_reduce(int model, int64_t n_occ, int k, const int32_t *slot,
                                const float *gv, const float *gw, float *gsum) {
    if (model == SF_LR) {
        for (int64_t o = 0; o < n_occ; o++) gsum[slot[o]] += gw[o];
        return;
    }
    if (model == SF_DNN) {
        for (int64_t o = 0; o < n_occ; o++) {
            float *dst = gsum + (int64_t)slot[o] * k;
            const float *src = gv + o * k;
            for (int j = 0; j < k; j++) dst[j] += src[j];
        }
        return;
    }
    const int D = k + 1;
    for (int64_t o = 0; o < n_occ; o++) {
        float *dst = gsum + (int64_t)slot[o] * D;
        const float *src = gv + o * k;
        for (int j = 0; j < k; j++) dst[j] += src[j];
        dst[k] += gw[o];
    }
}

/* gsum[t] += l2 * table[touched[t]]: L2 on the rows this batch touched (the lazy-regulariser
 * convention; untouched rows do not decay). */
static void sf_add_l2(int64_t lo, int64_t hi, int D, const int32_t *touched, const float *table,
                      float l2, float *gsum) {
    for (int64_t t = lo; t < hi; t++) {
        const float *row = table + (int64_t)touched[t] * D;
        float *gt = gsum + t * D;
        for (int j = 0; j < D; j++) gt[j] += l2 * row[j];
    }
}

/* Lazy per-row updates over the touched rows [lo, hi); resets the marker. Columns below
 * `first_ada` take Adam with torch SparseAdam semantics:
 *   g = gsum + l2 p ; m = b1 m + (1-b1) g ; v = b2 v + (1-b2) g^2 ;
 *   p -= step_size * m / (sqrt(v) + eps),
 * step_size = lr * sqrt(1 - b2^t) / (1 - b1^t) computed once per batch by the caller.
 * Columns from `first_ada` on take per-coordinate AdaGrad (McMahan et al. 2013, section 3.1):
 *   g = scale * gsum + l2 p ; v += g^2 ; p -= lr * g / (sqrt(v) + eps),
 * lr = lr_w for the first-order weight (the row's last column), lr_emb for embedding columns.
 * gsum is the gradient of the batch's *mean* loss; scale = n turns it back into the sum of
 * per-example gradients, so a row seen once moves as far in a batch of 1,024 as in a batch of
 * one and its steps shrink with how often the row itself was seen, not with the stream's
 * length (lazy Adam takes one bounded step per batch whatever the row's history); m is unused
 * there. first_ada = D: Adam rows; 0: AdaGrad rows; D - 1: AdaGrad weights, Adam embeddings.
 * A row whose new values are not all finite is left untouched and counted. */
SF_CLONES static int64_t sf_row_updates(int64_t lo, int64_t hi, int D, int first_ada,
                                        const int32_t *touched, const float *gsum, float scale,
                                        float l2, float *table, float *m, float *v,
                                        float step_size, float b1, float b2, float eps,
                                        float lr_w, float lr_emb, int32_t *marker) {
    int64_t skipped = 0;
    float nm[SF_MAX_K + 1], nv[SF_MAX_K + 1], np_[SF_MAX_K + 1];
    for (int64_t t = lo; t < hi; t++) {
        const int64_t r = touched[t];
        float *p = table + r * D, *pm = m + r * D, *pv = v + r * D;
        if (t + SF_PF_ROWS < hi) {
            const int64_t rn = (int64_t)touched[t + SF_PF_ROWS] * D;
            SF_PREFETCH(table + rn, 1); SF_PREFETCH(table + rn + D - 1, 1);
            SF_PREFETCH(m + rn, 1); SF_PREFETCH(m + rn + D - 1, 1);
            SF_PREFETCH(v + rn, 1); SF_PREFETCH(v + rn + D - 1, 1);
        }
        const float *gt = gsum + t * D;
        int ok = 1;
        for (int j = 0; j < first_ada; j++) {
            float gj = gt[j] + l2 * p[j];
            nm[j] = b1 * pm[j] + (1.0f - b1) * gj;
            nv[j] = b2 * pv[j] + (1.0f - b2) * gj * gj;
            np_[j] = p[j] - step_size * nm[j] / (sqrtf(nv[j]) + eps);
            ok &= isfinite(np_[j]) & isfinite(nv[j]);
        }
        for (int j = first_ada; j < D; j++) {
            float gj = scale * gt[j] + l2 * p[j];
            nm[j] = pm[j];
            nv[j] = pv[j] + gj * gj;
            np_[j] = p[j] - (j == D - 1 ? lr_w : lr_emb) * gj / (sqrtf(nv[j]) + eps);
            ok &= isfinite(np_[j]) & isfinite(nv[j]);
        }
        if (ok) {
            for (int j = 0; j < D; j++) { p[j] = np_[j]; pm[j] = nm[j]; pv[j] = nv[j]; }
        } else {
            skipped++;
        }
        if (marker) marker[r] = -1;
    }
    return skipped;
}

/* Dense Adam (torch Adam semantics) over parameters [lo, hi):
 * p -= step_size * m / (sqrt(v) + eps_hat) with eps_hat = eps * sqrt(1 - b2^t). */
SF_CLONES static int64_t sf_adam_dense(int64_t lo, int64_t hi, const float *grad, float *p,
                                       float *m, float *v, float step_size, float b1, float b2,
                                       float eps_hat) {
    int64_t skipped = 0;
    const unsigned fp = sf_flush_denormals();  /* moments that decay below normal floats: 0 */
    for (int64_t j = lo; j < hi; j++) {  /* branch-free, so it runs in vectors */
        float gj = grad[j];
        float nm = b1 * m[j] + (1.0f - b1) * gj;
        float nv = b2 * v[j] + (1.0f - b2) * gj * gj;
        float np_ = p[j] - step_size * nm / (sqrtf(nv) + eps_hat);
        int ok = !!isfinite(np_) & !!isfinite(nv);
        p[j] = ok ? np_ : p[j];
        m[j] = ok ? nm : m[j];
        v[j] = ok ? nv : v[j];
        skipped += !ok;
    }
    sf_restore_fp(fp);
    return skipped;
}

/* One dense layer of the MLP forward, rows [lo, hi): Out[i, :] = relu(In[i, :] W + b), with W
 * stored input by input (W[j * dout + o]). Every row is summed the same way, input 0 first, one
 * multiply-add at a time, whatever rows share its block: an event's margin does not depend on
 * the batch it arrives in (BLAS kernels give a row 1 ulp more or less by its place in the
 * block). Rows share each load of a group of outputs, two vectors wide: four rows (eight
 * registers of sums) in the 16 vector registers of AVX2, eight (sixteen) in the 32 of AVX-512,
 * where four left the multiply-adds waiting on each other (a quarter slower). (hi - lo) must
 * be a multiple of 8: the forward runs on zero-padded blocks. */

static inline float sf_relu1(float a) { return a > 0.0f ? a : 0.0f; }

/* The groups of 2 * VW outputs from o on, in vectors of type VT (VW floats), R rows at a time
 * (they share each load of the group's weights; (hi - lo) must be a multiple of R): advances
 * o past the last whole group. One body for the 8-float vectors of the x86-64-v3 clone and the
 * 16-float ones of AVX-512, so each output is the same chain of fused multiply-adds. */
#define SF_DENSE_GROUPS(VT, VW, R)                                                            \
    for (; o + 2 * (VW) <= dout; o += 2 * (VW)) {                                             \
        for (int64_t i = lo; i < hi; i += (R)) {                                              \
            const float *x = In + i * din;                                                    \
            VT a0[R], a1[R];                                                                  \
            _Pragma("GCC unroll 16")                                                          \
            for (int r = 0; r < (R); r++) a0[r] = a1[r] = (VT){0};                            \
            for (int j = 0; j < din; j++) {                                                   \
                const float *w = W + (int64_t)j * dout + o;                                   \
                VT w0 = *(const VT *)w, w1 = *(const VT *)(w + (VW));                         \
                _Pragma("GCC unroll 16")                                                      \
                for (int r = 0; r < (R); r++) {                                               \
                    const float u = x[r * din + j];                                           \
                    a0[r] += u * w0; a1[r] += u * w1;                                         \
                }                                                                             \
            }                                                                                 \
            for (int r = 0; r < (R); r++) {                                                   \
                float *out = Out + (i + r) * dout + o;                                        \
                for (int q = 0; q < (VW); q++) {                                              \
                    out[q] = sf_relu1(a0[r][q] + b[o + q]);                                   \
                    out[(VW) + q] = sf_relu1(a1[r][q] + b[o + (VW) + q]);                     \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
    }

SF_CLONES static void sf_dense_relu_from(int o, int64_t lo, int64_t hi, int din, int dout,
                                         const float *In, const float *W, const float *b,
                                         float *Out) {
    SF_DENSE_GROUPS(sf_v8, 8, 4)
    for (; o < dout; o++) {  /* outputs past the last full group of 16 */
        for (int64_t i = lo; i < hi; i++) {
            const float *x = In + i * din;
            float a = 0.0f;
            for (int j = 0; j < din; j++) a += x[j] * W[(int64_t)j * dout + o];
            Out[i * dout + o] = sf_relu1(a + b[o]);
        }
    }
}

/* GCC 12 is the first to name the x86-64-v4 level in __builtin_cpu_supports. */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) \
    && defined(__linux__)
#define SF_HAVE_V4 1
/* Sixteen floats as one value: one AVX-512 register. */
typedef float sf_v16 __attribute__((vector_size(64), aligned(4), may_alias));

/* sf_dense_relu's groups of 32 outputs on AVX-512. Returns the first output it left. */
__attribute__((target("arch=x86-64-v4")))
static int sf_dense_relu_v4(int64_t lo, int64_t hi, int din, int dout, const float *In,
                            const float *W, const float *b, float *Out) {
    int o = 0;
    SF_DENSE_GROUPS(sf_v16, 16, 8)
    return o;
}
#endif

/* One dense layer of the MLP forward (see sf_dense_relu_from): AVX-512 for whole groups of 32
 * outputs where the CPU has it, the rest in groups of 16 and one by one. */
static void sf_dense_relu(int64_t lo, int64_t hi, int din, int dout, const float *In,
                          const float *W, const float *b, float *Out) {
    int o = 0;
#ifdef SF_HAVE_V4
    if (__builtin_cpu_supports("x86-64-v4"))  /* every feature its target may use */
        o = sf_dense_relu_v4(lo, hi, din, dout, In, W, b, Out);
#endif
    sf_dense_relu_from(o, lo, hi, din, dout, In, W, b, Out);
}

/* Output layer: z[i] += H[i, :] . w + b0. */
SF_CLONES static void sf_out_forward(int64_t lo, int64_t hi, int d, const float *H,
                                     const float *w, float b0, float *z) {
    for (int64_t i = lo; i < hi; i++) {
        const float *h = H + i * d;
        float acc = 0.0f;
        for (int j = 0; j < d; j++) acc += h[j] * w[j];
        z[i] += acc + b0;
    }
}

/* dA = dH * (H > 0) in place, rows [lo, hi) (ReLU backward through the stored output). */
SF_CLONES static void sf_relu_back(int64_t lo, int64_t hi, int d, const float *H, float *dH) {
    for (int64_t i = lo; i < hi; i++) {
        const float *h = H + i * d;
        float *dh = dH + i * d;
        for (int j = 0; j < d; j++) dh[j] = h[j] > 0.0f ? dh[j] : 0.0f;
    }
}

/* Output layer backward: dH[i, :] = g_i w. */
SF_CLONES static void sf_outer(int64_t lo, int64_t hi, int d, const float *g, const float *w,
                               float *dH) {
    for (int64_t i = lo; i < hi; i++) {
        float *dh = dH + i * d;
        for (int j = 0; j < d; j++) dh[j] = g[i] * w[j];
    }
}

/* out[j] = sum_i g_i A[i, j] in fixed row order (output weights' gradient). */
SF_CLONES static void sf_wcolsum(int64_t n, int d, const float *A, const float *g, float *out) {
    for (int j = 0; j < d; j++) out[j] = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        const float *a = A + i * d;
        const float gi = g[i];
        for (int j = 0; j < d; j++) out[j] += gi * a[j];
    }
}

/* out[j] = sum_i A[i, j] over rows in fixed order (bias gradients; deterministic). */
SF_CLONES static void sf_colsum(int64_t n, int d, const float *A, float *out) {
    for (int j = 0; j < d; j++) out[j] = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        const float *a = A + i * d;
        for (int j = 0; j < d; j++) out[j] += a[j];
    }
}

/* xorshift64* generator; the caller guards against a zero state. */
static inline uint64_t sf_xorshift(uint64_t *state) {
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Uniform in (0, 1), never exactly 0 (safe for log). */
static inline double sf_uniform(uint64_t *state) {
    return ((sf_xorshift(state) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

#endif
