// CPU adaptive_avg_pool2d and its backward.
// Algorithm: output (oh, ow) averages input rows [floor(oh*H/OH), ceil((oh+1)*H/OH)) and the matching
// columns (windows may overlap when the sizes do not divide). Backward zeroes grad_input and adds
// grad_output / kh / kw over each window; each grad_input element has one owning thread (whole planes
// for NCHW, (sample, channel block) slices for NHWC), so overlapping windows need no atomics.
// Layout: NCHW (threads over planes) or channels_last (threads over output pixels, inner loop over the
// contiguous channels, vectorised).
// Measured: benchmarks/NOTES.md ("Pooling" under 2026-11-25, and the issue-5 results table).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "common/checks.h"
#include "cpu/pool_window.h"

namespace fastcnn {
namespace {

struct AdaptivePlan {
  int64_t batch, channels, in_h, in_w, out_h, out_w;
  std::vector<pool::Span> rows, cols;
};

AdaptivePlan plan_adaptive(const at::Tensor& input, int64_t out_h, int64_t out_w) {
  AdaptivePlan plan{input.size(0), input.size(1), input.size(2), input.size(3), out_h, out_w, {}, {}};
  plan.rows = pool::spans(out_h, [&](int64_t o) { return pool::adaptive_span(o, out_h, plan.in_h); });
  plan.cols = pool::spans(out_w, [&](int64_t o) { return pool::adaptive_span(o, out_w, plan.in_w); });
  return plan;
}

template <typename scalar_t>
FASTCNN_SIMD_CLONES void adaptive_avg_pool_nchw_planes(const scalar_t* input, scalar_t* output,
                                                       const AdaptivePlan& p, int64_t begin, int64_t end) {
  const int64_t in_plane = p.in_h * p.in_w, out_plane = p.out_h * p.out_w;
  for (int64_t plane = begin; plane < end; ++plane) {
    const scalar_t* x = input + plane * in_plane;
    scalar_t* y = output + plane * out_plane;
    for (int64_t oh = 0; oh < p.out_h; ++oh) {
      const pool::Span r = p.rows[oh];
      for (int64_t ow = 0; ow < p.out_w; ++ow) {
        const pool::Span c = p.cols[ow];
        scalar_t sum = 0;
        if (c.begin == 0 && c.end == p.in_w) {
          sum = pool::sum_contiguous(x + r.begin * p.in_w, (r.end - r.begin) * p.in_w);  // rows are adjacent
        } else {
          for (int64_t ih = r.begin; ih < r.end; ++ih)
            sum += pool::sum_contiguous(x + ih * p.in_w + c.begin, c.end - c.begin);
        }
        y[oh * p.out_w + ow] = sum / static_cast<scalar_t>((r.end - r.begin) * (c.end - c.begin));
      }
    }
  }
}

template <typename scalar_t>
void adaptive_avg_pool_nchw(const scalar_t* input, scalar_t* output, const AdaptivePlan& p) {
  pool::parallel_planes(p.batch * p.channels, std::max(p.in_h * p.in_w, p.out_h * p.out_w),
                        [&](int64_t begin, int64_t end) {
                          adaptive_avg_pool_nchw_planes<scalar_t>(input, output, p, begin, end);
                        });
}

template <typename scalar_t>
FASTCNN_SIMD_CLONES void adaptive_avg_pool_nhwc_pixels(const scalar_t* input, scalar_t* output,
                                                       const AdaptivePlan& p, int64_t begin, int64_t end) {
  const int64_t channels = p.channels, out_h = p.out_h, out_w = p.out_w;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t n = t / (out_h * out_w), oh = (t / out_w) % out_h, ow = t % out_w;
    const pool::Span r = p.rows[oh], c = p.cols[ow];
    scalar_t* __restrict y = output + t * channels;
    std::fill(y, y + channels, scalar_t(0));
    for (int64_t ih = r.begin; ih < r.end; ++ih) {
      for (int64_t iw = c.begin; iw < c.end; ++iw) {
        const scalar_t* __restrict x = input + ((n * p.in_h + ih) * p.in_w + iw) * channels;
        for (int64_t ch = 0; ch < channels; ++ch) y[ch] += x[ch];
      }
    }
    const scalar_t count = static_cast<scalar_t>((r.end - r.begin) * (c.end - c.begin));
    for (int64_t ch = 0; ch < channels; ++ch) y[ch] /= count;
  }
}

template <typename scalar_t>
void adaptive_avg_pool_nhwc(const scalar_t* input, scalar_t* output, const AdaptivePlan& p) {
  const int64_t window = ((p.in_h + p.out_h - 1) / p.out_h + 1) * ((p.in_w + p.out_w - 1) / p.out_w + 1);
  at::parallel_for(0, p.batch * p.out_h * p.out_w, pool::grain_for(p.channels * window),
                   [&](int64_t begin, int64_t end) {
                     adaptive_avg_pool_nhwc_pixels<scalar_t>(input, output, p, begin, end);
                   });
}

void check_output_size(at::IntArrayRef output_size) {
  check_pair(output_size, "output_size");
  TORCH_CHECK(output_size[0] > 0 && output_size[1] > 0, "fastcnn: output_size must be positive, got ",
              output_size);
}

at::Tensor adaptive_avg_pool2d_cpu(const at::Tensor& input, at::IntArrayRef output_size) {
  check_pool_input(input, /*allow_reduced=*/false);
  check_output_size(output_size);
  const AdaptivePlan plan = plan_adaptive(input, output_size[0], output_size[1]);
  const auto fmt = output_memory_format(input);
  const at::Tensor x = input.contiguous(fmt);
  at::Tensor output = pool::empty_4d(x, plan.batch, plan.channels, plan.out_h, plan.out_w, fmt);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastcnn_adaptive_avg_pool2d_cpu", [&] {
    if (pool::is_channels_last(fmt)) {
      adaptive_avg_pool_nhwc<scalar_t>(x.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(),
                                       plan);
    } else {
      adaptive_avg_pool_nchw<scalar_t>(x.const_data_ptr<scalar_t>(), output.mutable_data_ptr<scalar_t>(),
                                       plan);
    }
  });
  return output;
}

template <typename scalar_t>
FASTCNN_SIMD_CLONES void adaptive_avg_pool_backward_planes(const scalar_t* grad_output, scalar_t* grad_input,
                                                           const AdaptivePlan& p, int64_t begin,
                                                           int64_t end) {
  const int64_t in_plane = p.in_h * p.in_w, out_plane = p.out_h * p.out_w;
  for (int64_t plane = begin; plane < end; ++plane) {
    scalar_t* gi = grad_input + plane * in_plane;
    const scalar_t* go = grad_output + plane * out_plane;
    std::fill(gi, gi + in_plane, scalar_t(0));
    for (int64_t oh = 0; oh < p.out_h; ++oh) {
      const pool::Span r = p.rows[oh];
      for (int64_t ow = 0; ow < p.out_w; ++ow) {
        const pool::Span c = p.cols[ow];
        const scalar_t delta = go[oh * p.out_w + ow] / static_cast<scalar_t>(r.end - r.begin) /
                               static_cast<scalar_t>(c.end - c.begin);
        for (int64_t ih = r.begin; ih < r.end; ++ih) {
          scalar_t* row = gi + ih * p.in_w;
          for (int64_t iw = c.begin; iw < c.end; ++iw) row[iw] += delta;
        }
      }
    }
  }
}

// NHWC: channels [c0, c1) of sample n.
template <typename scalar_t>
FASTCNN_SIMD_CLONES void adaptive_avg_pool_backward_nhwc_slice(const scalar_t* grad_output,
                                                               scalar_t* grad_input, const AdaptivePlan& p,
                                                               scalar_t* __restrict delta, int64_t n,
                                                               int64_t c0, int64_t c1) {
  const int64_t channels = p.channels, in_plane = p.in_h * p.in_w, out_plane = p.out_h * p.out_w;
  pool::zero_nhwc_slice(grad_input, n, in_plane, channels, c0, c1);
  const int64_t width = c1 - c0;
  for (int64_t oh = 0; oh < p.out_h; ++oh) {
    const pool::Span r = p.rows[oh];
    for (int64_t ow = 0; ow < p.out_w; ++ow) {
      const pool::Span c = p.cols[ow];
      const scalar_t kh = static_cast<scalar_t>(r.end - r.begin), kw = static_cast<scalar_t>(c.end - c.begin);
      const scalar_t* go = grad_output + (n * out_plane + oh * p.out_w + ow) * channels + c0;
      for (int64_t ch = 0; ch < width; ++ch) delta[ch] = go[ch] / kh / kw;
      for (int64_t ih = r.begin; ih < r.end; ++ih) {
        for (int64_t iw = c.begin; iw < c.end; ++iw) {
          scalar_t* __restrict gi = grad_input + ((n * p.in_h + ih) * p.in_w + iw) * channels + c0;
          for (int64_t ch = 0; ch < width; ++ch) gi[ch] += delta[ch];
        }
      }
    }
  }
}

at::Tensor adaptive_avg_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input) {
  check_pool_input(input, /*allow_reduced=*/false);
  check_pool_grad_output(grad_output, input, -1, -1);
  const AdaptivePlan plan = plan_adaptive(input, grad_output.size(2), grad_output.size(3));
  const auto fmt = output_memory_format(input);
  const at::Tensor go = grad_output.contiguous(fmt);
  at::Tensor grad_input = pool::empty_4d(input, plan.batch, plan.channels, plan.in_h, plan.in_w, fmt);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fastcnn_adaptive_avg_pool2d_backward_cpu", [&] {
    const scalar_t* gop = go.const_data_ptr<scalar_t>();
    scalar_t* gip = grad_input.mutable_data_ptr<scalar_t>();
    if (pool::is_channels_last(fmt)) {
      pool::parallel_nhwc_slices(plan.batch, plan.channels, [&](int64_t n, int64_t c0, int64_t c1) {
        std::vector<scalar_t> delta(c1 - c0);
        adaptive_avg_pool_backward_nhwc_slice<scalar_t>(gop, gip, plan, delta.data(), n, c0, c1);
      });
    } else {
      pool::parallel_planes(plan.batch * plan.channels,
                            std::max(plan.in_h * plan.in_w, plan.out_h * plan.out_w),
                            [&](int64_t begin, int64_t end) {
                              adaptive_avg_pool_backward_planes<scalar_t>(gop, gip, plan, begin, end);
                            });
    }
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, CPU, m) {
  m.impl("adaptive_avg_pool2d", &adaptive_avg_pool2d_cpu);
  m.impl("adaptive_avg_pool2d_backward", &adaptive_avg_pool2d_backward_cpu);
}

}  // namespace fastcnn
