// Tile configurations of the GEMM core and the traits that put a kernel together from them: which
// operand iterators a mode uses, the shared-memory tiles and their size, the loaders. The host picks a
// configuration in gemm.cu (tile choice, see benchmarks/NOTES.md for why).
#pragma once

#include <ATen/OpMathType.h>

#include <cstddef>
#include <type_traits>

#include "cuda/gemm/params.cuh"
#include "cuda/gemm/tile_iterators.cuh"
#include "cuda/gemm/tile_loader.cuh"

namespace fastcnn {
namespace cuda {

// Tensor-core tile: kBM x kBN per block, kWarpsM x kWarpsN warps, BK = 64 bytes of K per stage, kStages
// K tiles in flight in shared memory (mainloop.cuh).
template <typename T, int kBM_, int kBN_, int kWarpsM_, int kWarpsN_, int kStages_>
struct MmaConfig {
  static constexpr bool kUseMma = true;
  static constexpr int kBM = kBM_, kBN = kBN_, kWarpsM = kWarpsM_, kWarpsN = kWarpsN_;
  static constexpr int kStages = kStages_;
  static constexpr int kBK = 64 / static_cast<int>(sizeof(T));
  static constexpr int kThreads = kWarpsM * kWarpsN * 32;
  static constexpr int kWarpM = kBM / kWarpsM, kWarpN = kBN / kWarpsN;
  static constexpr bool kHalfPrecision = sizeof(T) == 2;  // m16n8k16 (else tf32 m16n8k8)
  static constexpr int kMmaK = kHalfPrecision ? 16 : 8;
  static constexpr int kFragM = kWarpM / 16, kFragN = kWarpN / 8;
  static_assert(sizeof(T) == 2 || std::is_same_v<T, float>, "tensor-core tiles take 16-bit or fp32 (tf32)");
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0, "warp tiles are whole 16x16 blocks (ldmatrix x4 on B)");
  static_assert(kBK % kMmaK == 0, "BK must hold whole mma K steps");
  static_assert(kStages >= 2, "the mainloop overlaps at least one K tile with the math");
};

// CUDA-core tile for fp64 and exact fp32: 64x64 per block, 16x16 threads, 4x4 outputs each.
template <typename T>
struct FmaConfig {
  static constexpr bool kUseMma = false;
  static constexpr int kBM = 64, kBN = 64;
  static constexpr int kBK = 64 / static_cast<int>(sizeof(T));
  static constexpr int kThreads = 256;
  static constexpr int kThreadM = 4, kThreadN = 4;
  static constexpr int kStages = 3;
  static_assert(kBM == 16 * kThreadM && kBN == 16 * kThreadN, "16x16 threads cover the tile");
};

// The operand iterators of each mode.
template <GemmMode kMode>
struct GemmOperands;

template <>
struct GemmOperands<GemmMode::kForward> {
  template <int kChunks, int kLineStep>
  using A = ForwardInputIterator<kChunks, kLineStep>;
  template <int kChunks, int kLineStep>
  using B = WeightRowsIterator<kChunks, kLineStep>;
};

template <>
struct GemmOperands<GemmMode::kDgrad> {
  template <int kChunks, int kLineStep>
  using A = DgradGradOutputIterator<kChunks, kLineStep>;
  template <int kChunks, int kLineStep>
  using B = WeightRowsIterator<kChunks, kLineStep>;
};

template <>
struct GemmOperands<GemmMode::kWgrad> {
  template <int kChunks, int kLineStep>
  using A = WgradGradOutputIterator<kChunks, kLineStep>;
  template <int kChunks, int kLineStep>
  using B = WgradInputIterator<kChunks, kLineStep>;
};

template <typename T, typename Cfg, GemmMode kMode>
struct GemmKernelTraits {
  static constexpr bool kKMajor = kMode != GemmMode::kWgrad;
  static constexpr bool kToWorkspace = kMode == GemmMode::kWgrad;  // split-K partials, reduced after
  using TileA = SmemTile<T, Cfg::kBM, Cfg::kBK, kKMajor>;
  using TileB = SmemTile<T, Cfg::kBN, Cfg::kBK, kKMajor>;
  using LoaderA = TileLoader<T, GemmOperands<kMode>::template A, Cfg::kBM, Cfg::kBK, Cfg::kThreads>;
  using LoaderB = TileLoader<T, GemmOperands<kMode>::template B, Cfg::kBN, Cfg::kBK, Cfg::kThreads>;
  static_assert(std::is_same_v<typename LoaderA::Tile, TileA> &&
                    std::is_same_v<typename LoaderB::Tile, TileB>,
                "loaders fill the kernel's tiles");
  static constexpr int kBK = Cfg::kBK;
  static constexpr int kStages = Cfg::kStages;
  static constexpr int kStageElems = TileA::kElems + TileB::kElems;
  // The tensor-core epilogue stages the block's acc_t C tile in the same shared memory.
  static constexpr size_t kPipelineBytes = static_cast<size_t>(kStages) * kStageElems * sizeof(T);
  static constexpr size_t kStagedCBytes =
      Cfg::kUseMma ? static_cast<size_t>(Cfg::kBM) * kStagedPitch<Cfg::kBN> * sizeof(at::opmath_type<T>) : 0;
  static constexpr size_t kSmemBytes = kPipelineBytes > kStagedCBytes ? kPipelineBytes : kStagedCBytes;
};

}  // namespace cuda
}  // namespace fastcnn
