// CPU kernel of augment_affine: a batch of images warped by one 2x3 affine matrix per sample, with
// bilinear sampling (zero outside the image, align_corners=False, as F.grid_sample) and per-channel
// normalisation (x - mean) / std in the same pass. Algorithm: each sample's normalised-coordinate theta
// is turned once into a pixel-space map (src = A * [x, y, 1]); OpenMP threads split the (sample, output
// row) pairs; each output pixel computes its four taps and weights once and applies them to all channels
// (common/augment_affine.h, shared with the CUDA kernel).
// Layout: NCHW or channels_last (the output follows the input), uint8/float32/float64 input; the output
// is float32 (float64 for float64 input). Measured: benchmarks/NOTES.md (augment_affine, 2026-11-25).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "common/augment_affine.h"

namespace fastcnn {
namespace {

template <typename in_t, typename acc_t>
void augment_affine_kernel(const in_t* in, const acc_t* theta, const acc_t* mean, const acc_t* std,
                           acc_t* out, const augment::Geometry& g) {
  at::parallel_for(0, g.batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / g.out_h, oy = row % g.out_h;
      const augment::PixelAffine<acc_t> m = augment::pixel_affine<acc_t>(theta + n * 6, g);
      acc_t* out_row = out + n * g.out_sn + oy * g.out_sh;
      for (int64_t ox = 0; ox < g.out_w; ++ox) {
        augment::warp_pixel<in_t, acc_t>(in + n * g.in_sn, m, ox, oy, mean, std, out_row + ox * g.out_sw, g);
      }
    }
  });
}

at::Tensor augment_affine_cpu(const at::Tensor& input, const at::Tensor& theta, const at::Tensor& mean,
                              const at::Tensor& std, at::IntArrayRef out_size) {
  const auto in_dtype = input.scalar_type();
  augment::Buffers b = augment::prepare(
      input, theta, mean, std, out_size,
      [](at::ScalarType t) { return t == at::kByte || t == at::kFloat || t == at::kDouble; },
      "uint8, float32 or float64 on the CPU");
  // The output type doubles as the arithmetic type: float for uint8/float32 input, double for float64.
  auto run = [&](auto in_tag, auto acc_tag) {
    using in_t = decltype(in_tag);
    using acc_t = decltype(acc_tag);
    augment_affine_kernel<in_t, acc_t>(b.input.const_data_ptr<in_t>(), b.theta.const_data_ptr<acc_t>(),
                                       b.mean.const_data_ptr<acc_t>(), b.std.const_data_ptr<acc_t>(),
                                       b.output.mutable_data_ptr<acc_t>(), b.geometry);
  };
  if (in_dtype == at::kByte) {
    run(uint8_t{}, float{});
  } else if (in_dtype == at::kFloat) {
    run(float{}, float{});
  } else {
    run(double{}, double{});
  }
  return b.output;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, CPU, m) {
  m.impl("augment_affine", &augment_affine_cpu);
}

}  // namespace fastcnn
