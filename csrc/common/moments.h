// Mean and variance in one numerically stable form for every normalisation kernel, CPU and CUDA alike:
// (count, mean, M2) moments, grown one value at a time (Welford) and merged pairwise (Chan et al.), never
// from a running sum of squares: var = E[x^2] - E[x]^2 cancels catastrophically when |mean| >> std.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace fastcnn {
namespace stats {

template <typename acc_t>
struct Moments {
  int64_t count;
  acc_t mean;
  acc_t m2;  // sum of squared deviations from mean
};

template <typename acc_t>
C10_HOST_DEVICE inline void welford_add(Moments<acc_t>& m, acc_t x) {
  ++m.count;
  const acc_t delta = x - m.mean;
  m.mean += delta / static_cast<acc_t>(m.count);
  m.m2 += delta * (x - m.mean);
}

template <typename acc_t>
C10_HOST_DEVICE inline Moments<acc_t> merge(const Moments<acc_t>& a, const Moments<acc_t>& b) {
  if (b.count == 0) return a;
  if (a.count == 0) return b;
  const int64_t n = a.count + b.count;
  const acc_t delta = b.mean - a.mean;
  const acc_t b_share = static_cast<acc_t>(b.count) / static_cast<acc_t>(n);
  return {n, a.mean + delta * b_share, a.m2 + b.m2 + delta * delta * static_cast<acc_t>(a.count) * b_share};
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t inverse_std(acc_t var, double eps) {
#ifdef __CUDA_ARCH__
  return acc_t(1) / ::sqrt(var + static_cast<acc_t>(eps));
#else
  return acc_t(1) / std::sqrt(var + static_cast<acc_t>(eps));
#endif
}

}  // namespace stats
}  // namespace fastcnn
