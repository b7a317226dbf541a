/* AVX2 path (compiled with -mavx2 only in this translation unit).
 * u = t + 1 in {0,1,2} (unsigned) times x (signed) with _mm256_maddubs_epi16: each int16 lane
 * is u0*x0 + u1*x1 with |.| <= 512; two such results are added in int16 (|.| <= 1024) before
 * _mm256_madd_epi16 widens to int32, so nothing can saturate.  The tile returns sum u*x and
 * the loop nest subtracts sum x (TERN_OFFSET).  The register tiles serve n > 1 (prefill); the
 * decode matrix-vector product (n == 1) is matvec_rows below. */
#include "ternary.h"

#if defined(__AVX2__)
#include <immintrin.h>

#define TERN_TR_MM 2
#define TERN_TC_MM 4
#define TERN_OFFSET 1
#define TERN_ROWS_FN tern_rows_avx2

static inline int32_t hsum256(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}


/* THE AVX2 decode matrix-vector product (n == 1), after the AVX-512 one: one row at a time,
 * its blocks read in memory order (one sequential stream over the whole matrix instead of
 * TERN_TR_MV rows side by side), software prefetch TERN_AVX2_PF bytes ahead of the stream.
 * There is no vpdpbusd: each 32-byte half of a block gives four slices u_s (shift, and) and
 * _mm256_maddubs_epi16 adds two u*x products per int16 lane; the four slices' results are
 * added in int16 (8 products, within [-2048, 2032]) and kept in int16 accumulators (one per
 * half) for up to TERN_AVX2_GROUP = 8 blocks (|.| <= 8 * 2048 = 16384 < 32767: no wrap)
 * before one _mm256_madd_epi16 widens them to int32.  Per 64 weight bytes that is 8
 * maddubs and 1/4 madd instead of the 8 + 4 of the register tiles. */
#ifndef TERN_AVX2_PF
#define TERN_AVX2_PF 1024
#endif
#define TERN_AVX2_GROUP 8
_Static_assert(TERN_AVX2_GROUP * 2048 <= 32767, "int16 block accumulators must not wrap");

static inline __m256i mv_half(__m256i wv, const int8_t *xb, __m256i m3) {
    const __m256i u0 = _mm256_and_si256(wv, m3);
    const __m256i u1 = _mm256_and_si256(_mm256_srli_epi16(wv, 2), m3);
    const __m256i u2 = _mm256_and_si256(_mm256_srli_epi16(wv, 4), m3);
    const __m256i u3 = _mm256_and_si256(_mm256_srli_epi16(wv, 6), m3);
    const __m256i p0 = _mm256_add_epi16(
        _mm256_maddubs_epi16(u0, _mm256_loadu_si256((const __m256i *)xb)),
        _mm256_maddubs_epi16(u1, _mm256_loadu_si256((const __m256i *)(xb + 64))));
    const __m256i p1 = _mm256_add_epi16(
        _mm256_maddubs_epi16(u2, _mm256_loadu_si256((const __m256i *)(xb + 128))),
        _mm256_maddubs_epi16(u3, _mm256_loadu_si256((const __m256i *)(xb + 192))));
    return _mm256_add_epi16(p0, p1);
}

/* sum u*x over blocks [0, nb) of one row (x: 256 bytes per block) */
static inline __m256i mv_row_blocks(const uint8_t *wr, const int8_t *x, int64_t nb,
                                    __m256i acc32) {
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t g = 0; g < nb; g += TERN_AVX2_GROUP) {
        const int64_t ge = g + TERN_AVX2_GROUP < nb ? g + TERN_AVX2_GROUP : nb;
        __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
        for (int64_t b = g; b < ge; b++) {
            const uint8_t *wb = wr + 64 * b;
#if TERN_AVX2_PF > 0
            _mm_prefetch((const char *)(wb + TERN_AVX2_PF), _MM_HINT_T0);
#endif
            const int8_t *xb = x + 256 * b;
            a0 = _mm256_add_epi16(a0, mv_half(_mm256_loadu_si256((const __m256i *)wb), xb, m3));
            a1 = _mm256_add_epi16(a1, mv_half(_mm256_loadu_si256((const __m256i *)(wb + 32)),
                                              xb + 32, m3));
        }
        acc32 = _mm256_add_epi32(acc32, _mm256_add_epi32(_mm256_madd_epi16(a0, ones),
                                                         _mm256_madd_epi16(a1, ones)));
    }
    return acc32;
}

/* rows [r0, r1) of a job with n == 1: nb whole blocks from job->x, the partial last block (if
 * any) from the zero-padded job->xtail; returns sum t*x = sum u*x - sum x. */
static void matvec_rows(const tern_job *job, int64_t r0, int64_t r1) {
    const int64_t nb = job->k / TERN_BLOCK, ws = job->w_stride;
    const int has_tail = (job->k % TERN_BLOCK) != 0;
    const int32_t off = job->xsum[0];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *wr = job->w + r * ws;
        __m256i acc = mv_row_blocks(wr, job->x, nb, _mm256_setzero_si256());
        if (has_tail) acc = mv_row_blocks(wr + 64 * nb, job->xtail, 1, acc);
        job->y[r] = hsum256(acc) - off;
    }
}
#define TERN_MATVEC_ROWS matvec_rows

#define DEC(v, S) _mm256_and_si256(_mm256_srli_epi16((v), 2 * (S)), m3)

/* One tile body: R rows x C columns; x pointers are indexed through XP(j). */
#define TILE_BODY(R, C, XP)                                                                \
    const __m256i m3 = _mm256_set1_epi8(3);                                                \
    const __m256i ones = _mm256_set1_epi16(1);                                             \
    __m256i acc[R][C];                                                                     \
    for (int i = 0; i < R; i++)                                                            \
        for (int j = 0; j < C; j++) acc[i][j] = _mm256_setzero_si256();                    \
    for (int64_t b = 0; b < nb; b++) {                                                     \
        for (int h = 0; h < 2; h++) {                                                      \
            __m256i wv[R];                                                                 \
            for (int i = 0; i < R; i++)                                                    \
                wv[i] = _mm256_loadu_si256((const __m256i *)(w[i] + 64 * b + 32 * h));     \
            for (int sp = 0; sp < 4; sp += 2) {                                            \
                __m256i u0[R], u1[R];                                                      \
                for (int i = 0; i < R; i++) {                                              \
                    u0[i] = DEC(wv[i], sp);                                                \
                    u1[i] = DEC(wv[i], sp + 1);                                            \
                }                                                                          \
                for (int j = 0; j < C; j++) {                                              \
                    const int8_t *xb = XP(j) + 256 * b + 64 * sp + 32 * h;                 \
                    __m256i x0 = _mm256_loadu_si256((const __m256i *)xb);                  \
                    __m256i x1 = _mm256_loadu_si256((const __m256i *)(xb + 64));           \
                    for (int i = 0; i < R; i++) {                                          \
                        __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(u0[i], x0),      \
                                                     _mm256_maddubs_epi16(u1[i], x1));     \
                        acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(p, ones)); \
                    }                                                                      \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
    }

#define TERN_HSUM(v) hsum256(v)   /* tile_mm / tile_mv come from ternary_tiles.h */
#include "ternary_tiles.h"

#endif
