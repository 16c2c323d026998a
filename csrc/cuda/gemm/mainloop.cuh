// The mainloop of the GEMM core: a kStages-deep shared-memory pipeline over a block's K tiles with one
// block barrier per K tile. The loaders hand out the block's K tiles in order, one per issue(). kStages - 1 tiles are requested before the first multiply; iteration kt waits
// until tile kt has landed (cp.async.wait_group kStages - 2: every iteration commits exactly one group,
// empty past the last tile), passes the barrier, requests tile kt + kStages - 1 into the stage that tile
// kt - 1 occupied, and multiplies tile kt. The barrier is what makes that overwrite safe: every thread
// finished reading tile kt - 1 before any thread passes it. Loaders on the register path (act'(y) applied
// on load, unaligned channels, no cp.async) write their tile to shared memory after the multiply, into
// that same free stage; the next iteration's barrier publishes it.
#pragma once

#include <cstdint>

#include "cuda/common/mma.cuh"

namespace fastcnn {
namespace cuda {

template <typename Traits, typename LoaderA, typename LoaderB, typename WarpTile>
__device__ __forceinline__ void run_pipeline(LoaderA& load_a, LoaderB& load_b,
                                             typename LoaderA::Tile::Elem* smem, int64_t kt_begin,
                                             int64_t kt_end, WarpTile& tile) {
  constexpr int kStages = Traits::kStages;
  auto stage_a = [&](int s) { return smem + s * Traits::kStageElems; };
  auto stage_b = [&](int s) { return smem + s * Traits::kStageElems + Traits::TileA::kElems; };
  if (kt_begin >= kt_end) return;
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (kt_begin + s < kt_end) {
      load_a.issue(stage_a(s));
      load_b.issue(stage_b(s));
      load_a.store(stage_a(s));
      load_b.store(stage_b(s));
    }
    cp_async_commit();
  }
  int read_stage = 0;
  int write_stage = kStages - 1;
  for (int64_t kt = kt_begin; kt < kt_end; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();
    const int64_t next = kt + kStages - 1;
    const bool has_next = next < kt_end;
    if (has_next) {
      load_a.issue(stage_a(write_stage));
      load_b.issue(stage_b(write_stage));
    }
    cp_async_commit();
    tile.multiply(stage_a(read_stage), stage_b(read_stage));
    if (has_next) {
      load_a.store(stage_a(write_stage));
      load_b.store(stage_b(write_stage));
    }
    read_stage = read_stage == kStages - 1 ? 0 : read_stage + 1;
    write_stage = write_stage == kStages - 1 ? 0 : write_stage + 1;
  }
}

}  // namespace cuda
}  // namespace fastcnn
