// Grouped convolution (any group count, full width), NHWC. Depthwise is a
// vector kernel in simd_kernels.inc.
#include <vector>

#include "kernels/kernels.h"

namespace slimrt::kernels {

void grouped_conv(const GroupedParams& p, int64_t m_begin, int64_t m_end) {
  const int cin_g = p.cin / p.groups;
  const int cout_g = p.cout / p.groups;
  for (int64_t m = m_begin; m < m_end; ++m) {
    const PixelPos pos = pixel_pos(m, p.oh, p.ow);
    const int64_t n = pos.n;
    const int oy = pos.y, ox = pos.x;
    float* out = p.output + m * p.cout;
    for (int c = 0; c < p.cout; ++c) out[c] = 0.0f;
    for (int ky = 0; ky < p.kh; ++ky) {
      const int iy = oy * p.sh - p.pad_top + ky * p.dh;
      if (iy < 0 || iy >= p.ih) continue;
      for (int kx = 0; kx < p.kw; ++kx) {
        const int ix = ox * p.sw - p.pad_left + kx * p.dw;
        if (ix < 0 || ix >= p.iw) continue;
        const float* px = p.input + ((n * p.ih + iy) * p.iw + ix) * p.cin;
        const float* wt = p.weights + static_cast<int64_t>(ky * p.kw + kx) * cin_g * p.cout;
        for (int g = 0; g < p.groups; ++g) {
          for (int ci = 0; ci < cin_g; ++ci) {
            const float x = px[g * cin_g + ci];
            const float* w = wt + static_cast<int64_t>(ci) * p.cout + g * cout_g;
            float* o = out + g * cout_g;
            for (int co = 0; co < cout_g; ++co) o[co] += x * w[co];
          }
        }
      }
    }
    for (int c = 0; c < p.cout; ++c) out[c] = apply_act(out[c] * p.scale[c] + p.bias[c], p.act);
  }
}

}  // namespace slimrt::kernels
