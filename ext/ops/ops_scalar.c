/* The fused kernels compiled for the scalar path (see ops_kernels.h). */
#define PP_ISA scalar
#include "ops_instantiate.h"
