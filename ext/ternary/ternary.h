/* poppins ternary kernels: packed 2-bit weights x int8 activations -> exact int32 sums.
 *
 * TWO LAYOUTS
 * -----------
 * 1. The file layout, "rows" version 1 (what OUT/model.poppins stores; CPU-independent):
 *    codes 0b00 = 0, 0b01 = -1, 0b10 = +1 (0b11 invalid), four weights per byte, weight i of a
 *    row in byte i / 4 at bit shift 2 * (i % 4) (first weight in the lowest bits); each row is
 *    padded to a whole number of bytes, ceil(k / 4), padding codes 0b00.
 *
 * 2. The kernel layout, "b256" version 1 (built at load time by tern_repack_rows()):
 *    each row is cut in blocks of TERN_BLOCK = 256 weights stored in TERN_BLOCK_BYTES = 64 bytes.
 *    Byte j (0..63) of block b holds, at bit shift 2*s (s = 0..3), the weight
 *        i = 256*b + 64*s + j,
 *    encoded as the unsigned value u = t + 1 (0 = -1, 1 = 0, 2 = +1; 3 never occurs).
 *    A row has nblk = ceil(k / 256) blocks (row stride nblk * 64 bytes); weights past k are
 *    u = 1 (zero).  One 64-byte load + (shift, and) yields 64 consecutive weights as bytes,
 *    which line up with 64 consecutive activation bytes; 32- and 16-byte SIMD loads work on
 *    the same layout (bytes 32h.. / 16q.. of a block hold weights 64s + 32h.. / 64s + 16q..).
 *
 * ARITHMETIC AND ACCUMULATOR BOUNDS (every path returns exactly sum_i t_i * x_i)
 *   - x is any int8 (-128..127), t in {-1, 0, 1}: |t*x| <= 128.
 *   - x86 paths multiply the unsigned u (0..2) by signed x and subtract sum(x) at the end:
 *       sum u*x = sum t*x + sum x, |u*x| <= 256.
 *     AVX2 _mm256_maddubs_epi16 adds two u8*s8 products into a saturating int16:
 *       |u0*x0 + u1*x1| <= 512, far from 32767: it can never saturate.
 *     _mm256_madd_epi16 / _mm512_dpbusd_epi32 then accumulate in int32.
 *   - NEON paths multiply t (as int8) by x: vmull_s8/vmlal_s8 give |.| <= 256 in int16 per lane
 *     before vpadalq_s16 widens to int32; vdotq_s32 accumulates int32 directly.
 *   - int32 accumulators hold at most 256 * k in magnitude, so k <= TERN_K_MAX = 2^23 keeps
 *     every partial sum below 2^31.  The Python layer and tern_check_k() reject larger k.
 */
#ifndef POPPINS_TERNARY_H
#define POPPINS_TERNARY_H

#include <stddef.h>
#include <stdint.h>

#define TERN_LAYOUT_NAME "b256"
#define TERN_LAYOUT_VERSION 1
#define TERN_FILE_LAYOUT_NAME "rows"
#define TERN_FILE_LAYOUT_VERSION 1

#define TERN_BLOCK 256
#define TERN_BLOCK_BYTES 64
#define TERN_K_MAX (1LL << 23)

/* Compile-time checks of the layout constants. */
_Static_assert(TERN_BLOCK == 4 * TERN_BLOCK_BYTES, "four 2-bit codes per byte");
_Static_assert(TERN_BLOCK_BYTES == 64, "one AVX-512 register per block");
_Static_assert(256LL * TERN_K_MAX <= 2147483648LL, "int32 accumulators must not overflow");
_Static_assert(sizeof(int32_t) == 4 && sizeof(int8_t) == 1, "fixed-width types");

/* Kernel path ids (also the order of tern_kernel_name()). */
enum {
    TERN_SCALAR = 0,
    TERN_AVX2 = 1,
    TERN_AVX512 = 2,
    TERN_NEON = 3,
    TERN_NEONDOT = 4,
    TERN_NKERNELS = 5
};

/* One matrix product Y[c][r] = sum_i t[r][i] * X[c][i], for rows r in [0, m), columns c in
 * [0, n).  w: kernel layout, row stride w_stride bytes (a multiple of 64, >= nblk * 64).
 * x: n rows of k int8 activations (row stride x_stride).  xtail: when k % 256 != 0, n zero-
 * padded copies of each column's last partial block (256 bytes each), else NULL.  xsum: n
 * column sums of x (used by the offset-correcting x86 paths).  y: n rows of m int32. */
typedef struct {
    const uint8_t *w;
    int64_t w_stride;
    int64_t m, k;
    const int8_t *x;
    int64_t x_stride;
    int64_t n;
    const int8_t *xtail;
    const int32_t *xsum;
    int32_t *y;
    int64_t y_stride;
} tern_job;

/* Each path computes the rows [r0, r1) of a job for every column. */
typedef void (*tern_rows_fn)(const tern_job *job, int64_t r0, int64_t r1);

void tern_rows_scalar(const tern_job *job, int64_t r0, int64_t r1);
#ifdef POPPINS_HAVE_AVX2
void tern_rows_avx2(const tern_job *job, int64_t r0, int64_t r1);
#endif
#ifdef POPPINS_HAVE_AVX512
void tern_rows_avx512(const tern_job *job, int64_t r0, int64_t r1);
#endif
#ifdef POPPINS_HAVE_NEON
void tern_rows_neon(const tern_job *job, int64_t r0, int64_t r1);
#endif
#ifdef POPPINS_HAVE_NEONDOT
void tern_rows_neondot(const tern_job *job, int64_t r0, int64_t r1);
#endif

/* ---- dispatch.c: the public C API (nogil-safe; no Python, no environment) ---- */

/* Detect the CPU once; returns the best runnable path.  Idempotent. */
int tern_init(void);
/* 1 when path `kernel` is compiled in AND runnable on this CPU. */
int tern_kernel_available(int kernel);
/* The best runnable path (after tern_init). */
int tern_best_kernel(void);
/* The PP_CPU_* feature mask path `kernel` needs (0: scalar); -1 when not compiled in. */
long tern_kernel_needs(int kernel);
/* "scalar", "avx2", "avx512", "neon", "neondot"; NULL for an unknown id. */
const char *tern_kernel_name(int kernel);

/* Bytes per row of the kernel layout for k weights: ceil(k / 256) * 64. */
int64_t tern_row_bytes(int64_t k);

/* Repack m rows of file-layout codes (row stride src_stride >= ceil(k/4)) into the kernel
 * layout (row stride dst_stride >= tern_row_bytes(k)).  Returns the number of invalid 0b11
 * codes among the first k codes of every row (they are stored as 0). */
int64_t tern_repack_rows(const uint8_t *src, int64_t src_stride, int64_t m, int64_t k,
                         uint8_t *dst, int64_t dst_stride, int threads);

/* Y (n x m, row stride y_stride) = X (n x k) times W^T.  kernel < 0: best path.
 * Returns 0, or -1 when kernel is not available, -2 when k is out of range, -3 on OOM. */
int tern_matmul(const uint8_t *w, int64_t w_stride, int64_t m, int64_t k,
                const int8_t *x, int64_t x_stride, int64_t n,
                int32_t *y, int64_t y_stride, int threads, int kernel);

/* y[r] = sum_i t[r][i] x[i] for rows [0, m), on one thread, no allocation: the decode step's
 * matrix-vector product.  x must be zero-padded to whole blocks (ceil(k / 256) * 256 bytes).
 * kernel < 0: best path.  Returns 0, -1 (kernel not available) or -2 (k out of range). */
int tern_matvec_padded(const uint8_t *w, int64_t w_stride, int64_t m, int64_t k,
                       const int8_t *x, int32_t *y, int kernel);

/* The C API other extension modules use (poppins._engine), so the ternary kernels are
 * compiled once, into poppins._ternary: it exports a pointer to this table as the capsule
 * poppins._ternary._C_API (name TERN_C_API_CAPSULE). */
#define TERN_C_API_VERSION 1
#define TERN_C_API_CAPSULE "poppins._ternary._C_API"
typedef struct {
    int version;
    int (*init)(void);
    int (*kernel_available)(int kernel);
    const char *(*kernel_name)(int kernel);
    int (*matmul)(const uint8_t *w, int64_t w_stride, int64_t m, int64_t k, const int8_t *x,
                  int64_t x_stride, int64_t n, int32_t *y, int64_t y_stride, int threads,
                  int kernel);
    int (*matvec_padded)(const uint8_t *w, int64_t w_stride, int64_t m, int64_t k,
                         const int8_t *x, int32_t *y, int kernel);
} tern_c_api;
const tern_c_api *tern_get_c_api(void);

/* Per-token int8 quantization, the one rule of poppins_numerics.h (pp_quant_row_f32):
 * s = 127 / max(max|x|, 1e-5), q = clip(rint(x * s), -128, 127) with round-half-to-even,
 * all in float32. */
void tern_quantize_rows(const float *x, int64_t x_stride, int64_t n, int64_t k,
                        int8_t *q, int64_t q_stride, float *scales, int threads);

#endif
