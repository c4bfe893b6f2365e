// int8 kernels (int8.h): weight packing, the portable kernels that define
// them, and the dispatch to the widest instruction set the CPU supports.
#include "kernels/int8.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

namespace slimrt::kernels {

void conv_i8_gather(const ConvI8Params& p, int64_t m0, int64_t m1, uint8_t* a);
void conv_i8_generic(const ConvI8Params& p, int64_t m_begin, int64_t m_end, int p_begin, int p_end,
                     uint8_t* workspace);
void dwconv_i8_generic(const DwI8Params& p, int64_t m_begin, int64_t m_end);
#if defined(SLIMRT_HAVE_X86_KERNELS)
void conv_i8_vnni(const ConvI8Params& p, int64_t m_begin, int64_t m_end, int p_begin, int p_end,
                  uint8_t* workspace);
void dwconv_i8_avx512(const DwI8Params& p, int64_t m_begin, int64_t m_end);
#endif

size_t packed_i8_size(int taps, int k_full, int cout) {
  return static_cast<size_t>(round_up(cout, kPanel)) * taps * i8_row_groups(k_full) * 4;
}

void pack_i8(const int8_t* w, int taps, int k_full, int cout, int8_t* packed) {
  const int kg = i8_row_groups(k_full);
  std::memset(packed, 0, packed_i8_size(taps, k_full, cout));
  for (int t = 0; t < taps; ++t)
    for (int k = 0; k < k_full; ++k) {
      const int8_t* row = w + (static_cast<int64_t>(t) * k_full + k) * cout;
      for (int c = 0; c < cout; ++c) {
        const int64_t group = (static_cast<int64_t>(c / kPanel) * taps + t) * kg + k / 4;
        packed[group * 64 + (c % kPanel) * 4 + k % 4] = row[c];
      }
    }
}

size_t conv_i8_workspace_bytes(int taps, int kg_full) {
  return static_cast<size_t>(kI8MB) * taps * kg_full * 4 + 64;
}

// The K vectors of output pixels [m0, m1) (m1 - m0 <= kI8MB) as rows of
// taps * kgroups * 4 bytes at `a`; rows up to the next whole tile are zero.
void conv_i8_gather(const ConvI8Params& p, int64_t m0, int64_t m1, uint8_t* a) {
  const int taps = p.kh * p.kw;
  const int64_t kbytes = static_cast<int64_t>(taps) * p.kgroups * 4;
  const int rows = 4 * p.kgroups;
  for (int64_t m = m0; m < m1; ++m) {
    uint8_t* dst = a + (m - m0) * kbytes;
    const PixelPos pos = pixel_pos(m, p.oh, p.ow);
    for (int i = 0; i < p.kh; ++i)
      for (int j = 0; j < p.kw; ++j, dst += rows) {
        const int iy = pos.y * p.sh - p.pad_top + i * p.dh, ix = pos.x * p.sw - p.pad_left + j * p.dw;
        const bool inside = iy >= 0 && iy < p.ih && ix >= 0 && ix < p.iw;
        const float* x = inside ? p.input + ((pos.n * p.ih + iy) * p.iw + ix) * p.in_stride : nullptr;
        for (int k = 0; k < rows; ++k) {
          const int32_t c = p.prefix > 0 ? (k < p.prefix ? k : -1) : p.kmap[k];
          dst[k] = c < 0 ? 0 : static_cast<uint8_t>(inside ? quantize_i8(x[c], p.inv_scale) + 128 : 128);
        }
      }
  }
  const int64_t tiles_end = m0 + round_up(m1 - m0, kI8MR);
  if (tiles_end > m1) std::memset(a + (m1 - m0) * kbytes, 0, static_cast<size_t>((tiles_end - m1) * kbytes));
}

void conv_i8_generic(const ConvI8Params& p, int64_t m_begin, int64_t m_end, int p_begin, int p_end,
                     uint8_t* workspace) {
  const int taps = p.kh * p.kw;
  const int64_t kbytes = static_cast<int64_t>(taps) * p.kgroups * 4;
  for (int64_t m0 = m_begin; m0 < m_end; m0 += kI8MB) {
    const int64_t m1 = m0 + kI8MB < m_end ? m0 + kI8MB : m_end;
    conv_i8_gather(p, m0, m1, workspace);
    for (int pn = p_begin; pn < p_end; ++pn) {
      const int cols = p.out_channels - pn * kPanel < kPanel ? p.out_channels - pn * kPanel : kPanel;
      for (int64_t m = m0; m < m1; ++m) {
        const uint8_t* u = workspace + (m - m0) * kbytes;
        int32_t acc[kPanel] = {};
        for (int t = 0; t < taps; ++t) {
          const int8_t* w = p.packed + ((static_cast<int64_t>(pn) * taps + t) * p.kg_full) * 64;
          for (int g = 0; g < p.kgroups; ++g, u += 4, w += 64)
            for (int c = 0; c < kPanel; ++c)
              for (int r = 0; r < 4; ++r) acc[c] += static_cast<int32_t>(u[r]) * w[c * 4 + r];
        }
        float* y = p.output + m * p.out_stride + pn * kPanel;
        const float* res = p.residual ? p.residual + m * p.out_stride + pn * kPanel : nullptr;
        for (int c = 0; c < cols; ++c) {
          const int j = pn * kPanel + c;
          float v = static_cast<float>(acc[c] - p.comp[j]) * p.mult[j] + p.bias[j];
          if (res) v += res[c];
          y[c] = apply_act(v, p.act);
        }
      }
    }
  }
}

void dwconv_i8_generic(const DwI8Params& p, int64_t m_begin, int64_t m_end) {
  for (int64_t m = m_begin; m < m_end; ++m) {
    const PixelPos pos = pixel_pos(m, p.oh, p.ow);
    float* y = p.output + m * p.channels;
    for (int r = 0; r < p.nruns; ++r) {
      const ChannelRun& run = p.runs[r];
      for (int32_t k = 0; k < run.count; ++k) {
        const int32_t c = run.act_off + k, wc = run.w_off + k;
        float acc = 0.0f;
        for (int i = 0; i < p.kh; ++i) {
          const int iy = pos.y * p.sh - p.pad_top + i * p.dh;
          if (iy < 0 || iy >= p.ih) continue;
          for (int j = 0; j < p.kw; ++j) {
            const int ix = pos.x * p.sw - p.pad_left + j * p.dw;
            if (ix < 0 || ix >= p.iw) continue;
            const float x = p.input[((pos.n * p.ih + iy) * p.iw + ix) * p.channels + c];
            acc += static_cast<float>(quantize_i8(x, p.inv_scale)) * p.weights[(i * p.kw + j) * p.w_stride + wc];
          }
        }
        y[c] = apply_act(acc * p.mult[c] + p.bias[c], p.act);
      }
    }
  }
}

namespace {

struct DispatchI8 {
  void (*conv)(const ConvI8Params&, int64_t, int64_t, int, int, uint8_t*);
  void (*dw)(const DwI8Params&, int64_t, int64_t);
  const char* name;
};

const DispatchI8 kGenericI8{conv_i8_generic, dwconv_i8_generic, "generic"};
#if defined(SLIMRT_HAVE_X86_KERNELS)
const DispatchI8 kVnni{conv_i8_vnni, dwconv_i8_avx512, "avx512vnni"};
#endif

const DispatchI8* find(const std::string& want) {
  if (want == "generic") return &kGenericI8;
#if defined(SLIMRT_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  if (want == "avx512vnni" && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
    return &kVnni;
#endif
  return nullptr;
}

// The widest implementation; SLIMRT_INT8_ISA=generic forces the portable one.
const DispatchI8* select() {
  const char* forced = std::getenv("SLIMRT_INT8_ISA");
  if (forced && find(forced)) return find(forced);
  if (const DispatchI8* d = find("avx512vnni")) return d;
  return &kGenericI8;
}

std::atomic<const DispatchI8*>& current() {
  static std::atomic<const DispatchI8*> d{select()};
  return d;
}

}  // namespace

void conv_i8(const ConvI8Params& p, int64_t m_begin, int64_t m_end, int p_begin, int p_end, uint8_t* workspace) {
  current().load(std::memory_order_relaxed)->conv(p, m_begin, m_end, p_begin, p_end, workspace);
}

void dwconv_i8(const DwI8Params& p, int64_t m_begin, int64_t m_end) {
  current().load(std::memory_order_relaxed)->dw(p, m_begin, m_end);
}

const char* i8_isa() { return current().load()->name; }

bool set_i8_isa(const char* name) {
  const DispatchI8* d = find(name ? name : "");
  if (d) current().store(d);
  return d != nullptr;
}

}  // namespace slimrt::kernels
