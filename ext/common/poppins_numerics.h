/* The one C definition of the numerics shared by training (ext/ops), the ternary module
 * (ext/ternary) and the decode step (ext/engine): the per-row int8 activation quantizer,
 * RMSNorm and half-split RoPE.  The NumPy reference of each is in poppins/numerics.py; tests
 * compare every compiled path with it (codes exactly).
 *
 * QUANTIZER, THE clamp rule (the training rule: the model was trained with it):
 *     m = max(max|y|, PP_QUANT_EPS)    PP_QUANT_EPS = 1e-5, in the element type R
 *     s = 127 / m                      in R
 *     q = clip(round_half_even(y * s), -128, 127)
 * Training dequantizes q / s; the engine keeps the int8 codes and s.  A row with
 * max|y| < 1e-5 (an all-zero row too) gets s = 127 / 1e-5, so 127 / m never overflows and
 * |y * s| <= 127 (+ rounding) always: the rounding below only ever sees |v| < 2^22.
 *
 * round_half_even(v) = (v + 1.5 * 2^23) - 1.5 * 2^23 in float (2^52 in double): exact
 * round-half-to-even for |v| < 2^22 (2^51) in the default rounding mode, equal to rintf /
 * np.rint there, and it vectorizes on every ISA.  Every file including this is compiled with
 * -std=c11 (no FP contraction) and never with -ffast-math.
 *
 * RMSNorm: y = (x * r) * g with r = (R)(1 / sqrt(mean(x^2) + eps)), the mean of squares
 * accumulated in double (any order: SIMD partial sums may differ in the last bits from
 * NumPy's pairwise sum, hence a float tolerance in the tests).
 *
 * RoPE: for the pairs (i, i + half): a' = a c - b s, b' = a s + b c (c, s of one position).
 *
 * The functions are static inline and written for float (f32) and double (f64) by one macro,
 * so each SIMD unit compiles them with its own flags; max is exact in any order, so the
 * vectorized absmax gives the same result as a sequential one.
 */
#ifndef POPPINS_NUMERICS_H
#define POPPINS_NUMERICS_H

#include <math.h>
#include <stdint.h>

#define PP_QUANT_EPS 1e-5

static inline float pp_round_even_f32(float v) {
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    float t = v + magic;
    return t - magic;
}
static inline double pp_round_even_f64(double v) {
    const double magic = 6755399441055744.0; /* 1.5 * 2^52 */
    double t = v + magic;
    return t - magic;
}

/* "#pragma omp simd ..." when OpenMP is on (a hint only: the results do not depend on it) */
#ifdef _OPENMP
#define PP_OMP_(x) _Pragma(#x)
#define PP_OMP(x) PP_OMP_(omp x)
#else
#define PP_OMP(x)
#endif

#define PP_NUMERICS_DEFINE(R, S)                                                              \
    /* max_i |y[i]| (0 for d == 0) */                                                        \
    static inline R pp_absmax_##S(const R *y, int64_t d) {                                   \
        R m = 0;                                                                             \
        PP_OMP(simd reduction(max : m))                                               \
        for (int64_t j = 0; j < d; j++) {                                                    \
            R a = y[j] < 0 ? -y[j] : y[j];                                                   \
            m = a > m ? a : m;                                                               \
        }                                                                                    \
        return m;                                                                            \
    }                                                                                        \
    /* s = 127 / max(amax, 1e-5): THE clamp rule */                                          \
    static inline R pp_quant_scale_##S(R amax) {                                             \
        R m = amax < (R)PP_QUANT_EPS ? (R)PP_QUANT_EPS : amax;                               \
        return (R)127.0 / m;                                                                 \
    }                                                                                        \
    /* the code of one value, as R: clip(round_half_even(v * s), -128, 127) */               \
    static inline R pp_quant_code_##S(R v, R s) {                                            \
        R q = pp_round_even_##S(v * s);                                                      \
        q = q < (R)-128 ? (R)-128 : q;                                                       \
        return q > (R)127 ? (R)127 : q;                                                      \
    }                                                                                        \
    /* int8 codes of one row; returns its scale s */                                         \
    static inline R pp_quant_row_##S(const R *y, int64_t d, int8_t *q) {                     \
        const R s = pp_quant_scale_##S(pp_absmax_##S(y, d));                                 \
        PP_OMP(simd)                                                                  \
        for (int64_t j = 0; j < d; j++) q[j] = (int8_t)(int)pp_quant_code_##S(y[j], s);     \
        return s;                                                                            \
    }                                                                                        \
    /* quantize + dequantize one row in place: y = q / s (training's fake quantization) */    \
    static inline void pp_quant_dequant_row_##S(R *y, int64_t d) {                           \
        const R s = pp_quant_scale_##S(pp_absmax_##S(y, d));                                 \
        PP_OMP(simd)                                                                  \
        for (int64_t j = 0; j < d; j++) y[j] = pp_quant_code_##S(y[j], s) / s;               \
    }                                                                                        \
    /* r = 1 / sqrt(mean(x^2) + eps), the mean in double */                                  \
    static inline R pp_rstd_##S(const R *x, int64_t d, double eps) {                         \
        double ss = 0;                                                                       \
        PP_OMP(simd reduction(+ : ss))                                                \
        for (int64_t j = 0; j < d; j++) ss += (double)x[j] * (double)x[j];                   \
        return (R)(1.0 / sqrt(ss / (double)d + eps));                                        \
    }                                                                                        \
    /* y = (x * r) * g (y may be x); returns r */                                            \
    static inline R pp_rms_row_##S(const R *x, const R *g, int64_t d, double eps, R *y) {    \
        const R r = pp_rstd_##S(x, d, eps);                                                  \
        PP_OMP(simd)                                                                  \
        for (int64_t j = 0; j < d; j++) y[j] = (x[j] * r) * g[j];                            \
        return r;                                                                            \
    }                                                                                        \
    /* rotate the half-split pairs (a[i], b[i]) by the angle of (c[i], s[i]); inverse:   */  \
    /* by the opposite angle (sin negated, exactly) -- the backward pass of training       */  \
    static inline void pp_rope_pairs_##S(R *a, R *b, const R *c, const R *s, int64_t half,   \
                                         int inverse) {                                      \
        const R sg = inverse ? (R)-1 : (R)1;                                                 \
        PP_OMP(simd)                                                                  \
        for (int64_t j = 0; j < half; j++) {                                                 \
            R aa = a[j], bb = b[j], sn = sg * s[j];                                          \
            a[j] = aa * c[j] - bb * sn;                                                      \
            b[j] = aa * sn + bb * c[j];                                                      \
        }                                                                                    \
    }

PP_NUMERICS_DEFINE(float, f32)
PP_NUMERICS_DEFINE(double, f64)

#endif
