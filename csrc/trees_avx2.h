/* AVX2 lock-step walk of a LightGBM ensemble, called from _trees.pyx: the twin of the AVX-512
 * kernel of trees_simd.h for CPUs without AVX-512 (8 float lanes per ymm, no mask registers, no
 * two-table permute, 16 vector registers). Names: ts2_ / TS2_.
 *
 * Up to 32 rows (four groups of 8 lanes) walk the same tree together, one level per step: each
 * lane fetches the feature value its node asks for, compares it with the node's threshold and
 * moves to a child; a lane that reached a leaf drops out of its group's mask (all-ones lanes),
 * and the tree ends when every lane has. Leaf values are then added in double, tree after tree,
 * so every row sums exactly what LightGBM's predict(raw_score=True) sums, in the same order.
 *
 * Tables (built by TreeEnsemble): the node tables of trees_simd.h (thr, meta, kids by local id
 * within each tree, same layout) and top_tab [n_trees, 3, TS2_TOP_STRIDE]: thr, meta and kids of
 * each tree's first TS2_TOP levels in BFS order (level l at [2^l - 1, 2^(l+1) - 1); zeros under
 * a leaf, so that such entries send a lane to feature 0 and nowhere else).
 *
 * Top levels: a lane carries its BFS position within the level (pos = 2 pos + went right), so
 * its node's thr / meta / kids are a vpermps (and, past 8 entries, a blend tree on the bits of
 * pos) away in top_tab. On the first TS2_LOADS levels the feature value comes from plain loads
 * of the block's feature-major copy, the level's candidates blended by the bits of pos; below,
 * from a gather. Gathers are what this kernel avoids: a ymm gather measured 9-13 cycles here
 * (Zen 3), a vpermps or a blend under one.
 * Deeper levels: a lane carries its node's local id. Small trees (at most 64 leaves) look thr
 * and meta up with 4 or 8 vpermps from the tables in memory (L1) and a blend tree on the id's
 * bits 3-5; bigger trees gather their nodes. The feature value is gathered from the block. A
 * group whose lanes are all at leaves skips the level.
 *
 * Compiled with target attributes and chosen at run time (ts_have_avx2) where AVX-512 is absent,
 * so the extension still builds and runs without AVX2: _trees.pyx falls back to its scalar
 * kernel.
 */
#ifndef SF_TREES_AVX2_H
#define SF_TREES_AVX2_H

#include "trees_simd.h"

#define TS2_BLOCK 32 /* rows per block: four groups of 8 lanes (eight groups measured no faster) */
#define TS2_LOG2_BLOCK 5
/* Levels read from top_tab, and of those the first ones that read features with plain loads
 * (2^level loads and blends: dearer than a gather past level 3). Measured best of 4..6 and of
 * 3..5 on 31- to 255-leaf trees, though all were within 10%; a deeper top_tab doubles per level
 * and its 64-entry lookups cost what a node-id lookup does. */
#define TS2_TOP 6
#define TS2_LOADS 4
#define TS2_TOP_STRIDE (1 << TS2_TOP) /* entries of one table of one tree in top_tab */

#if defined(__GNUC__) && defined(__x86_64__) && !defined(SF_TREES_NO_SIMD)
#define TS_AVX2 __attribute__((target("avx2")))

static int ts_have_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}

/* Lanes in `cat` (a movemask) sit on categorical nodes: decide them one by one (scalar, rare). */
TS_AVX2 static __m256i ts2_categorical(const ts_model *M, int32_t base, int cat, __m256i go,
                                       __m256 x, __m256i node) {
    float xs[8];
    int32_t ids[8], gs[8];
    _mm256_storeu_ps(xs, x);
    _mm256_storeu_si256((__m256i *)ids, node);
    _mm256_storeu_si256((__m256i *)gs, go);
    while (cat) {
        int l = __builtin_ctz(cat);
        int32_t g = base + ids[l];
        gs[l] = -ts_category_right((double)xs[l], M->cat_bits + M->cat_start[g],
                                   M->cat_words[g]);
        cat &= cat - 1;
    }
    return _mm256_loadu_si256((const __m256i *)gs);
}

/* One step's decision for 8 lanes (all-ones = right), exactly LightGBM's Tree::Decision: the
 * rules of ts_decide in trees_simd.h. special: the model has missing_type Zero or categorical
 * nodes (a few more ops per step). */
TS_AVX2 static TS_INLINE __m256i ts2_decide(const ts_model *M, int32_t base, __m256i act,
                                            __m256 x, __m256 th, __m256i md, __m256i node,
                                            int special) {
    /* x > thr is false for NaN; thresholds were moved so that tiny x compare like 0.0 */
    __m256 go = _mm256_cmp_ps(x, th, _CMP_GT_OQ);
    __m256 miss = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    if (special) {
        const __m256i mz = _mm256_set1_epi32((int)TS_MISS_ZERO);
        __m256 zf = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(md, mz), mz));
        __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x);
        __m256 small =
            _mm256_and_ps(zf, _mm256_cmp_ps(ax, _mm256_set1_ps(TS_ZERO_THRESHOLD), _CMP_LE_OQ));
        miss = _mm256_or_ps(miss, small);
        go = _mm256_andnot_ps(small, go);
    }
    /* TS_NAN_RIGHT is bit 15: shift it to the sign and spread it over the lane */
    __m256i nr = _mm256_srai_epi32(_mm256_slli_epi32(md, 16), 31);
    __m256i right = _mm256_or_si256(_mm256_castps_si256(go),
                                    _mm256_and_si256(_mm256_castps_si256(miss), nr));
    if (special) {
        const __m256i cf = _mm256_set1_epi32((int)TS_CATEGORICAL);
        __m256i cat = _mm256_and_si256(act, _mm256_cmpeq_epi32(_mm256_and_si256(md, cf), cf));
        int cm = _mm256_movemask_ps(_mm256_castsi256_ps(cat));
        if (cm) right = ts2_categorical(M, base, cm, right, x, node);
    }
    return right;
}

/* Entry idx of the n-entry table at t (n a power of 2; 8 entries are read even if n < 8): a
 * vpermps per 8 entries, then blends on bits 3, 4, 5 of idx. Higher bits are not read. */
TS_AVX2 static TS_INLINE __m256 ts2_lookup(const float *t, __m256i idx, int n) {
    __m256 p[8];
    int k = n < 8 ? 1 : n / 8;
    for (int i = 0; i < k; i++) p[i] = _mm256_permutevar8x32_ps(_mm256_loadu_ps(t + 8 * i), idx);
    for (int b = 3; k > 1; b++, k /= 2) {
        __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 31 - b));
        for (int i = 0; i < k / 2; i++) p[i] = _mm256_blendv_ps(p[2 * i], p[2 * i + 1], sel);
    }
    return p[0];
}

TS_AVX2 static TS_INLINE __m256i ts2_lookup_i(const uint32_t *t, __m256i idx, int n) {
    return _mm256_castps_si256(ts2_lookup((const float *)t, idx, n));
}

/* A top level's feature values from plain loads of the block: the level's candidates (their
 * features in the meta row tm, BFS order) blended pairwise, candidates 2i and 2i+1 by bit 0 of
 * pos (the last decision), pairs of pairs by bit 1, and so on; sel[j] holds bit j at the sign.
 * Depth first, so that few registers are live. */
#define TS2_X(i) _mm256_loadu_ps(xg + TS2_BLOCK * (int32_t)(tm[i] & TS_FEAT_MASK))
TS_AVX2 static TS_INLINE __m256 ts2_pick2(const float *xg, const uint32_t *tm,
                                          const __m256 *sel) {
    return _mm256_blendv_ps(TS2_X(0), TS2_X(1), sel[0]);
}
TS_AVX2 static TS_INLINE __m256 ts2_pick4(const float *xg, const uint32_t *tm,
                                          const __m256 *sel) {
    return _mm256_blendv_ps(ts2_pick2(xg, tm, sel), ts2_pick2(xg, tm + 2, sel), sel[1]);
}
TS_AVX2 static TS_INLINE __m256 ts2_pick8(const float *xg, const uint32_t *tm,
                                          const __m256 *sel) {
    return _mm256_blendv_ps(ts2_pick4(xg, tm, sel), ts2_pick4(xg, tm + 4, sel), sel[2]);
}
TS_AVX2 static TS_INLINE __m256 ts2_pick(const float *xg, const uint32_t *tm, __m256i pos,
                                         int level) {
    __m256 sel[3];
    for (int j = 0; j < level && j < 3; j++)
        sel[j] = _mm256_castsi256_ps(_mm256_slli_epi32(pos, 31 - j));
    switch (level) {
    case 0: return TS2_X(0);
    case 1: return ts2_pick2(xg, tm, sel);
    case 2: return ts2_pick4(xg, tm, sel);
    default: return ts2_pick8(xg, tm, sel);
    }
}
#undef TS2_X
#if TS2_LOADS > 4
#error "ts2_pick blends at most 8 candidates"
#endif

/* One level for G groups: lanes still inside the tree move to a child; returns whether any
 * lane is still inside. level < TS2_TOP reads top_tab (tt) by BFS position. */
TS_AVX2 static TS_INLINE int ts2_step(const ts_model *M, int32_t base, const uint32_t *tt,
                                      const float *thr, const uint32_t *meta,
                                      const uint32_t *kids, const float *xt, __m256i *node,
                                      __m256i *act, __m256i *pos, int G, int kind, int special,
                                      int level) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i leaf_bit =
        _mm256_set1_epi32((int)(kind == TS_KIND_BIG ? TS_BIG_LEAF : TS_SMALL_LEAF));
    const int top = level < TS2_TOP;
    int any = 0;
    /* the groups' steps are independent: their loads overlap */
    for (int g = 0; g < G; g++) {
        /* a group done with this tree skips its gathers (the top levels are branch-free) */
        if (!top && _mm256_testz_si256(act[g], act[g])) continue;
        const float *xg = xt + 8 * g;
        __m256 th, x;
        __m256i md, kd = _mm256_setzero_si256(), child;
        if (top) {
            const int off = (1 << level) - 1, n = 1 << level;
            const uint32_t *tm = tt + TS2_TOP_STRIDE + off;
            if (level == 0) {
                th = _mm256_broadcast_ss((const float *)tt);
                md = _mm256_set1_epi32((int)tm[0]);
                kd = _mm256_set1_epi32((int)tt[2 * TS2_TOP_STRIDE]);
            } else {
                th = ts2_lookup((const float *)tt + off, pos[g], n);
                md = ts2_lookup_i(tm, pos[g], n);
                kd = ts2_lookup_i(tt + 2 * TS2_TOP_STRIDE + off, pos[g], n);
            }
            if (level < TS2_LOADS) x = ts2_pick(xg, tm, pos[g], level);
        } else if (kind == TS_KIND_BIG) {
            th = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), thr, node[g],
                                          _mm256_castsi256_ps(act[g]), 4);
            md = _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), (const int *)meta, node[g],
                                             act[g], 4);
            kd = _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), (const int *)kids, node[g],
                                             act[g], 4);
        } else {
            const int n = kind == TS_KIND_SMALL32 ? 32 : 64;
            th = ts2_lookup(thr, node[g], n);
            md = ts2_lookup_i(meta, node[g], n);
        }
        if (!top || level >= TS2_LOADS) {
            __m256i f = _mm256_and_si256(md, _mm256_set1_epi32((int)TS_FEAT_MASK));
            __m256i xi = _mm256_add_epi32(_mm256_slli_epi32(f, TS2_LOG2_BLOCK), lane);
            x = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), xg, xi,
                                         _mm256_castsi256_ps(act[g]), 4);
        }
        __m256i go = ts2_decide(M, base, act[g], x, th, md, node[g], special);
        if (top) pos[g] = _mm256_sub_epi32(_mm256_add_epi32(pos[g], pos[g]), go);
        if (top || kind == TS_KIND_BIG) {
            /* kids: left in bits 0-15, right in bits 16-31 */
            child = _mm256_srlv_epi32(kd, _mm256_and_si256(go, _mm256_set1_epi32(16)));
            child = _mm256_and_si256(child, _mm256_set1_epi32(0xFFFF));
        } else {
            /* meta: left in bits 18-24, right in bits 25-31 */
            __m256i shift = _mm256_add_epi32(_mm256_set1_epi32(TS_LEFT_SHIFT),
                                             _mm256_and_si256(go, _mm256_set1_epi32(7)));
            child = _mm256_and_si256(_mm256_srlv_epi32(md, shift), _mm256_set1_epi32(0x7F));
        }
        node[g] = _mm256_blendv_epi8(node[g], child, act[g]);
        act[g] = _mm256_and_si256(act[g], _mm256_cmpeq_epi32(_mm256_and_si256(child, leaf_bit),
                                                             _mm256_setzero_si256()));
        any |= !_mm256_testz_si256(act[g], act[g]);
    }
    return any;
}

/* Walk one tree for G groups of 8 rows of the feature-major block xt and add its leaf values
 * to acc. Every step is one level for all lanes still inside the tree. */
TS_AVX2 static TS_INLINE void ts2_tree(const ts_model *M, int32_t t, const float *xt,
                                       const __m256i *valid, double *acc, int G, int kind,
                                       int special) {
    const int32_t base = M->trees[4 * t], leaf_base = M->trees[4 * t + 1];
    const uint32_t *tt = M->top_tab + 3 * TS2_TOP_STRIDE * t;
    const float *thr = M->thr + base;
    const uint32_t *meta = M->meta + base, *kids = M->kids + base;
    __m256i node[4], act[4], pos[4];
    int any = 0;
    for (int g = 0; g < G; g++) {
        node[g] = _mm256_setzero_si256(); /* the root is local node 0 */
        pos[g] = _mm256_setzero_si256();
        act[g] = valid[g];
        any |= !_mm256_testz_si256(act[g], act[g]);
    }
    /* the top levels one by one (level is a constant in each), then until every lane is at a
     * leaf */
#define TS2_STEP(level) \
    ts2_step(M, base, tt, thr, meta, kids, xt, node, act, pos, G, kind, special, level)
#if TS2_TOP != 6
#error "the top levels are written out below"
#endif
    if (any) any = TS2_STEP(0);
    if (any) any = TS2_STEP(1);
    if (any) any = TS2_STEP(2);
    if (any) any = TS2_STEP(3);
    if (any) any = TS2_STEP(4);
    if (any) any = TS2_STEP(5);
    while (any) any = TS2_STEP(TS2_TOP);
#undef TS2_STEP
    const double *lv = M->leaf_value + leaf_base;
    const __m256i lmask = _mm256_set1_epi32(
        (int)(kind == TS_KIND_BIG ? TS_BIG_LEAF - 1 : TS_SMALL_LEAF - 1));
    for (int g = 0; g < G; g++) {
        /* rows past the end never left the root: point them at leaf 0 */
        __m256i leaf = _mm256_and_si256(_mm256_and_si256(node[g], lmask), valid[g]);
        __m256d lo = _mm256_i32gather_pd(lv, _mm256_castsi256_si128(leaf), 8);
        __m256d hi = _mm256_i32gather_pd(lv, _mm256_extracti128_si256(leaf, 1), 8);
        _mm256_storeu_pd(acc + 8 * g, _mm256_add_pd(_mm256_loadu_pd(acc + 8 * g), lo));
        _mm256_storeu_pd(acc + 8 * g + 4, _mm256_add_pd(_mm256_loadu_pd(acc + 8 * g + 4), hi));
    }
}

/* Rows [0, m) (m <= 8 G) at xb: out[i] += the ensemble's margin, tree after tree.
 * xt is scratch for the block's feature-major copy (n_feat x TS2_BLOCK floats). */
TS_AVX2 static TS_INLINE void ts2_block(const ts_model *M, const float *xb, int64_t ncol,
                                        int m, double *out, float *xt, int G, int special) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i valid[4];
    double acc[TS2_BLOCK];
    ts_fill_block(M, xb, ncol, m, xt, TS2_BLOCK, 8 * G);
    for (int r = 0; r < 8 * G; r++) acc[r] = r < m ? out[r] : 0.0;
    for (int g = 0; g < G; g++)
        valid[g] = _mm256_cmpgt_epi32(_mm256_set1_epi32(m - 8 * g), lane);
    for (int32_t t = 0; t < M->n_trees; t++) {
        switch (M->trees[4 * t + 2]) {
        case TS_KIND_SMALL32:
            ts2_tree(M, t, xt, valid, acc, G, TS_KIND_SMALL32, special);
            break;
        case TS_KIND_SMALL64:
            ts2_tree(M, t, xt, valid, acc, G, TS_KIND_SMALL64, special);
            break;
        default:
            ts2_tree(M, t, xt, valid, acc, G, TS_KIND_BIG, special);
        }
    }
    for (int r = 0; r < m; r++) out[r] = acc[r];
}

#define TS2_BLOCK_FN(G, S)                                                                    \
    TS_AVX2 static void ts2_block_##G##_##S(const ts_model *M, const float *xb, int64_t ncol, \
                                            int m, double *out, float *xt) {                  \
        ts2_block(M, xb, ncol, m, out, xt, G, S);                                             \
    }
TS2_BLOCK_FN(1, 0)
TS2_BLOCK_FN(2, 0)
TS2_BLOCK_FN(4, 0)
TS2_BLOCK_FN(1, 1)
TS2_BLOCK_FN(2, 1)
TS2_BLOCK_FN(4, 1)

/* Rows [0, m) of one chunk: blocks of 32 rows, then what is left in blocks of 16 and 8 (fewer
 * groups: a lone row does not walk 32 lanes). xt: n_feat x TS2_BLOCK floats scratch. */
static void ts_chunk_avx2(const ts_model *M, const float *xb, int64_t ncol, int32_t m,
                          double *out, float *xt, int special) {
    for (int32_t r = 0; r < m;) {
        int32_t k = m - r;
        const float *x = xb + r * ncol;
        if (k >= 32) {
            if (special) ts2_block_4_1(M, x, ncol, 32, out + r, xt);
            else ts2_block_4_0(M, x, ncol, 32, out + r, xt);
            r += 32;
        } else if (k > 8) {
            k = k < 16 ? k : 16;
            if (special) ts2_block_2_1(M, x, ncol, k, out + r, xt);
            else ts2_block_2_0(M, x, ncol, k, out + r, xt);
            r += k;
        } else {
            if (special) ts2_block_1_1(M, x, ncol, k, out + r, xt);
            else ts2_block_1_0(M, x, ncol, k, out + r, xt);
            r += k;
        }
    }
}

#else /* not x86-64 GCC/Clang: the scalar kernel only */
static int ts_have_avx2(void) { return 0; }
static void ts_chunk_avx2(const ts_model *M, const float *xb, int64_t ncol, int32_t m,
                          double *out, float *xt, int special) {
    (void)M, (void)xb, (void)ncol, (void)m, (void)out, (void)xt, (void)special;
}
#endif

#endif /* SF_TREES_AVX2_H */
