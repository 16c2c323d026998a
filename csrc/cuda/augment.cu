// CUDA kernel of augment_affine: a batch of images warped by one 2x3 affine matrix per sample, with
// bilinear sampling (zero outside the image, align_corners=False, as F.grid_sample) and per-channel
// normalisation (x - mean) / std in the same pass. Algorithm: one thread per output pixel (n, y, x)
// over a grid-stride loop; the thread turns its sample's normalised-coordinate theta into a pixel-space
// map, computes the four taps and weights once and loops over all channels. Consecutive threads take
// consecutive x, so NCHW writes coalesce per channel and channels_last writes are contiguous per thread.
// Layout: NCHW or channels_last (the output follows the input); uint8, float32, float64, float16 or
// bfloat16 input; float32 output (float64 for float64 input), fp32 arithmetic for the narrow types.
// Measured: not yet measured (compiled for sm_90, never run on a GPU).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "common/checks.h"
#include "cuda/common/launch.cuh"

namespace fastcnn {
namespace {

struct Geometry {
  int64_t batch, channels, in_h, in_w, out_h, out_w;
  // Element strides of the dense input and output (NCHW or channels_last).
  int64_t in_sn, in_sc, in_sh, in_sw, out_sn, out_sc, out_sh, out_sw;
};

// Same folding of the two normalisations as the CPU kernel (csrc/cpu/augment.cpp), so both devices
// sample identical pixel coordinates; the identity on equal sizes gives exactly 1, 0, 0.
template <typename T>
__device__ __forceinline__ void pixel_affine(const T* t, const Geometry& g, T* a) {
  const T iw = static_cast<T>(g.in_w), ih = static_cast<T>(g.in_h);
  const T ow = static_cast<T>(g.out_w), oh = static_cast<T>(g.out_h);
  a[0] = t[0] * iw / ow;
  a[1] = t[1] * iw / oh;
  a[2] = T(0.5) * (a[0] + a[1]) + T(0.5) * iw * (t[2] + T(1) - t[0] - t[1]) - T(0.5);
  a[3] = t[3] * ih / ow;
  a[4] = t[4] * ih / oh;
  a[5] = T(0.5) * (a[3] + a[4]) + T(0.5) * ih * (t[5] + T(1) - t[3] - t[4]) - T(0.5);
}

template <typename in_t, typename acc_t>
__global__ void augment_affine_kernel(const in_t* __restrict__ in, const acc_t* __restrict__ theta,
                                      const acc_t* __restrict__ mean, const acc_t* __restrict__ std,
                                      acc_t* __restrict__ out, const Geometry g) {
  const int64_t total = g.batch * g.out_h * g.out_w;
  const int64_t step = cuda::grid_thread_count();
  for (int64_t idx = cuda::global_thread_index(); idx < total; idx += step) {
    const int64_t ox = idx % g.out_w;
    const int64_t oy = (idx / g.out_w) % g.out_h;
    const int64_t n = idx / (g.out_w * g.out_h);
    acc_t a[6];
    pixel_affine<acc_t>(theta + n * 6, g, a);
    const acc_t x = static_cast<acc_t>(ox), y = static_cast<acc_t>(oy);
    const acc_t sx = a[0] * x + a[1] * y + a[2];
    const acc_t sy = a[3] * x + a[4] * y + a[5];
    const acc_t fx0 = floor(sx), fy0 = floor(sy);
    acc_t* out_px = out + n * g.out_sn + oy * g.out_sh + ox * g.out_sw;
    // Far-away coordinates (huge zoom-outs, NaN) must not overflow the int64 conversion.
    const bool near = fx0 > acc_t(-2) && fy0 > acc_t(-2) && fx0 < static_cast<acc_t>(g.in_w) &&
                      fy0 < static_cast<acc_t>(g.in_h);
    if (!near) {
      for (int64_t c = 0; c < g.channels; ++c) out_px[c * g.out_sc] = (acc_t(0) - mean[c]) / std[c];
      continue;
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
    const int64_t cx0 = min(max(x0, int64_t(0)), g.in_w - 1), cx1 = min(max(x1, int64_t(0)), g.in_w - 1);
    const int64_t cy0 = min(max(y0, int64_t(0)), g.in_h - 1), cy1 = min(max(y1, int64_t(0)), g.in_h - 1);
    const int64_t o_nw = cy0 * g.in_sh + cx0 * g.in_sw, o_ne = cy0 * g.in_sh + cx1 * g.in_sw;
    const int64_t o_sw = cy1 * g.in_sh + cx0 * g.in_sw, o_se = cy1 * g.in_sh + cx1 * g.in_sw;
    const in_t* in_n = in + n * g.in_sn;
    for (int64_t c = 0; c < g.channels; ++c) {
      const in_t* plane = in_n + c * g.in_sc;
      const acc_t v = static_cast<acc_t>(plane[o_nw]) * w_nw + static_cast<acc_t>(plane[o_ne]) * w_ne +
                      static_cast<acc_t>(plane[o_sw]) * w_sw + static_cast<acc_t>(plane[o_se]) * w_se;
      out_px[c * g.out_sc] = (v - mean[c]) / std[c];
    }
  }
}

at::Tensor augment_affine_cuda(const at::Tensor& input, const at::Tensor& theta, const at::Tensor& mean,
                               const at::Tensor& std, at::IntArrayRef out_size) {
  check_dim(input, 4, "input", "N, C, H, W");
  const auto in_dtype = input.scalar_type();
  TORCH_CHECK(in_dtype == at::kByte || in_dtype == at::kFloat || in_dtype == at::kDouble || in_dtype == at::kHalf ||
                  in_dtype == at::kBFloat16,
              "fastcnn: input must be uint8, float32, float64, float16 or bfloat16, got ", in_dtype);
  check_positive_pair(out_size, "out_size");
  const int64_t batch = input.size(0), channels = input.size(1);
  TORCH_CHECK(batch > 0, "fastcnn: input has an empty batch (shape ", input.sizes(), ")");
  TORCH_CHECK(channels > 0 && input.size(2) > 0 && input.size(3) > 0,
              "fastcnn: input must have non-zero channels and spatial size, got shape ", input.sizes());
  cuda::check_cuda_tensor(input, "input");
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

  const c10::cuda::CUDAGuard guard(input.device());
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

  const unsigned blocks = cuda::grid_for(batch * out_size[0] * out_size[1]);
  const cudaStream_t stream = cuda::current_stream();
  auto launch = [&](auto in_tag, auto acc_tag) {
    using in_t = decltype(in_tag);
    using acc_t = decltype(acc_tag);
    augment_affine_kernel<in_t, acc_t><<<blocks, cuda::kBlockThreads, 0, stream>>>(
        x.const_data_ptr<in_t>(), theta_d.const_data_ptr<acc_t>(), mean_d.const_data_ptr<acc_t>(),
        std_d.const_data_ptr<acc_t>(), out.mutable_data_ptr<acc_t>(), g);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  switch (in_dtype) {
    case at::kByte: launch(uint8_t{}, float{}); break;
    case at::kFloat: launch(float{}, float{}); break;
    case at::kDouble: launch(double{}, double{}); break;
    case at::kHalf: launch(c10::Half{}, float{}); break;
    default: launch(c10::BFloat16{}, float{}); break;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, CUDA, m) { m.impl("augment_affine", &augment_affine_cuda); }

}  // namespace fastcnn
