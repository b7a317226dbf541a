/* Shared helpers for poppins' C kernels: build facts and OpenMP glue.
 *
 * Every extension module reports how it was built through poppins_build_openmp(), so
 * poppins.backend_info() can tell whether OpenMP is really compiled in. */
#ifndef POPPINS_COMMON_H
#define POPPINS_COMMON_H

#ifdef _OPENMP
#include <omp.h>
#endif

static inline int poppins_build_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* The "go parallel" cut-off of element-wise work (elements touched): the one definition is
 * PARALLEL_MIN_ELEMENTS in poppins/threads.py, which setup.py passes as
 * POPPINS_PAR_MIN_ELEMENTS.  Below it a kernel runs on one thread (waking sleeping OpenMP
 * workers costs more than small work takes). */
#ifdef POPPINS_PAR_MIN_ELEMENTS /* (a build without it cannot use PP_PAR_MIN_ELEMENTS) */
#define PP_PAR_MIN_ELEMENTS ((long long)(POPPINS_PAR_MIN_ELEMENTS))

static inline long long poppins_par_min_elements(void) { return PP_PAR_MIN_ELEMENTS; }
#endif

/* Clamp a requested thread count to something sane (>= 1). Kernels take the count as an
 * explicit argument decided by poppins.threads; they never read the environment. */
static inline int poppins_threads(int requested) {
#ifdef _OPENMP
    return requested > 0 ? requested : 1;
#else
    (void)requested;
    return 1;
#endif
}

#endif
