/* Portable C paths of the engine dot products (see engine.h) and the dispatch. */
#include <math.h>
#include <string.h>
#include "engine.h"
#include "poppins_cpu.h"

float eng_half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {                          /* subnormal: normalize */
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400));
            man &= 0x3ff;
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | (man << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

float eng_dot_f32_scalar(const float *a, const float *b, int64_t n)
{
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += a[i + j] * b[i + j];
    for (; i < n; i++) s[0] += a[i] * b[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

float eng_dot_i8_scalar(const int8_t *a, const float *b, int64_t n)
{
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += (float)a[i + j] * b[i + j];
    for (; i < n; i++) s[0] += (float)a[i] * b[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

void eng_dot_i8_rows_scalar(const int8_t *a, int64_t stride, int64_t rows, const float *b,
                            int64_t n, const float *scale, float *out)
{
    for (int64_t r = 0; r < rows; r++) out[r] = eng_dot_i8_scalar(a + r * stride, b, n) * scale[r];
}

float eng_dot_f16_scalar(const uint16_t *a, const float *b, int64_t n)
{
    float s[4] = {0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++) s[j] += eng_half_to_float(a[i + j]) * b[i + j];
    for (; i < n; i++) s[0] += eng_half_to_float(a[i]) * b[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

void eng_axpy_f32_scalar(float a, const float *x, float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = y[i] + a * x[i];
}

/* the softmax-weighted sum of values, as the decode step and the prefill op always did it */
void eng_attend_f32_scalar(const float *q, const float *k, int64_t k_stride, const float *v,
                           int64_t v_stride, int64_t P, int64_t dk, int64_t dv, float scale,
                           float *sc, float *o)
{
    for (int64_t j = 0; j < P; j++) sc[j] = eng_dot_f32(q, k + j * k_stride, dk) * scale;
    eng_softmax_mix_f32(sc, P, v, v_stride, dv, o);
}

void eng_softmax_mix_f32(float *sc, int64_t P, const float *v, int64_t v_stride, int64_t dv,
                         float *o)
{
    float mx = sc[0], z = 0.0f;
    for (int64_t j = 1; j < P; j++)
        if (sc[j] > mx) mx = sc[j];
    for (int64_t c = 0; c < dv; c++) o[c] = 0.0f;
    for (int64_t j = 0; j < P; j++) {
        float p = expf(sc[j] - mx);
        z = z + p;
        eng_axpy_f32(p, v + j * v_stride, o, dv);
    }
    float inv = 1.0f / z;
    for (int64_t c = 0; c < dv; c++) o[c] = o[c] * inv;
}

typedef void (*axpy_fn)(float, const float *, float *, int64_t);
typedef void (*attend_fn)(const float *, const float *, int64_t, const float *, int64_t, int64_t,
                          int64_t, int64_t, float, float *, float *);
typedef float (*dot_f32_fn)(const float *, const float *, int64_t);
typedef float (*dot_i8_fn)(const int8_t *, const float *, int64_t);
typedef float (*dot_f16_fn)(const uint16_t *, const float *, int64_t);
typedef void (*dot_i8_rows_fn)(const int8_t *, int64_t, int64_t, const float *, int64_t,
                               const float *, float *);

static dot_f32_fn p_f32 = eng_dot_f32_scalar;
static dot_i8_fn p_i8 = eng_dot_i8_scalar;
static dot_f16_fn p_f16 = eng_dot_f16_scalar;
static axpy_fn p_axpy = eng_axpy_f32_scalar;
static dot_i8_rows_fn p_i8rows = eng_dot_i8_rows_scalar;
static attend_fn p_attend = eng_attend_f32_scalar;
static int cur = -1;

int eng_kernel_available(int kernel)
{
    if (kernel == ENG_SCALAR) return 1;
#ifdef POPPINS_HAVE_AVX2
    /* the one CPU check (poppins_cpu.h) against the features the unit is compiled for */
    if (kernel == ENG_AVX2) return pp_cpu_has(POPPINS_NEED_AVX2);
#endif
    return 0;
}

int eng_set_kernel(int kernel)
{
    if (kernel < 0 || kernel >= ENG_NKERNELS || !eng_kernel_available(kernel)) return -1;
    if (kernel == ENG_SCALAR) {
        p_f32 = eng_dot_f32_scalar; p_i8 = eng_dot_i8_scalar; p_f16 = eng_dot_f16_scalar;
        p_axpy = eng_axpy_f32_scalar; p_i8rows = eng_dot_i8_rows_scalar;
        p_attend = eng_attend_f32_scalar;
    }
#ifdef POPPINS_HAVE_AVX2
    if (kernel == ENG_AVX2) {
        p_f32 = eng_dot_f32_avx2; p_i8 = eng_dot_i8_avx2; p_f16 = eng_dot_f16_avx2;
        p_axpy = eng_axpy_f32_avx2; p_i8rows = eng_dot_i8_rows_avx2;
        p_attend = eng_attend_f32_avx2;
    }
#endif
    cur = kernel;
    return 0;
}

long eng_kernel_needs(int kernel)
{
    if (kernel == ENG_SCALAR) return 0;
#ifdef POPPINS_HAVE_AVX2
    if (kernel == ENG_AVX2) return POPPINS_NEED_AVX2;
#endif
    return -1;
}

int eng_init(void)
{
    if (cur < 0) eng_set_kernel(eng_kernel_available(ENG_AVX2) ? ENG_AVX2 : ENG_SCALAR);
    return cur;
}

int eng_kernel(void) { return cur; }

const char *eng_kernel_name(int kernel)
{
    static const char *names[] = {"scalar", "avx2"};
    return (kernel >= 0 && kernel < ENG_NKERNELS) ? names[kernel] : NULL;
}

float eng_dot_f32(const float *a, const float *b, int64_t n) { return p_f32(a, b, n); }
float eng_dot_i8(const int8_t *a, const float *b, int64_t n) { return p_i8(a, b, n); }
float eng_dot_f16(const uint16_t *a, const float *b, int64_t n) { return p_f16(a, b, n); }
void eng_axpy_f32(float a, const float *x, float *y, int64_t n) { p_axpy(a, x, y, n); }
void eng_dot_i8_rows(const int8_t *a, int64_t stride, int64_t rows, const float *b, int64_t n,
                     const float *scale, float *out)
{
    p_i8rows(a, stride, rows, b, n, scale, out);
}
void eng_attend_f32(const float *q, const float *k, int64_t k_stride, const float *v,
                    int64_t v_stride, int64_t P, int64_t dk, int64_t dv, float scale, float *sc,
                    float *o)
{
    p_attend(q, k, k_stride, v, v_stride, P, dk, dv, scale, sc, o);
}
