# nogil C API of poppins._ops (see ops.h).
from libc.stdint cimport int32_t

cdef extern from "ops.h" nogil:
    ctypedef struct pp_ops_table:
        const char *name
        void (*act_quant_f32)(const float *x, long ldx, float *out, long ldo, long n, long d, int nt) noexcept nogil
        void (*act_quant_f64)(const double *x, long ldx, double *out, long ldo, long n, long d, int nt) noexcept nogil
        void (*rmsnorm_quant_fwd_f32)(const float *x, long ldx, const float *g, float *out, long ldo,
                                   float *rstd, long n, long d, double eps, int quant, int nt) noexcept nogil
        void (*rmsnorm_quant_fwd_f64)(const double *x, long ldx, const double *g, double *out,
                                   long ldo, double *rstd, long n, long d, double eps, int quant,
                                   int nt) noexcept nogil
        void (*rmsnorm_bwd_f32)(const float *x, long ldx, const float *g, const float *rstd,
                             const float *dy, long lddy, float *dx, long lddx, float *dg, long n,
                             long d, int acc, int nt) noexcept nogil
        void (*rmsnorm_bwd_f64)(const double *x, long ldx, const double *g, const double *rstd,
                             const double *dy, long lddy, double *dx, long lddx, double *dg,
                             long n, long d, int acc, int nt) noexcept nogil
        void (*relu2_quant_fwd_f32)(const float *u, long ldu, float *out, long ldo, long n, long d,
                                 int quant, int nt) noexcept nogil
        void (*relu2_quant_fwd_f64)(const double *u, long ldu, double *out, long ldo, long n, long d,
                                 int quant, int nt) noexcept nogil
        void (*relu2_bwd_f32)(const float *u, long ldu, const float *dy, long lddy, float *du,
                           long lddu, long n, long d, int nt) noexcept nogil
        void (*relu2_bwd_f64)(const double *u, long ldu, const double *dy, long lddy, double *du,
                           long lddu, long n, long d, int nt) noexcept nogil
        double (*weight_quant_f32)(const float *w, float *out, long n, int nt) noexcept nogil
        double (*weight_quant_f64)(const double *w, double *out, long n, int nt) noexcept nogil
        void (*rope_f32)(float *x, long ldx, long n, const float *cos, const float *sin, long half,
                      long seq_len, long nheads, long head_stride, long offset, int inverse, int nt) noexcept nogil
        void (*rope_f64)(double *x, long ldx, long n, const double *cos, const double *sin, long half,
                      long seq_len, long nheads, long head_stride, long offset, int inverse, int nt) noexcept nogil
        int (*attn_fwd_f32)(const float *q, long ldq, const float *k, long ldk, const float *v,
                         long ldv, float *o, long ldo, float *lse, const int32_t *seg_start,
                         long B, long T, long H, long Hk, long dqk, long dv, double scale, int nt) noexcept nogil
        int (*attn_fwd_f64)(const double *q, long ldq, const double *k, long ldk, const double *v,
                         long ldv, double *o, long ldo, double *lse, const int32_t *seg_start,
                         long B, long T, long H, long Hk, long dqk, long dv, double scale, int nt) noexcept nogil
        int (*attn_bwd_f32)(const float *q, long ldq, const float *k, long ldk, const float *v,
                         long ldv, const float *o, long ldo, const float *lse, const float *dout,
                         long lddo, float *dq, long lddq, float *dk, long lddk, float *dvv,
                         long lddv, const int32_t *seg_start, long B, long T, long H, long Hk,
                         long dqk, long dv, double scale, int nt) noexcept nogil
        int (*attn_bwd_f64)(const double *q, long ldq, const double *k, long ldk, const double *v,
                         long ldv, const double *o, long ldo, const double *lse,
                         const double *dout, long lddo, double *dq, long lddq, double *dk,
                         long lddk, double *dvv, long lddv, const int32_t *seg_start, long B,
                         long T, long H, long Hk, long dqk, long dv, double scale, int nt) noexcept nogil
        double (*cross_entropy_f32)(const float *x, long ldx, const int32_t *tg, const float *coef,
                                 float *dx, long lddx, float *losses, long n, long V, int nt) noexcept nogil
        double (*cross_entropy_f64)(const double *x, long ldx, const int32_t *tg,
                                 const double *coef, double *dx, long lddx, double *losses,
                                 long n, long V, int nt) noexcept nogil
        void (*adamw_f32)(float *p, const float *g, float *m, float *v, long n, double lr, double b1,
                       double b2, double eps, double wd, long step, int nt) noexcept nogil
        void (*adamw_f64)(double *p, const double *g, double *m, double *v, long n, double lr,
                       double b1, double b2, double eps, double wd, long step, int nt) noexcept nogil
        void (*embed_fwd_f32)(const float *tab, long ldt, const int32_t *tok, float *out, long ldo,
                           long n, long d, int nt) noexcept nogil
        void (*embed_fwd_f64)(const double *tab, long ldt, const int32_t *tok, double *out, long ldo,
                           long n, long d, int nt) noexcept nogil
        void (*embed_bwd_f32)(float *dtab, long ldt, const int32_t *tok, const float *dx, long lddx,
                           long n, long d, int nt) noexcept nogil
        void (*embed_bwd_f64)(double *dtab, long ldt, const int32_t *tok, const double *dx,
                           long lddx, long n, long d, int nt) noexcept nogil

    const pp_ops_table *pp_ops()
    int pp_ops_set_kernel(const char *name)
    const char *pp_ops_available()
    long pp_ops_needs(const char *name)

    void pp_gemm_set(void *sgemm, void *dgemm, int ilp64)
    int pp_gemm_ready()
    void pp_attn_set_blas(int on)
    int pp_attn_blas_active()
    int pp_gemm_f32(int ta, int tb, long M, long N, long K, float alpha, const float *A,
                    long lda, const float *B, long ldb, float beta, float *C, long ldc, int nt)
    int pp_gemm_f64(int ta, int tb, long M, long N, long K, double alpha, const double *A,
                    long lda, const double *B, long ldb, double beta, double *C, long ldc,
                    int nt)

cdef extern from "poppins_common.h" nogil:
    int poppins_build_openmp()
