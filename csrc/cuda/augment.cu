// CUDA kernel of augment_affine: a batch of images warped by one 2x3 affine matrix per sample, with
// bilinear sampling (zero outside the image, align_corners=False, as F.grid_sample) and per-channel
// normalisation (x - mean) / std in the same pass. Algorithm: one thread per output pixel (n, y, x)
// over a grid-stride loop; the thread turns its sample's normalised-coordinate theta into a pixel-space
// map, computes the four taps and weights once and loops over all channels (common/augment_affine.h,
// shared with the CPU kernel). Consecutive threads take
// consecutive x, so NCHW writes coalesce per channel and channels_last writes are contiguous per thread.
// Layout: NCHW or channels_last (the output follows the input); uint8, float32, float64, float16 or
// bfloat16 input; float32 output (float64 for float64 input), fp32 arithmetic for the narrow types.
// Measured: not yet measured (compiled for sm_90, never run on a GPU).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "common/augment_affine.h"
#include "cuda/common/launch.cuh"

namespace fastcnn {
namespace {

template <typename in_t, typename acc_t>
__global__ void augment_affine_kernel(const in_t* __restrict__ in, const acc_t* __restrict__ theta,
                                      const acc_t* __restrict__ mean, const acc_t* __restrict__ std,
                                      acc_t* __restrict__ out, const augment::Geometry g) {
  const int64_t total = g.batch * g.out_h * g.out_w;
  const int64_t step = cuda::grid_thread_count();
  for (int64_t idx = cuda::global_thread_index(); idx < total; idx += step) {
    const int64_t ox = idx % g.out_w;
    const int64_t oy = (idx / g.out_w) % g.out_h;
    const int64_t n = idx / (g.out_w * g.out_h);
    const augment::PixelAffine<acc_t> m = augment::pixel_affine<acc_t>(theta + n * 6, g);
    augment::warp_pixel<in_t, acc_t>(in + n * g.in_sn, m, ox, oy, mean, std,
                                     out + n * g.out_sn + oy * g.out_sh + ox * g.out_sw, g);
  }
}

at::Tensor augment_affine_cuda(const at::Tensor& input, const at::Tensor& theta, const at::Tensor& mean,
                               const at::Tensor& std, at::IntArrayRef out_size) {
  const auto in_dtype = input.scalar_type();
  cuda::check_cuda_tensor(input, "input");
  const c10::cuda::CUDAGuard guard(input.device());
  augment::Buffers b = augment::prepare(
      input, theta, mean, std, out_size,
      [](at::ScalarType t) {
        return t == at::kByte || t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
      },
      "uint8, float32, float64, float16 or bfloat16");
  const augment::Geometry& g = b.geometry;
  const unsigned blocks = cuda::grid_for(g.batch * g.out_h * g.out_w);
  const cudaStream_t stream = cuda::current_stream();
  auto launch = [&](auto in_tag, auto acc_tag) {
    using in_t = decltype(in_tag);
    using acc_t = decltype(acc_tag);
    cuda::launch_kernel<augment_affine_kernel<in_t, acc_t>>(
        blocks, cuda::kBlockThreads, 0, stream, b.input.const_data_ptr<in_t>(),
        b.theta.const_data_ptr<acc_t>(), b.mean.const_data_ptr<acc_t>(), b.std.const_data_ptr<acc_t>(),
        b.output.mutable_data_ptr<acc_t>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  switch (in_dtype) {
    case at::kByte:
      launch(uint8_t{}, float{});
      break;
    case at::kFloat:
      launch(float{}, float{});
      break;
    case at::kDouble:
      launch(double{}, double{});
      break;
    case at::kHalf:
      launch(c10::Half{}, float{});
      break;
    default:
      launch(c10::BFloat16{}, float{});
      break;
  }
  return b.output;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, FASTCNN_CUDA_DISPATCH_KEY, m) {
  m.impl("augment_affine", &augment_affine_cuda);
}

}  // namespace fastcnn
