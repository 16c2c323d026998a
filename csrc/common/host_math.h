// exp, sigmoid and tanh for float written without branches or library calls, so that a CPU loop over
// them vectorises (the libm calls in a loop stay scalar, ~15x slower than PyTorch's SLEEF loops).
// exp: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, Cephes' degree-6 polynomial for e^r, times 2^n
// built from its bits; max error ~1 ulp over the normal range, which is all sigmoid and tanh need.
// sigmoid: e = exp(-|x|), then 1/(1+e) or e/(1+e) (full relative accuracy for large negative x too).
// tanh: Cephes' odd polynomial below |x| = 0.625 (no cancellation near 0), else 1 - 2/(e^{2|x|} + 1).
// Measured against libm in double over every 61st float bit pattern: sigmoid <= 2.4 ulp, tanh <= 1.4 ulp.
// Every clamp is written so that a NaN compares false and passes through: NaN in, NaN out.
// Host code only; CUDA kernels use the CUDA math library (see activation.h).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace fastcnn {
namespace host_math {

inline float bits_to_float(int32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// 2^e for e in [-126, 127].
inline float exp2_int(int32_t e) {
  return bits_to_float((e + 127) << 23);
}

// e^x for x in [-87.33, 88.37] (results in the normal range, 2^n with n in [-126, 127]).
inline float exp_normal_range(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float n = (x * kLog2e + kRound) - kRound;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return (p * (r * r) + r + 1.0f) * exp2_int(static_cast<int32_t>(n));
}

inline float sigmoid(float x) {
  // e^-|x| below FLT_MIN (|x| > 87.33) flushes to 0: sigmoid(x) is then 1, or a subnormal (< 1.2e-38)
  // returned as 0.
  constexpr float kMin = -87.3365479f;
  const float t = -std::fabs(x);
  const float e = t < kMin ? 0.0f : exp_normal_range(t < kMin ? kMin : t);
  return (x >= 0.0f ? 1.0f : e) / (1.0f + e);
}

inline float tanh(float x) {
  const float ax = std::fabs(x);
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * ax + ax;
  // Above 9.01, 1 - tanh(x) is under half an ulp below 1 and the result rounds to 1 (clamping at 9 would
  // leave 0.99999994 for every large x).
  const float e = exp_normal_range(2.0f * (ax > 10.0f ? 10.0f : ax));
  const float large = 1.0f - 2.0f / (e + 1.0f);
  return std::copysign(ax < 0.625f ? small : large, x);
}

// Double precision keeps libm: fp64 is the reference precision, not a speed path.
inline double sigmoid(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}
inline double tanh(double x) {
  return std::tanh(x);
}

}  // namespace host_math
}  // namespace fastcnn
