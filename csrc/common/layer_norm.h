// Layer normalisation pieces shared by the CPU and CUDA kernels: argument validation and the view the
// kernels iterate over. The input is seen as [outer][C][inner] with C = the product of the normalised
// dims, each (outer, inner) position one group normalised over its C values: F.layer_norm over the
// trailing dims is inner = 1 (each group a contiguous row); ConvNeXt's channels-first LayerNorm2d over
// dim 1 is inner = H*W for NCHW and, on channels_last memory, inner = 1 again (each pixel's channels
// contiguous), with no copy.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "common/checks.h"
#include "common/norm.h"

namespace fastcnn {
namespace ln {

struct Shape {
  int64_t outer, channels, inner;
  at::MemoryFormat format;
  int64_t groups() const { return outer * inner; }
  bool channels_inner() const { return inner == 1; }
};

using norm::stats_dtype;

// Validates a layer_norm call normalising input's dims [dim, dim + len(normalized_shape)).
inline Shape check_layer_norm(const at::Tensor& input, int64_t dim, at::IntArrayRef normalized_shape,
                              const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                              double eps, bool allow_reduced) {
  check_floating(input, "input", allow_reduced);
  const int64_t k = static_cast<int64_t>(normalized_shape.size());
  TORCH_CHECK(k > 0, "fastcnn: layer_norm normalized_shape must not be empty");
  TORCH_CHECK(dim >= 0 && dim + k <= input.dim(), "fastcnn: layer_norm normalized_shape ", normalized_shape,
              " starting at dim ", dim, " does not fit input of shape ", input.sizes());
  const auto normalized = input.sizes().slice(dim, k);
  TORCH_CHECK(normalized == normalized_shape, "fastcnn: layer_norm normalized_shape ", normalized_shape,
              " does not match input's dims ", normalized, " (input shape ", input.sizes(), ")");
  TORCH_CHECK(input.numel() > 0, "fastcnn: layer_norm input is empty (shape ", input.sizes(), ")");
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "fastcnn: layer_norm eps must be finite and non-negative, got ",
              eps);
  norm::check_parameter(weight, input, normalized_shape, "layer_norm", "weight");
  norm::check_parameter(bias, input, normalized_shape, "layer_norm", "bias");
  Shape s{};
  s.channels = 1;
  for (int64_t d : normalized_shape) s.channels *= d;
  const bool channels_last =
      input.dim() == 4 && dim == 1 && k == 1 && output_memory_format(input) == at::MemoryFormat::ChannelsLast;
  if (channels_last) {
    s.format = at::MemoryFormat::ChannelsLast;
    s.outer = input.numel() / s.channels;
    s.inner = 1;
  } else {
    s.format = at::MemoryFormat::Contiguous;
    s.outer = 1;
    for (int64_t d = 0; d < dim; ++d) s.outer *= input.size(d);
    s.inner = input.numel() / (s.outer * s.channels);
  }
  return s;
}

// layer_norm_backward: grad_output has input's shape; mean and rstd are the forward's per-group statistics.
inline void check_layer_norm_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                      const at::Tensor& mean, const at::Tensor& rstd, const Shape& s) {
  check_same_dtype_device(grad_output, input, "grad_output", "input");
  TORCH_CHECK(grad_output.sizes() == input.sizes(), "fastcnn: grad_output must have input's shape ",
              input.sizes(), ", got ", grad_output.sizes());
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{mean, "mean"}, {rstd, "rstd"}}) {
    TORCH_CHECK(t.device() == input.device(), "fastcnn: layer_norm_backward ", name, " is on ", t.device(),
                " but input is on ", input.device());
    TORCH_CHECK(t.scalar_type() == stats_dtype(input), "fastcnn: layer_norm_backward ", name, " must be ",
                stats_dtype(input), " (as layer_norm returns it), got ", t.scalar_type());
    TORCH_CHECK(t.dim() == 1 && t.size(0) == s.groups(), "fastcnn: layer_norm_backward ", name,
                " must have shape [", s.groups(), "] (one value per normalised group), got ", t.sizes());
  }
}

}  // namespace ln
}  // namespace fastcnn
