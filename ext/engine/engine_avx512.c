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

#define ROWS 4
#ifndef PREFETCH
#define PREFETCH 32   /* blocks of 64 bytes ahead on each row stream */
#endif

static inline __m512i combine(__m512i a0, __m512i a1, __m512i a2, __m512i a3)
{
    return _mm512_add_epi32(_mm512_add_epi32(a0, _mm512_srai_epi32(a1, 2)),
                            _mm512_add_epi32(_mm512_srai_epi32(a2, 4), _mm512_srai_epi32(a3, 6)));
}

void eng_matvec_avx512(const uint8_t *w, int64_t stride, int64_t m, int64_t nb,
                       const int8_t *x, int32_t xsum, int32_t *y)
{
    const __m512i m0 = _mm512_set1_epi8(0x03), m1 = _mm512_set1_epi8(0x0c);
    const __m512i m2 = _mm512_set1_epi8(0x30), m3 = _mm512_set1_epi8((char)0xc0);
    int64_t r = 0;
    for (; r + ROWS <= m; r += ROWS) {
        __m512i a[ROWS][4];
        for (int i = 0; i < ROWS; i++)
            for (int s = 0; s < 4; s++) a[i][s] = _mm512_setzero_si512();
        const uint8_t *wr = w + r * stride;
        for (int64_t b = 0; b < nb; b++) {
            const __m512i x0 = _mm512_loadu_si512((const void *)(x + 256 * b));
            const __m512i x1 = _mm512_loadu_si512((const void *)(x + 256 * b + 64));
            const __m512i x2 = _mm512_loadu_si512((const void *)(x + 256 * b + 128));
            const __m512i x3 = _mm512_loadu_si512((const void *)(x + 256 * b + 192));
            for (int i = 0; i < ROWS; i++) {
                _mm_prefetch((const char *)(wr + i * stride + 64 * (b + PREFETCH)), _MM_HINT_T0);
                const __m512i wv = _mm512_loadu_si512((const void *)(wr + i * stride + 64 * b));
                a[i][0] = _mm512_dpbusd_epi32(a[i][0], _mm512_and_si512(wv, m0), x0);
                a[i][1] = _mm512_dpbusd_epi32(a[i][1], _mm512_and_si512(wv, m1), x1);
                a[i][2] = _mm512_dpbusd_epi32(a[i][2], _mm512_and_si512(wv, m2), x2);
                a[i][3] = _mm512_dpbusd_epi32(a[i][3], _mm512_and_si512(wv, m3), x3);
            }
        }
        /* four rows at once: 512 -> 256 bits, then two rounds of horizontal adds */
        __m256i h[ROWS];
        for (int i = 0; i < ROWS; i++) {
            const __m512i c = combine(a[i][0], a[i][1], a[i][2], a[i][3]);
            h[i] = _mm256_add_epi32(_mm512_castsi512_si256(c), _mm512_extracti64x4_epi64(c, 1));
        }
        const __m256i h01 = _mm256_hadd_epi32(h[0], h[1]), h23 = _mm256_hadd_epi32(h[2], h[3]);
        const __m256i hh = _mm256_hadd_epi32(h01, h23);  /* per 128-bit lane: rows 0, 1, 2, 3 */
        __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(hh), _mm256_extracti128_si256(hh, 1));
        sum = _mm_sub_epi32(sum, _mm_set1_epi32(xsum));
        _mm_storeu_si128((__m128i *)(y + r), sum);
    }
    for (; r < m; r++) {
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
        const uint8_t *wr = w + r * stride;
        for (int64_t b = 0; b < nb; b++) {
            const __m512i wv = _mm512_loadu_si512((const void *)(wr + 64 * b));
            a0 = _mm512_dpbusd_epi32(a0, _mm512_and_si512(wv, m0),
                                     _mm512_loadu_si512((const void *)(x + 256 * b)));
            a1 = _mm512_dpbusd_epi32(a1, _mm512_and_si512(wv, m1),
                                     _mm512_loadu_si512((const void *)(x + 256 * b + 64)));
            a2 = _mm512_dpbusd_epi32(a2, _mm512_and_si512(wv, m2),
                                     _mm512_loadu_si512((const void *)(x + 256 * b + 128)));
            a3 = _mm512_dpbusd_epi32(a3, _mm512_and_si512(wv, m3),
                                     _mm512_loadu_si512((const void *)(x + 256 * b + 192)));
        }
        y[r] = _mm512_reduce_add_epi32(combine(a0, a1, a2, a3)) - xsum;
    }
}
#endif
