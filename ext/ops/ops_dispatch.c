/* Chooses the kernel path once, from the CPU's features; pp_ops_set_kernel() overrides. */
#include <string.h>
#include "ops.h"
#include "poppins_cpu.h"

extern const pp_ops_table pp_ops_table_scalar;
#ifdef POPPINS_HAVE_AVX2
extern const pp_ops_table pp_ops_table_avx2;
#endif
#ifdef POPPINS_HAVE_AVX512
extern const pp_ops_table pp_ops_table_avx512;
#endif

static const pp_ops_table *pp_current = 0;

/* A path runs only when the CPU has every feature its unit was compiled for: POPPINS_NEED_<ISA>
 * is that feature list (poppins/_isa.py, passed by setup.py), pp_cpu_has() the one CPU check. */
#ifdef POPPINS_HAVE_AVX2
static int cpu_avx2(void) { return pp_cpu_has(POPPINS_NEED_AVX2); }
#endif
#ifdef POPPINS_HAVE_AVX512
static int cpu_avx512(void) { return pp_cpu_has(POPPINS_NEED_AVX512); }
#endif

static const pp_ops_table *lookup(const char *name) {
    if (!strcmp(name, "scalar")) return &pp_ops_table_scalar;
#ifdef POPPINS_HAVE_AVX2
    if (!strcmp(name, "avx2") && cpu_avx2()) return &pp_ops_table_avx2;
#endif
#ifdef POPPINS_HAVE_AVX512
    if (!strcmp(name, "avx512") && cpu_avx512()) return &pp_ops_table_avx512;
#endif
    return 0;
}

const pp_ops_table *pp_ops(void) {
    if (!pp_current) {
        const pp_ops_table *t = lookup("avx512");
        if (!t) t = lookup("avx2");
        if (!t) t = &pp_ops_table_scalar;
        pp_current = t;
    }
    return pp_current;
}

int pp_ops_set_kernel(const char *name) {
    const pp_ops_table *t = lookup(name);
    if (!t) return -1;
    pp_current = t;
    return 0;
}

const char *pp_ops_available(void) {
    static char buf[64];
    strcpy(buf, "scalar");
    if (lookup("avx2")) strcat(buf, ",avx2");
    if (lookup("avx512")) strcat(buf, ",avx512");
    return buf;
}

/* The feature mask a path needs (0 when it is not compiled in); -1 for an unknown name. */
long pp_ops_needs(const char *name) {
    if (!strcmp(name, "scalar")) return 0;
#ifdef POPPINS_HAVE_AVX2
    if (!strcmp(name, "avx2")) return POPPINS_NEED_AVX2;
#endif
#ifdef POPPINS_HAVE_AVX512
    if (!strcmp(name, "avx512")) return POPPINS_NEED_AVX512;
#endif
    return -1;
}
