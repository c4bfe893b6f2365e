// Shapes and channel maps of every tensor at a profile (widths per group) and
// an input shape. See the format spec in model.h for the rules.
#pragma once

#include <cstdint>
#include <vector>

#include "core/model.h"

namespace slimrt {

struct Run {
  int32_t off;    // first channel (or feature) on the full axis
  int32_t count;  // active channels of the run
};

struct TensorShape {
  int32_t rank = 4;            // 4: NHWC in memory, reported as NCHW; 2: [N, F]
  int64_t n = 0, h = 1, w = 1;
  int32_t c = 0;               // active channels (rank 2: features)
  int32_t c_full = 0;          // channels of the full model
  std::vector<Run> runs;       // active channels as runs on the full axis
  int64_t elements() const { return n * h * w * c; }
};

struct ShapePlan {
  std::vector<TensorShape> tensors;  // by tensor id
  int64_t macs = 0;                  // per sample
  int64_t params = 0;
};

// Throws Error(InvalidArgument) with a message naming the op when the shapes do
// not fit (e.g. an input size too small for a kernel).
ShapePlan plan_shapes(const Model& model, const std::vector<int32_t>& widths, int64_t n, int64_t h, int64_t w);

// Used while loading: full-width input channels (features for linear) of
// every op at the default input shape. Throws InvalidModel.
struct FullShapes {
  std::vector<int32_t> in_channels;  // by op index
};
FullShapes infer_full_shapes(const Model& model);

// Active output channels of every op at `widths` (default input shape).
std::vector<int32_t> profile_output_widths(const Model& model, const std::vector<int32_t>& widths);

}  // namespace slimrt
