// The math of the GEMM core: what one thread accumulates of a block's C tile, and how it leaves through
// the epilogue. MmaWarpTile: warp-level mma.sync (fp16/bf16 m16n8k16 with ldmatrix fragments, tf32
// m16n8k8 from scalar shared-memory reads), fp32 accumulators. FmaThreadTile: a 4x4 outputs-per-thread
// CUDA-core tile for fp64 and exact fp32. Both take shared-memory tiles laid out by SmemTile.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "cuda/common/mma.cuh"
#include "cuda/gemm/epilogue.cuh"
#include "cuda/gemm/params.cuh"

namespace fastcnn {
namespace cuda {

template <typename T, typename Cfg, typename Traits>
struct MmaWarpTile {
  using acc_t = at::opmath_type<T>;
  using TileA = typename Traits::TileA;
  using TileB = typename Traits::TileB;
  static constexpr int kFragM = Cfg::kFragM, kFragN = Cfg::kFragN;

  int tid, lane, wm0, wn0, lane_g, lane_t;
  float acc[kFragM][kFragN][4];

  __device__ explicit MmaWarpTile(int thread) {
    tid = thread;
    lane = tid % 32;
    const int warp = tid / 32;
    wm0 = (warp / Cfg::kWarpsN) * Cfg::kWarpM;
    wn0 = (warp % Cfg::kWarpsN) * Cfg::kWarpN;
    lane_g = lane / 4;
    lane_t = lane % 4;
#pragma unroll
    for (int mi = 0; mi < kFragM; ++mi)
#pragma unroll
      for (int ni = 0; ni < kFragN; ++ni)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.f;
  }

  __device__ __forceinline__ void multiply(const T* As, const T* Bs) {
#pragma unroll
    for (int ks = 0; ks < Cfg::kBK; ks += Cfg::kMmaK) {
      uint32_t af[kFragM][4];
      uint32_t bf[kFragN][2];
      if constexpr (Cfg::kHalfPrecision) {
        const int j = lane % 8, mat = lane / 8;
#pragma unroll
        for (int mi = 0; mi < kFragM; ++mi) {
          // a0..a3 = (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15).
          if constexpr (Traits::kKMajor) {
            ldmatrix_x4(af[mi], As + TileA::offset(wm0 + mi * 16 + lane % 16, ks + (lane / 16) * 8));
          } else {
            ldmatrix_x4_trans(af[mi],
                              As + TileA::offset(wm0 + mi * 16 + (mat % 2) * 8, ks + (mat / 2) * 8 + j));
          }
        }
#pragma unroll
        for (int np = 0; np < kFragN / 2; ++np) {
          // Matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15) give b0, b1 of
          // two neighbouring n8 fragments.
          uint32_t r[4];
          if constexpr (Traits::kKMajor) {
            ldmatrix_x4(r, Bs + TileB::offset(wn0 + np * 16 + (mat / 2) * 8 + j, ks + (mat % 2) * 8));
          } else {
            ldmatrix_x4_trans(r, Bs + TileB::offset(wn0 + np * 16 + (mat / 2) * 8, ks + (mat % 2) * 8 + j));
          }
          bf[2 * np][0] = r[0];
          bf[2 * np][1] = r[1];
          bf[2 * np + 1][0] = r[2];
          bf[2 * np + 1][1] = r[3];
        }
#pragma unroll
        for (int mi = 0; mi < kFragM; ++mi)
#pragma unroll
          for (int ni = 0; ni < kFragN; ++ni) mma_m16n8k16<T>(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
      } else {
        // tf32 fragments: a (g, t), (g+8, t), (g, t+4), (g+8, t+4); b (k t, n g), (k t+4, n g).
#pragma unroll
        for (int mi = 0; mi < kFragM; ++mi) {
          const int r = wm0 + mi * 16 + lane_g;
          af[mi][0] = to_tf32(static_cast<float>(As[TileA::offset(r, ks + lane_t)]));
          af[mi][1] = to_tf32(static_cast<float>(As[TileA::offset(r + 8, ks + lane_t)]));
          af[mi][2] = to_tf32(static_cast<float>(As[TileA::offset(r, ks + lane_t + 4)]));
          af[mi][3] = to_tf32(static_cast<float>(As[TileA::offset(r + 8, ks + lane_t + 4)]));
        }
#pragma unroll
        for (int ni = 0; ni < kFragN; ++ni) {
          const int c = wn0 + ni * 8 + lane_g;
          bf[ni][0] = to_tf32(static_cast<float>(Bs[TileB::offset(c, ks + lane_t)]));
          bf[ni][1] = to_tf32(static_cast<float>(Bs[TileB::offset(c, ks + lane_t + 4)]));
        }
#pragma unroll
        for (int mi = 0; mi < kFragM; ++mi)
#pragma unroll
          for (int ni = 0; ni < kFragN; ++ni) mma_m16n8k8_tf32(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
      }
    }
  }

  // Accumulator fragment (mi, ni) holds rows g and g + 8, columns 2t and 2t + 1 of its 16x8 block. The
  // block's C tile goes through shared memory (the pipeline's stages, free once every thread has left
  // the mainloop) and leaves in 16-byte chunks (epilogue_store_tile).
  __device__ __forceinline__ void store(const GemmParams& p, int64_t m0, int n0, int g, int split,
                                        void* smem) const {
    constexpr int kPitch = kStagedPitch<Cfg::kBN>;
    acc_t* const tile = static_cast<acc_t*>(smem);
    // No cp.async is in flight here (the mainloop's groups past its last tile are empty); the barrier
    // keeps the staging writes off the stages other warps may still be multiplying from.
    __syncthreads();
#pragma unroll
    for (int mi = 0; mi < kFragM; ++mi) {
      const int row = wm0 + mi * 16 + lane_g;
#pragma unroll
      for (int ni = 0; ni < kFragN; ++ni) {
        const int col = wn0 + ni * 8 + 2 * lane_t;
        tile[row * kPitch + col] = acc[mi][ni][0];
        tile[row * kPitch + col + 1] = acc[mi][ni][1];
        tile[(row + 8) * kPitch + col] = acc[mi][ni][2];
        tile[(row + 8) * kPitch + col + 1] = acc[mi][ni][3];
      }
    }
    __syncthreads();
    epilogue_store_tile<T, acc_t, Traits::kToWorkspace, Cfg::kBM, Cfg::kBN, Cfg::kThreads>(
        p.ep, p.M, p.N, g, split, m0, n0, tile, tid);
  }
};

// Thread (ty, tx) of 16 x 16 owns rows ty + 16 i and columns tx + 16 j: A reads broadcast within a
// half-warp and B reads spread over the banks.
template <typename T, typename Cfg, typename Traits>
struct FmaThreadTile {
  using acc_t = at::opmath_type<T>;
  using TileA = typename Traits::TileA;
  using TileB = typename Traits::TileB;
  static constexpr int kTM = Cfg::kThreadM, kTN = Cfg::kThreadN;

  int tx, ty;
  acc_t acc[kTM][kTN];

  __device__ explicit FmaThreadTile(int tid) : tx(tid % 16), ty(tid / 16) {
#pragma unroll
    for (int i = 0; i < kTM; ++i)
#pragma unroll
      for (int j = 0; j < kTN; ++j) acc[i][j] = acc_t(0);
  }

  __device__ __forceinline__ void multiply(const T* As, const T* Bs) {
#pragma unroll
    for (int k = 0; k < Cfg::kBK; ++k) {
      acc_t a[kTM], b[kTN];
#pragma unroll
      for (int i = 0; i < kTM; ++i) a[i] = static_cast<acc_t>(As[TileA::offset(ty + 16 * i, k)]);
#pragma unroll
      for (int j = 0; j < kTN; ++j) b[j] = static_cast<acc_t>(Bs[TileB::offset(tx + 16 * j, k)]);
#pragma unroll
      for (int i = 0; i < kTM; ++i)
#pragma unroll
        for (int j = 0; j < kTN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
  }

  __device__ __forceinline__ void store(const GemmParams& p, int64_t m0, int n0, int g, int split,
                                        void*) const {
#pragma unroll
    for (int i = 0; i < kTM; ++i) {
      const int64_t off = epilogue_row_offset(p.ep, p.M, g, m0 + ty + 16 * i);
#pragma unroll
      for (int j = 0; j < kTN; ++j)
        epilogue_store<T, acc_t, Traits::kToWorkspace>(p.ep, p.N, g, split, off, n0 + tx + 16 * j, acc[i][j]);
    }
  }
};

}  // namespace cuda
}  // namespace fastcnn
