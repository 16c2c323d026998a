// The fused epilogue of the fastcnn GEMM core (cuda/gemm/): every output element leaves the
// accumulators exactly once, as act(acc + bias[col] + residual[idx]) converted to the tensor dtype
// (forward, linear), as a plain conversion (dgrad), or unconverted into an acc_t split-K workspace slice
// (wgrad, reduced afterwards in a fixed order so that results are deterministic). Threads store two
// adjacent columns at a time, as one aligned vector when the host has checked that the layout allows it
// (`pair_ok`).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/activation.h"

namespace fastcnn {
namespace cuda {

struct EpilogueParams {
  void* out;                 // T output, or acc_t workspace when writing split-K partials
  const void* bias;          // T [groups * N] indexed by the output column, or nullptr
  const void* residual;      // T, indexed exactly like `out`, or nullptr
  int64_t ldc;               // elements between consecutive output rows
  int64_t row_group_stride;  // rows added per group (wgrad: the group's out-channel block)
  int64_t col_group_stride;  // columns added per group (forward/dgrad: the group's channel block)
  int64_t split_stride;      // elements between the workspace slices of consecutive K splits
  int64_t activation;
  bool pair_ok;  // out/residual/bias allow 2-element vector access at even column offsets
};

template <typename T>
struct alignas(2 * sizeof(T)) Pair {
  T x, y;
};

// Stores column col of row `row` of group g and, when `pair` is set, column col + 1 too (which may fall
// outside N; it is then skipped).
template <typename T, typename acc_t, bool kToWorkspace>
__device__ __forceinline__ void epilogue_store(const EpilogueParams& ep, int64_t M, int N, int g, int split,
                                               int64_t row, int col, acc_t v0, acc_t v1, bool pair) {
  if (row >= M || col >= N) return;
  const bool second = pair && col + 1 < N;
  const int64_t out_col = static_cast<int64_t>(g) * ep.col_group_stride + col;
  const int64_t idx = (static_cast<int64_t>(g) * ep.row_group_stride + row) * ep.ldc + out_col;
  if constexpr (kToWorkspace) {
    acc_t* out = static_cast<acc_t*>(ep.out) + static_cast<int64_t>(split) * ep.split_stride + idx;
    if (second && ep.pair_ok) {
      *reinterpret_cast<Pair<acc_t>*>(out) = Pair<acc_t>{v0, v1};
    } else {
      out[0] = v0;
      if (second) out[1] = v1;
    }
  } else {
    const Activation act = static_cast<Activation>(ep.activation);
    T* out = static_cast<T*>(ep.out) + idx;
    const T* bias = static_cast<const T*>(ep.bias);
    const T* residual = static_cast<const T*>(ep.residual);
    if (second && ep.pair_ok) {
      if (bias != nullptr) {
        const Pair<T> b = *reinterpret_cast<const Pair<T>*>(bias + out_col);
        v0 += static_cast<acc_t>(b.x);
        v1 += static_cast<acc_t>(b.y);
      }
      if (residual != nullptr) {
        const Pair<T> r = *reinterpret_cast<const Pair<T>*>(residual + idx);
        v0 += static_cast<acc_t>(r.x);
        v1 += static_cast<acc_t>(r.y);
      }
      *reinterpret_cast<Pair<T>*>(out) =
          Pair<T>{static_cast<T>(activate<acc_t>(v0, act)), static_cast<T>(activate<acc_t>(v1, act))};
    } else {
      if (bias != nullptr) v0 += static_cast<acc_t>(bias[out_col]);
      if (residual != nullptr) v0 += static_cast<acc_t>(residual[idx]);
      out[0] = static_cast<T>(activate<acc_t>(v0, act));
      if (second) {
        if (bias != nullptr) v1 += static_cast<acc_t>(bias[out_col + 1]);
        if (residual != nullptr) v1 += static_cast<acc_t>(residual[idx + 1]);
        out[1] = static_cast<T>(activate<acc_t>(v1, act));
      }
    }
  }
}

}  // namespace cuda
}  // namespace fastcnn
