// slimrt kernels: free functions over raw pointers, leading dimensions and small
// params structs. They do not allocate, throw or log.
//
// Activations are NHWC with a pixel stride equal to the tensor's active channel
// count; rank-2 tensors are [N, F]. A "run" maps a stretch of active channels
// (act_off .. act_off+count in the pixel) to rows of the full weight axis
// (w_off .. w_off+count): a channel prefix is a single run (0, 0, width).
#pragma once

#include <cstddef>
#include <cstdint>

namespace slimrt::kernels {

// Output channels are packed in panels of kPanel columns.
constexpr int kPanel = 16;

enum class Act : int32_t { None = 0, Relu, Relu6, HardSwish, SiLU, Sigmoid, LeakyRelu, Tanh, Gelu, HardSigmoid, Elu };

// An activation with its parameters (model.h defines each): leaky_relu and elu
// read alpha, hardsigmoid reads alpha and beta, the others neither. Every
// activation maps NaN to NaN, as numpy does.
struct Activation {
  Act kind = Act::None;
  float alpha = 0.0f, beta = 0.0f;
};

struct ChannelRun {
  int32_t act_off;  // first channel of the run inside an input pixel
  int32_t w_off;    // first row of the run inside each tap of the full weights
  int32_t count;
};

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Position of output pixel m = (n*oh + y)*ow + x.
struct PixelPos {
  int64_t n;
  int32_t y, x;
};
static inline PixelPos pixel_pos(int64_t m, int32_t oh, int32_t ow) {
  const int64_t per_image = static_cast<int64_t>(oh) * ow;
  const int64_t n = m / per_image;
  const int64_t rem = m - n * per_image;
  const int32_t y = static_cast<int32_t>(rem / ow);
  return {n, y, static_cast<int32_t>(rem - static_cast<int64_t>(y) * ow)};
}

// Packing (at load, once). `w` is [taps][k_full][cout] (the file layout of a
// dense conv, or a linear's [In][Out] with taps = 1). `packed` receives
// ceil(cout/16) panels, panel p holding [taps*k_full][16] floats: columns
// p*16 .. p*16+15, zero beyond cout. Any out-channel prefix uses the first
// panels and any in-channel run uses rows of each tap: no per-width copies.
size_t packed_conv_size(int taps, int k_full, int cout);
void pack_conv(const float* w, int taps, int k_full, int cout, float* packed);

// Dense convolution (and linear, as a 1x1 conv over N "pixels") from packed
// weights: implicit GEMM reading the input in place, except when the input's
// pixel stride makes a tile's rows collide in the L1 cache (a multiple of
// 2 KiB): then a block's tiles are first copied into the caller's workspace.
// Output pixel m = (n*oh + y)*ow + x.
constexpr int kConvKC = 1024;  // rows of the K axis per chunk
constexpr int kConvMB = 96;   // output pixels per block
// Pixel ranges split between threads in multiples of this many pixels: a
// multiple of every instruction set's tile height, so no tile is cut short.
constexpr int kConvPixelGrain = 12;
// Floats of workspace one conv_packed call needs (one per concurrent caller).
constexpr size_t kConvWorkspaceFloats = static_cast<size_t>(kConvKC) * kConvMB;

struct ConvParams {
  const float* input;   // NHWC, pixel stride in_stride
  int32_t n, ih, iw, in_stride;
  float* output;        // NHWC, pixel stride out_stride
  int32_t oh, ow, out_stride;
  int32_t kh, kw, sh, sw, dh, dw, pad_top, pad_left;
  const ChannelRun* runs;
  int32_t nruns;
  int32_t k_full;         // rows per tap in the packed panels (full Cin)
  int32_t out_channels;   // active output channels, written to columns [0, out_channels)
  const float* packed;    // from pack_conv
  const float* scale;     // >= round_up(out_channels, 16) floats, active-position order
  const float* bias;      // same length as scale
  Activation act;
  // If set, added to every output value before the activation (a fused
  // residual add): same layout and pixel stride as the output.
  const float* residual = nullptr;
  // The input is NCHW ([n][channel][ih][iw], runs' act_off naming planes) and
  // read in place: a first layer over the model's input. Only for the shapes
  // conv_nchw_supported() accepts; needs no workspace beyond kConvWorkspaceFloats.
  bool nchw_input = false;
};
// Whether conv_packed reads an NCHW input for this geometry: dilation 1 across,
// kernel width and stride among those with a compiled kernel, few channels.
bool conv_nchw_supported(int cin, int kh, int kw, int sw, int dw);
// Computes output pixels [m_begin, m_end) and panels [p_begin, p_end); the
// output may be written several times (partial sums) before its final value.
void conv_packed(const ConvParams& p, int64_t m_begin, int64_t m_end, int p_begin, int p_end, float* workspace);
// The instruction set the vector kernels (conv_packed, dwconv, maxpool, activate_vector) run with:
// "avx512f", "avx2" or "generic".
const char* isa();
// Switches the vector kernels to "generic", "avx2" or "avx512f" (for tests and
// benchmarks); false if this CPU or build lacks it. Not safe while runs are
// in flight.
bool set_isa(const char* name);

// Depthwise convolution, NHWC, channel multiplier 1. `weights` is [taps][w_stride];
// output channel j (active position) reads weight column runs[r].w_off + (j - act_off).
struct DwParams {
  const float* input;
  int32_t n, ih, iw;
  float* output;
  int32_t oh, ow;
  int32_t channels;  // active channels: pixel stride of input and output
  int32_t kh, kw, sh, sw, dh, dw, pad_top, pad_left;
  const ChannelRun* runs;
  int32_t nruns;
  const float* weights;
  int32_t w_stride;
  const float* scale;  // channels floats, active-position order
  const float* bias;
  Activation act;
};
void dwconv(const DwParams& p, int64_t m_begin, int64_t m_end);

// Grouped convolution (any group count) at full width, direct loops. weights
// are the file layout [kh][kw][cin/groups][cout].
struct GroupedParams {
  const float* input;
  int32_t n, ih, iw, cin;
  float* output;
  int32_t oh, ow, cout, groups;
  int32_t kh, kw, sh, sw, dh, dw, pad_top, pad_left;
  const float* weights;
  const float* scale;
  const float* bias;
  Activation act;
};
void grouped_conv(const GroupedParams& p, int64_t m_begin, int64_t m_end);

// Max / average pooling, NHWC. Windows are clipped to the padded input;
// average divides by the window size inside the padded input when
// count_include_pad, otherwise by the number of real input pixels. A NaN in
// a max pooling window makes its result NaN (as numpy's max).
struct PoolParams {
  const float* input;
  int32_t n, ih, iw, channels;
  float* output;
  int32_t oh, ow;
  int32_t kh, kw, sh, sw, pad_top, pad_left, pad_bottom, pad_right;
  bool count_include_pad;
};
void maxpool(const PoolParams& p, int64_t m_begin, int64_t m_end);  // vector kernel per instruction set
void avgpool(const PoolParams& p, int64_t m_begin, int64_t m_end);

// The window of output pixel (oy, ox): real input pixels [y0, y1) x [x0, x1),
// and how many of its pixels lie inside the padded input.
struct PoolWindow {
  int y0, y1, x0, x1;
  int padded;
};
static inline PoolWindow pool_window(const PoolParams& p, int oy, int ox) {
  const int ys = oy * p.sh - p.pad_top, xs = ox * p.sw - p.pad_left;
  const int ye = ys + p.kh < p.ih + p.pad_bottom ? ys + p.kh : p.ih + p.pad_bottom;
  const int xe = xs + p.kw < p.iw + p.pad_right ? xs + p.kw : p.iw + p.pad_right;
  PoolWindow w;
  w.padded = (ye - ys) * (xe - xs);
  w.y0 = ys < 0 ? 0 : ys;
  w.x0 = xs < 0 ? 0 : xs;
  w.y1 = ye < p.ih ? ye : p.ih;
  w.x1 = xe < p.iw ? xe : p.iw;
  return w;
}

// Upsampling by integer factors sh, sw, NHWC, output pixels [m_begin, m_end)
// (m = (n*oh + y)*ow + x, oh = ih*sh, ow = iw*sw). Nearest: output (y, x)
// copies input (y / sh, x / sw). Bilinear (half-pixel centres, as PyTorch's
// align_corners=False): input coordinate max((y + 0.5) / sh - 0.5, 0), the two
// nearest input rows (the last repeated at the edge) weighted by distance; the
// same across.
struct ResizeParams {
  const float* input;
  int32_t n, ih, iw, channels;
  float* output;
  int32_t oh, ow, sh, sw;
  bool bilinear;
};
void resize(const ResizeParams& p, int64_t m_begin, int64_t m_end);

// The input rows (or columns) one output row reads, with their weights.
struct ResizeTap {
  int32_t i0, i1;
  float w0, w1;
};
ResizeTap resize_tap(int32_t out, int32_t scale, int32_t in, bool bilinear);

// Mean over the pixels of each image: x [n][hw][c] -> y [n][c], images [n_begin, n_end).
void global_avgpool(const float* x, int32_t hw, int32_t c, float* y, int64_t n_begin, int64_t n_end);

// y = act(a + b) with zero padding match: a has ca channels, b has cb, y has
// max(ca, cb); pixels [m_begin, m_end). y may alias a or b only if that operand is the widest.
void add(const float* a, int32_t ca, const float* b, int32_t cb, float* y, const Activation& act, int64_t m_begin,
         int64_t m_end);

// Copies `count` channels per pixel from x (stride x_stride) to y (stride
// y_stride) for pixels [m_begin, m_end): one input of a concat.
void copy_channels(const float* x, int32_t x_stride, float* y, int32_t y_stride, int32_t count,
                   int64_t m_begin, int64_t m_end);

// Channel shuffle of pixels [m_begin, m_end), NHWC with pixel stride c:
// y[m][j] = x[m][(j % groups) * (c / groups) + j / groups]. groups divides c;
// y must not alias x.
void channel_shuffle(const float* x, int32_t c, int32_t groups, float* y, int64_t m_begin, int64_t m_end);

// y[m][k] = x[m][k] > 0 ? x[m][k] : slope[k] * x[m][k] for pixels [m_begin,
// m_end), pixel stride c; slope holds c values (active-position order). NaN
// stays NaN. y may alias x.
void prelu(const float* x, int32_t c, const float* slope, float* y, int64_t m_begin, int64_t m_end);

// y[m][k] = act(scale[k] * x[m][k] + bias[k]) for pixels [m_begin, m_end),
// pixel stride c; scale and bias hold c values (active-position order). y may
// alias x.
void scale_bias(const float* x, int32_t c, const float* scale, const float* bias, float* y, const Activation& act,
                int64_t m_begin, int64_t m_end);

// Channel gate (squeeze-and-excitation) in one pass: y[m][k] = x[m][k] *
// gate[m / hw][k] for pixels [m_begin, m_end), pixel stride c, hw pixels per
// image; gate holds c values per image. y may alias x.
void channel_mul(const float* x, int32_t c, int32_t hw, const float* gate, float* y, int64_t m_begin,
                 int64_t m_end);

// The double head of a gate op (format spec in core/model.h) for images
// [n_begin, n_end) of an NHWC input [n][hw][channels]: p = the mean over the
// pixels, h = relu(p * reduce_w + reduce_b) into hidden [n][hidden],
// attention [n][channels] = 2 * sigmoid(h * expand_w + expand_b), logits
// [n][choices] = h * slim_w + slim_b. Weights row-major: reduce_w
// [channels][hidden], expand_w [hidden][channels], slim_w [hidden][choices].
// The outputs do not alias the input or each other. Reads and writes nothing
// else; does not allocate.
struct GateParams {
  const float* input;
  int32_t hw, channels, hidden, choices;
  const float *reduce_w, *reduce_b, *expand_w, *expand_b, *slim_w, *slim_b;
  float* hidden_out;
  float* attention;
  float* logits;
};
void gate_head(const GateParams& p, int64_t n_begin, int64_t n_end);

// In place: x[i] = act(x[i]) for i in [begin, end).
void activate(float* x, const Activation& act, int64_t begin, int64_t end);
// The vector kernel per instruction set that activate() uses for the
// activations built on exp (sigmoid, silu, tanh, elu, gelu): y[i] = act(y[i]), i < n.
void activate_vector(float* y, int64_t n, const Activation& act);

// Softmax over the c values of each row, rows [r_begin, r_end).
void softmax(const float* x, int32_t c, float* y, int64_t r_begin, int64_t r_end);

// Layout changes. nhwc [n][h*w][c] <-> nchw [n][c][h*w].
void nchw_to_nhwc(const float* x, int32_t n, int32_t c, int32_t hw, float* y);
void nhwc_to_nchw(const float* x, int32_t n, int32_t c, int32_t hw, float* y);

// Scalar activation, shared by every kernel.
static inline float apply_act(float v, const Activation& act);

}  // namespace slimrt::kernels

#include "kernels/act_inl.h"
