// Moves one operand tile (kRows x kBK) of the GEMM core from global to shared memory, whatever the
// operand: the Iterator (tile_iterators.cuh) says where each element comes from. Thread `tid` owns
// kChunks chunks of kVec elements along the contiguous dimension, on lines line0, line0 + kLineStep, ...
// (a line is a tile row when K-major, a k when MN-major). Tiles are requested in K order from the one at
// k_begin, one issue() per tile (cp.async
// straight into shared memory when the chunk is aligned and needs no arithmetic, otherwise predicated
// loads into registers) and, on the register path, written with store(), which applies act'(y) to
// grad_output on the way.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include <ATen/OpMathType.h>

#include "common/activation.h"
#include "cuda/common/mma.cuh"
#include "cuda/gemm/params.cuh"
#include "cuda/gemm/tile_iterators.cuh"

namespace fastcnn {
namespace cuda {

// Shared-memory tile of `kRows` GEMM rows by kBK. Rows are padded so that ldmatrix row addresses and
// the scalar fragment reads of the tf32/FMA paths fall into distinct banks, keeping 16-byte alignment.
template <typename T, int kRows, int kBK, bool kKMajor>
struct SmemTile {
  using Elem = T;
  static constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  static constexpr int kPitch = kKMajor ? kBK + kVec : kRows + 8;
  static constexpr int kElems = (kKMajor ? kRows : kBK) * kPitch;
  static_assert((kPitch * sizeof(T)) % 16 == 0, "shared-memory rows must stay 16-byte aligned");
  static_assert(kRows % 8 == 0 && kBK % kVec == 0, "tile edges must hold whole 16-byte chunks");
  __device__ static __forceinline__ int offset(int row, int k) {
    return kKMajor ? row * kPitch + k : k * kPitch + row;
  }
};

template <typename T, template <int, int> class Iterator, int kRows, int kBK, int kThreads>
struct TileLoader {
  using acc_t = at::opmath_type<T>;
  static constexpr bool kKMajor = Iterator<1, 1>::kKMajor;
  static constexpr bool kIsA = Iterator<1, 1>::kIsA;
  static constexpr bool kGradOperand = Iterator<1, 1>::kGradOperand;
  using Tile = SmemTile<T, kRows, kBK, kKMajor>;
  static constexpr int kVec = Tile::kVec;
  static constexpr int kChunksPerLine = (kKMajor ? kBK : kRows) / kVec;
  static constexpr int kLines = kKMajor ? kRows : kBK;
  static_assert(kThreads % kChunksPerLine == 0, "a thread's chunks must share one contiguous offset");
  static constexpr int kLineStep = kThreads / kChunksPerLine;
  static_assert(kLines % kLineStep == 0, "the tile must split evenly over the threads");
  static constexpr int kChunks = kLines / kLineStep;

  const GemmParams& p;
  const T* src;
  const T* aux;  // y for act'(y) on grad_output; nullptr when there is nothing to apply
  bool vec;
  bool use_async;
  ChunkOrigin origin;
  Iterator<kChunks, kLineStep> iter;
  // Register staging for the non-cp.async path.
  uint4 stage[kChunks];
  uint4 stage_aux[kGradOperand ? kChunks : 1];

  __device__ TileLoader(const GemmParams& params, int64_t row_tile0, int g, int tid, int64_t k_begin)
      : p(params) {
    src = static_cast<const T*>(kIsA ? p.a : p.b);
    aux = kGradOperand && p.grad_activation != 0 ? static_cast<const T*>(p.a_aux) : nullptr;
    vec = kIsA ? p.a_vec : p.b_vec;
    use_async = vec && aux == nullptr && has_cp_async();
    origin.contig0 = (tid % kChunksPerLine) * kVec;
    origin.line0 = tid / kChunksPerLine;
    iter.init(p, row_tile0, origin, g, k_begin, kBK);
  }

  __device__ __forceinline__ int smem_offset(int i) const {
    const int line = origin.line0 + i * kLineStep;
    return kKMajor ? Tile::offset(line, origin.contig0) : Tile::offset(origin.contig0, line);
  }

  // Requests the next K tile: cp.async into `smem`, or loads into registers for store() to write later.
  __device__ __forceinline__ void issue(T* smem) {
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      if (vec) {
        // With vec set, the host guaranteed that a chunk never straddles a (kh, kw) tap, a group or a
        // tensor edge, so element 0 decides for the whole chunk.
        int64_t off = 0;
        const bool ok = iter.source(p, i, 0, off);
        if (use_async) {
          cp_async_16(smem + smem_offset(i), ok ? src + off : src, ok);
        } else {
          stage[i] = ok ? __ldg(reinterpret_cast<const uint4*>(src + off)) : make_uint4(0, 0, 0, 0);
          if constexpr (kGradOperand) {
            stage_aux[i] = ok ? __ldg(reinterpret_cast<const uint4*>(aux + off)) : make_uint4(0, 0, 0, 0);
          }
        }
      } else {
        T* vals = reinterpret_cast<T*>(&stage[i]);
        T* aux_vals = reinterpret_cast<T*>(&stage_aux[kGradOperand ? i : 0]);
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          int64_t off = 0;
          const bool ok = iter.source(p, i, e, off);
          vals[e] = ok ? src[off] : static_cast<T>(0.f);
          if constexpr (kGradOperand) {
            if (aux != nullptr) aux_vals[e] = ok ? aux[off] : static_cast<T>(0.f);
          }
        }
      }
    }
    iter.advance(p, kBK);
  }

  // Writes the registers of the last issue() to `smem`, applying act'(y) to grad_output on the way.
  __device__ __forceinline__ void store(T* smem) {
    if (use_async) return;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      if constexpr (kGradOperand) {
        if (aux != nullptr) {
          T* vals = reinterpret_cast<T*>(&stage[i]);
          const T* aux_vals = reinterpret_cast<const T*>(&stage_aux[i]);
          const Activation act = static_cast<Activation>(p.grad_activation);
#pragma unroll
          for (int e = 0; e < kVec; ++e) {
            vals[e] = static_cast<T>(
                activation_grad<acc_t>(static_cast<acc_t>(vals[e]), static_cast<acc_t>(aux_vals[e]), act));
          }
        }
      }
      *reinterpret_cast<uint4*>(smem + smem_offset(i)) = stage[i];
    }
  }
};

}  // namespace cuda
}  // namespace fastcnn
