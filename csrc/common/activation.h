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
// Parametrised activations (FASTCNN_PARAMETRISED_ACTIVATIONS: leaky_relu and its negative slope) carry
// their parameter inside the Activation value, so that the one `int activation` of every schema and
// kernel parameter block configures them, exactly: the low 5 bits are the row's code, then the
// parameter's float64 exponent in 6 bits (unbiased exponent + 32, 0 for a zero), its 52 mantissa bits and
// its sign bit, the float64's own. So every parameter of magnitude in [2^-31, 2^32), or zero, travels
// bit for bit (fastcnn.ops packs it; others are refused). Their functor holds the parameter
// (activation_functor) and decides at run time which tensor its derivative reads.
//
// Sigmoid, tanh and gelu's normal CDF come from the CUDA math library on the GPU and from host_math.h
// (branch-free, so CPU loops vectorise; sigmoid and tanh within 2.4 ulp of libm, the CDF within 2e-7
// relative) on the CPU and under emulation.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <cstring>
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
  C10_HOST_DEVICE static T forward(T x) {
#ifdef __CUDA_ARCH__
    constexpr double kSqrtHalf = 0.70710678118654752440;
    return x * (T(0.5) * (T(1) + ::erf(x * T(kSqrtHalf))));
#else
    return x * host_math::normal_cdf_pdf(x).cdf;
#endif
  }
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x) {
#ifdef __CUDA_ARCH__
    constexpr double kSqrtHalf = 0.70710678118654752440, kInvSqrt2Pi = 0.39894228040143267794;
    const T cdf = T(0.5) * (T(1) + ::erf(x * T(kSqrtHalf)));
    const T pdf = ::exp(T(-0.5) * x * x) * T(kInvSqrt2Pi);
    return g * (cdf + x * pdf);
#else
    const auto normal = host_math::normal_cdf_pdf(x);
    return g * (normal.cdf + x * normal.pdf);
#endif
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

// leaky_relu = x > 0 ? x : negative_slope * x, PyTorch's formula (NaN stays NaN); its derivative is 1 for
// x > 0, else negative_slope (at 0 too, as PyTorch's leaky_relu_backward). With a slope >= 0 the output has
// the input's sign, so the derivative reads either and the fused ops save the output; a negative slope
// flips the sign and the input is saved instead.
struct LeakyReLUFunctor {
  static constexpr const char* kParameterName = "negative_slope";  // its standalone op's argument
  double negative_slope;
  C10_HOST_DEVICE bool grad_from_output() const { return negative_slope >= 0; }
  // The product is formed unconditionally and then selected: a multiply only on the negative side may
  // trap where the other side would not, so the compiler keeps it scalar behind a branch (measured 40x
  // slower than PyTorch on random signs); an unconditional one vectorises to a multiply and a blend.
  template <typename T>
  C10_HOST_DEVICE T forward(T x) const {
    const T scaled = x * static_cast<T>(negative_slope);
    return x > T(0) ? x : scaled;
  }
  template <typename T>
  C10_HOST_DEVICE T backward(T g, T s) const {
    const T scaled = g * static_cast<T>(negative_slope);
    return s > T(0) ? g : scaled;
  }
};

// X(Enum, code, op name, functor). The code is the `int activation` of every fused op's schema and of
// fastcnn.ops.ACTIVATIONS; 0 is reserved for no activation (IdentityFunctor). Codes stay below 32 (the
// low 5 bits of an Activation). The plain rows' standalone ops take the input alone; the parametrised
// rows' ops take their parameter too, and their functors hold it.
#define FASTCNN_PLAIN_ACTIVATIONS(X)                 \
  X(ReLU, 1, relu, ReLUFunctor)                      \
  X(Sigmoid, 2, sigmoid, SigmoidFunctor)             \
  X(Tanh, 3, tanh, TanhFunctor)                      \
  X(ReLU6, 4, relu6, ReLU6Functor)                   \
  X(SiLU, 5, silu, SiLUFunctor)                      \
  X(Hardswish, 6, hardswish, HardswishFunctor)       \
  X(Hardsigmoid, 7, hardsigmoid, HardsigmoidFunctor) \
  X(GELU, 8, gelu, GELUFunctor)                      \
  X(GELUTanh, 9, gelu_tanh, GELUTanhFunctor)

#define FASTCNN_PARAMETRISED_ACTIVATIONS(X) X(LeakyReLU, 10, leaky_relu, LeakyReLUFunctor)

#define FASTCNN_ACTIVATIONS(X) FASTCNN_PLAIN_ACTIVATIONS(X) FASTCNN_PARAMETRISED_ACTIVATIONS(X)
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

// A functor with a parameter holds it as its one member; the plain ones are empty.
template <typename Functor>
inline constexpr bool kHasParameter = !std::is_empty_v<Functor>;

constexpr int64_t kActivationKindBits = 5;
constexpr int64_t kActivationKindMask = (int64_t{1} << kActivationKindBits) - 1;
constexpr int kParameterExponentBits = 6;
constexpr int kParameterExponentOffset = 32;  // the exponent field holds the unbiased exponent + 32
constexpr uint64_t kMantissaMask = (uint64_t{1} << 52) - 1;
constexpr uint64_t kSignBit = uint64_t{1} << 63;

// The table row of a (possibly configured) activation: its low 5 bits.
C10_HOST_DEVICE inline Activation activation_kind(Activation act) {
  return static_cast<Activation>(static_cast<int64_t>(act) & kActivationKindMask);
}

// The parameter a configured activation carries above its row code (0 for a plain one).
C10_HOST_DEVICE inline double activation_parameter(Activation act) {
  const uint64_t code = static_cast<uint64_t>(static_cast<int64_t>(act));
  const uint64_t exponent = (code >> kActivationKindBits) & ((uint64_t{1} << kParameterExponentBits) - 1);
  const uint64_t mantissa = (code >> (kActivationKindBits + kParameterExponentBits)) & kMantissaMask;
  const uint64_t sign = code & kSignBit;
  const uint64_t bits =
      exponent == 0 ? sign : sign | ((exponent - kParameterExponentOffset + 1023) << 52) | mantissa;
#ifdef __CUDA_ARCH__
  return __longlong_as_double(static_cast<long long>(bits));
#else
  double value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
#endif
}

// Whether `parameter` fits the code exactly: zero, or a magnitude in [2^-31, 2^32).
inline bool is_packable_parameter(double parameter) {
  if (parameter == 0) return true;
  if (!std::isfinite(parameter)) return false;
  const double magnitude = std::fabs(parameter);
  return magnitude >= std::ldexp(1.0, -31) && magnitude < std::ldexp(1.0, 32);
}

// `kind` configured with `parameter` (is_packable_parameter), as fastcnn.ops packs it.
inline Activation with_parameter(Activation kind, double parameter) {
  uint64_t bits;
  std::memcpy(&bits, &parameter, sizeof(bits));
  const uint64_t biased = (bits >> 52) & 0x7ff;
  const uint64_t exponent = parameter == 0 ? 0 : biased - 1023 + kParameterExponentOffset;
  const uint64_t code = (bits & kSignBit) |
                        ((bits & kMantissaMask) << (kActivationKindBits + kParameterExponentBits)) |
                        (exponent << kActivationKindBits) | static_cast<uint64_t>(kind);
  return static_cast<Activation>(static_cast<int64_t>(code));
}

// Row A (parametrised) configured with `parameter`, checked: the standalone ops' entry point.
template <Activation A>
inline Activation configured_activation(double parameter) {
  TORCH_CHECK(is_packable_parameter(parameter), "fastcnn: ", ActivationTraits<A>::kName, "'s ",
              ActivationFunctor<A>::kParameterName,
              " must be 0 or a finite number of magnitude in [2^-31, 2^32), got ", parameter);
  return with_parameter(A, parameter);
}

// The functor of row A, holding `act`'s parameter where the row has one.
template <Activation A>
C10_HOST_DEVICE inline ActivationFunctor<A> activation_functor(Activation act) {
  using Functor = ActivationFunctor<A>;
  if constexpr (kHasParameter<Functor>) {
    return Functor{activation_parameter(act)};
  } else {
    (void)act;
    return Functor{};
  }
}

template <typename Functor>
C10_HOST_DEVICE inline bool functor_grad_from_output(const Functor& f) {
  if constexpr (kHasParameter<Functor>) {
    return f.grad_from_output();
  } else {
    (void)f;
    return Functor::kGradFromOutput;
  }
}

inline bool is_activation_code(int64_t code) {
  const Activation act = static_cast<Activation>(code);
  switch (activation_kind(act)) {
    case Activation::None:
      return code == 0;
#define FASTCNN_ACTIVATION_CASE(Enum, code_, op, Functor)                            \
  case Activation::Enum:                                                             \
    if constexpr (kHasParameter<Functor>) {                                          \
      return with_parameter(activation_kind(act), activation_parameter(act)) == act; \
    } else {                                                                         \
      return activation_kind(act) == act;                                            \
    }
      FASTCNN_ACTIVATIONS(FASTCNN_ACTIVATION_CASE)
#undef FASTCNN_ACTIVATION_CASE
    default:
      return false;
  }
}

template <typename Functor>
inline std::string parameter_text() {
  if constexpr (kHasParameter<Functor>) {
    return std::string(" with its ") + Functor::kParameterName + " packed above the code";
  } else {
    return "";
  }
}

// "0 (none), 1 (relu), ...": the accepted codes, for error messages.
inline std::string activation_codes_text() {
  std::string text = "0 (none)";
#define FASTCNN_ACTIVATION_TEXT(Enum, code, op, Functor) \
  text += ", " #code " (" #op + parameter_text<Functor>() + ")";
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
  switch (activation_kind(act)) {
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
  switch (activation_kind(act)) {
#define FASTCNN_ACTIVATION_CASE(Enum, code, op, Functor) \
  case Activation::Enum:                                 \
    return functor_grad_from_output(activation_functor<Activation::Enum>(act));
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

// Calls f(std::integral_constant<Activation, A>{}) for the row A of the runtime `act`, so that a loop
// written inside f sees A as a compile-time constant: the call of activation_functor<A>(act) inlines and
// the loop vectorises instead of branching per element.
template <typename F>
inline decltype(auto) with_activation(Activation act, F&& f) {
  switch (activation_kind(act)) {
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
  switch (activation_kind(act)) {
#define FASTCNN_ACTIVATION_CASE(Enum, code, op, Functor) \
  case Activation::Enum:                                 \
    return activation_functor<Activation::Enum>(act).template forward<T>(x);
    FASTCNN_ACTIVATIONS(FASTCNN_ACTIVATION_CASE)
#undef FASTCNN_ACTIVATION_CASE
    default:
      return x;
  }
}

// The incoming gradient g times act'(x), written through the saved tensor s: the output y = act(x) for the
// activations with grad_from_output, the input x for the others.
template <typename T>
C10_HOST_DEVICE inline T activation_grad(T g, T s, Activation act) {
  switch (activation_kind(act)) {
#define FASTCNN_ACTIVATION_CASE(Enum, code, op, Functor) \
  case Activation::Enum:                                 \
    return activation_functor<Activation::Enum>(act).template backward<T>(g, s);
    FASTCNN_ACTIVATIONS(FASTCNN_ACTIVATION_CASE)
#undef FASTCNN_ACTIVATION_CASE
    default:
      return g;
  }
}

}  // namespace fastcnn
