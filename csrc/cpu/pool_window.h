// Window arithmetic, argument checks and work partitioning shared by the CPU pooling kernels
// (max_pool2d.cpp, avg_pool2d.cpp, adaptive_avg_pool2d.cpp). The window rules reproduce ATen's CPU
// pooling kernels exactly, so that outputs, indices and divisors agree with PyTorch element for element.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "cpu/simd_clones.h"

namespace fastcnn {
namespace pool {

// Calls f(std::integral_constant<int64_t, S>{}) with S = the column stride when it is 1 or 2 and S = 0
// (meaning "read it at run time") otherwise, so the NCHW row loops, templated on S, use plain vector
// loads for the common strides.
template <typename F>
inline void with_column_stride(int64_t stride_w, F&& f) {
  if (stride_w == 1) return f(std::integral_constant<int64_t, 1>{});
  if (stride_w == 2) return f(std::integral_constant<int64_t, 2>{});
  return f(std::integral_constant<int64_t, 0>{});
}

// Elements of work a parallel_for chunk should at least carry before another thread is worth waking.
constexpr int64_t kGrain = 32768;

inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, kGrain / std::max<int64_t>(1, work_per_item));
}

// A half-open range [begin, end) of input rows (or columns) read by one output row (or column).
struct Span {
  int64_t begin, end;
};

// Max pooling taps o*stride - pad + k*dilation, k in [0, kernel), restricted to [0, in): `begin` is the
// first tap inside the input, `end` bounds the last. Taps are visited from begin in steps of dilation.
inline Span max_pool_span(int64_t o, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation,
                          int64_t in) {
  int64_t begin = o * stride - pad;
  const int64_t end = std::min(begin + (kernel - 1) * dilation + 1, in);
  while (begin < 0) begin += dilation;
  return {begin, end};
}

// The outputs o in [0, out) whose tap o * stride + offset lies inside [0, in).
inline Span tap_span(int64_t offset, int64_t stride, int64_t in, int64_t out) {
  const int64_t first = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  const int64_t last_numerator = in - 1 - offset;
  const int64_t stop = last_numerator < 0 ? 0 : std::min(out, last_numerator / stride + 1);
  return {std::min(first, stop), stop};
}

// Average pooling window clipped to the input, plus `padded`: the window's extent clipped only to
// input + padding. That padded extent is what count_include_pad divides by, so a ceil_mode window that
// hangs past the right padding does not count the part outside it (ATen's rule).
struct AvgSpan {
  int64_t begin, end, padded;
};

inline AvgSpan avg_pool_span(int64_t o, int64_t kernel, int64_t stride, int64_t pad, int64_t in) {
  const int64_t start = o * stride - pad;
  const int64_t stop = std::min(start + kernel, in + pad);
  return {std::max<int64_t>(start, 0), std::min(stop, in), stop - start};
}

// Adaptive pooling: output o of `out` reads input rows [floor(o*in/out), ceil((o+1)*in/out)).
inline Span adaptive_span(int64_t o, int64_t out, int64_t in) {
  return {(o * in) / out, ((o + 1) * in + out - 1) / out};
}

template <typename SpanFn>
auto spans(int64_t count, const SpanFn& fn) {
  std::vector<decltype(fn(int64_t{0}))> result;
  result.reserve(count);
  for (int64_t o = 0; o < count; ++o) result.push_back(fn(o));
  return result;
}

// Sum of n contiguous values with independent partial sums, so that it vectorises without
// -ffast-math and is not one long chain of dependent adds.
template <typename scalar_t>
inline scalar_t sum_contiguous(const scalar_t* __restrict x, int64_t n) {
  constexpr int64_t kLanes = 64 / sizeof(scalar_t);
  scalar_t total = 0;
  int64_t i = 0;
  if (n >= kLanes) {
    scalar_t partial[kLanes] = {};
    for (; i + kLanes <= n; i += kLanes) {
      for (int64_t j = 0; j < kLanes; ++j) partial[j] += x[i + j];
    }
    for (int64_t j = 0; j < kLanes; ++j) total += partial[j];
  }
  for (; i < n; ++i) total += x[i];
  return total;
}

inline bool is_channels_last(at::MemoryFormat fmt) {
  return fmt == at::MemoryFormat::ChannelsLast;
}

inline at::Tensor empty_4d(const at::Tensor& like, int64_t n, int64_t c, int64_t h, int64_t w,
                           at::MemoryFormat fmt) {
  return at::empty({n, c, h, w}, like.options().memory_format(fmt));
}

// A backward's grad_output must be the forward output's gradient: input's dtype and device, input's
// batch and channels, and (when known) the spatial size the forward produced.
inline void check_grad_output(const at::Tensor& grad_output, const at::Tensor& input, int64_t out_h,
                              int64_t out_w) {
  check_dim(grad_output, 4, "grad_output", "N, C, outH, outW");
  check_same_dtype_device(grad_output, input, "grad_output", "input");
  TORCH_CHECK(grad_output.size(0) == input.size(0) && grad_output.size(1) == input.size(1) &&
                  (out_h < 0 || grad_output.size(2) == out_h) && (out_w < 0 || grad_output.size(3) == out_w),
              "fastcnn: grad_output has shape ", grad_output.sizes(), " but the pooling of input ",
              input.sizes(), " produces [", input.size(0), ", ", input.size(1), ", ",
              out_h < 0 ? "*" : std::to_string(out_h), ", ", out_w < 0 ? "*" : std::to_string(out_w), "]");
  TORCH_CHECK(grad_output.size(2) > 0 && grad_output.size(3) > 0,
              "fastcnn: grad_output must have a non-zero spatial size, got shape ", grad_output.sizes());
}

inline void check_pool_input(const at::Tensor& input) {
  check_dim(input, 4, "input", "N, C, H, W");
  check_floating(input, "input", /*allow_reduced=*/false);
  TORCH_CHECK(input.size(0) > 0, "fastcnn: input has an empty batch (shape ", input.sizes(), ")");
  TORCH_CHECK(input.size(1) > 0 && input.size(2) > 0 && input.size(3) > 0,
              "fastcnn: input must have non-zero channels and spatial size, got shape ", input.sizes());
}

// Runs fn(plane_begin, plane_end) over the N*C planes of an NCHW tensor; a plane is never split, so a
// backward that scatters within a plane owns its grad_input plane outright.
template <typename F>
void parallel_planes(int64_t planes, int64_t work_per_plane, const F& fn) {
  at::parallel_for(0, planes, grain_for(work_per_plane), fn);
}

// Runs fn(n, c_begin, c_end) over (sample, channel block) slices of an NHWC tensor. Different slices
// touch disjoint grad_input elements wherever a scatter lands in the sample, so backward needs no atomics.
// Channels are split only when whole samples would leave threads idle or unevenly loaded.
template <typename F>
void parallel_nhwc_slices(int64_t batch, int64_t channels, const F& fn) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  int64_t blocks = 1;
  if (batch % threads != 0) {
    constexpr int64_t kMinBlock = 16;  // keeps each slice's per-pixel run a full cache line of floats
    blocks = std::max<int64_t>(1, std::min(threads, channels / kMinBlock));
  }
  const int64_t block = (channels + blocks - 1) / blocks;
  blocks = (channels + block - 1) / block;
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / blocks;
      const int64_t c0 = (t % blocks) * block;
      fn(n, c0, std::min(c0 + block, channels));
    }
  });
}

// Zeroes channels [c0, c1) of every pixel of sample n of an NHWC buffer.
template <typename scalar_t>
void zero_nhwc_slice(scalar_t* data, int64_t n, int64_t pixels, int64_t channels, int64_t c0, int64_t c1) {
  scalar_t* base = data + n * pixels * channels;
  if (c0 == 0 && c1 == channels) {
    std::fill(base, base + pixels * channels, scalar_t(0));
    return;
  }
  for (int64_t p = 0; p < pixels; ++p)
    std::fill(base + p * channels + c0, base + p * channels + c1, scalar_t(0));
}

}  // namespace pool
}  // namespace fastcnn
