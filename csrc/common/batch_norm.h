// Batch normalisation pieces shared by the CPU and CUDA kernels: argument validation, the [outer][C][inner]
// view of the input, the per-channel moments and their combination, and the per-channel coefficients of
// the forward and backward transforms, so that both backends compute the same arithmetic.
// Statistics: common/moments.h. Every merge runs in a fixed order (partials are laid out by position, not
// by thread), so results do not depend on the thread count or scheduling.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <optional>

#include "common/checks.h"
#include "common/moments.h"
#include "common/norm.h"

namespace fastcnn {
namespace bn {

// The input seen as [outer][channels][inner]: NCHW (and any [N, C, *]) is outer = N, inner = H*W...;
// channels_last 4-D (and [N, C]) is outer = N*H*W, inner = 1, the channel the fastest index.
struct Shape {
  int64_t outer, channels, inner;
  int64_t count;  // values per channel: outer * inner
  at::MemoryFormat format;
  bool channels_inner() const { return inner == 1; }
};

using norm::given;
using norm::stats_dtype;

// weight, bias and the running statistics: [C], one value per input channel.
inline void check_channel_vector(const std::optional<at::Tensor>& t, const at::Tensor& input,
                                 int64_t channels, const char* name) {
  norm::check_parameter(t, input, {channels}, "batch_norm", name);
}

// The input alone: [N, C, *], a dtype the device's kernels take, nothing empty; and its view.
inline Shape input_shape(const at::Tensor& input, bool allow_reduced) {
  TORCH_CHECK(input.dim() >= 2, "fastcnn: batch_norm input must be [N, C, *] (at least 2-D), got a ",
              input.dim(), "-D tensor of shape ", input.sizes());
  check_floating(input, "input", allow_reduced);
  TORCH_CHECK(input.size(0) > 0, "fastcnn: batch_norm input has an empty batch (shape ", input.sizes(), ")");
  TORCH_CHECK(input.size(1) > 0, "fastcnn: batch_norm input has no channels (shape ", input.sizes(), ")");
  Shape s{};
  s.channels = input.size(1);
  s.count = input.numel() / s.channels;
  TORCH_CHECK(s.count > 0, "fastcnn: batch_norm input has an empty spatial size (shape ", input.sizes(), ")");
  const bool channels_last =
      input.dim() == 4 && output_memory_format(input) == at::MemoryFormat::ChannelsLast;
  s.format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  if (channels_last || input.dim() == 2) {
    s.outer = s.count;
    s.inner = 1;
  } else {
    s.outer = input.size(0);
    s.inner = s.count / input.size(0);
  }
  return s;
}

inline void check_eps(double eps) {
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "fastcnn: batch_norm eps must be finite and non-negative, got ",
              eps);
}

// Validates a batch_norm call and returns the view its kernels iterate over. Everything is checked
// before any kernel runs, so a failing call leaves the running statistics as they were.
inline Shape check_batch_norm(const at::Tensor& input, const std::optional<at::Tensor>& weight,
                              const std::optional<at::Tensor>& bias,
                              const std::optional<at::Tensor>& running_mean,
                              const std::optional<at::Tensor>& running_var, bool training, double eps,
                              bool allow_reduced) {
  const Shape s = input_shape(input, allow_reduced);
  check_eps(eps);
  check_channel_vector(weight, input, s.channels, "weight");
  check_channel_vector(bias, input, s.channels, "bias");
  check_channel_vector(running_mean, input, s.channels, "running_mean");
  check_channel_vector(running_var, input, s.channels, "running_var");
  TORCH_CHECK(given(running_mean) == given(running_var),
              "fastcnn: batch_norm takes running_mean and running_var together; got only ",
              given(running_mean) ? "running_mean" : "running_var");
  TORCH_CHECK(training || given(running_mean),
              "fastcnn: batch_norm in evaluation mode (training=False) needs running_mean and running_var");
  // PyTorch's own message, so that code catching it keeps working.
  TORCH_CHECK(!training || s.count > 1,
              "Expected more than 1 value per channel when training, got input size ", input.sizes());
  return s;
}

inline at::Tensor dense_input(const at::Tensor& t, const Shape& s) {
  return t.contiguous(s.format);
}

// batch_norm_backward: grad_output (and, with an activation, the forward output) has input's shape;
// mean and var are the [C] statistics the forward returned.
inline void check_batch_norm_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                      const std::optional<at::Tensor>& weight, const at::Tensor& mean,
                                      const at::Tensor& var, const std::optional<at::Tensor>& output,
                                      const Shape& s, double eps, bool has_activation) {
  check_eps(eps);
  check_channel_vector(weight, input, s.channels, "weight");
  check_grad_and_output("batch_norm_backward", grad_output, input, output, input.sizes(), has_activation);
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{mean, "mean"}, {var, "var"}}) {
    TORCH_CHECK(t.device() == input.device(), "fastcnn: batch_norm_backward ", name, " is on ", t.device(),
                " but input is on ", input.device());
    TORCH_CHECK(t.scalar_type() == stats_dtype(input), "fastcnn: batch_norm_backward ", name, " must be ",
                stats_dtype(input), " (as batch_norm returns it), got ", t.scalar_type());
    TORCH_CHECK(t.dim() == 1 && t.size(0) == s.channels, "fastcnn: batch_norm_backward ", name,
                " must have shape [", s.channels, "], got ", t.sizes());
  }
}

// batch_norm_update_running_stats: [C] running statistics updated in place from a forward's batch
// statistics over `count` values per channel.
inline void check_running_stats_update(const at::Tensor& running_mean, const at::Tensor& running_var,
                                       const at::Tensor& mean, const at::Tensor& var, double momentum,
                                       int64_t count, bool allow_reduced) {
  check_floating(running_mean, "running_mean", allow_reduced);
  check_same_dtype_device(running_var, running_mean, "running_var", "running_mean");
  const int64_t channels = running_mean.numel();
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{running_mean, "running_mean"},
                                {running_var, "running_var"}}) {
    TORCH_CHECK(t.dim() == 1 && t.is_contiguous(), "fastcnn: ", name,
                " must be a contiguous 1-D tensor (it is updated in place), got shape ", t.sizes(),
                " strides ", t.strides());
  }
  TORCH_CHECK(running_var.numel() == channels, "fastcnn: running_var has ", running_var.numel(),
              " values but running_mean has ", channels);
  const auto acc = running_mean.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{mean, "mean"}, {var, "var"}}) {
    TORCH_CHECK(t.device() == running_mean.device(), "fastcnn: ", name, " is on ", t.device(),
                " but running_mean is on ", running_mean.device());
    TORCH_CHECK(t.scalar_type() == acc, "fastcnn: ", name, " must be ", acc, " next to ",
                running_mean.scalar_type(), " running statistics, got ", t.scalar_type());
    TORCH_CHECK(t.dim() == 1 && t.size(0) == channels, "fastcnn: ", name, " must have shape [", channels,
                "], got ", t.sizes());
  }
  TORCH_CHECK(count > 1,
              "fastcnn: the running variance needs more than 1 value per channel, got count=", count);
  TORCH_CHECK(std::isfinite(momentum) && momentum >= 0 && momentum <= 1,
              "fastcnn: momentum must be in [0, 1], got ", momentum);
}

// ---- arithmetic shared by both backends ----------------------------------------------------------------

using stats::inverse_std;
using stats::merge;
using stats::Moments;
using stats::welford_add;

// Forward transform y = act((x - mean) * scale + shift), scale = weight / sqrt(var + eps), shift = bias
// (weight 1 and bias 0 when absent). x - mean first, as PyTorch's reference does: folding mean into the
// shift (x * scale + shift') cancels digits when |mean| is large against the standard deviation.
template <typename acc_t>
struct Affine {
  acc_t mean, scale, shift;
};

template <typename acc_t>
C10_HOST_DEVICE inline Affine<acc_t> forward_affine(acc_t mean, acc_t var, double eps, const acc_t* weight,
                                                    const acc_t* bias, int64_t c) {
  const acc_t scale = (weight != nullptr ? weight[c] : acc_t(1)) * inverse_std(var, eps);
  return {mean, scale, bias != nullptr ? bias[c] : acc_t(0)};
}

// Backward transform grad_input = g * a + (x - mean) * b + d, where g is grad_output through the
// activation and, over the count values of the channel, sum_g = sum(g) and sum_gx = sum(g * (x - mean)):
//   training: the statistics depend on x: a = w * invstd, b = -a * invstd^2 * sum_gx / count,
//             d = -a * sum_g / count;
//   eval:     the statistics are constants: a = w * invstd, b = d = 0;
// and grad_weight = sum_gx * invstd, grad_bias = sum_g in both.
template <typename acc_t>
struct BackwardCoefficients {
  acc_t mean, a, b, d;
};

template <typename acc_t>
C10_HOST_DEVICE inline BackwardCoefficients<acc_t> backward_coefficients(acc_t mean, acc_t var, double eps,
                                                                         const acc_t* weight, int64_t c,
                                                                         acc_t sum_g, acc_t sum_gx,
                                                                         int64_t count, bool training) {
  const acc_t invstd = inverse_std(var, eps);
  const acc_t a = (weight != nullptr ? weight[c] : acc_t(1)) * invstd;
  if (!training) return {mean, a, acc_t(0), acc_t(0)};
  const acc_t n = static_cast<acc_t>(count);
  return {mean, a, -a * invstd * invstd * sum_gx / n, -a * sum_g / n};
}

}  // namespace bn
}  // namespace fastcnn
