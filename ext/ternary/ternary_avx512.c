/* AVX-512 VNNI path (compiled with -mavx512f/bw/vl/vnni only in this translation unit).
 * One 64-byte load holds a whole block; (shift, and) yields 64 weights u = t + 1 at a time and
 * _mm512_dpbusd_epi32 adds four u8*s8 products per int32 lane (|.| <= 4 * 256, no saturation:
 * the non-saturating form).  The tile returns sum u*x; the loop nest subtracts sum x. */
#include "ternary.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>

#define TERN_TR_MM 4
#define TERN_TC_MM 4
#define TERN_OFFSET 1
#define TERN_ROWS_FN tern_rows_avx512

#define DEC(v, S) _mm512_and_si512(_mm512_srli_epi16((v), 2 * (S)), m3)

#define TILE_BODY(R, C, XP)                                                                \
    const __m512i m3 = _mm512_set1_epi8(3);                                                \
    __m512i acc[R][C];                                                                     \
    for (int i = 0; i < R; i++)                                                            \
        for (int j = 0; j < C; j++) acc[i][j] = _mm512_setzero_si512();                    \
    for (int64_t b = 0; b < nb; b++) {                                                     \
        __m512i wv[R];                                                                     \
        for (int i = 0; i < R; i++) wv[i] = _mm512_loadu_si512((const void *)(w[i] + 64 * b)); \
        for (int s = 0; s < 4; s++) {                                                      \
            __m512i u[R];                                                                  \
            for (int i = 0; i < R; i++) u[i] = DEC(wv[i], s);                              \
            for (int j = 0; j < C; j++) {                                                  \
                __m512i xv = _mm512_loadu_si512((const void *)(XP(j) + 256 * b + 64 * s)); \
                for (int i = 0; i < R; i++) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], u[i], xv); \
            }                                                                              \
        }                                                                                  \
    }

/* THE AVX-512 decode matrix-vector product (n == 1).  Instead of shifting each 2-bit slice
 * down, the slice is masked in place: (w & (3 << 2s)) = u * 4^s <= 128 (an unsigned byte), and
 * _mm512_dpbusd_epi32 adds four u*4^s * x products per int32 lane into an accumulator of its
 * own for each s.  Every lane of accumulator s is a multiple of 4^s (|.| <= 4 * 128 * 128 per
 * step, no saturation: the non-saturating form), so an arithmetic shift right by 2s is exact:
 *     sum u*x = acc0 + acc1/4 + acc2/16 + acc3/64.
 * One row at a time, its blocks read in order (a single sequential stream), with four
 * accumulator sets taking consecutive blocks so 16 dpbusd chains are in flight.  Reading
 * several rows side by side (the register tiles of tile_mv) is strided in memory and streams
 * weights from DRAM slower: measured with weights that do not fit in the caches (one
 * 1024 x 4096 matrix after another, 256 MB in all), 174 us per matrix vs 265 us for tile_mv
 * (4096 x 1024: 175 vs 223 us); kept as the only AVX-512 decode matvec (it used to be a
 * second copy in ext/engine). */
static inline __m512i mv_combine(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
    return _mm512_add_epi32(_mm512_add_epi32(a0, _mm512_srai_epi32(a1, 2)),
                            _mm512_add_epi32(_mm512_srai_epi32(a2, 4), _mm512_srai_epi32(a3, 6)));
}

static inline void mv_block(__m512i a[4], const uint8_t *wb, const int8_t *xb) {
    const __m512i m0 = _mm512_set1_epi8(0x03), m1 = _mm512_set1_epi8(0x0c);
    const __m512i m2 = _mm512_set1_epi8(0x30), m3 = _mm512_set1_epi8((char)0xc0);
    const __m512i wv = _mm512_loadu_si512((const void *)wb);
    a[0] = _mm512_dpbusd_epi32(a[0], _mm512_and_si512(wv, m0), _mm512_loadu_si512((const void *)xb));
    a[1] = _mm512_dpbusd_epi32(a[1], _mm512_and_si512(wv, m1), _mm512_loadu_si512((const void *)(xb + 64)));
    a[2] = _mm512_dpbusd_epi32(a[2], _mm512_and_si512(wv, m2), _mm512_loadu_si512((const void *)(xb + 128)));
    a[3] = _mm512_dpbusd_epi32(a[3], _mm512_and_si512(wv, m3), _mm512_loadu_si512((const void *)(xb + 192)));
}

/* rows [r0, r1) of a job with n == 1: nb whole blocks from job->x, the partial last block
 * (if any) from the zero-padded job->xtail; returns sum t*x = sum u*x - sum x. */
static void matvec_rows(const tern_job *job, int64_t r0, int64_t r1) {
    const int64_t nb = job->k / TERN_BLOCK, ws = job->w_stride;
    const int has_tail = (job->k % TERN_BLOCK) != 0;
    const int8_t *x = job->x;
    for (int64_t r = r0; r < r1; r++) {
        __m512i a[4][4];
        for (int i = 0; i < 4; i++)
            for (int q = 0; q < 4; q++) a[i][q] = _mm512_setzero_si512();
        const uint8_t *wr = job->w + r * ws;
        int64_t b = 0;
        for (; b + 4 <= nb; b += 4)
            for (int i = 0; i < 4; i++) mv_block(a[i], wr + 64 * (b + i), x + 256 * (b + i));
        for (; b < nb; b++) mv_block(a[0], wr + 64 * b, x + 256 * b);
        if (has_tail) mv_block(a[1], wr + 64 * nb, job->xtail);
        __m512i s[4];
        for (int q = 0; q < 4; q++)
            s[q] = _mm512_add_epi32(_mm512_add_epi32(a[0][q], a[1][q]),
                                    _mm512_add_epi32(a[2][q], a[3][q]));
        job->y[r] = _mm512_reduce_add_epi32(mv_combine(s[0], s[1], s[2], s[3])) - job->xsum[0];
    }
}
#define TERN_MATVEC_ROWS matvec_rows

#define TERN_HSUM(v) _mm512_reduce_add_epi32(v)   /* tile_mm / tile_mv come from ternary_tiles.h */
#include "ternary_tiles.h"

#endif
