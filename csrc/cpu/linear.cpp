// CPU linear and its backward. Algorithm: input [*, in] is flattened to x [M, in]. Up to 1024 rows the
// output is computed per block of output features (so both cores work even for one sample) by the
// unpacked dot kernel (cpu/gemm_microkernel.inc: 4 x 4 blocks of vector partial sums over k, W read in
// place, x in chunks of 64 rows streaming past the block's cache-resident W rows). More rows use
// fastcnn's packed GEMM micro-kernel on row chunks, one single-threaded GEMM per chunk. Each block gets
// the epilogue act(C + bias) while it is cache-hot. Backward forms grad_pre = grad_output * act'(output) per
// row chunk as it reads grad_output, computes grad_input = grad_pre @ W for that chunk and the bias gradient
// as per-slot partial sums reduced in a fixed order; grad_weight = grad_pre^T @ x is one ATen BLAS call.
// Layout: row-major [M, in] input, [out, in] weight.
// Measured: benchmarks/NOTES.md (2026-11-25 afternoon: elementwise, linear).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "common/activation.h"
#include "common/checks.h"
#include "cpu/epilogue.h"
#include "cpu/gemm.h"
#include "cpu/slots.h"

namespace fastcnn {
namespace {

// Up to this many rows the forward skips packing W and runs the dot kernel over output-feature blocks
// (figures in the header comment); beyond it, W packed per row task costs less than re-reading x per
// output-feature block.
constexpr int64_t kDotMaxRows = 1024;
constexpr int64_t kMinRowChunk = 32;
constexpr int64_t kMinColChunk = 64;

at::Tensor linear_cpu(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, int64_t activation) {
  const Activation act = to_activation(activation);
  const LinearShape s = check_linear(input, weight, bias, /*allow_reduced=*/false);
  const at::Tensor x = input.reshape({s.rows, s.in_features}).contiguous();
  const at::Tensor w = weight.contiguous();
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  // Allocated at its final shape (not a view of a 2-D buffer): callers may modify it in place, e.g.
  // F.relu(linear(x), inplace=True), which autograd refuses on a view returned by a custom op.
  at::Tensor out = at::empty(s.out_sizes, x.options());
  if (s.rows == 0) return out;  // an empty batch, as F.linear
  if (s.in_features == 0) {     // no features: each row is the activated bias (or 0), as F.linear
    out.zero_();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastcnn_linear_cpu_no_features", [&] {
      cpu::apply_epilogue<scalar_t>(out.mutable_data_ptr<scalar_t>(), s.out_features, s.rows, s.out_features,
                                    has_bias ? b.const_data_ptr<scalar_t>() : nullptr, nullptr, nullptr, 0,
                                    act);
    });
    return out;
  }

  const int64_t threads = at::get_num_threads();
  // Up to kDotMaxRows rows: the dot kernel over blocks of output features. More rows: the packed GEMM
  // over row chunks (each sees all of W).
  const bool split_rows = s.rows > kDotMaxRows;
  const int64_t extent = split_rows ? s.rows : s.out_features;
  const int64_t min_chunk = split_rows ? kMinRowChunk : kMinColChunk;
  const int64_t num_tasks = std::max<int64_t>(1, std::min<int64_t>(extent / min_chunk, 64 * threads));
  const int64_t slots = cpu::num_slots(num_tasks);

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastcnn_linear_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* bp = has_bias ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int64_t K = s.in_features, N = s.out_features;
    cpu::for_each_slot(num_tasks, slots, [&](int64_t, int64_t t_begin, int64_t t_end) {
      for (int64_t t = t_begin; t < t_end; ++t) {
        const int64_t lo = extent * t / num_tasks, hi = extent * (t + 1) / num_tasks;
        if (split_rows) {
          scalar_t* block = op + lo * N;
          cpu::gemm<scalar_t>(false, true, hi - lo, N, K, xp + lo * K, K, wp, K, block, N, false);
          cpu::apply_epilogue<scalar_t>(block, N, hi - lo, N, bp, nullptr, nullptr, 0, act);
        } else {
          scalar_t* block = op + lo;
          cpu::kernels<scalar_t>().dot(xp, K, wp + lo * K, K, s.rows, hi - lo, K, block, N, false);
          cpu::apply_epilogue<scalar_t>(block, N, s.rows, hi - lo, bp ? bp + lo : nullptr, nullptr, nullptr,
                                        0, act);
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& output, int64_t activation, std::array<bool, 3> output_mask) {
  const Activation act = to_activation(activation);
  check_fused_backward(act, "linear_backward");
  const LinearShape s = check_linear(input, weight, std::nullopt, /*allow_reduced=*/false);
  const bool has_act = act != Activation::None;
  check_linear_backward(grad_output, input, output, s, has_act);
  const at::Tensor y = has_act ? output->reshape({s.rows, s.out_features}).contiguous() : at::Tensor();
  const bool need_input = output_mask[0], need_weight = output_mask[1], need_bias = output_mask[2];
  const auto opts = input.options();
  const int64_t M = s.rows, K = s.in_features, N = s.out_features;
  const at::Tensor g = grad_output.reshape({M, N}).contiguous();
  const at::Tensor w = weight.contiguous();

  at::Tensor grad_input = need_input ? at::empty(input.sizes(), opts) : at::empty({0}, opts);
  at::Tensor grad_weight = need_weight ? at::empty({N, K}, opts) : at::empty({0}, opts);
  at::Tensor grad_bias = need_bias ? at::empty({N}, opts) : at::empty({0}, opts);
  if (!need_input && !need_weight && !need_bias) return {grad_input, grad_weight, grad_bias};
  if (M == 0) {  // an empty batch contributes nothing to the weight and bias gradients
    if (need_weight) grad_weight.zero_();
    if (need_bias) grad_bias.zero_();
    return {grad_input, grad_weight, grad_bias};
  }

  // grad_pre is kept whole only when grad_weight needs it after the row pass; otherwise per chunk.
  const bool keep_grad_pre = has_act && need_weight;
  at::Tensor grad_pre = keep_grad_pre ? at::empty({M, N}, opts) : (has_act ? at::Tensor() : g);
  const bool row_pass = need_input || need_bias || keep_grad_pre;
  const int64_t num_tasks =
      std::max<int64_t>(1, std::min<int64_t>(M / kMinRowChunk, 64 * at::get_num_threads()));
  const int64_t slots = cpu::num_slots(num_tasks);
  at::Tensor bias_partials = need_bias ? at::zeros({slots, N}, opts) : at::Tensor();

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fastcnn_linear_backward_cpu", [&] {
    const scalar_t* gptr = g.const_data_ptr<scalar_t>();
    const scalar_t* yptr = has_act ? y.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* wptr = w.const_data_ptr<scalar_t>();
    scalar_t* kept = keep_grad_pre ? grad_pre.mutable_data_ptr<scalar_t>() : nullptr;
    if (row_pass) {
      cpu::for_each_slot(num_tasks, slots, [&](int64_t slot, int64_t t_begin, int64_t t_end) {
        std::vector<scalar_t> chunk_buffer;
        for (int64_t t = t_begin; t < t_end; ++t) {
          const int64_t lo = M * t / num_tasks, hi = M * (t + 1) / num_tasks, rows = hi - lo;
          const scalar_t* gp = gptr + lo * N;
          if (has_act) {
            scalar_t* dst;
            if (kept != nullptr) {
              dst = kept + lo * N;
            } else {
              chunk_buffer.resize(rows * N);
              dst = chunk_buffer.data();
            }
            cpu::grad_pre_block<scalar_t>(gptr + lo * N, N, yptr + lo * N, N, dst, N, rows, N, act);
            gp = dst;
          }
          if (need_bias) {
            cpu::add_column_sums<scalar_t>(gp, N, rows, N,
                                           bias_partials.mutable_data_ptr<scalar_t>() + slot * N);
          }
          if (need_input && K > 0) {
            cpu::gemm<scalar_t>(false, false, rows, K, N, gp, N, wptr, K,
                                grad_input.mutable_data_ptr<scalar_t>() + lo * K, K, false);
          }
        }
      });
    }
    if (need_bias) {
      cpu::reduce_partials<scalar_t>(bias_partials.const_data_ptr<scalar_t>(), slots, N, N,
                                     grad_bias.mutable_data_ptr<scalar_t>());
    }
  });
  if (need_weight) {
    const at::Tensor x = input.reshape({M, K}).contiguous();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::mm_out(grad_weight, grad_pre.t(), x);
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, CPU, m) {
  m.impl("linear", &linear_cpu);
  m.impl("linear_backward", &linear_backward_cpu);
}

}  // namespace fastcnn
