// CUDA max pooling with indices, forward and backward, with PyTorch's semantics: dilation, ceil_mode
// (check_pool2d), NaN propagation (a NaN wins and the last NaN in the window gives the index), -inf
// windows reporting their first valid tap, indices flat h*W+w within each (n, c) plane.
// Forward: one thread per output element (NCHW: taps strided by W; channels_last: threads over channels,
// 16-byte vectors of channels when C allows, so a warp reads whole pixel rows). Backward: the schema
// carries no window geometry, so gradients are scattered through the saved indices, in one of two ways:
// atomicAdd into an fp32/fp64 accumulator (fast, order of additions unspecified), or, when
// at::globalContext().deterministicAlgorithms() is on, one warp per (n, c) plane that walks the plane's
// outputs 32 at a time in order, sums lanes hitting the same input in lane order (__match_any_sync) and
// has one lane add the sum, so every input sums its contributions in ascending output order, atomics-free.
// half/bfloat16 compare and accumulate in fp32. Layout: NCHW or channels_last; outputs follow the input.
// Measured: not yet measured.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/NumericUtils.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/pool_window.h"
#include "cuda/common/launch.cuh"
#include "cuda/common/vec.cuh"

namespace fastcnn {
namespace {

using cuda::Vec;

template <typename T>
__global__ void max_pool_forward_nchw_kernel(const T* __restrict__ input, T* __restrict__ output,
                                             int64_t* __restrict__ indices, int64_t total, Pool2dShape s) {
  using acc_t = at::opmath_type<T>;
  for (int64_t o = cuda::global_thread_index(); o < total; o += cuda::grid_thread_count()) {
    const cuda::ImageIndex at = cuda::image_index(o, 1, s.out_h, s.out_w);
    const int64_t plane = at.outer, oh = at.y, ow = at.x;
    const pool::Span rows = pool::max_pool_span(oh, s.kernel_h, s.stride_h, s.pad_h, s.dilation_h, s.in_h);
    const pool::Span cols = pool::max_pool_span(ow, s.kernel_w, s.stride_w, s.pad_w, s.dilation_w, s.in_w);
    const int64_t h_first = rows.begin, h_end = rows.end;
    const int64_t w_first = cols.begin, w_end = cols.end;
    const T* plane_in = input + plane * s.in_h * s.in_w;
    acc_t best = -std::numeric_limits<acc_t>::infinity();
    int64_t best_index = h_first * s.in_w + w_first;
    for (int64_t h = h_first; h < h_end; h += s.dilation_h) {
      for (int64_t w = w_first; w < w_end; w += s.dilation_w) {
        const int64_t i = h * s.in_w + w;
        const acc_t v = static_cast<acc_t>(plane_in[i]);
        if (v > best || at::_isnan(v)) {
          best = v;
          best_index = i;
        }
      }
    }
    output[o] = static_cast<T>(best);
    indices[o] = best_index;
  }
}

// channels_last: item = ((n * out_h + oh) * out_w + ow) * (C / N) + channel vector, so output offset is
// item * N and consecutive threads read consecutive channel vectors of the same pixel.
template <typename T, int N>
__global__ void max_pool_forward_nhwc_kernel(const T* __restrict__ input, T* __restrict__ output,
                                             int64_t* __restrict__ indices, int64_t total_items,
                                             Pool2dShape s) {
  using acc_t = at::opmath_type<T>;
  const int64_t channel_vecs = s.channels / N;
  for (int64_t item = cuda::global_thread_index(); item < total_items; item += cuda::grid_thread_count()) {
    const cuda::ImageIndex at = cuda::image_index(item, channel_vecs, s.out_h, s.out_w);
    const int64_t cv = at.inner, n = at.outer, oh = at.y, ow = at.x;
    const pool::Span rows = pool::max_pool_span(oh, s.kernel_h, s.stride_h, s.pad_h, s.dilation_h, s.in_h);
    const pool::Span cols = pool::max_pool_span(ow, s.kernel_w, s.stride_w, s.pad_w, s.dilation_w, s.in_w);
    const int64_t h_first = rows.begin, h_end = rows.end;
    const int64_t w_first = cols.begin, w_end = cols.end;
    const T* image = input + n * s.in_h * s.in_w * s.channels + cv * N;
    acc_t best[N];
    int64_t best_index[N];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      best[j] = -std::numeric_limits<acc_t>::infinity();
      best_index[j] = h_first * s.in_w + w_first;
    }
    for (int64_t h = h_first; h < h_end; h += s.dilation_h) {
      for (int64_t w = w_first; w < w_end; w += s.dilation_w) {
        const int64_t i = h * s.in_w + w;
        const Vec<T, N> v = cuda::load_vec<N>(image + i * s.channels);
#pragma unroll
        for (int j = 0; j < N; ++j) {
          const acc_t x = static_cast<acc_t>(v.val[j]);
          if (x > best[j] || at::_isnan(x)) {
            best[j] = x;
            best_index[j] = i;
          }
        }
      }
    }
    Vec<T, N> out;
#pragma unroll
    for (int j = 0; j < N; ++j) out.val[j] = static_cast<T>(best[j]);
    cuda::store_vec<N>(output + item * N, out);
#pragma unroll
    for (int j = 0; j < N; ++j) indices[item * N + j] = best_index[j];
  }
}

// Offset of element `pos` (flat h*W+w, plane size `plane_size`) of plane (n, c) in a dense tensor.
template <bool ChannelsLast>
__device__ __forceinline__ int64_t plane_offset(int64_t n, int64_t c, int64_t pos, int64_t channels,
                                                int64_t plane_size) {
  return ChannelsLast ? (n * plane_size + pos) * channels + c : (n * channels + c) * plane_size + pos;
}

// One thread per grad_output element, in memory order; out-of-range indices are skipped.
template <typename T, typename acc_t, bool ChannelsLast>
__global__ void max_pool_backward_atomic_kernel(const T* __restrict__ grad_output,
                                                const int64_t* __restrict__ indices,
                                                acc_t* __restrict__ grad_input, int64_t total,
                                                int64_t channels, int64_t out_plane, int64_t in_plane) {
  for (int64_t o = cuda::global_thread_index(); o < total; o += cuda::grid_thread_count()) {
    const int64_t target = indices[o];
    if (target < 0 || target >= in_plane) continue;
    int64_t n, c;
    if (ChannelsLast) {
      c = o % channels;
      n = o / (out_plane * channels);
    } else {
      const int64_t plane = o / out_plane;
      c = plane % channels;
      n = plane / channels;
    }
    atomicAdd(grad_input + plane_offset<ChannelsLast>(n, c, target, channels, in_plane),
              static_cast<acc_t>(grad_output[o]));
  }
}

// Deterministic scatter: one warp owns a whole (n, c) plane, so nothing else writes it, and it adds the
// plane's gradients in ascending output order. All loop bounds are warp-uniform (they depend on the warp
// index only), as the *_sync intrinsics need every lane.
template <typename T, typename acc_t, bool ChannelsLast>
__global__ void max_pool_backward_ordered_kernel(const T* __restrict__ grad_output,
                                                 const int64_t* __restrict__ indices,
                                                 acc_t* __restrict__ grad_input, int64_t planes,
                                                 int64_t channels, int64_t out_plane, int64_t in_plane) {
  constexpr unsigned kFullMask = 0xffffffffu;
  const int lane = static_cast<int>(threadIdx.x % cuda::kWarpSize);
  for (int64_t plane = cuda::global_warp_index(); plane < planes; plane += cuda::grid_warp_count()) {
    const int64_t n = plane / channels;
    const int64_t c = plane % channels;
    for (int64_t chunk = 0; chunk < out_plane; chunk += cuda::kWarpSize) {
      const int64_t pos = chunk + lane;
      long long target = -1;
      acc_t g = 0;
      if (pos < out_plane) {
        const int64_t src = plane_offset<ChannelsLast>(n, c, pos, channels, out_plane);
        const int64_t t = indices[src];
        if (t >= 0 && t < in_plane) {
          target = t;
          g = static_cast<acc_t>(grad_output[src]);
        }
      }
      const unsigned same_target = __match_any_sync(kFullMask, target);
      acc_t sum = 0;
#pragma unroll
      for (int j = 0; j < cuda::kWarpSize; ++j) {
        const acc_t v = __shfl_sync(kFullMask, g, j);
        if ((same_target >> j) & 1u) sum += v;
      }
      const bool leader = (__ffs(static_cast<int>(same_target)) - 1) == lane;
      if (leader && target >= 0) {
        grad_input[plane_offset<ChannelsLast>(n, c, target, channels, in_plane)] += sum;
      }
      // Orders this chunk's read-modify-writes before the next chunk's reads of the same plane.
      __syncwarp();
    }
  }
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                   at::IntArrayRef dilation, bool ceil_mode) {
  cuda::check_cuda_tensor(input, "input");
  const Pool2dShape s = check_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode,
                                     /*allow_reduced=*/true);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = output_memory_format(input);
  const at::Tensor x = input.contiguous(fmt);
  const std::vector<int64_t> out_sizes{s.batch, s.channels, s.out_h, s.out_w};
  at::Tensor output = at::empty(out_sizes, x.options().memory_format(fmt));
  at::Tensor indices = at::empty(out_sizes, x.options().dtype(at::kLong).memory_format(fmt));
  const int64_t total = output.numel();
  if (total == 0) return {output, indices};  // an empty batch
  const auto stream = cuda::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastcnn_max_pool2d_cuda", [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* out = output.mutable_data_ptr<scalar_t>();
    int64_t* idx = indices.mutable_data_ptr<int64_t>();
    if (fmt == at::MemoryFormat::ChannelsLast) {
      cuda::launch_nhwc_channel_vectors<scalar_t>(s.channels, total, in, out, [&](auto width, int64_t items) {
        cuda::launch_kernel<max_pool_forward_nhwc_kernel<scalar_t, decltype(width)::value>>(
            cuda::grid_for(items), cuda::kBlockThreads, 0, stream, in, out, idx, items, s);
      });
    } else {
      cuda::launch_kernel<max_pool_forward_nchw_kernel<scalar_t>>(cuda::grid_for(total), cuda::kBlockThreads,
                                                                  0, stream, in, out, idx, total, s);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {output, indices};
}

at::Tensor max_pool2d_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                    const at::Tensor& indices) {
  cuda::check_cuda_tensor(input, "input");
  check_pool_input(input, /*allow_reduced=*/true);
  check_pool_grad_output(grad_output, input, -1, -1);
  check_max_pool_indices(indices, grad_output, input);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = output_memory_format(input);
  const at::Tensor go = grad_output.contiguous(fmt);
  const at::Tensor idx = indices.contiguous(fmt);
  const bool reduced = input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16;
  // half/bfloat16 gradients accumulate in an fp32 buffer, rounded once at the end. (at::zeros would drop
  // the memory format of the options: the scatter below writes in `fmt` order.)
  at::Tensor grad_acc =
      at::empty(input.sizes(),
                input.options().dtype(reduced ? at::kFloat : input.scalar_type()).memory_format(fmt))
          .zero_();
  const int64_t channels = input.size(1);
  const int64_t in_plane = input.size(2) * input.size(3);
  const int64_t out_plane = go.size(2) * go.size(3);
  const int64_t total = go.numel();
  const int64_t planes = input.size(0) * channels;
  if (total == 0) return reduced ? grad_acc.to(input.scalar_type()) : grad_acc;  // an empty batch
  const bool channels_last = fmt == at::MemoryFormat::ChannelsLast;
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const auto stream = cuda::current_stream();
  if (total > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, input.scalar_type(), "fastcnn_max_pool2d_backward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const scalar_t* g = go.const_data_ptr<scalar_t>();
          const int64_t* ix = idx.const_data_ptr<int64_t>();
          acc_t* acc = grad_acc.mutable_data_ptr<acc_t>();
          if (deterministic) {
            const unsigned blocks = cuda::grid_for(planes * cuda::kWarpSize);
            if (channels_last) {
              cuda::launch_kernel<max_pool_backward_ordered_kernel<scalar_t, acc_t, true>>(
                  blocks, cuda::kBlockThreads, 0, stream, g, ix, acc, planes, channels, out_plane, in_plane);
            } else {
              cuda::launch_kernel<max_pool_backward_ordered_kernel<scalar_t, acc_t, false>>(
                  blocks, cuda::kBlockThreads, 0, stream, g, ix, acc, planes, channels, out_plane, in_plane);
            }
          } else {
            const unsigned blocks = cuda::grid_for(total);
            if (channels_last) {
              cuda::launch_kernel<max_pool_backward_atomic_kernel<scalar_t, acc_t, true>>(
                  blocks, cuda::kBlockThreads, 0, stream, g, ix, acc, total, channels, out_plane, in_plane);
            } else {
              cuda::launch_kernel<max_pool_backward_atomic_kernel<scalar_t, acc_t, false>>(
                  blocks, cuda::kBlockThreads, 0, stream, g, ix, acc, total, channels, out_plane, in_plane);
            }
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
  }
  return reduced ? grad_acc.to(input.scalar_type()) : grad_acc;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, FASTCNN_CUDA_DISPATCH_KEY, m) {
  m.impl("max_pool2d", &max_pool2d_cuda);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cuda);
}

}  // namespace fastcnn
