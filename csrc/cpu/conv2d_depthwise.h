// The direct depthwise path of the CPU conv2d (conv2d_depthwise.cpp): groups == in_channels, no GEMM,
// vectorised over channels in NHWC and plane by plane in NCHW. Instantiated for float and double.
#pragma once

#include <cstdint>

#include "cpu/conv2d_geometry.h"

namespace fastcnn {
namespace cpu {

template <typename T>
void depthwise_forward_nhwc(const Geometry& g, const T* x, const T* wt, const T* bias, const T* res, T* out,
                            Activation act);
template <typename T>
void depthwise_forward_nchw(const Geometry& g, const T* x, const T* w, const T* bias, const T* res, T* out,
                            Activation act);
template <typename T>
void depthwise_backward_nhwc(const Geometry& g, const BackwardArgs<T>& a, const T* wt, T* grad_w_t,
                             T* grad_b);
template <typename T>
void depthwise_backward_nchw(const Geometry& g, const BackwardArgs<T>& a, T* grad_w, T* grad_b);

}  // namespace cpu
}  // namespace fastcnn
