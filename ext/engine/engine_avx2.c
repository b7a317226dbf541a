/* AVX2 + FMA + F16C paths of the engine dot products (compiled with only those flags). */
#include <immintrin.h>
#include "engine.h"

static inline float hsum(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}

float eng_dot_f32_avx2(const float *a, const float *b, int64_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

float eng_dot_i8_avx2(const int8_t *a, const float *b, int64_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m128i q = _mm_loadu_si128((const __m128i *)(a + i));
        __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
        __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8)));
        s0 = _mm256_fmadd_ps(f0, _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(f1, _mm256_loadu_ps(b + i + 8), s1);
    }
    float s = hsum(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += (float)a[i] * b[i];
    return s;
}

/* four rows at a time: per row the partial sums of eng_dot_i8_avx2 (s0: chunks 0, 16, ...;
 * s1: chunks 8, 24, ...; the scalar tail added after the lane sum), the lane sums of the four
 * rows done together (two hadd). */
void eng_dot_i8_rows_avx2(const int8_t *a, int64_t stride, int64_t rows, const float *b,
                          int64_t n, const float *scale, float *out)
{
    int64_t r = 0;
    const int64_t n16 = n / 16 * 16;
    for (; r + 4 <= rows; r += 4) {
        const int8_t *p[4] = {a + r * stride, a + (r + 1) * stride, a + (r + 2) * stride,
                              a + (r + 3) * stride};
        __m256 s0[4], s1[4];
        for (int j = 0; j < 4; j++) s0[j] = s1[j] = _mm256_setzero_ps();
        for (int64_t i = 0; i < n16; i += 16) {
            const __m256 b0 = _mm256_loadu_ps(b + i), b1 = _mm256_loadu_ps(b + i + 8);
            for (int j = 0; j < 4; j++) {
                const __m256 f0 = _mm256_cvtepi32_ps(
                    _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p[j] + i))));
                const __m256 f1 = _mm256_cvtepi32_ps(
                    _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p[j] + i + 8))));
                s0[j] = _mm256_fmadd_ps(f0, b0, s0[j]);
                s1[j] = _mm256_fmadd_ps(f1, b1, s1[j]);
            }
        }
        __m128 t[4];
        for (int j = 0; j < 4; j++) {
            const __m256 v = _mm256_add_ps(s0[j], s1[j]);
            t[j] = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        }
        __m128 sum = _mm_hadd_ps(_mm_hadd_ps(t[0], t[1]), _mm_hadd_ps(t[2], t[3]));
        if (n16 < n) {
            float tail[4];
            _mm_storeu_ps(tail, sum);
            for (int j = 0; j < 4; j++)
                for (int64_t i = n16; i < n; i++) tail[j] += (float)p[j][i] * b[i];
            sum = _mm_loadu_ps(tail);
        }
        _mm_storeu_ps(out + r, _mm_mul_ps(sum, _mm_loadu_ps(scale + r)));
    }
    for (; r < rows; r++) out[r] = eng_dot_i8_avx2(a + r * stride, b, n) * scale[r];
}

float eng_dot_f16_avx2(const uint16_t *a, const float *b, int64_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 f0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i)));
        __m256 f1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i + 8)));
        s0 = _mm256_fmadd_ps(f0, _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(f1, _mm256_loadu_ps(b + i + 8), s1);
    }
    float s = hsum(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += _cvtsh_ss(a[i]) * b[i];
    return s;
}

void eng_axpy_f32_avx2(float a, const float *x, float *y, int64_t n)
{
    const __m256 av = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] = y[i] + a * x[i];
}
