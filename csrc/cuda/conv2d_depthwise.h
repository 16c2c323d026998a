// Direct depthwise convolution kernels (groups == in_channels, out_channels = multiplier * in_channels),
// called by conv2d.cu in place of the implicit GEMM, whose K = KH*KW would leave the tensor cores idle.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/activation.h"
#include "common/checks.h"

namespace fastcnn {
namespace cuda {

// output = act(depthwise_conv(input, weight) + bias + residual). input, residual and output are dense in
// the same memory format: NHWC when channels_last, else NCHW. weight is [OC, 1, KH, KW] contiguous; bias
// and residual may be undefined.
void depthwise_conv2d_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                              const at::Tensor& residual, const at::Tensor& output, const Conv2dShape& s,
                              Activation act, bool channels_last);

// grad_input (NHWC) from grad_output * act'(output) (both NHWC; output undefined when act is None).
void depthwise_conv2d_dgrad(const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& weight,
                            const at::Tensor& grad_input, const Conv2dShape& s, Activation act);

// grad_weight [OC, 1, KH, KW] (contiguous) from grad_output * act'(output) and input, all NHWC.
void depthwise_conv2d_wgrad(const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& input,
                            const at::Tensor& grad_weight, const Conv2dShape& s, Activation act);

}  // namespace cuda
}  // namespace fastcnn
