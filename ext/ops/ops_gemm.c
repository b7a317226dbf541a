/* GEMM on poppins' thread pool: C = alpha * op(A) @ op(B) + beta * C, row-major, split into
 * one block of rows (or columns) of C per OpenMP thread, each block a single-threaded call
 * of the BLAS numpy is linked with (its cblas_?gemm address is handed over at import, and
 * its own thread count is kept at 1 while poppins calls it).  One pool for GEMMs and the
 * fused kernels: no BLAS worker threads spinning against OpenMP threads on the same cores. */
#include <stdint.h>
#include "ops.h"
#include "poppins_common.h"

typedef void (*sgemm32_t)(int, int, int, int32_t, int32_t, int32_t, float, const float *, int32_t,
                          const float *, int32_t, float, float *, int32_t);
typedef void (*sgemm64_t)(int, int, int, int64_t, int64_t, int64_t, float, const float *, int64_t,
                          const float *, int64_t, float, float *, int64_t);
typedef void (*dgemm32_t)(int, int, int, int32_t, int32_t, int32_t, double, const double *,
                          int32_t, const double *, int32_t, double, double *, int32_t);
typedef void (*dgemm64_t)(int, int, int, int64_t, int64_t, int64_t, double, const double *,
                          int64_t, const double *, int64_t, double, double *, int64_t);

static void *pp_sgemm = 0, *pp_dgemm = 0;
static int pp_ilp64 = 0;

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

void pp_gemm_set(void *sgemm, void *dgemm, int ilp64) {
    pp_sgemm = sgemm;
    pp_dgemm = dgemm;
    pp_ilp64 = ilp64;
}

int pp_gemm_ready(void) { return pp_sgemm != 0 && pp_dgemm != 0; }

static int pp_attn_blas = 1;
void pp_attn_set_blas(int on) { pp_attn_blas = on; }
int pp_attn_blas_active(void) { return pp_attn_blas && pp_gemm_ready(); }

/* Single-threaded calls (used inside the kernels' own parallel regions). */
void pp_gemm1_f32(int ta, int tb, long M, long N, long K, float alpha, const float *A, long lda,
                  const float *B, long ldb, float beta, float *C, long ldc) {
    if (pp_ilp64)
        ((sgemm64_t)pp_sgemm)(ROW_MAJOR, ta ? TRANS : NO_TRANS, tb ? TRANS : NO_TRANS, M, N, K,
                              alpha, A, lda, B, ldb, beta, C, ldc);
    else
        ((sgemm32_t)pp_sgemm)(ROW_MAJOR, ta ? TRANS : NO_TRANS, tb ? TRANS : NO_TRANS,
                              (int32_t)M, (int32_t)N, (int32_t)K, alpha, A, (int32_t)lda, B,
                              (int32_t)ldb, beta, C, (int32_t)ldc);
}

void pp_gemm1_f64(int ta, int tb, long M, long N, long K, double alpha, const double *A,
                  long lda, const double *B, long ldb, double beta, double *C, long ldc) {
    if (pp_ilp64)
        ((dgemm64_t)pp_dgemm)(ROW_MAJOR, ta ? TRANS : NO_TRANS, tb ? TRANS : NO_TRANS, M, N, K,
                              alpha, A, lda, B, ldb, beta, C, ldc);
    else
        ((dgemm32_t)pp_dgemm)(ROW_MAJOR, ta ? TRANS : NO_TRANS, tb ? TRANS : NO_TRANS,
                              (int32_t)M, (int32_t)N, (int32_t)K, alpha, A, (int32_t)lda, B,
                              (int32_t)ldb, beta, C, (int32_t)ldc);
}

#define PP_GEMM_BODY(R, FP, T32, T64)                                                          \
    if (!FP) return -1;                                                                        \
    long nth = poppins_threads(nt);                                                            \
    double work = (double)M * (double)N * (double)K;                                           \
    if (work < 2.0e5) nth = 1;                                                                 \
    int split_m = M >= N;                                                                      \
    long len = split_m ? M : N;                                                                \
    if (nth > len / 16) nth = len / 16 > 0 ? len / 16 : 1;                                     \
    _Pragma("omp parallel for num_threads(nth) schedule(static, 1) if (nth > 1)")              \
    for (long t = 0; t < nth; t++) {                                                           \
        long lo = (len * t / nth) & ~7L, hi = t == nth - 1 ? len : ((len * (t + 1) / nth) & ~7L); \
        if (hi <= lo) continue;                                                                \
        const R *a = A, *b = B;                                                                \
        R *c = C;                                                                              \
        long m = M, n = N;                                                                     \
        if (split_m) {                                                                         \
            a = ta ? A + lo : A + lo * lda;                                                    \
            c = C + lo * ldc;                                                                  \
            m = hi - lo;                                                                       \
        } else {                                                                               \
            b = tb ? B + lo * ldb : B + lo;                                                    \
            c = C + lo;                                                                        \
            n = hi - lo;                                                                       \
        }                                                                                      \
        if (pp_ilp64)                                                                          \
            ((T64)FP)(ROW_MAJOR, ta ? TRANS : NO_TRANS, tb ? TRANS : NO_TRANS, m, n, K, alpha, \
                      a, lda, b, ldb, beta, c, ldc);                                           \
        else                                                                                   \
            ((T32)FP)(ROW_MAJOR, ta ? TRANS : NO_TRANS, tb ? TRANS : NO_TRANS, (int32_t)m,     \
                      (int32_t)n, (int32_t)K, alpha, a, (int32_t)lda, b, (int32_t)ldb, beta,   \
                      c, (int32_t)ldc);                                                        \
    }                                                                                          \
    return 0;

int pp_gemm_f32(int ta, int tb, long M, long N, long K, float alpha, const float *A, long lda,
                const float *B, long ldb, float beta, float *C, long ldc, int nt) {
    PP_GEMM_BODY(float, pp_sgemm, sgemm32_t, sgemm64_t)
}

int pp_gemm_f64(int ta, int tb, long M, long N, long K, double alpha, const double *A, long lda,
                const double *B, long ldb, double beta, double *C, long ldc, int nt) {
    PP_GEMM_BODY(double, pp_dgemm, dgemm32_t, dgemm64_t)
}
