// CPU conv2d and its backward, on fastcnn's packed GEMM micro-kernels (cpu/gemm_kernel.h: AVX-512 /
// AVX2 / portable, chosen at run time), 2 threads via at::parallel_for, one single-threaded GEMM per task.
//  * channels_last (NHWC) forward: implicit GEMM, rows = global output pixels (across samples), no
//    im2col buffer. The input is zero-padded once; the micro-kernel broadcasts each pixel's im2col row
//    straight from it (KH runs of KW * C contiguous values) against the weight packed once per call into
//    [OC / nr][K][nr] panels (K ordered kh, kw, c), and applies act(acc + bias + residual) to the tile in
//    registers before its only store.
//  * NCHW forward: per (sample, pixel chunk), im2col gathers the chunk from zero-padded planes directly
//    into the packed panel layout
//    and C[OCg, pixels] = W[OCg, K] @ panels, weight rows read in place, the per-channel bias / residual /
//    activation fused into the tiles.
//  * Depthwise (groups == in_channels, out = multiplier * in): a direct kernel with no GEMM, vectorised
//    over channels in NHWC and plane by plane in NCHW.
// Backward forms grad_pre = grad_output * act'(output) per chunk as it reads grad_output. wgrad (and the
// bias gradient) accumulate per-thread partial sums over a static task split and reduce them in slot
// order, so results are bitwise reproducible for a given thread count; chunks span >= 256 pixels (NHWC
// tasks take several whole samples when planes are small) so each wgrad GEMM has a long reduction. dgrad
// computes grad_col = grad_pre @ W (NCHW: W^T transposed once per call) and scatters it back (col2im);
// a sample's scatter is owned by one thread, or, for batches smaller than the thread count, each thread
// scatters into its own buffer, summed in order. 1x1 / stride 1 / pad 0 convs skip im2col.
// Layout: NCHW or channels_last input (output and grad_input follow it); weight [OC, C/groups, KH, KW].
// Measured 2026-11-25 (fastcnn bench --preset full, fp32, batch 8, ResNet-18 layers, this 2-vCPU AMD EPYC,
// quiet; PyTorch-oneDNN time / fastcnn time, geomean of two runs): forward 0.90-0.97 NCHW, 0.92
// channels_last; backward 0.91 / 0.88-0.94; fused conv+bias+ReLU(+residual) 0.91-1.10 of PyTorch's
// unfused sequence (benchmarks/NOTES.md, benchmarks/results/amd-epyc-2026-11-25-conv*.json). Depthwise
// 3x3, 64 channels, 56x56 (earlier run): 0.2x PyTorch's time in NCHW, 6x in channels_last.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/activation.h"
#include "common/checks.h"
#include "cpu/epilogue.h"
#include "cpu/gemm.h"
#include "cpu/slots.h"

namespace fastcnn {
namespace {

// im2col buffer budget per chunk, in elements: 128K floats = 512 KiB, half of a core's L2.
constexpr int64_t kColBudget = 128 * 1024;
// Backward chunks span at least this many pixels even when the col buffer outgrows L2: the chunk's pixels
// are wgrad's reduction length, and every chunk reads and writes the whole [OC, K] weight partial.
constexpr int64_t kMinChunkPixels = 256;

struct Geometry {
  int64_t N, C, H, W, OC, KH, KW, OH, OW, groups;
  int64_t sh, sw, ph, pw, dh, dw;
  int64_t Cg, OCg, K;  // K = Cg * KH * KW, the GEMM reduction length
  int64_t HW, P;       // input and output pixels per sample
  bool direct;         // 1x1, stride 1, no padding: the input rows are the im2col rows
  bool channels_last;
  int64_t chunks_per_sample;

  Geometry(const Conv2dShape& s, bool nhwc) {
    N = s.batch, C = s.in_channels, H = s.in_h, W = s.in_w, OC = s.out_channels;
    KH = s.kernel_h, KW = s.kernel_w, OH = s.out_h, OW = s.out_w, groups = s.groups;
    sh = s.stride_h, sw = s.stride_w, ph = s.pad_h, pw = s.pad_w, dh = s.dilation_h, dw = s.dilation_w;
    Cg = C / groups, OCg = OC / groups, K = Cg * KH * KW;
    HW = H * W, P = OH * OW;
    direct = KH == 1 && KW == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0;
    channels_last = nhwc;
    // Chunks small enough for the col buffer to sit in L2, and enough of them that a small batch still
    // gives every thread a couple of tasks.
    const int64_t threads = at::get_num_threads();
    int64_t pixels = std::clamp<int64_t>(kColBudget / std::max<int64_t>(K, 1), kMinChunkPixels, 4096);
    int64_t chunks = (P + pixels - 1) / pixels;
    const int64_t wanted = (2 * threads + N - 1) / N;
    chunks = std::max(chunks, std::min(wanted, (P + 7) / 8));
    chunks_per_sample = std::max<int64_t>(1, std::min(chunks, P));
  }

  int64_t num_tasks() const { return N * chunks_per_sample; }
  int64_t chunk_begin(int64_t c) const { return P * c / chunks_per_sample; }
  bool depthwise() const { return groups > 1 && Cg == 1; }
};

// Output positions o in [o0, o1) whose input coordinate o * stride + off lies in [0, in).
inline void valid_range(int64_t off, int64_t stride, int64_t in, int64_t o0, int64_t o1, int64_t& lo,
                        int64_t& hi) {
  const int64_t first = off >= 0 ? 0 : (-off + stride - 1) / stride;
  const int64_t last_excl = in - off <= 0 ? 0 : (in - 1 - off) / stride + 1;
  lo = std::clamp(first, o0, o1);
  hi = std::clamp(last_excl, lo, o1);
}

// ---------------------------------------------------------------------------------------------------
// im2col / col2im for one chunk of output pixels [p0, p1) of one sample and one group.

// NHWC: col[p - p0, (kh, kw, c)], rows of K contiguous elements. xn points at the sample. With one
// group and no horizontal dilation the KW taps of a kernel row are one contiguous run of the input row,
// so each (pixel, kh) is a single copy instead of KW small ones (this matters for the 3-channel stem).
template <typename T>
void im2col_nhwc(const Geometry& g, const T* xn, int64_t c_off, int64_t p0, int64_t p1, T* col) {
  const int64_t Cg = g.Cg;
  const bool runs = g.groups == 1 && g.dw == 1;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t oh = p / g.OW, ow = p % g.OW;
    T* dst = col + (p - p0) * g.K;
    const int64_t iw0 = ow * g.sw - g.pw;
    for (int64_t kh = 0; kh < g.KH; ++kh, dst += g.KW * Cg) {
      const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
      if (ih < 0 || ih >= g.H) {
        std::fill_n(dst, g.KW * Cg, T(0));
        continue;
      }
      const T* xrow = xn + ih * g.W * g.C + c_off;
      if (runs) {
        const int64_t kw_lo = std::clamp<int64_t>(-iw0, 0, g.KW);
        const int64_t kw_hi = std::clamp<int64_t>(g.W - iw0, kw_lo, g.KW);
        std::fill_n(dst, kw_lo * Cg, T(0));
        std::memcpy(dst + kw_lo * Cg, xrow + (iw0 + kw_lo) * g.C, (kw_hi - kw_lo) * Cg * sizeof(T));
        std::fill_n(dst + kw_hi * Cg, (g.KW - kw_hi) * Cg, T(0));
        continue;
      }
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t iw = iw0 + kw * g.dw;
        if (iw < 0 || iw >= g.W) {
          std::fill_n(dst + kw * Cg, Cg, T(0));
        } else {
          std::memcpy(dst + kw * Cg, xrow + iw * g.C, Cg * sizeof(T));
        }
      }
    }
  }
}

template <typename T>
void col2im_nhwc(const Geometry& g, const T* col, int64_t c_off, int64_t p0, int64_t p1, T* gin) {
  const int64_t Cg = g.Cg;
  const bool runs = g.groups == 1 && g.dw == 1;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t oh = p / g.OW, ow = p % g.OW;
    const T* src = col + (p - p0) * g.K;
    const int64_t iw0 = ow * g.sw - g.pw;
    for (int64_t kh = 0; kh < g.KH; ++kh, src += g.KW * Cg) {
      const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
      if (ih < 0 || ih >= g.H) continue;
      T* grow = gin + ih * g.W * g.C + c_off;
      if (runs) {
        const int64_t kw_lo = std::clamp<int64_t>(-iw0, 0, g.KW);
        const int64_t kw_hi = std::clamp<int64_t>(g.W - iw0, kw_lo, g.KW);
        T* __restrict__ d = grow + (iw0 + kw_lo) * g.C;
        const T* __restrict__ s = src + kw_lo * Cg;
        const int64_t len = (kw_hi - kw_lo) * Cg;
        for (int64_t i = 0; i < len; ++i) d[i] += s[i];
        continue;
      }
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const int64_t iw = iw0 + kw * g.dw;
        if (iw < 0 || iw >= g.W) continue;
        T* __restrict__ d = grow + iw * g.C;
        const T* __restrict__ s = src + kw * Cg;
        for (int64_t c = 0; c < Cg; ++c) d[c] += s[c];
      }
    }
  }
}

// NCHW: col[(c, kh, kw), p - p0], rows of (p1 - p0) contiguous elements. xn points at the group's first
// channel plane. kCol2im selects col2im (scatter-add into the planes) instead of im2col.
template <typename T, bool kCol2im>
void nchw_col_pass(const Geometry& g, std::conditional_t<kCol2im, T*, const T*> planes, int64_t p0,
                   int64_t p1, std::conditional_t<kCol2im, const T*, T*> col) {
  const int64_t rows = p1 - p0;
  for (int64_t c = 0; c < g.Cg; ++c) {
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        auto* line = col + ((c * g.KH + kh) * g.KW + kw) * rows;
        auto* plane = planes + c * g.HW;
        const int64_t off_w = kw * g.dw - g.pw;
        int64_t p = p0;
        while (p < p1) {
          const int64_t oh = p / g.OW, ow0 = p % g.OW;
          const int64_t ow1 = std::min(g.OW, ow0 + (p1 - p));
          const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
          auto* seg = line + (p - p0);
          if (ih < 0 || ih >= g.H) {
            if constexpr (!kCol2im) std::fill_n(seg, ow1 - ow0, T(0));
          } else {
            int64_t lo, hi;
            valid_range(off_w, g.sw, g.W, ow0, ow1, lo, hi);
            auto* in_row = plane + ih * g.W + off_w;
            if constexpr (kCol2im) {
              if (g.sw == 1) {
                for (int64_t ow = lo; ow < hi; ++ow) in_row[ow] += seg[ow - ow0];
              } else {
                for (int64_t ow = lo; ow < hi; ++ow) in_row[ow * g.sw] += seg[ow - ow0];
              }
            } else {
              std::fill_n(seg, lo - ow0, T(0));
              if (g.sw == 1) {
                std::memcpy(seg + (lo - ow0), in_row + lo, (hi - lo) * sizeof(T));
              } else {
                for (int64_t ow = lo; ow < hi; ++ow) seg[ow - ow0] = in_row[ow * g.sw];
              }
              std::fill_n(seg + (hi - ow0), ow1 - hi, T(0));
            }
          }
          p += ow1 - ow0;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// GEMM path, forward.

// NHWC: implicit GEMM over global output rows (n, oh, ow) x output channels. The input is zero-padded
// once (when the conv pads) so that every im2col row is KH runs of KW * C contiguous input values (or
// KH * KW runs of Cg with groups / dilation), which the micro-kernel reads in place. The weight is packed
// once per call into [OCg / nr][K][nr] panels shared by both threads; tiles loop B panels outside so a
// panel stays cache-resident over a chunk's rows, and the epilogue runs on the tile in registers.
template <typename T>
void conv_forward_nhwc(const Geometry& g, const T* x, const T* w, const T* bias, const T* res, T* out,
                       Activation act) {
  const bool pad = g.ph > 0 || g.pw > 0;
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw, C = g.C;
  std::vector<T> padded;
  const T* xs = x;
  if (pad) {
    padded.resize(g.N * Hp * Wp * C);
    T* dst = padded.data();
    at::parallel_for(0, g.N * Hp, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / Hp, h = row % Hp - g.ph;
        T* d = dst + row * Wp * C;
        if (h < 0 || h >= g.H) {
          std::fill_n(d, Wp * C, T(0));
          continue;
        }
        std::fill_n(d, g.pw * C, T(0));
        std::memcpy(d + g.pw * C, x + (n * g.H + h) * g.W * C, g.W * C * sizeof(T));
        std::fill_n(d + (g.pw + g.W) * C, g.pw * C, T(0));
      }
    });
    xs = dst;
  }

  const int64_t nr = cpu::kernels<T>().nr, mr = cpu::kernels<T>().mr;
  const int64_t group_panels = (g.OCg + nr - 1) / nr;
  const int64_t group_packed = cpu::packed_b_size<T>(g.K, g.OCg);
  std::vector<T> packed(g.groups * group_packed);
  at::parallel_for(0, g.groups * group_panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t grp = i / group_panels, j0 = i % group_panels * nr;
      cpu::pack_b<T>(g.K, j0, std::min(g.OCg, j0 + nr), w + grp * g.OCg * g.K, 1, g.K,
                     packed.data() + grp * group_packed + j0 * g.K);
    }
  });

  std::vector<int64_t> tap_off;
  int64_t run;
  if (g.groups == 1 && g.dw == 1) {
    run = g.KW * C;
    for (int64_t kh = 0; kh < g.KH; ++kh) tap_off.push_back(kh * g.dh * Wp * C);
  } else {
    run = g.Cg;
    for (int64_t kh = 0; kh < g.KH; ++kh)
      for (int64_t kw = 0; kw < g.KW; ++kw) tap_off.push_back((kh * g.dh * Wp + kw * g.dw) * C);
  }

  // Tasks of about 8 micro-tiles of rows, as many as a multiple of the thread count, with the rows spread
  // evenly over them in whole micro-tiles: the static split then gives every thread the same work. (A
  // fixed 112-row chunk split 392 rows, 8 x 7x7 pixels, into 224 rows for one thread and 168 for the
  // other.)
  const int64_t M = g.N * g.P;
  const int64_t threads = at::get_num_threads();
  const int64_t tiles = (M + mr - 1) / mr;
  int64_t tasks = (std::max<int64_t>(1, (tiles + 7) / 8) + threads - 1) / threads * threads;
  tasks = std::min(tasks, tiles);
  const int64_t chunk = (tiles + tasks - 1) / tasks * mr;
  tasks = (M + chunk - 1) / chunk;
  const int64_t slots = cpu::num_slots(tasks);
  cpu::for_each_slot(tasks, slots, [&](int64_t, int64_t t_begin, int64_t t_end) {
    std::vector<const T*> rows(chunk);
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t r0 = t * chunk, r1 = std::min(M, r0 + chunk);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / g.P, p = r % g.P, oh = p / g.OW, ow = p % g.OW;
        rows[r - r0] = xs + ((n * Hp + oh * g.sh) * Wp + ow * g.sw) * C;
      }
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        const int64_t c_off = grp * g.Cg;
        cpu::Epilogue<T> ep;
        ep.col_bias = bias != nullptr ? bias + grp * g.OCg : nullptr;
        ep.residual = res != nullptr ? res + r0 * g.OC + grp * g.OCg : nullptr;
        ep.res_ld = g.OC;
        ep.act = act;
        cpu::gemm_tiles<T>(
            r1 - r0, g.OCg, int64_t(tap_off.size()), tap_off.data(), run,
            [&](int64_t i) { return rows[i] + c_off; }, packed.data() + grp * group_packed,
            out + r0 * g.OC + grp * g.OCg, g.OC, ep, /*panels_outer=*/true);
      }
    }
  });
}

// NCHW: per (sample, pixel chunk), the chunk's im2col block is gathered from zero-padded planes straight
// into [pixels / nr][K][nr] panels (1x1 stride-1 convs pack the planes themselves) and C[OCg, pixels] =
// W[OCg, K] @ panels, with the weight rows read in place and the per-channel bias / residual / activation
// fused into the tiles.
template <typename T>
void conv_forward_nchw(const Geometry& g, const T* x, const T* w, const T* bias, const T* res, T* out,
                       Activation act) {
  const int64_t nr = cpu::kernels<T>().nr;
  const int64_t threads = at::get_num_threads();
  int64_t chunk = std::max<int64_t>(nr, kColBudget / std::max<int64_t>(g.K, 1) / nr * nr);
  while (chunk > nr && g.N * ((g.P + chunk - 1) / chunk) < 2 * threads) chunk -= nr;
  const int64_t chunks = (g.P + chunk - 1) / chunk;
  const int64_t tasks = g.N * chunks;
  const int64_t slots = cpu::num_slots(tasks);

  // Zero-padded planes make every im2col element a plain load at plane_offset(k) + pixel_offset(q).
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw, HWp = Hp * Wp;
  std::vector<T> padded;
  const T* xs = x;
  if (!g.direct && (g.ph > 0 || g.pw > 0)) {
    padded.resize(g.N * g.C * HWp);
    at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        T* d = padded.data() + plane * HWp;
        const T* src = x + plane * g.HW;
        std::fill_n(d, g.ph * Wp, T(0));
        for (int64_t h = 0; h < g.H; ++h) {
          T* row = d + (g.ph + h) * Wp;
          std::fill_n(row, g.pw, T(0));
          std::memcpy(row + g.pw, src + h * g.W, g.W * sizeof(T));
          std::fill_n(row + g.pw + g.W, g.pw, T(0));
        }
        std::fill_n(d + (g.ph + g.H) * Wp, g.ph * Wp, T(0));
      }
    });
    xs = padded.data();
  }
  const int64_t plane_size = xs == x ? g.HW : HWp, row_size = xs == x ? g.W : Wp;
  std::vector<int64_t> k_off(g.K);
  for (int64_t c = 0; c < g.Cg; ++c)
    for (int64_t kh = 0; kh < g.KH; ++kh)
      for (int64_t kw = 0; kw < g.KW; ++kw)
        k_off[(c * g.KH + kh) * g.KW + kw] = c * plane_size + kh * g.dh * row_size + kw * g.dw;

  cpu::for_each_slot(tasks, slots, [&](int64_t, int64_t t_begin, int64_t t_end) {
    std::vector<T> panels(cpu::packed_b_size<T>(g.K, chunk));
    std::vector<int64_t> q_off(chunk);
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t n = t / chunks, p0 = t % chunks * chunk, p1 = std::min(g.P, p0 + chunk), rows = p1 - p0;
      for (int64_t p = p0; p < p1; ++p) q_off[p - p0] = (p / g.OW * g.sh) * row_size + p % g.OW * g.sw;
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        const T* planes = xs + (n * g.C + grp * g.Cg) * plane_size;
        if (g.direct) {
          cpu::pack_b<T>(g.K, 0, rows, planes + p0, g.HW, 1, panels.data());
        } else {
          for (int64_t j0 = 0; j0 < rows; j0 += nr) {
            const int64_t width = std::min(nr, rows - j0);
            T* panel = panels.data() + j0 * g.K;
            const int64_t* __restrict__ q = q_off.data() + j0;
            for (int64_t k = 0; k < g.K; ++k) {
              const T* __restrict__ src = planes + k_off[k];
              T* __restrict__ dst = panel + k * nr;
              for (int64_t l = 0; l < width; ++l) dst[l] = src[q[l]];
            }
          }
        }
        const int64_t block = (n * g.OC + grp * g.OCg) * g.P + p0;
        const T* w_g = w + grp * g.OCg * g.K;
        cpu::Epilogue<T> ep;
        ep.row_bias = bias != nullptr ? bias + grp * g.OCg : nullptr;
        ep.residual = res != nullptr ? res + block : nullptr;
        ep.res_ld = g.P;
        ep.act = act;
        cpu::gemm_tiles<T>(
            g.OCg, rows, 1, nullptr, g.K, [&](int64_t i) { return w_g + i * g.K; }, panels.data(),
            out + block, g.P, ep, /*panels_outer=*/false);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// GEMM path, backward.

template <typename T>
struct BackwardArgs {
  const T* grad_out;  // dense, input's memory format
  const T* out;       // forward output, only when act != None
  const T* x;
  const T* w;          // [OC, K], K ordered (kh, kw, c) for NHWC and (c, kh, kw) for NCHW
  const T* w_t;        // NCHW only: [groups, K, OCg], the transpose dgrad reads row by row
  T* grad_in;          // null when not requested; zero-filled by the caller unless the conv is direct
  T* weight_partials;  // [slots, OC * K], zero-filled; null when not requested
  T* bias_partials;    // [slots, OC], zero-filled; null when not requested
  Activation act;
};

// One task (n, pixels [p0, p1); NHWC may pass p0 = 0, p1 = k * P for k whole samples). grad_target is where
// this slot's col2im lands (grad_in or a private buffer); direct convolutions write grad_in rows themselves,
// which no other task touches.
template <typename T>
void backward_chunk(const Geometry& g, const BackwardArgs<T>& a, int64_t slot, int64_t n, int64_t p0,
                    int64_t p1, T* grad_target, std::vector<T>& col, std::vector<T>& gp_buffer) {
  const int64_t rows = p1 - p0;
  const bool has_act = a.act != Activation::None;
  T* wpart = a.weight_partials ? a.weight_partials + slot * g.OC * g.K : nullptr;
  if (g.channels_last) {
    const int64_t offset = (n * g.P + p0) * g.OC;
    const T* gp = a.grad_out + offset;
    if (has_act) {
      cpu::grad_pre_block<T>(a.grad_out + offset, g.OC, a.out + offset, g.OC, gp_buffer.data(), g.OC, rows,
                             g.OC, a.act);
      gp = gp_buffer.data();
    }
    if (a.bias_partials) cpu::add_column_sums<T>(gp, g.OC, rows, g.OC, a.bias_partials + slot * g.OC);
    // Pixels past P continue into the following samples (whole samples only): NHWC rows of consecutive
    // samples are contiguous in grad_output and in a direct conv's input, and im2col / col2im go sample by
    // sample.
    const int64_t samples = p1 > g.P ? (p1 - p0) / g.P : 1;
    const int64_t span = p1 > g.P ? g.P : rows;
    const T* xn = a.x + n * g.HW * g.C;
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const T* gp_g = gp + grp * g.OCg;
      const T* w_g = a.w + grp * g.OCg * g.K;
      if (wpart) {
        const T* src = xn + p0 * g.C + grp * g.Cg;
        int64_t ld = g.C;
        if (!g.direct) {
          for (int64_t sn = 0; sn < samples; ++sn)
            im2col_nhwc(g, xn + sn * g.HW * g.C, grp * g.Cg, p0, p0 + span, col.data() + sn * span * g.K);
          src = col.data();
          ld = g.K;
        }
        cpu::gemm<T>(true, false, g.OCg, g.K, rows, gp_g, g.OC, src, ld, wpart + grp * g.OCg * g.K, g.K,
                     true);
      }
      if (a.grad_in) {
        if (g.direct) {
          cpu::gemm<T>(false, false, rows, g.Cg, g.OCg, gp_g, g.OC, w_g, g.K,
                       a.grad_in + (n * g.HW + p0) * g.C + grp * g.Cg, g.C, false);
        } else {
          cpu::gemm<T>(false, false, rows, g.K, g.OCg, gp_g, g.OC, w_g, g.K, col.data(), g.K, false);
          for (int64_t sn = 0; sn < samples; ++sn)
            col2im_nhwc(g, col.data() + sn * span * g.K, grp * g.Cg, p0, p0 + span,
                        grad_target + (n + sn) * g.HW * g.C);
        }
      }
    }
  } else {
    const int64_t offset = n * g.OC * g.P + p0;
    const T* gp = a.grad_out + offset;
    int64_t ldgp = g.P;
    if (has_act) {
      cpu::grad_pre_block<T>(a.grad_out + offset, g.P, a.out + offset, g.P, gp_buffer.data(), rows, g.OC,
                             rows, a.act);
      gp = gp_buffer.data();
      ldgp = rows;
    }
    if (a.bias_partials) cpu::add_row_sums<T>(gp, ldgp, g.OC, rows, a.bias_partials + slot * g.OC);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const T* gp_g = gp + grp * g.OCg * ldgp;
      const T* wt_g = a.w_t + grp * g.OCg * g.K;
      const int64_t plane_offset = (n * g.C + grp * g.Cg) * g.HW;
      if (wpart) {
        const T* src = a.x + plane_offset + p0;
        int64_t ld = g.HW;
        if (!g.direct) {
          nchw_col_pass<T, false>(g, a.x + plane_offset, p0, p1, col.data());
          src = col.data();
          ld = rows;
        }
        cpu::gemm<T>(false, true, g.OCg, g.K, rows, gp_g, ldgp, src, ld, wpart + grp * g.OCg * g.K, g.K,
                     true);
      }
      if (a.grad_in) {
        if (g.direct) {
          cpu::gemm<T>(false, false, g.Cg, rows, g.OCg, wt_g, g.OCg, gp_g, ldgp,
                       a.grad_in + plane_offset + p0, g.HW, false);
        } else {
          cpu::gemm<T>(false, false, g.K, rows, g.OCg, wt_g, g.OCg, gp_g, ldgp, col.data(), rows, false);
          nchw_col_pass<T, true>(g, grad_target + plane_offset, p0, p1, col.data());
        }
      }
    }
  }
}

template <typename T>
void conv_backward_gemm(const Geometry& g, const BackwardArgs<T>& a, int64_t slots, bool sample_owned,
                        T* private_grads) {
  // NHWC with small planes: a task takes several whole samples, so wgrad's reduction is long enough.
  const int64_t samples_per_task = sample_owned && g.channels_last && g.chunks_per_sample == 1
                                       ? std::max<int64_t>(1, kMinChunkPixels / g.P)
                                       : 1;
  const int64_t max_rows = samples_per_task * ((g.P + g.chunks_per_sample - 1) / g.chunks_per_sample);
  const int64_t units = sample_owned ? g.N : g.num_tasks();
  cpu::for_each_slot(units, slots, [&](int64_t slot, int64_t u_begin, int64_t u_end) {
    std::vector<T> col;
    if (!g.direct) col.resize(max_rows * g.K);
    std::vector<T> gp_buffer;
    if (a.act != Activation::None) gp_buffer.resize(max_rows * g.OC);
    T* target = a.grad_in;
    if (!sample_owned && slot > 0 && private_grads != nullptr)
      target = private_grads + (slot - 1) * g.N * g.HW * g.C;
    const int64_t t_begin = sample_owned ? u_begin * g.chunks_per_sample : u_begin;
    const int64_t t_end = sample_owned ? u_end * g.chunks_per_sample : u_end;
    if (samples_per_task > 1) {
      for (int64_t n = u_begin; n < u_end; n += samples_per_task) {
        const int64_t samples = std::min(samples_per_task, u_end - n);
        backward_chunk(g, a, slot, n, 0, samples * g.P, target, col, gp_buffer);
      }
      return;
    }
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t n = t / g.chunks_per_sample, c = t % g.chunks_per_sample;
      backward_chunk(g, a, slot, n, g.chunk_begin(c), g.chunk_begin(c + 1), target, col, gp_buffer);
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Depthwise: groups == C, one input channel per group, M = OC / C outputs per input channel.

// NHWC forward. wt is [KH * KW, OC]; tasks are output rows (n, oh), each written then finished in place.
template <typename T>
void depthwise_forward_nhwc(const Geometry& g, const T* x, const T* wt, const T* bias, const T* res, T* out,
                            Activation act) {
  // Geometry copied into locals so the channel loops see loop-invariant bounds and vectorise.
  const int64_t C = g.C, OC = g.OC, mult = OC / C, H = g.H, W = g.W, OH = g.OH, OW = g.OW, KH = g.KH,
                KW = g.KW;
  const int64_t sh = g.sh, sw = g.sw, ph = g.ph, pw = g.pw, dh = g.dh, dw = g.dw;
  at::parallel_for(0, g.N * OH, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / OH, oh = t % OH;
      T* row = out + t * OW * OC;
      std::fill_n(row, OW * OC, T(0));
      for (int64_t kh = 0; kh < KH; ++kh) {
        const int64_t ih = oh * sh - ph + kh * dh;
        if (ih < 0 || ih >= H) continue;
        const T* x_row = x + (n * H + ih) * W * C;
        for (int64_t kw = 0; kw < KW; ++kw) {
          const int64_t off_w = kw * dw - pw;
          int64_t lo, hi;
          valid_range(off_w, sw, W, 0, OW, lo, hi);
          const T* __restrict__ wp = wt + (kh * KW + kw) * OC;
          for (int64_t ow = lo; ow < hi; ++ow) {
            T* __restrict__ acc = row + ow * OC;
            const T* __restrict__ xp = x_row + (ow * sw + off_w) * C;
            if (mult == 1) {
              for (int64_t c = 0; c < C; ++c) acc[c] += xp[c] * wp[c];
            } else {
              for (int64_t c = 0; c < C; ++c) {
                const T xv = xp[c];
                for (int64_t j = 0; j < mult; ++j) acc[c * mult + j] += xv * wp[c * mult + j];
              }
            }
          }
        }
      }
      cpu::apply_epilogue<T>(row, OC, OW, OC, bias, nullptr, res ? res + t * OW * OC : nullptr, OC, act);
    }
  });
}

// NCHW forward, one output plane per task. w is [OC, KH * KW].
template <typename T>
void depthwise_forward_nchw(const Geometry& g, const T* x, const T* w, const T* bias, const T* res, T* out,
                            Activation act) {
  const int64_t mult = g.OC / g.C;
  at::parallel_for(0, g.N * g.OC, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / g.OC, oc = t % g.OC;
      const T* plane = x + (n * g.C + oc / mult) * g.HW;
      T* o = out + t * g.P;
      std::fill_n(o, g.P, T(0));
      for (int64_t kh = 0; kh < g.KH; ++kh) {
        for (int64_t kw = 0; kw < g.KW; ++kw) {
          const T wv = w[oc * g.KH * g.KW + kh * g.KW + kw];
          const int64_t off_w = kw * g.dw - g.pw;
          int64_t lo, hi;
          valid_range(off_w, g.sw, g.W, 0, g.OW, lo, hi);
          for (int64_t oh = 0; oh < g.OH; ++oh) {
            const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
            if (ih < 0 || ih >= g.H) continue;
            const T* __restrict__ in_row = plane + ih * g.W + off_w;
            T* __restrict__ o_row = o + oh * g.OW;
            if (g.sw == 1) {
              for (int64_t ow = lo; ow < hi; ++ow) o_row[ow] += wv * in_row[ow];
            } else {
              for (int64_t ow = lo; ow < hi; ++ow) o_row[ow] += wv * in_row[ow * g.sw];
            }
          }
        }
      }
      cpu::apply_epilogue<T>(o, g.P, 1, g.P, nullptr, bias ? bias + oc : nullptr,
                             res ? res + t * g.P : nullptr, g.P, act);
    }
  });
}

// NHWC backward. Tasks are channel blocks: a task owns grad_in[..., c0:c1], grad_weight and grad_bias of
// its output channels, so there are no races and no partial sums to reduce. wt is [KH * KW, OC];
// grad_in is zero-filled; grad_w_t is [KH * KW, OC].
template <typename T>
void depthwise_backward_nhwc(const Geometry& g, const BackwardArgs<T>& a, const T* wt, T* grad_w_t,
                             T* grad_b) {
  const int64_t mult = g.OC / g.C;
  const int64_t threads = at::get_num_threads();
  const int64_t block = std::max<int64_t>(16, ((g.C + threads - 1) / threads + 15) / 16 * 16);
  const int64_t tasks = (g.C + block - 1) / block;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> gp_buffer(block * mult);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t c0 = t * block, nc = std::min(g.C, c0 + block) - c0;
      const int64_t oc0 = c0 * mult, noc = nc * mult;
      for (int64_t n = 0; n < g.N; ++n) {
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            const int64_t pix = (n * g.OH + oh) * g.OW + ow;
            const T* gp = a.grad_out + pix * g.OC + oc0;
            if (a.act != Activation::None) {
              cpu::grad_pre_block<T>(gp, 0, a.out + pix * g.OC + oc0, 0, gp_buffer.data(), 0, 1, noc, a.act);
              gp = gp_buffer.data();
            }
            if (grad_b) {
              T* __restrict__ gb = grad_b + oc0;
              for (int64_t j = 0; j < noc; ++j) gb[j] += gp[j];
            }
            if (!a.grad_in && !grad_w_t) continue;
            for (int64_t kh = 0; kh < g.KH; ++kh) {
              const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
              if (ih < 0 || ih >= g.H) continue;
              for (int64_t kw = 0; kw < g.KW; ++kw) {
                const int64_t iw = ow * g.sw - g.pw + kw * g.dw;
                if (iw < 0 || iw >= g.W) continue;
                const int64_t in_pix = (n * g.H + ih) * g.W + iw;
                const int64_t tap = kh * g.KW + kw;
                const T* __restrict__ wp = wt + tap * g.OC + oc0;
                const T* __restrict__ xp = a.x + in_pix * g.C + c0;
                if (a.grad_in) {
                  T* __restrict__ gi = a.grad_in + in_pix * g.C + c0;
                  if (mult == 1) {
                    for (int64_t c = 0; c < nc; ++c) gi[c] += gp[c] * wp[c];
                  } else {
                    for (int64_t c = 0; c < nc; ++c) {
                      T acc = 0;
                      for (int64_t j = 0; j < mult; ++j) acc += gp[c * mult + j] * wp[c * mult + j];
                      gi[c] += acc;
                    }
                  }
                }
                if (grad_w_t) {
                  T* __restrict__ gw = grad_w_t + tap * g.OC + oc0;
                  for (int64_t c = 0; c < nc; ++c) {
                    const T xv = xp[c];
                    for (int64_t j = 0; j < mult; ++j) gw[c * mult + j] += gp[c * mult + j] * xv;
                  }
                }
              }
            }
          }
        }
      }
    }
  });
}

// NCHW backward, one input channel per task: it owns that channel's grad_in planes and the weights and
// biases of its M output channels. w and grad_w are [OC, KH * KW]; grad_in is zero-filled.
template <typename T>
void depthwise_backward_nchw(const Geometry& g, const BackwardArgs<T>& a, T* grad_w, T* grad_b) {
  const int64_t mult = g.OC / g.C;
  at::parallel_for(0, g.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> gp_buffer(a.act != Activation::None ? g.P : 0);
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t n = 0; n < g.N; ++n) {
        const T* plane = a.x + (n * g.C + c) * g.HW;
        T* gi = a.grad_in ? a.grad_in + (n * g.C + c) * g.HW : nullptr;
        for (int64_t j = 0; j < mult; ++j) {
          const int64_t oc = c * mult + j;
          const T* gp = a.grad_out + (n * g.OC + oc) * g.P;
          if (a.act != Activation::None) {
            cpu::grad_pre_block<T>(gp, 0, a.out + (n * g.OC + oc) * g.P, 0, gp_buffer.data(), 0, 1, g.P,
                                   a.act);
            gp = gp_buffer.data();
          }
          if (grad_b) {
            T acc = 0;
            for (int64_t p = 0; p < g.P; ++p) acc += gp[p];
            grad_b[oc] += acc;
          }
          if (!gi && !grad_w) continue;
          for (int64_t kh = 0; kh < g.KH; ++kh) {
            for (int64_t kw = 0; kw < g.KW; ++kw) {
              const int64_t tap = kh * g.KW + kw;
              const T wv = a.w[oc * g.KH * g.KW + tap];
              const int64_t off_w = kw * g.dw - g.pw;
              int64_t lo, hi;
              valid_range(off_w, g.sw, g.W, 0, g.OW, lo, hi);
              T wacc = 0;
              for (int64_t oh = 0; oh < g.OH; ++oh) {
                const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
                if (ih < 0 || ih >= g.H) continue;
                const T* __restrict__ gp_row = gp + oh * g.OW;
                const int64_t row_off = ih * g.W + off_w;
                if (grad_w) {
                  const T* __restrict__ in_row = plane + row_off;
                  for (int64_t ow = lo; ow < hi; ++ow) wacc += gp_row[ow] * in_row[ow * g.sw];
                }
                if (gi) {
                  T* __restrict__ gi_row = gi + row_off;
                  if (g.sw == 1) {
                    for (int64_t ow = lo; ow < hi; ++ow) gi_row[ow] += wv * gp_row[ow];
                  } else {
                    for (int64_t ow = lo; ow < hi; ++ow) gi_row[ow * g.sw] += wv * gp_row[ow];
                  }
                }
              }
              if (grad_w) grad_w[oc * g.KH * g.KW + tap] += wacc;
            }
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Entry points.

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation, int64_t groups, int64_t activation,
                      const std::optional<at::Tensor>& residual) {
  const Activation act = to_activation(activation);
  const Conv2dShape s = check_conv2d(input, weight, bias, stride, padding, dilation, groups, false);
  const std::vector<int64_t> out_sizes{s.batch, s.out_channels, s.out_h, s.out_w};
  check_residual(residual, input, out_sizes);
  const auto fmt = output_memory_format(input);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const Geometry g(s, nhwc);

  const at::Tensor x = input.contiguous(fmt);
  const bool has_bias = bias.has_value() && bias->defined();
  const bool has_res = residual.has_value() && residual->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  const at::Tensor r = has_res ? residual->contiguous(fmt) : at::Tensor();
  at::Tensor out = at::empty(out_sizes, x.options().memory_format(fmt));

  at::Tensor w;
  if (g.depthwise() && nhwc) {
    w = weight.reshape({s.out_channels, s.kernel_h * s.kernel_w}).t().contiguous();  // [taps, OC]
  } else if (nhwc && !g.depthwise()) {
    w = weight.permute({0, 2, 3, 1}).contiguous();  // [OC, KH, KW, Cg]
  } else {
    w = weight.contiguous();
  }

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastcnn_conv2d_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* bp = has_bias ? b.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* rp = has_res ? r.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    if (g.depthwise()) {
      if (nhwc) {
        depthwise_forward_nhwc<scalar_t>(g, xp, wp, bp, rp, op, act);
      } else {
        depthwise_forward_nchw<scalar_t>(g, xp, wp, bp, rp, op, act);
      }
    } else if (nhwc) {
      conv_forward_nhwc<scalar_t>(g, xp, wp, bp, rp, op, act);
    } else {
      conv_forward_nchw<scalar_t>(g, xp, wp, bp, rp, op, act);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& output, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, int64_t activation, std::array<bool, 3> output_mask) {
  const Activation act = to_activation(activation);
  const Conv2dShape s = check_conv2d(input, weight, std::nullopt, stride, padding, dilation, groups, false);
  const bool has_act = act != Activation::None;
  check_conv2d_backward(grad_output, input, output, s, has_act);
  const bool need_input = output_mask[0], need_weight = output_mask[1], need_bias = output_mask[2];
  const auto opts = input.options();
  const auto fmt = output_memory_format(input);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const Geometry g(s, nhwc);
  if (!need_input && !need_weight && !need_bias) {
    return {at::empty({0}, opts), at::empty({0}, opts), at::empty({0}, opts)};
  }

  const at::Tensor go = grad_output.contiguous(fmt);
  const at::Tensor y = has_act ? output->contiguous(fmt) : at::Tensor();
  const at::Tensor x = input.contiguous(fmt);
  const int64_t taps = s.kernel_h * s.kernel_w;

  at::Tensor w;
  if (g.depthwise() && nhwc) {
    w = weight.reshape({s.out_channels, taps}).t().contiguous();
  } else if (nhwc && !g.depthwise()) {
    w = weight.permute({0, 2, 3, 1}).contiguous();
  } else {
    w = weight.contiguous();
  }

  at::Tensor grad_input = at::empty({0}, opts), grad_weight = at::empty({0}, opts),
             grad_bias = at::empty({0}, opts);

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fastcnn_conv2d_backward_cpu", [&] {
    BackwardArgs<scalar_t> a{};
    a.grad_out = go.const_data_ptr<scalar_t>();
    a.out = has_act ? y.const_data_ptr<scalar_t>() : nullptr;
    a.x = x.const_data_ptr<scalar_t>();
    a.w = w.const_data_ptr<scalar_t>();
    at::Tensor w_t;
    if (!nhwc && !g.depthwise() && need_input) {
      w_t = w.reshape({groups, g.OCg, g.K}).transpose(1, 2).contiguous();
      a.w_t = w_t.const_data_ptr<scalar_t>();
    }
    a.act = act;

    if (g.depthwise()) {
      if (need_input) {
        grad_input = at::empty(input.sizes(), opts.memory_format(fmt)).zero_();
        a.grad_in = grad_input.mutable_data_ptr<scalar_t>();
      }
      at::Tensor gw = need_weight ? at::zeros(nhwc ? std::vector<int64_t>{taps, s.out_channels}
                                                   : std::vector<int64_t>{s.out_channels, taps},
                                              opts)
                                  : at::Tensor();
      if (need_bias) grad_bias = at::zeros({s.out_channels}, opts);
      scalar_t* gwp = need_weight ? gw.mutable_data_ptr<scalar_t>() : nullptr;
      scalar_t* gbp = need_bias ? grad_bias.mutable_data_ptr<scalar_t>() : nullptr;
      if (nhwc) {
        depthwise_backward_nhwc<scalar_t>(g, a, a.w, gwp, gbp);
        if (need_weight) grad_weight = gw.t().reshape(weight.sizes()).contiguous();
      } else {
        depthwise_backward_nchw<scalar_t>(g, a, gwp, gbp);
        if (need_weight) grad_weight = gw.view(weight.sizes());
      }
      return;
    }

    const int64_t tasks = g.num_tasks();
    const int64_t threads = at::get_num_threads();
    // A whole sample per slot when the batch splits evenly enough; otherwise chunk-level slots, with
    // private grad_input buffers for the scatter when windows of neighbouring chunks overlap.
    const bool sample_owned = g.N >= threads && (g.N % threads == 0 || g.N >= 4 * threads);
    const int64_t slots = cpu::num_slots(sample_owned ? g.N : tasks);
    at::Tensor private_grads;
    if (need_input) {
      const bool scatter = !g.direct;
      if (scatter) {
        grad_input = at::empty(input.sizes(), opts.memory_format(fmt)).zero_();
        if (!sample_owned && slots > 1) {
          private_grads = at::zeros({(slots - 1) * input.numel()}, opts);
        }
      } else {
        grad_input = at::empty(input.sizes(), opts.memory_format(fmt));
      }
      a.grad_in = grad_input.mutable_data_ptr<scalar_t>();
    }
    at::Tensor weight_partials, bias_partials;
    if (need_weight) {
      weight_partials = at::zeros({slots, s.out_channels * g.K}, opts);
      a.weight_partials = weight_partials.mutable_data_ptr<scalar_t>();
    }
    if (need_bias) {
      bias_partials = at::zeros({slots, s.out_channels}, opts);
      a.bias_partials = bias_partials.mutable_data_ptr<scalar_t>();
    }
    conv_backward_gemm<scalar_t>(
        g, a, slots, sample_owned,
        private_grads.defined() ? private_grads.mutable_data_ptr<scalar_t>() : nullptr);
    if (private_grads.defined()) {
      // grad_input += private buffers, in slot order.
      scalar_t* gi = a.grad_in;
      const scalar_t* priv = private_grads.const_data_ptr<scalar_t>();
      const int64_t count = input.numel();
      at::parallel_for(0, count, 4096, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          scalar_t acc = gi[i];
          for (int64_t k = 0; k < slots - 1; ++k) acc += priv[k * count + i];
          gi[i] = acc;
        }
      });
    }
    if (need_weight) {
      at::Tensor gw = at::empty({s.out_channels * g.K}, opts);
      cpu::reduce_partials<scalar_t>(weight_partials.const_data_ptr<scalar_t>(), slots, s.out_channels * g.K,
                                     s.out_channels * g.K, gw.mutable_data_ptr<scalar_t>());
      grad_weight =
          nhwc ? gw.view({s.out_channels, s.kernel_h, s.kernel_w, g.Cg}).permute({0, 3, 1, 2}).contiguous()
               : gw.view(weight.sizes());
    }
    if (need_bias) {
      grad_bias = at::empty({s.out_channels}, opts);
      cpu::reduce_partials<scalar_t>(bias_partials.const_data_ptr<scalar_t>(), slots, s.out_channels,
                                     s.out_channels, grad_bias.mutable_data_ptr<scalar_t>());
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, CPU, m) {
  m.impl("conv2d", &conv2d_cpu);
  m.impl("conv2d_backward", &conv2d_backward_cpu);
}

}  // namespace fastcnn
