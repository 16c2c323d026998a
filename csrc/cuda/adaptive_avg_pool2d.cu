// CUDA adaptive average pooling, forward and backward, with PyTorch's windows: output row o of O covers
// input rows [floor(o*I/O), ceil((o+1)*I/O)), likewise for columns. Forward: one thread per output
// element, or one warp per output element (shuffle reduction, fixed order) when NCHW windows are large,
// e.g. a global pool over a 56x56 plane. Backward: a gather, one thread per grad_input element summing
// grad_output / window area over the outputs whose windows contain it, which are rows
// [floor(i*O/I), ceil((i+1)*O/I)) (no atomics, deterministic). channels_last puts threads over channels
// and moves 16-byte vectors of channels when C allows. half/bfloat16 accumulate in fp32.
// Layout: NCHW or channels_last; outputs follow the input. Measured: not yet measured.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/pool_window.h"
#include "cuda/common/launch.cuh"
#include "cuda/common/vec.cuh"

namespace fastcnn {
namespace {

using cuda::Vec;

struct AdaptiveShape {
  int64_t channels, in_h, in_w, out_h, out_w;
};

// First and one-past-last index of window `i` when `from` positions are split into `to` windows.
__device__ __forceinline__ int64_t window_begin(int64_t i, int64_t to, int64_t from) {
  return pool::adaptive_span(i, to, from).begin;
}

__device__ __forceinline__ int64_t window_end(int64_t i, int64_t to, int64_t from) {
  return pool::adaptive_span(i, to, from).end;
}

// NCHW windows with at least this many taps get a warp each rather than a thread.
constexpr int64_t kWarpWindowTaps = 128;

template <typename T>
__global__ void adaptive_avg_forward_nchw_kernel(const T* __restrict__ input, T* __restrict__ output,
                                                 int64_t total, AdaptiveShape s) {
  using acc_t = at::opmath_type<T>;
  for (int64_t o = cuda::global_thread_index(); o < total; o += cuda::grid_thread_count()) {
    const cuda::ImageIndex at = cuda::image_index(o, 1, s.out_h, s.out_w);
    const int64_t plane = at.outer, oh = at.y, ow = at.x;
    const int64_t h0 = window_begin(oh, s.out_h, s.in_h), h1 = window_end(oh, s.out_h, s.in_h);
    const int64_t w0 = window_begin(ow, s.out_w, s.in_w), w1 = window_end(ow, s.out_w, s.in_w);
    const T* plane_in = input + plane * s.in_h * s.in_w;
    acc_t sum = 0;
    for (int64_t h = h0; h < h1; ++h) {
      for (int64_t w = w0; w < w1; ++w) sum += static_cast<acc_t>(plane_in[h * s.in_w + w]);
    }
    output[o] = static_cast<T>(sum / static_cast<acc_t>((h1 - h0) * (w1 - w0)));
  }
}

// One warp per output element; lanes stride over the window's taps in row-major order, so a warp reads
// up to 32 consecutive elements of a row at once. The loop over outputs is warp-uniform.
template <typename T>
__global__ void adaptive_avg_forward_nchw_warp_kernel(const T* __restrict__ input, T* __restrict__ output,
                                                      int64_t total, AdaptiveShape s) {
  using acc_t = at::opmath_type<T>;
  constexpr unsigned kFullMask = 0xffffffffu;
  const int lane = static_cast<int>(threadIdx.x % cuda::kWarpSize);
  for (int64_t o = cuda::global_warp_index(); o < total; o += cuda::grid_warp_count()) {
    const cuda::ImageIndex at = cuda::image_index(o, 1, s.out_h, s.out_w);
    const int64_t plane = at.outer, oh = at.y, ow = at.x;
    const int64_t h0 = window_begin(oh, s.out_h, s.in_h), h1 = window_end(oh, s.out_h, s.in_h);
    const int64_t w0 = window_begin(ow, s.out_w, s.in_w), w1 = window_end(ow, s.out_w, s.in_w);
    const int64_t width = w1 - w0;
    const int64_t taps = (h1 - h0) * width;
    const T* plane_in = input + plane * s.in_h * s.in_w;
    acc_t sum = 0;
    for (int64_t t = lane; t < taps; t += cuda::kWarpSize) {
      const int64_t h = h0 + t / width;
      const int64_t w = w0 + t % width;
      sum += static_cast<acc_t>(plane_in[h * s.in_w + w]);
    }
#pragma unroll
    for (int offset = cuda::kWarpSize / 2; offset > 0; offset /= 2)
      sum += __shfl_xor_sync(kFullMask, sum, offset);
    if (lane == 0) output[o] = static_cast<T>(sum / static_cast<acc_t>(taps));
  }
}

// item = ((n * out_h + oh) * out_w + ow) * (C / N) + channel vector; the output offset is item * N.
template <typename T, int N>
__global__ void adaptive_avg_forward_nhwc_kernel(const T* __restrict__ input, T* __restrict__ output,
                                                 int64_t total_items, AdaptiveShape s) {
  using acc_t = at::opmath_type<T>;
  const int64_t channel_vecs = s.channels / N;
  for (int64_t item = cuda::global_thread_index(); item < total_items; item += cuda::grid_thread_count()) {
    const cuda::ImageIndex at = cuda::image_index(item, channel_vecs, s.out_h, s.out_w);
    const int64_t cv = at.inner, n = at.outer, oh = at.y, ow = at.x;
    const int64_t h0 = window_begin(oh, s.out_h, s.in_h), h1 = window_end(oh, s.out_h, s.in_h);
    const int64_t w0 = window_begin(ow, s.out_w, s.in_w), w1 = window_end(ow, s.out_w, s.in_w);
    const T* image = input + n * s.in_h * s.in_w * s.channels + cv * N;
    acc_t sum[N];
#pragma unroll
    for (int j = 0; j < N; ++j) sum[j] = 0;
    for (int64_t h = h0; h < h1; ++h) {
      for (int64_t w = w0; w < w1; ++w) {
        const Vec<T, N> v = cuda::load_vec<N>(image + (h * s.in_w + w) * s.channels);
#pragma unroll
        for (int j = 0; j < N; ++j) sum[j] += static_cast<acc_t>(v.val[j]);
      }
    }
    const acc_t area = static_cast<acc_t>((h1 - h0) * (w1 - w0));
    Vec<T, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) out.val[j] = static_cast<T>(sum[j] / area);
    cuda::store_vec<N>(output + item * N, out);
  }
}

template <typename T>
__global__ void adaptive_avg_backward_nchw_kernel(const T* __restrict__ grad_output,
                                                  T* __restrict__ grad_input, int64_t total,
                                                  AdaptiveShape s) {
  using acc_t = at::opmath_type<T>;
  for (int64_t i = cuda::global_thread_index(); i < total; i += cuda::grid_thread_count()) {
    const cuda::ImageIndex at = cuda::image_index(i, 1, s.in_h, s.in_w);
    const int64_t plane = at.outer, h = at.y, w = at.x;
    // Outputs whose windows contain row h / column w: the same split with the roles of I and O swapped.
    const int64_t oh0 = window_begin(h, s.in_h, s.out_h), oh1 = min(window_end(h, s.in_h, s.out_h), s.out_h);
    const int64_t ow0 = window_begin(w, s.in_w, s.out_w), ow1 = min(window_end(w, s.in_w, s.out_w), s.out_w);
    const T* plane_go = grad_output + plane * s.out_h * s.out_w;
    acc_t grad = 0;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const int64_t rows = window_end(oh, s.out_h, s.in_h) - window_begin(oh, s.out_h, s.in_h);
      for (int64_t ow = ow0; ow < ow1; ++ow) {
        const int64_t cols = window_end(ow, s.out_w, s.in_w) - window_begin(ow, s.out_w, s.in_w);
        grad += static_cast<acc_t>(plane_go[oh * s.out_w + ow]) / static_cast<acc_t>(rows * cols);
      }
    }
    grad_input[i] = static_cast<T>(grad);
  }
}

// item = ((n * in_h + h) * in_w + w) * (C / N) + channel vector; the grad_input offset is item * N.
template <typename T, int N>
__global__ void adaptive_avg_backward_nhwc_kernel(const T* __restrict__ grad_output,
                                                  T* __restrict__ grad_input, int64_t total_items,
                                                  AdaptiveShape s) {
  using acc_t = at::opmath_type<T>;
  const int64_t channel_vecs = s.channels / N;
  for (int64_t item = cuda::global_thread_index(); item < total_items; item += cuda::grid_thread_count()) {
    const cuda::ImageIndex at = cuda::image_index(item, channel_vecs, s.in_h, s.in_w);
    const int64_t cv = at.inner, n = at.outer, h = at.y, w = at.x;
    const int64_t oh0 = window_begin(h, s.in_h, s.out_h), oh1 = min(window_end(h, s.in_h, s.out_h), s.out_h);
    const int64_t ow0 = window_begin(w, s.in_w, s.out_w), ow1 = min(window_end(w, s.in_w, s.out_w), s.out_w);
    const T* image_go = grad_output + n * s.out_h * s.out_w * s.channels + cv * N;
    acc_t grad[N];
#pragma unroll
    for (int j = 0; j < N; ++j) grad[j] = 0;
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const int64_t rows = window_end(oh, s.out_h, s.in_h) - window_begin(oh, s.out_h, s.in_h);
      for (int64_t ow = ow0; ow < ow1; ++ow) {
        const int64_t cols = window_end(ow, s.out_w, s.in_w) - window_begin(ow, s.out_w, s.in_w);
        const acc_t area = static_cast<acc_t>(rows * cols);
        const Vec<T, N> g = cuda::load_vec<N>(image_go + (oh * s.out_w + ow) * s.channels);
#pragma unroll
        for (int j = 0; j < N; ++j) grad[j] += static_cast<acc_t>(g.val[j]) / area;
      }
    }
    Vec<T, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) out.val[j] = static_cast<T>(grad[j]);
    cuda::store_vec<N>(grad_input + item * N, out);
  }
}

void check_adaptive_input(const at::Tensor& input) {
  cuda::check_cuda_tensor(input, "input");
  check_pool_input(input, /*allow_reduced=*/true);
}

at::Tensor adaptive_avg_pool2d_cuda(const at::Tensor& input, at::IntArrayRef output_size) {
  check_adaptive_input(input);
  check_positive_pair(output_size, "output_size");
  const c10::cuda::CUDAGuard guard(input.device());
  const AdaptiveShape s{input.size(1), input.size(2), input.size(3), output_size[0], output_size[1]};
  const auto fmt = output_memory_format(input);
  const at::Tensor x = input.contiguous(fmt);
  at::Tensor output =
      at::empty({input.size(0), s.channels, s.out_h, s.out_w}, x.options().memory_format(fmt));
  const int64_t total = output.numel();
  if (total == 0) return output;  // an empty batch
  // About the taps of one window; it only picks the kernel, so rounding does not matter.
  const int64_t max_taps = (s.in_h / s.out_h + 1) * (s.in_w / s.out_w + 1);
  const auto stream = cuda::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, x.scalar_type(), "fastcnn_adaptive_avg_pool2d_cuda", [&] {
        const scalar_t* in = x.const_data_ptr<scalar_t>();
        scalar_t* out = output.mutable_data_ptr<scalar_t>();
        if (fmt == at::MemoryFormat::ChannelsLast) {
          cuda::launch_nhwc_channel_vectors<scalar_t>(
              s.channels, total, in, out, [&](auto width, int64_t items) {
                cuda::launch_kernel<adaptive_avg_forward_nhwc_kernel<scalar_t, decltype(width)::value>>(
                    cuda::grid_for(items), cuda::kBlockThreads, 0, stream, in, out, items, s);
              });
        } else if (max_taps >= kWarpWindowTaps) {
          cuda::launch_kernel<adaptive_avg_forward_nchw_warp_kernel<scalar_t>>(
              cuda::grid_for(total * cuda::kWarpSize), cuda::kBlockThreads, 0, stream, in, out, total, s);
        } else {
          cuda::launch_kernel<adaptive_avg_forward_nchw_kernel<scalar_t>>(
              cuda::grid_for(total), cuda::kBlockThreads, 0, stream, in, out, total, s);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return output;
}

at::Tensor adaptive_avg_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input) {
  check_adaptive_input(input);
  check_pool_grad_output(grad_output, input, -1, -1);
  const c10::cuda::CUDAGuard guard(input.device());
  const AdaptiveShape s{input.size(1), input.size(2), input.size(3), grad_output.size(2),
                        grad_output.size(3)};
  const auto fmt = output_memory_format(input);
  const at::Tensor go = grad_output.contiguous(fmt);
  at::Tensor grad_input = at::empty(input.sizes(), input.options().memory_format(fmt));
  const int64_t total = grad_input.numel();
  if (total == 0) return grad_input;  // an empty batch
  const auto stream = cuda::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "fastcnn_adaptive_avg_pool2d_backward_cuda", [&] {
        const scalar_t* g = go.const_data_ptr<scalar_t>();
        scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
        if (fmt == at::MemoryFormat::ChannelsLast) {
          cuda::launch_nhwc_channel_vectors<scalar_t>(
              s.channels, total, g, gi, [&](auto width, int64_t items) {
                cuda::launch_kernel<adaptive_avg_backward_nhwc_kernel<scalar_t, decltype(width)::value>>(
                    cuda::grid_for(items), cuda::kBlockThreads, 0, stream, g, gi, items, s);
              });
        } else {
          cuda::launch_kernel<adaptive_avg_backward_nchw_kernel<scalar_t>>(
              cuda::grid_for(total), cuda::kBlockThreads, 0, stream, g, gi, total, s);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, FASTCNN_CUDA_DISPATCH_KEY, m) {
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d_cuda);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward_cuda);
}

}  // namespace fastcnn
