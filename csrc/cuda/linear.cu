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
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <vector>

#include "common/activation.h"
#include "common/checks.h"
#include "cuda/common/implicit_gemm.cuh"

namespace fastcnn {
namespace cuda {
namespace {

struct LinearShape {
  int64_t rows, in_features, out_features;
  std::vector<int64_t> out_sizes;  // input's leading dims + [out_features]
};

LinearShape check_linear(const at::Tensor& input, const at::Tensor& weight) {
  check_floating(input, "input", /*allow_reduced=*/true);
  check_same_dtype_device(weight, input, "weight", "input");
  check_dim(weight, 2, "weight", "out_features, in_features");
  TORCH_CHECK(input.dim() >= 1, "fastcnn: linear input must have at least 1 dimension, got a scalar");
  check_cuda_tensor(input, "input");
  LinearShape s;
  s.in_features = input.size(-1);
  s.out_features = weight.size(0);
  TORCH_CHECK(weight.size(1) == s.in_features, "fastcnn: linear input has ", s.in_features,
              " features but weight has shape ", weight.sizes(), " (expects [out_features, ", s.in_features,
              "])");
  s.rows = 1;
  for (int64_t d = 0; d + 1 < input.dim(); ++d) s.rows *= input.size(d);
  s.out_sizes.assign(input.sizes().begin(), input.sizes().end() - 1);
  s.out_sizes.push_back(s.out_features);
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
  const LinearShape l = check_linear(input, weight);
  at::Tensor bias_c;
  if (bias.has_value() && bias->defined()) {
    check_same_dtype_device(*bias, input, "bias", "input");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == l.out_features, "fastcnn: bias must have shape [",
                l.out_features, "], got ", bias->sizes());
    bias_c = bias->contiguous();
  }
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor output = at::empty(l.out_sizes, input.options());
  if (output.numel() == 0) return output;
  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();
  conv_gemm_forward(x, w, bias_c, at::Tensor(), output, as_conv(l), act, allow_tf32_matmul());
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& output, int64_t activation, std::array<bool, 3> output_mask) {
  const Activation act = to_activation(activation);
  const LinearShape l = check_linear(input, weight);
  check_same_dtype_device(grad_output, input, "grad_output", "input");
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(l.out_sizes), "fastcnn: grad_output must have shape ",
              at::IntArrayRef(l.out_sizes), ", got ", grad_output.sizes());
  at::Tensor y;
  if (act != Activation::None) {
    TORCH_CHECK(output.has_value() && output->defined(),
                "fastcnn: linear_backward needs output when activation is ", activation);
    check_same_dtype_device(*output, input, "output", "input");
    TORCH_CHECK(output->sizes() == grad_output.sizes(), "fastcnn: output must have grad_output's shape ",
                grad_output.sizes(), ", got ", output->sizes());
  }
  const c10::cuda::CUDAGuard guard(input.device());
  if (act != Activation::None) y = output->contiguous();
  const at::Tensor gy = grad_output.contiguous();
  const Conv2dShape s = as_conv(l);
  const bool tf32 = allow_tf32_matmul();
  const auto opts = input.options();
  const bool empty_gemm = l.rows == 0 || l.in_features == 0 || l.out_features == 0;

  at::Tensor grad_input = at::empty({0}, opts);
  if (output_mask[0]) {
    if (l.rows == 0 || l.in_features == 0 || l.out_features == 0) {
      grad_input = at::zeros(input.sizes(), opts);
    } else {
      grad_input = at::empty(input.sizes(), opts);
      const at::Tensor w_t = weight.t().contiguous();  // [in, out]: the dgrad B operand, contiguous along K
      conv_gemm_dgrad(gy, y, w_t, grad_input, s, act, tf32);
    }
  }
  at::Tensor grad_weight = at::empty({0}, opts);
  if (output_mask[1]) {
    if (empty_gemm) {
      grad_weight = at::zeros(weight.sizes(), opts);
    } else {
      grad_weight = at::empty(weight.sizes(), opts);
      conv_gemm_wgrad(gy, y, input.contiguous(), grad_weight, s, act, tf32);
    }
  }
  at::Tensor grad_bias = at::empty({0}, opts);
  if (output_mask[2]) {
    if (l.rows == 0 || l.out_features == 0) {
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
