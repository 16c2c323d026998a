// CPU conv2d and its backward, on fastcnn's packed GEMM micro-kernels (cpu/gemm_kernel.h: AVX-512 /
// AVX2 / portable, chosen at run time), 2 threads via at::parallel_for, one single-threaded GEMM per task.
//  * channels_last (NHWC) forward: implicit GEMM, rows = global output pixels (across samples), no
//    im2col buffer. The input is zero-padded once; the micro-kernel broadcasts each pixel's im2col row
//    straight from it (KH runs of KW * C contiguous values) against the weight packed once per call into
//    [OC / nr][K][nr] panels (K ordered kh, kw, c), and applies act(acc + bias + residual) to the tile in
//    registers before its only store.
//  * NCHW forward: per (sample, pixel chunk), im2col gathers the chunk from zero-padded planes directly
//    into the packed panel layout
//    and C[OCg, pixels] = W[OCg, K] @ panels, weight rows read in place, the per-channel bias / residual /
//    activation fused into the tiles.
//  * Depthwise (groups == in_channels, out = multiplier * in): a direct kernel with no GEMM, vectorised
//    over channels in NHWC and plane by plane in NCHW.
// Backward forms grad_pre = grad_output * act'(output) per chunk as it reads grad_output. wgrad (and the
// bias gradient) accumulate per-thread partial sums over a static task split and reduce them in slot
// order, so results are bitwise reproducible for a given thread count; chunks span >= 256 pixels (NHWC
// tasks take several whole samples when planes are small) so each wgrad GEMM has a long reduction. dgrad
// computes grad_col = grad_pre @ W (NCHW: W^T transposed once per call) and scatters it back (col2im);
// a sample's scatter is owned by one thread, or, for batches smaller than the thread count, each thread
// scatters into its own buffer, summed in order. 1x1 / stride 1 / pad 0 convs skip im2col.
// Layout: NCHW or channels_last input (output and grad_input follow it); weight [OC, C/groups, KH, KW].
// Files: conv2d_geometry.h (shapes, task split), im2col.h, conv2d_gemm.cpp (GEMM forward/backward),
// conv2d_depthwise.cpp (direct depthwise), this file (entry points, layout and weight preparation).
// Measured: benchmarks/NOTES.md (packed GEMM micro-kernel, 2026-11-25) and
// benchmarks/results/amd-epyc-2026-11-25-conv*.json.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "common/activation.h"
#include "common/checks.h"
#include "cpu/conv2d_depthwise.h"
#include "cpu/conv2d_gemm.h"
#include "cpu/conv2d_geometry.h"
#include "cpu/epilogue.h"
#include "cpu/slots.h"

namespace fastcnn {
namespace {

using cpu::BackwardArgs;
using cpu::Geometry;

// ---------------------------------------------------------------------------------------------------
// Entry points.

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation, int64_t groups, int64_t activation,
                      const std::optional<at::Tensor>& residual) {
  const Activation act = to_activation(activation);
  const Conv2dShape s = check_conv2d(input, weight, bias, stride, padding, dilation, groups, false);
  const std::vector<int64_t> out_sizes{s.batch, s.out_channels, s.out_h, s.out_w};
  check_residual(residual, input, out_sizes);
  const auto fmt = output_memory_format(input);
  if (s.batch == 0) return at::empty(out_sizes, input.options().memory_format(fmt));
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const Geometry g(s, nhwc);

  const at::Tensor x = input.contiguous(fmt);
  const bool has_bias = bias.has_value() && bias->defined();
  const bool has_res = residual.has_value() && residual->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::Tensor();
  const at::Tensor r = has_res ? residual->contiguous(fmt) : at::Tensor();
  at::Tensor out = at::empty(out_sizes, x.options().memory_format(fmt));

  at::Tensor w;
  if (g.depthwise() && nhwc) {
    w = weight.reshape({s.out_channels, s.kernel_h * s.kernel_w}).t().contiguous();  // [taps, OC]
  } else if (nhwc && !g.depthwise()) {
    w = weight.permute({0, 2, 3, 1}).contiguous();  // [OC, KH, KW, Cg]
  } else {
    w = weight.contiguous();
  }

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastcnn_conv2d_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    const scalar_t* bp = has_bias ? b.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* rp = has_res ? r.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    if (g.depthwise()) {
      if (nhwc) {
        cpu::depthwise_forward_nhwc<scalar_t>(g, xp, wp, bp, rp, op, act);
      } else {
        cpu::depthwise_forward_nchw<scalar_t>(g, xp, wp, bp, rp, op, act);
      }
    } else if (nhwc) {
      cpu::conv_forward_nhwc<scalar_t>(g, xp, wp, bp, rp, op, act);
    } else {
      cpu::conv_forward_nchw<scalar_t>(g, xp, wp, bp, rp, op, act);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const std::optional<at::Tensor>& output, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, int64_t groups, int64_t activation, std::array<bool, 3> output_mask) {
  const Activation act = to_activation(activation);
  check_fused_backward(act, "conv2d_backward");
  const Conv2dShape s = check_conv2d(input, weight, std::nullopt, stride, padding, dilation, groups, false);
  const bool has_act = act != Activation::None;
  check_conv2d_backward(grad_output, input, output, s, has_act);
  const bool need_input = output_mask[0], need_weight = output_mask[1], need_bias = output_mask[2];
  const auto opts = input.options();
  const auto fmt = output_memory_format(input);
  if (s.batch == 0) return empty_batch_conv2d_grads(input, weight, output_mask, fmt);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const Geometry g(s, nhwc);
  if (!need_input && !need_weight && !need_bias) {
    return {at::empty({0}, opts), at::empty({0}, opts), at::empty({0}, opts)};
  }

  const at::Tensor go = grad_output.contiguous(fmt);
  const at::Tensor y = has_act ? output->contiguous(fmt) : at::Tensor();
  const at::Tensor x = input.contiguous(fmt);
  const int64_t taps = s.kernel_h * s.kernel_w;

  at::Tensor w;
  if (g.depthwise() && nhwc) {
    w = weight.reshape({s.out_channels, taps}).t().contiguous();
  } else if (nhwc && !g.depthwise()) {
    w = weight.permute({0, 2, 3, 1}).contiguous();
  } else {
    w = weight.contiguous();
  }

  // Stride-1 NCHW dgrad is itself a convolution: grad_output with the flipped, transposed weight and
  // padding k - 1 - p. The forward kernel's block-copy im2col and its single pass over grad_input beat
  // col2im's scatter of K partial sums per input element (benchmarks/NOTES.md), once that convolution
  // has output channels enough for the GEMM's row blocks (measured from 16; at 1 it is twice as slow).
  const bool dgrad_as_forward = need_input && !nhwc && !g.direct && groups == 1 && s.in_channels >= 16 &&
                                s.stride_h == 1 && s.stride_w == 1 && s.dilation_h == 1 &&
                                s.dilation_w == 1 && s.pad_h < s.kernel_h && s.pad_w < s.kernel_w;
  at::Tensor grad_input = at::empty({0}, opts), grad_weight = at::empty({0}, opts),
             grad_bias = at::empty({0}, opts);

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fastcnn_conv2d_backward_cpu", [&] {
    BackwardArgs<scalar_t> a{};
    a.grad_out = go.const_data_ptr<scalar_t>();
    a.out = has_act ? y.const_data_ptr<scalar_t>() : nullptr;
    a.x = x.const_data_ptr<scalar_t>();
    a.w = w.const_data_ptr<scalar_t>();
    at::Tensor w_t;
    if (!nhwc && !g.depthwise() && need_input && !dgrad_as_forward) {
      w_t = w.reshape({groups, g.OCg, g.K}).transpose(1, 2).contiguous();
      a.w_t = w_t.const_data_ptr<scalar_t>();
    }
    a.act = act;
    a.weight_grad_transposed = cpu::nchw_weight_grad_transposed(g);

    if (g.depthwise()) {
      if (need_input) {
        grad_input = at::empty(input.sizes(), opts.memory_format(fmt)).zero_();
        a.grad_in = grad_input.mutable_data_ptr<scalar_t>();
      }
      at::Tensor gw = need_weight ? at::zeros(nhwc ? std::vector<int64_t>{taps, s.out_channels}
                                                   : std::vector<int64_t>{s.out_channels, taps},
                                              opts)
                                  : at::Tensor();
      if (need_bias) grad_bias = at::zeros({s.out_channels}, opts);
      scalar_t* gwp = need_weight ? gw.mutable_data_ptr<scalar_t>() : nullptr;
      scalar_t* gbp = need_bias ? grad_bias.mutable_data_ptr<scalar_t>() : nullptr;
      if (nhwc) {
        cpu::depthwise_backward_nhwc<scalar_t>(g, a, a.w, gwp, gbp);
        if (need_weight) grad_weight = gw.t().reshape(weight.sizes()).contiguous();
      } else {
        cpu::depthwise_backward_nchw<scalar_t>(g, a, gwp, gbp);
        if (need_weight) grad_weight = gw.view(weight.sizes());
      }
      return;
    }

    at::Tensor grad_pre;
    if (dgrad_as_forward) {
      grad_pre = go;
      if (has_act) {
        grad_pre = at::empty_like(go);
        const int64_t planes = g.N * g.OC;
        scalar_t* gpp = grad_pre.mutable_data_ptr<scalar_t>();
        at::parallel_for(0, planes, std::max<int64_t>(1, 32768 / std::max<int64_t>(g.P, 1)),
                         [&](int64_t begin, int64_t end) {
                           cpu::grad_pre_block<scalar_t>(a.grad_out + begin * g.P, g.P, a.out + begin * g.P,
                                                         g.P, gpp + begin * g.P, g.P, end - begin, g.P, act);
                         });
        // wgrad and bias below read the activation's gradient already formed.
        a.grad_out = grad_pre.const_data_ptr<scalar_t>();
        a.out = nullptr;
        a.act = Activation::None;
      }
      Conv2dShape t{};
      t.batch = s.batch, t.in_channels = s.out_channels, t.in_h = s.out_h, t.in_w = s.out_w;
      t.out_channels = s.in_channels, t.kernel_h = s.kernel_h, t.kernel_w = s.kernel_w;
      t.out_h = s.in_h, t.out_w = s.in_w, t.groups = 1;
      t.stride_h = t.stride_w = t.dilation_h = t.dilation_w = 1;
      t.pad_h = s.kernel_h - 1 - s.pad_h, t.pad_w = s.kernel_w - 1 - s.pad_w;
      const at::Tensor flipped = weight.flip({2, 3}).transpose(0, 1).contiguous();
      grad_input = at::empty(input.sizes(), opts);
      cpu::conv_forward_nchw<scalar_t>(Geometry(t, false), a.grad_out, flipped.const_data_ptr<scalar_t>(),
                                       nullptr, nullptr, grad_input.mutable_data_ptr<scalar_t>(),
                                       Activation::None);
      if (!need_weight && !need_bias) return;
    }
    const bool gemm_input = need_input && !dgrad_as_forward;

    const int64_t tasks = g.num_tasks();
    const int64_t threads = at::get_num_threads();
    // A whole sample per slot when the batch splits evenly enough; otherwise chunk-level slots, with
    // private grad_input buffers for the scatter when windows of neighbouring chunks overlap.
    const bool sample_owned = g.N >= threads && (g.N % threads == 0 || g.N >= 4 * threads);
    const int64_t slots = cpu::num_slots(sample_owned ? g.N : tasks);
    at::Tensor private_grads;
    if (gemm_input) {
      const bool scatter = !g.direct;
      if (scatter) {
        grad_input = at::empty(input.sizes(), opts.memory_format(fmt)).zero_();
        if (!sample_owned && slots > 1) {
          private_grads = at::zeros({(slots - 1) * input.numel()}, opts);
        }
      } else {
        grad_input = at::empty(input.sizes(), opts.memory_format(fmt));
      }
      a.grad_in = grad_input.mutable_data_ptr<scalar_t>();
    }
    at::Tensor weight_partials, bias_partials;
    if (need_weight) {
      weight_partials = at::zeros({slots, s.out_channels * g.K}, opts);
      a.weight_partials = weight_partials.mutable_data_ptr<scalar_t>();
    }
    if (need_bias) {
      bias_partials = at::zeros({slots, s.out_channels}, opts);
      a.bias_partials = bias_partials.mutable_data_ptr<scalar_t>();
    }
    cpu::conv_backward_gemm<scalar_t>(
        g, a, slots, sample_owned,
        private_grads.defined() ? private_grads.mutable_data_ptr<scalar_t>() : nullptr);
    if (private_grads.defined()) {
      // grad_input += private buffers, in slot order.
      scalar_t* gi = a.grad_in;
      const scalar_t* priv = private_grads.const_data_ptr<scalar_t>();
      const int64_t count = input.numel();
      at::parallel_for(0, count, 4096, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          scalar_t acc = gi[i];
          for (int64_t k = 0; k < slots - 1; ++k) acc += priv[k * count + i];
          gi[i] = acc;
        }
      });
    }
    if (need_weight) {
      at::Tensor gw = at::empty({s.out_channels * g.K}, opts);
      cpu::reduce_partials<scalar_t>(weight_partials.const_data_ptr<scalar_t>(), slots, s.out_channels * g.K,
                                     s.out_channels * g.K, gw.mutable_data_ptr<scalar_t>());
      if (nhwc) {
        grad_weight =
            gw.view({s.out_channels, s.kernel_h, s.kernel_w, g.Cg}).permute({0, 3, 1, 2}).contiguous();
      } else if (a.weight_grad_transposed) {
        grad_weight = gw.view({groups, g.K, g.OCg}).transpose(1, 2).contiguous().view(weight.sizes());
      } else {
        grad_weight = gw.view(weight.sizes());
      }
    }
    if (need_bias) {
      grad_bias = at::empty({s.out_channels}, opts);
      cpu::reduce_partials<scalar_t>(bias_partials.const_data_ptr<scalar_t>(), slots, s.out_channels,
                                     s.out_channels, grad_bias.mutable_data_ptr<scalar_t>());
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, CPU, m) {
  m.impl("conv2d", &conv2d_cpu);
  m.impl("conv2d_backward", &conv2d_backward_cpu);
}

}  // namespace fastcnn
