// The activation table shared by every fastcnn kernel, CPU and CUDA alike, so that a fused conv, a fused
// linear, the residual add, the standalone activations and the backward passes compute the same function.
//
// One functor per activation holds its forward value and its derivative; one X-macro row per activation
// (FASTCNN_ACTIVATIONS) generates the enum, the code <-> name map, the runtime dispatch
// (with_activation, activate, activation_grad), the op schemas in ops.cpp and the CPU/CUDA registrations
// of the standalone ops. Adding an activation is a functor, a row, and its Python registry row
// (fastcnn/ops.py); every epilogue picks it up.
//
// A functor's backward(g, s) reads one saved tensor s, which kGradFromOutput names. Where the derivative
// can be written in the output y (relu' = [y > 0], sigmoid' = y(1-y), tanh' = 1-y^2) s is y: every fused op
// then saves the one tensor it already wrote, and its backward kernels apply the derivative in their own
// passes. The others (silu, hardswish, hardsigmoid, gelu) are differentiated through their input x, which
// a fused epilogue never writes: their fused backward kernels refuse them (check_fused_backward), and
// under autograd the Python ops run such an epilogue as the layer without activation followed by the
// activation's own op, which keeps x.
//
// Sigmoid and tanh come from the CUDA math library on the GPU and from host_math.h (branch-free, so CPU
// loops vectorise; within 2.4 ulp of libm) on the CPU and under emulation.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "common/host_math.h"

namespace fastcnn {

// T is the accumulation type (float or double); callers convert half/bfloat16 to float first.
struct IdentityFunctor {
  static constexpr bool kGradFromOutput = true;
  template <typename T>
  C10_HOST_DEVICE static T forward(T x) {
    return x;
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T /*y*/) {
    return g;
  }
};

struct ReLUFunctor {
  static constexpr bool kGradFromOutput = true;
  template <typename T>
  C10_HOST_DEVICE static T forward(T x) {
    // x > 0 ? x : 0 would turn NaN into 0; PyTorch's relu propagates NaN, and so do we.
    return x < T(0) ? T(0) : x;
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T y) {
    return y > T(0) ? g : T(0);
  }
};

struct SigmoidFunctor {
  static constexpr bool kGradFromOutput = true;
  template <typename T>
  C10_HOST_DEVICE static T forward(T x) {
#ifdef __CUDA_ARCH__
    return T(1) / (T(1) + ::exp(-x));
#else
    return host_math::sigmoid(x);
#endif
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T y) {
    return g * y * (T(1) - y);
  }
};

struct TanhFunctor {
  static constexpr bool kGradFromOutput = true;
  template <typename T>
  C10_HOST_DEVICE static T forward(T x) {
#ifdef __CUDA_ARCH__
    return ::tanh(x);
#else
    return host_math::tanh(x);
#endif
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T y) {
    // (1 - y)(1 + y), not 1 - y*y: near saturation y*y rounds away the small difference from 1.
    return g * ((T(1) - y) * (T(1) + y));
  }
};

// relu6 = min(max(x, 0), 6); relu6' = [0 < x < 6] = [0 < y < 6], 0 at both kinks, as PyTorch's
// hardtanh_backward.
struct ReLU6Functor {
  static constexpr bool kGradFromOutput = true;
  template <typename T>
  C10_HOST_DEVICE static T forward(T x) {
    // Comparisons are false for NaN, which passes through as PyTorch's clamp does.
    return x < T(0) ? T(0) : (x > T(6) ? T(6) : x);
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T y) {
    return y > T(0) && y < T(6) ? g : T(0);
  }
};

// silu = x * sigmoid(x); silu' = s * (1 + x * (1 - s)), PyTorch's silu_backward.
struct SiLUFunctor {
  static constexpr bool kGradFromOutput = false;
  template <typename T>
  C10_HOST_DEVICE static T forward(T x) {
    return x * SigmoidFunctor::forward(x);
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x) {
    const T s = SigmoidFunctor::forward(x);
    return g * s * (T(1) + x * (T(1) - s));
  }
};

// hardswish = x * relu6(x + 3) / 6. Its derivative is 0 up to and including x = -3, x / 3 + 1/2 below 3,
// and 1 from x = 3 on: PyTorch's hardswish_backward at the kinks.
struct HardswishFunctor {
  static constexpr bool kGradFromOutput = false;
  template <typename T>
  C10_HOST_DEVICE static T forward(T x) {
    return x * ReLU6Functor::forward(x + T(3)) / T(6);
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x) {
    if (x <= T(-3)) return T(0);
    return x < T(3) ? g * (x / T(3) + T(0.5)) : g;
  }
};

// hardsigmoid = relu6(x + 3) / 6; its derivative 1/6 strictly between -3 and 3, else 0. The 1/6 is the
// float32 constant PyTorch's hardsigmoid_backward multiplies by in every dtype, float64 included, so that
// gradients agree with PyTorch's to rounding (the exact 1/6 differs from it by 3e-8 relative).
struct HardsigmoidFunctor {
  static constexpr bool kGradFromOutput = false;
  template <typename T>
  C10_HOST_DEVICE static T forward(T x) {
    return ReLU6Functor::forward(x + T(3)) / T(6);
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x) {
    constexpr float kOneSixth = 1.0f / 6.0f;
    return x > T(-3) && x < T(3) ? g * static_cast<T>(kOneSixth) : T(0);
  }
};

// gelu = x * Phi(x) with the normal CDF Phi(x) = (1 + erf(x / sqrt 2)) / 2; gelu' = Phi(x) + x * phi(x).
struct GELUFunctor {
  static constexpr bool kGradFromOutput = false;
  template <typename T>
  C10_HOST_DEVICE static T cdf(T x) {
    constexpr double kSqrtHalf = 0.70710678118654752440;
#ifdef __CUDA_ARCH__
    return T(0.5) * (T(1) + ::erf(x * T(kSqrtHalf)));
#else
    return T(0.5) * (T(1) + std::erf(x * T(kSqrtHalf)));
#endif
  }
  template <typename T>
  C10_HOST_DEVICE static T forward(T x) {
    return x * cdf(x);
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x) {
    constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1 / sqrt(2 pi)
#ifdef __CUDA_ARCH__
    const T pdf = ::exp(T(-0.5) * x * x) * T(kInvSqrt2Pi);
#else
    const T pdf = std::exp(T(-0.5) * x * x) * T(kInvSqrt2Pi);
#endif
    return g * (cdf(x) + x * pdf);
  }
};

// gelu with approximate="tanh": x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3))).
struct GELUTanhFunctor {
  static constexpr bool kGradFromOutput = false;
  static constexpr double kBeta = 0.79788456080286535588;  // sqrt(2 / pi)
  static constexpr double kKappa = 0.044715;
  template <typename T>
  C10_HOST_DEVICE static T inner_tanh(T x) {
    return TanhFunctor::forward(T(kBeta) * (x + T(kKappa) * x * x * x));
  }
  template <typename T>
  C10_HOST_DEVICE static T forward(T x) {
    return T(0.5) * x * (T(1) + inner_tanh(x));
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x) {
    const T t = inner_tanh(x);
    const T inner_derivative = T(kBeta) * (T(1) + T(3 * kKappa) * x * x);
    return g * (T(0.5) * (T(1) + t) + T(0.5) * x * ((T(1) - t) * (T(1) + t)) * inner_derivative);
  }
};

// X(Enum, code, op name, functor). The code is the `int activation` of every fused op's schema and of
// fastcnn.ops.ACTIVATIONS; 0 is reserved for no activation (IdentityFunctor).
#define FASTCNN_ACTIVATIONS(X)                       \
  X(ReLU, 1, relu, ReLUFunctor)                      \
  X(Sigmoid, 2, sigmoid, SigmoidFunctor)             \
  X(Tanh, 3, tanh, TanhFunctor)                      \
  X(ReLU6, 4, relu6, ReLU6Functor)                   \
  X(SiLU, 5, silu, SiLUFunctor)                      \
  X(Hardswish, 6, hardswish, HardswishFunctor)       \
  X(Hardsigmoid, 7, hardsigmoid, HardsigmoidFunctor) \
  X(GELU, 8, gelu, GELUFunctor)                      \
  X(GELUTanh, 9, gelu_tanh, GELUTanhFunctor)

#define FASTCNN_ACTIVATION_ENUM_ENTRY(Enum, code, op, Functor) Enum = code,
enum class Activation : int64_t { None = 0, FASTCNN_ACTIVATIONS(FASTCNN_ACTIVATION_ENUM_ENTRY) };
#undef FASTCNN_ACTIVATION_ENUM_ENTRY

template <Activation A>
struct ActivationTraits {
  using Functor = IdentityFunctor;
  static constexpr const char* kName = "none";
};
#define FASTCNN_ACTIVATION_TRAITS(Enum, code, op, Functor_) \
  template <>                                               \
  struct ActivationTraits<Activation::Enum> {               \
    using Functor = Functor_;                               \
    static constexpr const char* kName = #op;               \
  };
FASTCNN_ACTIVATIONS(FASTCNN_ACTIVATION_TRAITS)
#undef FASTCNN_ACTIVATION_TRAITS

template <Activation A>
using ActivationFunctor = typename ActivationTraits<A>::Functor;

inline bool is_activation_code(int64_t code) {
  switch (code) {
    case 0:
#define FASTCNN_ACTIVATION_CASE(Enum, code_, op, Functor) case code_:
      FASTCNN_ACTIVATIONS(FASTCNN_ACTIVATION_CASE)
#undef FASTCNN_ACTIVATION_CASE
      return true;
    default:
      return false;
  }
}

// "0 (none), 1 (relu), ...": the accepted codes, for error messages.
inline std::string activation_codes_text() {
  std::string text = "0 (none)";
#define FASTCNN_ACTIVATION_TEXT(Enum, code, op, Functor) text += ", " #code " (" #op ")";
  FASTCNN_ACTIVATIONS(FASTCNN_ACTIVATION_TEXT)
#undef FASTCNN_ACTIVATION_TEXT
  return text;
}

inline Activation to_activation(int64_t code) {
  TORCH_CHECK(is_activation_code(code), "fastcnn: activation code must be one of ", activation_codes_text(),
              "; got ", code);
  return static_cast<Activation>(code);
}

inline const char* activation_name(Activation act) {
  switch (act) {
#define FASTCNN_ACTIVATION_CASE(Enum, code, op, Functor) \
  case Activation::Enum:                                 \
    return #op;
    FASTCNN_ACTIVATIONS(FASTCNN_ACTIVATION_CASE)
#undef FASTCNN_ACTIVATION_CASE
    default:
      return "none";
  }
}

// Whether act's derivative is written in its output (see the top of this file); true for None.
C10_HOST_DEVICE inline bool grad_from_output(Activation act) {
  switch (act) {
#define FASTCNN_ACTIVATION_CASE(Enum, code, op, Functor) \
  case Activation::Enum:                                 \
    return Functor::kGradFromOutput;
    FASTCNN_ACTIVATIONS(FASTCNN_ACTIVATION_CASE)
#undef FASTCNN_ACTIVATION_CASE
    default:
      return true;
  }
}

// A fused op's backward differentiates its activation through the forward output it is given; an
// activation differentiated through its input cannot be (fastcnn.ops runs those as separate ops).
inline void check_fused_backward(Activation act, const char* op) {
  TORCH_CHECK(
      grad_from_output(act), "fastcnn: ", op, " cannot differentiate a fused ", activation_name(act),
      " activation: its derivative needs the pre-activation, which the fused forward does not keep; "
      "run the layer without activation and the activation's own op (fastcnn.ops does this under autograd)");
}

// Calls f(std::integral_constant<Activation, A>{}) for the runtime `act`, so that a loop written inside f
// sees A as a compile-time constant: the functor call inlines and the loop vectorises instead of
// branching per element.
template <typename F>
inline decltype(auto) with_activation(Activation act, F&& f) {
  switch (act) {
#define FASTCNN_ACTIVATION_CASE(Enum, code, op, Functor) \
  case Activation::Enum:                                 \
    return f(std::integral_constant<Activation, Activation::Enum>{});
    FASTCNN_ACTIVATIONS(FASTCNN_ACTIVATION_CASE)
#undef FASTCNN_ACTIVATION_CASE
    default:
      return f(std::integral_constant<Activation, Activation::None>{});
  }
}

// act(x) for a runtime `act` (a switch; inside with_activation it folds to one functor call).
template <typename T>
C10_HOST_DEVICE inline T activate(T x, Activation act) {
  switch (act) {
#define FASTCNN_ACTIVATION_CASE(Enum, code, op, Functor) \
  case Activation::Enum:                                 \
    return Functor::template forward<T>(x);
    FASTCNN_ACTIVATIONS(FASTCNN_ACTIVATION_CASE)
#undef FASTCNN_ACTIVATION_CASE
    default:
      return x;
  }
}

// The incoming gradient g times act'(x), written through the saved tensor s: the output y = act(x) for the
// activations with kGradFromOutput, the input x for the others.
template <typename T>
C10_HOST_DEVICE inline T activation_grad(T g, T s, Activation act) {
  switch (act) {
#define FASTCNN_ACTIVATION_CASE(Enum, code, op, Functor) \
  case Activation::Enum:                                 \
    return Functor::template backward<T>(g, s);
    FASTCNN_ACTIVATIONS(FASTCNN_ACTIVATION_CASE)
#undef FASTCNN_ACTIVATION_CASE
    default:
      return g;
  }
}

}  // namespace fastcnn
