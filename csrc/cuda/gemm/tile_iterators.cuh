// Where each GEMM operand's elements come from, one iterator per operand and mode (the loaders in
// tile_loader.cuh move the chunks they name). A thread owns kChunks chunks of a tile: K-major operands
// (forward, dgrad) give it kChunks tile rows (lines) and one offset `contig0` along K; MN-major operands
// (wgrad) give it one column chunk starting at `contig0` and kChunks K lines. An iterator starts at the
// block's first K tile (init) and steps one K tile at a time (advance), carrying its K position as
// (kh, kw, c) or (n, oy, ox) cursors so that the mainloop never divides; the divisions happen once, in
// init. source() answers the global offset of element e of chunk i of the current K tile, or false when
// that element lies outside the tensor (zero padding, tile tails) and reads as zero. Only element 0 of a
// chunk comes from the cursors; other elements (the register path of unaligned channels) are decoded.
//
//   operand            mode      layout    rows (lines)            K
//   ForwardInput       forward A K-major   output pixels           (kh, kw, c) gathered from input
//   DgradGradOutput    dgrad   A K-major   input pixels of a phase (kh, kw, oc) of its taps, from grad_out
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

// K index kk of a (kh, kw, c) K axis with `cg` channels per tap and `taps_w` taps per kernel row.
struct KernelTap {
  int c, kh, kw;
};

__device__ __forceinline__ KernelTap kernel_tap(int kk, int cg, int taps_w) {
  const int tap = kk / cg;
  const int kh = tap / taps_w;
  return {kk - tap * cg, kh, tap - kh * taps_w};
}

// A (kh, kw, c) position on a K axis of `cg` channels per tap and `taps_w` taps per kernel row, moved
// by a fixed step that init() decomposes the same way, so advance() only adds and carries.
struct TapCursor {
  int c, kw, kh;
  int dc, dkw, dkh;
  int cg, taps_w;

  __device__ void init(int k, int step, int channels, int taps_per_row) {
    cg = channels;
    taps_w = taps_per_row;
    const KernelTap t = kernel_tap(k, cg, taps_w);
    const KernelTap d = kernel_tap(step, cg, taps_w);
    c = t.c, kw = t.kw, kh = t.kh;
    dc = d.c, dkw = d.kw, dkh = d.kh;
  }
  __device__ __forceinline__ void advance() {
    c += dc;
    int carry = c >= cg ? 1 : 0;
    c -= carry * cg;
    kw += dkw + carry;
    carry = kw >= taps_w ? 1 : 0;
    kw -= carry * taps_w;
    kh += dkh + carry;
  }
};

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
// row's pixel origin and the tensor offset of its sample and group; one K position for all chunks.
template <int kChunks, int kLineStep>
struct PixelRows {
  int k;          // K index of element 0 of the thread's chunks in the current tile (fits in int32)
  TapCursor tap;  // its (kh, kw, c)
  int64_t base[kChunks];
  int y0[kChunks], x0[kChunks];
  bool ok[kChunks];

  // origin(px, i) fills base[i], y0[i], x0[i] for the row's pixel px in a plane_h x plane_w image.
  template <typename Origin>
  __device__ void init_rows(const GemmParams& p, int64_t row_tile0, ChunkOrigin o, int plane_h, int plane_w,
                            int64_t k_begin, int step, int cg, int taps_w, Origin origin) {
    k = static_cast<int>(k_begin) + o.contig0;
    tap.init(k, step, cg, taps_w);
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int64_t row = row_tile0 + o.line0 + i * kLineStep;
      ok[i] = row < p.M;
      origin(pixel_of_row(ok[i] ? row : 0, plane_h, plane_w), i);
    }
  }

  __device__ __forceinline__ void advance(const GemmParams&, int step) {
    k += step;
    tap.advance();
  }

  // The (kh, kw, c) tap of element e of chunk i of the current tile; false past the row's K or M.
  __device__ __forceinline__ bool tap_of(const GemmParams& p, int i, int e, KernelTap& t) const {
    if (!ok[i] || k + e >= p.K) return false;
    t = e == 0 ? KernelTap{tap.c, tap.kh, tap.kw} : kernel_tap(k + e, tap.cg, tap.taps_w);
    return true;
  }
};

// forward A: row = output pixel (n, oy, ox), K = (kh, kw, c) of the input window.
template <int kChunks, int kLineStep>
struct ForwardInputIterator : PixelRows<kChunks, kLineStep> {
  static constexpr bool kIsA = true, kKMajor = true, kGradOperand = false;
  using Rows = PixelRows<kChunks, kLineStep>;

  __device__ void init(const GemmParams& p, int64_t row_tile0, ChunkOrigin o, int g, int64_t k_begin,
                       int step) {
    Rows::init_rows(p, row_tile0, o, p.out_h, p.out_w, k_begin, step, p.in_cg, p.kernel_w,
                    [&](const PixelOfRow& px, int i) {
                      this->base[i] = px.n * p.in_h * p.in_w * p.in_c + static_cast<int64_t>(g) * p.in_cg;
                      this->y0[i] = px.y * p.stride_h - p.pad_h;
                      this->x0[i] = px.x * p.stride_w - p.pad_w;
                    });
  }

  __device__ __forceinline__ bool source(const GemmParams& p, int i, int e, int64_t& off) const {
    KernelTap t;
    if (!Rows::tap_of(p, i, e, t)) return false;
    const int iy = this->y0[i] + t.kh * p.dilation_h;
    const int ix = this->x0[i] + t.kw * p.dilation_w;
    if (iy < 0 || iy >= p.in_h || ix < 0 || ix >= p.in_w) return false;
    off = this->base[i] + (static_cast<int64_t>(iy) * p.in_w + ix) * p.in_c + t.c;
    return true;
  }
};

// dgrad A: row = input pixel (n, yq, xq) of one stride phase (params.cuh DgradPhase), K = (j_h, j_w, oc)
// over the phase's taps: the output pixels that read the row's pixel through each of those taps.
template <int kChunks, int kLineStep>
struct DgradGradOutputIterator : PixelRows<kChunks, kLineStep> {
  static constexpr bool kIsA = true, kKMajor = true, kGradOperand = true;
  using Rows = PixelRows<kChunks, kLineStep>;

  __device__ void init(const GemmParams& p, int64_t row_tile0, ChunkOrigin o, int g, int64_t k_begin,
                       int step) {
    Rows::init_rows(p, row_tile0, o, p.dgrad.rows_h, p.dgrad.rows_w, k_begin, step, p.out_cg, p.dgrad.taps_w,
                    [&](const PixelOfRow& px, int i) {
                      this->base[i] = px.n * p.out_h * p.out_w * p.out_c + static_cast<int64_t>(g) * p.out_cg;
                      this->y0[i] = px.y + p.dgrad.oy0;  // the output pixel of the phase's first tap
                      this->x0[i] = px.x + p.dgrad.ox0;
                    });
  }

  __device__ __forceinline__ bool source(const GemmParams& p, int i, int e, int64_t& off) const {
    KernelTap t;
    if (!Rows::tap_of(p, i, e, t)) return false;
    const int oy = this->y0[i] - t.kh * p.dgrad.oy_step;
    const int ox = this->x0[i] - t.kw * p.dgrad.ox_step;
    if (oy < 0 || oy >= p.out_h || ox < 0 || ox >= p.out_w) return false;
    off = this->base[i] + (static_cast<int64_t>(oy) * p.out_w + ox) * p.out_c + t.c;
    return true;
  }
};

// forward and dgrad B: the weight, [groups * N, K] rows contiguous along K.
template <int kChunks, int kLineStep>
struct WeightRowsIterator {
  static constexpr bool kIsA = false, kKMajor = true, kGradOperand = false;
  int64_t k;  // K index of element 0 of the thread's chunks in the current tile
  int64_t base[kChunks];
  bool ok[kChunks];

  __device__ void init(const GemmParams& p, int64_t row_tile0, ChunkOrigin o, int g, int64_t k_begin, int) {
    k = k_begin + o.contig0;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int64_t row = row_tile0 + o.line0 + i * kLineStep;
      ok[i] = row < p.N;
      base[i] = (static_cast<int64_t>(g) * p.N + row) * p.K;
    }
  }

  __device__ __forceinline__ void advance(const GemmParams&, int step) { k += step; }

  __device__ __forceinline__ bool source(const GemmParams& p, int i, int e, int64_t& off) const {
    if (!ok[i] || k + e >= p.K) return false;
    off = base[i] + k + e;
    return true;
  }
};

// wgrad A: columns = the group's output channels, K = output pixels (grad_output is [pixels, OC]).
template <int kChunks, int kLineStep>
struct WgradGradOutputIterator {
  static constexpr bool kIsA = true, kKMajor = false, kGradOperand = true;
  int64_t k;      // the pixel of the thread's first line in the current tile
  int col0;       // the chunk's first output channel within the group
  int64_t coff0;  // its offset within a pixel

  __device__ void init(const GemmParams& p, int64_t col_tile0, ChunkOrigin o, int g, int64_t k_begin, int) {
    k = k_begin + o.line0;
    col0 = static_cast<int>(col_tile0) + o.contig0;
    coff0 = static_cast<int64_t>(g) * p.out_cg + col0;
  }

  __device__ __forceinline__ void advance(const GemmParams&, int step) { k += step; }

  __device__ __forceinline__ bool source(const GemmParams& p, int i, int e, int64_t& off) const {
    const int64_t pixel = k + i * kLineStep;
    if (pixel >= p.K || col0 + e >= p.M) return false;
    off = pixel * p.out_c + coff0 + e;
    return true;
  }
};

// An output pixel (n, y, x) of a wgrad K line, moved by a fixed number of pixels that init() decomposes
// the same way, so advance() only adds and carries.
struct PixelCursor {
  int64_t n;
  int y, x;
};

// wgrad B: columns = (kh, kw, c) of the group's weight, K = output pixels; element (pixel, column) is
// the input value that tap reads for that output pixel.
template <int kChunks, int kLineStep>
struct WgradInputIterator {
  static constexpr bool kIsA = false, kKMajor = false, kGradOperand = false;
  int64_t k;  // the pixel of the thread's first line in the current tile
  int col0;
  int g;
  PixelCursor px[kChunks];  // the pixel of each of the thread's lines
  PixelCursor step_px;      // one K tile, in (n, y, x)
  // Column state of col0, kept because element 0 is what the vector path asks for.
  bool col_ok;
  int64_t col_off;
  int col_dy, col_dx;

  __device__ __forceinline__ void column_state(const GemmParams& p, int col, bool& ok, int64_t& off, int& dy,
                                               int& dx) const {
    ok = col < p.N;
    const KernelTap t = kernel_tap(ok ? col : 0, p.in_cg, p.kernel_w);
    dy = t.kh * p.dilation_h - p.pad_h;
    dx = t.kw * p.dilation_w - p.pad_w;
    off = static_cast<int64_t>(g) * p.in_cg + t.c;
  }

  __device__ void init(const GemmParams& p, int64_t col_tile0, ChunkOrigin o, int group, int64_t k_begin,
                       int step) {
    k = k_begin + o.line0;
    col0 = static_cast<int>(col_tile0) + o.contig0;
    g = group;
    column_state(p, col0, col_ok, col_off, col_dy, col_dx);
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const PixelOfRow q = pixel_of_row(k + i * kLineStep, p.out_h, p.out_w);
      px[i] = {q.n, q.y, q.x};
    }
    const PixelOfRow d = pixel_of_row(step, p.out_h, p.out_w);
    step_px = {d.n, d.y, d.x};
  }

  __device__ __forceinline__ void advance(const GemmParams& p, int step) {
    k += step;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      PixelCursor& c = px[i];
      c.x += step_px.x;
      int carry = c.x >= p.out_w ? 1 : 0;
      c.x -= carry * p.out_w;
      c.y += step_px.y + carry;
      carry = c.y >= p.out_h ? 1 : 0;
      c.y -= carry * p.out_h;
      c.n += step_px.n + carry;
    }
  }

  __device__ __forceinline__ bool source(const GemmParams& p, int i, int e, int64_t& off) const {
    if (k + i * kLineStep >= p.K) return false;
    bool ok = col_ok;
    int64_t coff = col_off;
    int dy = col_dy, dx = col_dx;
    if (e != 0) column_state(p, col0 + e, ok, coff, dy, dx);
    if (!ok) return false;
    const int iy = px[i].y * p.stride_h + dy;
    const int ix = px[i].x * p.stride_w + dx;
    if (iy < 0 || iy >= p.in_h || ix < 0 || ix >= p.in_w) return false;
    off = (px[i].n * p.in_h + iy) * static_cast<int64_t>(p.in_w) * p.in_c +
          static_cast<int64_t>(ix) * p.in_c + coff;
    return true;
  }
};

}  // namespace cuda
}  // namespace fastcnn
