// The direct depthwise path of the CPU conv2d; figures in benchmarks/NOTES.md.
#include "cpu/conv2d_depthwise.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu/epilogue.h"
#include "cpu/slots.h"

namespace fastcnn {
namespace cpu {

// ---------------------------------------------------------------------------------------------------
// Depthwise: groups == C, one input channel per group, M = OC / C outputs per input channel.

// NHWC forward. wt is [KH * KW, OC]; tasks are output rows (n, oh), each written then finished in place.
template <typename T>
void depthwise_forward_nhwc(const Geometry& g, const T* x, const T* wt, const T* bias, const T* res, T* out,
                            Activation act) {
  // Geometry copied into locals so the channel loops see loop-invariant bounds and vectorise.
  const int64_t C = g.C, OC = g.OC, mult = OC / C, H = g.H, W = g.W, OH = g.OH, OW = g.OW, KH = g.KH,
                KW = g.KW;
  const int64_t sh = g.sh, sw = g.sw, ph = g.ph, pw = g.pw, dh = g.dh, dw = g.dw;
  at::parallel_for(0, g.N * OH, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / OH, oh = t % OH;
      T* row = out + t * OW * OC;
      std::fill_n(row, OW * OC, T(0));
      for (int64_t kh = 0; kh < KH; ++kh) {
        const int64_t ih = oh * sh - ph + kh * dh;
        if (ih < 0 || ih >= H) continue;
        const T* x_row = x + (n * H + ih) * W * C;
        for (int64_t kw = 0; kw < KW; ++kw) {
          const int64_t off_w = kw * dw - pw;
          int64_t lo, hi;
          valid_range(off_w, sw, W, 0, OW, lo, hi);
          const T* __restrict__ wp = wt + (kh * KW + kw) * OC;
          for (int64_t ow = lo; ow < hi; ++ow) {
            T* __restrict__ acc = row + ow * OC;
            const T* __restrict__ xp = x_row + (ow * sw + off_w) * C;
            if (mult == 1) {
              for (int64_t c = 0; c < C; ++c) acc[c] += xp[c] * wp[c];
            } else {
              for (int64_t c = 0; c < C; ++c) {
                const T xv = xp[c];
                for (int64_t j = 0; j < mult; ++j) acc[c * mult + j] += xv * wp[c * mult + j];
              }
            }
          }
        }
      }
      cpu::apply_epilogue<T>(row, OC, OW, OC, bias, nullptr, res ? res + t * OW * OC : nullptr, OC, act);
    }
  });
}

// NCHW forward, one output plane per task. w is [OC, KH * KW].
template <typename T>
void depthwise_forward_nchw(const Geometry& g, const T* x, const T* w, const T* bias, const T* res, T* out,
                            Activation act) {
  const int64_t mult = g.OC / g.C;
  at::parallel_for(0, g.N * g.OC, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / g.OC, oc = t % g.OC;
      const T* plane = x + (n * g.C + oc / mult) * g.HW;
      T* o = out + t * g.P;
      std::fill_n(o, g.P, T(0));
      for (int64_t kh = 0; kh < g.KH; ++kh) {
        for (int64_t kw = 0; kw < g.KW; ++kw) {
          const T wv = w[oc * g.KH * g.KW + kh * g.KW + kw];
          const int64_t off_w = kw * g.dw - g.pw;
          int64_t lo, hi;
          valid_range(off_w, g.sw, g.W, 0, g.OW, lo, hi);
          for (int64_t oh = 0; oh < g.OH; ++oh) {
            const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
            if (ih < 0 || ih >= g.H) continue;
            const T* __restrict__ in_row = plane + ih * g.W + off_w;
            T* __restrict__ o_row = o + oh * g.OW;
            if (g.sw == 1) {
              for (int64_t ow = lo; ow < hi; ++ow) o_row[ow] += wv * in_row[ow];
            } else {
              for (int64_t ow = lo; ow < hi; ++ow) o_row[ow] += wv * in_row[ow * g.sw];
            }
          }
        }
      }
      cpu::apply_epilogue<T>(o, g.P, 1, g.P, nullptr, bias ? bias + oc : nullptr,
                             res ? res + t * g.P : nullptr, g.P, act);
    }
  });
}

// NHWC backward. Tasks are channel blocks: a task owns grad_in[..., c0:c1], grad_weight and grad_bias of
// its output channels, so there are no races and no partial sums to reduce. wt is [KH * KW, OC];
// grad_in is zero-filled; grad_w_t is [KH * KW, OC].
template <typename T>
void depthwise_backward_nhwc(const Geometry& g, const BackwardArgs<T>& a, const T* wt, T* grad_w_t,
                             T* grad_b) {
  const int64_t mult = g.OC / g.C;
  const int64_t threads = at::get_num_threads();
  const int64_t block = std::max<int64_t>(16, ((g.C + threads - 1) / threads + 15) / 16 * 16);
  const int64_t tasks = (g.C + block - 1) / block;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> gp_buffer(block * mult);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t c0 = t * block, nc = std::min(g.C, c0 + block) - c0;
      const int64_t oc0 = c0 * mult, noc = nc * mult;
      for (int64_t n = 0; n < g.N; ++n) {
        for (int64_t oh = 0; oh < g.OH; ++oh) {
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            const int64_t pix = (n * g.OH + oh) * g.OW + ow;
            const T* gp = a.grad_out + pix * g.OC + oc0;
            if (a.act != Activation::None) {
              cpu::grad_pre_block<T>(gp, 0, a.out + pix * g.OC + oc0, 0, gp_buffer.data(), 0, 1, noc, a.act);
              gp = gp_buffer.data();
            }
            if (grad_b) {
              T* __restrict__ gb = grad_b + oc0;
              for (int64_t j = 0; j < noc; ++j) gb[j] += gp[j];
            }
            if (!a.grad_in && !grad_w_t) continue;
            for (int64_t kh = 0; kh < g.KH; ++kh) {
              const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
              if (ih < 0 || ih >= g.H) continue;
              for (int64_t kw = 0; kw < g.KW; ++kw) {
                const int64_t iw = ow * g.sw - g.pw + kw * g.dw;
                if (iw < 0 || iw >= g.W) continue;
                const int64_t in_pix = (n * g.H + ih) * g.W + iw;
                const int64_t tap = kh * g.KW + kw;
                const T* __restrict__ wp = wt + tap * g.OC + oc0;
                const T* __restrict__ xp = a.x + in_pix * g.C + c0;
                if (a.grad_in) {
                  T* __restrict__ gi = a.grad_in + in_pix * g.C + c0;
                  if (mult == 1) {
                    for (int64_t c = 0; c < nc; ++c) gi[c] += gp[c] * wp[c];
                  } else {
                    for (int64_t c = 0; c < nc; ++c) {
                      T acc = 0;
                      for (int64_t j = 0; j < mult; ++j) acc += gp[c * mult + j] * wp[c * mult + j];
                      gi[c] += acc;
                    }
                  }
                }
                if (grad_w_t) {
                  T* __restrict__ gw = grad_w_t + tap * g.OC + oc0;
                  for (int64_t c = 0; c < nc; ++c) {
                    const T xv = xp[c];
                    for (int64_t j = 0; j < mult; ++j) gw[c * mult + j] += gp[c * mult + j] * xv;
                  }
                }
              }
            }
          }
        }
      }
    }
  });
}

// NCHW backward, one input channel per task: it owns that channel's grad_in planes and the weights and
// biases of its M output channels. w and grad_w are [OC, KH * KW]; grad_in is zero-filled.
template <typename T>
void depthwise_backward_nchw(const Geometry& g, const BackwardArgs<T>& a, T* grad_w, T* grad_b) {
  const int64_t mult = g.OC / g.C;
  at::parallel_for(0, g.C, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> gp_buffer(a.act != Activation::None ? g.P : 0);
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t n = 0; n < g.N; ++n) {
        const T* plane = a.x + (n * g.C + c) * g.HW;
        T* gi = a.grad_in ? a.grad_in + (n * g.C + c) * g.HW : nullptr;
        for (int64_t j = 0; j < mult; ++j) {
          const int64_t oc = c * mult + j;
          const T* gp = a.grad_out + (n * g.OC + oc) * g.P;
          if (a.act != Activation::None) {
            cpu::grad_pre_block<T>(gp, 0, a.out + (n * g.OC + oc) * g.P, 0, gp_buffer.data(), 0, 1, g.P,
                                   a.act);
            gp = gp_buffer.data();
          }
          if (grad_b) {
            T acc = 0;
            for (int64_t p = 0; p < g.P; ++p) acc += gp[p];
            grad_b[oc] += acc;
          }
          if (!gi && !grad_w) continue;
          for (int64_t kh = 0; kh < g.KH; ++kh) {
            for (int64_t kw = 0; kw < g.KW; ++kw) {
              const int64_t tap = kh * g.KW + kw;
              const T wv = a.w[oc * g.KH * g.KW + tap];
              const int64_t off_w = kw * g.dw - g.pw;
              int64_t lo, hi;
              valid_range(off_w, g.sw, g.W, 0, g.OW, lo, hi);
              T wacc = 0;
              for (int64_t oh = 0; oh < g.OH; ++oh) {
                const int64_t ih = oh * g.sh - g.ph + kh * g.dh;
                if (ih < 0 || ih >= g.H) continue;
                const T* __restrict__ gp_row = gp + oh * g.OW;
                const int64_t row_off = ih * g.W + off_w;
                if (grad_w) {
                  const T* __restrict__ in_row = plane + row_off;
                  for (int64_t ow = lo; ow < hi; ++ow) wacc += gp_row[ow] * in_row[ow * g.sw];
                }
                if (gi) {
                  T* __restrict__ gi_row = gi + row_off;
                  if (g.sw == 1) {
                    for (int64_t ow = lo; ow < hi; ++ow) gi_row[ow] += wv * gp_row[ow];
                  } else {
                    for (int64_t ow = lo; ow < hi; ++ow) gi_row[ow * g.sw] += wv * gp_row[ow];
                  }
                }
              }
              if (grad_w) grad_w[oc * g.KH * g.KW + tap] += wacc;
            }
          }
        }
      }
    }
  });
}

template void depthwise_forward_nhwc<float>(const Geometry& g, const float* x, const float* wt,
                                            const float* bias, const float* res, float* out, Activation act);
template void depthwise_forward_nchw<float>(const Geometry& g, const float* x, const float* w,
                                            const float* bias, const float* res, float* out, Activation act);
template void depthwise_backward_nhwc<float>(const Geometry& g, const BackwardArgs<float>& a, const float* wt,
                                             float* grad_w_t, float* grad_b);
template void depthwise_backward_nchw<float>(const Geometry& g, const BackwardArgs<float>& a, float* grad_w,
                                             float* grad_b);
template void depthwise_forward_nhwc<double>(const Geometry& g, const double* x, const double* wt,
                                             const double* bias, const double* res, double* out,
                                             Activation act);
template void depthwise_forward_nchw<double>(const Geometry& g, const double* x, const double* w,
                                             const double* bias, const double* res, double* out,
                                             Activation act);
template void depthwise_backward_nhwc<double>(const Geometry& g, const BackwardArgs<double>& a,
                                              const double* wt, double* grad_w_t, double* grad_b);
template void depthwise_backward_nchw<double>(const Geometry& g, const BackwardArgs<double>& a,
                                              double* grad_w, double* grad_b);

}  // namespace cpu
}  // namespace fastcnn
