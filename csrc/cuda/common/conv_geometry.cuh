// The convolution geometry a CUDA conv kernel reads, in int32 (the host checks that it fits first: the
// GEMM core in gemm.cu, the depthwise kernels in conv2d_depthwise.cu). Kernel parameter structs derive
// from it, so that one function fills it from the checked Conv2dShape.
#pragma once

#include "common/checks.h"

namespace fastcnn {
namespace cuda {

struct ConvGeometry32 {
  int in_h, in_w, in_c, out_h, out_w, out_c;
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
};

inline ConvGeometry32 conv_geometry32(const Conv2dShape& s) {
  ConvGeometry32 g{};
  g.in_h = static_cast<int>(s.in_h);
  g.in_w = static_cast<int>(s.in_w);
  g.in_c = static_cast<int>(s.in_channels);
  g.out_h = static_cast<int>(s.out_h);
  g.out_w = static_cast<int>(s.out_w);
  g.out_c = static_cast<int>(s.out_channels);
  g.kernel_h = static_cast<int>(s.kernel_h);
  g.kernel_w = static_cast<int>(s.kernel_w);
  g.stride_h = static_cast<int>(s.stride_h);
  g.stride_w = static_cast<int>(s.stride_w);
  g.pad_h = static_cast<int>(s.pad_h);
  g.pad_w = static_cast<int>(s.pad_w);
  g.dilation_h = static_cast<int>(s.dilation_h);
  g.dilation_w = static_cast<int>(s.dilation_w);
  return g;
}

}  // namespace cuda
}  // namespace fastcnn
