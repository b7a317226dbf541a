/* AVX-512 VNNI matrix-vector product for the decode step (compiled with only its own flags).
 *
 * Layout b256 v1 (ext/ternary/ternary.h): byte j of a row's block b holds at bits 2s..2s+1 the
 * weight 256b + 64s + j as u = t + 1.  Instead of shifting each slice down, the slice is masked
 * in place: (w & (3 << 2s)) = u * 4^s <= 128 (an unsigned byte), and _mm512_dpbusd_epi32 adds
 * four u*4^s * x products per int32 lane into an accumulator of its own for each s.  Every lane
 * of accumulator s is then a multiple of 4^s (|.| <= 4 * 128 * 128 per step, no saturation: the
 * non-saturating form), so an arithmetic shift right by 2s is exact, and
 *     sum t*x = acc0 + acc1/4 + acc2/16 + acc3/64 - sum x.
 * x must be zero-padded to nb * 256 bytes (weights past k are u = 1: 1 * 0 = 0). */
#include "engine.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>

static inline __m512i combine(__m512i a0, __m512i a1, __m512i a2, __m512i a3)
{
    return _mm512_add_epi32(_mm512_add_epi32(a0, _mm512_srai_epi32(a1, 2)),
                            _mm512_add_epi32(_mm512_srai_epi32(a2, 4), _mm512_srai_epi32(a3, 6)));
}

/* One row at a time, its blocks read in order (a single sequential stream), with four
 * accumulator sets taking consecutive blocks so 16 dpbusd chains are in flight.  Reading four
 * rows side by side (the obvious register tiling) is strided in memory and streams weights
 * from DRAM at less than half the speed on the machines measured (9.6 vs 23-25 GB/s). */
static inline void block(__m512i a[4], const uint8_t *wb, const int8_t *xb, __m512i m0,
                         __m512i m1, __m512i m2, __m512i m3)
{
    const __m512i wv = _mm512_loadu_si512((const void *)wb);
    a[0] = _mm512_dpbusd_epi32(a[0], _mm512_and_si512(wv, m0), _mm512_loadu_si512((const void *)xb));
    a[1] = _mm512_dpbusd_epi32(a[1], _mm512_and_si512(wv, m1), _mm512_loadu_si512((const void *)(xb + 64)));
    a[2] = _mm512_dpbusd_epi32(a[2], _mm512_and_si512(wv, m2), _mm512_loadu_si512((const void *)(xb + 128)));
    a[3] = _mm512_dpbusd_epi32(a[3], _mm512_and_si512(wv, m3), _mm512_loadu_si512((const void *)(xb + 192)));
}

void eng_matvec_avx512(const uint8_t *w, int64_t stride, int64_t m, int64_t nb,
                       const int8_t *x, int32_t xsum, int32_t *y)
{
    const __m512i m0 = _mm512_set1_epi8(0x03), m1 = _mm512_set1_epi8(0x0c);
    const __m512i m2 = _mm512_set1_epi8(0x30), m3 = _mm512_set1_epi8((char)0xc0);
    for (int64_t r = 0; r < m; r++) {
        __m512i a[4][4];
        for (int i = 0; i < 4; i++)
            for (int s = 0; s < 4; s++) a[i][s] = _mm512_setzero_si512();
        const uint8_t *wr = w + r * stride;
        int64_t b = 0;
        for (; b + 4 <= nb; b += 4)
            for (int i = 0; i < 4; i++)
                block(a[i], wr + 64 * (b + i), x + 256 * (b + i), m0, m1, m2, m3);
        for (; b < nb; b++)
            block(a[0], wr + 64 * b, x + 256 * b, m0, m1, m2, m3);
        __m512i s[4];
        for (int q = 0; q < 4; q++)
            s[q] = _mm512_add_epi32(_mm512_add_epi32(a[0][q], a[1][q]),
                                    _mm512_add_epi32(a[2][q], a[3][q]));
        y[r] = _mm512_reduce_add_epi32(combine(s[0], s[1], s[2], s[3])) - xsum;
    }
}
#endif
