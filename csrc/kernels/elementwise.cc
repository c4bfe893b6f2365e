// Elementwise ops, prelu, scale_bias, channel gates, concat copies, channel shuffle, softmax and layout changes.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/kernels.h"

namespace slimrt::kernels {

namespace {

// y[i] = act(y[i]) over one contiguous stretch; the switch stays outside the
// loops so each one vectorizes. Comparisons are written so that NaN takes the
// branch that keeps it (model.h: every activation maps NaN to NaN).
void act_span(float* y, int64_t n, const Activation& act) {
  switch (act.kind) {
    case Act::None: return;
    case Act::Relu:
      for (int64_t i = 0; i < n; ++i) y[i] = y[i] < 0.0f ? 0.0f : y[i];
      return;
    case Act::Relu6:
      for (int64_t i = 0; i < n; ++i) y[i] = y[i] < 0.0f ? 0.0f : (y[i] > 6.0f ? 6.0f : y[i]);
      return;
    case Act::LeakyRelu: {
      const float alpha = act.alpha;
      for (int64_t i = 0; i < n; ++i) y[i] = y[i] > 0.0f ? y[i] : alpha * y[i];
      return;
    }
    case Act::HardSigmoid: {
      const float alpha = act.alpha, beta = act.beta;
      for (int64_t i = 0; i < n; ++i) {
        const float t = alpha * y[i] + beta;
        y[i] = t < 0.0f ? 0.0f : (t > 1.0f ? 1.0f : t);
      }
      return;
    }
    case Act::HardSwish:
      for (int64_t i = 0; i < n; ++i) {
        const float t = y[i] + 3.0f;
        y[i] = y[i] * (t < 0.0f ? 0.0f : (t > 6.0f ? 6.0f : t)) * (1.0f / 6.0f);
      }
      return;
    default:  // the activations built on exp: the vector kernel of the instruction set
      activate_vector(y, n, act);
  }
}

}  // namespace

void add(const float* a, int32_t ca, const float* b, int32_t cb, float* y, const Activation& act, int64_t m_begin,
         int64_t m_end) {
  const int32_t cy = ca > cb ? ca : cb;
  if (ca == cb) {  // the common case: one stretch over all pixels
    const int64_t begin = m_begin * cy, end = m_end * cy;
    for (int64_t i = begin; i < end; ++i) y[i] = a[i] + b[i];
    act_span(y + begin, end - begin, act);
    return;
  }
  const int32_t common = ca < cb ? ca : cb;
  for (int64_t m = m_begin; m < m_end; ++m) {
    const float* pa = a + m * ca;
    const float* pb = b + m * cb;
    float* py = y + m * cy;
    for (int c = 0; c < common; ++c) py[c] = pa[c] + pb[c];
    const float* rest = ca > cb ? pa : pb;
    for (int c = common; c < cy; ++c) py[c] = rest[c];
    act_span(py, cy, act);
  }
}

void copy_channels(const float* x, int32_t x_stride, float* y, int32_t y_stride, int32_t count,
                   int64_t m_begin, int64_t m_end) {
  for (int64_t m = m_begin; m < m_end; ++m)
    std::memcpy(y + m * y_stride, x + m * x_stride, sizeof(float) * count);
}

void channel_shuffle(const float* x, int32_t c, int32_t groups, float* y, int64_t m_begin, int64_t m_end) {
  const int32_t per_group = c / groups;
  for (int64_t m = m_begin; m < m_end; ++m) {
    const float* px = x + m * c;
    float* py = y + m * c;
    // Input channel g * per_group + k goes to output channel k * groups + g.
    for (int32_t g = 0; g < groups; ++g)
      for (int32_t k = 0; k < per_group; ++k) py[k * groups + g] = px[g * per_group + k];
  }
}

void prelu(const float* x, int32_t c, const float* slope, float* y, int64_t m_begin, int64_t m_end) {
  for (int64_t m = m_begin; m < m_end; ++m) {
    const float* px = x + m * c;
    float* py = y + m * c;
    for (int32_t k = 0; k < c; ++k) py[k] = px[k] > 0.0f ? px[k] : slope[k] * px[k];
  }
}

void channel_mul(const float* x, int32_t c, int32_t hw, const float* gate, float* y, int64_t m_begin,
                 int64_t m_end) {
  for (int64_t m = m_begin; m < m_end;) {
    // the pixels of one image share its gate vector
    const int64_t image = m / hw, end = std::min(m_end, (image + 1) * hw);
    const float* g = gate + image * c;
    for (; m < end; ++m) {
      const float* px = x + m * c;
      float* py = y + m * c;
      for (int32_t k = 0; k < c; ++k) py[k] = px[k] * g[k];
    }
  }
}

void scale_bias(const float* x, int32_t c, const float* scale, const float* bias, float* y, const Activation& act,
                int64_t m_begin, int64_t m_end) {
  for (int64_t m = m_begin; m < m_end; ++m) {
    const float* px = x + m * c;
    float* py = y + m * c;
    for (int32_t k = 0; k < c; ++k) py[k] = scale[k] * px[k] + bias[k];
  }
  // one stretch: the activation's loop runs over every pixel at once
  act_span(y + m_begin * c, (m_end - m_begin) * c, act);
}

void activate(float* x, const Activation& act, int64_t begin, int64_t end) { act_span(x + begin, end - begin, act); }

void softmax(const float* x, int32_t c, float* y, int64_t r_begin, int64_t r_end) {
  for (int64_t r = r_begin; r < r_end; ++r) {
    const float* in = x + r * c;
    float* out = y + r * c;
    float mx = in[0];
    for (int k = 1; k < c; ++k) mx = in[k] > mx ? in[k] : mx;
    double sum = 0.0;
    for (int k = 0; k < c; ++k) {
      out[k] = std::exp(in[k] - mx);
      sum += out[k];
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (int k = 0; k < c; ++k) out[k] *= inv;
  }
}

namespace {

// dst[j * rows + i] = src[i * cols + j] (a rows x cols matrix transposed), in
// square blocks so that both sides stay in L1.
// A few rows (an image's colour planes into pixels): one pass over the columns.
template <int R>
void transpose_rows(const float* src, int64_t cols, float* dst) {
  for (int64_t j = 0; j < cols; ++j)
    for (int i = 0; i < R; ++i) dst[j * R + i] = src[i * cols + j];
}

void transpose(const float* src, int64_t rows, int64_t cols, float* dst) {
  switch (rows) {
    case 1: std::memcpy(dst, src, sizeof(float) * cols); return;
    case 2: transpose_rows<2>(src, cols, dst); return;
    case 3: transpose_rows<3>(src, cols, dst); return;
    case 4: transpose_rows<4>(src, cols, dst); return;
    default: break;
  }
  constexpr int64_t kBlock = 32;
  for (int64_t i0 = 0; i0 < rows; i0 += kBlock) {
    const int64_t i1 = std::min(rows, i0 + kBlock);
    for (int64_t j0 = 0; j0 < cols; j0 += kBlock) {
      const int64_t j1 = std::min(cols, j0 + kBlock);
      for (int64_t j = j0; j < j1; ++j)
        for (int64_t i = i0; i < i1; ++i) dst[j * rows + i] = src[i * cols + j];
    }
  }
}

}  // namespace

void nchw_to_nhwc(const float* x, int32_t n, int32_t c, int32_t hw, float* y) {
  const int64_t image = static_cast<int64_t>(c) * hw;
  for (int64_t i = 0; i < n; ++i) transpose(x + i * image, c, hw, y + i * image);
}

void nhwc_to_nchw(const float* x, int32_t n, int32_t c, int32_t hw, float* y) {
  const int64_t image = static_cast<int64_t>(c) * hw;
  for (int64_t i = 0; i < n; ++i) transpose(x + i * image, hw, c, y + i * image);
}

}  // namespace slimrt::kernels
