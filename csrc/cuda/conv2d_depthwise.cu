// Depthwise conv2d (groups == in_channels, out channel oc reads input channel oc / multiplier). Algorithm:
// direct convolution, one output element per thread, accumulating in fp32 (fp64 for double).
//   forward NHWC: consecutive threads take consecutive output channels, so input and the filter (stored
//                 transposed as [KH*KW, OC]) are read coalesced; bias, residual and activation fused.
//   forward NCHW: a block covers part of one (n, oc) output plane; the plane's KH x KW filter is staged in
//                 shared memory, input rows are read coalesced along W.
//   dgrad (NHWC): one input element per thread, gathering the taps that reach it (stride divisibility),
//                 with act'(output) applied as grad_output is read.
//   wgrad (NHWC): per (32-channel block, tap, pixel split) a 32 x 8 block sums over its pixels and
//                 writes a partial; partials are reduced in split order (deterministic, no atomics).
// Layout: as in conv2d_depthwise.h. Measured: not yet measured (no kernel here has run on a GPU yet).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "cuda/common/conv_geometry.cuh"
#include "cuda/common/launch.cuh"
#include "cuda/conv2d_depthwise.h"
#include "cuda/gemm/gemm.h"

namespace fastcnn {
namespace cuda {
namespace {

struct DepthwiseParams : ConvGeometry32 {
  int batch;
  int multiplier;
};

// `per_image_int32`: the kernel indexes within one NHWC image in int32 (the NHWC forward and dgrad);
// the NCHW forward and the wgrad index in int64 and take larger images.
DepthwiseParams depthwise_params(const Conv2dShape& s, bool per_image_int32) {
  const int64_t limit = INT32_MAX;
  TORCH_CHECK(s.batch <= limit && s.in_channels <= limit && s.out_channels <= limit &&
                  s.in_h * s.in_w <= limit && s.out_h * s.out_w <= limit &&
                  s.kernel_h * s.kernel_w <= 65535 && s.out_channels * s.kernel_h * s.kernel_w <= limit,
              "fastcnn: depthwise conv2d geometry too large for the CUDA kernels");
  TORCH_CHECK(!per_image_int32 ||
                  (s.in_h * s.in_w * s.in_channels <= limit && s.out_h * s.out_w * s.out_channels <= limit),
              "fastcnn: depthwise conv2d images of more than 2^31 - 1 elements (", s.in_channels, "x", s.in_h,
              "x", s.in_w, ") need NCHW input on the CUDA kernels");
  DepthwiseParams p{};
  static_cast<ConvGeometry32&>(p) = conv_geometry32(s);
  p.batch = static_cast<int>(s.batch);
  p.multiplier = static_cast<int>(s.out_channels / s.in_channels);
  return p;
}

constexpr int kThreads = 256;

// (per-image element blocks, images) for the NHWC element-wise kernels, about 32 blocks per SM in all.
dim3 image_grid(int64_t per_image, int64_t batch) {
  const int64_t max_blocks = static_cast<int64_t>(current_sm_count()) * 32;
  const int64_t x = std::max<int64_t>(1, std::min(ceil_div(per_image, kThreads), max_blocks));
  const int64_t y = std::max<int64_t>(1, std::min({batch, ceil_div(max_blocks, x), int64_t{65535}}));
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y));
}

template <typename T, typename acc_t>
__device__ __forceinline__ acc_t epilogue_value(acc_t v, const T* bias, const T* residual, int oc,
                                                int64_t idx, Activation act) {
  if (bias != nullptr) v += static_cast<acc_t>(bias[oc]);
  if (residual != nullptr) v += static_cast<acc_t>(residual[idx]);
  return activate<acc_t>(v, act);
}

// blockIdx.y (strided): the image; blockIdx.x (strided): its NHWC output elements, whose per-image count
// the host keeps within int32 so that the index splits with 32-bit divisions.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    depthwise_forward_nhwc_kernel(const T* __restrict__ input, const T* __restrict__ weight_t,
                                  const T* __restrict__ bias, const T* __restrict__ residual,
                                  T* __restrict__ output, const DepthwiseParams p, int64_t activation) {
  using acc_t = at::opmath_type<T>;
  const Activation act = static_cast<Activation>(activation);
  const int per_image = p.out_h * p.out_w * p.out_c;
  for (int n = blockIdx.y; n < p.batch; n += gridDim.y) {
    const T* image = input + static_cast<int64_t>(n) * p.in_h * p.in_w * p.in_c;
    // int64: the increment must not overflow for images near 2^31 elements.
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < per_image;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int oc = static_cast<int>(i % p.out_c);
      const int pixel = static_cast<int>(i / p.out_c);
      const int ox = pixel % p.out_w;
      const int oy = pixel / p.out_w;
      const int c = oc / p.multiplier;
      acc_t acc = 0;
      for (int kh = 0; kh < p.kernel_h; ++kh) {
        const int iy = oy * p.stride_h - p.pad_h + kh * p.dilation_h;
        if (iy < 0 || iy >= p.in_h) continue;
        for (int kw = 0; kw < p.kernel_w; ++kw) {
          const int ix = ox * p.stride_w - p.pad_w + kw * p.dilation_w;
          if (ix < 0 || ix >= p.in_w) continue;
          acc += static_cast<acc_t>(image[(iy * p.in_w + ix) * p.in_c + c]) *
                 static_cast<acc_t>(weight_t[(kh * p.kernel_w + kw) * p.out_c + oc]);
        }
      }
      const int64_t idx = static_cast<int64_t>(n) * per_image + i;
      output[idx] = static_cast<T>(epilogue_value<T, acc_t>(acc, bias, residual, oc, idx, act));
    }
  }
}

// blockIdx.x: the (n, oc) plane; blockIdx.y (grid-strided): chunks of kThreads output pixels.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    depthwise_forward_nchw_kernel(const T* __restrict__ input, const T* __restrict__ weight,
                                  const T* __restrict__ bias, const T* __restrict__ residual,
                                  T* __restrict__ output, const DepthwiseParams p, int64_t activation) {
  using acc_t = at::opmath_type<T>;
  FASTCNN_EXTERN_SHARED(filter_raw);
  acc_t* filter = reinterpret_cast<acc_t*>(filter_raw);
  const Activation act = static_cast<Activation>(activation);
  const int64_t plane = blockIdx.x;
  const int oc = static_cast<int>(plane % p.out_c);
  const int64_t n = plane / p.out_c;
  const int c = oc / p.multiplier;
  const int taps = p.kernel_h * p.kernel_w;
  for (int i = threadIdx.x; i < taps; i += blockDim.x) {
    filter[i] = static_cast<acc_t>(weight[static_cast<int64_t>(oc) * taps + i]);
  }
  __syncthreads();
  const T* image = input + (n * p.in_c + c) * p.in_h * p.in_w;
  const int64_t plane_size = static_cast<int64_t>(p.out_h) * p.out_w;
  for (int64_t o = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; o < plane_size;
       o += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    const int oy = static_cast<int>(o / p.out_w);
    const int ox = static_cast<int>(o - static_cast<int64_t>(oy) * p.out_w);
    acc_t acc = 0;
    for (int kh = 0; kh < p.kernel_h; ++kh) {
      const int iy = oy * p.stride_h - p.pad_h + kh * p.dilation_h;
      if (iy < 0 || iy >= p.in_h) continue;
      for (int kw = 0; kw < p.kernel_w; ++kw) {
        const int ix = ox * p.stride_w - p.pad_w + kw * p.dilation_w;
        if (ix < 0 || ix >= p.in_w) continue;
        acc +=
            static_cast<acc_t>(image[static_cast<int64_t>(iy) * p.in_w + ix]) * filter[kh * p.kernel_w + kw];
      }
    }
    const int64_t idx = plane * plane_size + o;
    output[idx] = static_cast<T>(epilogue_value<T, acc_t>(acc, bias, residual, oc, idx, act));
  }
}

// Grid as for the NHWC forward, over input elements.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    depthwise_dgrad_nhwc_kernel(const T* __restrict__ grad_output, const T* __restrict__ output,
                                const T* __restrict__ weight, T* __restrict__ grad_input,
                                const DepthwiseParams p, int64_t activation) {
  using acc_t = at::opmath_type<T>;
  const Activation act = static_cast<Activation>(activation);
  const int per_image = p.in_h * p.in_w * p.in_c;
  const int taps = p.kernel_h * p.kernel_w;
  for (int n = blockIdx.y; n < p.batch; n += gridDim.y) {
    const int64_t out_image = static_cast<int64_t>(n) * p.out_h * p.out_w * p.out_c;
    const T* gy = grad_output + out_image;
    const T* y_out = output != nullptr ? output + out_image : nullptr;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < per_image;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int c = static_cast<int>(i % p.in_c);
      const int pixel = static_cast<int>(i / p.in_c);
      const int x = pixel % p.in_w;
      const int y = pixel / p.in_w;
      acc_t acc = 0;
      for (int kh = 0; kh < p.kernel_h; ++kh) {
        // Output row oy reaches input row y through tap kh iff oy * stride = y + pad - kh * dilation.
        const int ty = y + p.pad_h - kh * p.dilation_h;
        if (ty < 0) continue;
        const int oy = ty / p.stride_h;
        if (oy * p.stride_h != ty || oy >= p.out_h) continue;
        for (int kw = 0; kw < p.kernel_w; ++kw) {
          const int tx = x + p.pad_w - kw * p.dilation_w;
          if (tx < 0) continue;
          const int ox = tx / p.stride_w;
          if (ox * p.stride_w != tx || ox >= p.out_w) continue;
          const int base = (oy * p.out_w + ox) * p.out_c + c * p.multiplier;
          for (int m = 0; m < p.multiplier; ++m) {
            acc_t g = static_cast<acc_t>(gy[base + m]);
            if (y_out != nullptr) g = activation_grad<acc_t>(g, static_cast<acc_t>(y_out[base + m]), act);
            acc += g * static_cast<acc_t>(weight[(c * p.multiplier + m) * taps + kh * p.kernel_w + kw]);
          }
        }
      }
      grad_input[static_cast<int64_t>(n) * per_image + i] = static_cast<T>(acc);
    }
  }
}

constexpr int kWgradThreadsX = 32, kWgradThreadsY = 8;

// blockIdx.x: 32 output channels; blockIdx.y: the tap kh * KW + kw; blockIdx.z: a range of output pixels.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kWgradThreadsX* kWgradThreadsY)
    depthwise_wgrad_nhwc_kernel(const T* __restrict__ grad_output, const T* __restrict__ output,
                                const T* __restrict__ input, acc_t* __restrict__ partials,
                                const DepthwiseParams p, int64_t activation, int64_t pixels_per_split) {
  __shared__ acc_t partial[kWgradThreadsY][kWgradThreadsX];
  const Activation act = static_cast<Activation>(activation);
  const int oc = blockIdx.x * kWgradThreadsX + threadIdx.x;
  const int tap = blockIdx.y;
  const int kh = tap / p.kernel_w, kw = tap % p.kernel_w;
  const int64_t pixels = static_cast<int64_t>(p.batch) * p.out_h * p.out_w;
  const int64_t begin = static_cast<int64_t>(blockIdx.z) * pixels_per_split;
  const int64_t end = begin + pixels_per_split < pixels ? begin + pixels_per_split : pixels;
  acc_t sum = 0;
  if (oc < p.out_c) {
    const int c = oc / p.multiplier;
    for (int64_t pix = begin + threadIdx.y; pix < end; pix += kWgradThreadsY) {
      const int ox = static_cast<int>(pix % p.out_w);
      const int64_t t = pix / p.out_w;
      const int oy = static_cast<int>(t % p.out_h);
      const int64_t n = t / p.out_h;
      const int iy = oy * p.stride_h - p.pad_h + kh * p.dilation_h;
      const int ix = ox * p.stride_w - p.pad_w + kw * p.dilation_w;
      if (iy < 0 || iy >= p.in_h || ix < 0 || ix >= p.in_w) continue;
      const int64_t gi = pix * p.out_c + oc;
      acc_t g = static_cast<acc_t>(grad_output[gi]);
      if (output != nullptr) g = activation_grad<acc_t>(g, static_cast<acc_t>(output[gi]), act);
      sum += g * static_cast<acc_t>(input[((n * p.in_h + iy) * p.in_w + ix) * p.in_c + c]);
    }
  }
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && oc < p.out_c) {
    acc_t total = 0;
#pragma unroll
    for (int i = 0; i < kWgradThreadsY; ++i) total += partial[i][threadIdx.x];
    const int64_t taps = static_cast<int64_t>(p.kernel_h) * p.kernel_w;
    partials[static_cast<int64_t>(blockIdx.z) * p.out_c * taps + static_cast<int64_t>(oc) * taps + tap] =
        total;
  }
}

template <typename T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

}  // namespace

void depthwise_conv2d_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                              const at::Tensor& residual, const at::Tensor& output, const Conv2dShape& s,
                              Activation act, bool channels_last) {
  const DepthwiseParams p = depthwise_params(s, /*per_image_int32=*/channels_last);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "fastcnn_depthwise_forward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        if (channels_last) {
          const at::Tensor weight_t =
              weight.reshape({s.out_channels, s.kernel_h * s.kernel_w}).t().contiguous();
          launch_kernel<depthwise_forward_nhwc_kernel<scalar_t>>(
              image_grid(s.out_h * s.out_w * s.out_channels, s.batch), kThreads, 0, stream,
              input.const_data_ptr<scalar_t>(), weight_t.const_data_ptr<scalar_t>(),
              data_or_null<scalar_t>(bias), data_or_null<scalar_t>(residual),
              output.mutable_data_ptr<scalar_t>(), p, static_cast<int64_t>(act));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        } else {
          const size_t filter_bytes = static_cast<size_t>(s.kernel_h * s.kernel_w) * sizeof(acc_t);
          TORCH_CHECK(filter_bytes <= 48 * 1024, "fastcnn: depthwise kernel ", s.kernel_h, "x", s.kernel_w,
                      " is too large for the NCHW CUDA kernel; use channels_last input");
          const int64_t planes = s.batch * s.out_channels;
          TORCH_CHECK(planes <= INT32_MAX, "fastcnn: too many output planes (", planes,
                      ") for the depthwise kernel");
          const int64_t chunks = std::min<int64_t>(ceil_div(s.out_h * s.out_w, kThreads), 65535);
          const dim3 grid(static_cast<unsigned>(planes), static_cast<unsigned>(chunks));
          launch_kernel<depthwise_forward_nchw_kernel<scalar_t>>(
              grid, kThreads, filter_bytes, stream, input.const_data_ptr<scalar_t>(),
              weight.const_data_ptr<scalar_t>(), data_or_null<scalar_t>(bias),
              data_or_null<scalar_t>(residual), output.mutable_data_ptr<scalar_t>(), p,
              static_cast<int64_t>(act));
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
}

void depthwise_conv2d_dgrad(const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& weight,
                            const at::Tensor& grad_input, const Conv2dShape& s, Activation act) {
  const DepthwiseParams p = depthwise_params(s, /*per_image_int32=*/true);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_output.scalar_type(), "fastcnn_depthwise_dgrad", [&] {
        launch_kernel<depthwise_dgrad_nhwc_kernel<scalar_t>>(
            image_grid(s.in_h * s.in_w * s.in_channels, s.batch), kThreads, 0,
            c10::cuda::getCurrentCUDAStream(), grad_output.const_data_ptr<scalar_t>(),
            act != Activation::None ? output.const_data_ptr<scalar_t>() : nullptr,
            weight.const_data_ptr<scalar_t>(), grad_input.mutable_data_ptr<scalar_t>(), p,
            static_cast<int64_t>(act));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
}

void depthwise_conv2d_wgrad(const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& input,
                            const at::Tensor& grad_weight, const Conv2dShape& s, Activation act) {
  const DepthwiseParams p = depthwise_params(s, /*per_image_int32=*/false);
  const int64_t pixels = s.batch * s.out_h * s.out_w;
  const int64_t taps = s.kernel_h * s.kernel_w;
  const int64_t col_blocks = ceil_div(s.out_channels, kWgradThreadsX);
  const int64_t sm_count = current_sm_count();
  // Enough blocks for about two waves, each summing at least 64 pixels.
  int64_t splits = std::max<int64_t>(1, ceil_div(2 * sm_count * 8, col_blocks * taps));
  splits = std::min({splits, std::max<int64_t>(1, ceil_div(pixels, 64)), int64_t{65535}});
  const int64_t pixels_per_split = ceil_div(pixels, splits);
  splits = ceil_div(pixels, pixels_per_split);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_output.scalar_type(), "fastcnn_depthwise_wgrad", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const int64_t slice = s.out_channels * taps;
        at::Tensor partials =
            at::empty({splits * slice}, grad_output.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(taps),
                        static_cast<unsigned>(splits));
        const dim3 block(kWgradThreadsX, kWgradThreadsY);
        launch_kernel<depthwise_wgrad_nhwc_kernel<scalar_t, acc_t>>(
            grid, block, 0, c10::cuda::getCurrentCUDAStream(), grad_output.const_data_ptr<scalar_t>(),
            act != Activation::None ? output.const_data_ptr<scalar_t>() : nullptr,
            input.const_data_ptr<scalar_t>(), partials.mutable_data_ptr<acc_t>(), p,
            static_cast<int64_t>(act), pixels_per_split);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        reduce_weight_splits(partials, splits, slice, grad_weight, 1, s.kernel_h, s.kernel_w);
      });
}

}  // namespace cuda
}  // namespace fastcnn
