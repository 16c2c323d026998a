// CPU avg_pool2d and its backward.
// Algorithm: forward sums each window (clipped to the input) and divides by divisor_override, or by the
// window clipped to input + padding (count_include_pad), or by the in-input element count; a ceil_mode
// window that hangs past the right padding is thus not charged for the overhang, exactly as in ATen.
// Backward is the transpose: grad_input is zeroed and each grad_output / divisor is added over its
// window; each grad_input element has one owning thread (whole planes for NCHW, (sample, channel
// block) slices for NHWC), so overlapping windows need no atomics.
// Layout: NCHW (threads over planes) or channels_last (threads over output pixels, inner loop over the
// contiguous channels, vectorised).
// Measured: not yet measured.
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
  plan.shape = pool::check_pool_geometry(input, kernel_size, stride, padding, no_dilation, ceil_mode);
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0,
              "fastcnn: divisor_override must be non-zero (or None), got 0");
  const Pool2dShape& s = plan.shape;
  plan.rows = pool::spans(
      s.out_h, [&](int64_t o) { return pool::avg_pool_span(o, s.kernel_h, s.stride_h, s.pad_h, s.in_h); });
  plan.cols = pool::spans(
      s.out_w, [&](int64_t o) { return pool::avg_pool_span(o, s.kernel_w, s.stride_w, s.pad_w, s.in_w); });
  plan.count_include_pad = count_include_pad;
  plan.divisor_override = divisor_override;
  return plan;
}

inline bool empty_window(const pool::AvgSpan& r, const pool::AvgSpan& c) {
  return r.begin >= r.end || c.begin >= c.end;
}

template <typename scalar_t>
void avg_pool_nchw(const scalar_t* input, scalar_t* output, const AvgPoolPlan& plan) {
  const Pool2dShape& s = plan.shape;
  const int64_t in_w = s.in_w, in_plane = s.in_h * s.in_w, out_plane = s.out_h * s.out_w;
  pool::parallel_planes(s.batch * s.channels, out_plane * s.kernel_h * s.kernel_w, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const scalar_t* x = input + p * in_plane;
      scalar_t* y = output + p * out_plane;
      for (int64_t oh = 0; oh < s.out_h; ++oh) {
        const pool::AvgSpan& r = plan.rows[oh];
        for (int64_t ow = 0; ow < s.out_w; ++ow) {
          const pool::AvgSpan& c = plan.cols[ow];
          if (empty_window(r, c)) {
            y[oh * s.out_w + ow] = scalar_t(0);
            continue;
          }
          scalar_t sum = 0;
          for (int64_t ih = r.begin; ih < r.end; ++ih) {
            const scalar_t* row = x + ih * in_w;
            for (int64_t iw = c.begin; iw < c.end; ++iw) sum += row[iw];
          }
          y[oh * s.out_w + ow] = sum / static_cast<scalar_t>(plan.divisor(r, c));
        }
      }
    }
  });
}

template <typename scalar_t>
void avg_pool_nhwc(const scalar_t* input, scalar_t* output, const AvgPoolPlan& plan) {
  const Pool2dShape& s = plan.shape;
  const int64_t channels = s.channels, in_w = s.in_w, out_w = s.out_w, out_h = s.out_h;
  at::parallel_for(0, s.batch * out_h * out_w, pool::grain_for(channels * s.kernel_h * s.kernel_w),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t t = begin; t < end; ++t) {
                       const int64_t n = t / (out_h * out_w), oh = (t / out_w) % out_h, ow = t % out_w;
                       const pool::AvgSpan& r = plan.rows[oh];
                       const pool::AvgSpan& c = plan.cols[ow];
                       scalar_t* __restrict y = output + t * channels;
                       std::fill(y, y + channels, scalar_t(0));
                       if (empty_window(r, c)) continue;
                       for (int64_t ih = r.begin; ih < r.end; ++ih) {
                         for (int64_t iw = c.begin; iw < c.end; ++iw) {
                           const scalar_t* __restrict x = input + ((n * s.in_h + ih) * in_w + iw) * channels;
                           for (int64_t ch = 0; ch < channels; ++ch) y[ch] += x[ch];
                         }
                       }
                       const scalar_t divisor = static_cast<scalar_t>(plan.divisor(r, c));
                       for (int64_t ch = 0; ch < channels; ++ch) y[ch] /= divisor;
                     }
                   });
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

template <typename scalar_t>
void avg_pool_backward_nchw(const scalar_t* grad_output, scalar_t* grad_input, const AvgPoolPlan& plan) {
  const Pool2dShape& s = plan.shape;
  const int64_t in_w = s.in_w, in_plane = s.in_h * s.in_w, out_plane = s.out_h * s.out_w;
  pool::parallel_planes(s.batch * s.channels, out_plane * s.kernel_h * s.kernel_w, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      scalar_t* gi = grad_input + p * in_plane;
      const scalar_t* go = grad_output + p * out_plane;
      std::fill(gi, gi + in_plane, scalar_t(0));
      for (int64_t oh = 0; oh < s.out_h; ++oh) {
        const pool::AvgSpan& r = plan.rows[oh];
        for (int64_t ow = 0; ow < s.out_w; ++ow) {
          const pool::AvgSpan& c = plan.cols[ow];
          if (empty_window(r, c)) continue;
          const scalar_t delta = go[oh * s.out_w + ow] / static_cast<scalar_t>(plan.divisor(r, c));
          for (int64_t ih = r.begin; ih < r.end; ++ih) {
            scalar_t* row = gi + ih * in_w;
            for (int64_t iw = c.begin; iw < c.end; ++iw) row[iw] += delta;
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void avg_pool_backward_nhwc(const scalar_t* grad_output, scalar_t* grad_input, const AvgPoolPlan& plan) {
  const Pool2dShape& s = plan.shape;
  const int64_t channels = s.channels, in_w = s.in_w, in_plane = s.in_h * s.in_w;
  const int64_t out_plane = s.out_h * s.out_w;
  pool::parallel_nhwc_slices(s.batch, channels, [&](int64_t n, int64_t c0, int64_t c1) {
    pool::zero_nhwc_slice(grad_input, n, in_plane, channels, c0, c1);
    const int64_t width = c1 - c0;
    std::vector<scalar_t> delta_buffer(width);
    scalar_t* __restrict delta = delta_buffer.data();
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
  });
}

at::Tensor avg_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                                   bool ceil_mode, bool count_include_pad,
                                   std::optional<int64_t> divisor_override) {
  const AvgPoolPlan plan =
      plan_avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override);
  const Pool2dShape& s = plan.shape;
  pool::check_grad_output(grad_output, input, s.out_h, s.out_w);
  const auto fmt = output_memory_format(input);
  const at::Tensor go = grad_output.contiguous(fmt);
  at::Tensor grad_input = pool::empty_4d(input, s.batch, s.channels, s.in_h, s.in_w, fmt);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fastcnn_avg_pool2d_backward_cpu", [&] {
    if (pool::is_channels_last(fmt)) {
      avg_pool_backward_nhwc<scalar_t>(go.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(), plan);
    } else {
      avg_pool_backward_nchw<scalar_t>(go.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(), plan);
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
