// The fused epilogues of the CPU conv2d and linear kernels, applied to one 2-D block [rows, cols] with a
// leading dimension while it is still in cache: y = act(acc + bias + residual) forward, grad_pre =
// grad_output * act'(output) backward, and the bias-gradient row/column sums. The same code serves an
// NHWC pixel chunk, an NCHW [channels, pixels] block and a linear row chunk. The activation comes from
// the table in common/activation.h.
#pragma once

#include <c10/util/irange.h>

#include <cstdint>

#include "common/activation.h"
#include "cpu/simd_clones.h"

namespace fastcnn {
namespace cpu {

// The epilogue templated on the activation and on which addends exist, so the inner loop is a
// branch-free, vectorisable sweep over a contiguous row.
template <typename T, typename Functor, bool kColBias, bool kResidual>
FASTCNN_SIMD_CLONES void epilogue_impl(const Functor f, T* out, int64_t ld, int64_t rows, int64_t cols,
                                       const T* col_bias, const T* row_bias, const T* residual,
                                       int64_t res_ld) {
  for (const auto r : c10::irange(rows)) {
    T* __restrict__ o = out + r * ld;
    const T* __restrict__ res = kResidual ? residual + r * res_ld : nullptr;
    const T rb = row_bias != nullptr ? row_bias[r] : T(0);
    for (int64_t c = 0; c < cols; ++c) {
      T v = o[c] + rb;
      if constexpr (kColBias) v += col_bias[c];
      if constexpr (kResidual) v += res[c];
      o[c] = f.forward(v);
    }
  }
}

template <typename T, typename Functor>
void epilogue_act(const Functor f, T* out, int64_t ld, int64_t rows, int64_t cols, const T* col_bias,
                  const T* row_bias, const T* residual, int64_t res_ld) {
  if (col_bias != nullptr) {
    if (residual != nullptr) {
      epilogue_impl<T, Functor, true, true>(f, out, ld, rows, cols, col_bias, row_bias, residual, res_ld);
    } else {
      epilogue_impl<T, Functor, true, false>(f, out, ld, rows, cols, col_bias, row_bias, residual, res_ld);
    }
  } else if (residual != nullptr) {
    epilogue_impl<T, Functor, false, true>(f, out, ld, rows, cols, col_bias, row_bias, residual, res_ld);
  } else {
    epilogue_impl<T, Functor, false, false>(f, out, ld, rows, cols, col_bias, row_bias, residual, res_ld);
  }
}

// out[r, c] = act(out[r, c] + col_bias[c] + row_bias[r] + residual[r, c]) over one block; any addend
// may be null. Columns index channels in NHWC / linear blocks (col_bias), rows in NCHW blocks (row_bias).
template <typename T>
void apply_epilogue(T* out, int64_t ld, int64_t rows, int64_t cols, const T* col_bias, const T* row_bias,
                    const T* residual, int64_t res_ld, Activation act) {
  if (act == Activation::None && col_bias == nullptr && row_bias == nullptr && residual == nullptr) return;
  with_activation(act, [&](auto tag) {
    epilogue_act<T>(activation_functor<decltype(tag)::value>(act), out, ld, rows, cols, col_bias, row_bias,
                    residual, res_ld);
  });
}

template <typename T, typename Functor>
FASTCNN_SIMD_CLONES void grad_pre_impl(const Functor f, const T* g, int64_t g_ld, const T* y, int64_t y_ld,
                                       T* gp, int64_t gp_ld, int64_t rows, int64_t cols) {
  for (const auto r : c10::irange(rows)) {
    const T* __restrict__ gr = g + r * g_ld;
    const T* __restrict__ yr = y + r * y_ld;
    T* __restrict__ out = gp + r * gp_ld;
    for (int64_t c = 0; c < cols; ++c) out[c] = f.backward(gr[c], yr[c]);
  }
}

// gp = g * act'(y) over one block, the first thing every backward chunk does with grad_output.
template <typename T>
void grad_pre_block(const T* g, int64_t g_ld, const T* y, int64_t y_ld, T* gp, int64_t gp_ld, int64_t rows,
                    int64_t cols, Activation act) {
  with_activation(act, [&](auto tag) {
    grad_pre_impl<T>(activation_functor<decltype(tag)::value>(act), g, g_ld, y, y_ld, gp, gp_ld, rows, cols);
  });
}

// sums[c] += sum over rows of block[r, c] (bias gradient of an NHWC / linear block).
template <typename T>
void add_column_sums(const T* block, int64_t ld, int64_t rows, int64_t cols, T* sums) {
  for (const auto r : c10::irange(rows)) {
    const T* __restrict__ row = block + r * ld;
    T* __restrict__ s = sums;
    for (int64_t c = 0; c < cols; ++c) s[c] += row[c];
  }
}

// sums[r] += sum over cols of block[r, c] (bias gradient of an NCHW [channels, pixels] block).
template <typename T>
void add_row_sums(const T* block, int64_t ld, int64_t rows, int64_t cols, T* sums) {
  for (const auto r : c10::irange(rows)) {
    const T* __restrict__ row = block + r * ld;
    T acc = 0;
    for (int64_t c = 0; c < cols; ++c) acc += row[c];
    sums[r] += acc;
  }
}

}  // namespace cpu
}  // namespace fastcnn
