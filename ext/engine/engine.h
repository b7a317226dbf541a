/* poppins engine ops: the dot products behind the output head and attention.
 *
 * eng_dot_f32 / eng_dot_i8 / eng_dot_f16 return sum_i a[i] * b[i] in float32 (a as float32,
 * float16 or int8 values; b float32), with 8-16 independent partial sums (the order differs
 * from a sequential sum, as any SIMD dot product does).  eng_init() picks the best path the
 * CPU runs (the AVX2 unit when compiled in and the CPU has its features, POPPINS_NEED_AVX2 of
 * poppins/_isa.py, else portable C); no environment is
 * read here: eng_set_kernel() forces a path.
 */
#ifndef POPPINS_ENGINE_H
#define POPPINS_ENGINE_H

#include <stdint.h>

enum { ENG_SCALAR = 0, ENG_AVX2 = 1, ENG_NKERNELS = 2 };

int eng_init(void);
int eng_kernel(void);
int eng_kernel_available(int kernel);
int eng_set_kernel(int kernel);         /* 0 ok, -1 not available */
const char *eng_kernel_name(int kernel);
/* The PP_CPU_* feature mask path `kernel` needs (0: scalar); -1 when not compiled in. */
long eng_kernel_needs(int kernel);

float eng_dot_f32(const float *a, const float *b, int64_t n);
float eng_dot_i8(const int8_t *a, const float *b, int64_t n);
float eng_dot_f16(const uint16_t *a, const float *b, int64_t n);
/* out[r] = eng_dot_i8(a + r * stride, b, n) * scale[r] for r in [0, rows): the int8 output
 * head, several rows at a time (the same partial sums per row; only the final lane sum may
 * differ in order from eng_dot_i8's).  One row's dot product is a chain of dependent FMAs
 * (latency-bound at d = 256: 16 steps x 4 cycles); four rows side by side keep eight chains
 * in flight and share the loads of b. */
void eng_dot_i8_rows(const int8_t *a, int64_t stride, int64_t rows, const float *b, int64_t n,
                     const float *scale, float *out);
float eng_half_to_float(uint16_t h);
/* y[i] += a * x[i] (the attention's weighted sum of values) */
void eng_axpy_f32(float a, const float *x, float *y, int64_t n);
/* One query of causal softmax attention over P cached positions:
 *     sc[j] = (q . k[j]) * scale,  p = softmax(sc),  o[:dv] = sum_j p[j] v[j]
 * (k[j] = k + j * k_stride, dk floats; v[j] = v + j * v_stride, dv floats; sc: P floats of
 * scratch, left holding exp(sc[j] - max)).  The portable path is the dot / expf / axpy loop;
 * the AVX2 one scores four keys at a time, takes exp with a vectorized polynomial (within 2
 * ulp of expf) and mixes the values in register blocks of 32 columns. */
void eng_attend_f32(const float *q, const float *k, int64_t k_stride, const float *v,
                    int64_t v_stride, int64_t P, int64_t dk, int64_t dv, float scale, float *sc,
                    float *o);

/* The portable second half of eng_attend_f32 on scores already in sc[:P]:
 * o[:dv] = softmax(sc) . v (sc left holding exp(sc[j] - max)); MLA's decode step calls it
 * on its latent scores. */
void eng_softmax_mix_f32(float *sc, int64_t P, const float *v, int64_t v_stride, int64_t dv,
                         float *o);

/* out[k] = max(u[k], 0)^2 (a NaN passes through, as np.maximum does): the squared-ReLU row of
 * the FFN.  gcc keeps a compare-and-branch for the scalar select, which mispredicts half the
 * time on activations of random sign (5x slower than the quantizer after it), hence the
 * explicit SSE max: maxps(0, v) returns v when v is a NaN, and +0 or -0 for v <= 0. */
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
static inline void eng_relu2_row(const float *u, int64_t d, float *out)
{
    int64_t k = 0;
#if defined(__SSE2__)
    const __m128 z = _mm_setzero_ps();
    for (; k + 4 <= d; k += 4) {
        const __m128 r = _mm_max_ps(z, _mm_loadu_ps(u + k));
        _mm_storeu_ps(out + k, _mm_mul_ps(r, r));
    }
#endif
    for (; k < d; k++) {
        const float v = u[k];
        const float r = v < 0.0f ? 0.0f : v;
        out[k] = r * r;
    }
}

/* per-path implementations */
float eng_dot_f32_scalar(const float *a, const float *b, int64_t n);
float eng_dot_i8_scalar(const int8_t *a, const float *b, int64_t n);
float eng_dot_f16_scalar(const uint16_t *a, const float *b, int64_t n);
void eng_dot_i8_rows_scalar(const int8_t *a, int64_t stride, int64_t rows, const float *b,
                            int64_t n, const float *scale, float *out);
void eng_axpy_f32_scalar(float a, const float *x, float *y, int64_t n);
void eng_attend_f32_scalar(const float *q, const float *k, int64_t k_stride, const float *v,
                           int64_t v_stride, int64_t P, int64_t dk, int64_t dv, float scale,
                           float *sc, float *o);
#ifdef POPPINS_HAVE_AVX2
void eng_axpy_f32_avx2(float a, const float *x, float *y, int64_t n);
void eng_attend_f32_avx2(const float *q, const float *k, int64_t k_stride, const float *v,
                         int64_t v_stride, int64_t P, int64_t dk, int64_t dv, float scale,
                         float *sc, float *o);
float eng_dot_f32_avx2(const float *a, const float *b, int64_t n);
float eng_dot_i8_avx2(const int8_t *a, const float *b, int64_t n);
float eng_dot_f16_avx2(const uint16_t *a, const float *b, int64_t n);
void eng_dot_i8_rows_avx2(const int8_t *a, int64_t stride, int64_t rows, const float *b,
                          int64_t n, const float *scale, float *out);
#endif
#endif
