// int8 kernels (int8.h) for AVX-512 with VNNI (compile flags in CMakeLists.txt;
// chosen at run time only when CPUID reports avx512f, avx512bw, avx512vl and
// avx512vnni).
//
// Dense conv: for each block of kI8MB output pixels, the K vectors are
// gathered (quantized, +128) into the workspace interleaved per tile of
// kI8MR pixels, [row group][pixel][4 bytes], so a tile's inner loop reads one
// weight line (16 columns x 4 rows) per panel and one broadcast dword per
// pixel for each vpdpbusd. Then every pair of panels runs over the tiles.
#include <immintrin.h>

#include <cstring>

#include "kernels/int8.h"

namespace slimrt::kernels {

void conv_i8_gather(const ConvI8Params& p, int64_t m0, int64_t m1, uint8_t* a);
void dwconv_i8_generic(const DwI8Params& p, int64_t m_begin, int64_t m_end);

namespace {

#define SLIMRT_INLINE static inline __attribute__((always_inline))

// u = q(x) + 128 for the lanes in `valid` (NaN gives 128), 0 for the others.
SLIMRT_INLINE __m512i quantize_u8(__m512 x, __m512 r, __mmask16 valid) {
  const __m512 v = _mm512_mul_ps(x, r);
  const __mmask16 ordered = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q);
  const __m512 c = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
  const __m512i q = _mm512_maskz_mov_epi32(ordered, _mm512_cvtps_epi32(c));
  return _mm512_maskz_add_epi32(valid, q, _mm512_set1_epi32(128));
}

SLIMRT_INLINE __mmask16 low_lanes(int n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n < 0 ? 0 : n)) - 1);
}

// Pixels [m0, m1) of one block, interleaved per tile: byte (g, i, b) of tile
// T (row group g over all taps, pixel i, row 4 g + b of its tap) at
// a + ((T * groups + g) * kI8MR + i) * 4. Pixels past m1 up to the tile end are zero.
void gather_tiles(const ConvI8Params& p, int64_t m0, int64_t m1, uint8_t* a) {
  const int taps = p.kh * p.kw;
  const int64_t groups = static_cast<int64_t>(taps) * p.kgroups;
  const int rows = 4 * p.kgroups;
  const int64_t tiles = (m1 - m0 + kI8MR - 1) / kI8MR;
  const __m512 r = _mm512_set1_ps(p.inv_scale);
  for (int64_t m = m0; m < m0 + tiles * kI8MR; ++m) {
    const int64_t local = m - m0, tile = local / kI8MR, i = local % kI8MR;
    uint8_t* base = a + (tile * groups * kI8MR + i) * 4;
    if (m >= m1) {
      for (int64_t g = 0; g < groups; ++g) std::memset(base + g * kI8MR * 4, 0, 4);
      continue;
    }
    const PixelPos pos = pixel_pos(m, p.oh, p.ow);
    int64_t g = 0;  // row group over all taps
    for (int ti = 0; ti < p.kh; ++ti)
      for (int tj = 0; tj < p.kw; ++tj) {
        const int iy = pos.y * p.sh - p.pad_top + ti * p.dh, ix = pos.x * p.sw - p.pad_left + tj * p.dw;
        const bool inside = iy >= 0 && iy < p.ih && ix >= 0 && ix < p.iw;
        const float* x = inside ? p.input + ((pos.n * p.ih + iy) * p.iw + ix) * p.in_stride : nullptr;
        for (int k = 0; k < rows; k += 16) {
          alignas(64) uint8_t bytes[16];
          if (p.prefix > 0) {
            const __mmask16 valid = low_lanes(p.prefix - k);
            __m512i u;
            if (inside)
              u = quantize_u8(_mm512_maskz_loadu_ps(valid, x + k), r, valid);
            else
              u = _mm512_maskz_mov_epi32(valid, _mm512_set1_epi32(128));
            _mm_store_si128(reinterpret_cast<__m128i*>(bytes), _mm512_cvtepi32_epi8(u));
          } else {
            for (int b = 0; b < 16 && k + b < rows; ++b) {
              const int32_t c = p.kmap[k + b];
              bytes[b] = c < 0 ? 0 : static_cast<uint8_t>(inside ? quantize_i8(x[c], p.inv_scale) + 128 : 128);
            }
          }
          const int n_groups = (rows - k) / 4 < 4 ? (rows - k) / 4 : 4;
          for (int b = 0; b < n_groups; ++b, ++g) std::memcpy(base + g * kI8MR * 4, bytes + 4 * b, 4);
        }
      }
  }
}

SLIMRT_INLINE __m512 activate(__m512 v, const Activation& act, bool* scalar) {
  switch (act.kind) {
    case Act::None: return v;
    case Act::Relu: return _mm512_max_ps(v, _mm512_setzero_ps());
    case Act::Relu6: return _mm512_min_ps(_mm512_max_ps(v, _mm512_setzero_ps()), _mm512_set1_ps(6.0f));
    default: *scalar = true; return v;
  }
}

// One tile of kI8MR pixels (its first `valid` stored) times NP panels from pn.
template <int NP>
void tile(const ConvI8Params& p, const uint8_t* a, int64_t groups, int64_t m, int valid, int pn) {
  __m512i acc[kI8MR][NP];
  for (int i = 0; i < kI8MR; ++i)
    for (int q = 0; q < NP; ++q) acc[i][q] = _mm512_setzero_si512();
  const int taps = p.kh * p.kw;
  const int64_t panel_bytes = static_cast<int64_t>(taps) * p.kg_full * 64;
  const int8_t* w = p.packed + pn * panel_bytes;
  for (int t = 0; t < taps; ++t) {
    const int8_t* wt = w + static_cast<int64_t>(t) * p.kg_full * 64;
    for (int g = 0; g < p.kgroups; ++g, a += kI8MR * 4) {
      __m512i b[NP];
      for (int q = 0; q < NP; ++q) b[q] = _mm512_loadu_si512(wt + q * panel_bytes + g * 64);
      for (int i = 0; i < kI8MR; ++i) {
        int32_t word;
        std::memcpy(&word, a + i * 4, 4);
        const __m512i av = _mm512_set1_epi32(word);
        for (int q = 0; q < NP; ++q) acc[i][q] = _mm512_dpbusd_epi32(acc[i][q], av, b[q]);
      }
    }
  }
  (void)groups;
  for (int q = 0; q < NP; ++q) {
    const int c0 = (pn + q) * kPanel;
    const int cols = p.out_channels - c0 < kPanel ? p.out_channels - c0 : kPanel;
    const __mmask16 mask = low_lanes(cols);
    const __m512i comp = _mm512_loadu_si512(p.comp + c0);
    const __m512 mult = _mm512_loadu_ps(p.mult + c0), bias = _mm512_loadu_ps(p.bias + c0);
    for (int i = 0; i < valid; ++i) {
      __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i][q], comp)), mult, bias);
      const int64_t at = (m + i) * p.out_stride + c0;
      if (p.residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, p.residual + at));
      bool scalar = false;
      v = activate(v, p.act, &scalar);
      _mm512_mask_storeu_ps(p.output + at, mask, v);
      if (scalar)
        for (int c = 0; c < cols; ++c) p.output[at + c] = apply_act(p.output[at + c], p.act);
    }
  }
}

}  // namespace

void conv_i8_vnni(const ConvI8Params& p, int64_t m_begin, int64_t m_end, int p_begin, int p_end,
                  uint8_t* workspace) {
  const int taps = p.kh * p.kw;
  const int64_t groups = static_cast<int64_t>(taps) * p.kgroups;
  const int64_t tile_bytes = groups * kI8MR * 4;
  for (int64_t m0 = m_begin; m0 < m_end; m0 += kI8MB) {
    const int64_t m1 = m0 + kI8MB < m_end ? m0 + kI8MB : m_end;
    gather_tiles(p, m0, m1, workspace);
    for (int pn = p_begin; pn < p_end; pn += 2) {
      for (int64_t m = m0; m < m1; m += kI8MR) {
        const int valid = static_cast<int>(m1 - m < kI8MR ? m1 - m : kI8MR);
        const uint8_t* a = workspace + (m - m0) / kI8MR * tile_bytes;
        if (pn + 1 < p_end)
          tile<2>(p, a, groups, m, valid, pn);
        else
          tile<1>(p, a, groups, m, valid, pn);
      }
    }
  }
}

void dwconv_i8_avx512(const DwI8Params& p, int64_t m_begin, int64_t m_end) {
  if (p.nruns != 1 || p.runs[0].act_off != 0 || p.runs[0].w_off != 0) {
    dwconv_i8_generic(p, m_begin, m_end);
    return;
  }
  const __m512 r = _mm512_set1_ps(p.inv_scale);
  const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  for (int64_t m = m_begin; m < m_end; ++m) {
    const PixelPos pos = pixel_pos(m, p.oh, p.ow);
    float* y = p.output + m * p.channels;
    for (int c0 = 0; c0 < p.channels; c0 += 16) {
      const __mmask16 mask = low_lanes(p.channels - c0);
      __m512 acc = _mm512_setzero_ps();
      for (int i = 0; i < p.kh; ++i) {
        const int iy = pos.y * p.sh - p.pad_top + i * p.dh;
        if (iy < 0 || iy >= p.ih) continue;
        for (int j = 0; j < p.kw; ++j) {
          const int ix = pos.x * p.sw - p.pad_left + j * p.dw;
          if (ix < 0 || ix >= p.iw) continue;
          const float* x = p.input + ((pos.n * p.ih + iy) * p.iw + ix) * p.channels + c0;
          const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, x), r);
          const __mmask16 ordered = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q);
          // clamp, then round to nearest even: q(x) as a float
          const __m512 q = _mm512_maskz_roundscale_ps(
              ordered, _mm512_min_ps(_mm512_max_ps(v, lo), hi), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
          acc = _mm512_fmadd_ps(q, _mm512_loadu_ps(p.weights + (i * p.kw + j) * p.w_stride + c0), acc);
        }
      }
      __m512 v = _mm512_fmadd_ps(acc, _mm512_loadu_ps(p.mult + c0), _mm512_loadu_ps(p.bias + c0));
      bool scalar = false;
      v = activate(v, p.act, &scalar);
      _mm512_mask_storeu_ps(y + c0, mask, v);
      if (scalar)
        for (int c = c0; c < c0 + 16 && c < p.channels; ++c) y[c] = apply_act(y[c], p.act);
    }
  }
}

}  // namespace slimrt::kernels
