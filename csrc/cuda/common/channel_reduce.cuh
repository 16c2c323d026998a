// Per-channel reductions over an [outer][C][inner] tensor, shared by the normalisation kernels: the sum
// over (outer, inner) for each channel c, split over blockIdx.y and merged in a fixed order, so results
// are deterministic on a given device (the split count follows the SM count).
// channels_inner (inner == 1, channels_last or [rows, C]): a warp across 32 consecutive channels
// (coalesced rows) and 8 row lanes down the rows; otherwise (NCHW planes) the block's 256 threads along
// one channel's values. A kernel keeps a per-thread State over for_each_value, then store_block_partial
// merges the block's states into partials[split * C + c], which the caller merges over the splits.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>

#include "cuda/common/helpers.cuh"
#include "cuda/common/launch.cuh"

namespace fastcnn {
namespace cuda {
namespace channel_reduce {

constexpr int kThreads = 256;
constexpr int kChannelTile = 32;                    // channels_last: channels per block, one per lane
constexpr int kRowLanes = kThreads / kChannelTile;  // channels_last: threads down the pixels per channel

// How the reduction axis (the count values of a channel) is split over blockIdx.y.
struct ReduceGrid {
  int64_t outer, channels, inner;
  int64_t per_split;  // reduction positions per split: rows (channels_last) or (n, hw) positions (NCHW)
  int64_t splits;
};

inline ReduceGrid reduce_grid(int64_t outer, int64_t channels, int64_t inner) {
  ReduceGrid g{outer, channels, inner, 0, 0};
  const bool channels_inner = inner == 1;
  const int64_t extent = channels_inner ? outer : outer * inner;
  const int64_t channel_blocks = channels_inner ? ceil_div(channels, int64_t{kChannelTile}) : channels;
  const int64_t lanes = channels_inner ? kRowLanes : kThreads;
  TORCH_CHECK(channel_blocks <= int64_t{1} << 31, "fastcnn: too many channels (", channels,
              ") to reduce over");
  // About four blocks per SM in all, every thread with at least 4 values, at most 1024 splits.
  int64_t splits = std::max<int64_t>(1, ceil_div(4 * cuda::current_sm_count(), channel_blocks));
  splits = std::min({splits, std::max<int64_t>(1, ceil_div(extent, 4 * lanes)), int64_t{1024}});
  g.per_split = ceil_div(extent, splits);
  g.splits = ceil_div(extent, g.per_split);
  return g;
}

// The channel this thread reduces, or -1 for a lane of the channels_last tile past C.
template <bool kChannelsInner>
__device__ __forceinline__ int64_t thread_channel(const ReduceGrid& g) {
  if constexpr (kChannelsInner) {
    const int64_t c = static_cast<int64_t>(blockIdx.x) * kChannelTile + threadIdx.x;
    return c < g.channels ? c : -1;
  } else {
    return blockIdx.x;
  }
}

// Calls visit(index) for this thread's share of channel c (c >= 0) in split blockIdx.y, in a fixed order.
template <bool kChannelsInner, typename Visit>
__device__ __forceinline__ void for_each_value(const ReduceGrid& g, int64_t c, Visit&& visit) {
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * g.per_split;
  if constexpr (kChannelsInner) {
    const int64_t end = std::min(g.outer, begin + g.per_split);
    for (int64_t r = begin + threadIdx.y; r < end; r += kRowLanes) visit(r * g.channels + c);
  } else {
    const int64_t end = std::min(g.outer * g.inner, begin + g.per_split);
    const int64_t plane_stride = g.channels * g.inner;
    for (int64_t m = begin + threadIdx.x; m < end; m += kThreads) {
      visit((m / g.inner) * plane_stride + c * g.inner + m % g.inner);
    }
  }
}

// Merges the block's per-thread states in a fixed order into partials[blockIdx.y * C + c].
template <bool kChannelsInner, typename State, typename Merge>
__device__ __forceinline__ void store_block_partial(State* shared_states, const State& mine, int64_t c,
                                                    const ReduceGrid& g, State* partials, Merge&& merge) {
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  shared_states[tid] = mine;
  __syncthreads();
  if constexpr (kChannelsInner) {
    if (threadIdx.y == 0 && c >= 0) {
      State total = shared_states[threadIdx.x];
      for (int lane = 1; lane < kRowLanes; ++lane)
        total = merge(total, shared_states[lane * kChannelTile + threadIdx.x]);
      partials[static_cast<int64_t>(blockIdx.y) * g.channels + c] = total;
    }
  } else {
    for (int stride = kThreads / 2; stride > 0; stride /= 2) {
      if (tid < stride) shared_states[tid] = merge(shared_states[tid], shared_states[tid + stride]);
      __syncthreads();
    }
    if (tid == 0) partials[static_cast<int64_t>(blockIdx.y) * g.channels + c] = shared_states[0];
  }
}

inline dim3 reduce_blocks(const ReduceGrid& g, bool channels_inner) {
  return dim3(
      static_cast<unsigned>(channels_inner ? ceil_div(g.channels, int64_t{kChannelTile}) : g.channels),
      static_cast<unsigned>(g.splits));
}

inline dim3 reduce_threads(bool channels_inner) {
  return channels_inner ? dim3(kChannelTile, kRowLanes) : dim3(kThreads);
}

template <typename T>
inline at::Tensor partial_buffer(const at::Tensor& like, int64_t states) {
  return at::empty({states * static_cast<int64_t>(sizeof(T))}, like.options().dtype(at::kByte));
}

__device__ __forceinline__ int64_t channel_of(int64_t i, int64_t channels, int64_t inner,
                                              bool channels_inner) {
  return channels_inner ? i % channels : (i / inner) % channels;
}

// Sums of two per-channel quantities (the normalisation backward's sum(g) and sum(g * xhat)).
template <typename acc_t>
struct SumPair {
  acc_t first, second;
};

template <typename acc_t>
C10_HOST_DEVICE inline SumPair<acc_t> add_pairs(const SumPair<acc_t>& a, const SumPair<acc_t>& b) {
  return {a.first + b.first, a.second + b.second};
}

}  // namespace channel_reduce
}  // namespace cuda
}  // namespace fastcnn
