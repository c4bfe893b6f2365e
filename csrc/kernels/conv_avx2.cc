// conv_packed for the avx2 target (compile flags set in CMakeLists.txt).
#define SLIMRT_ISA_FN conv_packed_avx2
#define SLIMRT_MR 4
#include "kernels/conv_impl.inc"
