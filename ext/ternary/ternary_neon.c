/* NEON path without the dot-product extension (aarch64, and 32-bit ARM with NEON).
 * Decodes t = u - 1 as int8 and multiplies with x: vmull_s8 + vmlal_s8 give int16 lanes with
 * |.| <= 256 per step; four steps (one per 2-bit position s) are added in int16 (|.| <= 1024)
 * before vpadalq_s16 widens into int32.  Only ARMv7-compatible intrinsics are used, so the
 * same file builds for 32-bit ARM (-mfpu=neon); without NEON it compiles to nothing. */
#include "ternary.h"

#if defined(__ARM_NEON) || defined(__ARM_NEON__)
#include <arm_neon.h>

#define TERN_TR_MM 2
#define TERN_TC_MM 4
#define TERN_TR_MV 4
#define TERN_OFFSET 0
#define TERN_ROWS_FN tern_rows_neon

static inline int32_t hsum_s32(int32x4_t v) {
#if defined(__aarch64__)
    return vaddvq_s32(v);
#else
    int32x2_t s = vadd_s32(vget_low_s32(v), vget_high_s32(v));
    s = vpadd_s32(s, s);
    return vget_lane_s32(s, 0);
#endif
}

/* t for 2-bit position S of a 16-byte chunk (shift counts must be immediates). */
#define DEC0(v) vreinterpretq_s8_u8(vsubq_u8(vandq_u8((v), m3), one))
#define DECS(v, S) vreinterpretq_s8_u8(vsubq_u8(vandq_u8(vshrq_n_u8((v), 2 * (S)), m3), one))
#define DEC3(v) vreinterpretq_s8_u8(vsubq_u8(vshrq_n_u8((v), 6), one))

#define MUL16(t, xv) vmlal_s8(vmull_s8(vget_low_s8(t), vget_low_s8(xv)), vget_high_s8(t), vget_high_s8(xv))

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
                    int16x8_t p = MUL16(t0[i], x0);                                        \
                    p = vaddq_s16(p, MUL16(t1[i], x1));                                    \
                    p = vaddq_s16(p, MUL16(t2[i], x2));                                    \
                    p = vaddq_s16(p, MUL16(t3[i], x3));                                    \
                    acc[i][j] = vpadalq_s16(acc[i][j], p);                                 \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
    }

#define TERN_HSUM(v) hsum_s32(v)   /* tile_mm / tile_mv come from ternary_tiles.h */
#include "ternary_tiles.h"

#endif
