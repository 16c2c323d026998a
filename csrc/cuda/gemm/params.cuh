// The parameters of one launch of the fastcnn GEMM core: C[M, N] = A[M, K] * B[N, K]^T per group, for
// the three convolution GEMMs and linear (a 1x1 convolution of 1x1 images). See gemm.h for what M, N
// and K are in each mode; the host fills these in gemm.cu.
#pragma once

#include <cstdint>

#include "cuda/common/conv_geometry.cuh"
#include "cuda/common/helpers.cuh"
#include "cuda/gemm/epilogue.cuh"

namespace fastcnn {
namespace cuda {

enum class GemmMode : int { kForward = 0, kDgrad = 1, kWgrad = 2 };

// dgrad runs one GEMM per stride phase of grad_input (gemm.cu): the phase's input pixels
// (phase_y + yq * stride_h, phase_x + xq * stride_w) form a rows_h x rows_w plane per sample, and only the
// taps kh = kh_first + j * kh_step (kw likewise) reach them from an output pixel, at
// oy = yq + oy0 - j * oy_step exactly; the other taps would multiply zeros. Stride 1 has one phase
// holding every pixel and tap (oy0 = pad, oy_step = dilation).
struct DgradPhase {
  int rows_h, rows_w;  // the phase's pixels per sample
  int taps_h, taps_w;  // its taps per kernel axis: K = taps_h * taps_w * OCg
  int oy0, ox0;        // output pixel read at (yq, xq) = 0 through the phase's first tap
  int oy_step, ox_step;
};

// Geometry of one implicit GEMM (the convolution's in ConvGeometry32). Spatial sizes, channel counts and per-group K of forward/dgrad fit in
// int32 (checked by the host); pixel counts (M of forward/dgrad, K of wgrad) and all offsets are int64.
struct GemmParams : ConvGeometry32 {
  int64_t M;
  int N;
  int64_t K;
  int groups;
  int splits;                 // K splits (wgrad only; 1 otherwise), blockIdx.z = group * splits + split
  int64_t k_tiles_per_split;  // BK-wide K tiles per split
  int in_cg, out_cg;          // channels per group
  const void* a;              // forward: input; dgrad, wgrad: grad_output
  const void* a_aux;          // dgrad, wgrad: the op's output y for act'(y); nullptr when no activation
  const void* b;              // forward: weight [OC,KH,KW,Cg]; dgrad: weight [C,KH,KW,OCg]; wgrad: input
  int64_t grad_activation;    // activation whose derivative scales A as it is loaded (dgrad, wgrad)
  bool a_vec, b_vec;          // the operand may be moved in aligned 16-byte chunks
  DgradPhase dgrad;           // dgrad only
  EpilogueParams ep;
};

}  // namespace cuda
}  // namespace fastcnn
