/* AVX-512 VNNI path (compiled with -mavx512f/bw/vl/vnni only in this translation unit).
 * One 64-byte load holds a whole block; (shift, and) yields 64 weights u = t + 1 at a time and
 * _mm512_dpbusd_epi32 adds four u8*s8 products per int32 lane (|.| <= 4 * 256, no saturation:
 * the non-saturating form).  The tile returns sum u*x; the loop nest subtracts sum x. */
#include "ternary.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>

#define TERN_TR_MM 4
#define TERN_TC_MM 4
#define TERN_TR_MV 8
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

#define TERN_HSUM(v) _mm512_reduce_add_epi32(v)   /* tile_mm / tile_mv come from ternary_tiles.h */
#include "ternary_tiles.h"

#endif
