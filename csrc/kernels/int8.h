// int8 kernels: dense convolution / linear over int8 weight panels packed once
// at load, and depthwise convolution, both with int8 semantics (model.h,
// "int8 ops"). Free functions over raw pointers; they do not allocate, throw
// or log. Activations stay float32 NHWC between ops: each int8 op quantizes
// its input with its input scale while reading it, and its epilogue
// dequantizes (and applies the per-channel scale, bias, residual and
// activation) into a float32 output.
//
// Quantization of an input value x with scale s (r = 1 / s, float32):
//   q(x) = NaN ? 0 : clamp(round_half_even(x * r), -127, 127)
// computed as float32 product, clamp, then rounding (round-to-nearest-even,
// as the default floating-point environment does).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/kernels.h"

namespace slimrt::kernels {

// Weight panels: output channels in panels of kPanel (16) columns; each panel
// holds, per tap, kg = ceil(k_full / 4) groups of 4 K rows, each group 64
// bytes: [column 0..15][row 0..3]. Rows past k_full and columns past cout are
// zero. An in-channel prefix of width w uses the first ceil(w / 4) groups of
// every tap (a row prefix); an out-channel prefix uses the first panels.
inline int32_t i8_row_groups(int32_t k_full) { return (k_full + 3) / 4; }
size_t packed_i8_size(int taps, int k_full, int cout);
// w is [taps][k_full][cout] int8 (the file layout of a dense conv; a linear's
// [In][Out] with taps = 1).
void pack_i8(const int8_t* w, int taps, int k_full, int cout, int8_t* packed);
// The weight (tap, row, column) of packed panels.
inline int8_t packed_i8_at(const int8_t* packed, int taps, int kg, int tap, int row, int col) {
  const int64_t panel = col / kPanel;
  const int64_t group = (panel * taps + tap) * kg + row / 4;
  return packed[group * 64 + (col % kPanel) * 4 + row % 4];
}

// Dense int8 convolution (linear: a 1x1 conv over N "pixels").
// For every output pixel the kernel gathers its K vector into the
// workspace as bytes u = q(x) + 128 (u = 128 for taps in the padding, 0 for
// rows that are not active), per tap `kgroups` groups of 4 rows, and
// accumulates acc[c] = sum(u * w[row][c]) in int32 (vpdpbusd: u8 x s8). With
// comp[c] = 128 * (sum of the active rows' weights of column c over all taps),
//   y[c] = act(float(acc[c] - comp[c]) * mult[c] + bias[c] + residual[c]).
constexpr int kI8MR = 12;  // pixels per tile
constexpr int kI8MB = 48;  // pixels per gathered block (whole tiles)

struct ConvI8Params {
  const float* input;  // NHWC, pixel stride in_stride
  int32_t n, ih, iw, in_stride;
  float* output;  // NHWC, pixel stride out_stride
  int32_t oh, ow, out_stride;
  int32_t kh, kw, sh, sw, dh, dw, pad_top, pad_left;
  // Per tap, row k in [0, 4 * kgroups) of the packed panels reads input
  // channel position kmap[k] (-1: not active). When prefix > 0 the map is
  // the prefix: kmap[k] = k for k < prefix, -1 beyond.
  const int32_t* kmap;
  int32_t prefix;
  int32_t kgroups;       // active groups of 4 rows per tap (<= kg_full)
  int32_t kg_full;       // groups per tap in the packed panels
  int32_t out_channels;  // active output channels, columns [0, out_channels)
  const int8_t* packed;  // from pack_i8
  const int32_t* comp;   // round_up(out_channels, 16) values
  const float* mult;     // round_up(out_channels, 16) values
  const float* bias;     // round_up(out_channels, 16) values
  float inv_scale;       // r = 1 / s of the input
  Activation act;
  const float* residual = nullptr;  // added before the activation; layout of the output
};

// Bytes of workspace one conv_i8 call needs for a conv of `taps` taps over
// kg_full row groups per tap (64-byte aligned workspace).
size_t conv_i8_workspace_bytes(int taps, int kg_full);
// Output pixels [m_begin, m_end), panels [p_begin, p_end).
void conv_i8(const ConvI8Params& p, int64_t m_begin, int64_t m_end, int p_begin, int p_end, uint8_t* workspace);

// Depthwise int8 convolution, NHWC, channel multiplier 1: output channel j
// (active position, in run r) is
//   y = act(float(sum over taps in the input of q(x) * wq) * mult[j] + bias[j])
// with wq the int8 weight of column runs[r].w_off + (j - act_off), stored as a
// float in `weights` [taps][w_stride] (exact: every partial sum is an integer
// below 2^24, taps <= 256). Padding taps contribute 0.
struct DwI8Params {
  const float* input;
  int32_t n, ih, iw;
  float* output;
  int32_t oh, ow;
  int32_t channels;  // active channels: pixel stride of input and output
  int32_t kh, kw, sh, sw, dh, dw, pad_top, pad_left;
  const ChannelRun* runs;
  int32_t nruns;
  const float* weights;
  int32_t w_stride;   // a multiple of 16
  const float* mult;  // round_up(channels, 16) values, active-position order
  const float* bias;  // same
  float inv_scale;
  Activation act;
};
void dwconv_i8(const DwI8Params& p, int64_t m_begin, int64_t m_end);

// The instruction set of the int8 kernels: "avx512vnni" or "generic".
const char* i8_isa();
// Switches the int8 kernels (tests, benchmarks); false if this CPU or build
// lacks `name`. Not safe while runs are in flight.
bool set_i8_isa(const char* name);

// Scalar quantization (the definition above).
static inline int32_t quantize_i8(float x, float inv_scale) {
  float v = x * inv_scale;
  if (v != v) return 0;
  v = v < -127.0f ? -127.0f : (v > 127.0f ? 127.0f : v);
  return static_cast<int32_t>(__builtin_nearbyintf(v));
}

}  // namespace slimrt::kernels
