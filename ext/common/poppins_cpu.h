/* The one CPU check of poppins' C kernels: pp_cpu_features() returns a bitmask of PP_CPU_*.
 *
 * Bit i is the i-th name of FEATURES in poppins/_isa.py (the table setup.py compiles each
 * SIMD unit from); pp_cpu_feature_name(i) reports the names so tests can check both agree.
 * A dispatcher runs a SIMD unit only when pp_cpu_has(POPPINS_NEED_<ISA>): setup.py defines
 * that mask from the same feature list as the unit's compiler flags (ggml's rule: a binary
 * never executes an instruction the CPU lacks).
 *
 * x86: __builtin_cpu_supports (it also checks that the OS saves the wide registers).
 * ARM: Advanced SIMD is mandatory on AArch64; 32-bit Linux reads HWCAP_NEON; dot product is
 * HWCAP_ASIMDDP on Linux, FEAT_DotProd on macOS.
 */
#ifndef POPPINS_CPU_H
#define POPPINS_CPU_H

#include <stddef.h>

#if defined(__aarch64__) || defined(__arm__)
#if defined(__linux__)
#include <sys/auxv.h>
#elif defined(__APPLE__)
#include <sys/sysctl.h>
#endif
#endif

enum {
    PP_CPU_AVX2 = 1u << 0,
    PP_CPU_FMA = 1u << 1,
    PP_CPU_F16C = 1u << 2,
    PP_CPU_AVX512F = 1u << 3,
    PP_CPU_AVX512BW = 1u << 4,
    PP_CPU_AVX512VL = 1u << 5,
    PP_CPU_AVX512DQ = 1u << 6,
    PP_CPU_AVX512VNNI = 1u << 7,
    PP_CPU_NEON = 1u << 8,
    PP_CPU_DOTPROD = 1u << 9,
    PP_CPU_NFEATURES = 10
};

static inline const char *pp_cpu_feature_name(int i) {
    static const char *const names[PP_CPU_NFEATURES] = {
        "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vnni",
        "neon", "dotprod"};
    return i >= 0 && i < PP_CPU_NFEATURES ? names[i] : NULL;
}

static inline unsigned pp_cpu_detect(void) {
    unsigned f = 0;
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) f |= PP_CPU_AVX2;
    if (__builtin_cpu_supports("fma")) f |= PP_CPU_FMA;
    if (__builtin_cpu_supports("f16c")) f |= PP_CPU_F16C;
    if (__builtin_cpu_supports("avx512f")) f |= PP_CPU_AVX512F;
    if (__builtin_cpu_supports("avx512bw")) f |= PP_CPU_AVX512BW;
    if (__builtin_cpu_supports("avx512vl")) f |= PP_CPU_AVX512VL;
    if (__builtin_cpu_supports("avx512dq")) f |= PP_CPU_AVX512DQ;
    if (__builtin_cpu_supports("avx512vnni")) f |= PP_CPU_AVX512VNNI;
#endif
#if defined(__aarch64__)
    f |= PP_CPU_NEON; /* Advanced SIMD is mandatory on AArch64 */
#if defined(__linux__)
    if (getauxval(AT_HWCAP) & (1UL << 20)) f |= PP_CPU_DOTPROD; /* HWCAP_ASIMDDP */
#elif defined(__APPLE__)
    {
        int v = 0;
        size_t len = sizeof v;
        if (sysctlbyname("hw.optional.arm.FEAT_DotProd", &v, &len, NULL, 0) == 0 && v)
            f |= PP_CPU_DOTPROD;
    }
#endif
#elif defined(__arm__) && defined(__linux__)
    if (getauxval(AT_HWCAP) & (1UL << 12)) f |= PP_CPU_NEON; /* HWCAP_NEON */
#endif
    return f;
}

/* The CPU's features (detected once per module; the detection is idempotent). */
static inline unsigned pp_cpu_features(void) {
    static int done = 0;
    static unsigned cached = 0;
    if (!done) {
        cached = pp_cpu_detect();
        done = 1;
    }
    return cached;
}

/* 1 when the CPU has every feature of `need`. */
static inline int pp_cpu_has(unsigned need) { return (pp_cpu_features() & need) == need; }

#endif
