// CPU layer normalisation (F.layer_norm over trailing dims, and the channels-first LayerNorm2d of ConvNeXt)
// and its backward.
// Algorithm: the input is viewed as [outer][C][inner] (common/layer_norm.h), one group per (outer, inner)
// normalised over its C values. Rows (inner = 1): each thread takes whole rows, two passes in float64 over
// a row in cache (mean, then squared deviations), then the normalised row. Planes (inner > 1, NCHW
// LayerNorm2d): a thread takes a span of one sample's pixels and walks the C channel planes with the
// span's statistics as float64 vectors, so every loop is unit-stride. Backward: per group the sums
// of g * w and g * w * xhat, then grad_input; grad_weight / grad_bias are per-channel sums over all
// groups, gathered per part (a block of rows, or one sample) and merged in part order: deterministic for
// any thread count. Layout: contiguous, or channels_last for LayerNorm2d.
// Measured: not yet measured.
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

#include "common/layer_norm.h"
#include "common/moments.h"
#include "cpu/norm_kernels.h"
#include "cpu/simd_clones.h"

namespace fastcnn {
namespace {

constexpr int64_t kRowsPerPart = 64;  // rows per grad_weight partial
constexpr int64_t kPixelSpan = 256;   // planes: pixels per task
constexpr int64_t kGrain = 32768;

// y = (x - mean) * rstd * w + b over one row; w/b null: 1/0.
template <typename T>
FASTCNN_SIMD_CLONES void normalize_row(const T* __restrict x, T* __restrict y, int64_t n, T mean, T rstd,
                                       const T* __restrict w, const T* __restrict b) {
  for (int64_t c = 0; c < n; ++c) {
    const T xhat = (x[c] - mean) * rstd;
    y[c] = xhat * (w != nullptr ? w[c] : T(1)) + (b != nullptr ? b[c] : T(0));
  }
}

// Planes: statistics of `span` pixels over C planes `stride` apart, into mean/rstd [span].
template <typename T>
FASTCNN_SIMD_CLONES void span_statistics(const T* __restrict x, int64_t channels, int64_t stride,
                                         int64_t span, double eps, double* __restrict mean,
                                         double* __restrict m2) {
  for (int64_t i = 0; i < span; ++i) mean[i] = 0, m2[i] = 0;
  for (int64_t c = 0; c < channels; ++c) {
    const T* plane = x + c * stride;
    for (int64_t i = 0; i < span; ++i) mean[i] += static_cast<double>(plane[i]);
  }
  const double inv = 1.0 / static_cast<double>(channels);
  for (int64_t i = 0; i < span; ++i) mean[i] *= inv;
  for (int64_t c = 0; c < channels; ++c) {
    const T* plane = x + c * stride;
    for (int64_t i = 0; i < span; ++i) {
      const double d = static_cast<double>(plane[i]) - mean[i];
      m2[i] += d * d;
    }
  }
  for (int64_t i = 0; i < span; ++i) m2[i] = stats::inverse_std(m2[i] * inv, eps);  // m2 becomes rstd
}

template <typename T>
FASTCNN_SIMD_CLONES void normalize_plane_span(const T* __restrict x, T* __restrict y, int64_t span,
                                              const T* __restrict mean, const T* __restrict rstd, T w, T b) {
  for (int64_t i = 0; i < span; ++i) y[i] = (x[i] - mean[i]) * rstd[i] * w + b;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_cpu(const at::Tensor& input, int64_t dim,
                                                              at::IntArrayRef normalized_shape,
                                                              const std::optional<at::Tensor>& weight,
                                                              const std::optional<at::Tensor>& bias,
                                                              double eps) {
  const ln::Shape s =
      ln::check_layer_norm(input, dim, normalized_shape, weight, bias, eps, /*allow_reduced=*/false);
  const at::Tensor x = input.contiguous(s.format);
  at::Tensor y = at::empty_like(x, s.format);
  const auto stats_options = input.options().dtype(ln::stats_dtype(input));
  at::Tensor mean = at::empty({s.groups()}, stats_options);
  at::Tensor rstd = at::empty({s.groups()}, stats_options);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastcnn_layer_norm_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const at::Tensor w = norm::parameter_vector(weight, x.scalar_type()),
                     b = norm::parameter_vector(bias, x.scalar_type());
    const scalar_t* wp = w.defined() ? w.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* mp = mean.mutable_data_ptr<scalar_t>();
    scalar_t* rp = rstd.mutable_data_ptr<scalar_t>();
    const int64_t C = s.channels;
    if (s.channels_inner()) {
      at::parallel_for(0, s.outer, std::max<int64_t>(1, kGrain / C), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          double m, m2;
          cpu::run_moments(xp + r * C, C, &m, &m2);
          const double rs = stats::inverse_std(m2 / static_cast<double>(C), eps);
          mp[r] = static_cast<scalar_t>(m);
          rp[r] = static_cast<scalar_t>(rs);
          normalize_row(xp + r * C, yp + r * C, C, static_cast<scalar_t>(m), static_cast<scalar_t>(rs), wp,
                        bp);
        }
      });
    } else {
      const int64_t spans = (s.inner + kPixelSpan - 1) / kPixelSpan;
      at::parallel_for(0, s.outer * spans, 1, [&](int64_t begin, int64_t end) {
        std::vector<double> m(kPixelSpan), rs(kPixelSpan);
        std::vector<scalar_t> mt(kPixelSpan), rt(kPixelSpan);
        for (int64_t task = begin; task < end; ++task) {
          const int64_t o = task / spans, i0 = (task % spans) * kPixelSpan;
          const int64_t span = std::min(kPixelSpan, s.inner - i0);
          const int64_t base = o * C * s.inner + i0;
          span_statistics(xp + base, C, s.inner, span, eps, m.data(), rs.data());
          for (int64_t i = 0; i < span; ++i) {
            mt[i] = static_cast<scalar_t>(m[i]);
            rt[i] = static_cast<scalar_t>(rs[i]);
            mp[o * s.inner + i0 + i] = mt[i];
            rp[o * s.inner + i0 + i] = rt[i];
          }
          for (int64_t c = 0; c < C; ++c) {
            normalize_plane_span(xp + base + c * s.inner, yp + base + c * s.inner, span, mt.data(), rt.data(),
                                 wp != nullptr ? wp[c] : scalar_t(1), bp != nullptr ? bp[c] : scalar_t(0));
          }
        }
      });
    }
  });
  return {y, mean, rstd};
}

// ---- backward -------------------------------------------------------------------------------------------

// One row: grad_input, and the row's terms g * xhat and g added into gw_part / gb_part [C].
template <typename T>
FASTCNN_SIMD_CLONES void row_backward(const T* __restrict g, const T* __restrict x, T* __restrict gx,
                                      int64_t n, double mean, double rstd, const T* __restrict w,
                                      double* __restrict gw_part, double* __restrict gb_part) {
  double sum_gw = 0, sum_gw_xhat = 0;
  for (int64_t c = 0; c < n; ++c) {
    const double xhat = (static_cast<double>(x[c]) - mean) * rstd;
    const double gw = static_cast<double>(g[c]) * (w != nullptr ? static_cast<double>(w[c]) : 1.0);
    sum_gw += gw;
    sum_gw_xhat += gw * xhat;
    gw_part[c] += static_cast<double>(g[c]) * xhat;
    gb_part[c] += static_cast<double>(g[c]);
  }
  if (gx == nullptr) return;
  const double inv = 1.0 / static_cast<double>(n);
  const double a = sum_gw * inv, b = sum_gw_xhat * inv;
  for (int64_t c = 0; c < n; ++c) {
    const double xhat = (static_cast<double>(x[c]) - mean) * rstd;
    const double gw = static_cast<double>(g[c]) * (w != nullptr ? static_cast<double>(w[c]) : 1.0);
    gx[c] = static_cast<T>(rstd * (gw - a - xhat * b));
  }
}

// Planes: one span of pixels of one sample. sum_gw / sum_gw_xhat are [span] scratch; gw_part / gb_part
// [C] receive the span's per-channel terms.
template <typename T>
FASTCNN_SIMD_CLONES void span_backward(const T* __restrict g, const T* __restrict x, T* __restrict gx,
                                       int64_t channels, int64_t stride, int64_t span,
                                       const double* __restrict mean, const double* __restrict rstd,
                                       const T* __restrict w, double* __restrict sum_gw,
                                       double* __restrict sum_gw_xhat, double* __restrict gw_part,
                                       double* __restrict gb_part) {
  for (int64_t i = 0; i < span; ++i) sum_gw[i] = 0, sum_gw_xhat[i] = 0;
  for (int64_t c = 0; c < channels; ++c) {
    const T* gc = g + c * stride;
    const T* xc = x + c * stride;
    const double wc = w != nullptr ? static_cast<double>(w[c]) : 1.0;
    double gw_c = 0, gb_c = 0;
    for (int64_t i = 0; i < span; ++i) {
      const double xhat = (static_cast<double>(xc[i]) - mean[i]) * rstd[i];
      const double gi = static_cast<double>(gc[i]);
      sum_gw[i] += gi * wc;
      sum_gw_xhat[i] += gi * wc * xhat;
      gw_c += gi * xhat;
      gb_c += gi;
    }
    gw_part[c] += gw_c;
    gb_part[c] += gb_c;
  }
  if (gx == nullptr) return;
  const double inv = 1.0 / static_cast<double>(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const T* gc = g + c * stride;
    const T* xc = x + c * stride;
    T* out = gx + c * stride;
    const double wc = w != nullptr ? static_cast<double>(w[c]) : 1.0;
    for (int64_t i = 0; i < span; ++i) {
      const double xhat = (static_cast<double>(xc[i]) - mean[i]) * rstd[i];
      out[i] = static_cast<T>(
          rstd[i] * (static_cast<double>(gc[i]) * wc - sum_gw[i] * inv - xhat * sum_gw_xhat[i] * inv));
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, int64_t dim, at::IntArrayRef normalized_shape,
    const std::optional<at::Tensor>& weight, const at::Tensor& mean, const at::Tensor& rstd,
    std::array<bool, 3> output_mask) {
  const ln::Shape s =
      ln::check_layer_norm(input, dim, normalized_shape, weight, std::nullopt, 0.0, /*allow_reduced=*/false);
  ln::check_layer_norm_backward(grad_output, input, mean, rstd, s);
  const at::Tensor x = input.contiguous(s.format);
  const at::Tensor g = grad_output.contiguous(s.format);
  const at::Tensor mean_d = mean.to(at::kDouble).contiguous(), rstd_d = rstd.to(at::kDouble).contiguous();
  at::Tensor grad_input = output_mask[0] ? at::empty_like(x, s.format) : input.new_empty({0});
  const int64_t C = s.channels;
  const int64_t parts = s.channels_inner() ? (s.outer + kRowsPerPart - 1) / kRowsPerPart : s.outer;
  std::vector<double> gw_parts(parts * C, 0.0), gb_parts(parts * C, 0.0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastcnn_layer_norm_backward_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* gxp = output_mask[0] ? grad_input.mutable_data_ptr<scalar_t>() : nullptr;
    const at::Tensor w = norm::parameter_vector(weight, x.scalar_type());
    const scalar_t* wp = w.defined() ? w.const_data_ptr<scalar_t>() : nullptr;
    const double* mp = mean_d.const_data_ptr<double>();
    const double* rp = rstd_d.const_data_ptr<double>();
    if (s.channels_inner()) {
      at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
        for (int64_t p = begin; p < end; ++p) {
          for (int64_t r = p * kRowsPerPart; r < std::min(s.outer, (p + 1) * kRowsPerPart); ++r) {
            row_backward(gp + r * C, xp + r * C, gxp != nullptr ? gxp + r * C : nullptr, C, mp[r], rp[r], wp,
                         &gw_parts[p * C], &gb_parts[p * C]);
          }
        }
      });
    } else {
      const int64_t spans = (s.inner + kPixelSpan - 1) / kPixelSpan;
      // One sample per task, so that its partial row is written by one thread.
      at::parallel_for(0, s.outer, 1, [&](int64_t begin, int64_t end) {
        std::vector<double> sum_gw(kPixelSpan), sum_gw_xhat(kPixelSpan);
        for (int64_t o = begin; o < end; ++o) {
          for (int64_t sp = 0; sp < spans; ++sp) {
            const int64_t i0 = sp * kPixelSpan, span = std::min(kPixelSpan, s.inner - i0);
            const int64_t base = o * C * s.inner + i0;
            span_backward(gp + base, xp + base, gxp != nullptr ? gxp + base : nullptr, C, s.inner, span,
                          mp + o * s.inner + i0, rp + o * s.inner + i0, wp, sum_gw.data(), sum_gw_xhat.data(),
                          &gw_parts[o * C], &gb_parts[o * C]);
          }
        }
      });
    }
  });
  std::vector<double> gw(C, 0.0), gb(C, 0.0);
  for (int64_t p = 0; p < parts; ++p) {
    for (int64_t c = 0; c < C; ++c) {
      gw[c] += gw_parts[p * C + c];
      gb[c] += gb_parts[p * C + c];
    }
  }
  const auto stats_options = input.options().dtype(ln::stats_dtype(input));
  return {grad_input, output_mask[1] ? cpu::channel_tensor(gw, stats_options) : mean.new_empty({0}),
          output_mask[2] ? cpu::channel_tensor(gb, stats_options) : mean.new_empty({0})};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcnn, CPU, m) {
  m.impl("layer_norm", &layer_norm_cpu);
  m.impl("layer_norm_backward", &layer_norm_backward_cpu);
}

}  // namespace fastcnn
