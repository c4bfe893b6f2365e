// conv_packed for the generic target (compile flags set in CMakeLists.txt).
#define SLIMRT_ISA_FN conv_packed_generic
#define SLIMRT_MR 4
#include "kernels/conv_impl.inc"
