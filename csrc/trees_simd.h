/* AVX-512 lock-step walk of a LightGBM ensemble, called from _trees.pyx.
 *
 * Up to 64 rows (four groups of 16 lanes in zmm registers) walk the same tree together, one
 * level per step: each lane gathers the feature value its node asks for, compares it with the
 * node's threshold and moves to a child; lanes that reached a leaf are masked off and the tree
 * ends when every lane has. Leaf values are then added in double, tree after tree, so every row
 * sums exactly what LightGBM's predict(raw_score=True) sums, in the same order.
 *
 * Node tables come from TreeEnsemble (local node ids within each tree, tree after tree):
 *   thr[i]  float threshold (rounded for float inputs, see kernel_threshold in _trees.pyx)
 *   meta[i] feature (bits 0-14) | TS_NAN_RIGHT | TS_MISS_ZERO | TS_CATEGORICAL
 *           | left (bits 18-24) | right (bits 25-31): 7-bit child ids of small trees
 *   kids[i] left (bits 0-15) | right (bits 16-31): child ids of big trees
 * A child id with the leaf bit set (64 in small trees, 0x8000 in big ones) is a leaf; the
 * other bits are its index among the tree's leaves. Trees with at most 32 (64) split nodes
 * keep their whole table in registers and look nodes up with permutes; bigger trees gather.
 *
 * Compiled with target attributes and chosen at run time (ts_have_avx512), so the extension
 * still builds and runs without AVX-512: _trees.pyx falls back to the AVX2 twin of this kernel
 * (trees_avx2.h, which shares ts_model, the flags and the block copy defined here) or to its
 * scalar kernel.
 */
#ifndef SF_TREES_SIMD_H
#define SF_TREES_SIMD_H

#include <math.h>
#include <stdint.h>

#define TS_FEAT_MASK 0x7FFFu
#define TS_NAN_RIGHT (1u << 15)   /* where NaN (and, for missing_type Zero, zero) goes */
#define TS_MISS_ZERO (1u << 16)   /* missing_type Zero: |x| <= 1e-35f goes the NaN way */
#define TS_CATEGORICAL (1u << 17) /* rare: decided per lane by ts_category_right */
#define TS_LEFT_SHIFT 18
#define TS_RIGHT_SHIFT 25
#define TS_SMALL_LEAF 64u
#define TS_BIG_LEAF 0x8000u
#define TS_KIND_SMALL32 0 /* <= 32 split nodes: one permute per lookup */
#define TS_KIND_SMALL64 1 /* <= 63 split nodes (<= 64 leaves): two permutes and a blend */
#define TS_KIND_BIG 2     /* anything larger: gathers from the node tables */
#define TS_TABLE_PAD 64   /* the node tables end with this many spare entries (whole-zmm loads) */

/* LightGBM's kZeroThreshold is the float 1e-35f held in a double. */
#define TS_ZERO_THRESHOLD 1e-35f

/* LightGBM's CategoricalDecision: NaN and negative values go right; a set bit goes left.
 * Its static_cast<int> truncates, and gives INT_MIN (right) out of range on x86: test the
 * range first so that the cast here is always defined. */
static inline int ts_category_right(double fval, const uint32_t *bits, int32_t words) {
    if (!(fval > -1.0 && fval < 2147483648.0)) return 1; /* NaN too */
    int iv = (int)fval;
    if ((iv >> 5) >= words) return 1;
    return ((bits[iv >> 5] >> (iv & 31)) & 1) ? 0 : 1;
}

/* The first TS_TOP levels of every tree read feature values with plain loads from the
 * block's feature-major copy and blends, not gathers (a zmm gather costs about one cycle per
 * lane on Zen 4): their nodes are few and known per tree. 4 measured best of 2..4. */
#define TS_TOP 4
#define TS_TOP_NODES ((1 << TS_TOP) - 1)
#define TS_BLOCK 64 /* rows per block: four groups of 16 lanes */

typedef struct {
    const float *thr;
    const uint32_t *meta;
    const uint32_t *kids;
    const double *leaf_value;
    const int32_t *trees; /* [n_trees, 4]: node base, leaf base, kind, split nodes */
    const int32_t *top;   /* [n_trees, TS_TOP_NODES]: feature of each top node, BFS order */
    int32_t n_trees;
    int32_t n_feat;       /* features the trees read: rows of the feature-major block */
    const int32_t *cat_start; /* per node, global ids; bits into cat_bits */
    const int32_t *cat_words;
    const uint32_t *cat_bits;
    const uint32_t *top_tab;  /* AVX2 only: [n_trees, 3, TS2_TOP_STRIDE], see trees_avx2.h */
} ts_model;

/* Copy rows [0, m) at xb into the feature-major block xt (feature f of row r at
 * xt[stride * f + r]) and zero rows [m, rows): the top levels' plain loads read whole
 * registers (results of rows past m are not stored). */
static inline void ts_fill_block(const ts_model *M, const float *xb, int64_t ncol, int m,
                                 float *xt, int stride, int rows) {
    for (int32_t f = 0; f < M->n_feat; f++) {
        float *col = xt + (int64_t)stride * f;
        for (int r = 0; r < m; r++) col[r] = xb[r * ncol + f];
        for (int r = m; r < rows; r++) col[r] = 0.0f;
    }
}

/* SF_TREES_NO_SIMD builds the fallback only (checks the portable build on any machine). */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(SF_TREES_NO_SIMD)
#include <immintrin.h>
#define TS_AVX512 __attribute__((target("avx512f")))
#define TS_INLINE __attribute__((always_inline)) inline

static int ts_have_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}

/* Lanes in `cat` sit on categorical nodes: decide them one by one (scalar, rare). */
TS_AVX512 static __mmask16 ts_categorical(const ts_model *M, int32_t base, __mmask16 cat,
                                          __mmask16 go, __m512 x, __m512i node) {
    float xs[16];
    int32_t ids[16];
    _mm512_storeu_ps(xs, x);
    _mm512_storeu_si512(ids, node);
    while (cat) {
        int l = __builtin_ctz(cat);
        int32_t g = base + ids[l];
        int right = ts_category_right((double)xs[l], M->cat_bits + M->cat_start[g],
                                      M->cat_words[g]);
        go = (__mmask16)(right ? (go | (1u << l)) : (go & ~(1u << l)));
        cat &= (__mmask16)(cat - 1);
    }
    return go;
}

/* One step's decision for 16 lanes (1 = right), exactly LightGBM's Tree::Decision.
 * special: the model has missing_type Zero or categorical nodes (a few more ops per step). */
TS_AVX512 static TS_INLINE __mmask16 ts_decide(const ts_model *M, int32_t base, __mmask16 act,
                                               __m512 x, __m512 th, __m512i md, __m512i node,
                                               int special) {
    /* x > thr is false for NaN; thresholds were moved so that tiny x compare like 0.0 */
    __mmask16 go = _mm512_cmp_ps_mask(x, th, _CMP_GT_OQ);
    __mmask16 miss = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    if (special) {
        __mmask16 zf = _mm512_test_epi32_mask(md, _mm512_set1_epi32((int)TS_MISS_ZERO));
        __mmask16 small = _mm512_mask_cmp_ps_mask(
            zf, _mm512_abs_ps(x), _mm512_set1_ps(TS_ZERO_THRESHOLD), _CMP_LE_OQ);
        miss |= small;
        go &= (__mmask16)~small;
    }
    __mmask16 nr = _mm512_test_epi32_mask(md, _mm512_set1_epi32((int)TS_NAN_RIGHT));
    go |= miss & nr;
    if (special) {
        __mmask16 cat =
            _mm512_mask_test_epi32_mask(act, md, _mm512_set1_epi32((int)TS_CATEGORICAL));
        if (cat) go = ts_categorical(M, base, cat, go, x, node);
    }
    return go;
}

/* Permute lookup in a 32- or 64-entry table held in registers (t[0..3]). */
TS_AVX512 static TS_INLINE __m512i ts_lookup(const __m512i *t, __m512i idx, int kind) {
    __m512i lo = _mm512_permutex2var_epi32(t[0], idx, t[1]);
    if (kind == TS_KIND_SMALL32) return lo;
    __m512i hi = _mm512_permutex2var_epi32(t[2], idx, t[3]);
    return _mm512_mask_blend_epi32(_mm512_test_epi32_mask(idx, _mm512_set1_epi32(32)), lo, hi);
}

/* One level for G groups: lanes still inside the tree move to a child; returns the lanes
 * (of all groups) still inside. level < TS_TOP reads the feature with plain loads. */
TS_AVX512 static TS_INLINE __mmask16 ts_step(
    const ts_model *M, int32_t base, const int32_t *top, const float *thr, const uint32_t *meta,
    const uint32_t *kids, const __m512i *tt, const __m512i *tm, const float *xt, __m512i *node,
    __mmask16 *act, __mmask16 (*path)[TS_TOP], int G, int kind, int special, int level) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i leaf_bit =
        _mm512_set1_epi32((int)(kind == TS_KIND_BIG ? TS_BIG_LEAF : TS_SMALL_LEAF));
    __mmask16 any = 0;
    /* the groups' steps are independent: their loads overlap */
    for (int g = 0; g < G; g++) {
        /* a group done with this tree skips its gathers (the top levels are branch-free) */
        if (level >= TS_TOP && !act[g]) continue;
        const float *xg = xt + 16 * g;
        __m512 th, x;
        __m512i md, kd = _mm512_setzero_si512(), child;
        if (kind == TS_KIND_BIG) {
            th = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), act[g], node[g], thr, 4);
            md = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), act[g], node[g], meta, 4);
            kd = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), act[g], node[g], kids, 4);
        } else {
            th = _mm512_castsi512_ps(ts_lookup(tt, node[g], kind));
            md = ts_lookup(tm, node[g], kind);
        }
        if (level < TS_TOP) {
            /* the level's 2^level candidate nodes' features, picked by the path so far */
            const int32_t *cand = top + (1 << level) - 1;
            __m512 v[1 << (TS_TOP - 1)];
            for (int i = 0; i < (1 << level); i++) v[i] = _mm512_loadu_ps(xg + TS_BLOCK * cand[i]);
            for (int j = level - 1; j >= 0; j--)
                for (int i = 0; i < (1 << j); i++)
                    v[i] = _mm512_mask_blend_ps(path[g][j], v[2 * i], v[2 * i + 1]);
            x = v[0];
        } else {
            __m512i f = _mm512_and_si512(md, _mm512_set1_epi32((int)TS_FEAT_MASK));
            __m512i xi = _mm512_add_epi32(_mm512_slli_epi32(f, 6 /* log2 TS_BLOCK */), lane);
            x = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), act[g], xi, xg, 4);
        }
        __mmask16 go = ts_decide(M, base, act[g], x, th, md, node[g], special);
        if (level < TS_TOP) path[g][level] = go;
        if (kind == TS_KIND_BIG) {
            child = _mm512_mask_srli_epi32(_mm512_and_si512(kd, _mm512_set1_epi32(0xFFFF)), go,
                                           kd, 16);
        } else {
            child = _mm512_mask_srli_epi32(_mm512_srli_epi32(md, TS_LEFT_SHIFT), go, md,
                                           TS_RIGHT_SHIFT);
            child = _mm512_and_si512(child, _mm512_set1_epi32(0x7F));
        }
        node[g] = _mm512_mask_mov_epi32(node[g], act[g], child);
        act[g] = _mm512_mask_testn_epi32_mask(act[g], child, leaf_bit);
        any |= act[g];
    }
    return any;
}

/* Walk one tree for G groups of 16 rows of the feature-major block xt and add its leaf
 * values to acc. Every step is one level for all lanes still inside the tree. */
TS_AVX512 static TS_INLINE void ts_tree(const ts_model *M, int32_t t, const float *xt,
                                        const __mmask16 *valid, __m512d *acc, int G, int kind,
                                        int special) {
    const int32_t base = M->trees[4 * t], leaf_base = M->trees[4 * t + 1];
    const int32_t *top = M->top + TS_TOP_NODES * t;
    const float *thr = M->thr + base;
    const uint32_t *meta = M->meta + base, *kids = M->kids + base;
    __m512i tt[4], tm[4];
    if (kind != TS_KIND_BIG) { /* the tree's whole node table, in registers */
        for (int k = 0; k < (kind == TS_KIND_SMALL32 ? 2 : 4); k++) {
            tt[k] = _mm512_loadu_si512(thr + 16 * k);
            tm[k] = _mm512_loadu_si512(meta + 16 * k);
        }
    }
    __m512i node[4];
    __mmask16 act[4], path[4][TS_TOP];
    __mmask16 any = 0;
    for (int g = 0; g < G; g++) {
        node[g] = _mm512_setzero_si512(); /* the root is local node 0 */
        act[g] = valid[g];
        any |= act[g];
    }
    /* the top levels one by one (plain loads), then gathers until every lane is at a leaf */
#define TS_STEP(level) \
    ts_step(M, base, top, thr, meta, kids, tt, tm, xt, node, act, path, G, kind, special, level)
#if TS_TOP != 4
#error "the top levels are written out below"
#endif
    if (any) any = TS_STEP(0);
    if (any) any = TS_STEP(1);
    if (any) any = TS_STEP(2);
    if (any) any = TS_STEP(3);
    while (any) any = TS_STEP(TS_TOP);
#undef TS_STEP
    const double *lv = M->leaf_value + leaf_base;
    const __m512i lmask = _mm512_set1_epi32(
        (int)(kind == TS_KIND_BIG ? TS_BIG_LEAF - 1 : TS_SMALL_LEAF - 1));
    for (int g = 0; g < G; g++) {
        /* rows past the end never left the root: point them at leaf 0 */
        __m512i leaf = _mm512_maskz_and_epi32(valid[g], node[g], lmask);
        acc[2 * g] = _mm512_add_pd(
            acc[2 * g], _mm512_i32gather_pd(_mm512_castsi512_si256(leaf), lv, 8));
        acc[2 * g + 1] = _mm512_add_pd(
            acc[2 * g + 1], _mm512_i32gather_pd(_mm512_extracti64x4_epi64(leaf, 1), lv, 8));
    }
}

/* Rows [0, m) (m <= 16 G) at xb: out[i] += the ensemble's margin, tree after tree.
 * xt is scratch for the block's feature-major copy (n_feat x TS_BLOCK floats). */
TS_AVX512 static TS_INLINE void ts_block(const ts_model *M, const float *xb, int64_t ncol,
                                         int m, double *out, float *xt, int G, int special) {
    __mmask16 valid[4];
    __m512d acc[8];
    ts_fill_block(M, xb, ncol, m, xt, TS_BLOCK, 16 * G);
    for (int g = 0; g < G; g++) {
        int left = m - 16 * g;
        valid[g] = (__mmask16)(left >= 16 ? 0xFFFF : (left > 0 ? (1u << left) - 1 : 0));
        acc[2 * g] = _mm512_maskz_loadu_pd((__mmask8)valid[g], out + 16 * g);
        acc[2 * g + 1] = _mm512_maskz_loadu_pd((__mmask8)(valid[g] >> 8), out + 16 * g + 8);
    }
    for (int32_t t = 0; t < M->n_trees; t++) {
        switch (M->trees[4 * t + 2]) {
        case TS_KIND_SMALL32:
            ts_tree(M, t, xt, valid, acc, G, TS_KIND_SMALL32, special);
            break;
        case TS_KIND_SMALL64:
            ts_tree(M, t, xt, valid, acc, G, TS_KIND_SMALL64, special);
            break;
        default:
            ts_tree(M, t, xt, valid, acc, G, TS_KIND_BIG, special);
        }
    }
    for (int g = 0; g < G; g++) {
        _mm512_mask_storeu_pd(out + 16 * g, (__mmask8)valid[g], acc[2 * g]);
        _mm512_mask_storeu_pd(out + 16 * g + 8, (__mmask8)(valid[g] >> 8), acc[2 * g + 1]);
    }
}

#define TS_BLOCK_FN(G, S)                                                                     \
    TS_AVX512 static void ts_block_##G##_##S(const ts_model *M, const float *xb,              \
                                             int64_t ncol, int m, double *out, float *xt) {   \
        ts_block(M, xb, ncol, m, out, xt, G, S);                                              \
    }
TS_BLOCK_FN(1, 0)
TS_BLOCK_FN(2, 0)
TS_BLOCK_FN(4, 0)
TS_BLOCK_FN(1, 1)
TS_BLOCK_FN(2, 1)
TS_BLOCK_FN(4, 1)

/* Rows [0, m) of one chunk: blocks of 64 rows, then what is left in blocks of 32 and 16
 * (fewer groups: a lone row does not walk 64 lanes). xt: n_feat x TS_BLOCK floats scratch. */
static void ts_chunk_avx512(const ts_model *M, const float *xb, int64_t ncol, int32_t m,
                            double *out, float *xt, int special) {
    for (int32_t r = 0; r < m;) {
        int32_t k = m - r;
        const float *x = xb + r * ncol;
        if (k >= 64) {
            if (special) ts_block_4_1(M, x, ncol, 64, out + r, xt);
            else ts_block_4_0(M, x, ncol, 64, out + r, xt);
            r += 64;
        } else if (k > 16) {
            k = k < 32 ? k : 32;
            if (special) ts_block_2_1(M, x, ncol, k, out + r, xt);
            else ts_block_2_0(M, x, ncol, k, out + r, xt);
            r += k;
        } else {
            if (special) ts_block_1_1(M, x, ncol, k, out + r, xt);
            else ts_block_1_0(M, x, ncol, k, out + r, xt);
            r += k;
        }
    }
}

#else /* not x86-64 GCC/Clang: the scalar kernel only */
static int ts_have_avx512(void) { return 0; }
static void ts_chunk_avx512(const ts_model *M, const float *xb, int64_t ncol, int32_t m,
                            double *out, float *xt, int special) {
    (void)M, (void)xb, (void)ncol, (void)m, (void)out, (void)xt, (void)special;
}
#endif

#endif /* SF_TREES_SIMD_H */
