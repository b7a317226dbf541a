/* AVX2 path (compiled with -mavx2 only in this translation unit).
 * u = t + 1 in {0,1,2} (unsigned) times x (signed) with _mm256_maddubs_epi16: each int16 lane
 * is u0*x0 + u1*x1 with |.| <= 512; two such results are added in int16 (|.| <= 1024) before
 * _mm256_madd_epi16 widens to int32, so nothing can saturate.  The tile returns sum u*x and
 * the loop nest subtracts sum x (TERN_OFFSET). */
#include "ternary.h"

#if defined(__AVX2__)
#include <immintrin.h>

#define TERN_TR_MM 2
#define TERN_TC_MM 4
#define TERN_TR_MV 2
#define TERN_OFFSET 1
#define TERN_ROWS_FN tern_rows_avx2

static inline int32_t hsum256(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

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
