/* poppins._ops: fused element-wise kernels of the ternary transformer (nogil C API).
 *
 * Every kernel exists for float (_f32) and double (_f64) and is compiled once per ISA
 * (ops_scalar.c always; ops_avx2.c / ops_avx512.c when the compiler can target them) from
 * the template ops_kernels.h.  pp_ops() returns the table of the path chosen at import time
 * from the CPU's features (pp_ops_set_kernel() overrides it).  2-D arguments are row-major
 * with an explicit row stride ("ld", in elements); the rows themselves are contiguous.
 * Thread counts are explicit arguments (nt); kernels never read the environment. */
#ifndef POPPINS_OPS_H
#define POPPINS_OPS_H

#include <stdint.h>

#define PP_OPS_DECL(R, S)                                                                   \
    void (*act_quant_##S)(const R *x, long ldx, R *out, long ldo, long n, long d, int nt); \
    void (*rmsnorm_quant_fwd_##S)(const R *x, long ldx, const R *g, R *out, long ldo,      \
                                  R *rstd, long n, long d, double eps, int quant, int nt); \
    void (*rmsnorm_bwd_##S)(const R *x, long ldx, const R *g, const R *rstd, const R *dy,   \
                            long lddy, R *dx, long lddx, R *dg, long n, long d, int acc,     \
                            int nt);                                                         \
    void (*relu2_quant_fwd_##S)(const R *u, long ldu, R *out, long ldo, long n, long d,     \
                                int quant, int nt);                                          \
    void (*relu2_bwd_##S)(const R *u, long ldu, const R *dy, long lddy, R *du, long lddu,   \
                          long n, long d, int nt);                                           \
    double (*weight_quant_##S)(const R *w, R *out, long n, int nt);                         \
    void (*rope_##S)(R *x, long ldx, long n, const R *cos, const R *sin, long half,         \
                     long seq_len, long nheads, long head_stride, long offset, int inverse,  \
                     int nt);                                                                \
    int (*attn_fwd_##S)(const R *q, long ldq, const R *k, long ldk, const R *v, long ldv,  \
                        R *o, long ldo, R *lse, const int32_t *seg_start, long B, long T,    \
                        long H, long Hk, long dqk, long dv, double scale, int nt);           \
    int (*attn_bwd_##S)(const R *q, long ldq, const R *k, long ldk, const R *v, long ldv,  \
                        const R *o, long ldo, const R *lse, const R *dout, long lddo,        \
                        R *dq, long lddq, R *dk, long lddk, R *dvv, long lddv,               \
                        const int32_t *seg_start, long B, long T, long H, long Hk, long dqk, \
                        long dv, double scale, int nt);                                      \
    double (*cross_entropy_##S)(const R *x, long ldx, const int32_t *tg, const R *coef,     \
                                R *dx, long lddx, R *losses, long n, long V, int nt);        \
    void (*adamw_##S)(R *p, const R *g, R *m, R *v, long n, double lr, double b1, double b2, \
                      double eps, double wd, long step, int nt);                             \
    void (*embed_fwd_##S)(const R *tab, long ldt, const int32_t *tok, R *out, long ldo,      \
                          long n, long d, int nt);                                           \
    void (*embed_bwd_##S)(R *dtab, long ldt, const int32_t *tok, const R *dx, long lddx,    \
                          long n, long d, int nt);

typedef struct pp_ops_table {
    const char *name;
    PP_OPS_DECL(float, f32)
    PP_OPS_DECL(double, f64)
} pp_ops_table;

const pp_ops_table *pp_ops(void);
/* 0 on success, -1 when the named path ("scalar", "avx2", "avx512") is not available. */
int pp_ops_set_kernel(const char *name);
/* Comma-separated list of the paths this build and CPU can run. */
const char *pp_ops_available(void);
/* The PP_CPU_* feature mask path `name` needs (0 for scalar); -1 when it is not compiled in. */
long pp_ops_needs(const char *name);

/* GEMM through the BLAS numpy uses, split over poppins' OpenMP threads (ops_gemm.c).
 * pp_gemm_set() receives the addresses of cblas_sgemm/cblas_dgemm (ilp64: 64-bit ints).
 * pp_gemm_*() return -1 when no BLAS was handed over. */
void pp_gemm_set(void *sgemm, void *dgemm, int ilp64);
int pp_gemm_ready(void);
/* Attention by blocks of BLAS products (default when a BLAS was handed over) or by the
 * plain loops (pp_attn_set_blas(0)); both compute the same function. */
void pp_attn_set_blas(int on);
int pp_attn_blas_active(void);
void pp_gemm1_f32(int ta, int tb, long M, long N, long K, float alpha, const float *A, long lda,
                  const float *B, long ldb, float beta, float *C, long ldc);
void pp_gemm1_f64(int ta, int tb, long M, long N, long K, double alpha, const double *A,
                  long lda, const double *B, long ldb, double beta, double *C, long ldc);
int pp_gemm_f32(int ta, int tb, long M, long N, long K, float alpha, const float *A, long lda,
                const float *B, long ldb, float beta, float *C, long ldc, int nt);
int pp_gemm_f64(int ta, int tb, long M, long N, long K, double alpha, const double *A, long lda,
                const double *B, long ldb, double beta, double *C, long ldc, int nt);

#endif
