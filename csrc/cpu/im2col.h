// im2col / col2im of the CPU GEMM conv2d: one chunk of output pixels of one sample and one group
// gathered into (or scattered back from) the GEMM operand layout, NHWC and NCHW.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/conv2d_geometry.h"
#include "cpu/gemm_kernel.h"

namespace fastcnn {
namespace cpu {
// ---------------------------------------------------------------------------------------------------
// im2col / col2im for one chunk of output pixels [p0, p1) of one sample and one group.

// NHWC: col[p - p0, (kh, kw, c)], rows of K contiguous elements. xn points at the sample. With one
// group and no horizontal dilation the KW taps of a kernel row are one contiguous run of the input row,
// so each (pixel, kh) is a single copy instead of KW small ones (this matters for the 3-channel stem).
template <typename T>
void im2col_nhwc(const Geometry& g, const T* xn, int64_t c_off, int64_t p0, int64_t p1, T* col) {
  const int64_t Cg = g.Cg;
  const bool runs = g.groups == 1 && g.dw == 1;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t oh = p / g.OW, ow = p % g.OW;
    T* dst = col + (p - p0) * g.K;
    const int64_t iw0 = ow * g.sw - g.pw;
    for (int64_t kh = 0; kh < g.KH; ++kh, dst += g.KW * Cg) {
      const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
      if (ih < 0 || ih >= g.H) {
        std::fill_n(dst, g.KW * Cg, T(0));
        continue;
      }
      const T* xrow = xn + ih * g.W * g.C + c_off;
      if (runs) {
        const int64_t kw_lo = std::clamp<int64_t>(-iw0, 0, g.KW);
        const int64_t kw_hi = std::clamp<int64_t>(g.W - iw0, kw_lo, g.KW);
        std::fill_n(dst, kw_lo * Cg, T(0));
        std::memcpy(dst + kw_lo * Cg, xrow + (iw0 + kw_lo) * g.C, (kw_hi - kw_lo) * Cg * sizeof(T));
        std::fill_n(dst + kw_hi * Cg, (g.KW - kw_hi) * Cg, T(0));
        continue;
      }
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t iw = iw0 + kw * g.dw;
        if (iw < 0 || iw >= g.W) {
          std::fill_n(dst + kw * Cg, Cg, T(0));
        } else {
          std::memcpy(dst + kw * Cg, xrow + iw * g.C, Cg * sizeof(T));
        }
      }
    }
  }
}

template <typename T>
void col2im_nhwc(const Geometry& g, const T* col, int64_t c_off, int64_t p0, int64_t p1, T* gin) {
  const int64_t Cg = g.Cg;
  const bool runs = g.groups == 1 && g.dw == 1;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t oh = p / g.OW, ow = p % g.OW;
    const T* src = col + (p - p0) * g.K;
    const int64_t iw0 = ow * g.sw - g.pw;
    for (int64_t kh = 0; kh < g.KH; ++kh, src += g.KW * Cg) {
      const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
      if (ih < 0 || ih >= g.H) continue;
      T* grow = gin + ih * g.W * g.C + c_off;
      if (runs) {
        const int64_t kw_lo = std::clamp<int64_t>(-iw0, 0, g.KW);
        const int64_t kw_hi = std::clamp<int64_t>(g.W - iw0, kw_lo, g.KW);
        T* __restrict__ d = grow + (iw0 + kw_lo) * g.C;
        const T* __restrict__ s = src + kw_lo * Cg;
        const int64_t len = (kw_hi - kw_lo) * Cg;
        for (int64_t i = 0; i < len; ++i) d[i] += s[i];
        continue;
      }
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t iw = iw0 + kw * g.dw;
        if (iw < 0 || iw >= g.W) continue;
        T* __restrict__ d = grow + iw * g.C;
        const T* __restrict__ s = src + kw * Cg;
        for (int64_t c = 0; c < Cg; ++c) d[c] += s[c];
      }
    }
  }
}

// NCHW: col[(c, kh, kw), p - p0], rows of (p1 - p0) contiguous elements. xn points at the group's first
// channel plane. kCol2im selects col2im (scatter-add into the planes) instead of im2col.
template <typename T, bool kCol2im>
void nchw_col_pass(const Geometry& g, std::conditional_t<kCol2im, T*, const T*> planes, int64_t p0,
                   int64_t p1, std::conditional_t<kCol2im, const T*, T*> col) {
  const int64_t rows = p1 - p0;
  // Rows of small images are short: the divisions locating a segment would cost more than copying it,
  // so the chunk's first output row is located once and each tap's valid span computed once.
  const int64_t oh_first = p0 / g.OW, ow_first = p0 % g.OW;
  for (int64_t c = 0; c < g.Cg; ++c) {
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        auto* line = col + ((c * g.KH + kh) * g.KW + kw) * rows;
        auto* plane = planes + c * g.HW;
        const int64_t off_w = kw * g.dw - g.pw;
        const ValidSpan span(off_w, g.sw, g.W);
        int64_t p = p0, oh = oh_first, ow0 = ow_first;
        for (; p < p1; ++oh, ow0 = 0) {
          const int64_t ow1 = std::min(g.OW, ow0 + (p1 - p));
          const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
          auto* seg = line + (p - p0);
          if (ih < 0 || ih >= g.H) {
            if constexpr (!kCol2im) std::fill_n(seg, ow1 - ow0, T(0));
          } else {
            int64_t lo, hi;
            span.clamp(ow0, ow1, lo, hi);
            auto* in_row = plane + ih * g.W + off_w;
            if constexpr (kCol2im) {
              if (g.sw == 1) {
                for (int64_t ow = lo; ow < hi; ++ow) in_row[ow] += seg[ow - ow0];
              } else {
                for (int64_t ow = lo; ow < hi; ++ow) in_row[ow * g.sw] += seg[ow - ow0];
              }
            } else {
              std::fill_n(seg, lo - ow0, T(0));
              if (g.sw == 1) {
                std::memcpy(seg + (lo - ow0), in_row + lo, (hi - lo) * sizeof(T));
              } else {
                for (int64_t ow = lo; ow < hi; ++ow) seg[ow - ow0] = in_row[ow * g.sw];
              }
              std::fill_n(seg + (hi - ow0), ow1 - hi, T(0));
            }
          }
          p += ow1 - ow0;
        }
      }
    }
  }
}

}  // namespace cpu
}  // namespace fastcnn
