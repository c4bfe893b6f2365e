// Average and global average pooling, NHWC (max pooling is a vector kernel, simd_kernels.inc).

#include "kernels/kernels.h"

namespace slimrt::kernels {

void avgpool(const PoolParams& p, int64_t m_begin, int64_t m_end) {
  const int64_t opix = static_cast<int64_t>(p.oh) * p.ow;
  const int C = p.channels;
  for (int64_t m = m_begin; m < m_end; ++m) {
    const int64_t n = m / opix;
    const PoolWindow w = pool_window(p, static_cast<int>((m - n * opix) / p.ow), static_cast<int>((m - n * opix) % p.ow));
    float* out = p.output + m * C;
    for (int c = 0; c < C; ++c) out[c] = 0.0f;
    for (int y = w.y0; y < w.y1; ++y)
      for (int x = w.x0; x < w.x1; ++x) {
        const float* px = p.input + ((n * p.ih + y) * p.iw + x) * C;
        for (int c = 0; c < C; ++c) out[c] += px[c];
      }
    const int count = p.count_include_pad ? w.padded : (w.y1 - w.y0) * (w.x1 - w.x0);
    const float inv = count > 0 ? 1.0f / static_cast<float>(count) : 0.0f;
    for (int c = 0; c < C; ++c) out[c] *= inv;
  }
}

void global_avgpool(const float* x, int32_t hw, int32_t c, float* y, int64_t n_begin, int64_t n_end) {
  const float inv = 1.0f / static_cast<float>(hw);
  for (int64_t n = n_begin; n < n_end; ++n) {
    float* out = y + n * c;
    for (int k = 0; k < c; ++k) out[k] = 0.0f;
    const float* img = x + n * hw * static_cast<int64_t>(c);
    for (int i = 0; i < hw; ++i)
      for (int k = 0; k < c; ++k) out[k] += img[static_cast<int64_t>(i) * c + k];
    for (int k = 0; k < c; ++k) out[k] *= inv;
  }
}

}  // namespace slimrt::kernels
