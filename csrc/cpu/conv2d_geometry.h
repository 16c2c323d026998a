// Geometry and task split of the CPU conv2d (conv2d.cpp and the files it calls: conv2d_gemm.cpp,
// conv2d_depthwise.cpp, im2col.h): shapes in the kernels' names, the pixel chunks a task covers, and the
// arguments of a backward pass.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "common/activation.h"
#include "common/checks.h"

namespace fastcnn {
namespace cpu {
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

// The output positions o whose input coordinate o * stride + off lies in [0, in): [first, last_excl).
// Made once per tap (its two divisions), then clamped to each output segment.
struct ValidSpan {
  int64_t first, last_excl;
  ValidSpan(int64_t off, int64_t stride, int64_t in)
      : first(off >= 0 ? 0 : (-off + stride - 1) / stride),
        last_excl(in - off <= 0 ? 0 : (in - 1 - off) / stride + 1) {}
  // The valid positions within [o0, o1): [lo, hi).
  void clamp(int64_t o0, int64_t o1, int64_t& lo, int64_t& hi) const {
    lo = std::clamp(first, o0, o1);
    hi = std::clamp(last_excl, lo, o1);
  }
};

// Output positions o in [o0, o1) whose input coordinate o * stride + off lies in [0, in).
inline void valid_range(int64_t off, int64_t stride, int64_t in, int64_t o0, int64_t o1, int64_t& lo,
                        int64_t& hi) {
  ValidSpan(off, stride, in).clamp(o0, o1, lo, hi);
}

template <typename T>
struct BackwardArgs {
  const T* grad_out;  // dense, input's memory format
  const T* out;       // forward output, only when act != None
  const T* x;
  const T* w;          // [OC, K], K ordered (kh, kw, c) for NHWC and (c, kh, kw) for NCHW
  const T* w_t;        // NCHW only: [groups, K, OCg], the transpose dgrad reads row by row
  T* grad_in;          // null when not requested; zero-filled by the caller unless the conv is direct
  T* weight_partials;  // [slots, OC * K] ([slots, groups, K, OCg] if weight_grad_transposed), zero-filled;
                       // null when not requested
  // NCHW: wgrad computed as its transpose col @ grad^T, so that the GEMM packs grad_output's OCg rows
  // instead of the K = Cg * KH * KW im2col rows (see nchw_weight_grad_transposed).
  bool weight_grad_transposed;
  T* bias_partials;  // [slots, OC], zero-filled; null when not requested
  Activation act;
};

// Whether NCHW wgrad packs grad_output (OCg rows) rather than the im2col rows (K): the GEMM packs its B
// operand transposed on every call, so the smaller one is packed.
inline bool nchw_weight_grad_transposed(const Geometry& g) {
  return !g.channels_last && g.K > g.OCg;
}

}  // namespace cpu
}  // namespace fastcnn
