/* Instantiates the fused kernels (ops_kernels.h) in float32 and float64 and their table
 * (ops_table.h) for the path named by PP_ISA; each ops_<isa>.c defines PP_ISA and includes
 * this file, so every path is compiled with its own flags only. */
#include "ops.h"
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
