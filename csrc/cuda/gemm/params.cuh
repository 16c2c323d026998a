// The parameters of one launch of the fastcnn GEMM core: C[M, N] = A[M, K] * B[N, K]^T per group, for
// the three convolution GEMMs and linear (a 1x1 convolution of 1x1 images). See gemm.h for what M, N
// and K are in each mode; the host fills these in gemm.cu.
#pragma once

#include <cstdint>

#include "cuda/common/conv_geometry.cuh"
#include "cuda/gemm/epilogue.cuh"

namespace fastcnn {
namespace cuda {

enum class GemmMode : int { kForward = 0, kDgrad = 1, kWgrad = 2 };

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
  EpilogueParams ep;
};

// q = a / b, r = a % b for non-negative a, with the cheaper 32-bit division whenever a fits.
__device__ __forceinline__ void divmod_nonneg(int64_t a, int b, int64_t& q, int& r) {
  if (a <= INT32_MAX) {
    const int a32 = static_cast<int>(a);
    q = a32 / b;
    r = a32 - static_cast<int>(q) * b;
  } else {
    q = a / b;
    r = static_cast<int>(a - q * b);
  }
}

}  // namespace cuda
}  // namespace fastcnn
