// The parts of augment_affine that the CPU and CUDA kernels share: argument checks and buffer setup
// (host), and the per-pixel work (host and device): map an output pixel through the sample's affine
// matrix, sample the input bilinearly (zero outside, align_corners=False, the same tap weights and
// summation order as F.grid_sample) and normalise each channel. Both devices therefore sample identical
// coordinates with identical arithmetic; only the loop over pixels differs.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <utility>

#include "common/checks.h"

namespace fastcnn {
namespace augment {

struct Geometry {
  int64_t batch, channels, in_h, in_w, out_h, out_w;
  // Element strides of the dense input and output (NCHW or channels_last).
  int64_t in_sn, in_sc, in_sh, in_sw, out_sn, out_sc, out_sh, out_sw;
};

// theta maps output coordinates to input coordinates in F.affine_grid's normalised space (align_corners
// =False: -1 and 1 are the outer edges of the border pixels). Folding both normalisations into the matrix
// gives src_x = a00 * x + a01 * y + a02 in pixel units (pixel centres at integers); written so that the
// identity on equal sizes gives exactly 1, 0, 0 and the warp becomes an exact copy.
template <typename T>
struct PixelAffine {
  T a00, a01, a02, a10, a11, a12;
};

template <typename T>
C10_HOST_DEVICE inline PixelAffine<T> pixel_affine(const T* t, const Geometry& g) {
  const T iw = static_cast<T>(g.in_w), ih = static_cast<T>(g.in_h);
  const T ow = static_cast<T>(g.out_w), oh = static_cast<T>(g.out_h);
  PixelAffine<T> m;
  m.a00 = t[0] * iw / ow;
  m.a01 = t[1] * iw / oh;
  m.a02 = T(0.5) * (m.a00 + m.a01) + T(0.5) * iw * (t[2] + T(1) - t[0] - t[1]) - T(0.5);
  m.a10 = t[3] * ih / ow;
  m.a11 = t[4] * ih / oh;
  m.a12 = T(0.5) * (m.a10 + m.a11) + T(0.5) * ih * (t[5] + T(1) - t[3] - t[4]) - T(0.5);
  return m;
}

template <typename T>
C10_HOST_DEVICE inline T floor_of(T x) {
#ifdef __CUDA_ARCH__
  return floor(x);
#else
  return std::floor(x);
#endif
}

// Output pixel (ox, oy) of one sample: in_n and out_px point at the sample's input and the pixel's first
// output channel. acc_t is the arithmetic (and output) type: float, or double for float64 input.
template <typename in_t, typename acc_t>
C10_HOST_DEVICE inline void warp_pixel(const in_t* in_n, const PixelAffine<acc_t>& m, int64_t ox, int64_t oy,
                                       const acc_t* mean, const acc_t* std, acc_t* out_px,
                                       const Geometry& g) {
  const acc_t x = static_cast<acc_t>(ox), y = static_cast<acc_t>(oy);
  const acc_t sx = m.a00 * x + m.a01 * y + m.a02;
  const acc_t sy = m.a10 * x + m.a11 * y + m.a12;
  const acc_t fx0 = floor_of(sx), fy0 = floor_of(sy);
  // Far-away coordinates (huge zoom-outs, inf, NaN: every comparison with NaN is false) must not reach
  // the int64 conversion; every tap of such a pixel lies outside the image.
  const bool near = fx0 > acc_t(-2) && fy0 > acc_t(-2) && fx0 < static_cast<acc_t>(g.in_w) &&
                    fy0 < static_cast<acc_t>(g.in_h);
  if (!near) {
    for (int64_t c = 0; c < g.channels; ++c) out_px[c * g.out_sc] = (acc_t(0) - mean[c]) / std[c];
    return;
  }
  const acc_t wx1 = sx - fx0, wy1 = sy - fy0;
  const acc_t wx0 = acc_t(1) - wx1, wy0 = acc_t(1) - wy1;
  const int64_t x0 = static_cast<int64_t>(fx0), y0 = static_cast<int64_t>(fy0);
  const int64_t x1 = x0 + 1, y1 = y0 + 1;
  const bool vx0 = x0 >= 0 && x0 < g.in_w, vx1 = x1 >= 0 && x1 < g.in_w;
  const bool vy0 = y0 >= 0 && y0 < g.in_h, vy1 = y1 >= 0 && y1 < g.in_h;
  const acc_t w_nw = (vx0 && vy0) ? wx0 * wy0 : acc_t(0);
  const acc_t w_ne = (vx1 && vy0) ? wx1 * wy0 : acc_t(0);
  const acc_t w_sw = (vx0 && vy1) ? wx0 * wy1 : acc_t(0);
  const acc_t w_se = (vx1 && vy1) ? wx1 * wy1 : acc_t(0);
  // Clamped offsets keep every load in bounds; a tap outside the image has weight 0.
  const int64_t cx0 = x0 < 0 ? 0 : (x0 >= g.in_w ? g.in_w - 1 : x0);
  const int64_t cx1 = x1 < 0 ? 0 : (x1 >= g.in_w ? g.in_w - 1 : x1);
  const int64_t cy0 = y0 < 0 ? 0 : (y0 >= g.in_h ? g.in_h - 1 : y0);
  const int64_t cy1 = y1 < 0 ? 0 : (y1 >= g.in_h ? g.in_h - 1 : y1);
  const int64_t o_nw = cy0 * g.in_sh + cx0 * g.in_sw, o_ne = cy0 * g.in_sh + cx1 * g.in_sw;
  const int64_t o_sw = cy1 * g.in_sh + cx0 * g.in_sw, o_se = cy1 * g.in_sh + cx1 * g.in_sw;
  for (int64_t c = 0; c < g.channels; ++c) {
    const in_t* plane = in_n + c * g.in_sc;
    const acc_t v = static_cast<acc_t>(plane[o_nw]) * w_nw + static_cast<acc_t>(plane[o_ne]) * w_ne +
                    static_cast<acc_t>(plane[o_sw]) * w_sw + static_cast<acc_t>(plane[o_se]) * w_se;
    out_px[c * g.out_sc] = (v - mean[c]) / std[c];
  }
}

// The checked, dense operands of one call and its output (float32, or float64 for float64 input), in
// the input's memory format.
struct Buffers {
  at::Tensor input, theta, mean, std, output;
  Geometry geometry;
};

// dtype_ok / dtypes_text: the input dtypes the calling device supports, for the error message.
template <typename DtypeOk>
Buffers prepare(const at::Tensor& input, const at::Tensor& theta, const at::Tensor& mean,
                const at::Tensor& std, at::IntArrayRef out_size, DtypeOk dtype_ok, const char* dtypes_text) {
  check_dim(input, 4, "input", "N, C, H, W");
  const auto in_dtype = input.scalar_type();
  TORCH_CHECK(dtype_ok(in_dtype), "fastcnn: input must be ", dtypes_text, ", got ", in_dtype);
  check_positive_pair(out_size, "out_size");
  const int64_t batch = input.size(0), channels = input.size(1);
  TORCH_CHECK(batch > 0, "fastcnn: input has an empty batch (shape ", input.sizes(), ")");
  TORCH_CHECK(channels > 0 && input.size(2) > 0 && input.size(3) > 0,
              "fastcnn: input must have non-zero channels and spatial size, got shape ", input.sizes());
  TORCH_CHECK(theta.device() == input.device(), "fastcnn: theta is on ", theta.device(), " but input is on ",
              input.device());
  TORCH_CHECK(theta.is_floating_point(), "fastcnn: theta must be a floating tensor, got ",
              theta.scalar_type());
  TORCH_CHECK(theta.dim() == 3 && theta.size(0) == batch && theta.size(1) == 2 && theta.size(2) == 3,
              "fastcnn: theta must have shape [", batch, ", 2, 3], got ", theta.sizes());
  for (const auto& [t, name] : {std::pair{&mean, "mean"}, std::pair{&std, "std"}}) {
    TORCH_CHECK(t->device() == input.device(), "fastcnn: ", name, " is on ", t->device(), " but input is on ",
                input.device());
    TORCH_CHECK(t->is_floating_point(), "fastcnn: ", name, " must be a floating tensor, got ",
                t->scalar_type());
    TORCH_CHECK(t->dim() == 1 && t->size(0) == channels, "fastcnn: ", name, " must have shape [", channels,
                "] (one value per channel), got ", t->sizes());
  }
  const auto out_dtype = in_dtype == at::kDouble ? at::kDouble : at::kFloat;
  const auto fmt = output_memory_format(input);
  Buffers b;
  b.input = input.contiguous(fmt);
  b.theta = theta.to(out_dtype).contiguous();
  b.mean = mean.to(out_dtype).contiguous();
  b.std = std.to(out_dtype).contiguous();
  b.output = at::empty({batch, channels, out_size[0], out_size[1]}, input.options().dtype(out_dtype), fmt);
  const at::Tensor& x = b.input;
  const at::Tensor& out = b.output;
  b.geometry = Geometry{batch,         channels,      input.size(2), input.size(3), out_size[0],
                        out_size[1],   x.stride(0),   x.stride(1),   x.stride(2),   x.stride(3),
                        out.stride(0), out.stride(1), out.stride(2), out.stride(3)};
  return b;
}

}  // namespace augment
}  // namespace fastcnn
