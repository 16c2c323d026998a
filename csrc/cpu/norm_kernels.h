// CPU pieces the normalisation kernels (batch_norm.cpp, layer_norm.cpp) share: the two-pass moments of a
// contiguous run in float64, and float64 per-channel results written out as a tensor.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>
#include <vector>

#include "cpu/simd_clones.h"

namespace fastcnn {
namespace cpu {

// Mean and sum of squared deviations of n contiguous values: a sum pass, then a deviation pass over the
// run while it is in cache (no E[x^2] - E[x]^2 cancellation). The sums are `omp simd` reductions: a plain
// `sum += v[i]` may not be reordered (no -ffast-math), so it runs one dependent add at a time (measured
// 4x slower than PyTorch's batch_norm backward); the vector lanes' order depends on the ISA clone, never
// on the thread count.
template <typename T>
FASTCNN_SIMD_CLONES void run_moments(const T* __restrict x, int64_t n, double* __restrict mean_out,
                                     double* __restrict m2_out) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]);
  const double mean = sum / static_cast<double>(n);
  double m2 = 0;
#pragma omp simd reduction(+ : m2)
  for (int64_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(x[i]) - mean;
    m2 += d * d;
  }
  *mean_out = mean;
  *m2_out = m2;
}

// values as a 1-D tensor with `options` (float32 or float64).
inline at::Tensor channel_tensor(const std::vector<double>& values, const at::TensorOptions& options) {
  at::Tensor t = at::empty({static_cast<int64_t>(values.size())}, options);
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "fastcnn_channel_tensor_cpu", [&] {
    scalar_t* p = t.mutable_data_ptr<scalar_t>();
    for (size_t c = 0; c < values.size(); ++c) p[c] = static_cast<scalar_t>(values[c]);
  });
  return t;
}

}  // namespace cpu
}  // namespace fastcnn
