// Pooling, NHWC.
#include <limits>

#include "kernels/kernels.h"

namespace slimrt::kernels {

namespace {

struct Window {
  int y0, y1, x0, x1;  // real input pixels [y0, y1) x [x0, x1)
  int padded;          // pixels of the window inside the padded input
};

Window window(const PoolParams& p, int oy, int ox) {
  const int ys = oy * p.sh - p.pad_top, xs = ox * p.sw - p.pad_left;
  const int ye = ys + p.kh < p.ih + p.pad_bottom ? ys + p.kh : p.ih + p.pad_bottom;
  const int xe = xs + p.kw < p.iw + p.pad_right ? xs + p.kw : p.iw + p.pad_right;
  Window w;
  w.padded = (ye - ys) * (xe - xs);
  w.y0 = ys < 0 ? 0 : ys;
  w.x0 = xs < 0 ? 0 : xs;
  w.y1 = ye < p.ih ? ye : p.ih;
  w.x1 = xe < p.iw ? xe : p.iw;
  return w;
}

}  // namespace

void maxpool(const PoolParams& p, int64_t m_begin, int64_t m_end) {
  const int64_t opix = static_cast<int64_t>(p.oh) * p.ow;
  const int C = p.channels;
  for (int64_t m = m_begin; m < m_end; ++m) {
    const int64_t n = m / opix;
    const Window w = window(p, static_cast<int>((m - n * opix) / p.ow), static_cast<int>((m - n * opix) % p.ow));
    float* out = p.output + m * C;
    for (int c = 0; c < C; ++c) out[c] = -std::numeric_limits<float>::infinity();
    for (int y = w.y0; y < w.y1; ++y)
      for (int x = w.x0; x < w.x1; ++x) {
        const float* px = p.input + ((n * p.ih + y) * p.iw + x) * C;
        for (int c = 0; c < C; ++c) out[c] = px[c] > out[c] ? px[c] : out[c];
      }
  }
}

void avgpool(const PoolParams& p, int64_t m_begin, int64_t m_end) {
  const int64_t opix = static_cast<int64_t>(p.oh) * p.ow;
  const int C = p.channels;
  for (int64_t m = m_begin; m < m_end; ++m) {
    const int64_t n = m / opix;
    const Window w = window(p, static_cast<int>((m - n * opix) / p.ow), static_cast<int>((m - n * opix) % p.ow));
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
