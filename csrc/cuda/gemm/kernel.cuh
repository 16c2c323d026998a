// The GEMM core's kernel, put together from its pieces: per block, the operand loaders
// (tile_loader.cuh over tile_iterators.cuh) feed the mainloop (mainloop.cuh), whose warp tile
// (warp_tile.cuh) accumulates the block's C tile and stores it through the epilogue (epilogue.cuh).
// Group and split-K index blockIdx.z. Launched by gemm.cu only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/common/helpers.cuh"
#include "cuda/common/shared.cuh"
#include "cuda/gemm/kernel_traits.cuh"
#include "cuda/gemm/mainloop.cuh"
#include "cuda/gemm/params.cuh"
#include "cuda/gemm/warp_tile.cuh"

namespace fastcnn {
namespace cuda {

template <typename T, typename Cfg, GemmMode kMode>
__global__ void __launch_bounds__(Cfg::kThreads, 1) conv_gemm_kernel(const __grid_constant__ GemmParams p) {
  using Traits = GemmKernelTraits<T, Cfg, kMode>;
  using WarpTile =
      std::conditional_t<Cfg::kUseMma, MmaWarpTile<T, Cfg, Traits>, FmaThreadTile<T, Cfg, Traits>>;
  constexpr int kBK = Cfg::kBK;

  FASTCNN_EXTERN_SHARED(smem_raw);
  T* const smem = reinterpret_cast<T*>(smem_raw);

  const int tid = threadIdx.x;
  const int g = blockIdx.z / p.splits;
  const int split = blockIdx.z - g * p.splits;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * Cfg::kBM;
  const int n0 = blockIdx.y * Cfg::kBN;
  const int64_t k_tiles = ceil_div(p.K, kBK);
  const int64_t kt_begin = split * p.k_tiles_per_split;
  const int64_t kt_end = k_tiles < kt_begin + p.k_tiles_per_split ? k_tiles : kt_begin + p.k_tiles_per_split;

  typename Traits::LoaderA load_a(p, m0, g, tid, kt_begin * kBK);
  typename Traits::LoaderB load_b(p, n0, g, tid, kt_begin * kBK);
  WarpTile tile(tid);
  run_pipeline<Traits>(load_a, load_b, smem, kt_begin, kt_end, tile);
  tile.store(p, m0, n0, g, split, smem_raw);
}

}  // namespace cuda
}  // namespace fastcnn
