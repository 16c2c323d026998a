// A row-major GEMM on raw pointers for the CPU conv2d and linear kernels: fastcnn's packed micro-kernel
// GEMM (gemm_kernel.h) behind one call, single-threaded, so that each chunked caller runs one per thread.
// The fused epilogue lives in cpu/epilogue.h, the deterministic work split in cpu/slots.h.
#pragma once

#include <cstdint>
#include <vector>

#include "cpu/gemm_kernel.h"

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

}  // namespace cpu
}  // namespace fastcnn
