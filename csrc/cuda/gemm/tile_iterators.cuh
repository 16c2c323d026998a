// Where each GEMM operand's elements come from, one iterator per operand and mode (the loaders in
// tile_loader.cuh move the chunks they name). A thread owns kChunks chunks of a tile: K-major operands
// (forward, dgrad) give it kChunks tile rows (lines) and one offset `contig0` along K; MN-major operands
// (wgrad) give it one column chunk starting at `contig0` and kChunks K lines. source() answers the
// global offset of element e of chunk i of the K tile starting at k0, or false when that element lies
// outside the tensor (zero padding, tile tails) and reads as zero.
//
//   operand            mode      layout    rows (lines)            K
//   ForwardInput       forward A K-major   output pixels           (kh, kw, c) gathered from input
//   DgradGradOutput    dgrad   A K-major   input pixels            (kh, kw, oc) gathered from grad_out
//   WeightRows         fwd/dgrad B K-major weight rows             contiguous
//   WgradGradOutput    wgrad   A MN-major  output channels         output pixels
//   WgradInput         wgrad   B MN-major  (kh, kw, c)             output pixels, gathered from input
#pragma once

#include <cstdint>

#include "cuda/gemm/params.cuh"

namespace fastcnn {
namespace cuda {

// The first line and the offset along the contiguous dimension of a thread's chunks.
struct ChunkOrigin {
  int line0;
  int contig0;
};

// K index kk of a (kh, kw, c) K axis with `cg` channels per tap.
struct KernelTap {
  int c, kh, kw;
};

__device__ __forceinline__ KernelTap kernel_tap(const GemmParams& p, int kk, int cg) {
  const int tap = kk / cg;
  return {kk - tap * cg, tap / p.kernel_w, tap % p.kernel_w};
}

// Row (an output or input pixel) of a K-major activation operand: sample n and its (y, x).
struct PixelOfRow {
  int64_t n;
  int y, x;
};

__device__ __forceinline__ PixelOfRow pixel_of_row(int64_t row, int plane_h, int plane_w) {
  PixelOfRow px;
  int rem;
  divmod_nonneg(row, plane_h * plane_w, px.n, rem);
  px.y = rem / plane_w;
  px.x = rem - px.y * plane_w;
  return px;
}

// The rows of a K-major activation operand (forward A, dgrad A): per chunk, whether its row exists, the
// row's pixel origin and the tensor offset of its sample and group.
template <int kChunks, int kLineStep>
struct PixelRows {
  int contig0;
  int64_t base[kChunks];
  int y0[kChunks], x0[kChunks];
  bool ok[kChunks];

  // origin(px, i) fills base[i], y0[i], x0[i] for the row's pixel px in a plane_h x plane_w image.
  template <typename Origin>
  __device__ void init_rows(const GemmParams& p, int64_t row_tile0, ChunkOrigin o, int plane_h, int plane_w,
                            Origin origin) {
    contig0 = o.contig0;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int64_t row = row_tile0 + o.line0 + i * kLineStep;
      ok[i] = row < p.M;
      origin(pixel_of_row(ok[i] ? row : 0, plane_h, plane_w), i);
    }
  }

  // The (kh, kw, c) tap of element e of chunk i of the K tile at k0; false past the row's K or M.
  __device__ __forceinline__ bool tap(const GemmParams& p, int i, int64_t k0, int e, int cg,
                                      KernelTap& t) const {
    const int64_t k = k0 + contig0 + e;
    if (!ok[i] || k >= p.K) return false;
    t = kernel_tap(p, static_cast<int>(k), cg);  // forward/dgrad K fits in int32
    return true;
  }
};

// forward A: row = output pixel (n, oy, ox), K = (kh, kw, c) of the input window.
template <int kChunks, int kLineStep>
struct ForwardInputIterator : PixelRows<kChunks, kLineStep> {
  static constexpr bool kIsA = true, kKMajor = true, kGradOperand = false;
  using Rows = PixelRows<kChunks, kLineStep>;

  __device__ void init(const GemmParams& p, int64_t row_tile0, ChunkOrigin o, int g) {
    Rows::init_rows(p, row_tile0, o, p.out_h, p.out_w, [&](const PixelOfRow& px, int i) {
      this->base[i] = px.n * p.in_h * p.in_w * p.in_c + static_cast<int64_t>(g) * p.in_cg;
      this->y0[i] = px.y * p.stride_h - p.pad_h;
      this->x0[i] = px.x * p.stride_w - p.pad_w;
    });
  }

  __device__ __forceinline__ bool source(const GemmParams& p, int i, int64_t k0, int e, int64_t& off) const {
    KernelTap t;
    if (!Rows::tap(p, i, k0, e, p.in_cg, t)) return false;
    const int iy = this->y0[i] + t.kh * p.dilation_h;
    const int ix = this->x0[i] + t.kw * p.dilation_w;
    if (iy < 0 || iy >= p.in_h || ix < 0 || ix >= p.in_w) return false;
    off = this->base[i] + (static_cast<int64_t>(iy) * p.in_w + ix) * p.in_c + t.c;
    return true;
  }
};

// dgrad A: row = input pixel (n, y, x), K = (kh, kw, oc) of the output pixels that read it.
template <int kChunks, int kLineStep>
struct DgradGradOutputIterator : PixelRows<kChunks, kLineStep> {
  static constexpr bool kIsA = true, kKMajor = true, kGradOperand = true;
  using Rows = PixelRows<kChunks, kLineStep>;

  __device__ void init(const GemmParams& p, int64_t row_tile0, ChunkOrigin o, int g) {
    Rows::init_rows(p, row_tile0, o, p.in_h, p.in_w, [&](const PixelOfRow& px, int i) {
      this->base[i] = px.n * p.out_h * p.out_w * p.out_c + static_cast<int64_t>(g) * p.out_cg;
      this->y0[i] = px.y + p.pad_h;  // y + pad, x + pad
      this->x0[i] = px.x + p.pad_w;
    });
  }

  __device__ __forceinline__ bool source(const GemmParams& p, int i, int64_t k0, int e, int64_t& off) const {
    KernelTap t;
    if (!Rows::tap(p, i, k0, e, p.out_cg, t)) return false;
    // Input pixel (y, x) receives output pixel (oy, ox) through tap (kh, kw) iff
    // oy * stride = y + pad - kh * dilation exactly.
    const int ty = this->y0[i] - t.kh * p.dilation_h;
    const int tx = this->x0[i] - t.kw * p.dilation_w;
    if (ty < 0 || tx < 0) return false;
    const int oy = ty / p.stride_h;
    const int ox = tx / p.stride_w;
    if (oy * p.stride_h != ty || ox * p.stride_w != tx || oy >= p.out_h || ox >= p.out_w) return false;
    off = this->base[i] + (static_cast<int64_t>(oy) * p.out_w + ox) * p.out_c + t.c;
    return true;
  }
};

// forward and dgrad B: the weight, [groups * N, K] rows contiguous along K.
template <int kChunks, int kLineStep>
struct WeightRowsIterator {
  static constexpr bool kIsA = false, kKMajor = true, kGradOperand = false;
  int contig0;
  int64_t base[kChunks];
  bool ok[kChunks];

  __device__ void init(const GemmParams& p, int64_t row_tile0, ChunkOrigin o, int g) {
    contig0 = o.contig0;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int64_t row = row_tile0 + o.line0 + i * kLineStep;
      ok[i] = row < p.N;
      base[i] = (static_cast<int64_t>(g) * p.N + row) * p.K;
    }
  }

  __device__ __forceinline__ bool source(const GemmParams& p, int i, int64_t k0, int e, int64_t& off) const {
    const int64_t k = k0 + contig0 + e;
    if (!ok[i] || k >= p.K) return false;
    off = base[i] + k;
    return true;
  }
};

// wgrad A: columns = the group's output channels, K = output pixels (grad_output is [pixels, OC]).
template <int kChunks, int kLineStep>
struct WgradGradOutputIterator {
  static constexpr bool kIsA = true, kKMajor = false, kGradOperand = true;
  int line0;
  int col0;       // the chunk's first output channel within the group
  int64_t coff0;  // its offset within a pixel

  __device__ void init(const GemmParams& p, int64_t col_tile0, ChunkOrigin o, int g) {
    line0 = o.line0;
    col0 = static_cast<int>(col_tile0) + o.contig0;
    coff0 = static_cast<int64_t>(g) * p.out_cg + col0;
  }

  __device__ __forceinline__ bool source(const GemmParams& p, int i, int64_t k0, int e, int64_t& off) const {
    const int64_t k = k0 + line0 + i * kLineStep;  // a pixel index
    if (k >= p.K || col0 + e >= p.M) return false;
    off = k * p.out_c + coff0 + e;
    return true;
  }
};

// wgrad B: columns = (kh, kw, c) of the group's weight, K = output pixels; element (pixel, column) is
// the input value that tap reads for that output pixel.
template <int kChunks, int kLineStep>
struct WgradInputIterator {
  static constexpr bool kIsA = false, kKMajor = false, kGradOperand = false;
  int line0;
  int col0;
  int g;
  // Column state of col0, kept because element 0 is what the vector path asks for.
  bool col_ok;
  int64_t col_off;
  int col_dy, col_dx;

  __device__ __forceinline__ void column_state(const GemmParams& p, int col, bool& ok, int64_t& off, int& dy,
                                               int& dx) const {
    ok = col < p.N;
    const KernelTap t = kernel_tap(p, ok ? col : 0, p.in_cg);
    dy = t.kh * p.dilation_h - p.pad_h;
    dx = t.kw * p.dilation_w - p.pad_w;
    off = static_cast<int64_t>(g) * p.in_cg + t.c;
  }

  __device__ void init(const GemmParams& p, int64_t col_tile0, ChunkOrigin o, int group) {
    line0 = o.line0;
    col0 = static_cast<int>(col_tile0) + o.contig0;
    g = group;
    column_state(p, col0, col_ok, col_off, col_dy, col_dx);
  }

  __device__ __forceinline__ bool source(const GemmParams& p, int i, int64_t k0, int e, int64_t& off) const {
    const int64_t k = k0 + line0 + i * kLineStep;  // a pixel index
    if (k >= p.K) return false;
    bool ok = col_ok;
    int64_t coff = col_off;
    int dy = col_dy, dx = col_dx;
    if (e != 0) column_state(p, col0 + e, ok, coff, dy, dx);
    if (!ok) return false;
    const PixelOfRow px = pixel_of_row(k, p.out_h, p.out_w);
    const int iy = px.y * p.stride_h + dy;
    const int ix = px.x * p.stride_w + dx;
    if (iy < 0 || iy >= p.in_h || ix < 0 || ix >= p.in_w) return false;
    off = (px.n * p.in_h + iy) * static_cast<int64_t>(p.in_w) * p.in_c + static_cast<int64_t>(ix) * p.in_c +
          coff;
    return true;
  }
};

}  // namespace cuda
}  // namespace fastcnn
