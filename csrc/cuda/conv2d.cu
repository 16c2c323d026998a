// CUDA conv2d and conv2d_backward: the op entry points and the choice of algorithm. Depthwise
// convolutions (groups == in_channels) go to the direct kernels of conv2d_depthwise.cu; every other
// convolution is an implicit GEMM on the core in cuda/gemm/ (no im2col buffer): forward M = N*OH*OW,
// N = OC/groups, K = KH*KW*Cg; dgrad one GEMM per stride phase of grad_input, M = its pixels, N = Cg,
// K = (the phase's taps)*OCg; wgrad M = OCg, N = KH*KW*Cg, K = N*OH*OW. K is split over blockIdx.z
// when the tiles alone would not fill the GPU (always possible for wgrad) and the partial sums reduced
// in a fixed order (deterministic, no atomics). Bias, residual and activation are fused into the
// forward epilogue (after the reduction when K is split); act'(output) into the grad_output loads.
// Layout: NHWC (channels_last) is native; NCHW inputs are converted and results converted back, so the
// output follows the input's memory format. fp16/bf16 use mma.sync m16n8k16, fp32 uses tf32 m16n8k8 when
// torch allows TF32 for cuDNN convolutions and exact FMA tiles otherwise, fp64 uses FMA tiles.
// Measured: not yet on a GPU; see benchmarks/NOTES.md.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>

#include "common/activation.h"
#include "common/checks.h"
#include "cuda/common/launch.cuh"
#include "cuda/conv2d_depthwise.h"
#include "cuda/gemm/gemm.h"

namespace fastcnn {
namespace cuda {
namespace {

bool allow_tf32_conv() {
  return at::globalContext().allowTF32CuDNN(at::Float32Op::CONV);
}

bool is_depthwise(const Conv2dShape& s) {
  return s.groups > 1 && s.in_channels == s.groups;
}

at::Tensor defined_or_empty(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined() ? *t : at::Tensor();
}

at::Tensor conv2d_cuda(const at::Tensor& input, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                       at::IntArrayRef dilation, int64_t groups, int64_t activation,
                       const std::optional<at::Tensor>& residual) {
  const Activation act = to_activation(activation);
  const Conv2dShape s =
      check_conv2d(input, weight, bias, stride, padding, dilation, groups, /*allow_reduced=*/true);
  check_cuda_tensor(input, "input");
  const std::array<int64_t, 4> out_sizes{s.batch, s.out_channels, s.out_h, s.out_w};
  check_residual(residual, input, out_sizes);
  check_int32_geometry(s);
  const c10::cuda::CUDAGuard guard(input.device());

  const at::MemoryFormat fmt = output_memory_format(input);
  if (s.batch == 0) return at::empty(out_sizes, input.options().memory_format(fmt));
  const at::Tensor bias_c = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  const at::Tensor res = defined_or_empty(residual);
  if (is_depthwise(s)) {
    const at::Tensor x = input.contiguous(fmt);
    at::Tensor y = at::empty(out_sizes, input.options().memory_format(fmt));
    depthwise_conv2d_forward(x, weight.contiguous(), bias_c, res.defined() ? res.contiguous(fmt) : res, y, s,
                             act, fmt == at::MemoryFormat::ChannelsLast);
    return y;
  }
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = input.contiguous(cl);
  const at::Tensor w = weight.contiguous(cl);  // [OC, KH, KW, Cg] in memory
  at::Tensor y = at::empty(out_sizes, input.options().memory_format(cl));
  conv_gemm_forward(x, w, bias_c, res.defined() ? res.contiguous(cl) : res, y, s, act, allow_tf32_conv());
  return fmt == cl ? y : y.contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& output, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, int64_t activation, std::array<bool, 3> output_mask) {
  const Activation act = to_activation(activation);
  check_fused_backward(act, "conv2d_backward");
  const Conv2dShape s =
      check_conv2d(input, weight, std::nullopt, stride, padding, dilation, groups, /*allow_reduced=*/true);
  check_cuda_tensor(input, "input");
  check_conv2d_backward(grad_output, input, output, s, act != Activation::None);
  const at::Tensor out = defined_or_empty(output);
  check_int32_geometry(s);
  const c10::cuda::CUDAGuard guard(input.device());

  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::MemoryFormat fmt = output_memory_format(input);
  if (s.batch == 0) return empty_batch_conv2d_grads(input, weight, output_mask, fmt);
  const bool tf32 = allow_tf32_conv();
  const at::Tensor gy = grad_output.contiguous(cl);
  const at::Tensor y = act != Activation::None ? out.contiguous(cl) : at::Tensor();
  const auto opts = input.options();

  at::Tensor grad_input = at::empty({0}, opts);
  if (output_mask[0]) {
    grad_input = at::empty(input.sizes(), opts.memory_format(cl));
    if (is_depthwise(s)) {
      depthwise_conv2d_dgrad(gy, y, weight.contiguous(), grad_input, s, act);
    } else {
      const int64_t cg = s.in_channels / s.groups, ocg = s.out_channels / s.groups;
      // [G, OCg, Cg, KH, KW] -> [G, Cg, KH, KW, OCg]: the dgrad B operand, contiguous along its K.
      const at::Tensor w_t = weight.contiguous()
                                 .view({s.groups, ocg, cg, s.kernel_h, s.kernel_w})
                                 .permute({0, 2, 3, 4, 1})
                                 .contiguous();
      conv_gemm_dgrad(gy, y, w_t, grad_input, s, act, tf32);
    }
    if (fmt != cl) grad_input = grad_input.contiguous();
  }
  at::Tensor grad_weight = at::empty({0}, opts);
  if (output_mask[1]) {
    grad_weight = at::empty(weight.sizes(), opts);
    const at::Tensor x = input.contiguous(cl);
    if (is_depthwise(s)) {
      depthwise_conv2d_wgrad(gy, y, x, grad_weight, s, act);
    } else {
      conv_gemm_wgrad(gy, y, x, grad_weight, s, act, tf32);
    }
  }
  at::Tensor grad_bias = at::empty({0}, opts);
  if (output_mask[2]) {
    grad_bias = at::empty({s.out_channels}, opts);
    channel_grad_sum(gy, y, grad_bias, s.batch * s.out_h * s.out_w, s.out_channels, act);
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fastcnn, FASTCNN_CUDA_DISPATCH_KEY, m) {
  m.impl("conv2d", &cuda::conv2d_cuda);
  m.impl("conv2d_backward", &cuda::conv2d_backward_cuda);
}

}  // namespace fastcnn
