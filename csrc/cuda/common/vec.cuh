// 16-byte vector access for the memory-bound fastcnn CUDA kernels: 4 floats, 8 halves/bfloat16s or
// 2 doubles per load/store, so that a warp moves 512 contiguous bytes per instruction (LDG.E.128 /
// STG.E.128). Callers check alignment on the host (is_aligned(p, 16), helpers.cuh) and launch the
// width-1 instantiation when any pointer is misaligned, e.g. a view with a storage offset; flat maps
// finish with a scalar tail.
#pragma once

#include <c10/macros/Macros.h>

#include <type_traits>

#include <cstdint>

#include "cuda/common/launch.cuh"

namespace fastcnn {
namespace cuda {

// Elements of T per 16-byte vector.
template <typename T>
constexpr int kVecWidth = 16 / static_cast<int>(sizeof(T));

// N consecutive elements, aligned to their total size so that a copy is one N*sizeof(T)-byte access.
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T val[N];
};

// p must be aligned to N * sizeof(T) bytes.
template <int N, typename T>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}

template <int N, typename T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& v) {
  *reinterpret_cast<Vec<T, N>*>(p) = v;
}

// out[i] = op(a[i]) (or op(a[i], b[i]) when Binary) for i < n, over a flat grid-stride loop. With N > 1
// every pointer must be 16-byte aligned: the body moves N elements per access and the last n % N
// elements go through the scalar tail.
template <typename T, int N, bool Binary, typename Op>
__global__ void map_kernel(T* __restrict__ out, const T* __restrict__ a, const T* __restrict__ b, int64_t n,
                           Op op) {
  const int64_t first = global_thread_index();
  const int64_t stride = grid_thread_count();
  const int64_t vectors = n / N;
  for (int64_t v = first; v < vectors; v += stride) {
    const int64_t base = v * N;
    const Vec<T, N> va = load_vec<N>(a + base);
    Vec<T, N> vo;
    if constexpr (Binary) {
      const Vec<T, N> vb = load_vec<N>(b + base);
#pragma unroll
      for (int j = 0; j < N; ++j) vo.val[j] = op(va.val[j], vb.val[j]);
    } else {
#pragma unroll
      for (int j = 0; j < N; ++j) vo.val[j] = op(va.val[j]);
    }
    store_vec<N>(out + base, vo);
  }
  for (int64_t i = vectors * N + first; i < n; i += stride) {
    if constexpr (Binary) {
      out[i] = op(a[i], b[i]);
    } else {
      out[i] = op(a[i]);
    }
  }
}

// Launches map_kernel on the current stream, 16-byte wide when every pointer allows it. `b` is ignored
// (may be null) unless Binary.
template <bool Binary, typename T, typename Op>
void launch_map(T* out, const T* a, const T* b, int64_t n, Op op) {
  if (n <= 0) return;
  constexpr int kWidth = kVecWidth<T>;
  const bool vectorized = is_aligned(out, 16) && is_aligned(a, 16) && (!Binary || is_aligned(b, 16));
  if (vectorized) {
    launch_kernel<map_kernel<T, kWidth, Binary, Op>>(grid_for((n + kWidth - 1) / kWidth), kBlockThreads, 0,
                                                     current_stream(), out, a, b, n, op);
  } else {
    launch_kernel<map_kernel<T, 1, Binary, Op>>(grid_for(n), kBlockThreads, 0, current_stream(), out, a, b, n,
                                                op);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// For the NHWC kernels that give each thread a run of channels of one pixel (the pools): calls
// launch(width, items) with width = std::integral_constant<int, kVecWidth<T>> and items = total / width
// when the channel count and both pointers allow 16-byte vectors, else with width 1 and items = total.
template <typename T, typename Launch>
void launch_nhwc_channel_vectors(int64_t channels, int64_t total, const void* src, const void* dst,
                                 Launch&& launch) {
  constexpr int kWidth = kVecWidth<T>;
  if (channels % kWidth == 0 && is_aligned(src, 16) && is_aligned(dst, 16)) {
    launch(std::integral_constant<int, kWidth>{}, total / kWidth);
  } else {
    launch(std::integral_constant<int, 1>{}, total);
  }
}

}  // namespace cuda
}  // namespace fastcnn
