// Pooling window arithmetic shared by the CPU and CUDA pooling kernels (host and device code), so that
// both backends visit the same taps and divide by the same counts. The rules reproduce ATen's pooling
// kernels exactly: outputs, indices and divisors agree with PyTorch element for element. std::min/max
// are constexpr, so device code calls them under nvcc's --expt-relaxed-constexpr (set in setup.py).
#pragma once

#include <c10/macros/Macros.h>

#include <algorithm>
#include <cstdint>

namespace fastcnn {
namespace pool {

// A half-open range [begin, end) of input rows (or columns) read by one output row (or column).
struct Span {
  int64_t begin, end;
};

// Max pooling taps o*stride - pad + k*dilation, k in [0, kernel), restricted to [0, in): `begin` is the
// first tap inside the input, `end` bounds the last. Taps are visited from begin in steps of dilation.
C10_HOST_DEVICE inline Span max_pool_span(int64_t o, int64_t kernel, int64_t stride, int64_t pad,
                                          int64_t dilation, int64_t in) {
  const int64_t start = o * stride - pad;
  const int64_t end = std::min<int64_t>(start + (kernel - 1) * dilation + 1, in);
  const int64_t begin = start < 0 ? start + ((-start + dilation - 1) / dilation) * dilation : start;
  return {begin, end};
}

// The outputs o in [0, out) whose tap o * stride + offset lies inside [0, in).
C10_HOST_DEVICE inline Span tap_span(int64_t offset, int64_t stride, int64_t in, int64_t out) {
  const int64_t first = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  const int64_t last_numerator = in - 1 - offset;
  const int64_t stop = last_numerator < 0 ? 0 : std::min<int64_t>(out, last_numerator / stride + 1);
  return {std::min<int64_t>(first, stop), stop};
}

// Average pooling window clipped to the input, plus `padded`: the window's extent clipped only to
// input + padding. That padded extent is what count_include_pad divides by, so a ceil_mode window that
// hangs past the right padding does not count the part outside it (ATen's rule).
struct AvgSpan {
  int64_t begin, end, padded;
};

C10_HOST_DEVICE inline AvgSpan avg_pool_span(int64_t o, int64_t kernel, int64_t stride, int64_t pad,
                                             int64_t in) {
  const int64_t start = o * stride - pad;
  const int64_t stop = std::min<int64_t>(start + kernel, in + pad);
  return {std::max<int64_t>(start, 0), std::min<int64_t>(stop, in), stop - start};
}

// Output rows [begin, end) of an average pooling whose windows cover input row `i` (kernel, stride,
// padding; the window of output o starts at o * stride - pad).
C10_HOST_DEVICE inline Span avg_pool_covering(int64_t i, int64_t kernel, int64_t stride, int64_t pad,
                                              int64_t out) {
  const int64_t padded = i + pad;
  const int64_t first = padded < kernel ? 0 : (padded - kernel) / stride + 1;
  return {first, std::min<int64_t>(padded / stride + 1, out)};
}

// Adaptive pooling: output o of `out` reads input rows [floor(o*in/out), ceil((o+1)*in/out)). With the
// roles of in and out swapped, the same split gives the outputs whose windows contain input row o
// (clip its end to the output extent).
C10_HOST_DEVICE inline Span adaptive_span(int64_t o, int64_t out, int64_t in) {
  return {(o * in) / out, ((o + 1) * in + out - 1) / out};
}

}  // namespace pool
}  // namespace fastcnn
