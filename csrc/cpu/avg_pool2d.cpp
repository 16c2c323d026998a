// CPU avg_pool2d and its backward.
// Algorithm: forward sums each window (clipped to the input) and divides by divisor_override, or by the
// window clipped to input + padding (count_include_pad), or by the in-input element count; a ceil_mode
// window that hangs past the right padding is thus not charged for the overhang, exactly as in ATen.
// Backward is the transpose: grad_input is zeroed and each grad_output / divisor is added over its
// window; each grad_input element has one owning thread (whole planes for NCHW, (sample, channel
// block) slices for NHWC), so overlapping windows need no atomics.
// Layout: NCHW (threads over planes) or channels_last (threads over output pixels, inner loop over the
// contiguous channels, vectorised).
// Measured: benchmarks/NOTES.md ("Pooling" under 2026-11-25, and the issue-5 results table).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "common/checks.h"
#include "cpu/pool_window.h"

namespace fastcnn {
namespace {

struct AvgPoolPlan {
  Pool2dShape shape;
  std::vector<pool::AvgSpan> rows, cols;
  // For kernel column kw: the output columns whose tap kw lands inside the input.
  std::vector<pool::Span> tap_cols;
  bool count_include_pad;
  std::optional<int64_t> divisor_override;

  int64_t divisor(const pool::AvgSpan& r, const pool::AvgSpan& c) const {
    if (divisor_override.has_value()) return *divisor_override;
    if (count_include_pad) return r.padded * c.padded;
    return (r.end - r.begin) * (c.end - c.begin);
  }
};

AvgPoolPlan plan_avg_pool(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                          std::optional<int64_t> divisor_override) {
  const int64_t no_dilation[2] = {1, 1};
  AvgPoolPlan plan;
  plan.shape =
      check_pool2d(input, kernel_size, stride, padding, no_dilation, ceil_mode, /*allow_reduced=*/false);
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0,
              "fastcnn: divisor_override must be non-zero (or None), got 0");
  const Pool2dShape& s = plan.shape;
  plan.rows = pool::spans(
      s.out_h, [&](int64_t o) { return pool::avg_pool_span(o, s.kernel_h, s.stride_h, s.pad_h, s.in_h); });
  plan.cols = pool::spans(
      s.out_w, [&](int64_t o) { return pool::avg_pool_span(o, s.kernel_w, s.stride_w, s.pad_w, s.in_w); });
  plan.tap_cols = pool::spans(
      s.kernel_w, [&](int64_t kw) { return pool::tap_span(kw - s.pad_w, s.stride_w, s.in_w, s.out_w); });
  plan.count_include_pad = count_include_pad;
  plan.divisor_override = divisor_override;
  return plan;
}

inline bool empty_window(const pool::AvgSpan& r, const pool::AvgSpan& c) {
  return r.begin >= r.end || c.begin >= c.end;
}

// NCHW: one output row at a time; each window tap is added across the whole row, so the inner loop
// runs over output columns (vectorised) while each output still sums its taps in (row, column) order.
template <int64_t kStride, typename scalar_t>
FASTCNN_SIMD_CLONES void avg_pool_nchw_planes(const scalar_t* input, scalar_t* output,
                                              const AvgPoolPlan& plan, int64_t begin, int64_t end) {
  const Pool2dShape& s = plan.shape;
  const int64_t in_w = s.in_w, in_plane = s.in_h * s.in_w, out_w = s.out_w, out_plane = s.out_h * s.out_w;
  const int64_t stride = kStride > 0 ? kStride : s.stride_w;
  for (int64_t p = begin; p < end; ++p) {
    const scalar_t* x = input + p * in_plane;
    for (int64_t oh = 0; oh < s.out_h; ++oh) {
      const pool::AvgSpan& r = plan.rows[oh];
      scalar_t* __restrict y = output + p * out_plane + oh * out_w;
      std::fill(y, y + out_w, scalar_t(0));
      for (int64_t ih = r.begin; ih < r.end; ++ih) {
        const scalar_t* __restrict row = x + ih * in_w;
        for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
          const pool::Span outs = plan.tap_cols[kw];
          const int64_t offset = kw - s.pad_w;
          for (int64_t o = outs.begin; o < outs.end; ++o) y[o] += row[o * stride + offset];
        }
      }
      for (int64_t ow = 0; ow < out_w; ++ow) {
        const pool::AvgSpan& c = plan.cols[ow];
        y[ow] = empty_window(r, c) ? scalar_t(0) : y[ow] / static_cast<scalar_t>(plan.divisor(r, c));
      }
    }
  }
}

template <typename scalar_t>
void avg_pool_nchw(const scalar_t* input, scalar_t* output, const AvgPoolPlan& plan) {
  const Pool2dShape& s = plan.shape;
  pool::parallel_planes(
      s.batch * s.channels, s.out_h * s.out_w * s.kernel_h * s.kernel_w, [&](int64_t begin, int64_t end) {
        pool::with_column_stride(s.stride_w, [&](auto stride) {
          avg_pool_nchw_planes<decltype(stride)::value, scalar_t>(input, output, plan, begin, end);
        });
      });
}

// NHWC: output pixels [begin, end) of the flattened (n, oh, ow) range, inner loop over channels.
template <typename scalar_t>
FASTCNN_SIMD_CLONES void avg_pool_nhwc_pixels(const scalar_t* input, scalar_t* output,
                                              const AvgPoolPlan& plan, int64_t begin, int64_t end) {
  const Pool2dShape& s = plan.shape;
  const int64_t channels = s.channels, in_w = s.in_w, out_w = s.out_w, out_h = s.out_h;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t n = t / (out_h * out_w), oh = (t / out_w) % out_h, ow = t % out_w;
    const pool::AvgSpan& r = plan.rows[oh];
    const pool::AvgSpan& c = plan.cols[ow];
    scalar_t* __restrict y = output + t * channels;
    if (empty_window(r, c)) {
      std::fill(y, y + channels, scalar_t(0));
      continue;
    }
    // The first tap initialises the sum (0 + v == v exactly), saving a pass over the output pixel.
    const scalar_t* first = input + ((n * s.in_h + r.begin) * in_w + c.begin) * channels;
    std::copy(first, first + channels, y);
    for (int64_t ih = r.begin; ih < r.end; ++ih) {
      for (int64_t iw = ih == r.begin ? c.begin + 1 : c.begin; iw < c.end; ++iw) {
        const scalar_t* __restrict x = input + ((n * s.in_h + ih) * in_w + iw) * channels;
        for (int64_t ch = 0; ch < channels; ++ch) y[ch] += x[ch];
      }
    }
    const scalar_t divisor = static_cast<scalar_t>(plan.divisor(r, c));
    for (int64_t ch = 0; ch < channels; ++ch) y[ch] /= divisor;
  }
}

template <typename scalar_t>
void avg_pool_nhwc(const scalar_t* input, scalar_t* output, const AvgPoolPlan& plan) {
  const Pool2dShape& s = plan.shape;
  at::parallel_for(
      0, s.batch * s.out_h * s.out_w, pool::grain_for(s.channels * s.kernel_h * s.kernel_w),
      [&](int64_t begin, int64_t end) { avg_pool_nhwc_pixels<scalar_t>(input, output, plan, begin, end); });
}

at::Tensor avg_pool2d_cpu(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                          std::optional<int64_t> divisor_override) {
  const AvgPoolPlan plan =
      plan_avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override);
  const Pool2dShape& s = plan.shape;
  const auto fmt = output_memory_format(input);
  const at::Tensor x = input.contiguous(fmt);
  at::Tensor output = pool::empty_4d(x, s.batch, s.channels, s.out_h, s.out_w, fmt);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastcnn_avg_pool2d_cpu", [&] {
    if (pool::is_channels_last(fmt)) {
      avg_pool_nhwc<scalar_t>(x.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), plan);
    } else {
      avg_pool_nchw<scalar_t>(x.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(), plan);
    }
  });
  return output;
}

// NCHW transpose of the forward: each output row's grad / divisor is spread tap by tap across the row.
template <int64_t kStride, typename scalar_t>
FASTCNN_SIMD_CLONES void avg_pool_backward_nchw_planes(const scalar_t* grad_output, scalar_t* grad_input,
                                                       const AvgPoolPlan& plan, scalar_t* __restrict delta,
                                                       int64_t begin, int64_t end) {
  const Pool2dShape& s = plan.shape;
  const int64_t in_w = s.in_w, in_plane = s.in_h * s.in_w, out_w = s.out_w, out_plane = s.out_h * s.out_w;
  const int64_t stride = kStride > 0 ? kStride : s.stride_w;
  for (int64_t p = begin; p < end; ++p) {
    scalar_t* gi = grad_input + p * in_plane;
    std::fill(gi, gi + in_plane, scalar_t(0));
    for (int64_t oh = 0; oh < s.out_h; ++oh) {
      const pool::AvgSpan& r = plan.rows[oh];
      const scalar_t* go = grad_output + p * out_plane + oh * out_w;
      for (int64_t ow = 0; ow < out_w; ++ow) {
        const pool::AvgSpan& c = plan.cols[ow];
        delta[ow] = empty_window(r, c) ? scalar_t(0) : go[ow] / static_cast<scalar_t>(plan.divisor(r, c));
      }
      for (int64_t ih = r.begin; ih < r.end; ++ih) {
        scalar_t* __restrict row = gi + ih * in_w;
        for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
          const pool::Span outs = plan.tap_cols[kw];
          const int64_t offset = kw - s.pad_w;
          for (int64_t o = outs.begin; o < outs.end; ++o) row[o * stride + offset] += delta[o];
        }
      }
    }
  }
}

// NHWC: channels [c0, c1) of sample n.
template <typename scalar_t>
FASTCNN_SIMD_CLONES void avg_pool_backward_nhwc_slice(const scalar_t* grad_output, scalar_t* grad_input,
                                                      const AvgPoolPlan& plan, scalar_t* __restrict delta,
                                                      int64_t n, int64_t c0, int64_t c1) {
  const Pool2dShape& s = plan.shape;
  const int64_t channels = s.channels, in_w = s.in_w, in_plane = s.in_h * s.in_w;
  const int64_t out_plane = s.out_h * s.out_w;
  pool::zero_nhwc_slice(grad_input, n, in_plane, channels, c0, c1);
  const int64_t width = c1 - c0;
  for (int64_t oh = 0; oh < s.out_h; ++oh) {
    const pool::AvgSpan& r = plan.rows[oh];
    for (int64_t ow = 0; ow < s.out_w; ++ow) {
      const pool::AvgSpan& c = plan.cols[ow];
      if (empty_window(r, c)) continue;
      const scalar_t divisor = static_cast<scalar_t>(plan.divisor(r, c));
      const scalar_t* go = grad_output + (n * out_plane + oh * s.out_w + ow) * channels + c0;
      for (int64_t ch = 0; ch < width; ++ch) delta[ch] = go[ch] / divisor;
      for (int64_t ih = r.begin; ih < r.end; ++ih) {
        for (int64_t iw = c.begin; iw < c.end; ++iw) {
          scalar_t* __restrict gi = grad_input + ((n * s.in_h + ih) * in_w + iw) * channels + c0;
          for (int64_t ch = 0; ch < width; ++ch) gi[ch] += delta[ch];
        }
      }
    }
  }
}

at::Tensor avg_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                   std::optional<int64_t> divisor_override) {
  const AvgPoolPlan plan =
      plan_avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override);
  const Pool2dShape& s = plan.shape;
  check_pool_grad_output(grad_output, input, s.out_h, s.out_w);
  const auto fmt = output_memory_format(input);
  const at::Tensor go = grad_output.contiguous(fmt);
  at::Tensor grad_input = pool::empty_4d(input, s.batch, s.channels, s.in_h, s.in_w, fmt);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fastcnn_avg_pool2d_backward_cpu", [&] {
    const scalar_t* gop = go.const_data_ptr<scalar_t>();
    scalar_t* gip = grad_input.mutable_data_ptr<scalar_t>();
    if (pool::is_channels_last(fmt)) {
      pool::parallel_nhwc_slices(s.batch, s.channels, [&](int64_t n, int64_t c0, int64_t c1) {
        std::vector<scalar_t> delta(c1 - c0);
        avg_pool_backward_nhwc_slice<scalar_t>(gop, gip, plan, delta.data(), n, c0, c1);
      });
    } else {
      pool::parallel_planes(
          s.batch * s.channels, s.out_h * s.out_w * s.kernel_h * s.kernel_w, [&](int64_t begin, int64_t end) {
            std::vector<scalar_t> delta(s.out_w);
            scalar_t* d = delta.data();
            pool::with_column_stride(s.stride_w, [&](auto stride) {
              avg_pool_backward_nchw_planes<decltype(stride)::value, scalar_t>(gop, gip, plan, d, begin, end);
            });
          });
    }
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, CPU, m) {
  m.impl("avg_pool2d", &avg_pool2d_cpu);
  m.impl("avg_pool2d_backward", &avg_pool2d_backward_cpu);
}

}  // namespace fastcnn
