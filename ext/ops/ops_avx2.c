/* The fused kernels compiled for the avx2 path (see ops_kernels.h). */
#include "ops.h"
#define PP_ISA avx2
#define PP_R float
#define PP_S f32
#include "ops_kernels.h"
#undef PP_R
#undef PP_S
#define PP_R double
#define PP_S f64
#include "ops_kernels.h"
#undef PP_R
#undef PP_S
#include "ops_table.h"
