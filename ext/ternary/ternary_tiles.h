/* The loop nest shared by every kernel path (included by each ternary_<isa>.c).
 *
 * Before including this file a path defines:
 *   TERN_TR_MM, TERN_TC_MM   register tile for n > 1 (rows x columns)
 *   TERN_TR_MV               rows per tile for n == 1 (matrix-vector)
 *   TERN_OFFSET              1 when the tiles return sum u*x (u = t + 1): subtract sum x
 *   TERN_ROWS_FN             the name of the exported rows function
 *   TERN_MATVEC_ROWS         (optional) a function (job, r0, r1) doing the n == 1 case instead
 *                            of tile_mv (the AVX-512 path's row-at-a-time decode matvec)
 *   either TILE_BODY(rows, cols, X) and TERN_HSUM(v) (SIMD paths; the tiles follow below),
 *   or its own
 *   static void tile_mm(const uint8_t **w, const int8_t **x, int64_t nb,
 *                       int32_t out[TERN_TR_MM][TERN_TC_MM]);
 *   static void tile_mv(const uint8_t **w, const int8_t *x, int64_t nb,
 *                       int32_t out[TERN_TR_MV]);
 * Tiles read nb whole blocks (256 weights, 64 bytes) starting at the given pointers and
 * return exact int32 sums.  The last partial block (k % 256 != 0) is done by one more tile
 * call on the zero-padded copy of the activations (job->xtail); weights past k are zero.
 * Edge tiles repeat the last valid row / column pointer and drop the duplicate results.
 *
 * Cache blocking (n > 1): columns are processed in groups whose activations fit in ~192 KiB
 * (so they stay in L2 while every row of the range streams past), rows in register tiles.
 */
#ifndef TERN_ROWS_FN
#error "define TERN_ROWS_FN before including ternary_tiles.h"
#endif

#define TERN_COLBLOCK_BYTES (192 * 1024)

#ifdef TERN_HSUM
/* A SIMD path defines TILE_BODY(rows, cols, X) (accumulating into acc[rows][cols] vector
 * registers, X(j) naming column j's activations) and TERN_HSUM(v) (a vector's lane sum);
 * the two tile functions follow from them. */
static inline __attribute__((always_inline)) void
tile_mm(const uint8_t **w, const int8_t **x, int64_t nb, int32_t out[TERN_TR_MM][TERN_TC_MM]) {
#define XMM(j) x[j]
    TILE_BODY(TERN_TR_MM, TERN_TC_MM, XMM)
    for (int i = 0; i < TERN_TR_MM; i++)
        for (int j = 0; j < TERN_TC_MM; j++) out[i][j] = TERN_HSUM(acc[i][j]);
#undef XMM
}

#ifndef TERN_MATVEC_ROWS
static inline __attribute__((always_inline)) void
tile_mv(const uint8_t **w, const int8_t *x, int64_t nb, int32_t out[TERN_TR_MV]) {
#define XMV(j) x
    TILE_BODY(TERN_TR_MV, 1, XMV)
    for (int i = 0; i < TERN_TR_MV; i++) out[i] = TERN_HSUM(acc[i][0]);
#undef XMV
}
#endif
#endif

void TERN_ROWS_FN(const tern_job *job, int64_t r0, int64_t r1) {
    const int64_t k = job->k, n = job->n;
    const int64_t nb = k / TERN_BLOCK;
    const int has_tail = (k % TERN_BLOCK) != 0;
    const int64_t ws = job->w_stride;

    if (n == 1) {
#ifdef TERN_MATVEC_ROWS
        TERN_MATVEC_ROWS(job, r0, r1);
        return;
#else
        const int8_t *x = job->x;
        const int8_t *xt = job->xtail;
        const int32_t off = TERN_OFFSET ? job->xsum[0] : 0;
        for (int64_t rt = r0; rt < r1; rt += TERN_TR_MV) {
            const uint8_t *w[TERN_TR_MV];
            const uint8_t *wt[TERN_TR_MV];
            int32_t acc[TERN_TR_MV], acc2[TERN_TR_MV];
            for (int i = 0; i < TERN_TR_MV; i++) {
                int64_t r = rt + i < r1 ? rt + i : r1 - 1;
                w[i] = job->w + r * ws;
                wt[i] = w[i] + nb * TERN_BLOCK_BYTES;
            }
            tile_mv(w, x, nb, acc);
            if (has_tail) {
                tile_mv(wt, xt, 1, acc2);
                for (int i = 0; i < TERN_TR_MV; i++) acc[i] += acc2[i];
            }
            for (int i = 0; i < TERN_TR_MV && rt + i < r1; i++) job->y[rt + i] = acc[i] - off;
        }
        return;
#endif
    }

    int64_t cb = TERN_COLBLOCK_BYTES / (k > 0 ? k : 1);
    cb = (cb / TERN_TC_MM) * TERN_TC_MM;
    if (cb < TERN_TC_MM) cb = TERN_TC_MM;
    for (int64_t c0 = 0; c0 < n; c0 += cb) {
        const int64_t c1 = c0 + cb < n ? c0 + cb : n;
        for (int64_t rt = r0; rt < r1; rt += TERN_TR_MM) {
            const uint8_t *w[TERN_TR_MM];
            const uint8_t *wt[TERN_TR_MM];
            for (int i = 0; i < TERN_TR_MM; i++) {
                int64_t r = rt + i < r1 ? rt + i : r1 - 1;
                w[i] = job->w + r * ws;
                wt[i] = w[i] + nb * TERN_BLOCK_BYTES;
            }
            for (int64_t ct = c0; ct < c1; ct += TERN_TC_MM) {
                const int8_t *x[TERN_TC_MM];
                const int8_t *xt[TERN_TC_MM];
                int32_t acc[TERN_TR_MM][TERN_TC_MM], acc2[TERN_TR_MM][TERN_TC_MM];
                for (int j = 0; j < TERN_TC_MM; j++) {
                    int64_t c = ct + j < c1 ? ct + j : c1 - 1;
                    x[j] = job->x + c * job->x_stride;
                    xt[j] = has_tail ? job->xtail + c * TERN_BLOCK : NULL;
                }
                tile_mm(w, x, nb, acc);
                if (has_tail) {
                    tile_mm(wt, xt, 1, acc2);
                    for (int i = 0; i < TERN_TR_MM; i++)
                        for (int j = 0; j < TERN_TC_MM; j++) acc[i][j] += acc2[i][j];
                }
                for (int j = 0; j < TERN_TC_MM && ct + j < c1; j++) {
                    int32_t *yc = job->y + (ct + j) * job->y_stride;
                    const int32_t off = TERN_OFFSET ? job->xsum[ct + j] : 0;
                    for (int i = 0; i < TERN_TR_MM && rt + i < r1; i++) yc[rt + i] = acc[i][j] - off;
                }
            }
        }
    }
}
