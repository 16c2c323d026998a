// Building blocks shared by the CPU conv2d and linear kernels: a row-major GEMM on raw pointers (fastcnn's
// packed micro-kernel GEMM, gemm_kernel.h), the fused epilogue
// y = act(acc + bias + residual) applied to a block while it is still in cache, the fused
// grad_pre = grad_output * act'(output), and the static work split that keeps per-thread partial sums
// deterministic. Everything here operates on one 2-D block [rows, cols] with a leading dimension, so
// the same code serves an NHWC pixel chunk, an NCHW [channels, pixels] block and a linear row chunk.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/activation.h"
#include "cpu/gemm_kernel.h"
#include "cpu/simd_clones.h"

namespace fastcnn {
namespace cpu {

// Row-major C[m, n] (= or +=) op(A)[m, k] @ op(B)[k, n] on fastcnn's packed GEMM (gemm_kernel.h),
// single-threaded: the chunked callers run one per thread. A transposed operand is stored as [k, lda]
// (resp. [n, ldb]) and read through its transpose. B is packed into thread-local panels on every call; a
// transposed A is first copied row-major, since the micro-kernel reads A rows directly.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
          int64_t ldb, T* c, int64_t ldc, bool accumulate) {
  if (m == 0 || n == 0) return;
  thread_local std::vector<T> a_rows, b_panels;
  const T* a_data = a;
  int64_t a_ld = lda;
  if (trans_a && k > 0) {
    a_rows.resize(m * k);
    T* dst = a_rows.data();
    for (int64_t kk = 0; kk < k; ++kk) {
      const T* src = a + kk * lda;
      for (int64_t r = 0; r < m; ++r) dst[r * k + kk] = src[r];
    }
    a_data = dst;
    a_ld = k;
  }
  b_panels.resize(packed_b_size<T>(k, n));
  pack_b<T>(k, 0, n, b, trans_b ? 1 : ldb, trans_b ? ldb : 1, b_panels.data());
  Epilogue<T> ep;
  ep.accumulate = accumulate;
  const bool b_fits_l2 = k * n * int64_t(sizeof(T)) <= (512 << 10);
  gemm_tiles<T>(
      m, n, 1, nullptr, k, [&](int64_t i) { return a_data + i * a_ld; }, b_panels.data(), c, ldc, ep,
      !b_fits_l2);
}

// The epilogue templated on the activation and on which addends exist, so the inner loop is a
// branch-free, vectorisable sweep over a contiguous row.
template <typename T, Activation A, bool kColBias, bool kResidual>
FASTCNN_SIMD_CLONES void epilogue_impl(T* out, int64_t ld, int64_t rows, int64_t cols, const T* col_bias,
                                       const T* row_bias, const T* residual, int64_t res_ld) {
  for (const auto r : c10::irange(rows)) {
    T* __restrict__ o = out + r * ld;
    const T* __restrict__ res = kResidual ? residual + r * res_ld : nullptr;
    const T rb = row_bias != nullptr ? row_bias[r] : T(0);
    for (int64_t c = 0; c < cols; ++c) {
      T v = o[c] + rb;
      if constexpr (kColBias) v += col_bias[c];
      if constexpr (kResidual) v += res[c];
      o[c] = activate<T>(v, A);
    }
  }
}

template <typename T, Activation A>
void epilogue_act(T* out, int64_t ld, int64_t rows, int64_t cols, const T* col_bias, const T* row_bias,
                  const T* residual, int64_t res_ld) {
  if (col_bias != nullptr) {
    if (residual != nullptr) {
      epilogue_impl<T, A, true, true>(out, ld, rows, cols, col_bias, row_bias, residual, res_ld);
    } else {
      epilogue_impl<T, A, true, false>(out, ld, rows, cols, col_bias, row_bias, residual, res_ld);
    }
  } else if (residual != nullptr) {
    epilogue_impl<T, A, false, true>(out, ld, rows, cols, col_bias, row_bias, residual, res_ld);
  } else {
    epilogue_impl<T, A, false, false>(out, ld, rows, cols, col_bias, row_bias, residual, res_ld);
  }
}

// out[r, c] = act(out[r, c] + col_bias[c] + row_bias[r] + residual[r, c]) over one block; any addend
// may be null. Columns index channels in NHWC / linear blocks (col_bias), rows in NCHW blocks (row_bias).
template <typename T>
void apply_epilogue(T* out, int64_t ld, int64_t rows, int64_t cols, const T* col_bias, const T* row_bias,
                    const T* residual, int64_t res_ld, Activation act) {
  if (act == Activation::None && col_bias == nullptr && row_bias == nullptr && residual == nullptr) return;
  switch (act) {
    case Activation::ReLU:
      return epilogue_act<T, Activation::ReLU>(out, ld, rows, cols, col_bias, row_bias, residual, res_ld);
    case Activation::Sigmoid:
      return epilogue_act<T, Activation::Sigmoid>(out, ld, rows, cols, col_bias, row_bias, residual, res_ld);
    case Activation::Tanh:
      return epilogue_act<T, Activation::Tanh>(out, ld, rows, cols, col_bias, row_bias, residual, res_ld);
    default:
      return epilogue_act<T, Activation::None>(out, ld, rows, cols, col_bias, row_bias, residual, res_ld);
  }
}

template <typename T, Activation A>
FASTCNN_SIMD_CLONES void grad_pre_impl(const T* g, int64_t g_ld, const T* y, int64_t y_ld, T* gp,
                                       int64_t gp_ld, int64_t rows, int64_t cols) {
  for (const auto r : c10::irange(rows)) {
    const T* __restrict__ gr = g + r * g_ld;
    const T* __restrict__ yr = y + r * y_ld;
    T* __restrict__ out = gp + r * gp_ld;
    for (int64_t c = 0; c < cols; ++c) out[c] = activation_grad<T>(gr[c], yr[c], A);
  }
}

// gp = g * act'(y) over one block, the first thing every backward chunk does with grad_output.
template <typename T>
void grad_pre_block(const T* g, int64_t g_ld, const T* y, int64_t y_ld, T* gp, int64_t gp_ld, int64_t rows,
                    int64_t cols, Activation act) {
  switch (act) {
    case Activation::ReLU:
      return grad_pre_impl<T, Activation::ReLU>(g, g_ld, y, y_ld, gp, gp_ld, rows, cols);
    case Activation::Sigmoid:
      return grad_pre_impl<T, Activation::Sigmoid>(g, g_ld, y, y_ld, gp, gp_ld, rows, cols);
    case Activation::Tanh:
      return grad_pre_impl<T, Activation::Tanh>(g, g_ld, y, y_ld, gp, gp_ld, rows, cols);
    default:
      return grad_pre_impl<T, Activation::None>(g, g_ld, y, y_ld, gp, gp_ld, rows, cols);
  }
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

// Static split of `num_tasks` into at most get_num_threads() contiguous slots; fn(slot, begin, end) runs
// each slot once. The split depends only on the task count and the thread count, so per-slot partial
// sums reduced in slot order give the same bits on every run.
inline int64_t num_slots(int64_t num_tasks) {
  return std::max<int64_t>(1, std::min<int64_t>(num_tasks, at::get_num_threads()));
}

template <typename F>
void for_each_slot(int64_t num_tasks, int64_t slots, const F& fn) {
  at::parallel_for(0, slots, 1, [&](int64_t s_begin, int64_t s_end) {
    for (int64_t s = s_begin; s < s_end; ++s) {
      const int64_t begin = num_tasks * s / slots;
      const int64_t end = num_tasks * (s + 1) / slots;
      if (begin < end) fn(s, begin, end);
    }
  });
}

// dst[i] = sum over s of partials[s * stride + i], in slot order (deterministic), parallel over i.
template <typename T>
void reduce_partials(const T* partials, int64_t slots, int64_t stride, int64_t count, T* dst) {
  at::parallel_for(0, count, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T acc = partials[i];
      for (int64_t s = 1; s < slots; ++s) acc += partials[s * stride + i];
      dst[i] = acc;
    }
  });
}

}  // namespace cpu
}  // namespace fastcnn
