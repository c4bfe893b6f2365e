// Dense convolution: weight packing, the scalar reference and the dispatch to
// the fastest conv_packed the CPU supports.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels/kernels.h"

namespace slimrt::kernels {

void conv_packed_generic(const ConvParams&, int64_t, int64_t, int, int, float*);
#if defined(SLIMRT_HAVE_X86_KERNELS)
void conv_packed_avx2(const ConvParams&, int64_t, int64_t, int, int, float*);
void conv_packed_avx512(const ConvParams&, int64_t, int64_t, int, int, float*);
#endif

size_t packed_conv_size(int taps, int k_full, int cout) {
  return static_cast<size_t>(round_up(cout, kPanel)) * taps * k_full;
}

void pack_conv(const float* w, int taps, int k_full, int cout, float* packed) {
  const int panels = static_cast<int>(round_up(cout, kPanel) / kPanel);
  const int64_t rows = static_cast<int64_t>(taps) * k_full;
  for (int pn = 0; pn < panels; ++pn) {
    float* dst = packed + pn * rows * kPanel;
    const int c0 = pn * kPanel;
    const int cols = cout - c0 < kPanel ? cout - c0 : kPanel;
    for (int64_t row = 0; row < rows; ++row) {
      std::memcpy(dst + row * kPanel, w + row * cout + c0, sizeof(float) * cols);
      std::memset(dst + row * kPanel + cols, 0, sizeof(float) * (kPanel - cols));
    }
  }
}

void conv_packed_ref(const ConvParams& p, int64_t m_begin, int64_t m_end, int p_begin, int p_end) {
  const int taps = p.kh * p.kw;
  const int64_t panel_floats = static_cast<int64_t>(taps) * p.k_full * kPanel;
  const int c_end = p.out_channels < p_end * kPanel ? p.out_channels : p_end * kPanel;
  for (int64_t m = m_begin; m < m_end; ++m) {
    const PixelPos pos = pixel_pos(m, p.oh, p.ow);
    const int64_t n = pos.n;
    const int oy = pos.y, ox = pos.x;
    for (int c = p_begin * kPanel; c < c_end; ++c) {
      const float* panel = p.packed + (c / kPanel) * panel_floats;
      double acc = 0.0;
      for (int ky = 0; ky < p.kh; ++ky) {
        const int iy = oy * p.sh - p.pad_top + ky * p.dh;
        for (int kx = 0; kx < p.kw; ++kx) {
          const int ix = ox * p.sw - p.pad_left + kx * p.dw;
          if (iy < 0 || iy >= p.ih || ix < 0 || ix >= p.iw) continue;
          const float* px = p.input + ((n * p.ih + iy) * p.iw + ix) * p.in_stride;
          const int t = ky * p.kw + kx;
          for (int ri = 0; ri < p.nruns; ++ri) {
            const ChannelRun run = p.runs[ri];
            for (int k = 0; k < run.count; ++k) {
              const float w = panel[(static_cast<int64_t>(t) * p.k_full + run.w_off + k) * kPanel + c % kPanel];
              acc += static_cast<double>(px[run.act_off + k]) * w;
            }
          }
        }
      }
      p.output[m * p.out_stride + c] =
          apply_act(static_cast<float>(acc) * p.scale[c] + p.bias[c], p.act);
    }
  }
}

namespace {

using ConvFn = void (*)(const ConvParams&, int64_t, int64_t, int, int, float*);

struct ConvDispatch {
  ConvFn fn;
  const char* name;
};

// SLIMRT_ISA=generic|avx2 forces a narrower implementation (for tests, and for
// machines where the widest one runs slower).
ConvDispatch select_conv() {
  const char* forced = std::getenv("SLIMRT_ISA");
  const std::string want = forced ? forced : "";
  if (want == "generic") return {conv_packed_generic, "generic"};
#if defined(SLIMRT_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (want == "avx2" && has_avx2) return {conv_packed_avx2, "avx2"};
  if (__builtin_cpu_supports("avx512f")) return {conv_packed_avx512, "avx512f"};
  if (has_avx2) return {conv_packed_avx2, "avx2"};
#endif
  return {conv_packed_generic, "generic"};
}

std::atomic<const ConvDispatch*>& current() {
  static const ConvDispatch initial = select_conv();
  static std::atomic<const ConvDispatch*> d{&initial};
  return d;
}

}  // namespace

void conv_packed(const ConvParams& p, int64_t m_begin, int64_t m_end, int p_begin, int p_end, float* workspace) {
  current().load(std::memory_order_relaxed)->fn(p, m_begin, m_end, p_begin, p_end, workspace);
}

const char* conv_isa() { return current().load()->name; }

bool set_conv_isa(const char* isa) {
  static const ConvDispatch generic{conv_packed_generic, "generic"};
  const std::string want = isa ? isa : "";
  if (want == "generic") {
    current().store(&generic);
    return true;
  }
#if defined(SLIMRT_HAVE_X86_KERNELS)
  static const ConvDispatch avx2{conv_packed_avx2, "avx2"};
  static const ConvDispatch avx512{conv_packed_avx512, "avx512f"};
  __builtin_cpu_init();
  if (want == "avx2" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    current().store(&avx2);
    return true;
  }
  if (want == "avx512f" && __builtin_cpu_supports("avx512f")) {
    current().store(&avx512);
    return true;
  }
#endif
  return false;
}

}  // namespace slimrt::kernels
