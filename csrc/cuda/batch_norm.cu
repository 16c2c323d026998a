// CUDA batch normalisation: forward (training statistics or running statistics) fused with an activation,
// its backward, and the running-statistics update.
// Algorithm: the input is viewed as [outer][C][inner] (common/batch_norm.h). A reduction kernel gives each
// block one channel tile and one split of the reduction axis: channels_last puts a warp across 32
// consecutive channels (coalesced rows) and 8 row lanes down the pixels; NCHW puts all 256 threads of the
// block along one channel's values. Each thread keeps Welford moments (forward) or the two gradient sums
// (backward), the block merges them in a fixed tree, and one thread per channel merges the splits in
// order (Chan's update) and writes the per-channel coefficients. Deterministic on a given device (the
// split count follows the SM count). Transforms are grid-stride elementwise passes. half/bfloat16 are
// computed in fp32 with fp32 statistics, as PyTorch does.
// Layout: NCHW and channels_last 4-D, and any contiguous [N, C, *]. Measured: not yet measured on a GPU.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>

#include "common/activation.h"
#include "common/batch_norm.h"
#include "cuda/common/channel_reduce.cuh"
#include "cuda/common/launch.cuh"

namespace fastcnn {
namespace {

using cuda::ceil_div;
using cuda::launch_kernel;
using namespace cuda::channel_reduce;  // NOLINT: the reduction skeleton the kernels below are written in

// ---- forward --------------------------------------------------------------------------------------------

// The channel's first value. Moments are taken of x - shift: with fp32 accumulators a running mean near
// |mean| rounds by |mean| * 2^-24 at each update, which swamps the variance when |mean| >> std; shifted
// values are of the order of the spread (and x - shift is exact when the two are within a factor 2).
template <typename T, typename acc_t>
__device__ __forceinline__ acc_t channel_shift(const T* __restrict__ x, int64_t c, int64_t inner) {
  return static_cast<acc_t>(x[c * inner]);
}

template <typename T, typename acc_t, bool kChannelsInner>
__global__ void __launch_bounds__(kThreads)
    moments_partial_kernel(const T* __restrict__ x, ReduceGrid g, bn::Moments<acc_t>* __restrict__ partials) {
  __shared__ bn::Moments<acc_t> states[kThreads];
  bn::Moments<acc_t> mine{0, acc_t(0), acc_t(0)};
  const int64_t c = thread_channel<kChannelsInner>(g);
  if (c >= 0) {
    const acc_t shift = channel_shift<T, acc_t>(x, c, g.inner);
    for_each_value<kChannelsInner>(
        g, c, [&](int64_t i) { bn::welford_add(mine, static_cast<acc_t>(x[i]) - shift); });
  }
  store_block_partial<kChannelsInner>(states, mine, c, g, partials,
                                      [](const auto& a, const auto& b) { return bn::merge(a, b); });
}

// One thread per channel: the batch moments from the partials (or, when partials is null, the running
// statistics already in mean/var), then the forward transform's coefficients.
template <typename T, typename acc_t>
__global__ void forward_coefficients_kernel(const T* __restrict__ x, int64_t inner,
                                            const bn::Moments<acc_t>* __restrict__ partials, int64_t splits,
                                            int64_t channels, double eps, const acc_t* __restrict__ weight,
                                            const acc_t* __restrict__ bias, acc_t* __restrict__ mean,
                                            acc_t* __restrict__ var, bn::Affine<acc_t>* __restrict__ affine) {
  for (int64_t c = cuda::global_thread_index(); c < channels; c += cuda::grid_thread_count()) {
    if (partials != nullptr) {
      bn::Moments<acc_t> m{0, acc_t(0), acc_t(0)};
      for (int64_t p = 0; p < splits; ++p) m = bn::merge(m, partials[p * channels + c]);
      mean[c] = channel_shift<T, acc_t>(x, c, inner) + m.mean;
      var[c] = m.m2 / static_cast<acc_t>(m.count);
    }
    affine[c] = bn::forward_affine<acc_t>(mean[c], var[c], eps, weight, bias, c);
  }
}

template <typename T, typename acc_t, Activation A>
__global__ void normalize_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, int64_t channels,
                                 int64_t inner, bool channels_inner,
                                 const bn::Affine<acc_t>* __restrict__ affine,
                                 const ActivationFunctor<A> act) {
  for (int64_t i = cuda::global_thread_index(); i < n; i += cuda::grid_thread_count()) {
    const bn::Affine<acc_t> f = affine[channel_of(i, channels, inner, channels_inner)];
    y[i] =
        static_cast<T>(act.template forward<acc_t>((static_cast<acc_t>(x[i]) - f.mean) * f.scale + f.shift));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_cuda(
    const at::Tensor& input, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    bool training, double eps, int64_t activation) {
  const Activation act = to_activation(activation);
  cuda::check_cuda_tensor(input, "input");
  const bn::Shape s = bn::check_batch_norm(input, weight, bias, running_mean, running_var, training, eps,
                                           /*allow_reduced=*/true);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = bn::dense_input(input, s);
  at::Tensor y = at::empty_like(x, s.format);
  const at::ScalarType acc = bn::stats_dtype(input);
  at::Tensor mean, var;
  if (training) {
    mean = at::empty({s.channels}, input.options().dtype(acc));
    var = at::empty({s.channels}, input.options().dtype(acc));
  } else {
    mean = running_mean->to(acc, /*non_blocking=*/false, /*copy=*/true).contiguous();
    var = running_var->to(acc, /*non_blocking=*/false, /*copy=*/true).contiguous();
  }
  const at::Tensor w = norm::parameter_vector(weight, acc), b = norm::parameter_vector(bias, acc);
  const cudaStream_t stream = cuda::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastcnn_batch_norm_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor partials;
    ReduceGrid g{};
    if (training) {
      g = reduce_grid(s.outer, s.channels, s.inner);
      partials = partial_buffer<bn::Moments<acc_t>>(x, g.splits * s.channels);
      auto* partial_ptr = reinterpret_cast<bn::Moments<acc_t>*>(partials.mutable_data_ptr());
      if (s.channels_inner()) {
        launch_kernel<moments_partial_kernel<scalar_t, acc_t, true>>(
            reduce_blocks(g, true), reduce_threads(true), 0, stream, x.const_data_ptr<scalar_t>(), g,
            partial_ptr);
      } else {
        launch_kernel<moments_partial_kernel<scalar_t, acc_t, false>>(
            reduce_blocks(g, false), reduce_threads(false), 0, stream, x.const_data_ptr<scalar_t>(), g,
            partial_ptr);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    at::Tensor affine = partial_buffer<bn::Affine<acc_t>>(x, s.channels);
    auto* affine_ptr = reinterpret_cast<bn::Affine<acc_t>*>(affine.mutable_data_ptr());
    launch_kernel<forward_coefficients_kernel<scalar_t, acc_t>>(
        dim3(cuda::grid_for(s.channels)), dim3(cuda::kBlockThreads), 0, stream, x.const_data_ptr<scalar_t>(),
        s.inner, training ? reinterpret_cast<const bn::Moments<acc_t>*>(partials.const_data_ptr()) : nullptr,
        g.splits, s.channels, eps, norm::data_or_null<acc_t>(w), norm::data_or_null<acc_t>(b),
        mean.mutable_data_ptr<acc_t>(), var.mutable_data_ptr<acc_t>(), affine_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    with_activation(act, [&](auto tag) {
      launch_kernel<normalize_kernel<scalar_t, acc_t, decltype(tag)::value>>(
          dim3(cuda::grid_for(x.numel())), dim3(cuda::kBlockThreads), 0, stream, x.const_data_ptr<scalar_t>(),
          y.mutable_data_ptr<scalar_t>(), x.numel(), s.channels, s.inner, s.channels_inner(), affine_ptr,
          activation_functor<decltype(tag)::value>(act));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {y, mean, var};
}

// ---- backward -------------------------------------------------------------------------------------------

template <typename T, typename acc_t, Activation A, bool kChannelsInner>
__global__ void __launch_bounds__(kThreads)
    grad_sums_partial_kernel(const T* __restrict__ grad_output, const T* __restrict__ output,
                             const T* __restrict__ x, const acc_t* __restrict__ mean, ReduceGrid g,
                             SumPair<acc_t>* __restrict__ partials, const ActivationFunctor<A> act) {
  __shared__ SumPair<acc_t> states[kThreads];
  SumPair<acc_t> mine{acc_t(0), acc_t(0)};
  const int64_t c = thread_channel<kChannelsInner>(g);
  const acc_t channel_mean = c >= 0 ? mean[c] : acc_t(0);
  if (c >= 0)
    for_each_value<kChannelsInner>(g, c, [&](int64_t i) {
      const acc_t gi =
          act.template backward<acc_t>(static_cast<acc_t>(grad_output[i]), static_cast<acc_t>(output[i]));
      mine.first += gi;
      mine.second += gi * (static_cast<acc_t>(x[i]) - channel_mean);
    });
  store_block_partial<kChannelsInner>(states, mine, c, g, partials,
                                      [](const auto& a, const auto& b) { return add_pairs(a, b); });
}

template <typename acc_t>
__global__ void backward_coefficients_kernel(const SumPair<acc_t>* __restrict__ partials, int64_t splits,
                                             int64_t channels, int64_t count, bool training, double eps,
                                             const acc_t* __restrict__ weight, const acc_t* __restrict__ mean,
                                             const acc_t* __restrict__ var, acc_t* __restrict__ grad_weight,
                                             acc_t* __restrict__ grad_bias,
                                             bn::BackwardCoefficients<acc_t>* __restrict__ coefficients) {
  for (int64_t c = cuda::global_thread_index(); c < channels; c += cuda::grid_thread_count()) {
    SumPair<acc_t> sums{acc_t(0), acc_t(0)};
    for (int64_t p = 0; p < splits; ++p) {
      sums = add_pairs(sums, partials[p * channels + c]);
    }
    if (grad_weight != nullptr) grad_weight[c] = sums.second * bn::inverse_std(var[c], eps);
    if (grad_bias != nullptr) grad_bias[c] = sums.first;
    if (coefficients != nullptr) {
      coefficients[c] = bn::backward_coefficients<acc_t>(mean[c], var[c], eps, weight, c, sums.first,
                                                         sums.second, count, training);
    }
  }
}

template <typename T, typename acc_t, Activation A>
__global__ void grad_input_kernel(const T* __restrict__ grad_output, const T* __restrict__ output,
                                  const T* __restrict__ x, T* __restrict__ grad_input, int64_t n,
                                  int64_t channels, int64_t inner, bool channels_inner,
                                  const bn::BackwardCoefficients<acc_t>* __restrict__ coefficients,
                                  const ActivationFunctor<A> act) {
  for (int64_t i = cuda::global_thread_index(); i < n; i += cuda::grid_thread_count()) {
    const bn::BackwardCoefficients<acc_t> k = coefficients[channel_of(i, channels, inner, channels_inner)];
    const acc_t gi =
        act.template backward<acc_t>(static_cast<acc_t>(grad_output[i]), static_cast<acc_t>(output[i]));
    grad_input[i] = static_cast<T>(gi * k.a + (static_cast<acc_t>(x[i]) - k.mean) * k.b + k.d);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const at::Tensor& mean, const at::Tensor& var, const std::optional<at::Tensor>& output, bool training,
    double eps, int64_t activation, std::array<bool, 3> output_mask) {
  const Activation act = to_activation(activation);
  check_fused_backward(act, "batch_norm_backward");
  cuda::check_cuda_tensor(input, "input");
  const bn::Shape s = bn::input_shape(input, /*allow_reduced=*/true);
  bn::check_batch_norm_backward(grad_output, input, weight, mean, var, output, s, eps,
                                act != Activation::None);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = bn::dense_input(input, s);
  const at::Tensor g = bn::dense_input(grad_output, s);
  // Identity's backward ignores the output: x stands in for it when there is no activation.
  const at::Tensor y = act != Activation::None ? bn::dense_input(*output, s) : x;
  const at::ScalarType acc = bn::stats_dtype(input);
  const at::Tensor w = norm::parameter_vector(weight, acc);
  const at::Tensor mean_c = mean.contiguous(), var_c = var.contiguous();
  at::Tensor grad_input = output_mask[0] ? at::empty_like(x, s.format) : input.new_empty({0});
  at::Tensor grad_weight = at::empty({output_mask[1] ? s.channels : 0}, mean.options());
  at::Tensor grad_bias = at::empty({output_mask[2] ? s.channels : 0}, mean.options());
  const cudaStream_t stream = cuda::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fastcnn_batch_norm_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const ReduceGrid rg = reduce_grid(s.outer, s.channels, s.inner);
        at::Tensor partials = partial_buffer<SumPair<acc_t>>(x, rg.splits * s.channels);
        auto* partial_ptr = reinterpret_cast<SumPair<acc_t>*>(partials.mutable_data_ptr());
        at::Tensor coefficients = partial_buffer<bn::BackwardCoefficients<acc_t>>(x, s.channels);
        auto* coefficient_ptr =
            reinterpret_cast<bn::BackwardCoefficients<acc_t>*>(coefficients.mutable_data_ptr());
        const scalar_t* gp = g.const_data_ptr<scalar_t>();
        const scalar_t* yp = y.const_data_ptr<scalar_t>();
        const scalar_t* xp = x.const_data_ptr<scalar_t>();
        const acc_t* mp = mean_c.const_data_ptr<acc_t>();
        with_activation(act, [&](auto tag) {
          constexpr Activation A = decltype(tag)::value;
          const auto act_fn = activation_functor<A>(act);
          if (s.channels_inner()) {
            launch_kernel<grad_sums_partial_kernel<scalar_t, acc_t, A, true>>(
                reduce_blocks(rg, true), reduce_threads(true), 0, stream, gp, yp, xp, mp, rg, partial_ptr,
                act_fn);
          } else {
            launch_kernel<grad_sums_partial_kernel<scalar_t, acc_t, A, false>>(
                reduce_blocks(rg, false), reduce_threads(false), 0, stream, gp, yp, xp, mp, rg, partial_ptr,
                act_fn);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
        // Launched outside with_activation: GCC does not instantiate a template kernel that does not depend
        // on the generic lambda's parameter when it is named there only as a template argument.
        launch_kernel<backward_coefficients_kernel<acc_t>>(
            dim3(cuda::grid_for(s.channels)), dim3(cuda::kBlockThreads), 0, stream, partial_ptr, rg.splits,
            s.channels, s.count, training, eps, norm::data_or_null<acc_t>(w), mp,
            var_c.const_data_ptr<acc_t>(), output_mask[1] ? grad_weight.mutable_data_ptr<acc_t>() : nullptr,
            output_mask[2] ? grad_bias.mutable_data_ptr<acc_t>() : nullptr,
            output_mask[0] ? coefficient_ptr : nullptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (!output_mask[0]) return;
        with_activation(act, [&](auto tag) {
          launch_kernel<grad_input_kernel<scalar_t, acc_t, decltype(tag)::value>>(
              dim3(cuda::grid_for(x.numel())), dim3(cuda::kBlockThreads), 0, stream, gp, yp, xp,
              grad_input.mutable_data_ptr<scalar_t>(), x.numel(), s.channels, s.inner, s.channels_inner(),
              coefficient_ptr, activation_functor<decltype(tag)::value>(act));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  return {grad_input, grad_weight, grad_bias};
}

// ---- running statistics ---------------------------------------------------------------------------------

template <typename P, typename acc_t>
__global__ void update_running_stats_kernel(P* __restrict__ running_mean, P* __restrict__ running_var,
                                            const acc_t* __restrict__ mean, const acc_t* __restrict__ var,
                                            int64_t channels, acc_t momentum, acc_t unbias) {
  for (int64_t c = cuda::global_thread_index(); c < channels; c += cuda::grid_thread_count()) {
    const acc_t keep = acc_t(1) - momentum;
    running_mean[c] = static_cast<P>(momentum * mean[c] + keep * static_cast<acc_t>(running_mean[c]));
    running_var[c] = static_cast<P>(momentum * (var[c] * unbias) + keep * static_cast<acc_t>(running_var[c]));
  }
}

void batch_norm_update_running_stats_cuda(at::Tensor& running_mean, at::Tensor& running_var,
                                          const at::Tensor& mean, const at::Tensor& var, double momentum,
                                          int64_t count) {
  cuda::check_cuda_tensor(running_mean, "running_mean");
  bn::check_running_stats_update(running_mean, running_var, mean, var, momentum, count,
                                 /*allow_reduced=*/true);
  const c10::cuda::CUDAGuard guard(running_mean.device());
  const at::Tensor m = mean.contiguous(), v = var.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, running_mean.scalar_type(), "fastcnn_batch_norm_update_running_stats_cuda",
      [&] {
        using acc_t = at::opmath_type<scalar_t>;
        launch_kernel<update_running_stats_kernel<scalar_t, acc_t>>(
            dim3(cuda::grid_for(running_mean.numel())), dim3(cuda::kBlockThreads), 0, cuda::current_stream(),
            running_mean.mutable_data_ptr<scalar_t>(), running_var.mutable_data_ptr<scalar_t>(),
            m.const_data_ptr<acc_t>(), v.const_data_ptr<acc_t>(), running_mean.numel(),
            static_cast<acc_t>(momentum), static_cast<acc_t>(count) / static_cast<acc_t>(count - 1));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, FASTCNN_CUDA_DISPATCH_KEY, m) {
  m.impl("batch_norm", &batch_norm_cuda);
  m.impl("batch_norm_backward", &batch_norm_backward_cuda);
  m.impl("batch_norm_update_running_stats", &batch_norm_update_running_stats_cuda);
}

}  // namespace fastcnn
