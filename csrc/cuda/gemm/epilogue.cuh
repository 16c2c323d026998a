// The fused epilogue of the fastcnn GEMM core (cuda/gemm/): every output element leaves the
// accumulators exactly once, as act(acc + bias[col] + residual[idx]) converted to the tensor dtype
// (forward, linear), as a plain conversion (dgrad), or unconverted into an acc_t split-K workspace slice
// (wgrad always; forward and dgrad when their K is split to fill the machine), reduced afterwards in a
// fixed order so that results are deterministic. A row's output offset is computed once per row
// (epilogue_row_offset); the rows of a dgrad stride phase map to every stride-th pixel of grad_input.
// The tensor-core tiles stage their C tile in shared memory (epilogue_store_tile): each thread then
// stores whole 16-byte chunks of a row, with 16-byte bias and residual loads, where the host has checked
// that the layout allows it (`vec_ok`, `raw_vec_ok`); other chunks and the FMA tiles store element by
// element (epilogue_store).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/activation.h"
#include "cuda/common/helpers.cuh"
#include "cuda/common/vec.cuh"

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
  bool vec_ok;       // out/residual/bias allow 16-byte access at every 16-byte column chunk (T output)
  bool raw_vec_ok;   // likewise for the acc_t slices when writing split-K partials
  bool to_partials;  // forward/dgrad split over K: raw acc_t sums into split slices of `out`, indexed like
                     // the output; reduce_split_partials_kernel (gemm.cu) adds them and applies the rest
  RowPhase phase;    // rows_w == 0: row r is output row r
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

// Stores column col of the C row at `row_offset` (from epilogue_row_offset) of group g: one element,
// for the FMA tiles, the ragged chunks of the staged tile and the split-K reduction.
template <typename T, typename acc_t, bool kToWorkspace>
__device__ __forceinline__ void epilogue_store(const EpilogueParams& ep, int N, int g, int split,
                                               int64_t row_offset, int col, acc_t v) {
  if (row_offset < 0 || col >= N) return;
  const int64_t idx = row_offset + col;
  if (kToWorkspace || ep.to_partials) {
    static_cast<acc_t*>(ep.out)[static_cast<int64_t>(split) * ep.split_stride + idx] = v;
  } else if constexpr (!kToWorkspace) {
    if (ep.bias != nullptr) {
      v += static_cast<acc_t>(
          static_cast<const T*>(ep.bias)[static_cast<int64_t>(g) * ep.col_group_stride + col]);
    }
    if (ep.residual != nullptr) v += static_cast<acc_t>(static_cast<const T*>(ep.residual)[idx]);
    static_cast<T*>(ep.out)[idx] = static_cast<T>(activate<acc_t>(v, static_cast<Activation>(ep.activation)));
  }
}

// Pitch, in acc_t, of a C tile staged in shared memory: 4 extra columns keep 16-byte rows and move
// consecutive rows 4 banks apart.
template <int kBN>
constexpr int kStagedPitch = kBN + 4;

// Stores the kBM x kBN C tile at (m0, n0) of group g from `tile` (acc_t, shared memory, kStagedPitch)
// in 16-byte chunks along each row, chunk c of the tile taken by thread c mod kThreads. A chunk that
// does not lie wholly inside N, or a layout the host did not clear for 16-byte access, goes element by
// element through epilogue_store.
template <typename T, typename acc_t, bool kToWorkspace, int kBM, int kBN, int kThreads>
__device__ __forceinline__ void epilogue_store_tile(const EpilogueParams& ep, int64_t M, int N, int g,
                                                    int split, int64_t m0, int n0, const acc_t* tile,
                                                    int tid) {
  constexpr int kPitch = kStagedPitch<kBN>;
  const bool raw = kToWorkspace || ep.to_partials;
  const int vec = raw ? kVecWidth<acc_t> : kVecWidth<T>;
  const bool vec_ok = raw ? ep.raw_vec_ok : ep.vec_ok;
  const int chunks_per_row = kBN / vec;
  for (int c = tid; c < kBM * chunks_per_row; c += kThreads) {
    const int r = c / chunks_per_row;
    const int cc = (c - r * chunks_per_row) * vec;
    const int64_t off = epilogue_row_offset(ep, M, g, m0 + r);
    if (off < 0) continue;
    const int col = n0 + cc;
    const acc_t* src = tile + r * kPitch + cc;
    if (!vec_ok || col + vec > N) {
      for (int e = 0; e < vec; ++e) {
        epilogue_store<T, acc_t, kToWorkspace>(ep, N, g, split, off, col + e, src[e]);
      }
      continue;
    }
    if (raw) {
      constexpr int kV = kVecWidth<acc_t>;
      Vec<acc_t, kV> v;
#pragma unroll
      for (int e = 0; e < kV; ++e) v.val[e] = src[e];
      store_vec<kV>(static_cast<acc_t*>(ep.out) + static_cast<int64_t>(split) * ep.split_stride + off + col,
                    v);
    } else if constexpr (!kToWorkspace) {
      constexpr int kV = kVecWidth<T>;
      const Activation act = static_cast<Activation>(ep.activation);
      const int64_t idx = off + col;
      acc_t v[kV];
#pragma unroll
      for (int e = 0; e < kV; ++e) v[e] = src[e];
      if (ep.bias != nullptr) {
        const Vec<T, kV> b = load_vec<kV>(static_cast<const T*>(ep.bias) +
                                          static_cast<int64_t>(g) * ep.col_group_stride + col);
#pragma unroll
        for (int e = 0; e < kV; ++e) v[e] += static_cast<acc_t>(b.val[e]);
      }
      if (ep.residual != nullptr) {
        const Vec<T, kV> res = load_vec<kV>(static_cast<const T*>(ep.residual) + idx);
#pragma unroll
        for (int e = 0; e < kV; ++e) v[e] += static_cast<acc_t>(res.val[e]);
      }
      Vec<T, kV> out;
#pragma unroll
      for (int e = 0; e < kV; ++e) out.val[e] = static_cast<T>(activate<acc_t>(v[e], act));
      store_vec<kV>(static_cast<T*>(ep.out) + idx, out);
    }
  }
}

}  // namespace cuda
}  // namespace fastcnn
