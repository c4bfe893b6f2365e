// The vector kernels (simd_kernels.inc) for the generic target (compile flags set in CMakeLists.txt).
#define SLIMRT_ISA_FN conv_packed_generic
#define SLIMRT_DW_FN dwconv_generic
#define SLIMRT_POOL_FN maxpool_generic
#define SLIMRT_ACT_FN activate_generic
#define SLIMRT_MR 4
#include "kernels/simd_kernels.inc"
