// Automatic mixed precision for fastcnn ops, registered on the AutocastCUDA key the way torchvision does
// it. A C++ kernel rather than torch.library.register_autocast because the latter casts to one dtype
// fixed at registration, while AMP users choose float16 or bfloat16 per autocast region: here the cast
// follows at::autocast::get_autocast_dtype(kCUDA). conv2d and linear run in the autocast dtype (float64
// is left alone, as PyTorch does); add promotes its two operands to the wider dtype. Pooling and the
// activations need no entry: they run in whatever dtype they are given.
#include <ATen/autocast_mode.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <optional>

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

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, AutocastCUDA, m) {
  m.impl("conv2d", &conv2d_autocast);
  m.impl("linear", &linear_autocast);
  m.impl("add", &add_autocast);
}

}  // namespace fastcnn
