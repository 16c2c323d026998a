// CUDA layer normalisation (F.layer_norm over trailing dims, and the channels-first LayerNorm2d of ConvNeXt)
// and its backward.
// Algorithm: the input is viewed as [outer][C][inner] (common/layer_norm.h), one group per (outer, inner)
// normalised over its C values. Rows (inner = 1): a warp per row, lanes striding the row (coalesced),
// Welford moments of x - x[0] per lane merged down the warp in a fixed order and broadcast from lane 0.
// Planes (inner > 1, NCHW LayerNorm2d): a thread per pixel walking the C planes (coalesced across the
// warp's neighbouring pixels), two passes. Backward: per group the sums of g * w and g * w * xhat in the
// same thread/warp arrangement, then grad_input; grad_weight / grad_bias are per-channel sums over all
// groups through cuda/common/channel_reduce.cuh (fixed-order merges). half/bfloat16 compute in fp32.
// Layout: contiguous, or channels_last for LayerNorm2d. Measured: not yet measured on a GPU.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "common/layer_norm.h"
#include "common/moments.h"
#include "cuda/common/channel_reduce.cuh"
#include "cuda/common/launch.cuh"

namespace fastcnn {
namespace {

using cuda::kWarpSize;
using cuda::launch_kernel;
using namespace cuda::channel_reduce;  // NOLINT: the reduction skeleton of the weight gradients

constexpr unsigned kFullMask = 0xffffffffu;

// Lane 0's merge of the warp's moments, in a fixed order, handed to every lane.
template <typename acc_t>
__device__ __forceinline__ stats::Moments<acc_t> warp_moments(stats::Moments<acc_t> m) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const stats::Moments<acc_t> other{__shfl_down_sync(kFullMask, m.count, offset),
                                      __shfl_down_sync(kFullMask, m.mean, offset),
                                      __shfl_down_sync(kFullMask, m.m2, offset)};
    m = stats::merge(m, other);
  }
  return {__shfl_sync(kFullMask, m.count, 0), __shfl_sync(kFullMask, m.mean, 0),
          __shfl_sync(kFullMask, m.m2, 0)};
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_down_sync(kFullMask, v, offset);
  return __shfl_sync(kFullMask, v, 0);
}

template <typename acc_t>
__device__ __forceinline__ acc_t weight_at(const acc_t* w, int64_t c) {
  return w != nullptr ? w[c] : acc_t(1);
}

// ---- forward --------------------------------------------------------------------------------------------

template <typename T, typename acc_t>
__global__ void row_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t channels,
                                   double eps, const acc_t* __restrict__ weight,
                                   const acc_t* __restrict__ bias, acc_t* __restrict__ mean_out,
                                   acc_t* __restrict__ rstd_out) {
  const int lane = threadIdx.x % kWarpSize;
  for (int64_t r = cuda::global_warp_index(); r < rows; r += cuda::grid_warp_count()) {
    const T* xr = x + r * channels;
    // Moments of x - x[0]: an fp32 running mean near a large |mean| would round away the variance.
    const acc_t shift = static_cast<acc_t>(xr[0]);
    stats::Moments<acc_t> m{0, acc_t(0), acc_t(0)};
    for (int64_t c = lane; c < channels; c += kWarpSize)
      stats::welford_add(m, static_cast<acc_t>(xr[c]) - shift);
    m = warp_moments(m);
    const acc_t mean = shift + m.mean;
    const acc_t rstd = stats::inverse_std(m.m2 / static_cast<acc_t>(channels), eps);
    if (lane == 0) {
      mean_out[r] = mean;
      rstd_out[r] = rstd;
    }
    T* yr = y + r * channels;
    for (int64_t c = lane; c < channels; c += kWarpSize) {
      const acc_t xhat = (static_cast<acc_t>(xr[c]) - mean) * rstd;
      yr[c] = static_cast<T>(xhat * weight_at(weight, c) + (bias != nullptr ? bias[c] : acc_t(0)));
    }
  }
}

template <typename T, typename acc_t>
__global__ void plane_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t outer,
                                     int64_t channels, int64_t inner, double eps,
                                     const acc_t* __restrict__ weight, const acc_t* __restrict__ bias,
                                     acc_t* __restrict__ mean_out, acc_t* __restrict__ rstd_out) {
  for (int64_t group = cuda::global_thread_index(); group < outer * inner;
       group += cuda::grid_thread_count()) {
    const int64_t base = (group / inner) * channels * inner + group % inner;
    acc_t sum = 0;
    for (int64_t c = 0; c < channels; ++c) sum += static_cast<acc_t>(x[base + c * inner]);
    const acc_t mean = sum / static_cast<acc_t>(channels);
    acc_t m2 = 0;
    for (int64_t c = 0; c < channels; ++c) {
      const acc_t d = static_cast<acc_t>(x[base + c * inner]) - mean;
      m2 += d * d;
    }
    const acc_t rstd = stats::inverse_std(m2 / static_cast<acc_t>(channels), eps);
    mean_out[group] = mean;
    rstd_out[group] = rstd;
    for (int64_t c = 0; c < channels; ++c) {
      const acc_t xhat = (static_cast<acc_t>(x[base + c * inner]) - mean) * rstd;
      y[base + c * inner] =
          static_cast<T>(xhat * weight_at(weight, c) + (bias != nullptr ? bias[c] : acc_t(0)));
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_cuda(const at::Tensor& input, int64_t dim,
                                                               at::IntArrayRef normalized_shape,
                                                               const std::optional<at::Tensor>& weight,
                                                               const std::optional<at::Tensor>& bias,
                                                               double eps) {
  cuda::check_cuda_tensor(input, "input");
  const ln::Shape s =
      ln::check_layer_norm(input, dim, normalized_shape, weight, bias, eps, /*allow_reduced=*/true);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(s.format);
  at::Tensor y = at::empty_like(x, s.format);
  const at::ScalarType acc = ln::stats_dtype(input);
  at::Tensor mean = at::empty({s.groups()}, input.options().dtype(acc));
  at::Tensor rstd = at::empty({s.groups()}, input.options().dtype(acc));
  const at::Tensor w = norm::parameter_vector(weight, acc), b = norm::parameter_vector(bias, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastcnn_layer_norm_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (s.channels_inner()) {
      launch_kernel<row_forward_kernel<scalar_t, acc_t>>(
          dim3(cuda::grid_for(s.outer * kWarpSize)), dim3(cuda::kBlockThreads), 0, cuda::current_stream(),
          x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), s.outer, s.channels, eps,
          norm::data_or_null<acc_t>(w), norm::data_or_null<acc_t>(b), mean.mutable_data_ptr<acc_t>(),
          rstd.mutable_data_ptr<acc_t>());
    } else {
      launch_kernel<plane_forward_kernel<scalar_t, acc_t>>(
          dim3(cuda::grid_for(s.groups())), dim3(cuda::kBlockThreads), 0, cuda::current_stream(),
          x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), s.outer, s.channels, s.inner, eps,
          norm::data_or_null<acc_t>(w), norm::data_or_null<acc_t>(b), mean.mutable_data_ptr<acc_t>(),
          rstd.mutable_data_ptr<acc_t>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, mean, rstd};
}

// ---- backward -------------------------------------------------------------------------------------------

// grad_input = rstd * (g*w - mean(g*w) - xhat * mean(g*w*xhat)), the means over the group.
template <typename T, typename acc_t>
__global__ void row_backward_kernel(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ gx,
                                    int64_t rows, int64_t channels, const acc_t* __restrict__ weight,
                                    const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd) {
  const int lane = threadIdx.x % kWarpSize;
  const acc_t inv = acc_t(1) / static_cast<acc_t>(channels);
  for (int64_t r = cuda::global_warp_index(); r < rows; r += cuda::grid_warp_count()) {
    const int64_t base = r * channels;
    const acc_t m = mean[r], rs = rstd[r];
    acc_t sum_gw = 0, sum_gw_xhat = 0;
    for (int64_t c = lane; c < channels; c += kWarpSize) {
      const acc_t gw = static_cast<acc_t>(g[base + c]) * weight_at(weight, c);
      sum_gw += gw;
      sum_gw_xhat += gw * (static_cast<acc_t>(x[base + c]) - m) * rs;
    }
    sum_gw = warp_sum(sum_gw) * inv;
    sum_gw_xhat = warp_sum(sum_gw_xhat) * inv;
    for (int64_t c = lane; c < channels; c += kWarpSize) {
      const acc_t xhat = (static_cast<acc_t>(x[base + c]) - m) * rs;
      const acc_t gw = static_cast<acc_t>(g[base + c]) * weight_at(weight, c);
      gx[base + c] = static_cast<T>(rs * (gw - sum_gw - xhat * sum_gw_xhat));
    }
  }
}

template <typename T, typename acc_t>
__global__ void plane_backward_kernel(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ gx,
                                      int64_t outer, int64_t channels, int64_t inner,
                                      const acc_t* __restrict__ weight, const acc_t* __restrict__ mean,
                                      const acc_t* __restrict__ rstd) {
  const acc_t inv = acc_t(1) / static_cast<acc_t>(channels);
  for (int64_t group = cuda::global_thread_index(); group < outer * inner;
       group += cuda::grid_thread_count()) {
    const int64_t base = (group / inner) * channels * inner + group % inner;
    const acc_t m = mean[group], rs = rstd[group];
    acc_t sum_gw = 0, sum_gw_xhat = 0;
    for (int64_t c = 0; c < channels; ++c) {
      const acc_t gw = static_cast<acc_t>(g[base + c * inner]) * weight_at(weight, c);
      sum_gw += gw;
      sum_gw_xhat += gw * (static_cast<acc_t>(x[base + c * inner]) - m) * rs;
    }
    sum_gw *= inv;
    sum_gw_xhat *= inv;
    for (int64_t c = 0; c < channels; ++c) {
      const acc_t xhat = (static_cast<acc_t>(x[base + c * inner]) - m) * rs;
      const acc_t gw = static_cast<acc_t>(g[base + c * inner]) * weight_at(weight, c);
      gx[base + c * inner] = static_cast<T>(rs * (gw - sum_gw - xhat * sum_gw_xhat));
    }
  }
}

// Per channel: sum over every group of (g * xhat, g), split over blockIdx.y.
template <typename T, typename acc_t, bool kChannelsInner>
__global__ void __launch_bounds__(kThreads)
    affine_grad_partial_kernel(const T* __restrict__ g, const T* __restrict__ x,
                               const acc_t* __restrict__ mean, const acc_t* __restrict__ rstd,
                               ReduceGrid grid, SumPair<acc_t>* __restrict__ partials) {
  __shared__ SumPair<acc_t> states[kThreads];
  SumPair<acc_t> mine{acc_t(0), acc_t(0)};
  const int64_t c = thread_channel<kChannelsInner>(grid);
  if (c >= 0) {
    for_each_value<kChannelsInner>(grid, c, [&](int64_t i) {
      const int64_t group = kChannelsInner ? i / grid.channels
                                           : (i / (grid.channels * grid.inner)) * grid.inner + i % grid.inner;
      const acc_t gi = static_cast<acc_t>(g[i]);
      mine.first += gi * (static_cast<acc_t>(x[i]) - mean[group]) * rstd[group];
      mine.second += gi;
    });
  }
  store_block_partial<kChannelsInner>(states, mine, c, grid, partials,
                                      [](const auto& a, const auto& b) { return add_pairs(a, b); });
}

template <typename acc_t>
__global__ void affine_grad_kernel(const SumPair<acc_t>* __restrict__ partials, int64_t splits,
                                   int64_t channels, acc_t* __restrict__ grad_weight,
                                   acc_t* __restrict__ grad_bias) {
  for (int64_t c = cuda::global_thread_index(); c < channels; c += cuda::grid_thread_count()) {
    SumPair<acc_t> total{acc_t(0), acc_t(0)};
    for (int64_t p = 0; p < splits; ++p) total = add_pairs(total, partials[p * channels + c]);
    if (grad_weight != nullptr) grad_weight[c] = total.first;
    if (grad_bias != nullptr) grad_bias[c] = total.second;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, int64_t dim, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, const at::Tensor& mean, const at::Tensor& rstd,
    std::array<bool, 3> output_mask) {
  cuda::check_cuda_tensor(input, "input");
  const ln::Shape s =
      ln::check_layer_norm(input, dim, normalized_shape, weight, std::nullopt, 0.0, /*allow_reduced=*/true);
  ln::check_layer_norm_backward(grad_output, input, mean, rstd, s);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.contiguous(s.format);
  const at::Tensor g = grad_output.contiguous(s.format);
  const at::ScalarType acc = ln::stats_dtype(input);
  const at::Tensor w = norm::parameter_vector(weight, acc);
  const at::Tensor mean_c = mean.contiguous(), rstd_c = rstd.contiguous();
  at::Tensor grad_input = output_mask[0] ? at::empty_like(x, s.format) : input.new_empty({0});
  at::Tensor grad_weight = at::empty({output_mask[1] ? s.channels : 0}, mean.options());
  at::Tensor grad_bias = at::empty({output_mask[2] ? s.channels : 0}, mean.options());
  const cudaStream_t stream = cuda::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fastcnn_layer_norm_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* gp = g.const_data_ptr<scalar_t>();
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        const acc_t* mp = mean_c.const_data_ptr<acc_t>();
        const acc_t* rp = rstd_c.const_data_ptr<acc_t>();
        if (output_mask[0]) {
          scalar_t* gxp = grad_input.mutable_data_ptr<scalar_t>();
          if (s.channels_inner()) {
            launch_kernel<row_backward_kernel<scalar_t, acc_t>>(
                dim3(cuda::grid_for(s.outer * kWarpSize)), dim3(cuda::kBlockThreads), 0, stream, gp, xp, gxp,
                s.outer, s.channels, norm::data_or_null<acc_t>(w), mp, rp);
          } else {
            launch_kernel<plane_backward_kernel<scalar_t, acc_t>>(
                dim3(cuda::grid_for(s.groups())), dim3(cuda::kBlockThreads), 0, stream, gp, xp, gxp, s.outer,
                s.channels, s.inner, norm::data_or_null<acc_t>(w), mp, rp);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (!output_mask[1] && !output_mask[2]) return;
        const ReduceGrid rg = reduce_grid(s.outer, s.channels, s.inner);
        at::Tensor partials = partial_buffer<SumPair<acc_t>>(x, rg.splits * s.channels);
        auto* partial_ptr = reinterpret_cast<SumPair<acc_t>*>(partials.mutable_data_ptr());
        if (s.channels_inner()) {
          launch_kernel<affine_grad_partial_kernel<scalar_t, acc_t, true>>(
              reduce_blocks(rg, true), reduce_threads(true), 0, stream, gp, xp, mp, rp, rg, partial_ptr);
        } else {
          launch_kernel<affine_grad_partial_kernel<scalar_t, acc_t, false>>(
              reduce_blocks(rg, false), reduce_threads(false), 0, stream, gp, xp, mp, rp, rg, partial_ptr);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        launch_kernel<affine_grad_kernel<acc_t>>(
            dim3(cuda::grid_for(s.channels)), dim3(cuda::kBlockThreads), 0, stream, partial_ptr, rg.splits,
            s.channels, output_mask[1] ? grad_weight.mutable_data_ptr<acc_t>() : nullptr,
            output_mask[2] ? grad_bias.mutable_data_ptr<acc_t>() : nullptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, FASTCNN_CUDA_DISPATCH_KEY, m) {
  m.impl("layer_norm", &layer_norm_cuda);
  m.impl("layer_norm_backward", &layer_norm_backward_cuda);
}

}  // namespace fastcnn
