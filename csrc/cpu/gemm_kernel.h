// fastcnn's own single-threaded packed GEMM for the CPU kernels (Goto/BLIS-style register blocking).
// C[m, n] = A[m, k] @ B[k, n] (+ epilogue) where
//  * B is packed once into panels of `nr` columns, k-major ([n / nr][k][nr], zero-padded), so the
//    micro-kernel streams it with aligned-size vector loads;
//  * A is NOT packed: the micro-kernel broadcasts A[r, k] straight from MR row pointers. A row's k range
//    is `taps` runs of `run` contiguous elements at per-tap offsets, which is exactly an im2col row of a
//    zero-padded NHWC input (taps = kernel rows, run = KW * C) - so convolutions need no im2col buffer.
//  * the epilogue act(acc [+ C] + col_bias + row_bias + residual) runs on the tile in registers.
// Layout: row-major C with leading dimension ldc. Threading is the caller's (one call per thread).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "common/activation.h"

namespace fastcnn {
namespace cpu {

enum class Isa { Portable, Avx2, Avx512 };
constexpr int kMaxMr = 14;
// Rows of A the dot kernel (KernelSet::dot) keeps in cache at a time.
constexpr int64_t kDotChunkRows = 64;

template <typename T>
struct MicroArgs {
  const T* const* a_rows;  // mr row pointers
  const int64_t* tap_off;  // `taps` offsets added to every row pointer
  int64_t taps, run;       // k = taps * run
  const T* b;              // packed panel [k][nr]
  T* c;
  int64_t ldc;
  int64_t nr_valid;   // columns of the tile that exist (<= nr)
  bool accumulate;    // C += instead of C =
  const T* col_bias;  // at the tile's first column, or null
  const T* row_bias;  // at the tile's first row, or null
  const T* residual;  // at the tile's origin, or null
  int64_t res_ld;
  Activation act;
};

template <typename T>
using MicroKernel = void (*)(const MicroArgs<T>&);

template <typename T>
struct KernelSet {
  int mr;  // largest tile height; fn[h] computes an h-row tile, 1 <= h <= mr
  int nr;  // tile width = packed panel width
  MicroKernel<T> fn[kMaxMr + 1];
  // C[m, n] (= or +=) A[m, k] @ Bt[n, k]^T with both operands read in place (no packing), for few rows.
  void (*dot)(const T* a, int64_t lda, const T* bt, int64_t ldb, int64_t m, int64_t n, int64_t k, T* c,
              int64_t ldc, bool accumulate);
};

Isa active_isa();
template <typename T>
const KernelSet<T>& kernels();
template <>
const KernelSet<float>& kernels<float>();
template <>
const KernelSet<double>& kernels<double>();

template <typename T>
inline int64_t packed_b_size(int64_t k, int64_t n) {
  const int64_t nr = kernels<T>().nr;
  return (n + nr - 1) / nr * nr * k;
}

// Packs columns [j0, j1) of B (element (kk, j) at b[kk * rs + j * cs]) into panels [.][k][nr].
template <typename T>
void pack_b(int64_t k, int64_t j0, int64_t j1, const T* b, int64_t rs, int64_t cs, T* out) {
  const int64_t nr = kernels<T>().nr;
  for (int64_t jp = j0; jp < j1; jp += nr) {
    const int64_t width = std::min(nr, j1 - jp);
    T* panel = out + (jp - j0) / nr * k * nr;
    if (cs == 1) {
      for (int64_t kk = 0; kk < k; ++kk) {
        std::memcpy(panel + kk * nr, b + kk * rs + jp, width * sizeof(T));
        std::fill(panel + kk * nr + width, panel + (kk + 1) * nr, T(0));
      }
    } else {
      if (width < nr) std::fill_n(panel, k * nr, T(0));
      for (int64_t j = 0; j < width; ++j) {
        const T* src = b + (jp + j) * cs;
        T* dst = panel + j;
        for (int64_t kk = 0; kk < k; ++kk) dst[kk * nr] = src[kk * rs];
      }
    }
  }
}

template <typename T>
struct Epilogue {
  bool accumulate = false;
  const T* col_bias = nullptr;  // indexed by column
  const T* row_bias = nullptr;  // indexed by row
  const T* residual = nullptr;  // [m, n] with leading dimension res_ld
  int64_t res_ld = 0;
  Activation act = Activation::None;
};

// C[m, n] = A @ B with A rows given by row_ptr(i) (plus tap offsets) and B packed by pack_b (all n
// columns, k = taps * run). panels_outer: loop B panels outside A tiles (B panel reused from L1/L2 over
// the A tiles, right when A is the small operand); otherwise A tiles outside (an A tile reused over all
// panels, right when the whole packed B fits in L2).
template <typename T, typename RowPtr>
void gemm_tiles(int64_t m, int64_t n, int64_t taps, const int64_t* tap_off, int64_t run,
                const RowPtr& row_ptr, const T* packed_b, T* c, int64_t ldc, const Epilogue<T>& ep,
                bool panels_outer) {
  if (m <= 0 || n <= 0) return;
  const KernelSet<T>& ks = kernels<T>();
  const int64_t nr = ks.nr, k = taps * run;
  const int64_t tiles = (m + ks.mr - 1) / ks.mr;  // balanced heights, each <= mr
  const int64_t panels = (n + nr - 1) / nr;
  const int64_t zero_off = 0;
  MicroArgs<T> args{};
  const T* rows[kMaxMr];
  args.a_rows = rows;
  args.tap_off = tap_off != nullptr ? tap_off : &zero_off;  // null: one run per row
  args.taps = taps;
  args.run = run;
  args.ldc = ldc;
  args.accumulate = ep.accumulate;
  args.res_ld = ep.res_ld;
  args.act = ep.act;
  auto run_tile = [&](int64_t t, int64_t jp) {
    const int64_t i0 = m * t / tiles, i1 = m * (t + 1) / tiles;
    const int64_t j0 = jp * nr;
    for (int64_t r = 0; r < i1 - i0; ++r) rows[r] = row_ptr(i0 + r);
    args.b = packed_b + jp * k * nr;
    args.c = c + i0 * ldc + j0;
    args.nr_valid = std::min(nr, n - j0);
    args.col_bias = ep.col_bias != nullptr ? ep.col_bias + j0 : nullptr;
    args.row_bias = ep.row_bias != nullptr ? ep.row_bias + i0 : nullptr;
    args.residual = ep.residual != nullptr ? ep.residual + i0 * ep.res_ld + j0 : nullptr;
    ks.fn[i1 - i0](args);
  };
  if (panels_outer) {
    for (int64_t jp = 0; jp < panels; ++jp)
      for (int64_t t = 0; t < tiles; ++t) run_tile(t, jp);
  } else {
    for (int64_t t = 0; t < tiles; ++t)
      for (int64_t jp = 0; jp < panels; ++jp) run_tile(t, jp);
  }
}

}  // namespace cpu
}  // namespace fastcnn
