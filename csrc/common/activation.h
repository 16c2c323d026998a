// The activation table shared by every fastcnn kernel, CPU and CUDA alike, so that a fused conv, a fused
// linear, the residual add, the standalone activations and the backward passes compute the same function.
//
// One functor per activation holds its forward value and its derivative; one X-macro row per activation
// (FASTCNN_ACTIVATIONS) generates the enum, the code <-> name map, the runtime dispatch
// (with_activation, activate, activation_grad), the op schemas in ops.cpp and the CPU/CUDA registrations
// of the standalone ops. Adding an activation is a functor, a row, and its Python registry row
// (fastcnn/ops.py); every epilogue picks it up.
//
// Backward is taken from the saved *output* y where the derivative can be written in y (relu' = [y > 0],
// sigmoid' = y(1-y), tanh' = 1-y^2): every fused op then saves the one tensor it already wrote.
// kGradFromOutput says which tensor a functor's backward() reads; every activation in the table reads y
// today, and the fused ops check it (static_assert below) until one that needs its input is added.
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

// X(Enum, code, op name, functor). The code is the `int activation` of every fused op's schema and of
// fastcnn.ops.ACTIVATIONS; 0 is reserved for no activation (IdentityFunctor).
#define FASTCNN_ACTIVATIONS(X)           \
  X(ReLU, 1, relu, ReLUFunctor)          \
  X(Sigmoid, 2, sigmoid, SigmoidFunctor) \
  X(Tanh, 3, tanh, TanhFunctor)          \
  X(ReLU6, 4, relu6, ReLU6Functor)

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

#define FASTCNN_ACTIVATION_GRAD_FROM_OUTPUT(Enum, code, op, Functor) \
  static_assert(Functor::kGradFromOutput, "fused ops save only the output y (see the comment above)");
FASTCNN_ACTIVATIONS(FASTCNN_ACTIVATION_GRAD_FROM_OUTPUT)
#undef FASTCNN_ACTIVATION_GRAD_FROM_OUTPUT

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

// The incoming gradient g times act'(x), written through the saved output y = act(x).
template <typename T>
C10_HOST_DEVICE inline T activation_grad(T g, T y, Activation act) {
  switch (act) {
#define FASTCNN_ACTIVATION_CASE(Enum, code, op, Functor) \
  case Activation::Enum:                                 \
    return Functor::template backward<T>(g, y);
    FASTCNN_ACTIVATIONS(FASTCNN_ACTIVATION_CASE)
#undef FASTCNN_ACTIVATION_CASE
    default:
      return g;
  }
}

}  // namespace fastcnn
