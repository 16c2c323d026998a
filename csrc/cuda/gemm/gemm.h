// The fastcnn GEMM core: one tiled kernel computes C[M, N] = A[M, K] * B[N, K]^T per group for the three
// convolution GEMMs and for linear (a 1x1 convolution of 1x1 images). No im2col matrix is ever formed:
// the tile loaders gather A and B straight from the NHWC tensors.
//
//   mode      M                 N              K                 A (gathered)          B
//   forward   N*OH*OW pixels    OC/groups      KH*KW*Cg          input, (kh, kw, c)    weight [OC,KH,KW,Cg]
//   dgrad     N*H*W/phases      C/groups       taps*OCg          grad_out * act'(y)    weight [C,KH,KW,OCg]
//   wgrad     OC/groups         KH*KW*Cg       N*OH*OW pixels    grad_out * act'(y)    input, (kh, kw, c)
//
// dgrad runs one GEMM per stride phase of grad_input (stride_h * stride_w of them, one at stride 1) over
// only the taps that reach the phase's pixels, so no MMA multiplies the zeros a strided dgrad would
// otherwise gather. Forward and dgrad operands are contiguous along K ("K-major"): shared-memory tiles are [rows][BK].
// Wgrad operands are contiguous along M/N ("MN-major"): tiles are [BK][rows]. Either way a thread moves
// 16-byte chunks along the contiguous dimension. The math is warp-level mma.sync (fp16/bf16 m16n8k16,
// tf32 m16n8k8, fp32 accumulate) or, for fp64 and exact fp32, a 4x4-per-thread FMA tile.
//
// The pieces, device side: params.cuh (launch parameters), tile_iterators.cuh (where each operand's
// elements come from, per mode), tile_loader.cuh (global -> shared), kernel_traits.cuh (tile
// configurations), mainloop.cuh (the pipeline), warp_tile.cuh (MMA / FMA math), epilogue.cuh, kernel.cuh.
// Host side: this header and gemm.cu (geometry, tile and split choice, launch, reductions).
//
// Callers (conv2d.cu, linear.cu, conv2d_depthwise.cu) pass activation tensors dense NHWC in memory
// (channels_last 4-D tensors, or [rows, features] matrices seen as N x 1 x 1 x C); `output` is the op's
// forward output y, undefined when act is None.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "common/activation.h"
#include "common/checks.h"

namespace fastcnn {
namespace cuda {

// The kernels keep image extents, channel counts and per-group K in int32 (offsets are int64); raises
// a clear error for a convolution beyond that.
void check_int32_geometry(const Conv2dShape& s);

// output = act(conv(input, weight) + bias + residual); weight is [OC, KH, KW, Cg] in memory.
void conv_gemm_forward(const at::Tensor& input, const at::Tensor& weight_ohwi, const at::Tensor& bias,
                       const at::Tensor& residual, const at::Tensor& output, const Conv2dShape& s,
                       Activation act, bool allow_tf32);
// grad_input from grad_output * act'(output); weight is [C, KH, KW, OCg] in memory.
void conv_gemm_dgrad(const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& weight_ihwo,
                     const at::Tensor& grad_input, const Conv2dShape& s, Activation act, bool allow_tf32);
// grad_weight [OC, Cg, KH, KW] (contiguous) from grad_output * act'(output) and input.
void conv_gemm_wgrad(const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& input,
                     const at::Tensor& grad_weight, const Conv2dShape& s, Activation act, bool allow_tf32);
// grad_bias[c] = sum over rows r of act'(grad_output)[r, c], for a dense [rows, channels] grad_output.
void channel_grad_sum(const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& grad_bias,
                      int64_t rows, int64_t channels, Activation act);
// out[oc, c, kh, kw] (contiguous) = sum over s of partials[s * split_stride + ((oc * KH + kh) * KW + kw) * Cg
// + c], summed in split order so that the result does not depend on scheduling.
void reduce_weight_splits(const at::Tensor& partials, int64_t splits, int64_t split_stride,
                          const at::Tensor& out, int64_t cg, int64_t kernel_h, int64_t kernel_w);

}  // namespace cuda
}  // namespace fastcnn
