// Reading .slim files (format: model.h). The reader trusts nothing in the file:
// every size, offset, name and index is checked before use, and every problem
// becomes an InvalidModel error that names the item.
#include "core/model.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "core/error.h"
#include "core/plan.h"
#include "kernels/int8.h"

namespace slimrt {

using Json = nlohmann::json;

const char* op_kind_name(OpKind kind) {
  switch (kind) {
    case OpKind::Conv: return "conv";
    case OpKind::Linear: return "linear";
    case OpKind::Add: return "add";
    case OpKind::Concat: return "concat";
    case OpKind::MaxPool: return "maxpool";
    case OpKind::AvgPool: return "avgpool";
    case OpKind::GlobalAvgPool: return "global_avgpool";
    case OpKind::Flatten: return "flatten";
    case OpKind::Softmax: return "softmax";
    case OpKind::Act: return "act";
    case OpKind::Shuffle: return "shuffle";
    case OpKind::Prelu: return "prelu";
    case OpKind::ScaleBias: return "scale_bias";
    case OpKind::Mul: return "mul";
    case OpKind::Unflatten: return "unflatten";
    case OpKind::Slice: return "slice";
    case OpKind::Resize: return "resize";
    case OpKind::Gate: return "gate";
  }
  return "?";
}

namespace {

constexpr uint64_t kMaxHeader = uint64_t{100} << 20;
constexpr int kMaxJsonDepth = 64;  // nesting of arrays and objects, in both JSON documents

struct TensorEntry {
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t begin = 0, bytes = 0;  // byte range [begin, begin + bytes) of the data section
  bool f32 = false;
  bool i8 = false;
  bool mapped = false;  // data lies in a private file mapping
};

using TensorTable = std::unordered_map<std::string, TensorEntry>;

// --- JSON access with messages that say where ------------------------------

const Json& member(const Json& obj, const char* key, const std::string& where) {
  if (!obj.is_object()) fail_model(where + " is not a JSON object");
  auto it = obj.find(key);
  if (it == obj.end()) fail_model(where + " has no \"" + key + "\"");
  return *it;
}

int64_t as_int(const Json& v, const std::string& what) {
  if (!v.is_number_integer()) fail_model(what + " must be an integer");
  return v.get<int64_t>();
}

int32_t as_int32(const Json& v, const std::string& what, int64_t lo, int64_t hi) {
  const int64_t x = as_int(v, what);
  if (x < lo || x > hi)
    fail_model(what + " is " + std::to_string(x) + ", expected " + std::to_string(lo) + ".." + std::to_string(hi));
  return static_cast<int32_t>(x);
}

// Names, kinds and modes: empty strings are refused as the Python reader does.
std::string as_string(const Json& v, const std::string& what) {
  if (!v.is_string() || v.get_ref<const std::string&>().empty()) fail_model(what + " must be a non-empty string");
  return v.get<std::string>();
}

bool opt_bool(const Json& obj, const char* key, bool dflt, const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end()) return dflt;
  if (!it->is_boolean()) fail_model(where + " field \"" + key + "\" must be true or false");
  return it->get<bool>();
}

// An array of exactly n integers in [lo, hi]; absent means `dflt` repeated.
std::vector<int32_t> int_list(const Json& obj, const char* key, size_t n, int32_t dflt, int64_t lo,
                              int64_t hi, const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end()) return std::vector<int32_t>(n, dflt);
  const std::string what = where + " field \"" + key + "\"";
  if (!it->is_array() || it->size() != n)
    fail_model(what + " must be a list of " + std::to_string(n) + " integers");
  std::vector<int32_t> out;
  for (size_t i = 0; i < n; ++i) out.push_back(as_int32((*it)[i], what, lo, hi));
  return out;
}

// A finite number; absent means `dflt`.
float opt_number(const Json& obj, const char* key, float dflt, const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end()) return dflt;
  if (!it->is_number() || !std::isfinite(it->get<double>()))
    fail_model(where + " field \"" + key + "\" must be a finite number");
  return it->get<float>();
}

Activation parse_act(const Json& obj, const std::string& where) {
  // name, kind, and the parameters it reads with their defaults (model.h)
  struct Known {
    const char* name;
    Act kind;
    int params;  // 0: none, 1: act_alpha, 2: act_alpha and act_beta
    float alpha, beta;
  };
  static const Known known[] = {
      {"none", Act::None, 0, 0, 0},           {"relu", Act::Relu, 0, 0, 0},
      {"relu6", Act::Relu6, 0, 0, 0},         {"hardswish", Act::HardSwish, 0, 0, 0},
      {"silu", Act::SiLU, 0, 0, 0},           {"sigmoid", Act::Sigmoid, 0, 0, 0},
      {"leaky_relu", Act::LeakyRelu, 1, 0.01f, 0}, {"tanh", Act::Tanh, 0, 0, 0},
      {"gelu", Act::Gelu, 0, 0, 0},           {"hardsigmoid", Act::HardSigmoid, 2, 0.2f, 0.5f},
      {"elu", Act::Elu, 1, 1.0f, 0}};
  auto it = obj.find("act");
  const std::string a = it == obj.end() ? "none" : as_string(*it, where + " field \"act\"");
  for (const Known& k : known) {
    if (a != k.name) continue;
    if (k.params < 1 && obj.contains("act_alpha"))
      fail_model(where + " has \"act_alpha\", which activation '" + a + "' does not take");
    if (k.params < 2 && obj.contains("act_beta"))
      fail_model(where + " has \"act_beta\", which activation '" + a + "' does not take");
    Activation act;
    act.kind = k.kind;
    act.alpha = opt_number(obj, "act_alpha", k.alpha, where);
    act.beta = opt_number(obj, "act_beta", k.beta, where);
    return act;
  }
  fail_model(where + " has unknown activation '" + a +
             "' (known: none, relu, relu6, hardswish, silu, sigmoid, leaky_relu, tanh, gelu, hardsigmoid, elu)");
}

OpKind parse_kind(const std::string& s, const std::string& where) {
  static const std::pair<const char*, OpKind> kinds[] = {
      {"conv", OpKind::Conv},       {"linear", OpKind::Linear},
      {"add", OpKind::Add},         {"concat", OpKind::Concat},
      {"maxpool", OpKind::MaxPool}, {"avgpool", OpKind::AvgPool},
      {"global_avgpool", OpKind::GlobalAvgPool}, {"flatten", OpKind::Flatten},
      {"softmax", OpKind::Softmax}, {"act", OpKind::Act},
      {"shuffle", OpKind::Shuffle}, {"prelu", OpKind::Prelu}, {"scale_bias", OpKind::ScaleBias},
      {"mul", OpKind::Mul}, {"unflatten", OpKind::Unflatten},
      {"slice", OpKind::Slice}, {"resize", OpKind::Resize}, {"gate", OpKind::Gate}};
  for (const auto& k : kinds)
    if (s == k.first) return k.second;
  fail_model(where + " has unknown op '" + s +
             "' (known: conv, linear, add, concat, maxpool, avgpool, global_avgpool, flatten, softmax, act, shuffle, "
             "prelu, scale_bias, mul, unflatten, slice, resize, gate)");
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// --- safetensors container ---------------------------------------------------

// Refuses JSON whose arrays and objects nest deeper than kMaxJsonDepth, before
// it is parsed. Brackets inside strings do not count; a string runs to its
// closing quote (a backslash escapes the next byte) or to the end of the text.
// runtime/format.py scans the same way.
void check_json_depth(const char* text, size_t n, const std::string& what) {
  int depth = 0;
  for (size_t i = 0; i < n; ++i) {
    const char c = text[i];
    if (c == '"') {
      for (++i; i < n && text[i] != '"'; ++i)
        if (text[i] == '\\') ++i;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth)
        fail_model(what + " nests deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

// Bytes per element of the safetensors dtypes that have whole-byte elements; 0 otherwise.
size_t dtype_size(const std::string& dtype) {
  static const std::pair<const char*, size_t> sizes[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},     {"U32", 4},
      {"F32", 4},  {"I64", 8}, {"U64", 8}, {"F64", 8},     {"C64", 8}};
  for (const auto& s : sizes)
    if (dtype == s.first) return s.second;
  return 0;
}

// A JSON list of integers as Python prints one: "[1, 2]" (for messages).
std::string list_str(const Json& list) {
  std::string out = "[";
  for (size_t i = 0; i < list.size(); ++i) out += (i ? ", " : "") + list[i].dump();
  return out + "]";
}

// One header entry, checked in the order runtime/format.py checks it: shape,
// data_offsets, dtype, size (without overflow, for every dtype), bounds.
TensorEntry parse_entry(const std::string& name, const Json& e, size_t data_size) {
  const std::string where = "tensor '" + name + "'";
  if (!e.is_object()) fail_model(where + ": its header entry is not an object");
  TensorEntry t;
  const Json& shape = member(e, "shape", where);
  // Non-negative JSON integers are number_unsigned in nlohmann; dimensions must also fit int64.
  bool valid = shape.is_array();
  for (size_t i = 0; valid && i < shape.size(); ++i)
    valid = shape[i].is_number_unsigned() && shape[i].get<uint64_t>() <= static_cast<uint64_t>(INT64_MAX);
  if (!valid) fail_model(where + " has an invalid shape " + (shape.is_array() ? list_str(shape) : shape.dump()));
  const Json& off = member(e, "data_offsets", where);
  if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned() ||
      off[1].get<uint64_t>() < off[0].get<uint64_t>())
    fail_model(where + " has invalid data_offsets " + (off.is_array() ? list_str(off) : off.dump()));
  const uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
  const std::string dtype = as_string(member(e, "dtype", where), where + " dtype");
  const size_t item = dtype_size(dtype);
  if (item == 0) fail_model(where + " has unknown dtype '" + dtype + "'");
  // Bytes = item size times every dimension, exactly: a zero dimension makes
  // it 0; a product that does not fit 64 bits is refused, whatever the dtype.
  bool zero = false, overflow = false;
  uint64_t needed = item;
  for (const auto& d : shape) {
    const uint64_t v = d.get<uint64_t>();
    t.shape.push_back(static_cast<int64_t>(v));
    if (v == 0) zero = true;
    else if (!overflow) overflow = __builtin_mul_overflow(needed, v, &needed);
  }
  if (zero) {
    needed = 0;
    overflow = false;
  }
  const uint64_t held = en - b;
  const std::string of = " of " + dtype;
  if (overflow)
    fail_model(where + " has shape " + list_str(shape) + of + ", whose size overflows 64 bits (it holds " +
               std::to_string(held) + " bytes)");
  if (held != needed)
    fail_model(where + " holds " + std::to_string(held) + " bytes, its shape " + list_str(shape) + of + " needs " +
               std::to_string(needed));
  if (en > data_size)
    fail_model("file truncated: " + where + " ends at byte " + std::to_string(en) +
               " of the data section, which has " + std::to_string(data_size) + " bytes");
  t.f32 = dtype == "F32";
  t.i8 = dtype == "I8";
  t.begin = static_cast<size_t>(b);
  t.bytes = static_cast<size_t>(held);
  return t;
}

// Tensors may not share bytes (model.h); empty tensors occupy none. The pair
// reported is the first found in (begin, end, name) order, as in the Python reader.
void check_no_overlap(const TensorTable& table) {
  struct Range {
    size_t begin, end;
    const std::string* name;
    bool operator<(const Range& o) const {
      return begin != o.begin ? begin < o.begin : end != o.end ? end < o.end : *name < *o.name;
    }
    std::string str() const {
      std::string s = "'" + *name + "' [";
      s += std::to_string(begin);
      s += ", ";
      s += std::to_string(end);
      return s + ")";
    }
  };
  std::vector<Range> ranges;
  for (const auto& [name, t] : table)
    if (t.bytes) ranges.push_back({t.begin, t.begin + t.bytes, &name});
  std::sort(ranges.begin(), ranges.end());
  // Sorted by begin, the ranges are disjoint iff each ends before the next begins.
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].begin < ranges[i - 1].end)
      fail_model("tensors " + ranges[i - 1].str() + " and " + ranges[i].str() +
                 " overlap: the tensors of a file may not share bytes");
}

TensorTable parse_container(const uint8_t* data, size_t size, bool mapped, std::string* model_json) {
  if (size < 8) fail_model("file is " + std::to_string(size) + " bytes, too short for a .slim header");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > kMaxHeader) fail_model("header length " + std::to_string(n) + " is implausibly large (corrupt file?)");
  if (n > size - 8)
    fail_model("header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(size) +
               " bytes): the file is truncated or not a .slim model");
  check_json_depth(reinterpret_cast<const char*>(data + 8), n, "the file header JSON");
  Json header = Json::parse(data + 8, data + 8 + n, nullptr, false);
  if (header.is_discarded() || !header.is_object()) fail_model("header is not a valid JSON object");
  const uint8_t* base = data + 8 + n;
  const size_t data_size = size - 8 - n;

  TensorTable table;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    TensorEntry t = parse_entry(it.key(), it.value(), data_size);
    t.data = base + t.begin;
    t.mapped = mapped;
    table.emplace(it.key(), std::move(t));
  }
  check_no_overlap(table);
  auto meta = header.find("__metadata__");
  if (meta == header.end() || !meta->is_object() || !meta->contains("slimrt") || !(*meta)["slimrt"].is_string())
    fail_model("header has no __metadata__.slimrt: this is a safetensors file but not a .slim model");
  *model_json = (*meta)["slimrt"].get<std::string>();
  return table;
}

const TensorEntry& checked_entry(const TensorTable& table, const std::string& name, const std::vector<int64_t>& shape,
                                 const std::string& user, bool int8 = false) {
  auto it = table.find(name);
  if (it == table.end()) fail_model(user + " needs tensor '" + name + "', which the file does not contain");
  const TensorEntry& t = it->second;
  if (int8 && !t.i8) fail_model("tensor '" + name + "' must have dtype I8 (" + user + " is int8)");
  if (!int8 && !t.f32) fail_model("tensor '" + name + "' must have dtype F32");
  if (t.shape != shape)
    fail_model("tensor '" + name + "' has shape " + shape_str(t.shape) + ", " + user + " needs " + shape_str(shape));
  return t;
}

// The engine keeps its own (packed) copy of every tensor: once read, a
// tensor's file pages are dropped from the process, so loading never holds
// two copies of the weights.
void release_pages(const TensorEntry& t) {
  if (!t.mapped) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(t.data) + page - 1) / page * page;
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(t.data) + t.bytes) / page * page;
  if (hi > lo) ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

// Copies an F32 tensor out of the file after checking its shape.
std::vector<float> read_tensor(const TensorTable& table, const std::string& name, const std::vector<int64_t>& shape,
                               const std::string& user) {
  const TensorEntry& t = checked_entry(table, name, shape, user);
  std::vector<float> out(t.bytes / 4);
  if (t.bytes) std::memcpy(out.data(), t.data, t.bytes);
  release_pages(t);
  return out;
}

// Calls use(const float*) on the tensor's data in place when it is aligned
// (the writer aligns it), through a temporary copy otherwise.
template <typename F>
void use_tensor(const TensorTable& table, const std::string& name, const std::vector<int64_t>& shape,
                const std::string& user, F&& use) {
  const TensorEntry& t = checked_entry(table, name, shape, user);
  if (reinterpret_cast<uintptr_t>(t.data) % alignof(float) == 0) {
    use(reinterpret_cast<const float*>(t.data));
    release_pages(t);
  } else {
    const std::vector<float> copy = read_tensor(table, name, shape, user);
    use(copy.data());
  }
}

// The tensors of a gate op: (name suffix, shape), in the order of the format spec.
std::vector<std::pair<std::string, std::vector<int64_t>>> gate_tensor_shapes(const GateHead& g) {
  const int64_t c = g.channels, d = g.hidden, k = g.choices;
  return {{".reduce.weight", {c, d}}, {".reduce.bias", {d}}, {".expand.weight", {d, c}},
          {".expand.bias", {c}},      {".slim.weight", {d, k}},  {".slim.bias", {k}}};
}

// Copies an I8 tensor out of the file after checking its shape.
std::vector<int8_t> read_i8_tensor(const TensorTable& table, const std::string& name,
                                   const std::vector<int64_t>& shape, const std::string& user) {
  const TensorEntry& t = checked_entry(table, name, shape, user, true);
  std::vector<int8_t> out(t.bytes);
  if (t.bytes) std::memcpy(out.data(), t.data, t.bytes);
  release_pages(t);
  return out;
}

// A scale tensor's values, each finite and > 0.
std::vector<float> read_scales(const TensorTable& table, const std::string& name, const std::vector<int64_t>& shape,
                               const std::string& user) {
  std::vector<float> v = read_tensor(table, name, shape, user);
  for (size_t i = 0; i < v.size(); ++i)
    if (!(std::isfinite(v[i]) && v[i] > 0.0f))
      fail_model("tensor '" + name + "' value " + std::to_string(i) + " is " + std::to_string(v[i]) +
                 ": scales must be finite and > 0");
  return v;
}

std::vector<float> padded(std::vector<float> v, float fill_unused = 0.0f) {
  v.resize(static_cast<size_t>(kernels::round_up(static_cast<int64_t>(v.size()), kernels::kPanel)), fill_unused);
  return v;
}

// Rules that hold at every width assignment, uniform multipliers included (the
// checks of runtime/format.py _check_static_widths, with its messages). Per
// tensor: is it always at full width, is its channel map always one prefix,
// and what decides its channel map (a signature: equal signatures mean equal
// maps at every width; "" when several groups decide it).
void check_static_widths(const Model& model, const ShapePlan& full) {
  const std::vector<Group>& groups = model.groups();
  const size_t n = model.tensor_names().size();
  std::vector<char> always_full(n, 0), prefix(n, 0);
  std::vector<std::string> sig(n);
  always_full[0] = prefix[0] = 1;
  sig[0] = "full";
  auto name = [&](int32_t t) { return "'" + model.tensor_names()[t] + "'"; };
  for (const Op& op : model.ops()) {
    const std::vector<int32_t>& ins = op.inputs;
    const int32_t out = op.output;
    const bool layer = op.kind == OpKind::Linear || (op.kind == OpKind::Conv && op.out_group >= 0);
    const int32_t c = full.tensors[out].c_full;
    std::string s;
    if (layer) {
      s = groups[op.out_group].fixed ? "full" : "g" + std::to_string(op.out_group);
    } else if (op.kind == OpKind::Add) {
      bool wide_full = false;
      for (int32_t t : ins) wide_full |= sig[t] == "full" && full.tensors[t].c_full == c;
      s = sig[ins[0]] == sig[ins[1]] ? sig[ins[0]] : (wide_full ? "full" : "");
    } else if (op.kind == OpKind::Concat) {
      bool all_full = true, any_none = false;
      s = "concat(";
      for (int32_t t : ins) {
        all_full &= sig[t] == "full";
        any_none |= sig[t].empty();
        s += sig[t] + ",";
      }
      s = all_full ? "full" : any_none ? "" : s + ")";
    } else if (op.kind == OpKind::Shuffle || op.kind == OpKind::Slice) {
      s = "full";
    } else if (op.kind == OpKind::Flatten && full.tensors[ins[0]].rank == 4) {
      const int64_t pixels = full.tensors[ins[0]].h * full.tensors[ins[0]].w;
      const std::string& in = sig[ins[0]];
      s = pixels == 1 || in == "full" || in.empty() ? in : "flatten(" + in + "," + std::to_string(pixels) + ")";
    } else {
      s = sig[ins[0]];
    }
    sig[out] = s;
    if (layer) {
      always_full[out] = groups[op.out_group].fixed;
      prefix[out] = 1;
    } else if (op.kind == OpKind::Add) {
      for (int32_t t : ins)
        if (!prefix[t])
          fail_model("add '" + op.name + "': operand " + name(t) +
                     " is a concat whose channels are not a prefix at narrower widths; zero padding match needs "
                     "prefix operands (fix the concat's inputs' groups)");
      always_full[out] = 0;
      for (int32_t t : ins) always_full[out] |= always_full[t] && full.tensors[t].c_full == c;
      prefix[out] = 1;
    } else if (op.kind == OpKind::Concat) {
      bool all = true;
      for (int32_t t : ins) all &= always_full[t] != 0;
      bool head = true;
      for (size_t i = 0; i + 1 < ins.size(); ++i) head &= always_full[ins[i]] != 0;
      always_full[out] = all;
      prefix[out] = head && prefix[ins.back()];
    } else if (op.kind == OpKind::Mul) {
      if (sig[ins[0]].empty() || sig[ins[0]] != sig[ins[1]])
        fail_model("mul '" + op.name + "': its gate " + name(ins[1]) + " and its input " + name(ins[0]) +
                   " must have the same channels at every width: the layer making the gate must write its "
                   "input's channel group (or both must be fixed)");
      always_full[out] = always_full[ins[0]];
      prefix[out] = prefix[ins[0]];
    } else if (op.kind == OpKind::Shuffle || op.kind == OpKind::Slice) {
      if (!always_full[ins[0]]) {
        const std::string what = op.kind == OpKind::Shuffle
                                     ? "shuffle '" + op.name + "' (groups " + std::to_string(op.groups) + ")"
                                     : "slice '" + op.name + "' [" + std::to_string(op.start) + ", " +
                                           std::to_string(op.end) + ")";
        fail_model(what + " must run at full width: its input " + name(ins[0]) +
                   " must come from fixed groups (mark the groups that feed it fixed)");
      }
      always_full[out] = prefix[out] = 1;
    } else {
      always_full[out] = always_full[ins[0]];
      prefix[out] = prefix[ins[0]];
    }
    if (op.kind == OpKind::Conv && op.out_group >= 0 && op.groups > 1 &&
        (!groups[op.out_group].fixed || !always_full[ins[0]]))
      fail_model("grouped conv '" + op.name + "' (groups " + std::to_string(op.groups) +
                 ") must run at full width: its out_group '" + groups[op.out_group].name +
                 "' must be fixed and its input " + name(ins[0]) + " must come from fixed groups");
  }
}

}  // namespace

// --- model --------------------------------------------------------------------

void Model::parse(const uint8_t* data, size_t size, bool mapped) {
  std::string text;
  TensorTable table = parse_container(data, size, mapped, &text);
  json_ = text;
  check_json_depth(text.data(), text.size(), "the model JSON (__metadata__.slimrt)");
  Json doc = Json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) fail_model("__metadata__.slimrt is not a valid JSON object");
  if (!doc.contains("format") || doc["format"] != "slimrt") fail_model("model JSON lacks \"format\": \"slimrt\"");
  const int64_t version = as_int(member(doc, "format_version", "model"), "format_version");
  if (version > kFormatVersion)
    fail_model("model format version " + std::to_string(version) + " is newer than this slimrt reads (" +
               std::to_string(kFormatVersion) + "): upgrade slimrt");
  if (version < 1) fail_model("format_version " + std::to_string(version) + " is not valid");
  const bool int8_allowed = version >= 2;
  auto name_it = doc.find("name");
  name_ = name_it != doc.end() ? as_string(*name_it, "model name") : "model";

  const Json& input = member(doc, "input", "model");
  const std::string input_name = as_string(member(input, "name", "input"), "input name");
  const Json& ishape = member(input, "shape", "input");
  if (!ishape.is_array() || ishape.size() != 4) fail_model("input shape must be [N, C, H, W]");
  for (int i = 0; i < 4; ++i) input_shape_[i] = as_int32(ishape[i], "input shape", 1, 1 << 20);

  auto mm = doc.find("min_multiplier");
  min_multiplier_ = 1.0f;
  if (mm != doc.end()) {
    if (!mm->is_number() || !(mm->get<double>() > 0.0) || mm->get<double>() > 1.0)
      fail_model("min_multiplier must be a number in (0, 1]");
    min_multiplier_ = mm->get<float>();
  }

  // groups
  const Json& groups = member(doc, "groups", "model");
  if (!groups.is_array()) fail_model("\"groups\" must be a list");
  std::unordered_set<std::string> group_names;
  for (size_t i = 0; i < groups.size(); ++i) {
    const std::string where = "group " + std::to_string(i);
    Group g;
    g.name = as_string(member(groups[i], "name", where), where + " name");
    g.size = as_int32(member(groups[i], "size", where), where + " size", 1, 1 << 20);
    g.fixed = opt_bool(groups[i], "fixed", false, where);
    auto why = groups[i].find("why");
    if (why != groups[i].end()) {
      if (!why->is_string()) fail_model(where + " field \"why\" must be a string");
      g.why = why->get<std::string>();
    }
    if (!group_names.insert(g.name).second)
      fail_model(where + ": the name '" + g.name + "' is used by an earlier group");
    groups_.push_back(std::move(g));
  }

  // ops: every field of every op is checked here, before shapes are inferred
  // and weights packed, so the code after this loop (and plan_shapes, and the
  // sessions) may index tensors and groups with an op's fields unchecked.
  std::unordered_map<std::string, int32_t> tensor_id;
  tensor_names_.push_back(input_name);
  tensor_id[input_name] = 0;
  std::unordered_set<std::string> op_names;
  const Json& ops = member(doc, "ops", "model");
  if (!ops.is_array() || ops.empty()) fail_model("\"ops\" must be a non-empty list");
  for (size_t i = 0; i < ops.size(); ++i) {
    const Json& j = ops[i];
    const std::string pos = "op " + std::to_string(i);
    Op op;
    op.name = as_string(member(j, "name", pos), pos + " name");
    const std::string where = "op '" + op.name + "'";
    if (!op_names.insert(op.name).second) fail_model("two ops are named '" + op.name + "'");
    op.kind = parse_kind(as_string(member(j, "op", where), where + " kind"), where);
    op.act = parse_act(j, where);
    const Json& ins = member(j, "inputs", where);
    if (!ins.is_array() || ins.empty()) fail_model(where + " \"inputs\" must be a non-empty list");
    for (const auto& in : ins) {
      const std::string tname = as_string(in, where + " input");
      auto t = tensor_id.find(tname);
      if (t == tensor_id.end())
        fail_model(where + " reads tensor '" + tname + "', which no earlier op produces");
      op.inputs.push_back(t->second);
    }
    const size_t want_inputs =
        op.kind == OpKind::Add || op.kind == OpKind::Mul ? 2 : (op.kind == OpKind::Concat ? 0 : 1);
    if (want_inputs && op.inputs.size() != want_inputs)
      fail_model(where + " takes " + std::to_string(want_inputs) + " input(s), got " + std::to_string(op.inputs.size()));
    const std::string out = as_string(member(j, "output", where), where + " output");
    if (tensor_id.count(out)) fail_model(where + " writes tensor '" + out + "', which already exists");
    op.output = static_cast<int32_t>(tensor_names_.size());
    tensor_id[out] = op.output;
    tensor_names_.push_back(out);

    if (op.kind == OpKind::Conv || op.kind == OpKind::MaxPool || op.kind == OpKind::AvgPool) {
      const auto k = int_list(j, "kernel", 2, 0, 1, 64, where);
      if (j.find("kernel") == j.end()) fail_model(where + " has no \"kernel\"");
      op.kh = k[0];
      op.kw = k[1];
      const auto s = int_list(j, "stride", 2, 1, 1, 64, where);
      op.sh = s[0];
      op.sw = s[1];
      const auto p = int_list(j, "pads", 4, 0, 0, 64, where);
      op.pad_top = p[0];
      op.pad_left = p[1];
      op.pad_bottom = p[2];
      op.pad_right = p[3];
      const auto d = int_list(j, "dilation", 2, 1, 1, 64, where);
      op.dh = d[0];
      op.dw = d[1];
      op.ceil_mode = opt_bool(j, "ceil_mode", false, where);
      op.count_include_pad = opt_bool(j, "count_include_pad", false, where);
      if (op.kh * op.kw > kMaxTaps)
        fail_model(where + " has a " + std::to_string(op.kh) + "x" + std::to_string(op.kw) +
                   " kernel; at most " + std::to_string(kMaxTaps) + " taps are supported");
    }
    if (op.kind == OpKind::Conv || op.kind == OpKind::Linear) {
      auto g = j.find("groups");
      op.groups = g == j.end() ? 1 : as_int32(*g, where + " groups", 1, 1 << 20);
      auto og = j.find("out_group");
      if (og != j.end() && !og->is_null())
        op.out_group = as_int32(*og, where + " out_group", 0, static_cast<int64_t>(groups_.size()) - 1);
      // Only a depthwise conv (groups > 1, no out_group) has no output group;
      // plan_shapes and the packing below index groups with out_group unchecked.
      if (op.kind == OpKind::Linear && op.out_group < 0) fail_model(where + " has no \"out_group\" field");
      if (op.kind == OpKind::Conv && op.groups == 1 && op.out_group < 0)
        fail_model("conv '" + op.name + "' has no out_group; only depthwise convs omit it");
      if (auto pr = j.find("precision"); pr != j.end()) {
        const std::string precision = as_string(*pr, where + " field \"precision\"");
        if (precision != "float32" && precision != "int8")
          fail_model(where + " has precision '" + precision + "' (known: float32, int8)");
        op.int8 = precision == "int8";
        if (op.int8 && !int8_allowed)
          fail_model(where + " is int8, which needs format_version 2 (the file has " + std::to_string(version) + ")");
      }
    } else if (j.contains("precision")) {
      fail_model(where + " has \"precision\"; only conv and linear ops take one");
    }
    if (op.kind == OpKind::Shuffle)
      op.groups = as_int32(member(j, "groups", where), where + " groups", 1, 1 << 20);
    if (op.kind == OpKind::Resize) {
      if (j.find("scale") == j.end()) fail_model(where + " has no \"scale\"");
      const auto sc = int_list(j, "scale", 2, 1, 1, 64, where);
      op.sh = sc[0];
      op.sw = sc[1];
      const std::string mode = as_string(member(j, "mode", where), where + " field \"mode\"");
      if (mode != "nearest" && mode != "bilinear")
        fail_model(where + " has mode '" + mode + "' (known: nearest, bilinear)");
      op.bilinear = mode == "bilinear";
    }
    if (op.kind == OpKind::Gate) {
      if (gate_op_ >= 0)
        fail_model(where + " is a second gate; a model has at most one (the first is '" + ops_[gate_op_].name + "')");
      gate_op_ = static_cast<int32_t>(ops_.size());
      op.gate.channels = as_int32(member(j, "channels", where), where + " channels", 1, 1 << 20);
      op.gate.hidden = as_int32(member(j, "hidden", where), where + " hidden", 1, 1 << 20);
      op.gate.choices = as_int32(member(j, "choices", where), where + " choices", 1, 1 << 20);
    }
    if (op.kind == OpKind::Slice) {
      op.start = as_int32(member(j, "start", where), where + " start", 0, (1 << 20) - 1);
      op.end = as_int32(member(j, "end", where), where + " end", op.start + 1, 1 << 20);
    }
    ops_.push_back(std::move(op));
  }
  output_ = [&] {
    const std::string out = as_string(member(doc, "output", "model"), "output");
    auto t = tensor_id.find(out);
    if (t == tensor_id.end()) fail_model("model output '" + out + "' is not produced by any op");
    // A session never writes the input's buffer: it would return scratch memory.
    if (t->second == 0)
      fail_model("the model's output is its input '" + out + "': the output must be produced by an op");
    return t->second;
  }();

  // full-width shapes (the plan at full widths)
  const FullShapes shapes = infer_full_shapes(*this);
  check_static_widths(*this, plan_shapes(*this, full_widths(), 1, input_shape_[2], input_shape_[3]));

  // profiles
  const Json& profiles = member(doc, "profiles", "model");
  if (!profiles.is_array()) fail_model("\"profiles\" must be a list");
  std::unordered_set<std::string> profile_names;
  for (size_t i = 0; i < profiles.size(); ++i) {
    const Json& j = profiles[i];
    Profile p;
    p.name = as_string(member(j, "name", "profile " + std::to_string(i)), "profile name");
    const std::string where = "profile '" + p.name + "'";
    if (!profile_names.insert(p.name).second) fail_model("two profiles are named '" + p.name + "'");
    const Json& widths = member(j, "widths", where);
    if (!widths.is_array()) fail_model(where + " widths must be a list");
    if (widths.size() != groups_.size())
      fail_model(where + " has " + std::to_string(widths.size()) + " widths, the model has " +
                 std::to_string(groups_.size()) + " channel groups");
    for (size_t g = 0; g < widths.size(); ++g) {
      const Group& grp = groups_[g];
      const std::string what = where + " width of group " + std::to_string(g) + " ('" + grp.name + "')";
      const int32_t w = as_int32(widths[g], what, 1, grp.size);
      if (grp.fixed && w != grp.size)
        fail_model(what + " is " + std::to_string(w) + " but the group is fixed at " + std::to_string(grp.size));
      p.widths.push_back(w);
    }
    p.macs = as_int(member(j, "macs", where), where + " macs");
    p.params = as_int(member(j, "params", where), where + " params");
    profiles_.push_back(std::move(p));
  }
  if (gate_op_ >= 0) check_gate();

  // Weights. First every tensor an op needs is checked (presence, dtype,
  // shape) against `shapes`, for all ops, before anything is allocated; so
  // what is allocated next is bounded by tensors the file holds: packed
  // weights are at most round_up(cout, kPanel) / cout <= 16 times the file
  // tensor (int8 panels also round cin up to groups of 4: <= 64 times; an
  // int8 depthwise conv's values become floats: <= 4 x 16 times), and
  // epilogues, weight scales and input scales are cout floats or one, cout
  // being a dimension of the op's weight.
  for (size_t i = 0; i < ops_.size(); ++i) {
    Op& op = ops_[i];
    const std::string user = "op '" + op.name + "'";
    if (op.kind == OpKind::Prelu) {
      op.cin = op.cout = shapes.in_channels[i];
      checked_entry(table, op.name + ".slope", {op.cin}, user);
      continue;
    }
    if (op.kind == OpKind::Gate) {
      for (const auto& [suffix, shape] : gate_tensor_shapes(op.gate)) checked_entry(table, op.name + suffix, shape, user);
      continue;
    }
    if (op.kind != OpKind::Conv && op.kind != OpKind::Linear && op.kind != OpKind::ScaleBias) continue;
    op.cin = shapes.in_channels[i];
    std::vector<int64_t> weight_shape;
    if (op.kind == OpKind::Linear) {
      op.cout = groups_[op.out_group].size;
      weight_shape = {op.cin, op.cout};
    } else if (op.kind == OpKind::ScaleBias) {
      op.cout = op.cin;  // no weight: the epilogue vectors, one per input channel
    } else if (op.groups == 1) {
      op.conv_type = ConvType::Dense;
      op.cout = groups_[op.out_group].size;
      weight_shape = {op.kh, op.kw, op.cin, op.cout};
    } else if (op.groups == op.cin && op.out_group < 0) {
      op.conv_type = ConvType::Depthwise;
      op.cout = op.cin;
      weight_shape = {op.kh, op.kw, op.cin};
    } else {
      op.conv_type = ConvType::Grouped;
      if (op.out_group < 0) fail_model(user + " (grouped conv) needs \"out_group\"");
      op.cout = groups_[op.out_group].size;
      if (op.cin % op.groups || op.cout % op.groups)
        fail_model(user + " has " + std::to_string(op.groups) + " groups, which divide neither " +
                   std::to_string(op.cin) + " input nor " + std::to_string(op.cout) + " output channels");
      if (!groups_[op.out_group].fixed)
        fail_model(user + " is a grouped conv; its out_group '" + groups_[op.out_group].name + "' must be fixed");
      weight_shape = {op.kh, op.kw, op.cin / op.groups, op.cout};
    }
    if (op.int8 && op.conv_type == ConvType::Grouped)
      fail_model(user + " is a grouped conv, which has no int8 form (only dense and depthwise convs and linears)");
    if (op.kind != OpKind::ScaleBias) checked_entry(table, op.name + ".weight", weight_shape, user, op.int8);
    if (op.int8) {
      checked_entry(table, op.name + ".wscale", {op.cout}, user);
      checked_entry(table, op.name + ".xscale", {1}, user);
    }
    op.has_scale = table.count(op.name + ".scale") > 0;
    op.has_bias = table.count(op.name + ".bias") > 0;
    if (op.has_scale) checked_entry(table, op.name + ".scale", {op.cout}, user);
    if (op.has_bias) checked_entry(table, op.name + ".bias", {op.cout}, user);
  }
  for (Op& op : ops_) {
    const std::string user = "op '" + op.name + "'";
    if (op.kind == OpKind::Prelu) {
      op.weights = padded(read_tensor(table, op.name + ".slope", {op.cin}, user));
      weight_bytes_ += sizeof(float) * op.weights.size();
      continue;
    }
    if (op.kind == OpKind::Gate) {
      GateHead& g = op.gate;
      std::vector<float>* dst[] = {&g.reduce_w, &g.reduce_b, &g.expand_w, &g.expand_b, &g.slim_w, &g.slim_b};
      const auto shapes_of = gate_tensor_shapes(g);
      for (size_t t = 0; t < shapes_of.size(); ++t) {
        *dst[t] = read_tensor(table, op.name + shapes_of[t].first, shapes_of[t].second, user);
        weight_bytes_ += sizeof(float) * dst[t]->size();
      }
      continue;
    }
    if (op.kind != OpKind::Conv && op.kind != OpKind::Linear && op.kind != OpKind::ScaleBias) continue;
    const std::string wname = op.name + ".weight";
    const int64_t taps = static_cast<int64_t>(op.kh) * op.kw;
    if (op.kind == OpKind::ScaleBias) {
      // the epilogue below is all it has
    } else if (op.int8 && (op.kind == OpKind::Linear || op.conv_type == ConvType::Dense)) {
      // Dense conv and linear: int8 panels, built from the file copy.
      const std::vector<int8_t> w = read_i8_tensor(
          table, wname,
          op.kind == OpKind::Linear ? std::vector<int64_t>{op.cin, op.cout}
                                    : std::vector<int64_t>{op.kh, op.kw, op.cin, op.cout},
          user);
      op.qweights.resize(kernels::packed_i8_size(static_cast<int>(taps), op.cin, op.cout));
      kernels::pack_i8(w.data(), static_cast<int>(taps), op.cin, op.cout, op.qweights.data());
      weight_bytes_ += op.qweights.size();
    } else if (op.int8) {
      // Depthwise: the int8 values as floats, in the float layout.
      const std::vector<int8_t> w = read_i8_tensor(table, wname, {op.kh, op.kw, op.cin}, user);
      const int64_t stride = kernels::round_up(op.cin, kernels::kPanel);
      op.weights.assign(static_cast<size_t>(taps * stride), 0.0f);
      for (int64_t t = 0; t < taps; ++t)
        for (int64_t c = 0; c < op.cin; ++c) op.weights[t * stride + c] = w[t * op.cin + c];
    } else if (op.kind == OpKind::Linear) {
      op.weights.resize(kernels::packed_conv_size(1, op.cin, op.cout));
      use_tensor(table, wname, {op.cin, op.cout}, user,
                 [&](const float* w) { kernels::pack_conv(w, 1, op.cin, op.cout, op.weights.data()); });
    } else if (op.conv_type == ConvType::Dense) {
      op.weights.resize(kernels::packed_conv_size(static_cast<int>(taps), op.cin, op.cout));
      use_tensor(table, wname, {op.kh, op.kw, op.cin, op.cout}, user, [&](const float* w) {
        kernels::pack_conv(w, static_cast<int>(taps), op.cin, op.cout, op.weights.data());
      });
    } else if (op.conv_type == ConvType::Depthwise) {
      const int64_t stride = kernels::round_up(op.cin, kernels::kPanel);
      op.weights.assign(static_cast<size_t>(taps * stride), 0.0f);
      use_tensor(table, wname, {op.kh, op.kw, op.cin}, user, [&](const float* w) {
        for (int64_t t = 0; t < taps; ++t)
          std::memcpy(op.weights.data() + t * stride, w + t * op.cin, sizeof(float) * op.cin);
      });
    } else {
      op.weights = read_tensor(table, wname, {op.kh, op.kw, op.cin / op.groups, op.cout}, user);
    }
    if (op.int8) {
      op.wscale = padded(read_scales(table, op.name + ".wscale", {op.cout}, user));
      op.xscale = read_scales(table, op.name + ".xscale", {1}, user)[0];
      weight_bytes_ += sizeof(float) * op.wscale.size();
    }
    op.epilogue.scale = op.has_scale ? read_tensor(table, op.name + ".scale", {op.cout}, user)
                                     : std::vector<float>(op.cout, 1.0f);
    op.epilogue.bias = op.has_bias ? read_tensor(table, op.name + ".bias", {op.cout}, user)
                                   : std::vector<float>(op.cout, 0.0f);
    op.epilogue.scale = padded(std::move(op.epilogue.scale));
    op.epilogue.bias = padded(std::move(op.epilogue.bias));
    weight_bytes_ += sizeof(float) * (op.weights.size() + op.epilogue.scale.size() + op.epilogue.bias.size());
  }

  // per-profile epilogues, and a check that every profile plans and records
  // the MACs and params its widths give, in order of cost (model.h)
  std::unordered_set<std::string> used;  // the tensors the ops and profiles read
  for (const Op& op : ops_) {
    if (op.kind == OpKind::Prelu) used.insert(op.name + ".slope");
    if (op.kind == OpKind::Gate)
      for (const auto& entry : gate_tensor_shapes(op.gate)) used.insert(op.name + entry.first);
    if (op.kind != OpKind::Conv && op.kind != OpKind::Linear && op.kind != OpKind::ScaleBias) continue;
    if (op.kind != OpKind::ScaleBias) used.insert(op.name + ".weight");
    used.insert(op.name + ".scale");
    used.insert(op.name + ".bias");
    if (op.int8) {
      used.insert(op.name + ".wscale");
      used.insert(op.name + ".xscale");
      for (const Profile& p : profiles_) used.insert(op.name + ".xscale@" + p.name);
    }
  }
  const Profile* previous = nullptr;
  for (size_t pi = 0; pi < profiles_.size(); ++pi) {
    const Profile& p = profiles_[pi];
    std::vector<int32_t> out_widths;
    try {
      out_widths = profile_output_widths(*this, p.widths);
    } catch (const Error& e) {
      fail_model("profile '" + p.name + "' " + e.what());
    }
    if (gate_op_ >= 0) {
      const Op& g = ops_[gate_op_];
      if (out_widths[gate_op_] != g.gate.channels)
        fail_model("gate '" + g.name + "' reads " + std::to_string(out_widths[gate_op_]) + " active channels at profile '" +
                   p.name + "', its \"channels\" is " + std::to_string(g.gate.channels));
      const int32_t out_op = producer_of(output_);
      const int32_t first = profile_output_widths(*this, profiles_[0].widths)[out_op];
      if (out_widths[out_op] != first)
        fail_model("the output '" + tensor_names_[output_] + "' has " + std::to_string(first) + " channels at profile '" +
                   profiles_[0].name + "' and " + std::to_string(out_widths[out_op]) + " at profile '" + p.name +
                   "'; a gated model's output has one width at every profile");
    }
    const ShapePlan cost = plan_shapes(*this, p.widths, 1, input_shape_[2], input_shape_[3]);
    int64_t params = cost.params;  // plus the per-profile epilogues of ops without shared ones
    for (size_t i = 0; i < ops_.size(); ++i) {
      const Op& op = ops_[i];
      if (op.kind != OpKind::Conv && op.kind != OpKind::Linear && op.kind != OpKind::ScaleBias) continue;
      params += (!op.has_scale && table.count(op.name + ".scale@" + p.name)) * static_cast<int64_t>(out_widths[i]);
      params += (!op.has_bias && table.count(op.name + ".bias@" + p.name)) * static_cast<int64_t>(out_widths[i]);
    }
    if (p.macs != cost.macs || p.params != params)
      fail_model("profile '" + p.name + "' records macs " + std::to_string(p.macs) + " and params " +
                 std::to_string(p.params) + ", its widths give macs " + std::to_string(cost.macs) + " and params " +
                 std::to_string(params) + "; rebuild the file with slimrt.builder");
    if (previous && p.macs < previous->macs)
      fail_model("profile '" + p.name + "' (" + std::to_string(p.macs) + " MACs) comes after profile '" +
                 previous->name + "' (" + std::to_string(previous->macs) +
                 " MACs); profiles are ordered by cost, cheapest first");
    previous = &p;
    for (size_t i = 0; i < ops_.size(); ++i) {
      Op& op = ops_[i];
      if (op.kind != OpKind::Conv && op.kind != OpKind::Linear && op.kind != OpKind::ScaleBias) continue;
      op.profile_epilogue.resize(profiles_.size());
      if (op.int8) {
        op.profile_xscale.resize(profiles_.size(), 0.0f);
        const std::string xname = op.name + ".xscale@" + p.name;
        if (table.count(xname))
          op.profile_xscale[pi] = read_scales(table, xname, {1}, "op '" + op.name + "' at profile '" + p.name + "'")[0];
      }
      const std::string sname = op.name + ".scale@" + p.name, bname = op.name + ".bias@" + p.name;
      used.insert(sname);
      used.insert(bname);
      const bool hs = table.count(sname) > 0, hb = table.count(bname) > 0;
      if (!hs && !hb) continue;
      if (static_cast<int32_t>(i) < gate_op_)
        fail_model("op '" + op.name + "' runs before gate '" + ops_[gate_op_].name + "' and has the per-profile epilogue '" +
                   (hs ? sname : bname) + "'; the ops before a gate run alike at every profile");
      const std::string user = "op '" + op.name + "' at profile '" + p.name + "'";
      const int64_t w = out_widths[i];
      Epilogue e;
      e.scale = hs ? read_tensor(table, sname, {w}, user)
                   : std::vector<float>(op.epilogue.scale.begin(), op.epilogue.scale.begin() + w);
      e.bias = hb ? read_tensor(table, bname, {w}, user)
                  : std::vector<float>(op.epilogue.bias.begin(), op.epilogue.bias.begin() + w);
      e.scale = padded(std::move(e.scale));
      e.bias = padded(std::move(e.bias));
      weight_bytes_ += sizeof(float) * (e.scale.size() + e.bias.size());
      op.profile_epilogue[pi] = std::move(e);
    }
  }
  // A tensor nothing reads is a misspelt name (or a file for another reader).
  const std::string* unused = nullptr;
  for (const auto& entry : table)
    if (!used.count(entry.first) && (!unused || entry.first < *unused)) unused = &entry.first;
  if (unused) fail_model("tensor '" + *unused + "' is not used by any op or profile; remove it or fix its name");
}

int32_t Model::producer_of(int32_t tensor) const {
  for (size_t i = 0; i < ops_.size(); ++i)
    if (ops_[i].output == tensor) return static_cast<int32_t>(i);
  return -1;
}

// The rules of a gated model that the profiles decide (model.h), checked before
// any weights are read.
void Model::check_gate() const {
  const Op& g = ops_[gate_op_];
  const std::string where = "gate '" + g.name + "'";
  if (static_cast<size_t>(g.gate.choices) != profiles_.size())
    fail_model(where + " has " + std::to_string(g.gate.choices) + " choices, the model has " +
               std::to_string(profiles_.size()) + " profiles; a gate chooses among all of them");
  for (int32_t i = 0; i < gate_op_; ++i) {
    const int32_t grp = ops_[i].out_group;
    if ((ops_[i].kind != OpKind::Conv && ops_[i].kind != OpKind::Linear) || grp < 0) continue;
    for (const Profile& p : profiles_)
      if (p.widths[grp] != profiles_[0].widths[grp])
        fail_model("group '" + groups_[grp].name + "' is written before " + where +
                   " and runs at one shared width, but profile '" + profiles_[0].name + "' gives it " +
                   std::to_string(profiles_[0].widths[grp]) + " and profile '" + p.name + "' " +
                   std::to_string(p.widths[grp]));
  }
}

std::shared_ptr<const Model> Model::load_buffer(const void* data, size_t size) {
  if (!data && size) fail_argument("buffer is null");
  std::shared_ptr<Model> m(new Model());
  m->parse(static_cast<const uint8_t*>(data), size, false);
  return m;
}

std::shared_ptr<const Model> Model::load_file(const std::string& path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
  // Only regular files are read; the flag changes nothing for them.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(ErrorKind::Io, "cannot open '" + path + "': " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(ErrorKind::Io, "'" + path + "' is not a regular file");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    fail_model("'" + path + "' is empty");
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) throw Error(ErrorKind::Io, "cannot map '" + path + "': " + std::strerror(errno));
  // Everything the engine needs is copied (packed) out of the mapping, which is
  // released before returning: a loaded model holds one copy of the weights.
  struct Unmap {
    void* p;
    size_t n;
    ~Unmap() { ::munmap(p, n); }
  } unmap{map, size};
  std::shared_ptr<Model> m(new Model());
  try {
    m->parse(static_cast<const uint8_t*>(map), size, true);
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::InvalidModel) fail_model("'" + path + "': " + e.what());
    throw;
  }
  return m;
}

std::vector<int32_t> Model::full_widths() const {
  std::vector<int32_t> w;
  for (const Group& g : groups_) w.push_back(g.size);
  return w;
}

int32_t uniform_width(int32_t size, double m) {
  // The nearest of {8, 16, ..., size}: below `size` a multiple of 8, at the top
  // `size` itself, so m = 1 is always the full group (ties round up).
  const double t = size * m;
  const int64_t lo = 8 * static_cast<int64_t>(std::floor(t / 8.0));
  const int64_t hi = lo + 8 < size ? lo + 8 : size;
  int64_t c = t - static_cast<double>(lo) < static_cast<double>(hi) - t ? lo : hi;
  const int64_t floor_w = size < 8 ? size : 8;
  c = c < floor_w ? floor_w : (c > size ? size : c);
  return static_cast<int32_t>(c);
}

std::vector<int32_t> Model::uniform_widths(double m) const {
  if (!(m >= static_cast<double>(min_multiplier_) - 1e-6 && m <= 1.0 + 1e-6))
    throw Error(ErrorKind::UnknownProfile, "multiplier " + std::to_string(m) + " is outside this model's range [" +
                                               std::to_string(min_multiplier_) + ", 1]");
  std::vector<int32_t> w;
  for (const Group& g : groups_) {
    if (g.fixed) {
      w.push_back(g.size);
      continue;
    }
    w.push_back(uniform_width(g.size, m));
  }
  return w;
}

int32_t Model::find_profile(const std::vector<int32_t>& widths) const {
  for (size_t i = 0; i < profiles_.size(); ++i)
    if (profiles_[i].widths == widths) return static_cast<int32_t>(i);
  return -1;
}

int32_t Model::profile_index(const std::string& name) const {
  for (size_t i = 0; i < profiles_.size(); ++i)
    if (profiles_[i].name == name) return static_cast<int32_t>(i);
  std::string known;
  for (const Profile& p : profiles_) known += (known.empty() ? "" : ", ") + p.name;
  throw Error(ErrorKind::UnknownProfile, "unknown profile '" + name + "' (this model has: " + known + ")");
}

}  // namespace slimrt
