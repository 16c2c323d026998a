// CPU batch normalisation: forward (training statistics or running statistics) fused with an activation,
// its backward, and the running-statistics update.
// Algorithm: the input is viewed as [outer][C][inner] (common/batch_norm.h). Statistics are gathered in
// float64 per part, one part being an (n, c) plane for NCHW or a block of kRowsPerBlock pixels for
// channels_last, with two passes over the part while it is in cache (sum, then squared deviations
// from the part's mean), and the parts are merged per channel in position order (Chan's update):
// deterministic for any thread count. The transforms are one pass in memory order, vectorised along
// the plane (NCHW) or along the channels (channels_last). Backward is one reduction pass (sum g and
// sum g * (x - mean), g through the activation read from the saved output) and one transform pass.
// Layout: NCHW and channels_last 4-D, and any contiguous [N, C, *].
// Measured: benchmarks/NOTES.md ("BatchNorm").
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

#include "common/activation.h"
#include "common/batch_norm.h"
#include "cpu/norm_kernels.h"
#include "cpu/simd_clones.h"

namespace fastcnn {
namespace {

using bn::Moments;

// Pixels per statistics part in channels_last: enough to amortise the per-part scratch, few enough that
// the part's rows stay in L2 for the second pass.
constexpr int64_t kRowsPerBlock = 128;
constexpr int64_t kGrain = 32768;

int64_t statistics_parts(const bn::Shape& s) {
  return s.channels_inner() ? (s.outer + kRowsPerBlock - 1) / kRowsPerBlock : s.outer;
}

// ---- statistics -----------------------------------------------------------------------------------------

// rows x C values, channel fastest; mean and m2 are [C] and receive the block's moments.
template <typename T>
FASTCNN_SIMD_CLONES void row_block_moments(const T* __restrict x, int64_t rows, int64_t channels,
                                           double* __restrict mean, double* __restrict m2) {
  for (int64_t c = 0; c < channels; ++c) mean[c] = 0, m2[c] = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = x + r * channels;
    for (int64_t c = 0; c < channels; ++c) mean[c] += static_cast<double>(row[c]);
  }
  const double inv_rows = 1.0 / static_cast<double>(rows);
  for (int64_t c = 0; c < channels; ++c) mean[c] *= inv_rows;
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = x + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const double d = static_cast<double>(row[c]) - mean[c];
      m2[c] += d * d;
    }
  }
}

// Per-channel mean and biased variance of x, in float64.
template <typename T>
void batch_moments(const T* x, const bn::Shape& s, std::vector<double>& mean, std::vector<double>& var) {
  const int64_t channels = s.channels;
  const int64_t parts = statistics_parts(s);
  // part p of channel c at [p * C + c]: the plane (n = p, c) or channel c of pixel block p.
  std::vector<double> part_mean(parts * channels), part_m2(parts * channels);
  std::vector<int64_t> part_count(parts);
  if (s.channels_inner()) {
    at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t row0 = p * kRowsPerBlock, rows = std::min(kRowsPerBlock, s.outer - row0);
        part_count[p] = rows;
        row_block_moments(x + row0 * channels, rows, channels, &part_mean[p * channels],
                          &part_m2[p * channels]);
      }
    });
  } else {
    for (int64_t p = 0; p < parts; ++p) part_count[p] = s.inner;
    const int64_t grain = std::max<int64_t>(1, kGrain / s.inner);
    at::parallel_for(0, parts * channels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        cpu::run_moments(x + plane * s.inner, s.inner, &part_mean[plane], &part_m2[plane]);
      }
    });
  }
  mean.assign(channels, 0);
  var.assign(channels, 0);
  at::parallel_for(0, channels, 16, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      Moments<double> m{0, 0, 0};
      for (int64_t p = 0; p < parts; ++p) {
        m = bn::merge(m,
                      Moments<double>{part_count[p], part_mean[p * channels + c], part_m2[p * channels + c]});
      }
      mean[c] = m.mean;
      var[c] = m.m2 / static_cast<double>(m.count);
    }
  });
}

// ---- transforms -----------------------------------------------------------------------------------------

template <typename T, Activation A>
FASTCNN_SIMD_CLONES void normalize_plane(const ActivationFunctor<A> act, const T* __restrict x,
                                         T* __restrict y, int64_t n, T mean, T scale, T shift) {
  for (int64_t i = 0; i < n; ++i) y[i] = act.forward((x[i] - mean) * scale + shift);
}

template <typename T, Activation A>
FASTCNN_SIMD_CLONES void normalize_rows(const ActivationFunctor<A> act, const T* __restrict x,
                                        T* __restrict y, int64_t rows, int64_t channels,
                                        const T* __restrict mean, const T* __restrict scale,
                                        const T* __restrict shift) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * channels;
    T* yr = y + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      yr[c] = act.forward((xr[c] - mean[c]) * scale[c] + shift[c]);
    }
  }
}

// Per-channel vectors in the kernel's type T, from float64 values.
template <typename T>
struct ChannelVectors {
  std::vector<T> mean, a, b, d;
  explicit ChannelVectors(int64_t channels) : mean(channels), a(channels), b(channels), d(channels) {}
};

std::vector<double> as_doubles(const at::Tensor& t) {
  const at::Tensor d = t.to(at::kDouble).contiguous();
  const double* p = d.const_data_ptr<double>();
  return std::vector<double>(p, p + d.numel());
}

std::vector<double> optional_doubles(const std::optional<at::Tensor>& t) {
  return bn::given(t) ? as_doubles(*t) : std::vector<double>();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_cpu(const at::Tensor& input,
                                                              const std::optional<at::Tensor>& weight,
                                                              const std::optional<at::Tensor>& bias,
                                                              const std::optional<at::Tensor>& running_mean,
                                                              const std::optional<at::Tensor>& running_var,
                                                              bool training, double eps, int64_t activation) {
  const Activation act = to_activation(activation);
  const bn::Shape s = bn::check_batch_norm(input, weight, bias, running_mean, running_var, training, eps,
                                           /*allow_reduced=*/false);
  const at::Tensor x = bn::dense_input(input, s);
  at::Tensor y = at::empty_like(x, s.format);
  std::vector<double> mean, var;
  const std::vector<double> w = optional_doubles(weight), b = optional_doubles(bias);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastcnn_batch_norm_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    if (training) {
      batch_moments(xp, s, mean, var);
    } else {
      mean = as_doubles(*running_mean);
      var = as_doubles(*running_var);
    }
    ChannelVectors<scalar_t> v(s.channels);  // a = scale, d = shift
    for (int64_t c = 0; c < s.channels; ++c) {
      const auto f = bn::forward_affine<double>(mean[c], var[c], eps, w.empty() ? nullptr : w.data(),
                                                b.empty() ? nullptr : b.data(), c);
      v.mean[c] = static_cast<scalar_t>(f.mean);
      v.a[c] = static_cast<scalar_t>(f.scale);
      v.d[c] = static_cast<scalar_t>(f.shift);
    }
    with_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      const auto act_fn = activation_functor<A>(act);
      if (s.channels_inner()) {
        at::parallel_for(
            0, s.outer, std::max<int64_t>(1, kGrain / s.channels), [&](int64_t begin, int64_t end) {
              normalize_rows<scalar_t, A>(act_fn, xp + begin * s.channels, yp + begin * s.channels,
                                          end - begin, s.channels, v.mean.data(), v.a.data(), v.d.data());
            });
      } else {
        at::parallel_for(0, s.outer * s.channels, std::max<int64_t>(1, kGrain / s.inner),
                         [&](int64_t begin, int64_t end) {
                           for (int64_t plane = begin; plane < end; ++plane) {
                             const int64_t c = plane % s.channels;
                             normalize_plane<scalar_t, A>(act_fn, xp + plane * s.inner, yp + plane * s.inner,
                                                          s.inner, v.mean[c], v.a[c], v.d[c]);
                           }
                         });
      }
    });
  });
  const auto stats_options = input.options().dtype(bn::stats_dtype(input));
  return {y, cpu::channel_tensor(mean, stats_options), cpu::channel_tensor(var, stats_options)};
}

// ---- backward -------------------------------------------------------------------------------------------

// Elements per pass of the backward sums' derivative buffer (on the stack; see plane_grad_sums).
constexpr int64_t kGradChunk = 512;

// g is grad_output through the activation (y: the forward output; unused when A is None).
template <typename T, Activation A>
FASTCNN_SIMD_CLONES void plane_grad_sums(const ActivationFunctor<A> act, const T* __restrict g,
                                         const T* __restrict y, const T* __restrict x, int64_t n, double mean,
                                         double* __restrict sum_g_out, double* __restrict sum_gx_out) {
  // The derivative goes through a small buffer first: a select feeding a float -> double conversion kept
  // the fused loop scalar behind a branch (0.14-0.4x PyTorch's batch_norm backward); apart, the select
  // loop and the float64 `omp simd` reduction (see run_moments) each vectorise.
  T grad[kGradChunk];
  double sum_g = 0, sum_gx = 0;
  for (int64_t i0 = 0; i0 < n; i0 += kGradChunk) {
    const int64_t m = std::min(kGradChunk, n - i0);
    for (int64_t j = 0; j < m; ++j) grad[j] = act.backward(g[i0 + j], y[i0 + j]);
    const T* __restrict xs = x + i0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
    for (int64_t j = 0; j < m; ++j) {
      const double gi = static_cast<double>(grad[j]);
      sum_g += gi;
      sum_gx += gi * (static_cast<double>(xs[j]) - mean);
    }
  }
  *sum_g_out = sum_g;
  *sum_gx_out = sum_gx;
}

template <typename T, Activation A>
FASTCNN_SIMD_CLONES void row_block_grad_sums(const ActivationFunctor<A> act, const T* __restrict g,
                                             const T* __restrict y, const T* __restrict x, int64_t rows,
                                             int64_t channels, const double* __restrict mean,
                                             double* __restrict sum_g, double* __restrict sum_gx) {
  // As plane_grad_sums: the derivative through a buffer, so that both loops vectorise.
  T grad[kGradChunk];
  for (int64_t c = 0; c < channels; ++c) sum_g[c] = 0, sum_gx[c] = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * channels;
    for (int64_t c0 = 0; c0 < channels; c0 += kGradChunk) {
      const int64_t m = std::min(kGradChunk, channels - c0);
      for (int64_t j = 0; j < m; ++j) grad[j] = act.backward(g[o + c0 + j], y[o + c0 + j]);
      for (int64_t j = 0; j < m; ++j) {
        const double gi = static_cast<double>(grad[j]);
        sum_g[c0 + j] += gi;
        sum_gx[c0 + j] += gi * (static_cast<double>(x[o + c0 + j]) - mean[c0 + j]);
      }
    }
  }
}

template <typename T, Activation A>
FASTCNN_SIMD_CLONES void grad_input_plane(const ActivationFunctor<A> act, const T* __restrict g,
                                          const T* __restrict y, const T* __restrict x, T* __restrict gx,
                                          int64_t n, T mean, T a, T b, T d) {
  for (int64_t i = 0; i < n; ++i) gx[i] = act.backward(g[i], y[i]) * a + (x[i] - mean) * b + d;
}

template <typename T, Activation A>
FASTCNN_SIMD_CLONES void grad_input_rows(const ActivationFunctor<A> act, const T* __restrict g,
                                         const T* __restrict y, const T* __restrict x, T* __restrict gx,
                                         int64_t rows, int64_t channels, const T* __restrict mean,
                                         const T* __restrict a, const T* __restrict b,
                                         const T* __restrict d) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      gx[o + c] = act.backward(g[o + c], y[o + c]) * a[c] + (x[o + c] - mean[c]) * b[c] + d[c];
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> batch_norm_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const std::optional<at::Tensor>& weight,
    const at::Tensor& mean, const at::Tensor& var, const std::optional<at::Tensor>& output, bool training,
    double eps, int64_t activation, std::array<bool, 3> output_mask) {
  const Activation act = to_activation(activation);
  check_fused_backward(act, "batch_norm_backward");
  const bn::Shape s = bn::input_shape(input, /*allow_reduced=*/false);
  bn::check_batch_norm_backward(grad_output, input, weight, mean, var, output, s, eps,
                                act != Activation::None);
  const at::Tensor x = bn::dense_input(input, s);
  const at::Tensor g = bn::dense_input(grad_output, s);
  // Identity's backward ignores y: any tensor of the right size stands in when there is no activation.
  const at::Tensor y = act != Activation::None ? bn::dense_input(*output, s) : x;
  const std::vector<double> mean_d = as_doubles(mean), var_d = as_doubles(var), w = optional_doubles(weight);
  const int64_t channels = s.channels;
  std::vector<double> sum_g(channels, 0), sum_gx(channels, 0);
  at::Tensor grad_input = output_mask[0] ? at::empty_like(x, s.format) : input.new_empty({0});
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastcnn_batch_norm_backward_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    with_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      const auto act_fn = activation_functor<A>(act);
      const int64_t parts = statistics_parts(s);
      std::vector<double> part_g(parts * channels), part_gx(parts * channels);
      if (s.channels_inner()) {
        at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
          for (int64_t p = begin; p < end; ++p) {
            const int64_t o = p * kRowsPerBlock * channels;
            row_block_grad_sums<scalar_t, A>(act_fn, gp + o, yp + o, xp + o,
                                             std::min(kRowsPerBlock, s.outer - p * kRowsPerBlock), channels,
                                             mean_d.data(), &part_g[p * channels], &part_gx[p * channels]);
          }
        });
      } else {
        at::parallel_for(
            0, parts * channels, std::max<int64_t>(1, kGrain / s.inner), [&](int64_t begin, int64_t end) {
              for (int64_t plane = begin; plane < end; ++plane) {
                const int64_t o = plane * s.inner;
                plane_grad_sums<scalar_t, A>(act_fn, gp + o, yp + o, xp + o, s.inner,
                                             mean_d[plane % channels], &part_g[plane], &part_gx[plane]);
              }
            });
      }
      for (int64_t p = 0; p < parts; ++p) {
        for (int64_t c = 0; c < channels; ++c) {
          sum_g[c] += part_g[p * channels + c];
          sum_gx[c] += part_gx[p * channels + c];
        }
      }
      if (!output_mask[0]) return;
      ChannelVectors<scalar_t> v(channels);
      for (int64_t c = 0; c < channels; ++c) {
        const auto k =
            bn::backward_coefficients<double>(mean_d[c], var_d[c], eps, w.empty() ? nullptr : w.data(), c,
                                              sum_g[c], sum_gx[c], s.count, training);
        v.mean[c] = static_cast<scalar_t>(k.mean);
        v.a[c] = static_cast<scalar_t>(k.a);
        v.b[c] = static_cast<scalar_t>(k.b);
        v.d[c] = static_cast<scalar_t>(k.d);
      }
      scalar_t* gxp = grad_input.mutable_data_ptr<scalar_t>();
      if (s.channels_inner()) {
        at::parallel_for(
            0, s.outer, std::max<int64_t>(1, kGrain / channels), [&](int64_t begin, int64_t end) {
              const int64_t o = begin * channels;
              grad_input_rows<scalar_t, A>(act_fn, gp + o, yp + o, xp + o, gxp + o, end - begin, channels,
                                           v.mean.data(), v.a.data(), v.b.data(), v.d.data());
            });
      } else {
        at::parallel_for(0, s.outer * channels, std::max<int64_t>(1, kGrain / s.inner),
                         [&](int64_t begin, int64_t end) {
                           for (int64_t plane = begin; plane < end; ++plane) {
                             const int64_t c = plane % channels, o = plane * s.inner;
                             grad_input_plane<scalar_t, A>(act_fn, gp + o, yp + o, xp + o, gxp + o, s.inner,
                                                           v.mean[c], v.a[c], v.b[c], v.d[c]);
                           }
                         });
      }
    });
  });
  const auto stats_options = input.options().dtype(bn::stats_dtype(input));
  std::vector<double> grad_weight(channels);
  for (int64_t c = 0; c < channels; ++c) grad_weight[c] = sum_gx[c] * bn::inverse_std(var_d[c], eps);
  return {grad_input, output_mask[1] ? cpu::channel_tensor(grad_weight, stats_options) : mean.new_empty({0}),
          output_mask[2] ? cpu::channel_tensor(sum_g, stats_options) : mean.new_empty({0})};
}

// ---- running statistics ---------------------------------------------------------------------------------

void batch_norm_update_running_stats_cpu(at::Tensor& running_mean, at::Tensor& running_var,
                                         const at::Tensor& mean, const at::Tensor& var, double momentum,
                                         int64_t count) {
  bn::check_running_stats_update(running_mean, running_var, mean, var, momentum, count,
                                 /*allow_reduced=*/false);
  AT_DISPATCH_FLOATING_TYPES(running_mean.scalar_type(), "fastcnn_batch_norm_update_running_stats_cpu", [&] {
    scalar_t* rm = running_mean.mutable_data_ptr<scalar_t>();
    scalar_t* rv = running_var.mutable_data_ptr<scalar_t>();
    const at::Tensor m = mean.contiguous(), v = var.contiguous();
    const scalar_t* mp = m.const_data_ptr<scalar_t>();
    const scalar_t* vp = v.const_data_ptr<scalar_t>();
    const scalar_t keep = static_cast<scalar_t>(1 - momentum), take = static_cast<scalar_t>(momentum);
    const scalar_t unbias = static_cast<scalar_t>(count) / static_cast<scalar_t>(count - 1);
    for (int64_t c = 0; c < running_mean.numel(); ++c) {
      rm[c] = take * mp[c] + keep * rm[c];
      rv[c] = take * (vp[c] * unbias) + keep * rv[c];
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, CPU, m) {
  m.impl("batch_norm", &batch_norm_cpu);
  m.impl("batch_norm_backward", &batch_norm_backward_cpu);
  m.impl("batch_norm_update_running_stats", &batch_norm_update_running_stats_cpu);
}

}  // namespace fastcnn
