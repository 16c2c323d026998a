// CPU kernels for the standalone activations (one op per row of common/activation.h), the residual add (fused with its activation) and the activation
// backward (through the saved output or input, common/activation.h). Algorithm: one flat pass over the elements in memory order, split across OpenMP threads by
// at::parallel_for; each output element is read/written exactly once. Layout: any dense layout; inputs
// are made dense in the input's memory format (NCHW or channels_last) so `other` and `output` line up
// element for element. Each loop is instantiated per activation (with_activation) and cloned per
// instruction set (simd_clones.h) so it vectorises with AVX-512 where the CPU has it.
// Measured: see benchmarks/NOTES.md.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common/activation.h"
#include "common/checks.h"
#include "cpu/simd_clones.h"

namespace fastcnn {
namespace {

constexpr int64_t kGrain = 32768;

template <typename T, typename Functor>
FASTCNN_SIMD_CLONES void activate_range(const Functor f, const T* __restrict x, T* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = f.forward(x[i]);
}

template <typename T, typename Functor>
FASTCNN_SIMD_CLONES void add_activate_range(const Functor f, const T* __restrict a, const T* __restrict b,
                                            T* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = f.forward(a[i] + b[i]);
}

template <typename T, typename Functor>
FASTCNN_SIMD_CLONES void activation_grad_range(const Functor f, const T* __restrict g, const T* __restrict y,
                                               T* __restrict gx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gx[i] = f.backward(g[i], y[i]);
}

at::Tensor activation_forward(const at::Tensor& input, Activation act) {
  check_floating(input, "input", /*allow_reduced=*/false);
  const auto fmt = elementwise_format(input);
  const at::Tensor x = dense_in(input, fmt);
  at::Tensor y = at::empty_like(x, fmt);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastcnn_activation_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    with_activation(act, [&](auto tag) {
      const auto f = activation_functor<decltype(tag)::value>(act);
      at::parallel_for(0, x.numel(), kGrain, [&](int64_t begin, int64_t end) {
        activate_range<scalar_t>(f, xp + begin, yp + begin, end - begin);
      });
    });
  });
  return y;
}

template <Activation A>
at::Tensor activation_op_cpu(const at::Tensor& input) {
  return activation_forward(input, A);
}

template <Activation A>
at::Tensor parametrised_activation_op_cpu(const at::Tensor& input, double parameter) {
  return activation_forward(input, configured_activation<A>(parameter));
}

at::Tensor add_cpu(const at::Tensor& input, const at::Tensor& other, int64_t activation) {
  const Activation act = to_activation(activation);
  check_add(input, other, /*allow_reduced=*/false);
  const auto fmt = elementwise_format(input);
  const at::Tensor a = dense_in(input, fmt);
  const at::Tensor b = dense_in(other, fmt);
  at::Tensor y = at::empty_like(a, fmt);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "fastcnn_add_cpu", [&] {
    const scalar_t* ap = a.const_data_ptr<scalar_t>();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    with_activation(act, [&](auto tag) {
      const auto f = activation_functor<decltype(tag)::value>(act);
      at::parallel_for(0, a.numel(), kGrain, [&](int64_t begin, int64_t end) {
        add_activate_range<scalar_t>(f, ap + begin, bp + begin, yp + begin, end - begin);
      });
    });
  });
  return y;
}

at::Tensor activation_backward_cpu(const at::Tensor& grad_output, const at::Tensor& saved,
                                   int64_t activation) {
  const Activation act = to_activation(activation);
  check_activation_backward(grad_output, saved, /*allow_reduced=*/false);
  const auto fmt = elementwise_format(saved);
  const at::Tensor g = dense_in(grad_output, fmt);
  const at::Tensor y = dense_in(saved, fmt);
  at::Tensor gx = at::empty_like(y, fmt);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "fastcnn_activation_backward_cpu", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    with_activation(act, [&](auto tag) {
      const auto f = activation_functor<decltype(tag)::value>(act);
      at::parallel_for(0, y.numel(), kGrain, [&](int64_t begin, int64_t end) {
        activation_grad_range<scalar_t>(f, gp + begin, yp + begin, gxp + begin, end - begin);
      });
    });
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, CPU, m) {
#define FASTCNN_IMPL_ACTIVATION_OP(Enum, code, op, Functor) m.impl(#op, &activation_op_cpu<Activation::Enum>);
  FASTCNN_PLAIN_ACTIVATIONS(FASTCNN_IMPL_ACTIVATION_OP)
#undef FASTCNN_IMPL_ACTIVATION_OP
#define FASTCNN_IMPL_ACTIVATION_OP(Enum, code, op, Functor) \
  m.impl(#op, &parametrised_activation_op_cpu<Activation::Enum>);
  FASTCNN_PARAMETRISED_ACTIVATIONS(FASTCNN_IMPL_ACTIVATION_OP)
#undef FASTCNN_IMPL_ACTIVATION_OP
  m.impl("add", &add_cpu);
  m.impl("activation_backward", &activation_backward_cpu);
}

}  // namespace fastcnn
