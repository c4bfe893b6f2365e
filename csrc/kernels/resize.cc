// Upsampling by integer factors, NHWC: nearest and bilinear (half-pixel centres).
#include <algorithm>
#include <cstring>

#include "kernels/kernels.h"

namespace slimrt::kernels {

ResizeTap resize_tap(int32_t out, int32_t scale, int32_t in, bool bilinear) {
  if (!bilinear) return {out / scale, out / scale, 1.0f, 0.0f};
  // the output pixel's centre in input coordinates, clamped at the first pixel's centre
  float src = (static_cast<float>(out) + 0.5f) / static_cast<float>(scale) - 0.5f;
  src = src < 0.0f ? 0.0f : src;
  const int32_t i0 = std::min(static_cast<int32_t>(src), in - 1);
  const int32_t i1 = std::min(i0 + 1, in - 1);
  const float w1 = src - static_cast<float>(i0);
  return {i0, i1, 1.0f - w1, w1};
}

void resize(const ResizeParams& p, int64_t m_begin, int64_t m_end) {
  const int32_t c = p.channels;
  const int64_t per_image = static_cast<int64_t>(p.oh) * p.ow;
  for (int64_t m = m_begin; m < m_end; ++m) {
    const int64_t n = m / per_image;
    const int32_t oy = static_cast<int32_t>((m - n * per_image) / p.ow);
    const int32_t ox = static_cast<int32_t>(m - n * per_image - static_cast<int64_t>(oy) * p.ow);
    const float* img = p.input + n * p.ih * p.iw * static_cast<int64_t>(c);
    float* out = p.output + m * c;
    const ResizeTap ty = resize_tap(oy, p.sh, p.ih, p.bilinear), tx = resize_tap(ox, p.sw, p.iw, p.bilinear);
    const float* r0 = img + static_cast<int64_t>(ty.i0) * p.iw * c;
    if (!p.bilinear) {
      std::memcpy(out, r0 + static_cast<int64_t>(tx.i0) * c, sizeof(float) * c);
      continue;
    }
    const float* r1 = img + static_cast<int64_t>(ty.i1) * p.iw * c;
    const float* a = r0 + static_cast<int64_t>(tx.i0) * c;
    const float* b = r0 + static_cast<int64_t>(tx.i1) * c;
    const float* d = r1 + static_cast<int64_t>(tx.i0) * c;
    const float* e = r1 + static_cast<int64_t>(tx.i1) * c;
    const float w00 = ty.w0 * tx.w0, w01 = ty.w0 * tx.w1, w10 = ty.w1 * tx.w0, w11 = ty.w1 * tx.w1;
    for (int32_t k = 0; k < c; ++k) out[k] = w00 * a[k] + w01 * b[k] + w10 * d[k] + w11 * e[k];
  }
}

}  // namespace slimrt::kernels
