/* Runtime dispatch, repacking, the threaded driver and per-token activation quantization.
 *
 * CPU features are detected once (tern_init(), called at module import); the Python layer
 * picks a path (best, or the POPPINS_KERNEL override it read) and passes its id explicitly.
 * Nothing here reads the environment.
 *
 * Threads: one OpenMP parallel region per call, rows split in contiguous static ranges (one
 * range per thread, a multiple of 16 rows), no nested regions and no barriers inside the
 * work, so a thread that has to wait for a busy core costs little.  poppins.native sets
 * OMP_WAIT_POLICY=PASSIVE before the OpenMP runtime starts (unless the user set it) so idle
 * workers sleep instead of spinning on a shared 2-core machine, and poppins.engine.kernels
 * passes threads = 1 for products too small to be worth waking workers. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "poppins_common.h"
#include "poppins_cpu.h"
#include "poppins_numerics.h"
#include "ternary.h"

static int g_init = 0;
static int g_avail[TERN_NKERNELS];
static int g_best = TERN_SCALAR;
static const char *const g_names[TERN_NKERNELS] = {"scalar", "avx2", "avx512", "neon", "neondot"};

static tern_rows_fn g_fns[TERN_NKERNELS];

int tern_init(void) {
    if (g_init) return g_best;
    memset(g_avail, 0, sizeof g_avail);
    g_avail[TERN_SCALAR] = 1;
    g_fns[TERN_SCALAR] = tern_rows_scalar;
    /* A path runs only when the CPU has every feature its unit was compiled for
     * (POPPINS_NEED_<ISA>: poppins/_isa.py via setup.py; pp_cpu_has: ext/common/poppins_cpu.h). */
#if defined(POPPINS_HAVE_AVX2)
    if (pp_cpu_has(POPPINS_NEED_AVX2)) {
        g_avail[TERN_AVX2] = 1;
        g_fns[TERN_AVX2] = tern_rows_avx2;
    }
#endif
#if defined(POPPINS_HAVE_AVX512)
    if (pp_cpu_has(POPPINS_NEED_AVX512)) {
        g_avail[TERN_AVX512] = 1;
        g_fns[TERN_AVX512] = tern_rows_avx512;
    }
#endif
#if defined(POPPINS_HAVE_NEON)
    if (pp_cpu_has(POPPINS_NEED_NEON)) {
        g_avail[TERN_NEON] = 1;
        g_fns[TERN_NEON] = tern_rows_neon;
    }
#endif
#if defined(POPPINS_HAVE_NEONDOT)
    if (pp_cpu_has(POPPINS_NEED_NEONDOT)) {
        g_avail[TERN_NEONDOT] = 1;
        g_fns[TERN_NEONDOT] = tern_rows_neondot;
    }
#endif
    g_best = TERN_SCALAR;
    static const int order[] = {TERN_AVX512, TERN_AVX2, TERN_NEONDOT, TERN_NEON};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (g_avail[order[i]]) {
            g_best = order[i];
            break;
        }
    g_init = 1;
    return g_best;
}

int tern_kernel_available(int kernel) {
    tern_init();
    return kernel >= 0 && kernel < TERN_NKERNELS && g_avail[kernel];
}

int tern_best_kernel(void) { return tern_init(); }

long tern_kernel_needs(int kernel) {
    switch (kernel) {
    case TERN_SCALAR: return 0;
#ifdef POPPINS_HAVE_AVX2
    case TERN_AVX2: return POPPINS_NEED_AVX2;
#endif
#ifdef POPPINS_HAVE_AVX512
    case TERN_AVX512: return POPPINS_NEED_AVX512;
#endif
#ifdef POPPINS_HAVE_NEON
    case TERN_NEON: return POPPINS_NEED_NEON;
#endif
#ifdef POPPINS_HAVE_NEONDOT
    case TERN_NEONDOT: return POPPINS_NEED_NEONDOT;
#endif
    default: return -1;
    }
}

const char *tern_kernel_name(int kernel) {
    return kernel >= 0 && kernel < TERN_NKERNELS ? g_names[kernel] : NULL;
}

int64_t tern_row_bytes(int64_t k) {
    return ((k + TERN_BLOCK - 1) / TERN_BLOCK) * TERN_BLOCK_BYTES;
}

/* file code (0b00 = 0, 0b01 = -1, 0b10 = +1, 0b11 invalid) -> u = t + 1 */
static const uint8_t code_to_u[4] = {1, 0, 2, 1};

int64_t tern_repack_rows(const uint8_t *src, int64_t src_stride, int64_t m, int64_t k,
                         uint8_t *dst, int64_t dst_stride, int threads) {
    const int64_t nblk = (k + TERN_BLOCK - 1) / TERN_BLOCK;
    int64_t invalid = 0;
    int nt = poppins_threads(threads);
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) reduction(+ : invalid) if (m * k >= PP_PAR_MIN_ELEMENTS)
#endif
    for (int64_t r = 0; r < m; r++) {
        const uint8_t *s = src + r * src_stride;
        uint8_t *d = dst + r * dst_stride;
        memset(d, 0x55, (size_t)(nblk * TERN_BLOCK_BYTES)); /* u = 1 (zero) everywhere */
        for (int64_t b = 0; b < nblk; b++) {
            uint8_t *db = d + b * TERN_BLOCK_BYTES;
            for (int sh = 0; sh < 4; sh++) {
                for (int j = 0; j < 64; j++) {
                    int64_t i = b * TERN_BLOCK + 64 * sh + j;
                    if (i >= k) break;
                    unsigned code = (s[i >> 2] >> (2 * (i & 3))) & 3u;
                    invalid += code == 3u;
                    db[j] = (uint8_t)((db[j] & ~(3u << (2 * sh))) | ((unsigned)code_to_u[code] << (2 * sh)));
                }
            }
        }
    }
    return invalid;
}

#define ROW_CHUNK 16

int tern_matmul(const uint8_t *w, int64_t w_stride, int64_t m, int64_t k,
                const int8_t *x, int64_t x_stride, int64_t n,
                int32_t *y, int64_t y_stride, int threads, int kernel) {
    tern_init();
    if (kernel < 0) kernel = g_best;
    if (!tern_kernel_available(kernel)) return -1;
    if (k < 0 || k > TERN_K_MAX) return -2;
    if (m <= 0 || n <= 0) return 0;
    if (k == 0) {
        for (int64_t c = 0; c < n; c++) memset(y + c * y_stride, 0, (size_t)m * sizeof(int32_t));
        return 0;
    }
    const int64_t nb = k / TERN_BLOCK, rem = k % TERN_BLOCK;
    int32_t *xsum = (int32_t *)malloc((size_t)n * sizeof(int32_t));
    int8_t *xtail = rem ? (int8_t *)calloc((size_t)n, TERN_BLOCK) : NULL;
    if (!xsum || (rem && !xtail)) {
        free(xsum);
        free(xtail);
        return -3;
    }
    for (int64_t c = 0; c < n; c++) {
        const int8_t *xc = x + c * x_stride;
        int32_t s = 0;
        for (int64_t i = 0; i < k; i++) s += xc[i];
        xsum[c] = s;
        if (rem) memcpy(xtail + c * TERN_BLOCK, xc + nb * TERN_BLOCK, (size_t)rem);
    }
    tern_job job = {w, w_stride, m, k, x, x_stride, n, xtail, xsum, y, y_stride};
    tern_rows_fn fn = g_fns[kernel];
    const int64_t ntasks = (m + ROW_CHUNK - 1) / ROW_CHUNK;
    int nt = poppins_threads(threads);
    if ((int64_t)nt > ntasks) nt = (int)ntasks;
    /* (the Python layer passes threads = 1 for products too small to be worth waking threads) */
    if (nt <= 1) {
        fn(&job, 0, m);
    } else {
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
        {
            const int t = omp_get_thread_num(), T = omp_get_num_threads();
            const int64_t a = ntasks * t / T, b = ntasks * (t + 1) / T;
            const int64_t r0 = a * ROW_CHUNK, r1 = b * ROW_CHUNK < m ? b * ROW_CHUNK : m;
            if (r0 < r1) fn(&job, r0, r1);
        }
#else
        fn(&job, 0, m);
#endif
    }
    free(xsum);
    free(xtail);
    return 0;
}

int tern_matvec_padded(const uint8_t *w, int64_t w_stride, int64_t m, int64_t k,
                       const int8_t *x, int32_t *y, int kernel) {
    tern_init();
    if (kernel < 0) kernel = g_best;
    if (!tern_kernel_available(kernel)) return -1;
    if (k < 0 || k > TERN_K_MAX) return -2;
    if (m <= 0) return 0;
    if (k == 0) {
        memset(y, 0, (size_t)m * sizeof(int32_t));
        return 0;
    }
    int32_t xsum = 0;
    for (int64_t i = 0; i < k; i++) xsum += x[i];
    const int64_t nb = k / TERN_BLOCK;
    /* x is zero-padded to whole blocks: its own last block is the padded tail */
    tern_job job = {w, w_stride, m, k, x, k, 1, (k % TERN_BLOCK) ? x + nb * TERN_BLOCK : NULL,
                    &xsum, y, m};
    g_fns[kernel](&job, 0, m);
    return 0;
}

static const tern_c_api g_api = {
    TERN_C_API_VERSION, tern_init, tern_kernel_available, tern_kernel_name, tern_matmul,
    tern_matvec_padded,
};

const tern_c_api *tern_get_c_api(void) { return &g_api; }

void tern_quantize_rows(const float *x, int64_t x_stride, int64_t n, int64_t k,
                        int8_t *q, int64_t q_stride, float *scales, int threads) {
    int nt = poppins_threads(threads);
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(nt) if (n * k >= PP_PAR_MIN_ELEMENTS)
#endif
    for (int64_t r = 0; r < n; r++) {
        scales[r] = pp_quant_row_f32(x + r * x_stride, k, q + r * q_stride);
    }
}
