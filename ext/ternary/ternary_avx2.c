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

/* {sum v0, sum v1, sum v2, sum v3} (int32 adds wrap and are associative: any order is exact) */
static inline __m128i hsum256x4(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}


/* THE AVX2 decode matrix-vector product (n == 1), after the AVX-512 one: one row at a time,
 * its blocks read in memory order (one sequential stream over the whole matrix instead of
 * TERN_TR_MV rows side by side), software prefetch TERN_AVX2_PF bytes ahead of the stream.
 * There is no vpdpbusd: each 32-byte half of a block gives four slices u_s (shift, and) and
 * _mm256_maddubs_epi16 adds two u*x products per int16 lane; the four slices' results are
 * added in int16 (8 products, within [-2048, 2032]) and kept in int16 accumulators (one per
 * half) for up to TERN_AVX2_GROUP = 8 blocks (|.| <= 8 * 2048 = 16384 < 32767: no wrap)
 * before one _mm256_madd_epi16 widens them to int32.  Per 64 weight bytes that is 8
 * maddubs and 1/4 madd instead of the 8 + 4 of the register tiles.  The prefetch distance:
 * in a decode step on a Zen 3 EPYC (best of three 64-token runs) 2,048 bytes gave 400M
 * 126 -> 135-138 tok/s and 1B 56 -> 58 over 1,024; 3,072 less; 10M and 100M unchanged. */
#ifndef TERN_AVX2_PF
#define TERN_AVX2_PF 2048
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

/* The register tile for n > 1 (prefill): TERN_TR_MM = 2 rows x TERN_TC_MM = 4 columns.  As
 * in the matvec above, the products stay in int16 for a group of blocks: per block each int16
 * lane of a16[i][j] adds 2 halves x 4 slices x 2 (one maddubs lane) = 16 products u*x in
 * [-256, 254], so TERN_AVX2_MM_GROUP = 8 blocks stay within [INT16_MIN, 32512] (every partial sum
 * too: it is a sum of at most 128 such products) and the wrapping int16 adds are exact; once
 * per group one _mm256_madd_epi16 widens them and the four columns of a row are lane-summed
 * together into int32 sums.  Per (row, column, block): 8 maddubs + 8 int16 adds instead of
 * 8 maddubs + 4 madd + 4 int16 adds + 4 int32 adds (maddubs and madd share the multiply
 * ports).  Register budget (16 ymm): 8 int16 accumulators, the 4 slices of the two rows being
 * decoded (shift and mask straight from memory), the mask and two temporaries; the
 * activations are memory operands of the maddubs. */
#ifndef TERN_AVX2_MM_GROUP
#define TERN_AVX2_MM_GROUP 8
#endif
_Static_assert(TERN_AVX2_MM_GROUP * 16 * 256 <= -(INT16_MIN), "int16 tile accumulators must stay exact");
_Static_assert(TERN_TR_MM == 2 && TERN_TC_MM == 4, "tile_mm is written for 2 x 4");

#define LD(p) _mm256_loadu_si256((const __m256i *)(p))
#define SL(p, S) _mm256_and_si256(_mm256_srli_epi16(LD(p), 2 * (S)), m3)
/* (the empty asm pins each updated accumulator to a register: without it gcc reassociates
 * the int16 adds of a whole block into one tree, computes all 64 maddubs first and spills
 * them, which made this tile 15% slower than the one it replaces) */
#define MAC2(a, u0, u1, xb)                                                                \
    do {                                                                                   \
        a = _mm256_add_epi16(a, _mm256_add_epi16(_mm256_maddubs_epi16(u0, LD(xb)),          \
                                                 _mm256_maddubs_epi16(u1, LD((xb) + 64)))); \
        __asm__("" : "+x"(a));                                                             \
    } while (0)

static inline __attribute__((always_inline)) void
tile_mm(const uint8_t **w, const int8_t **x, int64_t nb, int32_t out[TERN_TR_MM][TERN_TC_MM]) {
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m256i ones = _mm256_set1_epi16(1);
    __m128i o0 = _mm_setzero_si128(), o1 = _mm_setzero_si128();
    const uint8_t *w0 = w[0], *w1 = w[1];
    const int8_t *x0 = x[0], *x1 = x[1], *x2 = x[2], *x3 = x[3];
    for (int64_t g = 0; g < nb; g += TERN_AVX2_MM_GROUP) {
        const int64_t ge = g + TERN_AVX2_MM_GROUP < nb ? g + TERN_AVX2_MM_GROUP : nb;
        __m256i a00 = _mm256_setzero_si256(), a01 = a00, a02 = a00, a03 = a00;
        __m256i a10 = a00, a11 = a00, a12 = a00, a13 = a00;
        for (int64_t b = g; b < ge; b++) {
            for (int h = 0; h < 2; h++) {
                const uint8_t *p0 = w0 + 64 * b + 32 * h, *p1 = w1 + 64 * b + 32 * h;
                const int64_t xo = 256 * b + 32 * h;
                for (int sp = 0; sp < 4; sp += 2) {
                    const __m256i u00 = SL(p0, sp), u01 = SL(p0, sp + 1);
                    const __m256i u10 = SL(p1, sp), u11 = SL(p1, sp + 1);
                    const int64_t o = xo + 64 * sp;
                    MAC2(a00, u00, u01, x0 + o); MAC2(a10, u10, u11, x0 + o);
                    MAC2(a01, u00, u01, x1 + o); MAC2(a11, u10, u11, x1 + o);
                    MAC2(a02, u00, u01, x2 + o); MAC2(a12, u10, u11, x2 + o);
                    MAC2(a03, u00, u01, x3 + o); MAC2(a13, u10, u11, x3 + o);
                }
            }
        }
        o0 = _mm_add_epi32(o0, hsum256x4(_mm256_madd_epi16(a00, ones), _mm256_madd_epi16(a01, ones),
                                         _mm256_madd_epi16(a02, ones), _mm256_madd_epi16(a03, ones)));
        o1 = _mm_add_epi32(o1, hsum256x4(_mm256_madd_epi16(a10, ones), _mm256_madd_epi16(a11, ones),
                                         _mm256_madd_epi16(a12, ones), _mm256_madd_epi16(a13, ones)));
    }
    _mm_storeu_si128((__m128i *)out[0], o0);
    _mm_storeu_si128((__m128i *)out[1], o1);
}
#undef MAC2
#undef SL
#undef LD

#include "ternary_tiles.h"

#endif
