// Dense convolution's weight packing, and the dispatch
// of the vector kernels (dense and depthwise conv, max pooling, activations) to the widest instruction
// set the CPU supports.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels/kernels.h"

namespace slimrt::kernels {

void conv_packed_generic(const ConvParams&, int64_t, int64_t, int, int, float*);
void dwconv_generic(const DwParams&, int64_t, int64_t);
void maxpool_generic(const PoolParams&, int64_t, int64_t);
void activate_generic(float*, int64_t, const Activation&);
#if defined(SLIMRT_HAVE_X86_KERNELS)
void conv_packed_avx2(const ConvParams&, int64_t, int64_t, int, int, float*);
void conv_packed_avx512(const ConvParams&, int64_t, int64_t, int, int, float*);
void dwconv_avx2(const DwParams&, int64_t, int64_t);
void dwconv_avx512(const DwParams&, int64_t, int64_t);
void maxpool_avx2(const PoolParams&, int64_t, int64_t);
void maxpool_avx512(const PoolParams&, int64_t, int64_t);
void activate_avx2(float*, int64_t, const Activation&);
void activate_avx512(float*, int64_t, const Activation&);
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

namespace {

struct Dispatch {
  void (*conv)(const ConvParams&, int64_t, int64_t, int, int, float*);
  void (*dw)(const DwParams&, int64_t, int64_t);
  void (*maxpool)(const PoolParams&, int64_t, int64_t);
  void (*activate)(float*, int64_t, const Activation&);
  const char* name;
};

const Dispatch kGeneric{conv_packed_generic, dwconv_generic, maxpool_generic, activate_generic, "generic"};
#if defined(SLIMRT_HAVE_X86_KERNELS)
const Dispatch kAvx2{conv_packed_avx2, dwconv_avx2, maxpool_avx2, activate_avx2, "avx2"};
const Dispatch kAvx512{conv_packed_avx512, dwconv_avx512, maxpool_avx512, activate_avx512, "avx512f"};
#endif

// The implementation called `want` if this CPU runs it, else null.
const Dispatch* find(const std::string& want) {
  if (want == "generic") return &kGeneric;
#if defined(SLIMRT_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  if (want == "avx2" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &kAvx2;
  if (want == "avx512f" && __builtin_cpu_supports("avx512f")) return &kAvx512;
#endif
  return nullptr;
}

// The widest implementation; SLIMRT_ISA=generic|avx2 forces a narrower one
// (for tests, and for machines where the widest one runs slower).
const Dispatch* select() {
  const char* forced = std::getenv("SLIMRT_ISA");
  if (forced && find(forced)) return find(forced);
  for (const char* isa : {"avx512f", "avx2"})
    if (const Dispatch* d = find(isa)) return d;
  return &kGeneric;
}

std::atomic<const Dispatch*>& current() {
  static std::atomic<const Dispatch*> d{select()};
  return d;
}

}  // namespace

bool conv_nchw_supported(int cin, int kh, int kw, int sw, int dw) {
  return cin <= 4 && kh <= 16 && dw == 1 && ((kw == 7 && sw == 2) || (kw == 3 && sw == 2) || (kw == 3 && sw == 1) ||
                                 (kw == 5 && sw == 2));
}

void conv_packed(const ConvParams& p, int64_t m_begin, int64_t m_end, int p_begin, int p_end, float* workspace) {
  current().load(std::memory_order_relaxed)->conv(p, m_begin, m_end, p_begin, p_end, workspace);
}

void dwconv(const DwParams& p, int64_t m_begin, int64_t m_end) {
  current().load(std::memory_order_relaxed)->dw(p, m_begin, m_end);
}

void maxpool(const PoolParams& p, int64_t m_begin, int64_t m_end) {
  current().load(std::memory_order_relaxed)->maxpool(p, m_begin, m_end);
}

void activate_vector(float* y, int64_t n, const Activation& act) {
  current().load(std::memory_order_relaxed)->activate(y, n, act);
}

const char* isa() { return current().load()->name; }

bool set_isa(const char* name) {
  const Dispatch* d = find(name ? name : "");
  if (d) current().store(d);
  return d != nullptr;
}

}  // namespace slimrt::kernels
