// Autograd for fastcnn::conv2d, registered on the Autograd key in C++ (as torchvision's ops/autograd/).
// A Python registration (torch.library.register_autograd) builds and runs an autograd.Function in Python
// on every call: on small convolutions that was most of the call (benchmarks/NOTES.md, per-call cost).
// The formula is the one fastcnn.ops documents: conv2d_backward differentiates conv + bias + activation
// through the saved output; with a residual, grad_output goes through the activation once and is shared
// by the residual and conv2d_backward. The fake kernels stay in fastcnn/ops.py.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "autograd/ops.h"
#include "common/activation.h"

namespace fastcnn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class Conv2dFunction : public torch::autograd::Function<Conv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            int64_t activation, const std::optional<at::Tensor>& residual) {
    at::Tensor output;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      output =
          autograd_ops::conv2d(input, weight, bias, stride, padding, dilation, groups, activation, residual);
    }
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["has_residual"] = residual.has_value() && residual->defined();
    ctx->save_for_backward({input, weight, activation != 0 ? output : at::Tensor()});
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& weight = saved[1];
    at::Tensor output = saved[2];
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const bool has_residual = ctx->saved_data["has_residual"].toBool();
    int64_t activation = ctx->saved_data["activation"].toInt();
    // needs_input_grad counts the tensor inputs present: input, weight, then bias and residual if given.
    const bool need_input = ctx->needs_input_grad(0);
    const bool need_weight = ctx->needs_input_grad(1);
    const bool need_bias = has_bias && ctx->needs_input_grad(2);
    const bool need_residual = has_residual && ctx->needs_input_grad(has_bias ? 3 : 2);

    at::Tensor grad_output = grad_outputs[0];
    if (need_residual && activation != 0) {
      check_fused_backward(to_activation(activation), "conv2d");
      grad_output = autograd_ops::activation_backward(grad_output, output, activation);
      activation = 0;
      output = at::Tensor();
    }
    at::Tensor grad_input, grad_weight, grad_bias;
    if (need_input || need_weight || need_bias) {
      const std::array<bool, 3> mask{need_input, need_weight, need_bias};
      std::tie(grad_input, grad_weight, grad_bias) = autograd_ops::conv2d_backward(
          grad_output, input, weight, output.defined() ? std::optional<at::Tensor>(output) : std::nullopt,
          ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
          ctx->saved_data["dilation"].toIntVector(), ctx->saved_data["groups"].toInt(), activation, mask);
      if (!need_input) grad_input = at::Tensor();
      if (!need_weight) grad_weight = at::Tensor();
      if (!need_bias) grad_bias = at::Tensor();
    }
    at::Tensor grad_residual = need_residual ? grad_output : at::Tensor();
    return {grad_input,   grad_weight,  grad_bias,    at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), grad_residual};
  }
};

at::Tensor conv2d_autograd(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           int64_t activation, const std::optional<at::Tensor>& residual) {
  return Conv2dFunction::apply(input, weight, bias, stride, padding, dilation, groups, activation, residual);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, Autograd, m) {
  m.impl("conv2d", &conv2d_autograd);
}

}  // namespace fastcnn
