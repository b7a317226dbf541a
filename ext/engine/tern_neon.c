/* The ternary kernels (ext/ternary/ternary_neon.c) built into poppins._engine too, so the
 * compiled decode step can call them without going through Python. */
#include "../ternary/ternary_neon.c"
