/* The fused kernels compiled for the avx2 path (see ops_kernels.h). */
#define PP_ISA avx2
#include "ops_instantiate.h"
