// The fastcnn GEMM core: one tiled kernel computes C[M, N] = A[M, K] * B[N, K]^T per group for the three
// convolution GEMMs and for linear (a 1x1 convolution of a 1x1 image). No im2col matrix is ever formed:
// the tile loaders gather A and B straight from the NHWC tensors.
//
//   mode      M                 N              K                 A (gathered)          B
//   forward   N*OH*OW pixels    OC/groups      KH*KW*Cg          input, (kh, kw, c)    weight [OC, KH, KW,
//   Cg] dgrad     N*H*W pixels      C/groups       KH*KW*OCg         grad_out * act'(y)    weight [C, KH, KW,
//   OCg] wgrad     OC/groups         KH*KW*Cg       N*OH*OW pixels    grad_out * act'(y)    input, (kh, kw,
//   c)
//
// Forward and dgrad operands are contiguous along K ("K-major"): shared-memory tiles are [rows][BK].
// Wgrad operands are contiguous along M/N ("MN-major"): tiles are [BK][rows]. Either way a thread moves
// 16-byte chunks along the contiguous dimension. Tiles are double-buffered: the next tile is requested
// (cp.async straight into shared memory when the chunk is aligned and needs no arithmetic, otherwise
// predicated loads into registers) before the current tile is multiplied, and registers are written to
// shared memory after. The math is warp-level mma.sync (fp16/bf16 m16n8k16, tf32 m16n8k8, fp32
// accumulate) or, for fp64 and exact fp32, a 4x4-per-thread FMA tile. Group and split-K index blockIdx.z.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/activation.h"
#include "cuda/common/epilogue.cuh"
#include "cuda/common/launch.cuh"
#include "cuda/common/mma.cuh"

namespace fastcnn {
namespace cuda {

enum class GemmMode : int { kForward = 0, kDgrad = 1, kWgrad = 2 };

// Geometry of one implicit GEMM. Spatial sizes, channel counts and per-group K of forward/dgrad fit in
// int32 (checked by the host); pixel counts (M of forward/dgrad, K of wgrad) and all offsets are int64.
struct GemmParams {
  int64_t M;
  int N;
  int64_t K;
  int groups;
  int splits;                 // K splits (wgrad only; 1 otherwise), blockIdx.z = group * splits + split
  int64_t k_tiles_per_split;  // BK-wide K tiles per split
  int in_h, in_w, in_c, out_h, out_w, out_c;
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int in_cg, out_cg;    // channels per group
  const void* a;        // forward: input; dgrad, wgrad: grad_output
  const void* a_aux;    // dgrad, wgrad: the op's output y for act'(y); nullptr when no activation
  const void* b;        // forward: weight [OC,KH,KW,Cg]; dgrad: weight [C,KH,KW,OCg]; wgrad: input
  int grad_activation;  // activation whose derivative scales A as it is loaded (dgrad, wgrad)
  bool a_vec, b_vec;    // the operand may be moved in aligned 16-byte chunks
  EpilogueParams ep;
};

// q = a / b, r = a % b for non-negative a, with the cheaper 32-bit division whenever a fits.
__device__ __forceinline__ void divmod_nonneg(int64_t a, int b, int64_t& q, int& r) {
  if (a <= INT32_MAX) {
    const int a32 = static_cast<int>(a);
    q = a32 / b;
    r = a32 - static_cast<int>(q) * b;
  } else {
    q = a / b;
    r = static_cast<int>(a - q * b);
  }
}

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

// Moves one operand tile (kRows x kBK) from global to shared memory. Thread `tid` owns kChunks chunks of
// kVec elements along the contiguous dimension: the same offset `contig0` in every chunk, on lines
// line0, line0 + kLineStep, ... (a line is a tile row when K-major, a k when MN-major).
template <typename T, GemmMode kMode, bool kIsA, int kRows, int kBK, int kThreads>
struct TileLoader {
  using acc_t = at::opmath_type<T>;
  static constexpr bool kKMajor = kMode != GemmMode::kWgrad;
  static constexpr bool kGradOperand = kIsA && kMode != GemmMode::kForward;
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
  int contig0;
  int line0;
  // K-major: per chunk line (a GEMM row), the gather origin of that row.
  int64_t line_base[kKMajor ? kChunks : 1];
  int line_y0[kKMajor ? kChunks : 1];
  int line_x0[kKMajor ? kChunks : 1];
  bool line_ok[kKMajor ? kChunks : 1];
  // MN-major: the thread's single column chunk; col_index is its first GEMM row (M or N index).
  int col_index;
  int64_t col_off;
  int col_dy, col_dx;
  bool col_ok;
  // Register staging for the non-cp.async path.
  uint4 stage[kChunks];
  uint4 stage_aux[kGradOperand ? kChunks : 1];

  __device__ TileLoader(const GemmParams& params, int64_t row_tile0, int g, int tid) : p(params) {
    src = static_cast<const T*>(kIsA ? p.a : p.b);
    aux = kGradOperand && p.grad_activation != 0 ? static_cast<const T*>(p.a_aux) : nullptr;
    vec = kIsA ? p.a_vec : p.b_vec;
    use_async = vec && aux == nullptr && has_cp_async();
    contig0 = (tid % kChunksPerLine) * kVec;
    line0 = tid / kChunksPerLine;
    if constexpr (kKMajor) {
#pragma unroll
      for (int i = 0; i < kChunks; ++i) {
        const int64_t row = row_tile0 + line0 + i * kLineStep;
        line_base[i] = 0;
        line_y0[i] = 0;
        line_x0[i] = 0;
        if constexpr (kIsA) {
          line_ok[i] = row < p.M;
          if (line_ok[i]) {
            // forward: row is an output pixel; dgrad: row is an input pixel.
            const int plane_w = kMode == GemmMode::kForward ? p.out_w : p.in_w;
            const int plane = plane_w * (kMode == GemmMode::kForward ? p.out_h : p.in_h);
            int64_t n;
            int rem;
            divmod_nonneg(row, plane, n, rem);
            const int py = rem / plane_w;
            const int px = rem - py * plane_w;
            if constexpr (kMode == GemmMode::kForward) {
              line_base[i] = n * p.in_h * p.in_w * p.in_c + static_cast<int64_t>(g) * p.in_cg;
              line_y0[i] = py * p.stride_h - p.pad_h;
              line_x0[i] = px * p.stride_w - p.pad_w;
            } else {
              line_base[i] = n * p.out_h * p.out_w * p.out_c + static_cast<int64_t>(g) * p.out_cg;
              line_y0[i] = py + p.pad_h;
              line_x0[i] = px + p.pad_w;
            }
          }
        } else {
          line_ok[i] = row < p.N;
          line_base[i] = (static_cast<int64_t>(g) * p.N + row) * p.K;
        }
      }
    } else {
      col_index = static_cast<int>(row_tile0) + contig0;
      column_state(col_index, g, col_ok, col_off, col_dy, col_dx);
    }
  }

  // MN-major column state: wgrad A columns are output channels, wgrad B columns are (kh, kw, c).
  __device__ __forceinline__ void column_state(int col, int g, bool& ok, int64_t& off, int& dy,
                                               int& dx) const {
    dy = 0;
    dx = 0;
    if constexpr (kIsA) {
      ok = col < p.M;
      off = static_cast<int64_t>(g) * p.out_cg + col;
    } else {
      ok = col < p.N;
      const int c = col % p.in_cg;
      const int tap = col / p.in_cg;
      const int kw = tap % p.kernel_w;
      const int kh = tap / p.kernel_w;
      dy = kh * p.dilation_h - p.pad_h;
      dx = kw * p.dilation_w - p.pad_w;
      off = static_cast<int64_t>(g) * p.in_cg + c;
    }
  }

  // Global offset of element e of chunk i of the K tile starting at k0; false when it lies outside the
  // tensor (zero padding, tile tails), in which case the element is zero.
  __device__ __forceinline__ bool source(int i, int64_t k0, int e, int g, int64_t& off) const {
    if constexpr (kKMajor) {
      const int64_t k = k0 + contig0 + e;
      if (!line_ok[i] || k >= p.K) return false;
      if constexpr (!kIsA) {
        off = line_base[i] + k;
        return true;
      } else {
        const int kk = static_cast<int>(k);  // forward/dgrad K fits in int32
        const int cg = kMode == GemmMode::kForward ? p.in_cg : p.out_cg;
        const int c = kk % cg;
        const int tap = kk / cg;
        const int kw = tap % p.kernel_w;
        const int kh = tap / p.kernel_w;
        if constexpr (kMode == GemmMode::kForward) {
          const int iy = line_y0[i] + kh * p.dilation_h;
          const int ix = line_x0[i] + kw * p.dilation_w;
          if (iy < 0 || iy >= p.in_h || ix < 0 || ix >= p.in_w) return false;
          off = line_base[i] + (static_cast<int64_t>(iy) * p.in_w + ix) * p.in_c + c;
          return true;
        } else {
          // Input pixel (y, x) receives output pixel (oy, ox) through tap (kh, kw) iff
          // oy * stride = y + pad - kh * dilation exactly.
          const int ty = line_y0[i] - kh * p.dilation_h;
          const int tx = line_x0[i] - kw * p.dilation_w;
          if (ty < 0 || tx < 0) return false;
          const int oy = ty / p.stride_h;
          const int ox = tx / p.stride_w;
          if (oy * p.stride_h != ty || ox * p.stride_w != tx || oy >= p.out_h || ox >= p.out_w) return false;
          off = line_base[i] + (static_cast<int64_t>(oy) * p.out_w + ox) * p.out_c + c;
          return true;
        }
      }
    } else {
      const int64_t k = k0 + line0 + i * kLineStep;  // a pixel index
      if (k >= p.K) return false;
      bool ok = col_ok;
      int64_t coff = col_off;
      int dy = col_dy, dx = col_dx;
      if (e != 0) column_state(col_index + e, g, ok, coff, dy, dx);
      if (!ok) return false;
      if constexpr (kIsA) {
        off = k * p.out_c + coff;
        return true;
      } else {
        int64_t n;
        int rem;
        divmod_nonneg(k, p.out_h * p.out_w, n, rem);
        const int oy = rem / p.out_w;
        const int ox = rem - oy * p.out_w;
        const int iy = oy * p.stride_h + dy;
        const int ix = ox * p.stride_w + dx;
        if (iy < 0 || iy >= p.in_h || ix < 0 || ix >= p.in_w) return false;
        off = (n * p.in_h + iy) * static_cast<int64_t>(p.in_w) * p.in_c + static_cast<int64_t>(ix) * p.in_c +
              coff;
        return true;
      }
    }
  }

  __device__ __forceinline__ int smem_offset(int i) const {
    const int line = line0 + i * kLineStep;
    return kKMajor ? Tile::offset(line, contig0) : Tile::offset(contig0, line);
  }

  // Requests the tile at k0: cp.async into `smem`, or loads into registers for store() to write later.
  __device__ __forceinline__ void issue(T* smem, int64_t k0, int g) {
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      if (vec) {
        // With vec set, the host guaranteed that a chunk never straddles a (kh, kw) tap, a group or a
        // tensor edge, so element 0 decides for the whole chunk.
        int64_t off = 0;
        const bool ok = source(i, k0, 0, g, off);
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
          const bool ok = source(i, k0, e, g, off);
          vals[e] = ok ? src[off] : static_cast<T>(0.f);
          if constexpr (kGradOperand) {
            if (aux != nullptr) aux_vals[e] = ok ? aux[off] : static_cast<T>(0.f);
          }
        }
      }
    }
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

// Tensor-core tile: kBM x kBN per block, kWarpsM x kWarpsN warps, BK = 64 bytes of K per stage.
template <typename T, int kBM_, int kBN_, int kWarpsM_, int kWarpsN_>
struct MmaConfig {
  static constexpr bool kUseMma = true;
  static constexpr int kBM = kBM_, kBN = kBN_, kWarpsM = kWarpsM_, kWarpsN = kWarpsN_;
  static constexpr int kBK = 64 / static_cast<int>(sizeof(T));
  static constexpr int kThreads = kWarpsM * kWarpsN * 32;
  static constexpr int kWarpM = kBM / kWarpsM, kWarpN = kBN / kWarpsN;
  static constexpr bool kHalfPrecision = sizeof(T) == 2;  // m16n8k16 (else tf32 m16n8k8)
  static constexpr int kMmaK = kHalfPrecision ? 16 : 8;
  static constexpr int kFragM = kWarpM / 16, kFragN = kWarpN / 8;
  static_assert(sizeof(T) == 2 || std::is_same_v<T, float>, "tensor-core tiles take 16-bit or fp32 (tf32)");
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0, "warp tiles are whole 16x16 blocks (ldmatrix x4 on B)");
  static_assert(kBK % kMmaK == 0, "BK must hold whole mma K steps");
};

// CUDA-core tile for fp64 and exact fp32: 64x64 per block, 16x16 threads, 4x4 outputs each.
template <typename T>
struct FmaConfig {
  static constexpr bool kUseMma = false;
  static constexpr int kBM = 64, kBN = 64;
  static constexpr int kBK = 64 / static_cast<int>(sizeof(T));
  static constexpr int kThreads = 256;
  static constexpr int kThreadM = 4, kThreadN = 4;
  static_assert(kBM == 16 * kThreadM && kBN == 16 * kThreadN, "16x16 threads cover the tile");
};

template <typename T, typename Cfg, GemmMode kMode>
struct GemmKernelTraits {
  static constexpr bool kKMajor = kMode != GemmMode::kWgrad;
  using TileA = SmemTile<T, Cfg::kBM, Cfg::kBK, kKMajor>;
  using TileB = SmemTile<T, Cfg::kBN, Cfg::kBK, kKMajor>;
  static constexpr int kBK = Cfg::kBK;
  static constexpr int kStageElems = TileA::kElems + TileB::kElems;
  static constexpr size_t kSmemBytes = 2 * kStageElems * sizeof(T);
};

// Two-stage pipeline over the K tiles [kt_begin, kt_end). Tile kt + 1 is requested before tile kt is
// multiplied; the stage it goes to was last read in iteration kt - 1, which every thread has left through
// that iteration's closing barrier, so the overwrite cannot race with a reader.
template <typename Traits, typename LoaderA, typename LoaderB, typename Multiply>
__device__ __forceinline__ void run_pipeline(LoaderA& load_a, LoaderB& load_b,
                                             typename LoaderA::Tile::Elem* smem, int64_t kt_begin,
                                             int64_t kt_end, int g, Multiply& multiply_tile) {
  constexpr int kBK = Traits::kBK;
  auto stage_a = [&](int s) { return smem + s * Traits::kStageElems; };
  auto stage_b = [&](int s) { return smem + s * Traits::kStageElems + Traits::TileA::kElems; };
  if (kt_begin >= kt_end) return;
  load_a.issue(stage_a(0), kt_begin * kBK, g);
  load_b.issue(stage_b(0), kt_begin * kBK, g);
  load_a.store(stage_a(0));
  load_b.store(stage_b(0));
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();
  for (int64_t kt = kt_begin; kt < kt_end; ++kt) {
    const int cur = static_cast<int>((kt - kt_begin) & 1);
    const bool has_next = kt + 1 < kt_end;
    if (has_next) {
      load_a.issue(stage_a(cur ^ 1), (kt + 1) * kBK, g);
      load_b.issue(stage_b(cur ^ 1), (kt + 1) * kBK, g);
    }
    cp_async_commit();
    multiply_tile(stage_a(cur), stage_b(cur));
    if (has_next) {
      load_a.store(stage_a(cur ^ 1));
      load_b.store(stage_b(cur ^ 1));
    }
    // Own cp.async copies land, then the barrier publishes every thread's copies and stores.
    cp_async_wait_all();
    __syncthreads();
  }
}

template <typename T, typename Cfg, GemmMode kMode>
__global__ void __launch_bounds__(Cfg::kThreads, 1) conv_gemm_kernel(const __grid_constant__ GemmParams p) {
  using acc_t = at::opmath_type<T>;
  using Traits = GemmKernelTraits<T, Cfg, kMode>;
  using TileA = typename Traits::TileA;
  using TileB = typename Traits::TileB;
  constexpr int kBM = Cfg::kBM, kBN = Cfg::kBN, kBK = Cfg::kBK;

  FASTCNN_EXTERN_SHARED(smem_raw);
  T* const smem = reinterpret_cast<T*>(smem_raw);

  const int tid = threadIdx.x;
  const int g = blockIdx.z / p.splits;
  const int split = blockIdx.z - g * p.splits;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBM;
  const int n0 = blockIdx.y * kBN;
  const int64_t k_tiles = (p.K + kBK - 1) / kBK;
  const int64_t kt_begin = split * p.k_tiles_per_split;
  const int64_t kt_end = k_tiles < kt_begin + p.k_tiles_per_split ? k_tiles : kt_begin + p.k_tiles_per_split;

  TileLoader<T, kMode, true, kBM, kBK, Cfg::kThreads> load_a(p, m0, g, tid);
  TileLoader<T, kMode, false, kBN, kBK, Cfg::kThreads> load_b(p, n0, g, tid);

  if constexpr (Cfg::kUseMma) {
    constexpr int kFragM = Cfg::kFragM, kFragN = Cfg::kFragN;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int wm0 = (warp / Cfg::kWarpsN) * Cfg::kWarpM;
    const int wn0 = (warp % Cfg::kWarpsN) * Cfg::kWarpN;
    const int lane_g = lane / 4, lane_t = lane % 4;
    float acc[kFragM][kFragN][4];
#pragma unroll
    for (int mi = 0; mi < kFragM; ++mi)
#pragma unroll
      for (int ni = 0; ni < kFragN; ++ni)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[mi][ni][r] = 0.f;

    auto multiply_tile = [&](const T* As, const T* Bs) {
#pragma unroll
      for (int ks = 0; ks < kBK; ks += Cfg::kMmaK) {
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
    };

    run_pipeline<Traits>(load_a, load_b, smem, kt_begin, kt_end, g, multiply_tile);

#pragma unroll
    for (int mi = 0; mi < kFragM; ++mi) {
#pragma unroll
      for (int ni = 0; ni < kFragN; ++ni) {
        const int64_t row = m0 + wm0 + mi * 16 + lane_g;
        const int col = n0 + wn0 + ni * 8 + 2 * lane_t;
        epilogue_store<T, acc_t, kMode == GemmMode::kWgrad>(p.ep, p.M, p.N, g, split, row, col,
                                                            acc[mi][ni][0], acc[mi][ni][1], true);
        epilogue_store<T, acc_t, kMode == GemmMode::kWgrad>(p.ep, p.M, p.N, g, split, row + 8, col,
                                                            acc[mi][ni][2], acc[mi][ni][3], true);
      }
    }
  } else {
    constexpr int kTM = Cfg::kThreadM, kTN = Cfg::kThreadN;
    const int tx = tid % 16, ty = tid / 16;
    acc_t acc[kTM][kTN];
#pragma unroll
    for (int i = 0; i < kTM; ++i)
#pragma unroll
      for (int j = 0; j < kTN; ++j) acc[i][j] = acc_t(0);

    // Thread (ty, tx) owns rows ty + 16 i and columns tx + 16 j: A reads broadcast within a half-warp
    // and B reads spread over the banks.
    auto multiply_tile = [&](const T* As, const T* Bs) {
#pragma unroll
      for (int k = 0; k < kBK; ++k) {
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
    };

    run_pipeline<Traits>(load_a, load_b, smem, kt_begin, kt_end, g, multiply_tile);

#pragma unroll
    for (int i = 0; i < kTM; ++i)
#pragma unroll
      for (int j = 0; j < kTN; ++j)
        epilogue_store<T, acc_t, kMode == GemmMode::kWgrad>(p.ep, p.M, p.N, g, split, m0 + ty + 16 * i,
                                                            n0 + tx + 16 * j, acc[i][j], acc_t(0), false);
  }
}

}  // namespace cuda
}  // namespace fastcnn

// ---------------------------------------------------------------------------------------------------------
// Host entry points of the GEMM core, defined in conv2d.cu and shared with linear.cu and the depthwise path.
// Activation tensors are dense NHWC in memory (channels_last 4-D tensors, or [rows, features] matrices
// seen as N x 1 x 1 x C); `output` is the op's forward output y, undefined when act is None.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>

#include "common/checks.h"

namespace fastcnn {
namespace cuda {

// output = act(conv(input, weight) + bias + residual); weight is [OC, KH, KW, Cg] in memory.
void conv_gemm_forward(const at::Tensor& input, const at::Tensor& weight_ohwi, const at::Tensor& bias,
                       const at::Tensor& residual, const at::Tensor& output, const Conv2dShape& s,
                       Activation act, bool allow_tf32);
// grad_input from grad_output * act'(output); weight is [C, KH, KW, OCg] in memory.
void conv_gemm_dgrad(const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& weight_ihwo,
                     const at::Tensor& grad_input, const Conv2dShape& s, Activation act, bool allow_tf32);
// grad_weight [OC, Cg, KH, KW] (contiguous) from grad_output * act'(output) and input.
void conv_gemm_wgrad(const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& input,
                     const at::Tensor& grad_weight, const Conv2dShape& s, Activation act, bool allow_tf32);
// grad_bias[c] = sum over rows r of act'(grad_output)[r, c], for a dense [rows, channels] grad_output.
void channel_grad_sum(const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& grad_bias,
                      int64_t rows, int64_t channels, Activation act);
// out[oc, c, kh, kw] (contiguous) = sum over s of partials[s * split_stride + ((oc * KH + kh) * KW + kw) * Cg
// + c], summed in split order so that the result does not depend on scheduling.
void reduce_weight_splits(const at::Tensor& partials, int64_t splits, int64_t split_stride,
                          const at::Tensor& out, int64_t cg, int64_t kernel_h, int64_t kernel_w);

}  // namespace cuda
}  // namespace fastcnn
