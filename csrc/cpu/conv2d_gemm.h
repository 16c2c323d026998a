// The GEMM path of the CPU conv2d (conv2d_gemm.cpp): forward NHWC (implicit GEMM) and NCHW (im2col
// chunks), and the backward (dgrad + wgrad + bias gradient) over a static task split. Instantiated for
// float and double.
#pragma once

#include <cstdint>

#include "cpu/conv2d_geometry.h"

namespace fastcnn {
namespace cpu {

template <typename T>
void conv_forward_nhwc(const Geometry& g, const T* x, const T* w, const T* bias, const T* res, T* out,
                       Activation act);
template <typename T>
void conv_forward_nchw(const Geometry& g, const T* x, const T* w, const T* bias, const T* res, T* out,
                       Activation act);
template <typename T>
void conv_backward_gemm(const Geometry& g, const BackwardArgs<T>& a, int64_t slots, bool sample_owned,
                        T* private_grads);

}  // namespace cpu
}  // namespace fastcnn
