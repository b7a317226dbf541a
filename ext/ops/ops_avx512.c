/* The fused kernels compiled for the avx512 path (see ops_kernels.h). */
#define PP_ISA avx512
#include "ops_instantiate.h"
