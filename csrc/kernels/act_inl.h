// Scalar activations (inline: used inside kernel loops).
#pragma once

#include <cmath>

namespace slimrt::kernels {

static inline float apply_act(float v, Act act) {
  switch (act) {
    case Act::None: return v;
    case Act::Relu: return v > 0.0f ? v : 0.0f;
    case Act::Relu6: return v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v);
    case Act::HardSwish: {
      float t = v + 3.0f;
      t = t < 0.0f ? 0.0f : (t > 6.0f ? 6.0f : t);
      return v * t * (1.0f / 6.0f);
    }
    case Act::SiLU: return v / (1.0f + std::exp(-v));
    case Act::Sigmoid: return 1.0f / (1.0f + std::exp(-v));
  }
  return v;
}

}  // namespace slimrt::kernels
