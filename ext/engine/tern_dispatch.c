/* The ternary dispatch (ext/ternary/dispatch.c) built into poppins._engine too (same code,
 * its own copy of the CPU detection: symbols stay local to each extension module). */
#include "../ternary/dispatch.c"
