// The activation epilogue shared by every fastcnn kernel, CPU and CUDA alike, so that a fused conv, a
// fused linear, the residual add and the standalone activations compute the same function on a device.
// Sigmoid and tanh come from the CUDA math library on the GPU and from host_math.h (branch-free, so CPU
// loops vectorise; within 2.4 ulp of libm) on the CPU.
// Backward is taken from the saved *output* y (never the input): relu' = [y > 0], sigmoid' = y(1-y),
// tanh' = 1-y^2. This lets every fused op save one tensor, the one it already wrote.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/host_math.h"

namespace fastcnn {

enum class Activation : int64_t { None = 0, ReLU = 1, Sigmoid = 2, Tanh = 3 };

inline Activation to_activation(int64_t code) {
  TORCH_CHECK(code >= 0 && code <= 3,
              "fastcnn: activation code must be 0 (none), 1 (relu), 2 (sigmoid) or 3 (tanh), got ", code);
  return static_cast<Activation>(code);
}

// T is the accumulation type (float or double); callers convert half/bfloat16 to float first.
template <typename T>
C10_HOST_DEVICE inline T activate(T x, Activation act) {
  switch (act) {
    case Activation::ReLU:
      // x > 0 ? x : 0 would turn NaN into 0; PyTorch's relu propagates NaN, and so do we.
      return x < T(0) ? T(0) : x;
    case Activation::Sigmoid:
#ifdef __CUDA_ARCH__
      return T(1) / (T(1) + ::exp(-x));
#else
      return host_math::sigmoid(x);
#endif
    case Activation::Tanh:
#ifdef __CUDA_ARCH__
      return ::tanh(x);
#else
      return host_math::tanh(x);
#endif
    default:
      return x;
  }
}

// d act / d x expressed through y = act(x), multiplied into the incoming gradient g.
template <typename T>
C10_HOST_DEVICE inline T activation_grad(T g, T y, Activation act) {
  switch (act) {
    case Activation::ReLU:
      return y > T(0) ? g : T(0);
    case Activation::Sigmoid:
      return g * y * (T(1) - y);
    case Activation::Tanh:
      // (1 - y)(1 + y), not 1 - y*y: near saturation y*y rounds away the small difference from 1.
      return g * ((T(1) - y) * (T(1) + y));
    default:
      return g;
  }
}

// Calls f(std::integral_constant<Activation, A>{}) for the runtime `act`, so that a loop written inside f
// sees A as a compile-time constant: the switch in activate/activation_grad folds away and the loop
// vectorises instead of branching per element.
template <typename F>
inline void with_activation(Activation act, F&& f) {
  switch (act) {
    case Activation::ReLU:
      return f(std::integral_constant<Activation, Activation::ReLU>{});
    case Activation::Sigmoid:
      return f(std::integral_constant<Activation, Activation::Sigmoid>{});
    case Activation::Tanh:
      return f(std::integral_constant<Activation, Activation::Tanh>{});
    default:
      return f(std::integral_constant<Activation, Activation::None>{});
  }
}

}  // namespace fastcnn
