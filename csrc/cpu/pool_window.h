// Work partitioning and loop helpers shared by the CPU pooling kernels (max_pool2d.cpp, avg_pool2d.cpp,
// adaptive_avg_pool2d.cpp). The window arithmetic itself is common/pool_window.h, shared with CUDA.
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
#include "common/pool_window.h"
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
