// CUDA linear and linear_backward on the conv GEMM core: a linear layer is a 1x1 convolution of a 1x1
// image whose batch is the flattened leading dimensions, so input [rows, in] is an NHWC tensor with
// H = W = 1, weight [out, in] is the [OC, KH, KW, Cg] filter and output [rows, out] the NHWC result.
// Forward: M = rows, N = out, K = in, bias + activation fused in the epilogue. Backward: grad_input is the
// dgrad GEMM against weight^T [in, out], grad_weight the split-K wgrad GEMM (deterministic reduction),
// grad_bias a column sum; act'(output) is applied as grad_output is read. fp32 uses tf32 tensor cores
// when torch allows TF32 for cuBLAS matmuls (torch.backends.cuda.matmul), exact FMA tiles otherwise.
// Layout: any; inputs are made contiguous row-major. Measured: not yet measured (no kernel here has run
// on a GPU yet).
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <vector>

#include "common/activation.h"
#include "common/checks.h"
#include "cuda/common/launch.cuh"
#include "cuda/gemm/gemm.h"

namespace fastcnn {
namespace cuda {
namespace {

// check_linear plus what the CUDA kernels add: a CUDA tensor, features within int32.
LinearShape check_linear_cuda(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias) {
  const LinearShape s = check_linear(input, weight, bias, /*allow_reduced=*/true);
  check_cuda_tensor(input, "input");
  TORCH_CHECK(s.in_features <= INT32_MAX && s.out_features <= INT32_MAX,
              "fastcnn: linear features too large for the CUDA kernels (", s.in_features, " -> ",
              s.out_features, ")");
  return s;
}

// The linear layer as a 1x1 convolution of a batch of `rows` 1x1 images.
Conv2dShape as_conv(const LinearShape& l) {
  Conv2dShape s{};
  s.batch = l.rows;
  s.in_channels = l.in_features;
  s.in_h = s.in_w = 1;
  s.out_channels = l.out_features;
  s.kernel_h = s.kernel_w = 1;
  s.out_h = s.out_w = 1;
  s.groups = 1;
  s.stride_h = s.stride_w = 1;
  s.pad_h = s.pad_w = 0;
  s.dilation_h = s.dilation_w = 1;
  return s;
}

bool allow_tf32_matmul() {
  return at::globalContext().allowTF32CuBLAS();
}

at::Tensor linear_cuda(const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, int64_t activation) {
  const Activation act = to_activation(activation);
  const LinearShape l = check_linear_cuda(input, weight, bias);
  const at::Tensor bias_c = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor output = at::empty(l.out_sizes, input.options());
  if (output.numel() == 0) return output;
  if (l.in_features == 0) {  // no features: each row is the activated bias (or 0), as F.linear
    static auto add = c10::Dispatcher::singleton()
                          .findSchemaOrThrow("fastcnn::add", "")
                          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>();
    const at::Tensor zeros = at::zeros(l.out_sizes, input.options());
    return add.call(bias_c.defined() ? bias_c.expand(l.out_sizes).contiguous() : zeros, zeros, activation);
  }
  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();
  conv_gemm_forward(x, w, bias_c, at::Tensor(), output, as_conv(l), act, allow_tf32_matmul());
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& output, int64_t activation, std::array<bool, 3> output_mask) {
  const Activation act = to_activation(activation);
  check_fused_backward(act, "linear_backward");
  const LinearShape l = check_linear_cuda(input, weight, std::nullopt);
  check_linear_backward(grad_output, input, output, l, act != Activation::None);
  at::Tensor y;
  const c10::cuda::CUDAGuard guard(input.device());
  if (act != Activation::None) y = output->contiguous();
  const at::Tensor gy = grad_output.contiguous();
  const Conv2dShape s = as_conv(l);
  const bool tf32 = allow_tf32_matmul();
  const auto opts = input.options();
  // check_linear refuses out_features == 0; an empty batch or in_features == 0 leaves a GEMM empty.
  const bool empty_batch = l.rows == 0;
  const bool no_features = l.in_features == 0;

  at::Tensor grad_input = at::empty({0}, opts);
  if (output_mask[0]) {
    if (empty_batch || no_features) {
      grad_input = at::zeros(input.sizes(), opts);
    } else {
      grad_input = at::empty(input.sizes(), opts);
      const at::Tensor w_t = weight.t().contiguous();  // [in, out]: the dgrad B operand, contiguous along K
      conv_gemm_dgrad(gy, y, w_t, grad_input, s, act, tf32);
    }
  }
  at::Tensor grad_weight = at::empty({0}, opts);
  if (output_mask[1]) {
    if (empty_batch || no_features) {
      grad_weight = at::zeros(weight.sizes(), opts);
    } else {
      grad_weight = at::empty(weight.sizes(), opts);
      conv_gemm_wgrad(gy, y, input.contiguous(), grad_weight, s, act, tf32);
    }
  }
  at::Tensor grad_bias = at::empty({0}, opts);
  if (output_mask[2]) {
    if (empty_batch) {
      grad_bias = at::zeros({l.out_features}, opts);
    } else {
      grad_bias = at::empty({l.out_features}, opts);
      channel_grad_sum(gy, y, grad_bias, l.rows, l.out_features, act);
    }
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fastcnn, FASTCNN_CUDA_DISPATCH_KEY, m) {
  m.impl("linear", &cuda::linear_cuda);
  m.impl("linear_backward", &cuda::linear_backward_cuda);
}

}  // namespace fastcnn
