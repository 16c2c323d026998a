// What the normalisation ops (batch norm, layer norm) share on the host: the dtype their statistics
// travel in, the check of their weight/bias/running-statistics arguments, and those arguments as dense
// vectors for the kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace fastcnn {
namespace norm {

// float32 for float32/float16/bfloat16 inputs, float64 for float64 ones, as PyTorch keeps them.
inline at::ScalarType stats_dtype(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline bool given(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->defined();
}

// A parameter of `op` (absent is fine): `shape`, on input's device, in input's dtype or float32 next to
// a float16/bfloat16 input (mixed precision).
inline void check_parameter(const std::optional<at::Tensor>& t, const at::Tensor& input,
                            at::IntArrayRef shape, const char* op, const char* name) {
  if (!given(t)) return;
  TORCH_CHECK(t->device() == input.device(), "fastcnn: ", op, " ", name, " is on ", t->device(),
              " but input is on ", input.device());
  const bool reduced = input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16;
  TORCH_CHECK(t->scalar_type() == input.scalar_type() || (reduced && t->scalar_type() == at::kFloat),
              "fastcnn: ", op, " ", name, " has dtype ", t->scalar_type(), " but input has dtype ",
              input.scalar_type(), reduced ? " (float32 is accepted too)" : "");
  TORCH_CHECK(t->sizes() == shape, "fastcnn: ", op, " ", name, " must have shape ", shape, ", got ",
              t->sizes());
}

// A parameter flattened to a dense vector of `dtype`, or an undefined tensor when absent.
inline at::Tensor parameter_vector(const std::optional<at::Tensor>& t, at::ScalarType dtype) {
  return given(t) ? t->reshape({-1}).to(dtype).contiguous() : at::Tensor();
}

template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

}  // namespace norm
}  // namespace fastcnn
