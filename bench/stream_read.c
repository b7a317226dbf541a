/* The read-bandwidth bound the benchmarks compare against (bench/ only, not part of the
 * package): a streaming read of a buffer with 256-bit loads and four independent
 * accumulators, nothing else, optionally split over threads (OpenMP, contiguous halves: the
 * same split as the decode step's rows).  bench/_stream.py compiles it at bench time
 * (cc -O2 -mavx2 -fopenmp -shared) and calls it through ctypes.
 *
 *   uint64_t pp_stream_read(const uint8_t *p, size_t n, int threads)
 * reads n bytes (n a multiple of 128) once and returns a checksum (so nothing is optimized
 * away). */
#include <stddef.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__)
#include <immintrin.h>
#endif

static uint64_t read_range(const uint8_t *p, size_t n) {
#if defined(__AVX2__)
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 128 <= n; i += 128) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    __m256i s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t out[4];
    _mm256_storeu_si256((__m256i *)out, s);
    return out[0] + out[1] + out[2] + out[3];
#else
    const uint64_t *q = (const uint64_t *)p;
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (size_t i = 0; i + 4 <= n / 8; i += 4) {
        a0 += q[i]; a1 += q[i + 1]; a2 += q[i + 2]; a3 += q[i + 3];
    }
    return a0 + a1 + a2 + a3;
#endif
}

uint64_t pp_stream_read(const uint8_t *p, size_t n, int threads) {
    uint64_t total = 0;
    if (threads < 1) threads = 1;
    const size_t chunks = n / 128;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        const size_t a = chunks * t / T, b = chunks * (t + 1) / T;
        total += read_range(p + a * 128, (b - a) * 128);
    }
#else
    total = read_range(p, chunks * 128);
#endif
    return total;
}
