# The nogil C API of the ternary kernels (ext/ternary/ternary.h).
from libc.stdint cimport int8_t, uint8_t, int32_t, int64_t

cdef extern from "ternary.h" nogil:
    int TERN_BLOCK
    int TERN_BLOCK_BYTES
    long long TERN_K_MAX
    int TERN_LAYOUT_VERSION
    int TERN_NKERNELS
    int tern_init()
    int tern_kernel_available(int kernel)
    int tern_best_kernel()
    const char *tern_kernel_name(int kernel)
    long tern_kernel_needs(int kernel)
    ctypedef struct tern_c_api:
        pass
    const tern_c_api *tern_get_c_api()
    const char *TERN_C_API_CAPSULE
    int64_t tern_row_bytes(int64_t k)
    int64_t tern_repack_rows(const uint8_t *src, int64_t src_stride, int64_t m, int64_t k,
                             uint8_t *dst, int64_t dst_stride, int threads)
    int tern_matmul(const uint8_t *w, int64_t w_stride, int64_t m, int64_t k,
                    const int8_t *x, int64_t x_stride, int64_t n,
                    int32_t *y, int64_t y_stride, int threads, int kernel)
    void tern_quantize_rows(const float *x, int64_t x_stride, int64_t n, int64_t k,
                            int8_t *q, int64_t q_stride, float *scales, int threads)

cdef extern from "poppins_common.h" nogil:
    int poppins_build_openmp()
