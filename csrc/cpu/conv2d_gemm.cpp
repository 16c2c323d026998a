// The GEMM path of the CPU conv2d; the algorithm is described at the top of conv2d.cpp, the figures are
// in benchmarks/NOTES.md.
#include "cpu/conv2d_gemm.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/epilogue.h"
#include "cpu/gemm.h"
#include "cpu/im2col.h"
#include "cpu/slots.h"

namespace fastcnn {
namespace cpu {

// ---------------------------------------------------------------------------------------------------
// GEMM path, forward.

// NHWC: implicit GEMM over global output rows (n, oh, ow) x output channels. The input is zero-padded
// once (when the conv pads) so that every im2col row is KH runs of KW * C contiguous input values (or
// KH * KW runs of Cg with groups / dilation), which the micro-kernel reads in place. The weight is packed
// once per call into [OCg / nr][K][nr] panels shared by both threads; tiles loop B panels outside so a
// panel stays cache-resident over a chunk's rows, and the epilogue runs on the tile in registers.
template <typename T>
void conv_forward_nhwc(const Geometry& g, const T* x, const T* w, const T* bias, const T* res, T* out,
                       Activation act) {
  const bool pad = g.ph > 0 || g.pw > 0;
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw, C = g.C;
  std::vector<T> padded;
  const T* xs = x;
  if (pad) {
    padded.resize(g.N * Hp * Wp * C);
    T* dst = padded.data();
    at::parallel_for(0, g.N * Hp, 16, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / Hp, h = row % Hp - g.ph;
        T* d = dst + row * Wp * C;
        if (h < 0 || h >= g.H) {
          std::fill_n(d, Wp * C, T(0));
          continue;
        }
        std::fill_n(d, g.pw * C, T(0));
        std::memcpy(d + g.pw * C, x + (n * g.H + h) * g.W * C, g.W * C * sizeof(T));
        std::fill_n(d + (g.pw + g.W) * C, g.pw * C, T(0));
      }
    });
    xs = dst;
  }

  const int64_t nr = cpu::kernels<T>().nr, mr = cpu::kernels<T>().mr;
  const int64_t group_panels = (g.OCg + nr - 1) / nr;
  const int64_t group_packed = cpu::packed_b_size<T>(g.K, g.OCg);
  std::vector<T> packed(g.groups * group_packed);
  at::parallel_for(0, g.groups * group_panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t grp = i / group_panels, j0 = i % group_panels * nr;
      cpu::pack_b<T>(g.K, j0, std::min(g.OCg, j0 + nr), w + grp * g.OCg * g.K, 1, g.K,
                     packed.data() + grp * group_packed + j0 * g.K);
    }
  });

  std::vector<int64_t> tap_off;
  int64_t run;
  if (g.groups == 1 && g.dw == 1) {
    run = g.KW * C;
    for (int64_t kh = 0; kh < g.KH; ++kh) tap_off.push_back(kh * g.dh * Wp * C);
  } else {
    run = g.Cg;
    for (int64_t kh = 0; kh < g.KH; ++kh)
      for (int64_t kw = 0; kw < g.KW; ++kw) tap_off.push_back((kh * g.dh * Wp + kw * g.dw) * C);
  }

  // Tasks of about 8 micro-tiles of rows, as many as a multiple of the thread count, with the rows spread
  // evenly over them in whole micro-tiles: the static split then gives every thread the same work. (A
  // fixed 112-row chunk split 392 rows, 8 x 7x7 pixels, into 224 rows for one thread and 168 for the
  // other.)
  const int64_t M = g.N * g.P;
  const int64_t threads = at::get_num_threads();
  const int64_t tiles = (M + mr - 1) / mr;
  int64_t tasks = (std::max<int64_t>(1, (tiles + 7) / 8) + threads - 1) / threads * threads;
  tasks = std::min(tasks, tiles);
  const int64_t chunk = (tiles + tasks - 1) / tasks * mr;
  tasks = (M + chunk - 1) / chunk;
  const int64_t slots = cpu::num_slots(tasks);
  cpu::for_each_slot(tasks, slots, [&](int64_t, int64_t t_begin, int64_t t_end) {
    std::vector<const T*> rows(chunk);
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t r0 = t * chunk, r1 = std::min(M, r0 + chunk);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / g.P, p = r % g.P, oh = p / g.OW, ow = p % g.OW;
        rows[r - r0] = xs + ((n * Hp + oh * g.sh) * Wp + ow * g.sw) * C;
      }
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        const int64_t c_off = grp * g.Cg;
        cpu::Epilogue<T> ep;
        ep.col_bias = bias != nullptr ? bias + grp * g.OCg : nullptr;
        ep.residual = res != nullptr ? res + r0 * g.OC + grp * g.OCg : nullptr;
        ep.res_ld = g.OC;
        ep.act = act;
        cpu::gemm_tiles<T>(
            r1 - r0, g.OCg, int64_t(tap_off.size()), tap_off.data(), run,
            [&](int64_t i) { return rows[i] + c_off; }, packed.data() + grp * group_packed,
            out + r0 * g.OC + grp * g.OCg, g.OC, ep, /*panels_outer=*/true);
      }
    }
  });
}

// NCHW: per (sample, pixel chunk), the chunk's im2col block is gathered from zero-padded planes straight
// into [pixels / nr][K][nr] panels (1x1 stride-1 convs pack the planes themselves) and C[OCg, pixels] =
// W[OCg, K] @ panels, with the weight rows read in place and the per-channel bias / residual / activation
// fused into the tiles.
template <typename T>
void conv_forward_nchw(const Geometry& g, const T* x, const T* w, const T* bias, const T* res, T* out,
                       Activation act) {
  const int64_t nr = cpu::kernels<T>().nr;
  const int64_t threads = at::get_num_threads();
  // The widest chunk (a multiple of nr) whose panels fit the col budget, no wider than the image and
  // narrow enough that N * chunks >= 2 * threads where the image allows; in closed form, because a
  // search down in steps of nr costs microseconds per call on small images.
  int64_t chunk = std::max<int64_t>(nr, kColBudget / std::max<int64_t>(g.K, 1) / nr * nr);
  chunk = std::min(chunk, (g.P + nr - 1) / nr * nr);
  const int64_t wanted_chunks = (2 * threads + g.N - 1) / g.N;
  if (wanted_chunks > 1) {
    // ceil(P / c) >= wanted exactly when c * (wanted - 1) < P.
    chunk = std::max(nr, std::min(chunk, (g.P - 1) / (wanted_chunks - 1) / nr * nr));
  }
  const int64_t chunks = (g.P + chunk - 1) / chunk;
  const int64_t tasks = g.N * chunks;
  const int64_t slots = cpu::num_slots(tasks);

  // Zero-padded planes make every im2col element a plain load at plane_offset(k) + pixel_offset(q).
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw, HWp = Hp * Wp;
  std::vector<T> padded;
  const T* xs = x;
  if (!g.direct && (g.ph > 0 || g.pw > 0)) {
    padded.resize(g.N * g.C * HWp);
    at::parallel_for(0, g.N * g.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        T* d = padded.data() + plane * HWp;
        const T* src = x + plane * g.HW;
        std::fill_n(d, g.ph * Wp, T(0));
        for (int64_t h = 0; h < g.H; ++h) {
          T* row = d + (g.ph + h) * Wp;
          std::fill_n(row, g.pw, T(0));
          std::memcpy(row + g.pw, src + h * g.W, g.W * sizeof(T));
          std::fill_n(row + g.pw + g.W, g.pw, T(0));
        }
        std::fill_n(d + (g.ph + g.H) * Wp, g.ph * Wp, T(0));
      }
    });
    xs = padded.data();
  }
  const int64_t plane_size = xs == x ? g.HW : HWp, row_size = xs == x ? g.W : Wp;
  std::vector<int64_t> k_off(g.K);
  for (int64_t c = 0; c < g.Cg; ++c)
    for (int64_t kh = 0; kh < g.KH; ++kh)
      for (int64_t kw = 0; kw < g.KW; ++kw)
        k_off[(c * g.KH + kh) * g.KW + kw] = c * plane_size + kh * g.dh * row_size + kw * g.dw;

  cpu::for_each_slot(tasks, slots, [&](int64_t, int64_t t_begin, int64_t t_end) {
    std::vector<T> panels(cpu::packed_b_size<T>(g.K, chunk));
    std::vector<int64_t> q_off(chunk);
    std::vector<int64_t> run_start(nr + 1);
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t n = t / chunks, p0 = t % chunks * chunk, p1 = std::min(g.P, p0 + chunk), rows = p1 - p0;
      for (int64_t p = p0; p < p1; ++p) q_off[p - p0] = (p / g.OW * g.sh) * row_size + p % g.OW * g.sw;
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        const T* planes = xs + (n * g.C + grp * g.Cg) * plane_size;
        if (g.direct) {
          cpu::pack_b<T>(g.K, 0, rows, planes + p0, g.HW, 1, panels.data());
        } else {
          for (int64_t j0 = 0; j0 < rows; j0 += nr) {
            const int64_t width = std::min(nr, rows - j0);
            T* panel = panels.data() + j0 * g.K;
            const int64_t* __restrict__ q = q_off.data() + j0;
            // Pixels of one output row read consecutive inputs at stride 1: the panel's columns split
            // into a few runs, each a block copy per tap, in place of a gather of every element.
            int64_t runs = 0;
            for (int64_t l = 0; l < width; ++l) {
              if (l == 0 || q[l] != q[l - 1] + 1) run_start[runs++] = l;
            }
            run_start[runs] = width;
            if (2 * runs <= width) {
              for (int64_t k = 0; k < g.K; ++k) {
                const T* __restrict__ src = planes + k_off[k];
                T* __restrict__ dst = panel + k * nr;
                for (int64_t r = 0; r < runs; ++r) {
                  const int64_t l0 = run_start[r], l1 = run_start[r + 1];
                  const T* __restrict__ s = src + q[l0] - l0;
                  for (int64_t l = l0; l < l1; ++l) dst[l] = s[l];
                }
              }
            } else {
              for (int64_t k = 0; k < g.K; ++k) {
                const T* __restrict__ src = planes + k_off[k];
                T* __restrict__ dst = panel + k * nr;
                for (int64_t l = 0; l < width; ++l) dst[l] = src[q[l]];
              }
            }
          }
        }
        const int64_t block = (n * g.OC + grp * g.OCg) * g.P + p0;
        const T* w_g = w + grp * g.OCg * g.K;
        cpu::Epilogue<T> ep;
        ep.row_bias = bias != nullptr ? bias + grp * g.OCg : nullptr;
        ep.residual = res != nullptr ? res + block : nullptr;
        ep.res_ld = g.P;
        ep.act = act;
        cpu::gemm_tiles<T>(
            g.OCg, rows, 1, nullptr, g.K, [&](int64_t i) { return w_g + i * g.K; }, panels.data(),
            out + block, g.P, ep, /*panels_outer=*/false);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// GEMM path, backward.

// One task (n, pixels [p0, p1); NHWC may pass p0 = 0, p1 = k * P for k whole samples). grad_target is where
// this slot's col2im lands (grad_in or a private buffer); direct convolutions write grad_in rows themselves,
// which no other task touches.
template <typename T>
void backward_chunk(const Geometry& g, const BackwardArgs<T>& a, int64_t slot, int64_t n, int64_t p0,
                    int64_t p1, T* grad_target, std::vector<T>& col, std::vector<T>& gp_buffer) {
  const int64_t rows = p1 - p0;
  const bool has_act = a.act != Activation::None;
  T* wpart = a.weight_partials ? a.weight_partials + slot * g.OC * g.K : nullptr;
  if (g.channels_last) {
    const int64_t offset = (n * g.P + p0) * g.OC;
    const T* gp = a.grad_out + offset;
    if (has_act) {
      cpu::grad_pre_block<T>(a.grad_out + offset, g.OC, a.out + offset, g.OC, gp_buffer.data(), g.OC, rows,
                             g.OC, a.act);
      gp = gp_buffer.data();
    }
    if (a.bias_partials) cpu::add_column_sums<T>(gp, g.OC, rows, g.OC, a.bias_partials + slot * g.OC);
    // Pixels past P continue into the following samples (whole samples only): NHWC rows of consecutive
    // samples are contiguous in grad_output and in a direct conv's input, and im2col / col2im go sample by
    // sample.
    const int64_t samples = p1 > g.P ? (p1 - p0) / g.P : 1;
    const int64_t span = p1 > g.P ? g.P : rows;
    const T* xn = a.x + n * g.HW * g.C;
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const T* gp_g = gp + grp * g.OCg;
      const T* w_g = a.w + grp * g.OCg * g.K;
      if (wpart) {
        const T* src = xn + p0 * g.C + grp * g.Cg;
        int64_t ld = g.C;
        if (!g.direct) {
          for (int64_t sn = 0; sn < samples; ++sn)
            im2col_nhwc(g, xn + sn * g.HW * g.C, grp * g.Cg, p0, p0 + span, col.data() + sn * span * g.K);
          src = col.data();
          ld = g.K;
        }
        cpu::gemm<T>(true, false, g.OCg, g.K, rows, gp_g, g.OC, src, ld, wpart + grp * g.OCg * g.K, g.K,
                     true);
      }
      if (a.grad_in) {
        if (g.direct) {
          cpu::gemm<T>(false, false, rows, g.Cg, g.OCg, gp_g, g.OC, w_g, g.K,
                       a.grad_in + (n * g.HW + p0) * g.C + grp * g.Cg, g.C, false);
        } else {
          cpu::gemm<T>(false, false, rows, g.K, g.OCg, gp_g, g.OC, w_g, g.K, col.data(), g.K, false);
          for (int64_t sn = 0; sn < samples; ++sn)
            col2im_nhwc(g, col.data() + sn * span * g.K, grp * g.Cg, p0, p0 + span,
                        grad_target + (n + sn) * g.HW * g.C);
        }
      }
    }
  } else {
    const int64_t offset = n * g.OC * g.P + p0;
    const T* gp = a.grad_out + offset;
    int64_t ldgp = g.P;
    if (has_act) {
      cpu::grad_pre_block<T>(a.grad_out + offset, g.P, a.out + offset, g.P, gp_buffer.data(), rows, g.OC,
                             rows, a.act);
      gp = gp_buffer.data();
      ldgp = rows;
    }
    if (a.bias_partials) cpu::add_row_sums<T>(gp, ldgp, g.OC, rows, a.bias_partials + slot * g.OC);
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      const T* gp_g = gp + grp * g.OCg * ldgp;
      const T* wt_g = a.w_t + grp * g.OCg * g.K;
      const int64_t plane_offset = (n * g.C + grp * g.Cg) * g.HW;
      if (wpart) {
        const T* src = a.x + plane_offset + p0;
        int64_t ld = g.HW;
        if (!g.direct) {
          nchw_col_pass<T, false>(g, a.x + plane_offset, p0, p1, col.data());
          src = col.data();
          ld = rows;
        }
        if (a.weight_grad_transposed) {
          cpu::gemm<T>(false, true, g.K, g.OCg, rows, src, ld, gp_g, ldgp, wpart + grp * g.OCg * g.K, g.OCg,
                       true);
        } else {
          cpu::gemm<T>(false, true, g.OCg, g.K, rows, gp_g, ldgp, src, ld, wpart + grp * g.OCg * g.K, g.K,
                       true);
        }
      }
      if (a.grad_in) {
        if (g.direct) {
          cpu::gemm<T>(false, false, g.Cg, rows, g.OCg, wt_g, g.OCg, gp_g, ldgp,
                       a.grad_in + plane_offset + p0, g.HW, false);
        } else {
          cpu::gemm<T>(false, false, g.K, rows, g.OCg, wt_g, g.OCg, gp_g, ldgp, col.data(), rows, false);
          nchw_col_pass<T, true>(g, grad_target + plane_offset, p0, p1, col.data());
        }
      }
    }
  }
}

template <typename T>
void conv_backward_gemm(const Geometry& g, const BackwardArgs<T>& a, int64_t slots, bool sample_owned,
                        T* private_grads) {
  // NHWC with small planes: a task takes several whole samples, so wgrad's reduction is long enough.
  const int64_t samples_per_task = sample_owned && g.channels_last && g.chunks_per_sample == 1
                                       ? std::max<int64_t>(1, kMinChunkPixels / g.P)
                                       : 1;
  const int64_t max_rows = samples_per_task * ((g.P + g.chunks_per_sample - 1) / g.chunks_per_sample);
  const int64_t units = sample_owned ? g.N : g.num_tasks();
  cpu::for_each_slot(units, slots, [&](int64_t slot, int64_t u_begin, int64_t u_end) {
    std::vector<T> col;
    if (!g.direct) col.resize(max_rows * g.K);
    std::vector<T> gp_buffer;
    if (a.act != Activation::None) gp_buffer.resize(max_rows * g.OC);
    T* target = a.grad_in;
    if (!sample_owned && slot > 0 && private_grads != nullptr)
      target = private_grads + (slot - 1) * g.N * g.HW * g.C;
    const int64_t t_begin = sample_owned ? u_begin * g.chunks_per_sample : u_begin;
    const int64_t t_end = sample_owned ? u_end * g.chunks_per_sample : u_end;
    if (samples_per_task > 1) {
      for (int64_t n = u_begin; n < u_end; n += samples_per_task) {
        const int64_t samples = std::min(samples_per_task, u_end - n);
        backward_chunk(g, a, slot, n, 0, samples * g.P, target, col, gp_buffer);
      }
      return;
    }
    for (int64_t t = t_begin; t < t_end; ++t) {
      const int64_t n = t / g.chunks_per_sample, c = t % g.chunks_per_sample;
      backward_chunk(g, a, slot, n, g.chunk_begin(c), g.chunk_begin(c + 1), target, col, gp_buffer);
    }
  });
}

template void conv_forward_nhwc<float>(const Geometry& g, const float* x, const float* w, const float* bias,
                                       const float* res, float* out, Activation act);
template void conv_forward_nchw<float>(const Geometry& g, const float* x, const float* w, const float* bias,
                                       const float* res, float* out, Activation act);
template void conv_backward_gemm<float>(const Geometry& g, const BackwardArgs<float>& a, int64_t slots,
                                        bool sample_owned, float* private_grads);
template void conv_forward_nhwc<double>(const Geometry& g, const double* x, const double* w,
                                        const double* bias, const double* res, double* out, Activation act);
template void conv_forward_nchw<double>(const Geometry& g, const double* x, const double* w,
                                        const double* bias, const double* res, double* out, Activation act);
template void conv_backward_gemm<double>(const Geometry& g, const BackwardArgs<double>& a, int64_t slots,
                                         bool sample_owned, double* private_grads);

}  // namespace cpu
}  // namespace fastcnn
