// Typed dispatcher handles of the fastcnn ops that the C++ autograd formulas (csrc/autograd/) call. Each
// is looked up once; the call dispatches below Autograd to the CPU, CUDA or fake kernel.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <array>
#include <optional>
#include <tuple>

namespace fastcnn {
namespace autograd_ops {

#define FASTCNN_AUTOGRAD_OP(handle, name, Signature)                                             \
  inline const c10::TypedOperatorHandle<Signature>& handle##_handle() {                          \
    static const auto h =                                                                        \
        c10::Dispatcher::singleton().findSchemaOrThrow("fastcnn::" name, "").typed<Signature>(); \
    return h;                                                                                    \
  }

using Conv2dSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                   at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t, int64_t,
                                   const std::optional<at::Tensor>&);
using Conv2dBackwardSignature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t, int64_t, std::array<bool, 3>);
using ActivationBackwardSignature = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t);
using UnarySignature = at::Tensor(const at::Tensor&);
using ParametrisedUnarySignature = at::Tensor(const at::Tensor&, double);

FASTCNN_AUTOGRAD_OP(conv2d, "conv2d", Conv2dSignature)
FASTCNN_AUTOGRAD_OP(conv2d_backward, "conv2d_backward", Conv2dBackwardSignature)
FASTCNN_AUTOGRAD_OP(activation_backward, "activation_backward", ActivationBackwardSignature)
#undef FASTCNN_AUTOGRAD_OP

inline at::Tensor conv2d(const at::Tensor& input, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                         int64_t activation, const std::optional<at::Tensor>& residual) {
  return conv2d_handle().call(input, weight, bias, stride, padding, dilation, groups, activation, residual);
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& output, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, int64_t activation, std::array<bool, 3> mask) {
  return conv2d_backward_handle().call(grad_output, input, weight, output, stride, padding, dilation, groups,
                                       activation, mask);
}

inline at::Tensor activation_backward(const at::Tensor& grad_output, const at::Tensor& saved,
                                      int64_t activation) {
  return activation_backward_handle().call(grad_output, saved, activation);
}

}  // namespace autograd_ops
}  // namespace fastcnn
