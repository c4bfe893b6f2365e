// The vector kernels (simd_kernels.inc) for the avx2 target (compile flags set in CMakeLists.txt).
#define SLIMRT_ISA_FN conv_packed_avx2
#define SLIMRT_DW_FN dwconv_avx2
#define SLIMRT_POOL_FN maxpool_avx2
#define SLIMRT_ACT_FN activate_avx2
#define SLIMRT_MR 4
#include "kernels/simd_kernels.inc"
