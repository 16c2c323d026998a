// Autograd for the standalone activations (one per row of common/activation.h) and the residual add,
// registered on the Autograd key in C++ for the per-call cost (see autograd/conv2d.cpp). Each activation
// saves the tensor its derivative reads (grad_from_output: its output, else its input) and its backward
// is activation_backward; add saves its output when it has an activation, which must be one
// differentiated through the output (fastcnn.ops runs the others as a separate op under autograd).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

#include "autograd/ops.h"
#include "common/activation.h"

namespace fastcnn {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow((std::string("fastcnn::") + name).c_str(), "")
      .typed<Signature>();
}

template <Activation A>
class PlainActivationFunction : public torch::autograd::Function<PlainActivationFunction<A>> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input) {
    static const auto op = find_op<autograd_ops::UnarySignature>(ActivationTraits<A>::kName);
    at::Tensor output;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      output = op.call(input);
    }
    ctx->save_for_backward({grad_from_output(A) ? output : input});
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    return {autograd_ops::activation_backward(grad_outputs[0], ctx->get_saved_variables()[0],
                                              static_cast<int64_t>(A))};
  }
};

template <Activation A>
class ParametrisedActivationFunction : public torch::autograd::Function<ParametrisedActivationFunction<A>> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, double parameter) {
    static const auto op = find_op<autograd_ops::ParametrisedUnarySignature>(ActivationTraits<A>::kName);
    const Activation act = configured_activation<A>(parameter);
    at::Tensor output;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      output = op.call(input, parameter);
    }
    ctx->saved_data["activation"] = static_cast<int64_t>(act);
    ctx->save_for_backward({grad_from_output(act) ? output : input});
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    return {autograd_ops::activation_backward(grad_outputs[0], ctx->get_saved_variables()[0],
                                              ctx->saved_data["activation"].toInt()),
            at::Tensor()};
  }
};

template <Activation A>
at::Tensor plain_activation_autograd(const at::Tensor& input) {
  return PlainActivationFunction<A>::apply(input);
}

template <Activation A>
at::Tensor parametrised_activation_autograd(const at::Tensor& input, double parameter) {
  return ParametrisedActivationFunction<A>::apply(input, parameter);
}

class AddFunction : public torch::autograd::Function<AddFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& other,
                            int64_t activation) {
    static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>("add");
    at::Tensor output;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      output = op.call(input, other, activation);
    }
    ctx->saved_data["activation"] = activation;
    ctx->save_for_backward({activation != 0 ? output : at::Tensor()});
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const int64_t activation = ctx->saved_data["activation"].toInt();
    at::Tensor grad = grad_outputs[0];
    if (activation != 0) {
      check_fused_backward(to_activation(activation), "add");
      grad = autograd_ops::activation_backward(grad, ctx->get_saved_variables()[0], activation);
    }
    return {grad, grad, at::Tensor()};
  }
};

at::Tensor add_autograd(const at::Tensor& input, const at::Tensor& other, int64_t activation) {
  return AddFunction::apply(input, other, activation);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, Autograd, m) {
#define FASTCNN_AUTOGRAD_ACTIVATION(Enum, code, op, Functor) \
  m.impl(#op, &plain_activation_autograd<Activation::Enum>);
  FASTCNN_PLAIN_ACTIVATIONS(FASTCNN_AUTOGRAD_ACTIVATION)
#undef FASTCNN_AUTOGRAD_ACTIVATION
#define FASTCNN_AUTOGRAD_ACTIVATION(Enum, code, op, Functor) \
  m.impl(#op, &parametrised_activation_autograd<Activation::Enum>);
  FASTCNN_PARAMETRISED_ACTIVATIONS(FASTCNN_AUTOGRAD_ACTIVATION)
#undef FASTCNN_AUTOGRAD_ACTIVATION
  m.impl("add", &add_autograd);
}

}  // namespace fastcnn
