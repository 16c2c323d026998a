// CPU kernel of augment_affine: a batch of images warped by one 2x3 affine matrix per sample, with
// bilinear sampling (zero outside the image, align_corners=False, as F.grid_sample) and per-channel
// normalisation (x - mean) / std in the same pass. Algorithm: each sample's normalised-coordinate theta
// is turned once into a pixel-space map (src = A * [x, y, 1]); OpenMP threads split the (sample, output
// row) pairs; each output pixel computes its four taps and weights once and applies them to all channels.
// Layout: NCHW or channels_last (the output follows the input), uint8/float32/float64 input; the output
// is float32 (float64 for float64 input). Measured (benchmarks/bench_augment.py, 2 shared cores, with the
// per-batch parameter sampling): 256 x 3 x 64x64 uint8 -> 56x56 float32 at ~9,500 images/s, 32x32 -> 32x32
// at ~21,000 images/s (torchvision.transforms.v2 per image: ~150-190 images/s).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>

#include "common/checks.h"

namespace fastcnn {
namespace {

// theta maps output coordinates to input coordinates in F.affine_grid's normalised space (align_corners
// =False: -1 and 1 are the outer edges of the border pixels). Folding both normalisations into the matrix
// gives src_x = a00 * x + a01 * y + a02 in pixel units (pixel centres at integers); written so that the
// identity on equal sizes gives exactly 1, 0, 0 and the warp becomes an exact copy.
template <typename T>
struct PixelAffine {
  T a00, a01, a02, a10, a11, a12;
};

template <typename T>
PixelAffine<T> pixel_affine(const T* t, int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w) {
  const T iw = static_cast<T>(in_w), ih = static_cast<T>(in_h);
  const T ow = static_cast<T>(out_w), oh = static_cast<T>(out_h);
  PixelAffine<T> m;
  m.a00 = t[0] * iw / ow;
  m.a01 = t[1] * iw / oh;
  m.a02 = T(0.5) * (m.a00 + m.a01) + T(0.5) * iw * (t[2] + T(1) - t[0] - t[1]) - T(0.5);
  m.a10 = t[3] * ih / ow;
  m.a11 = t[4] * ih / oh;
  m.a12 = T(0.5) * (m.a10 + m.a11) + T(0.5) * ih * (t[5] + T(1) - t[3] - t[4]) - T(0.5);
  return m;
}

struct Geometry {
  int64_t batch, channels, in_h, in_w, out_h, out_w;
  // Element strides of the dense input and output (NCHW or channels_last).
  int64_t in_sn, in_sc, in_sh, in_sw, out_sn, out_sc, out_sh, out_sw;
};

template <typename scalar_t, typename out_t>
void augment_affine_kernel(const scalar_t* in, const out_t* theta, const out_t* mean, const out_t* std, out_t* out,
                           const Geometry& g) {
  at::parallel_for(0, g.batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.out_h;
      const int64_t oy = row % g.out_h;
      const PixelAffine<out_t> m = pixel_affine<out_t>(theta + n * 6, g.in_h, g.in_w, g.out_h, g.out_w);
      const scalar_t* in_n = in + n * g.in_sn;
      out_t* out_row = out + n * g.out_sn + oy * g.out_sh;
      const out_t y = static_cast<out_t>(oy);
      for (int64_t ox = 0; ox < g.out_w; ++ox) {
        const out_t x = static_cast<out_t>(ox);
        const out_t sx = m.a00 * x + m.a01 * y + m.a02;
        const out_t sy = m.a10 * x + m.a11 * y + m.a12;
        const out_t fx0 = std::floor(sx), fy0 = std::floor(sy);
        const out_t wx1 = sx - fx0, wy1 = sy - fy0;
        const out_t wx0 = out_t(1) - wx1, wy0 = out_t(1) - wy1;
        // Far-away coordinates (huge zoom-outs, NaN) must not overflow the int64 conversion.
        const bool finite = std::isfinite(sx) && std::isfinite(sy) && fx0 > out_t(-2) && fy0 > out_t(-2) &&
                            fx0 < static_cast<out_t>(g.in_w) && fy0 < static_cast<out_t>(g.in_h);
        out_t* out_px = out_row + ox * g.out_sw;
        if (!finite) {
          for (int64_t c = 0; c < g.channels; ++c) out_px[c * g.out_sc] = (out_t(0) - mean[c]) / std[c];
          continue;
        }
        const int64_t x0 = static_cast<int64_t>(fx0), y0 = static_cast<int64_t>(fy0);
        const int64_t x1 = x0 + 1, y1 = y0 + 1;
        const bool vx0 = x0 >= 0 && x0 < g.in_w, vx1 = x1 >= 0 && x1 < g.in_w;
        const bool vy0 = y0 >= 0 && y0 < g.in_h, vy1 = y1 >= 0 && y1 < g.in_h;
        // Same tap weights and summation order as F.grid_sample, so float64 results agree to rounding.
        const out_t w_nw = (vx0 && vy0) ? wx0 * wy0 : out_t(0);
        const out_t w_ne = (vx1 && vy0) ? wx1 * wy0 : out_t(0);
        const out_t w_sw = (vx0 && vy1) ? wx0 * wy1 : out_t(0);
        const out_t w_se = (vx1 && vy1) ? wx1 * wy1 : out_t(0);
        // Clamped offsets keep every load in bounds; a tap outside the image has weight 0.
        const int64_t cx0 = x0 < 0 ? 0 : (x0 >= g.in_w ? g.in_w - 1 : x0);
        const int64_t cx1 = x1 < 0 ? 0 : (x1 >= g.in_w ? g.in_w - 1 : x1);
        const int64_t cy0 = y0 < 0 ? 0 : (y0 >= g.in_h ? g.in_h - 1 : y0);
        const int64_t cy1 = y1 < 0 ? 0 : (y1 >= g.in_h ? g.in_h - 1 : y1);
        const int64_t o_nw = cy0 * g.in_sh + cx0 * g.in_sw, o_ne = cy0 * g.in_sh + cx1 * g.in_sw;
        const int64_t o_sw = cy1 * g.in_sh + cx0 * g.in_sw, o_se = cy1 * g.in_sh + cx1 * g.in_sw;
        for (int64_t c = 0; c < g.channels; ++c) {
          const scalar_t* plane = in_n + c * g.in_sc;
          const out_t v = static_cast<out_t>(plane[o_nw]) * w_nw + static_cast<out_t>(plane[o_ne]) * w_ne +
                          static_cast<out_t>(plane[o_sw]) * w_sw + static_cast<out_t>(plane[o_se]) * w_se;
          out_px[c * g.out_sc] = (v - mean[c]) / std[c];
        }
      }
    }
  });
}

at::Tensor augment_affine_cpu(const at::Tensor& input, const at::Tensor& theta, const at::Tensor& mean,
                              const at::Tensor& std, at::IntArrayRef out_size) {
  check_dim(input, 4, "input", "N, C, H, W");
  const auto in_dtype = input.scalar_type();
  TORCH_CHECK(in_dtype == at::kByte || in_dtype == at::kFloat || in_dtype == at::kDouble,
              "fastcnn: input must be uint8, float32 or float64 on the CPU, got ", in_dtype);
  check_positive_pair(out_size, "out_size");
  const int64_t batch = input.size(0), channels = input.size(1);
  TORCH_CHECK(batch > 0, "fastcnn: input has an empty batch (shape ", input.sizes(), ")");
  TORCH_CHECK(channels > 0 && input.size(2) > 0 && input.size(3) > 0,
              "fastcnn: input must have non-zero channels and spatial size, got shape ", input.sizes());
  TORCH_CHECK(theta.device() == input.device(), "fastcnn: theta is on ", theta.device(), " but input is on ",
              input.device());
  TORCH_CHECK(theta.is_floating_point(), "fastcnn: theta must be a floating tensor, got ", theta.scalar_type());
  TORCH_CHECK(theta.dim() == 3 && theta.size(0) == batch && theta.size(1) == 2 && theta.size(2) == 3,
              "fastcnn: theta must have shape [", batch, ", 2, 3], got ", theta.sizes());
  for (const auto& [t, name] : {std::pair{&mean, "mean"}, std::pair{&std, "std"}}) {
    TORCH_CHECK(t->device() == input.device(), "fastcnn: ", name, " is on ", t->device(), " but input is on ",
                input.device());
    TORCH_CHECK(t->is_floating_point(), "fastcnn: ", name, " must be a floating tensor, got ", t->scalar_type());
    TORCH_CHECK(t->dim() == 1 && t->size(0) == channels, "fastcnn: ", name, " must have shape [", channels,
                "] (one value per channel), got ", t->sizes());
  }

  const auto out_dtype = in_dtype == at::kDouble ? at::kDouble : at::kFloat;
  const auto fmt = output_memory_format(input);
  const at::Tensor x = input.contiguous(fmt);
  const at::Tensor theta_d = theta.to(out_dtype).contiguous();
  const at::Tensor mean_d = mean.to(out_dtype).contiguous();
  const at::Tensor std_d = std.to(out_dtype).contiguous();
  at::Tensor out = at::empty({batch, channels, out_size[0], out_size[1]}, input.options().dtype(out_dtype),
                             fmt);

  const Geometry g{batch,       channels,    input.size(2), input.size(3), out_size[0],   out_size[1],
                   x.stride(0), x.stride(1), x.stride(2),   x.stride(3),   out.stride(0), out.stride(1),
                   out.stride(2), out.stride(3)};
  // The output type doubles as the arithmetic type: float for uint8/float32 input, double for float64.
  auto run = [&](auto in_tag, auto out_tag) {
    using in_t = decltype(in_tag);
    using out_t = decltype(out_tag);
    augment_affine_kernel<in_t, out_t>(x.const_data_ptr<in_t>(), theta_d.const_data_ptr<out_t>(),
                                       mean_d.const_data_ptr<out_t>(), std_d.const_data_ptr<out_t>(),
                                       out.mutable_data_ptr<out_t>(), g);
  };
  if (in_dtype == at::kByte) {
    run(uint8_t{}, float{});
  } else if (in_dtype == at::kFloat) {
    run(float{}, float{});
  } else {
    run(double{}, double{});
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, CPU, m) { m.impl("augment_affine", &augment_affine_cpu); }

}  // namespace fastcnn
