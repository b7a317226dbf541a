/* Template of the fused kernels, included by ops_scalar.c / ops_avx2.c / ops_avx512.c once
 * per element type.  Before including, define:
 *   PP_R    the element type (float or double)
 *   PP_S    its suffix (f32 or f64)
 *   PP_ISA  the path (scalar, avx2, avx512)
 * Loops are written so the compiler vectorizes them (omp simd where a reduction is needed);
 * the operation order of element-wise formulas follows poppins/model/reference.py so the
 * results agree bit for bit where the reference does the same float operations.
 * Reductions are combined in a fixed order, so results depend only on the thread count. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "poppins_common.h"
#include "poppins_numerics.h"

#define PP_CAT_(a, b, c, d) pp_##a##_##b##_##c
#define PP_CAT(a, b, c) PP_CAT_(a, b, c, 0)
#define FN(name) PP_CAT(name, PP_S, PP_ISA)

#ifndef PP_OPS_COMMON_ONCE
#define PP_OPS_COMMON_ONCE
/* exp for float: Cephes-style range reduction + degree-6 polynomial (max rel. error ~2e-7);
 * branch-free so loops over it vectorize. */
static inline float pp_fexp(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = rintf(x * 1.44269504088896341f);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &e, sizeof s);
    return p * s;
}
static inline float pp_exp_f32(float x) { return pp_fexp(x); }
static inline double pp_exp_f64(double x) { return exp(x); }
static inline float pp_rint_f32(float x) { return rintf(x); }
static inline double pp_rint_f64(double x) { return rint(x); }
static inline float pp_sqrt_f32(float x) { return sqrtf(x); }
static inline float pp_abs_f32(float x) { return fabsf(x); }
static inline double pp_abs_f64(double x) { return fabs(x); }
static inline double pp_sqrt_f64(double x) { return sqrt(x); }
/* Parallel regions only pay off above PP_PAR_MIN_ELEMENTS (poppins_common.h, from
 * poppins/threads.py) elements of work; below, run on one thread (the result does not depend
 * on it except for the documented reduction order). */
#define PP_PAR_IF(nt, work) num_threads(poppins_threads(nt)) if ((long long)(work) >= PP_PAR_MIN_ELEMENTS)
static inline int pp_tid(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}
static inline int pp_nthreads(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}
#endif

#define PP_SEL_(f, s) f##_##s
#define PP_SEL(f, s) PP_SEL_(f, s)
#define EXP PP_SEL(pp_exp, PP_S)
#define RINT PP_SEL(pp_rint, PP_S)
#define SQRT PP_SEL(pp_sqrt, PP_S)
#define ABS PP_SEL(pp_abs, PP_S)

typedef PP_R FN(real);
#define R FN(real)

/* Quantize+dequantize one row in place: the one quantizer of poppins_numerics.h
 * (s = 127 / max(max|y|, 1e-5), y = clip(round_half_even(y * s), -128, 127) / s). */
static inline void FN(quant_row)(R *y, long d) { PP_SEL(pp_quant_dequant_row, PP_S)(y, d); }

static void FN(act_quant)(const R *x, long ldx, R *out, long ldo, long n, long d, int nt) {
#pragma omp parallel for PP_PAR_IF(nt, n * d) schedule(static)
    for (long i = 0; i < n; i++) {
        const R *xi = x + i * ldx;
        R *oi = out + i * ldo;
        if (oi != xi) memcpy(oi, xi, (size_t)d * sizeof(R));
        FN(quant_row)(oi, d);
    }
}

static void FN(rmsnorm_quant_fwd)(const R *x, long ldx, const R *g, R *out, long ldo, R *rstd,
                                  long n, long d, double eps, int quant, int nt) {
#pragma omp parallel for PP_PAR_IF(nt, n * d) schedule(static)
    for (long i = 0; i < n; i++) {
        const R *xi = x + i * ldx;
        R *oi = out + i * ldo;
        rstd[i] = PP_SEL(pp_rms_row, PP_S)(xi, g, d, eps, oi);
        if (quant) FN(quant_row)(oi, d);
    }
}

static void FN(rmsnorm_bwd)(const R *x, long ldx, const R *g, const R *rstd, const R *dy,
                            long lddy, R *dx, long lddx, R *dg, long n, long d, int acc, int nt) {
    int T = poppins_threads(nt);
    double *part = (double *)calloc((size_t)T * (size_t)d, sizeof(double));
    int used = 1;
#pragma omp parallel PP_PAR_IF(nt, n * d)
    {
        int t = pp_tid(), nth = pp_nthreads();
        if (t == 0) used = nth;
        long lo = n * t / nth, hi = n * (t + 1) / nth;
        double *pg = part + (size_t)t * (size_t)d;
        for (long i = lo; i < hi; i++) {
            const R *xi = x + i * ldx, *dyi = dy + i * lddy;
            R *dxi = dx + i * lddx;
            R r = rstd[i];
            double c = 0;
#pragma omp simd reduction(+ : c)
            for (long j = 0; j < d; j++) {
                R xh = xi[j] * r;
                R gd = dyi[j] * g[j];
                c += (double)(gd * xh);
                pg[j] += (double)(dyi[j] * xh);
            }
            R cm = (R)(c / (double)d);
            if (acc) {
#pragma omp simd
                for (long j = 0; j < d; j++) {
                    R xh = xi[j] * r;
                    dxi[j] += r * (dyi[j] * g[j] - xh * cm);
                }
            } else {
#pragma omp simd
                for (long j = 0; j < d; j++) {
                    R xh = xi[j] * r;
                    dxi[j] = r * (dyi[j] * g[j] - xh * cm);
                }
            }
        }
    }
    for (long j = 0; j < d; j++) {
        double s = 0;
        for (int t = 0; t < used; t++) s += part[(size_t)t * (size_t)d + j];
        dg[j] = (R)s;
    }
    free(part);
}

static void FN(relu2_quant_fwd)(const R *u, long ldu, R *out, long ldo, long n, long d,
                                int quant, int nt) {
#pragma omp parallel for PP_PAR_IF(nt, n * d) schedule(static)
    for (long i = 0; i < n; i++) {
        const R *ui = u + i * ldu;
        R *oi = out + i * ldo;
#pragma omp simd
        for (long j = 0; j < d; j++) {
            R r = ui[j] > 0 ? ui[j] : (R)0;
            oi[j] = r * r;
        }
        if (quant) FN(quant_row)(oi, d);
    }
}

static void FN(relu2_bwd)(const R *u, long ldu, const R *dy, long lddy, R *du, long lddu,
                          long n, long d, int nt) {
#pragma omp parallel for PP_PAR_IF(nt, n * d) schedule(static)
    for (long i = 0; i < n; i++) {
        const R *ui = u + i * ldu, *dyi = dy + i * lddy;
        R *dui = du + i * lddu;
#pragma omp simd
        for (long j = 0; j < d; j++) {
            R r = ui[j] > 0 ? ui[j] : (R)0;
            dui[j] = dyi[j] * ((R)2 * r);
        }
    }
}

static double FN(weight_quant)(const R *w, R *out, long n, int nt) {
    int T = poppins_threads(nt);
    double *part = (double *)calloc((size_t)T, sizeof(double));
    int used = 1;
#pragma omp parallel PP_PAR_IF(nt, n)
    {
        int t = pp_tid(), nth = pp_nthreads();
        if (t == 0) used = nth;
        long lo = n * t / nth, hi = n * (t + 1) / nth;
        double s = 0;
#pragma omp simd reduction(+ : s)
        for (long i = lo; i < hi; i++) s += (double)ABS(w[i]);
        part[t] = s;
    }
    double tot = 0;
    for (int t = 0; t < used; t++) tot += part[t];
    free(part);
    double scale = n > 0 ? tot / (double)n : 0.0;
    if (scale < PP_QUANT_EPS) scale = PP_QUANT_EPS;
    R s = (R)scale;
#pragma omp parallel for simd PP_PAR_IF(nt, n) schedule(static)
    for (long i = 0; i < n; i++) {
        R q = RINT(w[i] / s);
        q = q < (R)-1 ? (R)-1 : q;
        q = q > (R)1 ? (R)1 : q;
        out[i] = q * s;
    }
    return scale;
}

static void FN(rope)(R *x, long ldx, long n, const R *cos, const R *sin, long half, long seq_len,
                     long nheads, long head_stride, long offset, int inverse, int nt) {
#pragma omp parallel for PP_PAR_IF(nt, n * nheads * half) schedule(static)
    for (long i = 0; i < n; i++) {
        long pos = i % seq_len;
        const R *c = cos + pos * half, *s = sin + pos * half;
        for (long h = 0; h < nheads; h++) {
            R *a = x + i * ldx + h * head_stride + offset;
            PP_SEL(pp_rope_pairs, PP_S)(a, a + half, c, s, half, inverse);
        }
    }
}

/* Copy the T x w block of rows (stride ld) into its transpose (w x T, contiguous). */
static inline void FN(transpose)(const R *src, long ld, R *dst, long T, long w) {
    for (long j = 0; j < T; j++) {
        const R *row = src + j * ld;
        for (long c = 0; c < w; c++) dst[c * T + j] = row[c];
    }
}

static int FN(attn_fwd_loop)(const R *q, long ldq, const R *k, long ldk, const R *v, long ldv, R *o,
                        long ldo, R *lse, const int32_t *seg_start, long B, long T, long H,
                        long Hk, long dqk, long dv, double scale, int nt) {
    long grp = H / Hk;
    int err = 0;
    const R sc = (R)scale;
#pragma omp parallel PP_PAR_IF(nt, B * H * T * T * dqk / 2)
    {
        R *kt = (R *)malloc(sizeof(R) * (size_t)(dqk * T + 4 * T + 8));
        R *s = kt + dqk * T;
        if (!kt) {
#pragma omp atomic write
            err = 1;
        } else {
#pragma omp for schedule(dynamic, 1)
            for (long task = 0; task < B * H; task++) {
                long b = task / H, h = task % H, hk = h / grp;
                FN(transpose)(k + b * T * ldk + hk * dqk, ldk, kt, T, dqk);
                for (long i = 0; i < T; i++) {
                    long st = seg_start[b * T + i];
                    const R *qi = q + (b * T + i) * ldq + h * dqk;
                    for (long j = st; j <= i; j++) s[j] = 0;
                    for (long c = 0; c < dqk; c++) {
                        R qc = qi[c];
                        const R *kc = kt + c * T;
#pragma omp simd
                        for (long j = st; j <= i; j++) s[j] += qc * kc[j];
                    }
                    R m = -INFINITY;
                    for (long j = st; j <= i; j++) {
                        s[j] *= sc;
                        m = s[j] > m ? s[j] : m;
                    }
                    R z = 0;
#pragma omp simd reduction(+ : z)
                    for (long j = st; j <= i; j++) {
                        s[j] = EXP(s[j] - m);
                        z += s[j];
                    }
                    R *oi = o + (b * T + i) * ldo + h * dv;
                    for (long c = 0; c < dv; c++) oi[c] = 0;
                    for (long j = st; j <= i; j++) {
                        R pj = s[j];
                        const R *vj = v + (b * T + j) * ldv + hk * dv;
#pragma omp simd
                        for (long c = 0; c < dv; c++) oi[c] += pj * vj[c];
                    }
                    R inv = (R)1 / z;
#pragma omp simd
                    for (long c = 0; c < dv; c++) oi[c] *= inv;
                    lse[(b * H + h) * T + i] = m + (R)log((double)z);
                }
            }
            free(kt);
        }
    }
    return err ? -1 : 0;
}

static int FN(attn_bwd_loop)(const R *q, long ldq, const R *k, long ldk, const R *v, long ldv,
                        const R *o, long ldo, const R *lse, const R *dout, long lddo, R *dq,
                        long lddq, R *dk, long lddk, R *dvv, long lddv, const int32_t *seg_start,
                        long B, long T, long H, long Hk, long dqk, long dv, double scale,
                        int nt) {
    long grp = H / Hk;
    int err = 0;
    const R sc = (R)scale;
#pragma omp parallel PP_PAR_IF(nt, B * H * T * T * dqk)
    {
        R *kt = (R *)malloc(sizeof(R) * (size_t)((dqk + dv) * T + 2 * T + dqk + 8));
        if (!kt) {
#pragma omp atomic write
            err = 1;
        } else {
            R *vt = kt + dqk * T;
            R *s = vt + dv * T;
            R *dp = s + T;
            R *dql = dp + T;
#pragma omp for schedule(dynamic, 1)
            for (long task = 0; task < B * Hk; task++) {
                long b = task / Hk, hk = task % Hk;
                for (long j = 0; j < T; j++) {
                    memset(dk + (b * T + j) * lddk + hk * dqk, 0, sizeof(R) * (size_t)dqk);
                    memset(dvv + (b * T + j) * lddv + hk * dv, 0, sizeof(R) * (size_t)dv);
                }
                FN(transpose)(k + b * T * ldk + hk * dqk, ldk, kt, T, dqk);
                FN(transpose)(v + b * T * ldv + hk * dv, ldv, vt, T, dv);
                for (long h = hk * grp; h < (hk + 1) * grp; h++) {
                    for (long i = 0; i < T; i++) {
                        long st = seg_start[b * T + i];
                        const R *qi = q + (b * T + i) * ldq + h * dqk;
                        const R *oi = o + (b * T + i) * ldo + h * dv;
                        const R *doi = dout + (b * T + i) * lddo + h * dv;
                        R D = 0;
#pragma omp simd reduction(+ : D)
                        for (long c = 0; c < dv; c++) D += doi[c] * oi[c];
                        for (long j = st; j <= i; j++) { s[j] = 0; dp[j] = 0; }
                        for (long c = 0; c < dqk; c++) {
                            R qc = qi[c];
                            const R *kc = kt + c * T;
#pragma omp simd
                            for (long j = st; j <= i; j++) s[j] += qc * kc[j];
                        }
                        for (long c = 0; c < dv; c++) {
                            R dc = doi[c];
                            const R *vc = vt + c * T;
#pragma omp simd
                            for (long j = st; j <= i; j++) dp[j] += dc * vc[j];
                        }
                        R L = lse[(b * H + h) * T + i];
#pragma omp simd
                        for (long j = st; j <= i; j++) {
                            R p = EXP(s[j] * sc - L);
                            s[j] = p;
                            dp[j] = p * (dp[j] - D) * sc;
                        }
                        for (long c = 0; c < dqk; c++) dql[c] = 0;
                        for (long j = st; j <= i; j++) {
                            R pj = s[j], dsj = dp[j];
                            R *dvj = dvv + (b * T + j) * lddv + hk * dv;
                            R *dkj = dk + (b * T + j) * lddk + hk * dqk;
                            const R *kj = k + (b * T + j) * ldk + hk * dqk;
#pragma omp simd
                            for (long c = 0; c < dv; c++) dvj[c] += pj * doi[c];
#pragma omp simd
                            for (long c = 0; c < dqk; c++) {
                                dql[c] += dsj * kj[c];
                                dkj[c] += dsj * qi[c];
                            }
                        }
                        R *dqi = dq + (b * T + i) * lddq + h * dqk;
                        memcpy(dqi, dql, sizeof(R) * (size_t)dqk);
                    }
                }
            }
            free(kt);
        }
    }
    return err ? -1 : 0;
}

#define GEMM1 PP_SEL(pp_gemm1, PP_S)
#define PP_BQ 64L

/* Attention by query blocks of PP_BQ rows: S = scale * Q_blk K^T over the keys the block can
 * see (from the segment start of its first row to its last row), masked softmax, O = P V. */
static int FN(attn_fwd_blas)(const R *q, long ldq, const R *k, long ldk, const R *v, long ldv,
                             R *o, long ldo, R *lse, const int32_t *seg_start, long B, long T,
                             long H, long Hk, long dqk, long dv, double scale, int nt) {
    long grp = H / Hk;
    int err = 0;
#pragma omp parallel PP_PAR_IF(nt, B * H * T * T * dqk / 2)
    {
        R *S = (R *)malloc(sizeof(R) * (size_t)(PP_BQ * T + 8));
        if (!S) {
#pragma omp atomic write
            err = 1;
        } else {
#pragma omp for schedule(dynamic, 1)
            for (long task = 0; task < B * H; task++) {
                long b = task / H, h = task % H, hk = h / grp;
                for (long q0 = 0; q0 < T; q0 += PP_BQ) {
                    long q1 = q0 + PP_BQ < T ? q0 + PP_BQ : T, mq = q1 - q0;
                    long ks = q0;
                    for (long i = q0; i < q1; i++)
                        ks = seg_start[b * T + i] < ks ? seg_start[b * T + i] : ks;
                    long nk = q1 - ks;
                    GEMM1(0, 1, mq, nk, dqk, (R)scale, q + (b * T + q0) * ldq + h * dqk, ldq,
                          k + (b * T + ks) * ldk + hk * dqk, ldk, (R)0, S, nk);
                    for (long r = 0; r < mq; r++) {
                        long i = q0 + r, lo = seg_start[b * T + i] - ks, hi = i - ks;
                        R *s = S + r * nk;
                        R m = -INFINITY;
                        for (long j = lo; j <= hi; j++) m = s[j] > m ? s[j] : m;
                        R z = 0;
#pragma omp simd reduction(+ : z)
                        for (long j = lo; j <= hi; j++) {
                            s[j] = EXP(s[j] - m);
                            z += s[j];
                        }
                        R inv = (R)1 / z;
                        for (long j = 0; j < lo; j++) s[j] = 0;
#pragma omp simd
                        for (long j = lo; j <= hi; j++) s[j] *= inv;
                        for (long j = hi + 1; j < nk; j++) s[j] = 0;
                        lse[(b * H + h) * T + i] = m + (R)log((double)z);
                    }
                    GEMM1(0, 0, mq, dv, nk, (R)1, S, nk, v + (b * T + ks) * ldv + hk * dv, ldv,
                          (R)0, o + (b * T + q0) * ldo + h * dv, ldo);
                }
            }
            free(S);
        }
    }
    return err ? -1 : 0;
}

static int FN(attn_bwd_blas)(const R *q, long ldq, const R *k, long ldk, const R *v, long ldv,
                             const R *o, long ldo, const R *lse, const R *dout, long lddo, R *dq,
                             long lddq, R *dk, long lddk, R *dvv, long lddv,
                             const int32_t *seg_start, long B, long T, long H, long Hk, long dqk,
                             long dv, double scale, int nt) {
    long grp = H / Hk;
    int err = 0;
    const R sc = (R)scale;
#pragma omp parallel PP_PAR_IF(nt, B * H * T * T * dqk)
    {
        R *S = (R *)malloc(sizeof(R) * (size_t)(2 * PP_BQ * T + PP_BQ + 8));
        if (!S) {
#pragma omp atomic write
            err = 1;
        } else {
            R *dP = S + PP_BQ * T;
            R *Dv = dP + PP_BQ * T;
#pragma omp for schedule(dynamic, 1)
            for (long task = 0; task < B * Hk; task++) {
                long b = task / Hk, hk = task % Hk;
                for (long j = 0; j < T; j++) {
                    memset(dk + (b * T + j) * lddk + hk * dqk, 0, sizeof(R) * (size_t)dqk);
                    memset(dvv + (b * T + j) * lddv + hk * dv, 0, sizeof(R) * (size_t)dv);
                }
                for (long h = hk * grp; h < (hk + 1) * grp; h++) {
                    for (long q0 = 0; q0 < T; q0 += PP_BQ) {
                        long q1 = q0 + PP_BQ < T ? q0 + PP_BQ : T, mq = q1 - q0;
                        long ks = q0;
                        for (long i = q0; i < q1; i++)
                            ks = seg_start[b * T + i] < ks ? seg_start[b * T + i] : ks;
                        long nk = q1 - ks;
                        const R *qb = q + (b * T + q0) * ldq + h * dqk;
                        const R *kb = k + (b * T + ks) * ldk + hk * dqk;
                        const R *vb = v + (b * T + ks) * ldv + hk * dv;
                        const R *dob = dout + (b * T + q0) * lddo + h * dv;
                        GEMM1(0, 1, mq, nk, dqk, (R)1, qb, ldq, kb, ldk, (R)0, S, nk);
                        GEMM1(0, 1, mq, nk, dv, (R)1, dob, lddo, vb, ldv, (R)0, dP, nk);
                        for (long r = 0; r < mq; r++) {
                            long i = q0 + r, lo = seg_start[b * T + i] - ks, hi = i - ks;
                            const R *oi = o + (b * T + i) * ldo + h * dv;
                            const R *doi = dob + r * lddo;
                            R D = 0;
#pragma omp simd reduction(+ : D)
                            for (long c = 0; c < dv; c++) D += doi[c] * oi[c];
                            Dv[r] = D;
                            R L = lse[(b * H + h) * T + i];
                            R *s = S + r * nk, *dp = dP + r * nk;
                            for (long j = 0; j < lo; j++) { s[j] = 0; dp[j] = 0; }
#pragma omp simd
                            for (long j = lo; j <= hi; j++) {
                                R p = EXP(s[j] * sc - L);
                                s[j] = p;
                                dp[j] = p * (dp[j] - D) * sc;
                            }
                            for (long j = hi + 1; j < nk; j++) { s[j] = 0; dp[j] = 0; }
                        }
                        /* dV += P^T dO ; dQ = dS K ; dK += dS^T Q */
                        GEMM1(1, 0, nk, dv, mq, (R)1, S, nk, dob, lddo, (R)1,
                              dvv + (b * T + ks) * lddv + hk * dv, lddv);
                        GEMM1(0, 0, mq, dqk, nk, (R)1, dP, nk, kb, ldk, (R)0,
                              dq + (b * T + q0) * lddq + h * dqk, lddq);
                        GEMM1(1, 0, nk, dqk, mq, (R)1, dP, nk, qb, ldq, (R)1,
                              dk + (b * T + ks) * lddk + hk * dqk, lddk);
                    }
                }
            }
            free(S);
        }
    }
    return err ? -1 : 0;
}

static int FN(attn_fwd)(const R *q, long ldq, const R *k, long ldk, const R *v, long ldv, R *o,
                        long ldo, R *lse, const int32_t *seg_start, long B, long T, long H,
                        long Hk, long dqk, long dv, double scale, int nt) {
    if (pp_attn_blas_active())
        return FN(attn_fwd_blas)(q, ldq, k, ldk, v, ldv, o, ldo, lse, seg_start, B, T, H, Hk,
                                 dqk, dv, scale, nt);
    return FN(attn_fwd_loop)(q, ldq, k, ldk, v, ldv, o, ldo, lse, seg_start, B, T, H, Hk, dqk,
                             dv, scale, nt);
}

static int FN(attn_bwd)(const R *q, long ldq, const R *k, long ldk, const R *v, long ldv,
                        const R *o, long ldo, const R *lse, const R *dout, long lddo, R *dq,
                        long lddq, R *dk, long lddk, R *dvv, long lddv, const int32_t *seg_start,
                        long B, long T, long H, long Hk, long dqk, long dv, double scale,
                        int nt) {
    if (pp_attn_blas_active())
        return FN(attn_bwd_blas)(q, ldq, k, ldk, v, ldv, o, ldo, lse, dout, lddo, dq, lddq, dk,
                                 lddk, dvv, lddv, seg_start, B, T, H, Hk, dqk, dv, scale, nt);
    return FN(attn_bwd_loop)(q, ldq, k, ldk, v, ldv, o, ldo, lse, dout, lddo, dq, lddq, dk,
                             lddk, dvv, lddv, seg_start, B, T, H, Hk, dqk, dv, scale, nt);
}
#undef GEMM1

static double FN(cross_entropy)(const R *x, long ldx, const int32_t *tg, const R *coef, R *dx,
                                long lddx, R *losses, long n, long V, int nt) {
    double *rowl = (double *)malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    if (!rowl) return NAN;
#pragma omp parallel for PP_PAR_IF(nt, n * V) schedule(static)
    for (long i = 0; i < n; i++) {
        const R *xi = x + i * ldx;
        R *di = dx + i * lddx;
        int32_t t = tg[i];
        int valid = t >= 0;
        R xt = valid ? xi[t] : (R)0;
        R m = -INFINITY;
#pragma omp simd reduction(max : m)
        for (long j = 0; j < V; j++) m = xi[j] > m ? xi[j] : m;
        double z = 0;
#pragma omp simd reduction(+ : z)
        for (long j = 0; j < V; j++) {
            R e = EXP(xi[j] - m);
            di[j] = e;
            z += (double)e;
        }
        double ce = valid ? ((double)m + log(z)) - (double)xt : 0.0;
        losses[i] = (R)ce;
        R c = valid ? coef[i] : (R)0;
        rowl[i] = valid ? (double)coef[i] * ce : 0.0;
        if (c == 0) {
            memset(di, 0, sizeof(R) * (size_t)V);
        } else {
            R zr = (R)z;
            R pt = di[t] / zr;
#pragma omp simd
            for (long j = 0; j < V; j++) di[j] = (di[j] / zr) * c;
            di[t] = (pt - (R)1) * c;
        }
    }
    double tot = 0;
    for (long i = 0; i < n; i++) tot += rowl[i];
    free(rowl);
    return tot;
}

static void FN(adamw)(R *p, const R *g, R *m, R *v, long n, double lr, double b1, double b2,
                      double eps, double wd, long step, int nt) {
    double bc1 = 1.0 - pow(b1, (double)step);
    double bc2s = sqrt(1.0 - pow(b2, (double)step));
    const R decay = (R)(1.0 - lr * wd), rb1 = (R)b1, rb2 = (R)b2, cb1 = (R)(1.0 - b1),
            cb2 = (R)(1.0 - b2), rbc2 = (R)bc2s, reps = (R)eps, stepsz = (R)(lr / bc1);
#pragma omp parallel for simd PP_PAR_IF(nt, n) schedule(static)
    for (long i = 0; i < n; i++) {
        R gi = g[i];
        R pi = p[i] * decay;
        R mi = m[i] * rb1 + cb1 * gi;
        R vi = v[i] * rb2 + cb2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        R den = SQRT(vi) / rbc2 + reps;
        p[i] = pi - stepsz * (mi / den);
    }
}

static void FN(embed_fwd)(const R *tab, long ldt, const int32_t *tok, R *out, long ldo, long n,
                          long d, int nt) {
#pragma omp parallel for PP_PAR_IF(nt, n * d) schedule(static)
    for (long i = 0; i < n; i++)
        memcpy(out + i * ldo, tab + (long)tok[i] * ldt, sizeof(R) * (size_t)d);
}

static void FN(embed_bwd)(R *dtab, long ldt, const int32_t *tok, const R *dx, long lddx, long n,
                          long d, int nt) {
    /* Each thread owns a range of columns and adds rows in index order: deterministic and
     * identical to a sequential scatter-add. */
#pragma omp parallel PP_PAR_IF(nt, n * d)
    {
        int t = pp_tid(), nth = pp_nthreads();
        long lo = d * t / nth, hi = d * (t + 1) / nth;
        for (long i = 0; i < n; i++) {
            R *dst = dtab + (long)tok[i] * ldt;
            const R *src = dx + i * lddx;
#pragma omp simd
            for (long c = lo; c < hi; c++) dst[c] += src[c];
        }
    }
}

#undef R
#undef EXP
#undef RINT
#undef SQRT
#undef ABS
