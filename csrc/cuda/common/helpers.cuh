// Small host/device helpers of the fastcnn CUDA kernels, one home each: rounding-up division, the
// pointer alignment test behind every vector path, the non-negative divmod of pixel indices. Kernels accumulate in at::opmath_type<T> (float for
// half, bfloat16 and float; double for double), included here. The cached device properties (SM count, compute
// capability) are in launch.cuh, next to the launch they size.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace fastcnn {
namespace cuda {

C10_HOST_DEVICE constexpr int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// True when p may be accessed as `bytes`-wide vectors (a power of two).
inline bool is_aligned(const void* p, size_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

// q = a / b, r = a % b for non-negative a, with the cheaper 32-bit division whenever a fits.
__device__ __forceinline__ void divmod_nonneg(int64_t a, int b, int64_t& q, int& r) {
  if (a <= INT32_MAX) {
    const int a32 = static_cast<int>(a);
    q = a32 / b;
    r = a32 - static_cast<int>(q) * b;
  } else {
    q = a / b;
    r = static_cast<int>(a - q * b);
  }
}

}  // namespace cuda
}  // namespace fastcnn
