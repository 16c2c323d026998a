// The fused epilogue of the fastcnn GEMM core (cuda/gemm/): every output element leaves the
// accumulators exactly once, as act(acc + bias[col] + residual[idx]) converted to the tensor dtype
// (forward, linear), as a plain conversion (dgrad), or unconverted into an acc_t split-K workspace slice
// (wgrad always; forward and dgrad when their K is split to fill the machine), reduced afterwards in a
// fixed order so that results are deterministic. Threads store two
// adjacent columns at a time, as one aligned vector when the host has checked that the layout allows it
// (`pair_ok`). A row's output offset is computed once per row (epilogue_row_offset); the rows of a
// dgrad stride phase map to every stride-th pixel of grad_input.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/activation.h"
#include "cuda/common/helpers.cuh"

namespace fastcnn {
namespace cuda {

// C rows that are one stride phase of dgrad's grad_input (rows_w > 0): row r = (n, yq, xq) of a
// rows_h x rows_w plane is pixel (n, y0 + yq * step_y, x0 + xq * step_x) of a full_h x full_w image.
struct RowPhase {
  int rows_h, rows_w, y0, x0, step_y, step_x, full_h, full_w;
};

struct EpilogueParams {
  void* out;                 // T output, or acc_t workspace when writing split-K partials
  const void* bias;          // T [groups * N] indexed by the output column, or nullptr
  const void* residual;      // T, indexed exactly like `out`, or nullptr
  int64_t ldc;               // elements between consecutive output rows
  int64_t row_group_stride;  // rows added per group (wgrad: the group's out-channel block)
  int64_t col_group_stride;  // columns added per group (forward/dgrad: the group's channel block)
  int64_t split_stride;      // elements between the workspace slices of consecutive K splits
  int64_t activation;
  bool pair_ok;      // out/residual/bias allow 2-element vector access at even column offsets
  bool to_partials;  // forward/dgrad split over K: raw acc_t sums into split slices of `out`, indexed like
                     // the output; reduce_split_partials_kernel (gemm.cu) adds them and applies the rest
  RowPhase phase;    // rows_w == 0: row r is output row r
};

template <typename T>
struct alignas(2 * sizeof(T)) Pair {
  T x, y;
};

// Element offset in `out` (and `residual`) of column 0 of C row `row` of group g, or -1 past M.
__device__ __forceinline__ int64_t epilogue_row_offset(const EpilogueParams& ep, int64_t M, int g,
                                                       int64_t row) {
  if (row >= M) return -1;
  int64_t out_row = row;
  if (ep.phase.rows_w > 0) {
    int64_t n;
    int rem;
    divmod_nonneg(row, ep.phase.rows_h * ep.phase.rows_w, n, rem);
    const int yq = rem / ep.phase.rows_w;
    const int xq = rem - yq * ep.phase.rows_w;
    out_row =
        (n * ep.phase.full_h + ep.phase.y0 + yq * ep.phase.step_y) * static_cast<int64_t>(ep.phase.full_w) +
        ep.phase.x0 + xq * ep.phase.step_x;
  }
  return (static_cast<int64_t>(g) * ep.row_group_stride + out_row) * ep.ldc +
         static_cast<int64_t>(g) * ep.col_group_stride;
}

// Stores column col of the C row at `row_offset` (from epilogue_row_offset) of group g and, when `pair`
// is set, column col + 1 too (which may fall outside N; it is then skipped).
template <typename T, typename acc_t, bool kToWorkspace>
__device__ __forceinline__ void epilogue_store(const EpilogueParams& ep, int N, int g, int split,
                                               int64_t row_offset, int col, acc_t v0, acc_t v1, bool pair) {
  if (row_offset < 0 || col >= N) return;
  const bool second = pair && col + 1 < N;
  const int64_t out_col = static_cast<int64_t>(g) * ep.col_group_stride + col;
  const int64_t idx = row_offset + col;
  if (kToWorkspace || ep.to_partials) {
    acc_t* out = static_cast<acc_t*>(ep.out) + static_cast<int64_t>(split) * ep.split_stride + idx;
    if (second && ep.pair_ok) {
      *reinterpret_cast<Pair<acc_t>*>(out) = Pair<acc_t>{v0, v1};
    } else {
      out[0] = v0;
      if (second) out[1] = v1;
    }
  } else if constexpr (!kToWorkspace) {
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
