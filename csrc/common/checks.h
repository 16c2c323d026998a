// Argument validation and output-shape arithmetic shared by the CPU and CUDA kernels. Every message
// names the offending argument, so that a bad call from Python or torch.ops.fastcnn.* reads clearly.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>
#include <c10/util/irange.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace fastcnn {

// Dtypes a device's kernels are compiled for: fp32/fp64 everywhere, fp16/bf16 on CUDA only.
inline void check_floating(const at::Tensor& t, const char* name, bool allow_reduced) {
  const auto dt = t.scalar_type();
  const bool ok =
      dt == at::kFloat || dt == at::kDouble || (allow_reduced && (dt == at::kHalf || dt == at::kBFloat16));
  TORCH_CHECK(ok, "fastcnn: ", name, " must be ",
              allow_reduced ? "float32, float64, float16 or bfloat16" : "float32 or float64 on the CPU",
              ", got ", dt);
}

inline void check_same_dtype_device(const at::Tensor& t, const at::Tensor& ref, const char* name,
                                    const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), "fastcnn: ", name, " is on ", t.device(), " but ", ref_name,
              " is on ", ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "fastcnn: ", name, " has dtype ", t.scalar_type(),
              " but ", ref_name, " has dtype ", ref.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name, const char* layout) {
  TORCH_CHECK(t.dim() == dim, "fastcnn: ", name, " must be a ", dim, "-D tensor (", layout, "), got ",
              t.dim(), "-D with shape ", t.sizes());
}

inline void check_pair(at::IntArrayRef v, const char* name) {
  TORCH_CHECK(v.size() == 2, "fastcnn: ", name, " must have 2 elements, got ", v.size());
}

inline void check_positive_pair(at::IntArrayRef v, const char* name) {
  check_pair(v, name);
  TORCH_CHECK(v[0] > 0 && v[1] > 0, "fastcnn: ", name, " must be positive, got ", v);
}

inline void check_nonnegative_pair(at::IntArrayRef v, const char* name) {
  check_pair(v, name);
  TORCH_CHECK(v[0] >= 0 && v[1] >= 0, "fastcnn: ", name, " must be non-negative, got ", v);
}

// Division rounding toward minus infinity: C++ truncates toward zero, which would turn a window larger
// than the padded input (a negative span) into a bogus output extent of 1 instead of an error.
inline int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

// floor((in + 2p - d(k-1) - 1) / s) + 1, the convolution output extent.
inline int64_t conv_output_extent(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  return floor_div(in + 2 * pad - dilation * (kernel - 1) - 1, stride) + 1;
}

// Pooling output extent with PyTorch's ceil_mode rule: the last window must start inside the input or
// the left padding, never entirely in the right padding.
inline int64_t pool_output_extent(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation,
                                  bool ceil_mode) {
  const int64_t span = in + 2 * pad - dilation * (kernel - 1) - 1;
  int64_t out = floor_div(span + (ceil_mode ? stride - 1 : 0), stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

struct Conv2dShape {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, kernel_h, kernel_w;
  int64_t out_h, out_w;
  int64_t groups;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
};

// Validates a conv2d call and returns its geometry. `allow_reduced` is true on CUDA.
inline Conv2dShape check_conv2d(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                bool allow_reduced) {
  check_dim(input, 4, "input", "N, C, H, W");
  check_dim(weight, 4, "weight", "out_channels, in_channels/groups, kH, kW");
  check_floating(input, "input", allow_reduced);
  check_same_dtype_device(weight, input, "weight", "input");
  check_positive_pair(stride, "stride");
  check_nonnegative_pair(padding, "padding");
  check_positive_pair(dilation, "dilation");
  TORCH_CHECK(groups > 0, "fastcnn: groups must be positive, got ", groups);
  Conv2dShape s{};
  s.batch = input.size(0);
  s.in_channels = input.size(1);
  s.in_h = input.size(2);
  s.in_w = input.size(3);
  s.out_channels = weight.size(0);
  s.kernel_h = weight.size(2);
  s.kernel_w = weight.size(3);
  s.groups = groups;
  // An empty batch is valid, as in torch.nn.Conv2d: an empty output and zero weight/bias gradients.
  TORCH_CHECK(s.kernel_h > 0 && s.kernel_w > 0 && weight.size(1) > 0,
              "fastcnn: weight must have a non-empty kernel, got shape ", weight.sizes());
  TORCH_CHECK(s.in_channels % groups == 0, "fastcnn: input channels (", s.in_channels,
              ") must be divisible by groups (", groups, ")");
  TORCH_CHECK(s.out_channels % groups == 0 && s.out_channels > 0, "fastcnn: weight's out_channels (",
              s.out_channels, ") must be a positive multiple of groups (", groups, ")");
  TORCH_CHECK(weight.size(1) * groups == s.in_channels, "fastcnn: input has ", s.in_channels,
              " channels but weight expects in_channels/groups * groups = ", weight.size(1), " * ", groups,
              " = ", weight.size(1) * groups);
  s.stride_h = stride[0];
  s.stride_w = stride[1];
  s.pad_h = padding[0];
  s.pad_w = padding[1];
  s.dilation_h = dilation[0];
  s.dilation_w = dilation[1];
  s.out_h = conv_output_extent(s.in_h, s.kernel_h, s.stride_h, s.pad_h, s.dilation_h);
  s.out_w = conv_output_extent(s.in_w, s.kernel_w, s.stride_w, s.pad_w, s.dilation_w);
  TORCH_CHECK(s.out_h > 0 && s.out_w > 0, "fastcnn: conv2d output size would be ", s.out_h, "x", s.out_w,
              " (input ", s.in_h, "x", s.in_w, ", kernel ", s.kernel_h, "x", s.kernel_w, ", padding ",
              padding, ", dilation ", dilation, ", stride ", stride, "); it must be at least 1x1");
  if (bias.has_value() && bias->defined()) {
    check_same_dtype_device(*bias, input, "bias", "input");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == s.out_channels, "fastcnn: bias must have shape [",
                s.out_channels, "], got ", bias->sizes());
  }
  return s;
}

// A residual added before the activation must match the output exactly (no broadcasting).
inline void check_residual(const std::optional<at::Tensor>& residual, const at::Tensor& input,
                           at::IntArrayRef out_sizes) {
  if (!residual.has_value() || !residual->defined()) return;
  check_same_dtype_device(*residual, input, "residual", "input");
  TORCH_CHECK(residual->sizes() == out_sizes, "fastcnn: residual must have the output's shape ", out_sizes,
              ", got ", residual->sizes());
}

// Output memory format follows the input's, as PyTorch's own conv and pooling do.
inline at::MemoryFormat output_memory_format(const at::Tensor& input) {
  return input.suggest_memory_format() == at::MemoryFormat::ChannelsLast ? at::MemoryFormat::ChannelsLast
                                                                         : at::MemoryFormat::Contiguous;
}

// A fused op's backward: grad_output has the forward output's shape, and when an activation was fused
// the forward output y (whose derivative is read) is given, alike.
inline void check_grad_and_output(const char* op, const at::Tensor& grad_output, const at::Tensor& input,
                                  const std::optional<at::Tensor>& output, at::IntArrayRef out_sizes,
                                  bool has_activation) {
  check_same_dtype_device(grad_output, input, "grad_output", "input");
  TORCH_CHECK(grad_output.sizes() == out_sizes, "fastcnn: grad_output must have shape ", out_sizes, ", got ",
              grad_output.sizes());
  if (!has_activation) return;
  TORCH_CHECK(output.has_value() && output->defined(), "fastcnn: ", op,
              " needs the forward output when an activation is fused");
  check_same_dtype_device(*output, input, "output", "input");
  TORCH_CHECK(output->sizes() == out_sizes, "fastcnn: output must have shape ", out_sizes, ", got ",
              output->sizes());
}

inline void check_conv2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                  const std::optional<at::Tensor>& output, const Conv2dShape& s,
                                  bool has_activation) {
  const std::vector<int64_t> out_sizes{s.batch, s.out_channels, s.out_h, s.out_w};
  check_grad_and_output("conv2d_backward", grad_output, input, output, out_sizes, has_activation);
}

// conv2d_backward over an empty batch, as PyTorch's: an empty grad_input and zero grad_weight and grad_bias
// (an empty placeholder where output_mask does not ask for one).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> empty_batch_conv2d_grads(
    const at::Tensor& input, const at::Tensor& weight, std::array<bool, 3> output_mask,
    at::MemoryFormat fmt) {
  const auto opts = input.options();
  return {output_mask[0] ? at::empty(input.sizes(), opts.memory_format(fmt)) : at::empty({0}, opts),
          output_mask[1] ? at::zeros(weight.sizes(), opts) : at::empty({0}, opts),
          output_mask[2] ? at::zeros({weight.size(0)}, opts) : at::empty({0}, opts)};
}

struct LinearShape {
  int64_t rows, in_features, out_features;
  std::vector<int64_t> out_sizes;  // input's leading dims + [out_features]
};

// Validates a linear call (input [*, in_features], weight [out_features, in_features], bias
// [out_features]) and returns its geometry. `allow_reduced` is true on CUDA.
inline LinearShape check_linear(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, bool allow_reduced) {
  check_floating(input, "input", allow_reduced);
  check_same_dtype_device(weight, input, "weight", "input");
  TORCH_CHECK(input.dim() >= 1,
              "fastcnn: linear input must have at least 1 dimension [*, in_features], got a ", input.dim(),
              "-D tensor");
  check_dim(weight, 2, "weight", "out_features, in_features");
  TORCH_CHECK(input.size(-1) == weight.size(1), "fastcnn: linear input's last dimension (", input.size(-1),
              ") must equal weight's in_features (weight shape ", weight.sizes(), ")");
  // in_features == 0 is valid, as in F.linear: the output is the bias (or 0), activated.
  TORCH_CHECK(weight.size(0) > 0, "fastcnn: linear weight has no output features (shape ", weight.sizes(),
              ")");
  if (bias.has_value() && bias->defined()) {
    check_same_dtype_device(*bias, input, "bias", "input");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "fastcnn: bias must have shape [",
                weight.size(0), "], got ", bias->sizes());
  }
  LinearShape s{};
  s.in_features = weight.size(1);
  s.out_features = weight.size(0);
  s.out_sizes.assign(input.sizes().begin(), input.sizes().end() - 1);
  s.rows = c10::multiply_integers(s.out_sizes);
  s.out_sizes.push_back(s.out_features);
  return s;
}

inline void check_linear_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                  const std::optional<at::Tensor>& output, const LinearShape& s,
                                  bool has_activation) {
  check_grad_and_output("linear_backward", grad_output, input, output, s.out_sizes, has_activation);
}

// Elementwise ops work in memory order: a 4-D tensor keeps its memory format (NCHW or channels_last),
// anything else is made contiguous, so that every operand lines up element for element.
inline at::MemoryFormat elementwise_format(const at::Tensor& t) {
  return t.dim() == 4 ? output_memory_format(t) : at::MemoryFormat::Contiguous;
}

inline at::Tensor dense_in(const at::Tensor& t, at::MemoryFormat fmt) {
  return t.dim() == 4 ? t.contiguous(fmt) : t.contiguous();
}

// The residual add: other matches input exactly (no broadcasting).
inline void check_add(const at::Tensor& input, const at::Tensor& other, bool allow_reduced) {
  check_floating(input, "input", allow_reduced);
  check_same_dtype_device(other, input, "other", "input");
  TORCH_CHECK(other.sizes() == input.sizes(), "fastcnn: add needs other to have input's shape ",
              input.sizes(), ", got ", other.sizes());
}

// activation_backward's saved tensor is the activation's output or input (common/activation.h).
inline void check_activation_backward(const at::Tensor& grad_output, const at::Tensor& saved,
                                      bool allow_reduced) {
  check_floating(saved, "saved", allow_reduced);
  check_same_dtype_device(grad_output, saved, "grad_output", "saved");
  TORCH_CHECK(grad_output.sizes() == saved.sizes(),
              "fastcnn: grad_output must have the saved tensor's shape ", saved.sizes(), ", got ",
              grad_output.sizes());
}

struct Pool2dShape {
  int64_t batch, channels, in_h, in_w, out_h, out_w;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
};

// A 4-D pooling input: dtype the device supports, non-empty channels and spatial size. An empty batch is
// valid (an empty output), as in torch.nn's pooling.
inline void check_pool_input(const at::Tensor& input, bool allow_reduced) {
  check_dim(input, 4, "input", "N, C, H, W");
  check_floating(input, "input", allow_reduced);
  TORCH_CHECK(input.size(1) > 0 && input.size(2) > 0 && input.size(3) > 0,
              "fastcnn: input must have non-zero channels and spatial size, got shape ", input.sizes());
}

// A pooling backward's grad_output must be the forward output's gradient: input's dtype and device,
// input's batch and channels, and (when known, else -1) the spatial size the forward produced.
inline void check_pool_grad_output(const at::Tensor& grad_output, const at::Tensor& input, int64_t out_h,
                                   int64_t out_w) {
  check_dim(grad_output, 4, "grad_output", "N, C, outH, outW");
  check_same_dtype_device(grad_output, input, "grad_output", "input");
  TORCH_CHECK(grad_output.size(0) == input.size(0) && grad_output.size(1) == input.size(1) &&
                  (out_h < 0 || grad_output.size(2) == out_h) && (out_w < 0 || grad_output.size(3) == out_w),
              "fastcnn: grad_output has shape ", grad_output.sizes(), " but the pooling of input ",
              input.sizes(), " produces [", input.size(0), ", ", input.size(1), ", ",
              out_h < 0 ? "*" : std::to_string(out_h), ", ", out_w < 0 ? "*" : std::to_string(out_w), "]");
  TORCH_CHECK(grad_output.size(2) > 0 && grad_output.size(3) > 0,
              "fastcnn: grad_output must have a non-zero spatial size, got shape ", grad_output.sizes());
}

// max_pool2d_backward's indices: int64 on input's device, one per grad_output element.
inline void check_max_pool_indices(const at::Tensor& indices, const at::Tensor& grad_output,
                                   const at::Tensor& input) {
  TORCH_CHECK(indices.scalar_type() == at::kLong,
              "fastcnn: indices must be int64 (as max_pool2d returns them), got ", indices.scalar_type());
  TORCH_CHECK(indices.device() == input.device(), "fastcnn: indices is on ", indices.device(),
              " but input is on ", input.device());
  TORCH_CHECK(indices.sizes() == grad_output.sizes(), "fastcnn: indices must have grad_output's shape ",
              grad_output.sizes(), ", got ", indices.sizes());
}

// Validates max/avg pooling arguments (dilation is {1, 1} for avg pooling) and returns the geometry.
inline Pool2dShape check_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode,
                                bool allow_reduced) {
  check_pool_input(input, allow_reduced);
  check_positive_pair(kernel_size, "kernel_size");
  check_positive_pair(stride, "stride");
  check_nonnegative_pair(padding, "padding");
  check_positive_pair(dilation, "dilation");
  TORCH_CHECK(padding[0] * 2 <= kernel_size[0] && padding[1] * 2 <= kernel_size[1], "fastcnn: padding ",
              padding, " must be at most half of kernel_size ", kernel_size);
  Pool2dShape s{};
  s.batch = input.size(0);
  s.channels = input.size(1);
  s.in_h = input.size(2);
  s.in_w = input.size(3);
  s.kernel_h = kernel_size[0];
  s.kernel_w = kernel_size[1];
  s.stride_h = stride[0];
  s.stride_w = stride[1];
  s.pad_h = padding[0];
  s.pad_w = padding[1];
  s.dilation_h = dilation[0];
  s.dilation_w = dilation[1];
  s.out_h = pool_output_extent(s.in_h, s.kernel_h, s.stride_h, s.pad_h, s.dilation_h, ceil_mode);
  s.out_w = pool_output_extent(s.in_w, s.kernel_w, s.stride_w, s.pad_w, s.dilation_w, ceil_mode);
  TORCH_CHECK(s.out_h > 0 && s.out_w > 0, "fastcnn: pooling output size would be ", s.out_h, "x", s.out_w,
              " (input ", s.in_h, "x", s.in_w, ", kernel_size ", kernel_size, ", padding ", padding,
              ", dilation ", dilation, "); it must be at least 1x1");
  return s;
}

}  // namespace fastcnn
