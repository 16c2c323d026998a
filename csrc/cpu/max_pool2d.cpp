// CPU max_pool2d (with int64 argmax indices) and its backward.
// Algorithm: forward folds window taps into running maxima in the window's (row, column) order; a tap
// wins if it is greater than the running max or is NaN, so NaN propagates and the index of the last NaN
// is kept, as in ATen. NCHW folds each tap across a whole output row at once so the loop vectorises. Backward
// zeroes grad_input and adds each grad_output element at its saved index; the work is split so that every
// grad_input element has one owner (whole (n, c) planes for NCHW, (sample, channel block) slices for NHWC),
// so overlapping windows need no atomics. Layout: NCHW (threads over planes) or channels_last (threads over
// output pixels, inner loop over the contiguous channels, vectorised, with the running argmax kept in a
// same-width integer buffer).
// Measured: benchmarks/NOTES.md ("Pooling" under 2026-11-25, and the issue-5 results table).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <limits>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "cpu/pool_window.h"

namespace fastcnn {
namespace {

struct MaxPoolPlan {
  Pool2dShape s;
  std::vector<pool::Span> rows, cols;
  // For kernel column kw: the output columns whose tap kw lands inside the input.
  std::vector<pool::Span> tap_cols;
};

MaxPoolPlan plan_max_pool(const Pool2dShape& s) {
  MaxPoolPlan plan{s, {}, {}, {}};
  plan.rows = pool::spans(s.out_h, [&](int64_t o) {
    return pool::max_pool_span(o, s.kernel_h, s.stride_h, s.pad_h, s.dilation_h, s.in_h);
  });
  plan.cols = pool::spans(s.out_w, [&](int64_t o) {
    return pool::max_pool_span(o, s.kernel_w, s.stride_w, s.pad_w, s.dilation_w, s.in_w);
  });
  plan.tap_cols = pool::spans(s.kernel_w, [&](int64_t kw) {
    return pool::tap_span(kw * s.dilation_w - s.pad_w, s.stride_w, s.in_w, s.out_w);
  });
  return plan;
}

// Folds one kernel tap into a row of running maxima: output o reads taps[o * stride + offset]. The
// outputs are independent, so the loop vectorises; a constant stride (1 or 2) lets it use plain loads.
template <int64_t kStride, typename scalar_t, typename index_t>
inline void fold_row_tap(const scalar_t* __restrict row, scalar_t* __restrict best,
                         index_t* __restrict best_index, int64_t row_index, int64_t offset,
                         int64_t runtime_stride, pool::Span outs) {
  const int64_t stride = kStride > 0 ? kStride : runtime_stride;
  for (int64_t o = outs.begin; o < outs.end; ++o) {
    const int64_t iw = o * stride + offset;
    const scalar_t v = row[iw];
    const bool take = (v > best[o]) | (v != v);
    best[o] = take ? v : best[o];
    best_index[o] = take ? static_cast<index_t>(row_index + iw) : best_index[o];
  }
}

// NCHW: one output row at a time, taps in the window's (row, column) order so that ties and NaNs
// resolve exactly as a per-output scan would, but with the inner loop running across output columns.
template <int64_t kStride, typename scalar_t, typename index_t>
FASTCNN_SIMD_CLONES void max_pool_nchw_planes(const scalar_t* input, scalar_t* output, int64_t* indices,
                                              const MaxPoolPlan& plan, index_t* narrow_index, int64_t begin,
                                              int64_t end) {
  const Pool2dShape& s = plan.s;
  const int64_t in_w = s.in_w, in_plane = s.in_h * s.in_w, out_w = s.out_w, out_plane = s.out_h * s.out_w;
  for (int64_t p = begin; p < end; ++p) {
    const scalar_t* x = input + p * in_plane;
    for (int64_t oh = 0; oh < s.out_h; ++oh) {
      const pool::Span r = plan.rows[oh];
      scalar_t* best = output + p * out_plane + oh * out_w;
      int64_t* ind = indices + p * out_plane + oh * out_w;
      index_t* best_index;
      if constexpr (std::is_same_v<index_t, int64_t>) {
        best_index = ind;
      } else {
        best_index = narrow_index;
      }
      for (int64_t ow = 0; ow < out_w; ++ow) {
        best[ow] = -std::numeric_limits<scalar_t>::infinity();
        best_index[ow] = static_cast<index_t>(r.begin * in_w + plan.cols[ow].begin);
      }
      for (int64_t ih = r.begin; ih < r.end; ih += s.dilation_h) {
        for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
          fold_row_tap<kStride>(x + ih * in_w, best, best_index, ih * in_w, kw * s.dilation_w - s.pad_w,
                                s.stride_w, plan.tap_cols[kw]);
        }
      }
      if constexpr (!std::is_same_v<index_t, int64_t>) {
        for (int64_t ow = 0; ow < out_w; ++ow) ind[ow] = best_index[ow];
      }
    }
  }
}

template <typename scalar_t, typename index_t>
void max_pool_nchw(const scalar_t* input, scalar_t* output, int64_t* indices, const MaxPoolPlan& plan) {
  const Pool2dShape& s = plan.s;
  pool::parallel_planes(s.batch * s.channels, s.out_h * s.out_w * s.kernel_h * s.kernel_w,
                        [&](int64_t begin, int64_t end) {
                          std::vector<index_t> scratch(std::is_same_v<index_t, int64_t> ? 0 : s.out_w);
                          index_t* narrow = scratch.data();
                          pool::with_column_stride(s.stride_w, [&](auto stride) {
                            max_pool_nchw_planes<decltype(stride)::value, scalar_t, index_t>(
                                input, output, indices, plan, narrow, begin, end);
                          });
                        });
}

// One window tap folded into a pixel's running max over all channels.
template <typename scalar_t, typename index_t>
inline void fold_tap(const scalar_t* __restrict tap, scalar_t* __restrict best,
                     index_t* __restrict best_index, index_t tap_index, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) {
    const scalar_t v = tap[c];
    const bool take = (v > best[c]) | (v != v);
    best[c] = take ? v : best[c];
    best_index[c] = take ? tap_index : best_index[c];
  }
}

// NHWC: output pixels [begin, end) of the flattened (n, oh, ow) range.
template <typename scalar_t, typename index_t>
FASTCNN_SIMD_CLONES void max_pool_nhwc_pixels(const scalar_t* input, scalar_t* output, int64_t* indices,
                                              const MaxPoolPlan& plan, index_t* narrow_index, int64_t begin,
                                              int64_t end) {
  const Pool2dShape& s = plan.s;
  const int64_t channels = s.channels, in_w = s.in_w, out_w = s.out_w, out_h = s.out_h;
  for (int64_t t = begin; t < end; ++t) {
    const int64_t n = t / (out_h * out_w), oh = (t / out_w) % out_h, ow = t % out_w;
    const pool::Span r = plan.rows[oh], c = plan.cols[ow];
    scalar_t* best = output + t * channels;
    int64_t* ind = indices + t * channels;
    index_t* best_index;
    if constexpr (std::is_same_v<index_t, int64_t>) {
      best_index = ind;
    } else {
      best_index = narrow_index;
    }
    std::fill(best, best + channels, -std::numeric_limits<scalar_t>::infinity());
    std::fill(best_index, best_index + channels, static_cast<index_t>(r.begin * in_w + c.begin));
    for (int64_t ih = r.begin; ih < r.end; ih += s.dilation_h) {
      const scalar_t* row = input + (n * s.in_h + ih) * in_w * channels;
      for (int64_t iw = c.begin; iw < c.end; iw += s.dilation_w) {
        fold_tap<scalar_t, index_t>(row + iw * channels, best, best_index,
                                    static_cast<index_t>(ih * in_w + iw), channels);
      }
    }
    if constexpr (!std::is_same_v<index_t, int64_t>) {
      for (int64_t ch = 0; ch < channels; ++ch) ind[ch] = best_index[ch];
    }
  }
}

// index_t is as wide as scalar_t (int32 for float) where the plane allows, so one compare mask selects
// both the value and its index in the same vector lanes.
template <typename scalar_t, typename index_t>
void max_pool_nhwc(const scalar_t* input, scalar_t* output, int64_t* indices, const MaxPoolPlan& plan) {
  const Pool2dShape& s = plan.s;
  at::parallel_for(0, s.batch * s.out_h * s.out_w, pool::grain_for(s.channels * s.kernel_h * s.kernel_w),
                   [&](int64_t begin, int64_t end) {
                     std::vector<index_t> scratch(std::is_same_v<index_t, int64_t> ? 0 : s.channels);
                     max_pool_nhwc_pixels<scalar_t, index_t>(input, output, indices, plan, scratch.data(),
                                                             begin, end);
                   });
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, bool ceil_mode) {
  const Pool2dShape s =
      check_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, /*allow_reduced=*/false);
  const MaxPoolPlan plan = plan_max_pool(s);
  const auto fmt = output_memory_format(input);
  const at::Tensor x = input.contiguous(fmt);
  at::Tensor output = pool::empty_4d(x, s.batch, s.channels, s.out_h, s.out_w, fmt);
  at::Tensor indices =
      at::empty({s.batch, s.channels, s.out_h, s.out_w}, x.options().dtype(at::kLong).memory_format(fmt));
  const bool narrow_fits = s.in_h * s.in_w <= std::numeric_limits<int32_t>::max();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastcnn_max_pool2d_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = output.mutable_data_ptr<scalar_t>();
    int64_t* ip = indices.mutable_data_ptr<int64_t>();
    const bool channels_last = pool::is_channels_last(fmt);
    if (sizeof(scalar_t) == 4 && narrow_fits) {
      channels_last ? max_pool_nhwc<scalar_t, int32_t>(xp, yp, ip, plan)
                    : max_pool_nchw<scalar_t, int32_t>(xp, yp, ip, plan);
    } else {
      channels_last ? max_pool_nhwc<scalar_t, int64_t>(xp, yp, ip, plan)
                    : max_pool_nchw<scalar_t, int64_t>(xp, yp, ip, plan);
    }
  });
  return {output, indices};
}

[[noreturn]] void bad_index(int64_t index, int64_t plane) {
  TORCH_CHECK(false, "fastcnn: max_pool2d_backward got index ", index, " outside the input plane of ", plane,
              " elements: indices must come from max_pool2d on this input, and a dilated window that lies "
              "entirely in the padding (output -inf, index past the plane, as in PyTorch) has no input to "
              "send its gradient to");
}

// The multiversioned loops below must not throw, so they return false and the offending index, and
// the caller raises the error.
template <typename scalar_t>
FASTCNN_SIMD_CLONES bool max_pool_backward_planes(const scalar_t* grad_output, const int64_t* indices,
                                                  scalar_t* grad_input, int64_t in_plane, int64_t out_plane,
                                                  int64_t begin, int64_t end, int64_t* bad) {
  for (int64_t p = begin; p < end; ++p) {
    scalar_t* gi = grad_input + p * in_plane;
    const scalar_t* go = grad_output + p * out_plane;
    const int64_t* ind = indices + p * out_plane;
    std::fill(gi, gi + in_plane, scalar_t(0));
    for (int64_t o = 0; o < out_plane; ++o) {
      const int64_t i = ind[o];
      if (static_cast<uint64_t>(i) >= static_cast<uint64_t>(in_plane)) {
        *bad = i;
        return false;
      }
      gi[i] += go[o];
    }
  }
  return true;
}

// Channels [c0, c1) of sample n: the indices of distinct channels never collide, so the channel loop
// has no dependences.
template <typename scalar_t>
FASTCNN_SIMD_CLONES bool max_pool_backward_nhwc_slice(const scalar_t* grad_output, const int64_t* indices,
                                                      scalar_t* grad_input, int64_t channels,
                                                      int64_t in_plane, int64_t out_plane, int64_t n,
                                                      int64_t c0, int64_t c1, int64_t* bad) {
  pool::zero_nhwc_slice(grad_input, n, in_plane, channels, c0, c1);
  scalar_t* gi = grad_input + n * in_plane * channels;
  for (int64_t o = 0; o < out_plane; ++o) {
    const scalar_t* go = grad_output + (n * out_plane + o) * channels;
    const int64_t* ind = indices + (n * out_plane + o) * channels;
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t i = ind[c];
      if (static_cast<uint64_t>(i) >= static_cast<uint64_t>(in_plane)) {
        *bad = i;
        return false;
      }
      gi[i * channels + c] += go[c];
    }
  }
  return true;
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                   const at::Tensor& indices) {
  check_pool_input(input, /*allow_reduced=*/false);
  check_pool_grad_output(grad_output, input, -1, -1);
  check_max_pool_indices(indices, grad_output, input);
  const auto fmt = output_memory_format(input);
  const at::Tensor go = grad_output.contiguous(fmt);
  const at::Tensor ind = indices.contiguous(fmt);
  const int64_t batch = input.size(0), channels = input.size(1);
  const int64_t in_plane = input.size(2) * input.size(3), out_plane = go.size(2) * go.size(3);
  at::Tensor grad_input = pool::empty_4d(input, batch, channels, input.size(2), input.size(3), fmt);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fastcnn_max_pool2d_backward_cpu", [&] {
    const scalar_t* gop = go.const_data_ptr<scalar_t>();
    const int64_t* ip = ind.const_data_ptr<int64_t>();
    scalar_t* gip = grad_input.mutable_data_ptr<scalar_t>();
    if (pool::is_channels_last(fmt)) {
      pool::parallel_nhwc_slices(batch, channels, [&](int64_t n, int64_t c0, int64_t c1) {
        int64_t bad = 0;
        if (!max_pool_backward_nhwc_slice<scalar_t>(gop, ip, gip, channels, in_plane, out_plane, n, c0, c1,
                                                    &bad)) {
          bad_index(bad, in_plane);
        }
      });
    } else {
      pool::parallel_planes(batch * channels, in_plane + out_plane, [&](int64_t begin, int64_t end) {
        int64_t bad = 0;
        if (!max_pool_backward_planes<scalar_t>(gop, ip, gip, in_plane, out_plane, begin, end, &bad)) {
          bad_index(bad, in_plane);
        }
      });
    }
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, CPU, m) {
  m.impl("max_pool2d", &max_pool2d_cpu);
  m.impl("max_pool2d_backward", &max_pool2d_backward_cpu);
}

}  // namespace fastcnn
