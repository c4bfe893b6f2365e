// The gate op's double head (DS-Net): pooling, the reduce layer, the attention
// and slimming heads. A few thousand multiply-adds per image, so plain loops.
#include <cmath>

#include "kernels/kernels.h"

namespace slimrt::kernels {

void gate_head(const GateParams& p, int64_t n_begin, int64_t n_end) {
  const int32_t c = p.channels, d = p.hidden, k = p.choices;
  for (int64_t n = n_begin; n < n_end; ++n) {
    const float* x = p.input + n * p.hw * c;
    float* a = p.attention + n * c;
    float* h = p.hidden_out + n * d;
    float* logits = p.logits + n * k;
    // the mean over the pixels, kept in the attention row until it is needed
    for (int32_t ch = 0; ch < c; ++ch) a[ch] = 0.0f;
    for (int32_t m = 0; m < p.hw; ++m)
      for (int32_t ch = 0; ch < c; ++ch) a[ch] += x[static_cast<int64_t>(m) * c + ch];
    const float inv = 1.0f / static_cast<float>(p.hw);
    for (int32_t ch = 0; ch < c; ++ch) a[ch] *= inv;
    for (int32_t j = 0; j < d; ++j) h[j] = p.reduce_b[j];
    for (int32_t ch = 0; ch < c; ++ch) {
      const float v = a[ch];
      const float* w = p.reduce_w + static_cast<int64_t>(ch) * d;
      for (int32_t j = 0; j < d; ++j) h[j] += v * w[j];
    }
    for (int32_t j = 0; j < d; ++j) h[j] = h[j] > 0.0f ? h[j] : (h[j] == h[j] ? 0.0f : h[j]);
    for (int32_t ch = 0; ch < c; ++ch) a[ch] = p.expand_b[ch];
    for (int32_t q = 0; q < k; ++q) logits[q] = p.slim_b[q];
    for (int32_t j = 0; j < d; ++j) {
      const float v = h[j];
      const float* we = p.expand_w + static_cast<int64_t>(j) * c;
      for (int32_t ch = 0; ch < c; ++ch) a[ch] += v * we[ch];
      const float* ws = p.slim_w + static_cast<int64_t>(j) * k;
      for (int32_t q = 0; q < k; ++q) logits[q] += v * ws[q];
    }
    for (int32_t ch = 0; ch < c; ++ch) a[ch] = 2.0f / (1.0f + std::exp(-a[ch]));
  }
}

}  // namespace slimrt::kernels
