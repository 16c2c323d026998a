// The mainloop of the GEMM core: a two-stage shared-memory pipeline over a block's K tiles. Tile kt + 1
// is requested before tile kt is multiplied; the stage it goes to was last read in iteration kt - 1,
// which every thread has left through that iteration's closing barrier, so the overwrite cannot race
// with a reader. A deeper pipeline or an sm_90 mainloop goes next to this one, with the same loaders and
// warp tiles.
#pragma once

#include <cstdint>

#include "cuda/common/mma.cuh"

namespace fastcnn {
namespace cuda {

template <typename Traits, typename LoaderA, typename LoaderB, typename WarpTile>
__device__ __forceinline__ void run_pipeline(LoaderA& load_a, LoaderB& load_b,
                                             typename LoaderA::Tile::Elem* smem, int64_t kt_begin,
                                             int64_t kt_end, WarpTile& tile) {
  constexpr int kBK = Traits::kBK;
  auto stage_a = [&](int s) { return smem + s * Traits::kStageElems; };
  auto stage_b = [&](int s) { return smem + s * Traits::kStageElems + Traits::TileA::kElems; };
  if (kt_begin >= kt_end) return;
  load_a.issue(stage_a(0), kt_begin * kBK);
  load_b.issue(stage_b(0), kt_begin * kBK);
  load_a.store(stage_a(0));
  load_b.store(stage_b(0));
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();
  for (int64_t kt = kt_begin; kt < kt_end; ++kt) {
    const int cur = static_cast<int>((kt - kt_begin) & 1);
    const bool has_next = kt + 1 < kt_end;
    if (has_next) {
      load_a.issue(stage_a(cur ^ 1), (kt + 1) * kBK);
      load_b.issue(stage_b(cur ^ 1), (kt + 1) * kBK);
    }
    cp_async_commit();
    tile.multiply(stage_a(cur), stage_b(cur));
    if (has_next) {
      load_a.store(stage_a(cur ^ 1));
      load_b.store(stage_b(cur ^ 1));
    }
    // Own cp.async copies land, then the barrier publishes every thread's copies and stores.
    cp_async_wait_all();
    __syncthreads();
  }
}

}  // namespace cuda
}  // namespace fastcnn
