# The one CPU check (ext/common/poppins_cpu.h), seen from Cython: included by every kernel
# module that dispatches SIMD paths, so each reports the same names.
cdef extern from "poppins_common.h" nogil:
    long long poppins_par_min_elements()

cdef extern from "poppins_cpu.h" nogil:
    unsigned pp_cpu_features()
    const char *pp_cpu_feature_name(int i)
    int PP_CPU_NFEATURES


def _feature_names(long mask):
    """The feature names of a PP_CPU_* bitmask (bit i = poppins/_isa.py FEATURES' i-th)."""
    return [pp_cpu_feature_name(i).decode() for i in range(PP_CPU_NFEATURES) if mask >> i & 1]


def cpu_features():
    """The CPU features pp_cpu_features() detects, by name."""
    return _feature_names(pp_cpu_features())
