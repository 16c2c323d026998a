// CUDA average pooling, forward and backward, with PyTorch's semantics: ceil_mode (check_pool2d),
// count_include_pad (the divisor counts padding taps but never taps past the right padding), and
// divisor_override; a window entirely in padding yields 0. Forward: one thread per output element.
// Backward: a gather, one thread per grad_input element summing grad_output / divisor over the windows
// that cover it (no atomics, deterministic). NCHW walks each plane; channels_last puts threads over
// channels and moves 16-byte vectors of channels when C allows. half/bfloat16 accumulate in fp32.
// Layout: NCHW or channels_last; outputs follow the input. Measured: not yet measured.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "common/checks.h"
#include "common/pool_window.h"
#include "cuda/common/launch.cuh"
#include "cuda/common/vec.cuh"

namespace fastcnn {
namespace {

using cuda::Vec;

struct AvgWindow {
  int64_t h_begin, h_end, w_begin, w_end;  // clipped to the input
  int64_t divisor;
};

// divisor_override == 0 means none (the host rejects an explicit 0).
__device__ __forceinline__ AvgWindow avg_window(int64_t oh, int64_t ow, const Pool2dShape& s,
                                                bool count_include_pad, int64_t divisor_override) {
  const pool::AvgSpan rows = pool::avg_pool_span(oh, s.kernel_h, s.stride_h, s.pad_h, s.in_h);
  const pool::AvgSpan cols = pool::avg_pool_span(ow, s.kernel_w, s.stride_w, s.pad_w, s.in_w);
  int64_t divisor = divisor_override;
  if (divisor == 0) {
    divisor =
        count_include_pad ? rows.padded * cols.padded : (rows.end - rows.begin) * (cols.end - cols.begin);
  }
  return {rows.begin, rows.end, cols.begin, cols.end, divisor};
}

template <typename T>
__global__ void avg_pool_forward_nchw_kernel(const T* __restrict__ input, T* __restrict__ output,
                                             int64_t total, Pool2dShape s, bool count_include_pad,
                                             int64_t divisor_override) {
  using acc_t = at::opmath_type<T>;
  for (int64_t o = cuda::global_thread_index(); o < total; o += cuda::grid_thread_count()) {
    const cuda::ImageIndex at = cuda::image_index(o, 1, s.out_h, s.out_w);
    const int64_t plane = at.outer, oh = at.y, ow = at.x;
    const AvgWindow win = avg_window(oh, ow, s, count_include_pad, divisor_override);
    if (win.h_begin >= win.h_end || win.w_begin >= win.w_end) {
      output[o] = static_cast<T>(0);
      continue;
    }
    const T* plane_in = input + plane * s.in_h * s.in_w;
    acc_t sum = 0;
    for (int64_t h = win.h_begin; h < win.h_end; ++h) {
      for (int64_t w = win.w_begin; w < win.w_end; ++w) sum += static_cast<acc_t>(plane_in[h * s.in_w + w]);
    }
    output[o] = static_cast<T>(sum / static_cast<acc_t>(win.divisor));
  }
}

// item = ((n * out_h + oh) * out_w + ow) * (C / N) + channel vector; the output offset is item * N.
template <typename T, int N>
__global__ void avg_pool_forward_nhwc_kernel(const T* __restrict__ input, T* __restrict__ output,
                                             int64_t total_items, Pool2dShape s, bool count_include_pad,
                                             int64_t divisor_override) {
  using acc_t = at::opmath_type<T>;
  const int64_t channel_vecs = s.channels / N;
  for (int64_t item = cuda::global_thread_index(); item < total_items; item += cuda::grid_thread_count()) {
    const cuda::ImageIndex at = cuda::image_index(item, channel_vecs, s.out_h, s.out_w);
    const int64_t cv = at.inner, n = at.outer, oh = at.y, ow = at.x;
    const AvgWindow win = avg_window(oh, ow, s, count_include_pad, divisor_override);
    const T* image = input + n * s.in_h * s.in_w * s.channels + cv * N;
    acc_t sum[N];
#pragma unroll
    for (int j = 0; j < N; ++j) sum[j] = 0;
    for (int64_t h = win.h_begin; h < win.h_end; ++h) {
      for (int64_t w = win.w_begin; w < win.w_end; ++w) {
        const Vec<T, N> v = cuda::load_vec<N>(image + (h * s.in_w + w) * s.channels);
#pragma unroll
        for (int j = 0; j < N; ++j) sum[j] += static_cast<acc_t>(v.val[j]);
      }
    }
    const bool empty = win.h_begin >= win.h_end || win.w_begin >= win.w_end;
    Vec<T, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j)
      out.val[j] = static_cast<T>(empty ? acc_t(0) : sum[j] / static_cast<acc_t>(win.divisor));
    cuda::store_vec<N>(output + item * N, out);
  }
}

template <typename T>
__global__ void avg_pool_backward_nchw_kernel(const T* __restrict__ grad_output, T* __restrict__ grad_input,
                                              int64_t total, Pool2dShape s, bool count_include_pad,
                                              int64_t divisor_override) {
  using acc_t = at::opmath_type<T>;
  for (int64_t i = cuda::global_thread_index(); i < total; i += cuda::grid_thread_count()) {
    const cuda::ImageIndex at = cuda::image_index(i, 1, s.in_h, s.in_w);
    const int64_t plane = at.outer, h = at.y, w = at.x;
    const pool::Span rows = pool::avg_pool_covering(h, s.kernel_h, s.stride_h, s.pad_h, s.out_h);
    const pool::Span cols = pool::avg_pool_covering(w, s.kernel_w, s.stride_w, s.pad_w, s.out_w);
    const T* plane_go = grad_output + plane * s.out_h * s.out_w;
    acc_t grad = 0;
    for (int64_t oh = rows.begin; oh < rows.end; ++oh) {
      for (int64_t ow = cols.begin; ow < cols.end; ++ow) {
        const AvgWindow win = avg_window(oh, ow, s, count_include_pad, divisor_override);
        grad += static_cast<acc_t>(plane_go[oh * s.out_w + ow]) / static_cast<acc_t>(win.divisor);
      }
    }
    grad_input[i] = static_cast<T>(grad);
  }
}

// item = ((n * in_h + h) * in_w + w) * (C / N) + channel vector; the grad_input offset is item * N.
template <typename T, int N>
__global__ void avg_pool_backward_nhwc_kernel(const T* __restrict__ grad_output, T* __restrict__ grad_input,
                                              int64_t total_items, Pool2dShape s, bool count_include_pad,
                                              int64_t divisor_override) {
  using acc_t = at::opmath_type<T>;
  const int64_t channel_vecs = s.channels / N;
  for (int64_t item = cuda::global_thread_index(); item < total_items; item += cuda::grid_thread_count()) {
    const cuda::ImageIndex at = cuda::image_index(item, channel_vecs, s.in_h, s.in_w);
    const int64_t cv = at.inner, n = at.outer, h = at.y, w = at.x;
    const pool::Span rows = pool::avg_pool_covering(h, s.kernel_h, s.stride_h, s.pad_h, s.out_h);
    const pool::Span cols = pool::avg_pool_covering(w, s.kernel_w, s.stride_w, s.pad_w, s.out_w);
    const T* image_go = grad_output + n * s.out_h * s.out_w * s.channels + cv * N;
    acc_t grad[N];
#pragma unroll
    for (int j = 0; j < N; ++j) grad[j] = 0;
    for (int64_t oh = rows.begin; oh < rows.end; ++oh) {
      for (int64_t ow = cols.begin; ow < cols.end; ++ow) {
        const AvgWindow win = avg_window(oh, ow, s, count_include_pad, divisor_override);
        const acc_t divisor = static_cast<acc_t>(win.divisor);
        const Vec<T, N> g = cuda::load_vec<N>(image_go + (oh * s.out_w + ow) * s.channels);
#pragma unroll
        for (int j = 0; j < N; ++j) grad[j] += static_cast<acc_t>(g.val[j]) / divisor;
      }
    }
    Vec<T, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) out.val[j] = static_cast<T>(grad[j]);
    cuda::store_vec<N>(grad_input + item * N, out);
  }
}

constexpr int64_t kNoDilation[2] = {1, 1};

int64_t checked_divisor(std::optional<int64_t> divisor_override) {
  if (!divisor_override.has_value()) return 0;
  TORCH_CHECK(*divisor_override != 0, "fastcnn: divisor_override must be non-zero");
  return *divisor_override;
}

at::Tensor avg_pool2d_cuda(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                           at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                           std::optional<int64_t> divisor_override) {
  cuda::check_cuda_tensor(input, "input");
  const Pool2dShape s = check_pool2d(input, kernel_size, stride, padding, at::IntArrayRef(kNoDilation, 2),
                                     ceil_mode, /*allow_reduced=*/true);
  const int64_t divisor = checked_divisor(divisor_override);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = output_memory_format(input);
  const at::Tensor x = input.contiguous(fmt);
  at::Tensor output = at::empty({s.batch, s.channels, s.out_h, s.out_w}, x.options().memory_format(fmt));
  const int64_t total = output.numel();
  if (total == 0) return output;  // an empty batch
  const auto stream = cuda::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastcnn_avg_pool2d_cuda", [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* out = output.mutable_data_ptr<scalar_t>();
    if (fmt == at::MemoryFormat::ChannelsLast) {
      cuda::launch_nhwc_channel_vectors<scalar_t>(s.channels, total, in, out, [&](auto width, int64_t items) {
        cuda::launch_kernel<avg_pool_forward_nhwc_kernel<scalar_t, decltype(width)::value>>(
            cuda::grid_for(items), cuda::kBlockThreads, 0, stream, in, out, items, s, count_include_pad,
            divisor);
      });
    } else {
      cuda::launch_kernel<avg_pool_forward_nchw_kernel<scalar_t>>(cuda::grid_for(total), cuda::kBlockThreads,
                                                                  0, stream, in, out, total, s,
                                                                  count_include_pad, divisor);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

at::Tensor avg_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                    at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                    at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                    std::optional<int64_t> divisor_override) {
  cuda::check_cuda_tensor(input, "input");
  const Pool2dShape s = check_pool2d(input, kernel_size, stride, padding, at::IntArrayRef(kNoDilation, 2),
                                     ceil_mode, /*allow_reduced=*/true);
  const int64_t divisor = checked_divisor(divisor_override);
  check_pool_grad_output(grad_output, input, s.out_h, s.out_w);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = output_memory_format(input);
  const at::Tensor go = grad_output.contiguous(fmt);
  at::Tensor grad_input = at::empty(input.sizes(), input.options().memory_format(fmt));
  const int64_t total = grad_input.numel();
  if (total == 0) return grad_input;  // an empty batch
  const auto stream = cuda::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "fastcnn_avg_pool2d_backward_cuda", [&] {
        const scalar_t* g = go.const_data_ptr<scalar_t>();
        scalar_t* gi = grad_input.mutable_data_ptr<scalar_t>();
        if (fmt == at::MemoryFormat::ChannelsLast) {
          cuda::launch_nhwc_channel_vectors<scalar_t>(
              s.channels, total, g, gi, [&](auto width, int64_t items) {
                cuda::launch_kernel<avg_pool_backward_nhwc_kernel<scalar_t, decltype(width)::value>>(
                    cuda::grid_for(items), cuda::kBlockThreads, 0, stream, g, gi, items, s, count_include_pad,
                    divisor);
              });
        } else {
          cuda::launch_kernel<avg_pool_backward_nchw_kernel<scalar_t>>(cuda::grid_for(total),
                                                                       cuda::kBlockThreads, 0, stream, g, gi,
                                                                       total, s, count_include_pad, divisor);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, FASTCNN_CUDA_DISPATCH_KEY, m) {
  m.impl("avg_pool2d", &avg_pool2d_cuda);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_cuda);
}

}  // namespace fastcnn
