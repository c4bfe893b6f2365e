// Scalar activations (inline: used inside kernel loops). The definitions are
// the format's (model.h); written so that NaN propagates (a comparison with
// NaN is false, so NaN takes the branch that computes from it).
#pragma once

#include <cmath>

namespace slimrt::kernels {

static inline float apply_act(float v, const Activation& act) {
  switch (act.kind) {
    case Act::None: return v;
    case Act::Relu: return v < 0.0f ? 0.0f : v;
    case Act::Relu6: return v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v);
    case Act::HardSwish: {
      float t = v + 3.0f;
      t = t < 0.0f ? 0.0f : (t > 6.0f ? 6.0f : t);
      return v * t * (1.0f / 6.0f);
    }
    case Act::SiLU: return v / (1.0f + std::exp(-v));
    case Act::Sigmoid: return 1.0f / (1.0f + std::exp(-v));
    case Act::LeakyRelu: return v > 0.0f ? v : act.alpha * v;
    case Act::Tanh: return std::tanh(v);
    // 0.5 x (1 + erf(x / sqrt 2)), as erfc: no cancellation for negative x.
    case Act::Gelu: return 0.5f * v * std::erfc(v * -0.70710678118654752f);
    case Act::HardSigmoid: {
      const float t = act.alpha * v + act.beta;
      return t < 0.0f ? 0.0f : (t > 1.0f ? 1.0f : t);
    }
    case Act::Elu: return v > 0.0f ? v : act.alpha * std::expm1(v);
  }
  return v;
}

}  // namespace slimrt::kernels
