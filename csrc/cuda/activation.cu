// CUDA kernels for the standalone activations (one op per row of common/activation.h), the residual add fused with its activation, and the activation
// backward. Algorithm: one flat grid-stride pass in memory order, 16-byte vector loads/stores when every
// pointer is 16-byte aligned (scalar otherwise), the activation a compile-time template argument so that
// its switch folds away; half/bfloat16 are computed in fp32 (at::opmath_type). Layout: any dense layout;
// 4-D inputs are made dense in the input's memory format (NCHW or channels_last) so that `other` and
// `output` line up element for element. Measured: not yet measured.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <type_traits>

#include "common/activation.h"
#include "common/checks.h"
#include "cuda/common/launch.cuh"
#include "cuda/common/vec.cuh"

namespace fastcnn {
namespace {

template <typename T, Activation A>
struct ActivateOp {
  ActivationFunctor<A> f;
  __device__ __forceinline__ T operator()(T x) const {
    using acc_t = at::opmath_type<T>;
    return static_cast<T>(f.template forward<acc_t>(static_cast<acc_t>(x)));
  }
};

template <typename T, Activation A>
struct AddActivateOp {
  ActivationFunctor<A> f;
  __device__ __forceinline__ T operator()(T x, T y) const {
    using acc_t = at::opmath_type<T>;
    return static_cast<T>(f.template forward<acc_t>(static_cast<acc_t>(x) + static_cast<acc_t>(y)));
  }
};

template <typename T, Activation A>
struct ActivationGradOp {
  ActivationFunctor<A> f;
  __device__ __forceinline__ T operator()(T grad, T saved) const {
    using acc_t = at::opmath_type<T>;
    return static_cast<T>(f.template backward<acc_t>(static_cast<acc_t>(grad), static_cast<acc_t>(saved)));
  }
};

at::Tensor activation_forward_cuda(const at::Tensor& input, Activation act) {
  cuda::check_cuda_tensor(input, "input");
  check_floating(input, "input", /*allow_reduced=*/true);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = elementwise_format(input);
  const at::Tensor x = dense_in(input, fmt);
  at::Tensor y = at::empty_like(x, fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastcnn_activation_cuda", [&] {
    with_activation(act, [&](auto tag) {
      cuda::launch_map</*Binary=*/false>(
          y.mutable_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), static_cast<const scalar_t*>(nullptr),
          x.numel(),
          ActivateOp<scalar_t, decltype(tag)::value>{activation_functor<decltype(tag)::value>(act)});
    });
  });
  return y;
}

template <Activation A>
at::Tensor activation_op_cuda(const at::Tensor& input) {
  return activation_forward_cuda(input, A);
}

template <Activation A>
at::Tensor parametrised_activation_op_cuda(const at::Tensor& input, double parameter) {
  return activation_forward_cuda(input, configured_activation<A>(parameter));
}

at::Tensor add_cuda(const at::Tensor& input, const at::Tensor& other, int64_t activation) {
  const Activation act = to_activation(activation);
  cuda::check_cuda_tensor(input, "input");
  check_add(input, other, /*allow_reduced=*/true);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = elementwise_format(input);
  const at::Tensor a = dense_in(input, fmt);
  const at::Tensor b = dense_in(other, fmt);
  at::Tensor y = at::empty_like(a, fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "fastcnn_add_cuda", [&] {
    with_activation(act, [&](auto tag) {
      cuda::launch_map</*Binary=*/true>(
          y.mutable_data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
          a.numel(),
          AddActivateOp<scalar_t, decltype(tag)::value>{activation_functor<decltype(tag)::value>(act)});
    });
  });
  return y;
}

at::Tensor activation_backward_cuda(const at::Tensor& grad_output, const at::Tensor& saved,
                                    int64_t activation) {
  const Activation act = to_activation(activation);
  cuda::check_cuda_tensor(saved, "saved");
  check_activation_backward(grad_output, saved, /*allow_reduced=*/true);
  const c10::cuda::CUDAGuard guard(saved.device());
  const auto fmt = elementwise_format(saved);
  const at::Tensor g = dense_in(grad_output, fmt);
  const at::Tensor y = dense_in(saved, fmt);
  at::Tensor gx = at::empty_like(y, fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, y.scalar_type(), "fastcnn_activation_backward_cuda", [&] {
        with_activation(act, [&](auto tag) {
          cuda::launch_map</*Binary=*/true>(gx.mutable_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(),
                                            y.const_data_ptr<scalar_t>(), y.numel(),
                                            ActivationGradOp<scalar_t, decltype(tag)::value>{
                                                activation_functor<decltype(tag)::value>(act)});
        });
      });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, FASTCNN_CUDA_DISPATCH_KEY, m) {
#define FASTCNN_IMPL_ACTIVATION_OP(Enum, code, op, Functor) \
  m.impl(#op, &activation_op_cuda<Activation::Enum>);
  FASTCNN_PLAIN_ACTIVATIONS(FASTCNN_IMPL_ACTIVATION_OP)
#undef FASTCNN_IMPL_ACTIVATION_OP
#define FASTCNN_IMPL_ACTIVATION_OP(Enum, code, op, Functor) \
  m.impl(#op, &parametrised_activation_op_cuda<Activation::Enum>);
  FASTCNN_PARAMETRISED_ACTIVATIONS(FASTCNN_IMPL_ACTIVATION_OP)
#undef FASTCNN_IMPL_ACTIVATION_OP
  m.impl("add", &add_cuda);
  m.impl("activation_backward", &activation_backward_cuda);
}

}  // namespace fastcnn
