/* NEON path with the Armv8.2 dot-product extension (compiled with -march=armv8.2-a+dotprod
 * only in this translation unit; chosen at run time only when the CPU reports asimddp).
 * t = u - 1 as int8; vdotq_s32 adds four int8*int8 products (|.| <= 4 * 128) per int32 lane. */
#include "ternary.h"

#if defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>

#define TERN_TR_MM 4
#define TERN_TC_MM 4
#define TERN_TR_MV 4
#define TERN_OFFSET 0
#define TERN_ROWS_FN tern_rows_neondot

#define DEC0(v) vreinterpretq_s8_u8(vsubq_u8(vandq_u8((v), m3), one))
#define DECS(v, S) vreinterpretq_s8_u8(vsubq_u8(vandq_u8(vshrq_n_u8((v), 2 * (S)), m3), one))
#define DEC3(v) vreinterpretq_s8_u8(vsubq_u8(vshrq_n_u8((v), 6), one))

#define TILE_BODY(R, C, XP)                                                                \
    const uint8x16_t m3 = vdupq_n_u8(3), one = vdupq_n_u8(1);                              \
    int32x4_t acc[R][C];                                                                   \
    for (int i = 0; i < R; i++)                                                            \
        for (int j = 0; j < C; j++) acc[i][j] = vdupq_n_s32(0);                            \
    for (int64_t b = 0; b < nb; b++) {                                                     \
        for (int q = 0; q < 4; q++) {                                                      \
            int8x16_t t0[R], t1[R], t2[R], t3[R];                                          \
            for (int i = 0; i < R; i++) {                                                  \
                uint8x16_t wv = vld1q_u8(w[i] + 64 * b + 16 * q);                          \
                t0[i] = DEC0(wv);                                                          \
                t1[i] = DECS(wv, 1);                                                       \
                t2[i] = DECS(wv, 2);                                                       \
                t3[i] = DEC3(wv);                                                          \
            }                                                                              \
            for (int j = 0; j < C; j++) {                                                  \
                const int8_t *xb = XP(j) + 256 * b + 16 * q;                               \
                int8x16_t x0 = vld1q_s8(xb), x1 = vld1q_s8(xb + 64);                       \
                int8x16_t x2 = vld1q_s8(xb + 128), x3 = vld1q_s8(xb + 192);                \
                for (int i = 0; i < R; i++) {                                              \
                    int32x4_t a = vdotq_s32(acc[i][j], t0[i], x0);                         \
                    a = vdotq_s32(a, t1[i], x1);                                           \
                    a = vdotq_s32(a, t2[i], x2);                                           \
                    acc[i][j] = vdotq_s32(a, t3[i], x3);                                   \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
    }

#define TERN_HSUM(v) vaddvq_s32(v)   /* tile_mm / tile_mv come from ternary_tiles.h */
#include "ternary_tiles.h"

#endif
