// Automatic mixed precision for fastcnn ops, registered on the AutocastCUDA key the way torchvision does
// it. A C++ kernel rather than torch.library.register_autocast because the latter casts to one dtype
// fixed at registration, while AMP users choose float16 or bfloat16 per autocast region: here the cast
// follows at::autocast::get_autocast_dtype(kCUDA). conv2d and linear run in the autocast dtype (float64
// is left alone, as PyTorch does); add promotes its two operands to the wider dtype. Pooling and the
// activations need no entry: they run in whatever dtype they are given.
//
// On the CPU (AutocastCPU) fastcnn's kernels take float32 and float64 only, so every op casts its
// float16/bfloat16 CPU operands to float32 and runs there: under torch.autocast("cpu", dtype=bfloat16)
// a torch layer hands a fastcnn layer bfloat16 activations, which must work, never raise. Outputs are
// float32 (autocast's own float32 ops do the same); the next autocast op casts them back down. One boxed
// kernel serves every op; operands the schema writes to (running statistics) are never replaced.
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <optional>

#include "common/activation.h"

namespace fastcnn {
namespace {

constexpr auto kDevice = c10::DeviceType::CUDA;

at::Tensor conv2d_autocast(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           int64_t activation, const std::optional<at::Tensor>& residual) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastcnn::conv2d", "")
                       .typed<decltype(conv2d_autocast)>();
  const auto dtype = at::autocast::get_autocast_dtype(at::kCUDA);
  return op.call(at::autocast::cached_cast(dtype, input, kDevice),
                 at::autocast::cached_cast(dtype, weight, kDevice),
                 at::autocast::cached_cast(dtype, bias, kDevice), stride, padding, dilation, groups,
                 activation, at::autocast::cached_cast(dtype, residual, kDevice));
}

at::Tensor linear_autocast(const at::Tensor& input, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, int64_t activation) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastcnn::linear", "")
                       .typed<decltype(linear_autocast)>();
  const auto dtype = at::autocast::get_autocast_dtype(at::kCUDA);
  return op.call(at::autocast::cached_cast(dtype, input, kDevice),
                 at::autocast::cached_cast(dtype, weight, kDevice),
                 at::autocast::cached_cast(dtype, bias, kDevice), activation);
}

at::Tensor add_autocast(const at::Tensor& input, const at::Tensor& other, int64_t activation) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fastcnn::add", "").typed<decltype(add_autocast)>();
  const auto dtype = at::promote_types(input.scalar_type(), other.scalar_type());
  return op.call(input.to(dtype), other.to(dtype), activation);
}

bool is_reduced_cpu_float(const at::Tensor& t) {
  return t.defined() && t.device().is_cpu() &&
         (t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16);
}

void cpu_autocast_to_float(const c10::OperatorHandle& op, c10::DispatchKeySet /*keys*/,
                           torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  const auto first = stack->size() - arguments.size();
  for (size_t i = 0; i < arguments.size(); ++i) {
    const auto* alias = arguments[i].alias_info();
    if (alias != nullptr && alias->isWrite()) continue;
    auto& value = (*stack)[first + i];
    if (value.isTensor() && is_reduced_cpu_float(value.toTensor())) {
      value = value.toTensor().to(at::kFloat);
    }
  }
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  op.callBoxed(stack);
}

}  // namespace

// Every fastcnn op (tests/test_autocast.py checks that none is missing).
TORCH_LIBRARY_IMPL(fastcnn, AutocastCPU, m) {
  for (const char* name :
       {"conv2d", "conv2d_backward", "linear", "linear_backward", "max_pool2d", "max_pool2d_backward",
        "avg_pool2d", "avg_pool2d_backward", "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "add",
        "activation_backward", "batch_norm", "batch_norm_backward", "batch_norm_update_running_stats",
        "layer_norm", "layer_norm_backward", "augment_affine"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&cpu_autocast_to_float>());
  }
#define FASTCNN_CPU_AUTOCAST_ACTIVATION(Enum, code, op, Functor) \
  m.impl(#op, torch::CppFunction::makeFromBoxedFunction<&cpu_autocast_to_float>());
  FASTCNN_ACTIVATIONS(FASTCNN_CPU_AUTOCAST_ACTIVATION)
#undef FASTCNN_CPU_AUTOCAST_ACTIVATION
}

TORCH_LIBRARY_IMPL(fastcnn, AutocastCUDA, m) {
  m.impl("conv2d", &conv2d_autocast);
  m.impl("linear", &linear_autocast);
  m.impl("add", &add_autocast);
}

}  // namespace fastcnn
