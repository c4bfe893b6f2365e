#include "core/plan.h"

#include <string>

#include "core/error.h"

namespace slimrt {

namespace {

std::string dims(const TensorShape& t) {
  if (t.rank == 2) return "[" + std::to_string(t.n) + ", " + std::to_string(t.c) + "]";
  return "[" + std::to_string(t.n) + ", " + std::to_string(t.c) + ", " + std::to_string(t.h) + ", " +
         std::to_string(t.w) + "]";
}

int64_t conv_out(int64_t in, int32_t k, int32_t s, int32_t d, int32_t p0, int32_t p1) {
  const int64_t span = in + p0 + p1 - static_cast<int64_t>(d) * (k - 1) - 1;
  return span < 0 ? 0 : span / s + 1;
}

int64_t pool_out(int64_t in, int32_t k, int32_t s, int32_t p0, int32_t p1, bool ceil_mode) {
  const int64_t span = in + p0 + p1 - k;
  if (span < 0) return 0;
  int64_t out = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
  // A window may not start inside the right padding only.
  if (ceil_mode && (out - 1) * s >= in + p0) --out;
  return out;
}

bool single_run(const TensorShape& t) { return t.runs.size() == 1 && t.runs[0].off == 0; }

}  // namespace

ShapePlan plan_shapes(const Model& model, const std::vector<int32_t>& widths, int64_t n, int64_t h, int64_t w) {
  const auto& ops = model.ops();
  const auto& groups = model.groups();
  ShapePlan plan;
  plan.tensors.resize(model.tensor_names().size());
  TensorShape& in = plan.tensors[0];
  in.rank = 4;
  in.n = n;
  in.h = h;
  in.w = w;
  in.c = in.c_full = static_cast<int32_t>(model.input_shape()[1]);
  in.runs = {{0, in.c}};

  for (const Op& op : ops) {
    const std::string where = "op '" + op.name + "' (" + op_kind_name(op.kind) + ")";
    const TensorShape& x = plan.tensors[op.inputs[0]];
    TensorShape y;
    y.rank = x.rank;
    y.n = x.n;
    y.h = x.h;
    y.w = x.w;
    auto need_rank = [&](const TensorShape& t, int r) {
      if (t.rank != r)
        fail_argument(where + " needs a rank-" + std::to_string(r) + " input, got " + dims(t));
    };
    switch (op.kind) {
      case OpKind::Conv: {
        need_rank(x, 4);
        if (op.cin > 0 && x.c_full != op.cin)
          fail_argument(where + " takes " + std::to_string(op.cin) + " input channels, got " + std::to_string(x.c_full));
        y.h = conv_out(x.h, op.kh, op.sh, op.dh, op.pad_top, op.pad_bottom);
        y.w = conv_out(x.w, op.kw, op.sw, op.dw, op.pad_left, op.pad_right);
        if (y.h < 1 || y.w < 1)
          fail_argument(where + ": input " + dims(x) + " is smaller than its " + std::to_string(op.kh) + "x" +
                        std::to_string(op.kw) + " kernel");
        const int64_t taps = static_cast<int64_t>(op.kh) * op.kw;
        const bool depthwise = op.out_group < 0;
        if (depthwise) {
          if (op.groups != x.c_full)
            fail_argument(where + " is depthwise with " + std::to_string(op.groups) + " groups but its input has " +
                          std::to_string(x.c_full) + " channels");
          y.c = x.c;
          y.c_full = x.c_full;
          y.runs = x.runs;
          plan.macs += y.h * y.w * y.c * taps;
          plan.params += taps * y.c;
        } else {
          const Group& g = groups[op.out_group];
          y.c_full = g.size;
          y.c = widths[op.out_group];
          y.runs = {{0, y.c}};
          if (op.groups > 1) {
            if (x.c != x.c_full)
              fail_argument(where + " is a grouped conv and needs all " + std::to_string(x.c_full) +
                            " input channels, the profile gives " + std::to_string(x.c));
            if (x.c_full % op.groups || y.c_full % op.groups)
              fail_argument(where + ": " + std::to_string(op.groups) + " groups do not divide " +
                            std::to_string(x.c_full) + " input and " + std::to_string(y.c_full) + " output channels");
            plan.macs += y.h * y.w * y.c * taps * (x.c / op.groups);
            plan.params += taps * (x.c_full / op.groups) * y.c_full;
          } else {
            plan.macs += y.h * y.w * y.c * taps * x.c;
            plan.params += taps * x.c * y.c;
          }
        }
        plan.params += (op.has_scale + op.has_bias) * static_cast<int64_t>(y.c);
        break;
      }
      case OpKind::Linear: {
        need_rank(x, 2);
        if (op.cin > 0 && x.c_full != op.cin)
          fail_argument(where + " takes " + std::to_string(op.cin) + " input features, this input gives " +
                        std::to_string(x.c_full) + " (the input's height and width differ from those the model "
                        "was built for: " + std::to_string(model.input_shape()[2]) + "x" +
                        std::to_string(model.input_shape()[3]) + ")");
        y.c_full = groups[op.out_group].size;
        y.c = widths[op.out_group];
        y.runs = {{0, y.c}};
        plan.macs += static_cast<int64_t>(x.c) * y.c;
        plan.params += static_cast<int64_t>(x.c) * y.c + (op.has_scale + op.has_bias) * static_cast<int64_t>(y.c);
        break;
      }
      case OpKind::Add: {
        const TensorShape& b = plan.tensors[op.inputs[1]];
        if (x.rank != b.rank || x.n != b.n || x.h != b.h || x.w != b.w)
          fail_argument(where + " adds tensors of shapes " + dims(x) + " and " + dims(b));
        if (!single_run(x) || !single_run(b))
          fail_argument(where + ": both operands must be channel prefixes (an operand comes from a concat)");
        y.c = x.c > b.c ? x.c : b.c;
        y.c_full = x.c_full > b.c_full ? x.c_full : b.c_full;
        y.runs = {{0, y.c}};
        break;
      }
      case OpKind::Mul: {
        const TensorShape& g = plan.tensors[op.inputs[1]];
        need_rank(x, 4);
        if (g.rank != 4 || g.h != 1 || g.w != 1 || g.n != x.n || g.c_full != x.c_full)
          fail_argument(where + " multiplies " + dims(x) + " by " + dims(g) + "; the gate must be [N, C, 1, 1] of "
                        "its input's N and C");
        bool same = g.runs.size() == x.runs.size();
        for (size_t r = 0; same && r < x.runs.size(); ++r)
          same = g.runs[r].off == x.runs[r].off && g.runs[r].count == x.runs[r].count;
        if (!same)
          fail_argument(where + ": its gate runs " + std::to_string(g.c) + " channels, its input " +
                        std::to_string(x.c) + ", or others; the gate must have its input's channels");
        y = x;
        break;
      }
      case OpKind::Concat: {
        y.c = y.c_full = 0;
        for (int32_t id : op.inputs) {
          const TensorShape& t = plan.tensors[id];
          need_rank(t, 4);
          if (t.n != x.n || t.h != x.h || t.w != x.w)
            fail_argument(where + " concatenates tensors of shapes " + dims(x) + " and " + dims(t));
          for (const Run& r : t.runs) {
            // Adjacent runs merge: a concat of full-width inputs is one prefix.
            if (!y.runs.empty() && y.runs.back().off + y.runs.back().count == r.off + y.c_full)
              y.runs.back().count += r.count;
            else
              y.runs.push_back({r.off + y.c_full, r.count});
          }
          y.c += t.c;
          y.c_full += t.c_full;
        }
        break;
      }
      case OpKind::MaxPool:
      case OpKind::AvgPool: {
        need_rank(x, 4);
        y.h = pool_out(x.h, op.kh, op.sh, op.pad_top, op.pad_bottom, op.ceil_mode);
        y.w = pool_out(x.w, op.kw, op.sw, op.pad_left, op.pad_right, op.ceil_mode);
        if (y.h < 1 || y.w < 1)
          fail_argument(where + ": input " + dims(x) + " is smaller than its " + std::to_string(op.kh) + "x" +
                        std::to_string(op.kw) + " window");
        y.c = x.c;
        y.c_full = x.c_full;
        y.runs = x.runs;
        break;
      }
      case OpKind::Resize:
        need_rank(x, 4);
        y = x;
        y.h = x.h * op.sh;
        y.w = x.w * op.sw;
        if (y.h > (int64_t{1} << 20) || y.w > (int64_t{1} << 20))
          fail_argument(where + ": resizing " + dims(x) + " gives too large an output");
        break;
      case OpKind::GlobalAvgPool:
        need_rank(x, 4);
        y = x;
        y.h = y.w = 1;
        break;
      case OpKind::Flatten:
        y = x;
        if (x.rank == 4) {
          const int64_t hw = x.h * x.w;
          if (static_cast<int64_t>(x.c_full) * hw > (int64_t{1} << 30))
            fail_argument(where + ": flattening " + dims(x) + " gives too many features");
          y.rank = 2;
          y.h = y.w = 1;
          y.c = static_cast<int32_t>(x.c * hw);
          y.c_full = static_cast<int32_t>(x.c_full * hw);
          y.runs.clear();
          for (const Run& r : x.runs)
            y.runs.push_back({static_cast<int32_t>(r.off * hw), static_cast<int32_t>(r.count * hw)});
        }
        break;
      case OpKind::Unflatten:
        need_rank(x, 2);
        y = x;
        y.rank = 4;
        break;
      case OpKind::Softmax:
      case OpKind::Act:
        y = x;
        break;
      case OpKind::ScaleBias:
        if (op.cin > 0 && x.c_full != op.cin)
          fail_argument(where + " has " + std::to_string(op.cin) + " channels, its input has " +
                        std::to_string(x.c_full) + (x.rank == 2 ? " features" : " channels"));
        y = x;
        plan.params += (op.has_scale + op.has_bias) * static_cast<int64_t>(x.c);
        break;
      case OpKind::Prelu:
        // op.cin is 0 while loading: the full shapes give it.
        if (op.cin > 0 && x.c_full != op.cin)
          fail_argument(where + " has " + std::to_string(op.cin) + " slopes, its input has " +
                        std::to_string(x.c_full) + (x.rank == 2 ? " features" : " channels"));
        y = x;
        plan.params += x.c;
        break;
      case OpKind::Slice:
        need_rank(x, 4);
        if (op.end > x.c_full)
          fail_argument(where + " takes channels [" + std::to_string(op.start) + ", " + std::to_string(op.end) +
                        ") of an input with " + std::to_string(x.c_full));
        if (x.c != x.c_full || !single_run(x))
          fail_argument(where + " is a channel slice and needs all " + std::to_string(x.c_full) +
                        " input channels as one run, the profile gives " + std::to_string(x.c) +
                        " (the groups feeding it must be fixed)");
        y = x;
        y.c = y.c_full = op.end - op.start;
        y.runs = {{0, y.c}};
        break;
      case OpKind::Gate: {
        need_rank(x, 4);
        y = x;
        const int64_t c = op.gate.channels, d = op.gate.hidden, k = op.gate.choices;
        plan.macs += 2 * c * d + d * k;
        plan.params += 2 * c * d + d * k + d + c + k;
        break;
      }
      case OpKind::Shuffle:
        need_rank(x, 4);
        if (x.c_full % op.groups)
          fail_argument(where + ": " + std::to_string(op.groups) + " groups do not divide its " +
                        std::to_string(x.c_full) + " input channels");
        if (x.c != x.c_full || !single_run(x))
          fail_argument(where + " is a channel shuffle and needs all " + std::to_string(x.c_full) +
                        " input channels as one run, the profile gives " + std::to_string(x.c) +
                        " (the groups feeding it must be fixed)");
        y = x;
        break;
    }
    plan.tensors[op.output] = std::move(y);
  }
  return plan;
}

FullShapes infer_full_shapes(const Model& model) {
  const int64_t* s = model.input_shape();
  ShapePlan plan;
  try {
    plan = plan_shapes(model, model.full_widths(), 1, s[2], s[3]);
  } catch (const Error& e) {
    fail_model(std::string("at the default input shape: ") + e.what());
  }
  FullShapes out;
  for (const Op& op : model.ops()) out.in_channels.push_back(plan.tensors[op.inputs[0]].c_full);
  return out;
}

std::vector<int32_t> profile_output_widths(const Model& model, const std::vector<int32_t>& widths) {
  const int64_t* s = model.input_shape();
  ShapePlan plan;
  try {
    plan = plan_shapes(model, widths, 1, s[2], s[3]);
  } catch (const Error& e) {
    fail_model(std::string("at the default input shape: ") + e.what());
  }
  std::vector<int32_t> out;
  for (const Op& op : model.ops()) out.push_back(plan.tensors[op.output].c);
  return out;
}

}  // namespace slimrt
