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
 * rows done together (two hadd).  The head is four short streams at once, which the hardware
 * prefetcher follows poorly: each 64-byte step of the four rows prefetches the same columns
 * whole rows ahead, about ENG_HEAD_PF_BYTES on (at least four rows; a prefetch past the end
 * of the table is only a hint, never a fault).  On a Zen 3 EPYC the 400M model's head (8192 x
 * 1024) went from 0.85 to 0.48 ms a token (9.9 to 17.5 GB/s), the 1B one's (8192 x 2048)
 * from 1.36 to 1.03 ms. */
#define ENG_HEAD_PF_BYTES 16384
void eng_dot_i8_rows_avx2(const int8_t *a, int64_t stride, int64_t rows, const float *b,
                          int64_t n, const float *scale, float *out)
{
    int64_t r = 0;
    const int64_t n16 = n / 16 * 16;
    int64_t rows_ahead = stride > 0 ? ENG_HEAD_PF_BYTES / stride : 4;
    if (rows_ahead < 4) rows_ahead = 4;
    const int64_t ahead = rows_ahead * stride;
    for (; r + 4 <= rows; r += 4) {
        const int8_t *p[4] = {a + r * stride, a + (r + 1) * stride, a + (r + 2) * stride,
                              a + (r + 3) * stride};
        __m256 s0[4], s1[4];
        for (int j = 0; j < 4; j++) s0[j] = s1[j] = _mm256_setzero_ps();
        for (int64_t i = 0; i < n16; i += 16) {
            const __m256 b0 = _mm256_loadu_ps(b + i), b1 = _mm256_loadu_ps(b + i + 8);
            if ((i & 63) == 0)
                for (int j = 0; j < 4; j++) _mm_prefetch((const char *)(p[j] + i + ahead), _MM_HINT_T0);
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

/* exp(x) for x <= 0 (the softmax's sc - max), Cephes' expf: n = round(x log2 e),
 * r = x - n ln 2 (in two parts), exp(r) by its degree-6 polynomial, times 2^n.  Within 2 ulp
 * of expf for x >= -87.3; below that (where expf is subnormal or 0) it returns 0. */
static inline __m256 exp_neg_ps(__m256 x)
{
    const __m256 lo = _mm256_set1_ps(-87.33654f);
    const __m256 tiny = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(x, lo);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* 2^n for n in [-126, 0]: the exponent field n + 127 */
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    p = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    return _mm256_andnot_ps(tiny, p);
}

static inline float exp_neg_1(float x)
{
    float t[8];
    _mm256_storeu_ps(t, exp_neg_ps(_mm256_set1_ps(x)));
    return t[0];
}

static inline __m128 hsum_ps_x4(__m256 a, __m256 b, __m256 c, __m256 d)
{
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

void eng_attend_f32_avx2(const float *q, const float *k, int64_t k_stride, const float *v,
                         int64_t v_stride, int64_t P, int64_t dk, int64_t dv, float scale,
                         float *sc, float *o)
{
    if (dk % 8 || dv % 8) {   /* (head widths are multiples of 8 in practice) */
        eng_attend_f32_scalar(q, k, k_stride, v, v_stride, P, dk, dv, scale, sc, o);
        return;
    }
    /* scores, four keys at a time */
    const __m128 sc4 = _mm_set1_ps(scale);
    int64_t j = 0;
    for (; j + 4 <= P; j += 4) {
        const float *k0 = k + j * k_stride, *k1 = k0 + k_stride, *k2 = k1 + k_stride,
                    *k3 = k2 + k_stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t i = 0; i < dk; i += 8) {
            const __m256 qv = _mm256_loadu_ps(q + i);
            a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + i), a0);
            a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k1 + i), a1);
            a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k2 + i), a2);
            a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k3 + i), a3);
        }
        _mm_storeu_ps(sc + j, _mm_mul_ps(hsum_ps_x4(a0, a1, a2, a3), sc4));
    }
    for (; j < P; j++) {
        const float *kj = k + j * k_stride;
        __m256 a0 = _mm256_setzero_ps();
        for (int64_t i = 0; i < dk; i += 8)
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(kj + i), a0);
        sc[j] = hsum(a0) * scale;
    }
    /* max, exp, sum */
    float mx = sc[0];
    for (j = 1; j < P; j++)
        if (sc[j] > mx) mx = sc[j];
    const __m256 mxv = _mm256_set1_ps(mx);
    __m256 zv = _mm256_setzero_ps();
    for (j = 0; j + 8 <= P; j += 8) {
        const __m256 e = exp_neg_ps(_mm256_sub_ps(_mm256_loadu_ps(sc + j), mxv));
        _mm256_storeu_ps(sc + j, e);
        zv = _mm256_add_ps(zv, e);
    }
    float z = hsum(zv);
    for (; j < P; j++) {
        sc[j] = exp_neg_1(sc[j] - mx);
        z += sc[j];
    }
    /* o = sum_j p_j v_j / z, 32 columns (four registers) at a time */
    const __m256 inv = _mm256_set1_ps(1.0f / z);
    int64_t c = 0;
    for (; c + 32 <= dv; c += 32) {
        __m256 o0 = _mm256_setzero_ps(), o1 = o0, o2 = o0, o3 = o0;
        const float *vc = v + c;
        for (j = 0; j < P; j++, vc += v_stride) {
            const __m256 p = _mm256_broadcast_ss(sc + j);
            o0 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vc), o0);
            o1 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vc + 8), o1);
            o2 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vc + 16), o2);
            o3 = _mm256_fmadd_ps(p, _mm256_loadu_ps(vc + 24), o3);
        }
        _mm256_storeu_ps(o + c, _mm256_mul_ps(o0, inv));
        _mm256_storeu_ps(o + c + 8, _mm256_mul_ps(o1, inv));
        _mm256_storeu_ps(o + c + 16, _mm256_mul_ps(o2, inv));
        _mm256_storeu_ps(o + c + 24, _mm256_mul_ps(o3, inv));
    }
    for (; c < dv; c += 8) {
        __m256 o0 = _mm256_setzero_ps();
        const float *vc = v + c;
        for (j = 0; j < P; j++, vc += v_stride)
            o0 = _mm256_fmadd_ps(_mm256_broadcast_ss(sc + j), _mm256_loadu_ps(vc), o0);
        _mm256_storeu_ps(o + c, _mm256_mul_ps(o0, inv));
    }
}
