/* Portable scalar path: plain C on the b256 kernel layout (see ternary.h).
 * It decodes t = u - 1 and multiplies it with x directly (no offset correction), so it is
 * also an independent check of the offset-correcting SIMD paths.  The inner loops over the
 * 64 bytes of a block are written so that compilers can vectorize them for the baseline ISA. */
#include "ternary.h"

#define TERN_TR_MM 2
#define TERN_TC_MM 2
#define TERN_TR_MV 4
#define TERN_OFFSET 0
#define TERN_ROWS_FN tern_rows_scalar

static inline int32_t dot_block(const uint8_t *w, const int8_t *x) {
    int32_t acc = 0;
    for (int s = 0; s < 4; s++) {
        const int8_t *xs = x + 64 * s;
        for (int j = 0; j < 64; j++) acc += ((int32_t)((w[j] >> (2 * s)) & 3) - 1) * xs[j];
    }
    return acc;
}

static void tile_mm(const uint8_t **w, const int8_t **x, int64_t nb,
                    int32_t out[TERN_TR_MM][TERN_TC_MM]) {
    for (int i = 0; i < TERN_TR_MM; i++)
        for (int j = 0; j < TERN_TC_MM; j++) {
            int32_t acc = 0;
            for (int64_t b = 0; b < nb; b++)
                acc += dot_block(w[i] + b * TERN_BLOCK_BYTES, x[j] + b * TERN_BLOCK);
            out[i][j] = acc;
        }
}

static void tile_mv(const uint8_t **w, const int8_t *x, int64_t nb, int32_t out[TERN_TR_MV]) {
    for (int i = 0; i < TERN_TR_MV; i++) {
        int32_t acc = 0;
        for (int64_t b = 0; b < nb; b++)
            acc += dot_block(w[i] + b * TERN_BLOCK_BYTES, x + b * TERN_BLOCK);
        out[i] = acc;
    }
}

#include "ternary_tiles.h"
