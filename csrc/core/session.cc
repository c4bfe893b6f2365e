#include "core/session.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/error.h"
#include "kernels/int8.h"

namespace slimrt {

using kernels::ChannelRun;

enum class StepKind { Conv, Depthwise, Grouped, MaxPool, AvgPool, GlobalAvgPool, Add, Copy, Shuffle, Flatten, Softmax, Act,
                      Prelu, ScaleBias, Mul, Slice, Resize, Gate, ConvI8, DwI8 };

struct Session::Step {
  StepKind kind = StepKind::Act;
  const Op* op = nullptr;
  kernels::ConvParams conv{};
  kernels::DwParams dw{};
  kernels::GroupedParams grouped{};
  kernels::PoolParams pool{};
  kernels::ResizeParams resize{};
  kernels::GateParams gate{};
  kernels::ConvI8Params conv8{};
  kernels::DwI8Params dw8{};
  std::vector<int32_t> kmap, comp;  // int8: input row map, offset compensation
  std::vector<float> mult;          // int8: s * wscale * scale per active output channel
  std::vector<ChannelRun> runs;
  std::vector<float> scale, bias;  // gathered epilogue (or prelu slopes) when not a plain prefix
  // generic operands for the simple kernels
  const float* x = nullptr;
  const float* x2 = nullptr;
  const float* v1 = nullptr;  // per-channel vectors in active-position order: prelu slopes,
  const float* v2 = nullptr;  // scale_bias scale and bias
  float* y = nullptr;
  int32_t c = 0, c2 = 0, hw = 0, y_stride = 0;
  int64_t count = 0;  // pixels, rows or elements
  Activation act;
  bool split_panels = false;
};

struct Session::Plan {
  std::vector<Step> steps;
  TensorShape output;
  float* input = nullptr;   // NHWC input in the arena
  int nchw_step = -1;       // the step reading the caller's NCHW input in place (then no NHWC copy)
  int gate_step = -1;       // the gate's step: a gated run switches plans after it
  const float* result = nullptr;
};

namespace {

// The values of a per-channel vector for the active channels of `t`, in the
// order they are stored (a concat's runs are not a prefix).
std::vector<float> gather_active(const std::vector<float>& full, const TensorShape& t) {
  std::vector<float> out;
  for (const Run& r : t.runs) out.insert(out.end(), full.begin() + r.off, full.begin() + r.off + r.count);
  return out;
}

bool is_prefix(const TensorShape& t) { return t.runs.size() == 1 && t.runs[0].off == 0; }

float* aligned_floats(size_t n) {
  const size_t bytes = std::max<size_t>(64, (n * sizeof(float) + 63) / 64 * 64);
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw Error(ErrorKind::InvalidArgument, "out of memory allocating a " + std::to_string(bytes) + "-byte arena");
  return static_cast<float*>(p);
}

// Arena layout: greedy by size over buffer lifetimes (first fit among the
// buffers already placed whose lifetimes overlap).
struct Buffer {
  int64_t size = 0;
  int first = 0, last = 0;
  int64_t offset = -1;
};

int64_t place_buffers(std::vector<Buffer>& bufs) {
  std::vector<size_t> order(bufs.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return bufs[a].size > bufs[b].size; });
  std::vector<size_t> placed;
  int64_t total = 0;
  for (size_t i : order) {
    Buffer& b = bufs[i];
    if (b.size == 0) continue;
    std::vector<std::pair<int64_t, int64_t>> busy;
    for (size_t j : placed) {
      const Buffer& o = bufs[j];
      if (o.first <= b.last && b.first <= o.last) busy.push_back({o.offset, o.offset + o.size});
    }
    std::sort(busy.begin(), busy.end());
    int64_t at = 0;
    for (const auto& r : busy) {
      if (at + b.size <= r.first) break;
      at = std::max(at, r.second);
    }
    b.offset = at;
    total = std::max(total, at + b.size);
    placed.push_back(i);
  }
  return total;
}

// For each op, the index of the Add its epilogue performs, or -1: a dense
// conv or linear without activation whose output feeds only one Add, run
// after the producer of the Add's other operand. (Whether a plan fuses also
// depends on the two operands' widths there.)
std::vector<int32_t> find_fused_adds(const Model& model) {
  const auto& ops = model.ops();
  const size_t nt = model.tensor_names().size();
  std::vector<int32_t> producer(nt, -1), uses(nt, 0);
  for (size_t i = 0; i < ops.size(); ++i) {
    producer[ops[i].output] = static_cast<int32_t>(i);
    for (int32_t id : ops[i].inputs) ++uses[id];
  }
  std::vector<int32_t> fuse(ops.size(), -1);
  for (size_t i = 0; i < ops.size(); ++i) {
    const Op& add = ops[i];
    if (add.kind != OpKind::Add || add.inputs.size() != 2 || add.inputs[0] == add.inputs[1]) continue;
    const int32_t j = std::max(producer[add.inputs[0]], producer[add.inputs[1]]);
    if (j < 0) continue;
    const Op& conv = ops[j];
    const bool dense = conv.kind == OpKind::Linear || (conv.kind == OpKind::Conv && conv.conv_type == ConvType::Dense);
    if (dense && conv.act.kind == Act::None && uses[conv.output] == 1 && conv.output != model.output_tensor())
      fuse[j] = static_cast<int32_t>(i);
  }
  return fuse;
}

}  // namespace

Session::Session(std::shared_ptr<const Model> model, int threads)
    : model_(std::move(model)), pool_(threads < 1 || threads > 256 ? 1 : threads) {
  if (threads < 1 || threads > 256) fail_argument("threads must be in 1..256, got " + std::to_string(threads));
  fused_add_ = find_fused_adds(*model_);
  for (const Op& op : model_->ops())
    for (int32_t id : op.inputs) input_uses_ += id == 0;
  workspace_.assign(kernels::kConvWorkspaceFloats * static_cast<size_t>(threads), 0.0f);
  for (const Op& op : model_->ops())
    if (op.int8 && (op.kind == OpKind::Linear || op.conv_type == ConvType::Dense))
      i8_workspace_ = std::max(i8_workspace_, kernels::conv_i8_workspace_bytes(op.kh * op.kw,
                                                                              kernels::i8_row_groups(op.cin)));
  workspace_i8_.assign(i8_workspace_ * static_cast<size_t>(threads), 0);
}

Session::~Session() { std::free(arena_); }

void Session::check_shape(const int64_t* shape, int rank) const {
  if (!shape) fail_argument("input shape is null");
  // The caller's array is only known to hold `rank` values: read none of them
  // unless rank is 4.
  if (rank != 4) fail_argument("input must be NCHW (rank 4), got rank " + std::to_string(rank));
  const int64_t channels = model_->input_shape()[1];
  auto shape_text = [&] {
    std::string s = "[";
    for (int i = 0; i < 4; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  };
  if (shape[1] != channels)
    fail_argument("input " + shape_text() + " has " + std::to_string(shape[1]) + " channels, the model takes " +
                  std::to_string(channels));
  for (int i = 0; i < 4; ++i)
    if (shape[i] < 1 || shape[i] > (int64_t{1} << 20)) fail_argument("input shape " + shape_text() + " is not valid");
  if (shape[0] * shape[2] * shape[3] > (int64_t{1} << 28)) fail_argument("input " + shape_text() + " is too large");
}

void Session::prepare_shape(const int64_t* shape, int rank) {
  check_shape(shape, rank);
  if (shape[0] == n_ && shape[2] == h_ && shape[3] == w_) return;

  // Full widths bound every profile's tensor sizes, so one arena serves all.
  const ShapePlan full = plan_shapes(*model_, model_->full_widths(), shape[0], shape[2], shape[3]);
  const auto& ops = model_->ops();
  const size_t nt = full.tensors.size();
  std::vector<int> storage(nt);
  for (size_t t = 0; t < nt; ++t) storage[t] = static_cast<int>(t);
  std::vector<Buffer> bufs(nt);
  bufs[0].first = -1;
  for (size_t i = 0; i < ops.size(); ++i) {
    const Op& op = ops[i];
    const TensorShape& in = full.tensors[op.inputs[0]];
    // A flatten of a 1x1 map, an unflatten, is the same memory: no copy.
    if ((op.kind == OpKind::Flatten && in.h * in.w == 1) || op.kind == OpKind::Unflatten)
      storage[op.output] = storage[op.inputs[0]];
    else
      bufs[op.output].first = static_cast<int>(i);
    for (int32_t id : op.inputs) bufs[storage[id]].last = std::max(bufs[storage[id]].last, static_cast<int>(i));
    bufs[storage[op.output]].last = std::max(bufs[storage[op.output]].last, static_cast<int>(i));
  }
  // A conv that performs an Add writes the Add's output: it is live from the conv on.
  for (size_t j = 0; j < ops.size(); ++j)
    if (fused_add_[j] >= 0) {
      Buffer& b = bufs[storage[ops[fused_add_[j]].output]];
      b.first = std::min(b.first, static_cast<int>(j));
    }
  bufs[storage[model_->output_tensor()]].last = static_cast<int>(ops.size());
  for (size_t t = 0; t < nt; ++t)
    if (storage[t] == static_cast<int>(t)) bufs[t].size = kernels::round_up(full.tensors[t].elements(), 16);
  const int64_t total = place_buffers(bufs);
  std::vector<int64_t> offsets(nt);
  for (size_t t = 0; t < nt; ++t) offsets[t] = bufs[storage[t]].offset;

  float* arena = aligned_floats(static_cast<size_t>(total) + 16);
  std::free(arena_);
  arena_ = arena;
  offsets_ = std::move(offsets);
  n_ = shape[0];
  h_ = shape[2];
  w_ = shape[3];
  by_multiplier_.clear();
  uniform_.clear();
  named_.clear();
  // The gate's head writes hidden, attention and logits rows per image.
  if (model_->gate_op() >= 0) {
    const GateHead& g = model_->ops()[model_->gate_op()].gate;
    gate_buf_.assign(static_cast<size_t>(shape[0]) * (g.hidden + g.channels + g.choices), 0.0f);
  }
  // Named profiles are planned now, so switching between them never allocates.
  try {
    for (size_t i = 0; i < model_->profiles().size(); ++i)
      named_.push_back(build_plan(model_->profiles()[i].widths, static_cast<int32_t>(i)));
  } catch (...) {
    named_.clear();
    n_ = h_ = w_ = 0;
    throw;
  }
}

std::unique_ptr<Session::Plan> Session::build_plan(const std::vector<int32_t>& widths, int32_t profile_index) {
  const ShapePlan sp = plan_shapes(*model_, widths, n_, h_, w_);
  auto plan = std::make_unique<Plan>();
  auto buf = [&](int32_t t) { return arena_ + offsets_[t]; };
  const int threads = pool_.size();
  const auto& ops = model_->ops();
  std::vector<bool> done(ops.size(), false);  // Adds performed by a conv's epilogue
  for (size_t index = 0; index < ops.size(); ++index) {
    const Op& op = ops[index];
    if (done[index]) continue;
    const TensorShape& x = sp.tensors[op.inputs[0]];
    const TensorShape& y = sp.tensors[op.output];
    const Epilogue* epi = &op.epilogue;
    if (profile_index >= 0 && static_cast<size_t>(profile_index) < op.profile_epilogue.size() &&
        !op.profile_epilogue[profile_index].scale.empty())
      epi = &op.profile_epilogue[profile_index];
    Step s;
    s.op = &op;
    s.x = buf(op.inputs[0]);
    s.y = buf(op.output);
    s.act = op.act;
    switch (op.kind) {
      case OpKind::Conv:
      case OpKind::Linear: {
        if (op.int8) {
          plan_int8(s, index, sp, epi, profile_index, done);
          break;
        }
        if (op.kind == OpKind::Conv && op.conv_type == ConvType::Depthwise) {
          s.kind = StepKind::Depthwise;
          int32_t pos = 0;
          for (const Run& r : x.runs) {
            s.runs.push_back({pos, r.off, r.count});
            pos += r.count;
          }
          const bool prefix = x.runs.size() == 1 && x.runs[0].off == 0;
          if (!prefix && epi == &op.epilogue) {
            for (const Run& r : x.runs)
              for (int32_t k = 0; k < r.count; ++k) {
                s.scale.push_back(epi->scale[r.off + k]);
                s.bias.push_back(epi->bias[r.off + k]);
              }
          }
          auto& d = s.dw;
          d = {s.x, static_cast<int32_t>(x.n), static_cast<int32_t>(x.h), static_cast<int32_t>(x.w), s.y,
               static_cast<int32_t>(y.h), static_cast<int32_t>(y.w), x.c, op.kh, op.kw, op.sh, op.sw, op.dh, op.dw,
               op.pad_top, op.pad_left, nullptr, 0, op.weights.data(),
               static_cast<int32_t>(kernels::round_up(op.cin, 16)), epi->scale.data(), epi->bias.data(), op.act};
          s.count = y.n * y.h * y.w;
          break;
        }
        if (op.kind == OpKind::Conv && op.conv_type == ConvType::Grouped) {
          s.kind = StepKind::Grouped;
          s.grouped = {s.x, static_cast<int32_t>(x.n), static_cast<int32_t>(x.h), static_cast<int32_t>(x.w), x.c,
                       s.y, static_cast<int32_t>(y.h), static_cast<int32_t>(y.w), y.c, op.groups, op.kh, op.kw,
                       op.sh, op.sw, op.dh, op.dw, op.pad_top, op.pad_left, op.weights.data(), epi->scale.data(),
                       epi->bias.data(), op.act};
          s.count = y.n * y.h * y.w;
          break;
        }
        s.kind = StepKind::Conv;
        int32_t pos = 0;
        for (const Run& r : x.runs) {
          s.runs.push_back({pos, r.off, r.count});
          pos += r.count;
        }
        auto& c = s.conv;
        const bool linear = op.kind == OpKind::Linear;
        c.input = s.x;
        c.n = static_cast<int32_t>(x.n);
        c.ih = linear ? 1 : static_cast<int32_t>(x.h);
        c.iw = linear ? 1 : static_cast<int32_t>(x.w);
        c.in_stride = x.c;
        c.output = s.y;
        c.oh = linear ? 1 : static_cast<int32_t>(y.h);
        c.ow = linear ? 1 : static_cast<int32_t>(y.w);
        c.out_stride = y.c;
        c.kh = op.kh;
        c.kw = op.kw;
        c.sh = op.sh;
        c.sw = op.sw;
        c.dh = op.dh;
        c.dw = op.dw;
        c.pad_top = op.pad_top;
        c.pad_left = op.pad_left;
        c.k_full = op.cin;
        c.out_channels = y.c;
        c.packed = op.weights.data();
        c.scale = epi->scale.data();
        c.bias = epi->bias.data();
        c.act = op.act;
        if (const int32_t fi = fused_add_[index]; fi >= 0) {
          const Op& add = ops[fi];
          const int32_t other = add.inputs[add.inputs[0] == op.output ? 1 : 0];
          if (sp.tensors[other].c == y.c) {
            c.output = s.y = buf(add.output);
            c.residual = buf(other);
            c.act = add.act;
            done[fi] = true;
          }
        }
        // The only reader of the model's input, with few channels: reads the caller's NCHW buffer.
        if (!linear && op.inputs[0] == 0 && input_uses_ == 1 &&
            kernels::conv_nchw_supported(x.c, op.kh, op.kw, op.sw, op.dw)) {
          c.nchw_input = true;
          plan->nchw_step = static_cast<int>(plan->steps.size());
        }
        s.count = y.n * c.oh * c.ow;
        const int64_t panels = kernels::round_up(y.c, kernels::kPanel) / kernels::kPanel;
        // Few pixels and many channels (late layers, linear): split the weights,
        // so each thread streams half of them; otherwise split the pixels.
        s.split_panels = threads > 1 && panels >= 2 * threads && y.c > s.count;
        break;
      }
      case OpKind::MaxPool:
      case OpKind::AvgPool:
        s.kind = op.kind == OpKind::MaxPool ? StepKind::MaxPool : StepKind::AvgPool;
        s.pool = {s.x, static_cast<int32_t>(x.n), static_cast<int32_t>(x.h), static_cast<int32_t>(x.w), x.c, s.y,
                  static_cast<int32_t>(y.h), static_cast<int32_t>(y.w), op.kh, op.kw, op.sh, op.sw, op.pad_top,
                  op.pad_left, op.pad_bottom, op.pad_right, op.count_include_pad};
        s.count = y.n * y.h * y.w;
        break;
      case OpKind::GlobalAvgPool:
        s.kind = StepKind::GlobalAvgPool;
        s.hw = static_cast<int32_t>(x.h * x.w);
        s.c = x.c;
        s.count = x.n;
        break;
      case OpKind::Add:
        s.kind = StepKind::Add;
        s.x2 = buf(op.inputs[1]);
        s.c = x.c;
        s.c2 = sp.tensors[op.inputs[1]].c;
        s.count = x.n * x.h * x.w;
        break;
      case OpKind::Concat: {
        int32_t at = 0;
        for (int32_t id : op.inputs) {
          const TensorShape& t = sp.tensors[id];
          Step cs;
          cs.kind = StepKind::Copy;
          cs.op = &op;
          cs.x = buf(id);
          cs.y = s.y + at;
          cs.c = t.c;
          cs.y_stride = y.c;
          cs.count = t.n * t.h * t.w;
          plan->steps.push_back(std::move(cs));
          at += t.c;
        }
        continue;
      }
      case OpKind::Unflatten:
        continue;  // same memory
      case OpKind::Resize:
        s.kind = StepKind::Resize;
        s.resize = {s.x, static_cast<int32_t>(x.n), static_cast<int32_t>(x.h), static_cast<int32_t>(x.w), x.c, s.y,
                    static_cast<int32_t>(y.h), static_cast<int32_t>(y.w), op.sh, op.sw, op.bilinear};
        s.count = y.n * y.h * y.w;
        break;
      case OpKind::Slice:
        s.kind = StepKind::Slice;
        s.x = buf(op.inputs[0]) + op.start;
        s.c = x.c;
        s.c2 = op.end - op.start;
        s.count = x.n * x.h * x.w;
        break;
      case OpKind::Flatten:
        if (x.rank == 2 || x.h * x.w == 1) continue;  // same memory
        s.kind = StepKind::Flatten;
        s.c = x.c;
        s.hw = static_cast<int32_t>(x.h * x.w);
        s.count = x.n;
        break;
      case OpKind::Softmax:
        s.kind = StepKind::Softmax;
        s.c = x.c;
        s.count = x.n * x.h * x.w;
        break;
      case OpKind::Act:
        s.kind = StepKind::Act;
        s.c = x.c;
        s.count = x.elements();
        break;
      case OpKind::Shuffle:
        s.kind = StepKind::Shuffle;
        s.c = x.c;
        s.c2 = op.groups;
        s.count = x.n * x.h * x.w;
        break;
      case OpKind::Gate: {
        const GateHead& g = op.gate;
        if (x.c != g.channels)
          fail_argument("op '" + op.name + "' (gate) reads " + std::to_string(x.c) + " active channels here, its head " +
                        "takes " + std::to_string(g.channels) + ": run a named profile of this gated model");
        s.kind = StepKind::Gate;
        s.c = x.c;
        s.hw = static_cast<int32_t>(x.h * x.w);
        s.count = x.n * x.h * x.w;
        float* hidden = gate_buf_.data();
        float* attention = hidden + x.n * g.hidden;
        float* logits = attention + x.n * g.channels;
        s.gate = {s.x, s.hw, g.channels, g.hidden, g.choices, g.reduce_w.data(), g.reduce_b.data(),
                  g.expand_w.data(), g.expand_b.data(), g.slim_w.data(), g.slim_b.data(), hidden, attention, logits};
        plan->gate_step = static_cast<int>(plan->steps.size());
        break;
      }
      case OpKind::Mul:
        s.kind = StepKind::Mul;
        s.x2 = buf(op.inputs[1]);
        s.c = x.c;
        s.hw = static_cast<int32_t>(x.h * x.w);
        s.count = x.n * x.h * x.w;
        break;
      case OpKind::ScaleBias:
        s.kind = StepKind::ScaleBias;
        s.c = x.c;
        s.count = x.n * x.h * x.w;
        // A profile's own epilogue is in active-position order; the shared one is
        // gathered when the channels are not a prefix.
        if (epi != &op.epilogue || is_prefix(x)) {
          s.v1 = epi->scale.data();
          s.v2 = epi->bias.data();
        } else {
          s.scale = gather_active(epi->scale, x);  // v1, v2 are set below, once the steps stay put
          s.bias = gather_active(epi->bias, x);
        }
        break;
      case OpKind::Prelu:
        s.kind = StepKind::Prelu;
        s.c = x.c;
        s.count = x.n * x.h * x.w;
        if (is_prefix(x))
          s.v1 = op.weights.data();
        else
          s.scale = gather_active(op.weights, x);  // v1 is set below, once the steps stay put
        break;
    }
    plan->steps.push_back(std::move(s));
  }
  // Pointers into each step's own vectors, now that the steps stay put.
  for (Step& s : plan->steps) {
    if (s.kind == StepKind::Conv) {
      s.conv.runs = s.runs.data();
      s.conv.nruns = static_cast<int32_t>(s.runs.size());
    } else if (s.kind == StepKind::ConvI8) {
      s.conv8.kmap = s.kmap.data();
      s.conv8.comp = s.comp.data();
      s.conv8.mult = s.mult.data();
      s.conv8.bias = s.bias.data();
    } else if (s.kind == StepKind::DwI8) {
      s.dw8.runs = s.runs.data();
      s.dw8.nruns = static_cast<int32_t>(s.runs.size());
      s.dw8.mult = s.mult.data();
      s.dw8.bias = s.bias.data();
    } else if (s.kind == StepKind::Depthwise) {
      s.dw.runs = s.runs.data();
      s.dw.nruns = static_cast<int32_t>(s.runs.size());
      if (!s.scale.empty()) {
        s.scale.resize(kernels::round_up(s.scale.size(), 16), 0.0f);
        s.bias.resize(s.scale.size(), 0.0f);
        s.dw.scale = s.scale.data();
        s.dw.bias = s.bias.data();
      }
    } else if ((s.kind == StepKind::Prelu || s.kind == StepKind::ScaleBias) && !s.scale.empty()) {
      s.v1 = s.scale.data();
      s.v2 = s.bias.data();
    }
  }
  plan->output = sp.tensors[model_->output_tensor()];
  plan->input = buf(0);
  plan->result = buf(model_->output_tensor());
  return plan;
}

Session::Plan& Session::plan_for(const ProfileRef& ref) {
  const auto& profiles = model_->profiles();
  if (ref.multiplier <= 0.0) {
    if (ref.index < 0 || static_cast<size_t>(ref.index) >= profiles.size())
      throw Error(ErrorKind::UnknownProfile, "profile index " + std::to_string(ref.index) + " is out of range (model has " +
                                                 std::to_string(profiles.size()) + " profiles)");
    return *named_[ref.index];
  }
  auto hit = by_multiplier_.find(ref.multiplier);
  if (hit != by_multiplier_.end()) return *hit->second;
  std::vector<int32_t> widths = model_->uniform_widths(ref.multiplier);
  Plan* plan;
  const int32_t named = model_->find_profile(widths);
  if (named >= 0) {
    plan = named_[named].get();
  } else {
    auto& slot = uniform_[widths];
    if (!slot) slot = build_plan(widths, -1);
    plan = slot.get();
  }
  by_multiplier_[ref.multiplier] = plan;
  return *plan;
}

static Session::Shape shape_of(const TensorShape& t) {
  Session::Shape s;
  s.rank = t.rank;
  s.dims[0] = t.n;
  s.dims[1] = t.c;
  if (t.rank == 4) {
    s.dims[2] = t.h;
    s.dims[3] = t.w;
  }
  return s;
}

Session::Shape Session::output_shape(const int64_t* shape, int rank, const ProfileRef& profile) {
  std::lock_guard<std::mutex> lock(mu_);
  prepare_shape(shape, rank);
  return shape_of(plan_for(profile).output);
}

void Session::run(const float* input, const int64_t* shape, int rank, const ProfileRef& profile, float* output,
                  size_t capacity, Shape* out_shape) {
  if (!input) fail_argument("input is null");
  std::lock_guard<std::mutex> lock(mu_);
  prepare_shape(shape, rank);
  Plan& plan = plan_for(profile);
  const TensorShape& o = plan.output;
  if (out_shape) *out_shape = shape_of(o);
  const size_t need = static_cast<size_t>(o.elements());
  if (!output || capacity < need)
    throw Error(ErrorKind::BufferTooSmall, "output needs " + std::to_string(need) + " floats, the buffer holds " +
                                               std::to_string(output ? capacity : 0));
  pool_.warm();
  feed_input(plan, input);
  for (const Step& s : plan.steps) execute(s);
  if (o.rank == 4 && o.h * o.w > 1)
    kernels::nhwc_to_nchw(plan.result, static_cast<int32_t>(o.n), o.c, static_cast<int32_t>(o.h * o.w), output);
  else
    std::memcpy(output, plan.result, need * sizeof(float));
}

void Session::run_gated(const float* input, const int64_t* shape, int rank, int32_t max_profile, float* output,
                        size_t capacity, Shape* out_shape, int32_t* choices, float* logits) {
  if (!input) fail_argument("input is null");
  const int32_t gate = model_->gate_op();
  if (gate < 0) fail_argument("model '" + model_->name() + "' has no gate op: run a profile");
  const int32_t k_all = static_cast<int32_t>(model_->profiles().size());
  if (max_profile < -1 || max_profile >= k_all)
    throw Error(ErrorKind::UnknownProfile, "max_profile " + std::to_string(max_profile) + " is out of range (model has " +
                                               std::to_string(k_all) + " profiles; -1: no cap)");
  if (!choices) fail_argument("choices is null");
  std::lock_guard<std::mutex> lock(mu_);
  check_shape(shape, rank);
  // Images run one by one through the batch-1 plans: each continues after the
  // gate with its own profile's plan, and the output keeps the batch order.
  const int64_t n = shape[0], one[4] = {1, shape[1], shape[2], shape[3]};
  prepare_shape(one, 4);
  const TensorShape& o = named_[0]->output;  // the same at every profile (model.h)
  Shape os = shape_of(o);
  os.dims[0] = n;
  if (out_shape) *out_shape = os;
  const size_t per_image = static_cast<size_t>(o.elements());
  if (!output || capacity / per_image < static_cast<size_t>(n))
    throw Error(ErrorKind::BufferTooSmall, "output needs " + std::to_string(per_image * n) + " floats, the buffer holds " +
                                               std::to_string(output ? capacity : 0));
  const int32_t cap = max_profile < 0 ? k_all - 1 : max_profile;
  const int64_t image_in = shape[1] * shape[2] * shape[3];
  Plan& head = *named_[0];
  const float* scores = head.steps[head.gate_step].gate.logits;
  pool_.warm();
  for (int64_t i = 0; i < n; ++i) {
    feed_input(head, input + i * image_in);
    for (int st = 0; st <= head.gate_step; ++st) execute(head.steps[st]);
    int32_t k = 0;
    for (int32_t q = 1; q <= cap; ++q)
      if (scores[q] > scores[k]) k = q;
    if (logits) std::memcpy(logits + i * k_all, scores, sizeof(float) * k_all);
    choices[i] = k;
    const Plan& tail = *named_[k];
    for (size_t st = static_cast<size_t>(tail.gate_step) + 1; st < tail.steps.size(); ++st) execute(tail.steps[st]);
    float* dst = output + i * per_image;
    if (o.rank == 4 && o.h * o.w > 1)
      kernels::nhwc_to_nchw(tail.result, 1, o.c, static_cast<int32_t>(o.h * o.w), dst);
    else
      std::memcpy(dst, tail.result, per_image * sizeof(float));
  }
}

std::vector<std::pair<std::string, double>> Session::profile_ops(const float* input, const int64_t* shape, int rank,
                                                                 const ProfileRef& profile) {
  if (!input) fail_argument("input is null");
  std::lock_guard<std::mutex> lock(mu_);
  prepare_shape(shape, rank);
  Plan& plan = plan_for(profile);
  pool_.warm();
  feed_input(plan, input);
  std::vector<std::pair<std::string, double>> times;
  for (const Step& s : plan.steps) {
    const auto t0 = std::chrono::steady_clock::now();
    execute(s);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!times.empty() && times.back().first == s.op->name)
      times.back().second += dt;  // the copies of one concat
    else
      times.emplace_back(s.op->name, dt);
  }
  return times;
}

void Session::feed_input(Plan& plan, const float* input) {
  if (plan.nchw_step >= 0) {
    plan.steps[plan.nchw_step].conv.input = input;
    return;
  }
  kernels::nchw_to_nhwc(input, static_cast<int32_t>(n_), static_cast<int32_t>(model_->input_shape()[1]),
                        static_cast<int32_t>(h_ * w_), plan.input);
}

void Session::execute(const Step& s) {
  // body(thread, begin, end) over [0, total) in `per_thread` chunks per thread
  // (whole multiples of `grain` but the last), claimed dynamically; `thread`
  // indexes the per-thread workspace.
  auto parallel_in = [&](int64_t total, int64_t grain, int64_t per_thread, auto&& body) {
    const int64_t units = (total + grain - 1) / grain;
    const int64_t chunks = std::min<int64_t>(units, per_thread * pool_.size());
    if (pool_.size() == 1 || chunks < 2) {
      body(0, int64_t{0}, total);
      return;
    }
    auto task = [&](int64_t chunk, int thread) {
      int64_t b, e;
      split_range(units, chunk, chunks, &b, &e);
      b *= grain;
      e = std::min(e * grain, total);
      if (b < e) body(thread, b, e);
    };
    pool_.run(chunks, task);
  };
  auto parallel = [&](int64_t total, auto&& body) { parallel_in(total, 1, 4, body); };
  switch (s.kind) {
    case StepKind::Conv: {
      const int panels = static_cast<int>(kernels::round_up(s.conv.out_channels, 16) / 16);
      auto ws = [&](int part) { return workspace_.data() + static_cast<size_t>(part) * kernels::kConvWorkspaceFloats; };
      if (s.split_panels) {
        // Whole pairs of panels per thread, matching the kernel's 2-panel tiles.
        // One share per thread: each share gathers the input tiles once.
        parallel_in((panels + 1) / 2, 1, 1, [&](int part, int64_t b, int64_t e) {
          kernels::conv_packed(s.conv, 0, s.count, static_cast<int>(2 * b),
                               static_cast<int>(std::min<int64_t>(2 * e, panels)), ws(part));
        });
      } else {
        parallel_in(s.count, kernels::kConvPixelGrain, 4, [&](int part, int64_t b, int64_t e) {
          kernels::conv_packed(s.conv, b, e, 0, panels, ws(part));
        });
      }
      break;
    }
    case StepKind::ConvI8: {
      const int panels = static_cast<int>(kernels::round_up(s.conv8.out_channels, 16) / 16);
      auto ws = [&](int part) { return workspace_i8_.data() + static_cast<size_t>(part) * i8_workspace_; };
      if (s.split_panels) {
        parallel_in((panels + 1) / 2, 1, 1, [&](int part, int64_t b, int64_t e) {
          kernels::conv_i8(s.conv8, 0, s.count, static_cast<int>(2 * b),
                           static_cast<int>(std::min<int64_t>(2 * e, panels)), ws(part));
        });
      } else {
        parallel_in(s.count, kernels::kI8MR, 4, [&](int part, int64_t b, int64_t e) {
          kernels::conv_i8(s.conv8, b, e, 0, panels, ws(part));
        });
      }
      break;
    }
    case StepKind::DwI8:
      parallel(s.count, [&](int, int64_t b, int64_t e) { kernels::dwconv_i8(s.dw8, b, e); });
      break;
    case StepKind::Depthwise:
      parallel(s.count, [&](int, int64_t b, int64_t e) { kernels::dwconv(s.dw, b, e); });
      break;
    case StepKind::Grouped:
      parallel(s.count, [&](int, int64_t b, int64_t e) { kernels::grouped_conv(s.grouped, b, e); });
      break;
    case StepKind::MaxPool:
      parallel(s.count, [&](int, int64_t b, int64_t e) { kernels::maxpool(s.pool, b, e); });
      break;
    case StepKind::AvgPool:
      parallel(s.count, [&](int, int64_t b, int64_t e) { kernels::avgpool(s.pool, b, e); });
      break;
    case StepKind::GlobalAvgPool:
      kernels::global_avgpool(s.x, s.hw, s.c, s.y, 0, s.count);
      break;
    case StepKind::Add:
      parallel(s.count, [&](int, int64_t b, int64_t e) { kernels::add(s.x, s.c, s.x2, s.c2, s.y, s.act, b, e); });
      break;
    case StepKind::Copy:
      parallel(s.count,
               [&](int, int64_t b, int64_t e) { kernels::copy_channels(s.x, s.c, s.y, s.y_stride, s.c, b, e); });
      break;
    case StepKind::Resize:
      parallel(s.count, [&](int, int64_t b, int64_t e) { kernels::resize(s.resize, b, e); });
      break;
    case StepKind::Slice:
      parallel(s.count,
               [&](int, int64_t b, int64_t e) { kernels::copy_channels(s.x, s.c, s.y, s.c2, s.c2, b, e); });
      break;
    case StepKind::Shuffle:
      parallel(s.count,
               [&](int, int64_t b, int64_t e) { kernels::channel_shuffle(s.x, s.c, s.c2, s.y, b, e); });
      break;
    case StepKind::Flatten:
      kernels::nhwc_to_nchw(s.x, static_cast<int32_t>(s.count), s.c, s.hw, s.y);
      break;
    case StepKind::Softmax:
      parallel(s.count, [&](int, int64_t b, int64_t e) { kernels::softmax(s.x, s.c, s.y, b, e); });
      break;
    case StepKind::Act:
      if (s.y != s.x) std::memcpy(s.y, s.x, sizeof(float) * s.count);
      parallel(s.count, [&](int, int64_t b, int64_t e) { kernels::activate(s.y, s.act, b, e); });
      break;
    case StepKind::Prelu:
      parallel(s.count, [&](int, int64_t b, int64_t e) { kernels::prelu(s.x, s.c, s.v1, s.y, b, e); });
      break;
    case StepKind::Mul:
      parallel(s.count, [&](int, int64_t b, int64_t e) { kernels::channel_mul(s.x, s.c, s.hw, s.x2, s.y, b, e); });
      break;
    case StepKind::Gate:
      kernels::gate_head(s.gate, 0, s.count / s.hw);
      parallel(s.count,
               [&](int, int64_t b, int64_t e) { kernels::channel_mul(s.x, s.c, s.hw, s.gate.attention, s.y, b, e); });
      break;
    case StepKind::ScaleBias:
      parallel(s.count,
               [&](int, int64_t b, int64_t e) { kernels::scale_bias(s.x, s.c, s.v1, s.v2, s.y, s.act, b, e); });
      break;
  }
}

void Session::plan_int8(Step& s, size_t index, const ShapePlan& sp, const Epilogue* epi, int32_t profile_index,
                        std::vector<bool>& done) {
  const auto& ops = model_->ops();
  const Op& op = ops[index];
  const TensorShape& x = sp.tensors[op.inputs[0]];
  const TensorShape& y = sp.tensors[op.output];
  auto buf = [&](int32_t t) { return arena_ + offsets_[t]; };
  float xs = op.xscale;
  if (profile_index >= 0 && static_cast<size_t>(profile_index) < op.profile_xscale.size() &&
      op.profile_xscale[profile_index] > 0.0f)
    xs = op.profile_xscale[profile_index];
  const float inv = 1.0f / xs;
  const bool own_epilogue = epi != &op.epilogue;  // a profile's epilogue is in active-position order
  int32_t pos = 0;
  for (const Run& r : x.runs) {
    s.runs.push_back({pos, r.off, r.count});
    pos += r.count;
  }
  if (op.kind == OpKind::Conv && op.conv_type == ConvType::Depthwise) {
    s.kind = StepKind::DwI8;
    for (const Run& r : x.runs)
      for (int32_t k = 0; k < r.count; ++k) {
        const int32_t at = static_cast<int32_t>(s.mult.size()), full = r.off + k;
        const float scale = own_epilogue ? epi->scale[at] : epi->scale[full];
        s.mult.push_back(xs * op.wscale[full] * scale);
        s.bias.push_back(own_epilogue ? epi->bias[at] : epi->bias[full]);
      }
    s.mult.resize(kernels::round_up(s.mult.size(), 16), 0.0f);
    s.bias.resize(s.mult.size(), 0.0f);
    s.dw8 = {s.x, static_cast<int32_t>(x.n), static_cast<int32_t>(x.h), static_cast<int32_t>(x.w), s.y,
             static_cast<int32_t>(y.h), static_cast<int32_t>(y.w), x.c, op.kh, op.kw, op.sh, op.sw, op.dh, op.dw,
             op.pad_top, op.pad_left, nullptr, 0, op.weights.data(),
             static_cast<int32_t>(kernels::round_up(op.cin, 16)), nullptr, nullptr, inv, op.act};
    s.count = y.n * y.h * y.w;
    return;
  }
  s.kind = StepKind::ConvI8;
  const bool linear = op.kind == OpKind::Linear;
  const int taps = op.kh * op.kw;
  const int32_t kg_full = kernels::i8_row_groups(op.cin);
  int32_t rows = 0;
  for (const Run& r : x.runs) rows = std::max(rows, r.off + r.count);
  const int32_t kgroups = kernels::i8_row_groups(rows);
  s.kmap.assign(static_cast<size_t>(4 * kgroups), -1);
  for (const ChannelRun& r : s.runs)
    for (int32_t k = 0; k < r.count; ++k) s.kmap[r.w_off + k] = r.act_off + k;
  // Output channels are the prefix [0, y.c): active position = channel.
  const int64_t padded = kernels::round_up(y.c, 16);
  s.comp.assign(padded, 0);
  s.mult.assign(padded, 0.0f);
  s.bias.assign(padded, 0.0f);
  for (int32_t c = 0; c < y.c; ++c) {
    int32_t sum = 0;
    for (int t = 0; t < taps; ++t)
      for (int32_t k = 0; k < 4 * kgroups; ++k)
        if (s.kmap[k] >= 0) sum += kernels::packed_i8_at(op.qweights.data(), taps, kg_full, t, k, c);
    s.comp[c] = 128 * sum;
    s.mult[c] = xs * op.wscale[c] * epi->scale[c];
    s.bias[c] = epi->bias[c];
  }
  auto& c = s.conv8;
  c.input = s.x;
  c.n = static_cast<int32_t>(x.n);
  c.ih = linear ? 1 : static_cast<int32_t>(x.h);
  c.iw = linear ? 1 : static_cast<int32_t>(x.w);
  c.in_stride = x.c;
  c.output = s.y;
  c.oh = linear ? 1 : static_cast<int32_t>(y.h);
  c.ow = linear ? 1 : static_cast<int32_t>(y.w);
  c.out_stride = y.c;
  c.kh = op.kh;
  c.kw = op.kw;
  c.sh = op.sh;
  c.sw = op.sw;
  c.dh = op.dh;
  c.dw = op.dw;
  c.pad_top = op.pad_top;
  c.pad_left = op.pad_left;
  c.prefix = x.runs.size() == 1 && x.runs[0].off == 0 ? x.runs[0].count : 0;
  c.kgroups = kgroups;
  c.kg_full = kg_full;
  c.out_channels = y.c;
  c.packed = op.qweights.data();
  c.inv_scale = inv;
  c.act = op.act;
  if (const int32_t fi = fused_add_[index]; fi >= 0) {
    const Op& add = ops[fi];
    const int32_t other = add.inputs[add.inputs[0] == op.output ? 1 : 0];
    if (sp.tensors[other].c == y.c) {
      c.output = s.y = buf(add.output);
      c.residual = buf(other);
      c.act = add.act;
      done[fi] = true;
    }
  }
  s.count = y.n * c.oh * c.ow;
  const int64_t panels = padded / 16;
  s.split_panels = pool_.size() > 1 && panels >= 2 * pool_.size() && y.c > s.count;
}

}  // namespace slimrt
