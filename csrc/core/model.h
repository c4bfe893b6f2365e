// slimrt model loading: the .slim file format and the in-memory model.
//
// ============================================================================
// THE .slim FILE FORMAT, version 1
// ============================================================================
//
// A .slim file is a safetensors container:
//
//   bytes [0, 8)        u64 little-endian N: length of the header
//   bytes [8, 8+N)      UTF-8 JSON header: {"<tensor name>": {"dtype": "F32",
//                       "shape": [...], "data_offsets": [begin, end]}, ...,
//                       "__metadata__": {"slimrt": "<model JSON, as a string>"}}
//   bytes [8+N, end)    tensor data; offsets are relative to 8+N, tensors do
//                       not overlap and lie inside the file. F32 tensors are
//                       read, and the I8 weights of int8 ops (little-endian,
//                       C order).
//
// Container rules, checked before anything else is read:
//   - a tensor's byte count is exactly its element count times its dtype's
//     size, computed without overflow for every dtype (a product that does not
//     fit 64 bits is refused); dtypes are the whole-byte safetensors ones (BOOL,
//     U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, I16, U16, F16, BF16, I32, U32, F32,
//     I64, U64, F64, C64), others are refused;
//   - no two tensors share a byte (empty tensors occupy none);
//   - neither the header JSON nor the model JSON nests arrays and objects more
//     than 64 deep (the top-level object is depth 1);
//   - a file is read only if it is a regular file: directories, FIFOs and
//     devices are refused (opening never waits on a FIFO).
//
// The model JSON (the string under __metadata__.slimrt):
//
//   {
//     "format": "slimrt",
//     "format_version": 1,        // 2 when an op is int8 (below)
//     "name": "tiny_resnet",
//     "input":  {"name": "input", "shape": [N, C, H, W]},  // NCHW float32. C is
//                        // fixed; N, H, W are the default shape: any N >= 1 runs,
//                        // other H, W run when every op accepts them.
//     "output": "logits",    // one tensor name, an op's output (not the model input)
//     "min_multiplier": 0.25,     // smallest uniform multiplier accepted (0 < m <= 1)
//     "groups": [                 // channel groups: dimensions sharing one order
//       {"name": "stem", "size": 32, "fixed": false, "why": ""}, ...
//     ],                          // fixed groups always run at full size; "why" says why
//     "ops": [ ... ],             // in execution order (topologically sorted)
//     "profiles": [               // ordered by cost, cheapest first
//       {"name": "0.25", "widths": [8, ...], "macs": 1234567, "params": 4567}, ...
//     ]                           // macs and params: what the widths give (both
//   }                             // readers compute them and refuse a mismatch)
//
// Every tensor in the file is read by an op or a profile; any other is refused.
//
// Every op has "op" (kind), "name" (unique), "inputs" (list of tensor names,
// each the model input or an earlier op's output) and "output" (a new tensor
// name). Every field of every op is checked (kinds, names, index ranges,
// required fields) before shapes are inferred or weights read.
//
// Activations: an op with an "act" field computes y = act(v) of its value v:
//   "none" v; "relu" max(v, 0); "relu6" min(max(v, 0), 6); "hardswish"
//   v * relu6(v + 3) / 6; "silu" v * sigmoid(v); "sigmoid" 1 / (1 + exp(-v));
//   "leaky_relu" v > 0 ? v : a * v; "tanh" tanh(v); "gelu" v * 0.5 *
//   (1 + erf(v / sqrt(2))); "hardsigmoid" max(0, min(1, a * v + b)); "elu"
//   v > 0 ? v : a * (exp(v) - 1).
// a and b are the op's "act_alpha" and "act_beta", finite numbers allowed only
// with the activations that read them (leaky_relu and elu a, hardsigmoid a and
// b), defaulting as in ONNX: leaky_relu a = 0.01, elu a = 1, hardsigmoid
// a = 0.2, b = 0.5 (PyTorch's hardsigmoid is a = 1/6, b = 0.5). Every
// activation maps NaN to NaN.
//
// Kinds and their own fields:
//
//   conv            "kernel": [kh, kw], "stride": [sh, sw], "pads": [top, left,
//                   bottom, right], "dilation": [dh, dw], "groups": g, "act",
//                   "out_group": index into "groups" (omitted for depthwise,
//                   required when g == 1).
//                   Tensors: "<name>.weight"
//                     dense (g == 1)   [kh, kw, Cin, Cout]
//                     depthwise        [kh, kw, C]   (g == Cin == Cout)
//                     grouped (other)  [kh, kw, Cin/g, Cout]; input and output
//                                      must run at full width (out_group fixed)
//                   optional "<name>.scale", "<name>.bias": [Cout]
//                   y[c] = act(scale[c] * sum(x * w) + bias[c]); missing scale
//                   is 1, missing bias is 0.
//   linear          "out_group" (required), "act". Input is rank 2 [N, In].
//                   Tensors: "<name>.weight" [In, Out], optional "<name>.scale",
//                   "<name>.bias" [Out].
//   add             two inputs, "act". Zero padding match: the operands may have
//                   different channel widths; the sum has the wider one and the
//                   narrower operand counts as zeros beyond its width.
//   concat          rank-4 inputs concatenated along channels (axis 1).
//   mul             two inputs x [N, C, H, W] and a gate g [N, C, 1, 1]:
//                   y = x * g, each channel of each image scaled by its gate
//                   value (squeeze-and-excitation). x and g must have the same
//                   channel map at every profile: the same channels in the same
//                   order (a converter puts them in one channel group).
//   maxpool         "kernel", "stride", "pads", "ceil_mode" (bool, default false)
//   avgpool         as maxpool, plus "count_include_pad" (bool, default false)
//   resize          "scale": [sh, sw] (integers >= 1), "mode": "nearest" |
//                   "bilinear". [N, C, H, W] -> [N, C, H*sh, W*sw]. nearest:
//                   output (y, x) is input (y / sh, x / sw) (integer division);
//                   bilinear: half-pixel centres (PyTorch's align_corners=False):
//                   input row max((y + 0.5) / sh - 0.5, 0), interpolated between
//                   the two nearest input rows (the last repeated at the edge),
//                   likewise across.
//   global_avgpool  [N, C, H, W] -> [N, C, 1, 1]
//   flatten         [N, C, H, W] -> [N, C*H*W], in NCHW order (c major)
//   unflatten       [N, F] -> [N, F, 1, 1]: features become channels (the
//                   inverse of a flatten of a 1x1 map; a gate made by linears)
//   softmax         over axis 1: of each row of a rank-2 input, of each pixel's
//                   channels of a rank-4 one (its active channels at a profile)
//   act             elementwise "act"
//   scale_bias      "act". y[c] = act(scale[c] * x[c] + bias[c]) (rank 2 or 4; c
//                   the channel, or the feature of a rank-2 input): a batch norm
//                   that no conv absorbs, per-channel constants. Optional tensors
//                   "<name>.scale", "<name>.bias" [C], C the input's full
//                   channels (missing scale is 1, missing bias 0); per-profile
//                   epilogues as a conv's (below). A profile reads the values of
//                   the input's active channels.
//   prelu           y[c] = x[c] > 0 ? x[c] : slope[c] * x[c] (rank 2 or 4; c the
//                   channel, or the feature of a rank-2 input). Tensor
//                   "<name>.slope" [C], C the input's full channels: a profile
//                   reads the slopes of the input's active channels.
//   slice           "start", "end": channels [start, end) of a rank-4 input
//                   (0 <= start < end <= C): a channel split. Its input must run
//                   at full width: the groups feeding it are fixed.
//   shuffle         "groups": g. Channel c of the output is channel
//                   (c % g) * (C / g) + c / g of the input (C = channels,
//                   divisible by g): the ONNX Reshape [N, g, C/g, H, W],
//                   Transpose [0, 2, 1, 3, 4], Reshape [N, C, H, W]. Its input
//                   must run at full width: the groups feeding it are fixed.
//   gate            "channels": C, "hidden": D, "choices": K (integers >= 1).
//                   The dynamic gate (DS-Net): its double head looks at a
//                   rank-4 input x whose active channels are C at every
//                   profile. Per image: p = mean of x over H, W ([C]);
//                   h = relu(p * Wr + br) ([D]); the attention head gives
//                   y = x * 2 * sigmoid(h * We + be) (each channel scaled; the
//                   output keeps x's shape and channel map); the slimming head
//                   gives logits = h * Ws + bs ([K]). Tensors (all required):
//                   "<name>.reduce.weight" [C, D], "<name>.reduce.bias" [D],
//                   "<name>.expand.weight" [D, C], "<name>.expand.bias" [C],
//                   "<name>.slim.weight" [D, K], "<name>.slim.bias" [K]; the
//                   rows of Wr and the columns of We follow x's active channels
//                   in the order the channel map stores them.
//
// A model has at most one gate. With a gate, the profiles are its choices
// (K = the number of profiles; logit k chooses profile k) and:
//   - every group written by an op before the gate (in execution order) has
//     the same width in every profile: the shared width the ops before the
//     gate run at (so the gate's input has the same channel map everywhere);
//   - the ops before the gate have no per-profile epilogues;
//   - the model's output has the same shape at every profile.
// A gated run runs the ops up to the gate once at the shared width, then takes,
// per image, the first profile k <= max_profile with the largest logit and runs
// the ops after the gate at profile k. A run at a named profile computes the
// gate's attention as well (its logits are unused), so it equals a gated run
// that chooses that profile. A uniform multiplier runs only if it gives the
// gate's input C active channels.
//
// Weight layout is chosen so that every profile reads a top-left block: an
// in-channel prefix is a row prefix of each tap's [Cin, Cout] block, an
// out-channel prefix is a column prefix.
//
// Widths at a profile. A profile assigns every group a width in [1, size]
// (fixed groups: size). A tensor's active channels form a *channel map*: a list
// of runs (offset into the full channel axis, count). The model input is one
// full run. conv and linear outputs are one run [0, width(out_group)).
// Depthwise conv, pools, resize, act, scale_bias, prelu and softmax keep their
// input's map; mul keeps x's (which is g's). add of two single-run maps gives
// [0, max). concat joins its inputs' maps, shifting offsets by the full sizes
// before them; runs that touch merge into one. shuffle takes one full run and
// gives one full run; slice gives one full run of end - start. flatten maps a
// channel run (o, k) of an HxW tensor to the feature run (o*H*W, k*H*W);
// unflatten maps a feature run to the same channel run. A conv or linear
// reads, for every run, the weight rows [offset, offset + count) of each tap.
//
// Uniform multiplier m in [min_multiplier, 1]: a group that is not fixed runs
// at the value nearest to size * m among the multiples of 8 below size and size
// itself (ties go up), and at least min(8, size):
//   lo = 8 * floor(size * m / 8), hi = min(lo + 8, size),
//   width = max(min(8, size), size * m - lo < hi - size * m ? lo : hi).
// So m = 1 is always the full group (size 57 -> 57, not 56), and below the top
// the widths are multiples of 8. If those widths equal a named profile's
// widths, that profile is used (with its epilogues).
//
// Per-profile epilogues (per-width BN statistics): optional tensors
// "<op name>.scale@<profile name>" and "<op name>.bias@<profile name>" of a
// conv, linear or scale_bias, of length equal to the op's active output width
// at that profile (one value per active channel, in the order the channel map
// stores them), replace the op's scale/bias when that profile runs.
//
// MACs (at the default input shape, per sample): dense conv OH*OW*cout*kh*kw*
// cin; depthwise OH*OW*c*kh*kw; grouped OH*OW*Cout*kh*kw*Cin/g; linear in*out;
// gate 2*C*D + D*K; other ops 0 (all with active widths). params: weight
// elements read plus the active elements of the scale and bias tensors
// present, plus a prelu's active slopes, plus a gate's 2*C*D + D*K weights
// and D + C + K biases.
//
// int8 ops (format_version 2). A dense conv, a depthwise conv or a linear
// with "precision": "int8" (the default, "float32", may be omitted; other
// kinds and grouped convs take no precision) computes with int8 weights and
// int8 inputs:
//   tensors  "<name>.weight"   I8, the float layout's shape, quantized
//                              symmetrically per output channel (a
//                              quantizer writes [-127, 127]; -128 is read)
//            "<name>.wscale"   F32 [Cout]: the weight scale of each output
//                              channel (finite, > 0)
//            "<name>.xscale"   F32 [1]: the input scale s (finite, > 0)
//            optional "<name>.xscale@<profile name>" F32 [1]: the input scale
//                              when that profile runs (activation ranges
//                              change with width); uniform multipliers that
//                              are not a named profile use "<name>.xscale"
//            optional scale / bias and their per-profile forms as for float.
//   Each input value x is quantized with r = 1 / s (a float32 division):
//     q(x) = NaN ? 0 : round_half_even(clamp(x * r, -127, 127))
//   (float32 product), and with wq the weights, the op computes
//     acc[c] = sum over taps and active input channels of q(x) * wq[c]
//   (padding contributes 0, exact integers), then
//     y[c] = act(acc[c] * (s * wscale[c]) * scale[c] + bias[c])
//   in float32 (a fused residual add is added before act, as for float).
//   Activations between ops stay float32. An out-channel prefix keeps its
//   weight scales; an in-channel prefix is a row prefix of the int8 panels.
//   MACs and params are those of the float op (wscale and xscale do not count).
//
// Versions: format_version 2 adds int8 ops, 1 is a file without them (both
// are read; a writer records 1 unless an op is int8). A file with a newer
// version is refused with a message naming both versions.
//
// Errors: the reader never trusts the file. Any inconsistency (short file,
// header past the end, bad JSON, tensor out of bounds or of the wrong shape or
// dtype, unknown op or activation, a tensor used before it is produced, a
// profile naming a group that does not exist, widths out of range) is
// reported as slimrt::Error with a message that names the offending item,
// e.g. "profile '0.5' has 7 widths, the model has 9 channel groups". Every
// tensor an op needs is checked before memory is allocated for any weights, so
// a loader never allocates more than the file's tensors justify (packed
// weights are at most 16 times a tensor's bytes, 64 times for int8 ones:
// panels of 16 columns times groups of 4 rows, or a depthwise conv's int8
// values held as floats).
// ============================================================================
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "kernels/kernels.h"

namespace slimrt {

using kernels::Act;
using kernels::Activation;

constexpr int kFormatVersion = 2;  // the newest version read
constexpr int kMaxTaps = 256;  // kernels keep per-tap pointers on the stack

enum class OpKind {
  Conv, Linear, Add, Concat, MaxPool, AvgPool, GlobalAvgPool, Flatten, Softmax, Act, Shuffle, Prelu, ScaleBias, Mul,
  Unflatten, Slice, Resize, Gate
};

const char* op_kind_name(OpKind kind);

// Width of a free group of `size` channels at uniform multiplier m (rule above).
int32_t uniform_width(int32_t size, double m);

struct Group {
  std::string name;
  int32_t size = 0;
  bool fixed = false;
  std::string why;
};

struct Profile {
  std::string name;
  std::vector<int32_t> widths;  // one per group
  int64_t macs = 0;
  int64_t params = 0;
};

// Per-channel epilogue vectors, padded with zeros to a multiple of kPanel.
struct Epilogue {
  std::vector<float> scale;
  std::vector<float> bias;
};

enum class ConvType { Dense, Depthwise, Grouped };

// The double head of a gate op (format spec above), weights as in the file.
struct GateHead {
  int32_t channels = 0, hidden = 0, choices = 0;  // C, D, K
  std::vector<float> reduce_w, reduce_b;  // [C, D], [D]
  std::vector<float> expand_w, expand_b;  // [D, C], [C]
  std::vector<float> slim_w, slim_b;      // [D, K], [K]
};

struct Op {
  OpKind kind = OpKind::Act;
  std::string name;
  std::vector<int32_t> inputs;  // tensor ids
  int32_t output = -1;
  Activation act;
  // conv / pool geometry
  int32_t kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1;
  int32_t pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  bool ceil_mode = false;
  bool count_include_pad = false;
  int32_t start = 0, end = 0;  // slice: channels [start, end)
  bool bilinear = false;       // resize (scale in sh, sw)
  // conv / linear; shuffle: its channel groups
  ConvType conv_type = ConvType::Dense;
  int32_t groups = 1;
  int32_t out_group = -1;  // -1 for depthwise
  int32_t cin = 0;         // full input channels (linear: full input features)
  int32_t cout = 0;        // full output channels
  bool has_scale = false, has_bias = false;  // conv, linear, scale_bias
  // Weights, owned: dense conv and linear packed in panels (kernels::pack_conv);
  // depthwise [taps][round_up(C, 16)]; grouped in the file layout; prelu the
  // slopes [round_up(C, 16)].
  std::vector<float> weights;
  Epilogue epilogue;                     // full width, used unless a profile overrides
  std::vector<Epilogue> profile_epilogue;  // per profile index; empty vectors: no override
  GateHead gate;                           // gate only
  // int8 ops: dense conv and linear hold their weights in `qweights`
  // (kernels::pack_i8), depthwise in `weights` as floats of the int8 values.
  bool int8 = false;
  std::vector<int8_t> qweights;
  std::vector<float> wscale;          // per output channel, padded to kPanel
  float xscale = 0.0f;                // input scale, unless a profile has its own
  std::vector<float> profile_xscale;  // per profile index; 0: none
};

// A loaded model: immutable, shared by sessions on any threads.
class Model {
 public:
  static std::shared_ptr<const Model> load_file(const std::string& path);
  static std::shared_ptr<const Model> load_buffer(const void* data, size_t size);

  const std::string& name() const { return name_; }
  const std::string& json() const { return json_; }
  const std::vector<Group>& groups() const { return groups_; }
  const std::vector<Op>& ops() const { return ops_; }
  const std::vector<Profile>& profiles() const { return profiles_; }
  const std::vector<std::string>& tensor_names() const { return tensor_names_; }
  const int64_t* input_shape() const { return input_shape_; }
  int32_t output_tensor() const { return output_; }
  float min_multiplier() const { return min_multiplier_; }
  size_t weight_bytes() const { return weight_bytes_; }
  // Index of the gate op in ops(), or -1 when the model has none.
  int32_t gate_op() const { return gate_op_; }

  // Widths of the uniform multiplier m (rule in the format spec); throws
  // UnknownProfile if m is outside [min_multiplier, 1].
  std::vector<int32_t> uniform_widths(double m) const;
  // Index of the named profile with exactly these widths, or -1.
  int32_t find_profile(const std::vector<int32_t>& widths) const;
  // Index of the profile called `name`; throws UnknownProfile.
  int32_t profile_index(const std::string& name) const;
  std::vector<int32_t> full_widths() const;

 private:
  Model() = default;
  void parse(const uint8_t* data, size_t size, bool mapped);
  void check_gate() const;
  int32_t producer_of(int32_t tensor) const;  // op index, or -1 for the input

  std::string name_;
  std::string json_;
  int64_t input_shape_[4] = {1, 0, 0, 0};
  int32_t output_ = -1;
  float min_multiplier_ = 1.0f;
  std::vector<Group> groups_;
  std::vector<Op> ops_;
  std::vector<Profile> profiles_;
  std::vector<std::string> tensor_names_;  // id -> name; id 0 is the input
  size_t weight_bytes_ = 0;
  int32_t gate_op_ = -1;
};

}  // namespace slimrt
