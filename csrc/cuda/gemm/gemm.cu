// Host side of the fastcnn GEMM core (device side: the other files of cuda/gemm/): the geometry of each
// convolution GEMM, the tile configuration and split-K choice, the launch, and the reductions that finish
// a split (split-K partial sums of the weight gradient, of a forward/dgrad output through its epilogue)
// and the per-channel bias gradients.
// Every reduction runs in a fixed order, so results do not depend on scheduling. Figures and the
// reasons behind the choices: benchmarks/NOTES.md.
#include "cuda/gemm/gemm.h"

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <numeric>

#include "common/activation.h"
#include "cuda/common/launch.cuh"
#include "cuda/gemm/kernel.cuh"

namespace fastcnn {
namespace cuda {
namespace {

constexpr int64_t kInt32Max = INT32_MAX;

}  // namespace

// Groups are limited where they go on the grid (launch_gemm), not here: depthwise convolutions never put
// them there.
void check_int32_geometry(const Conv2dShape& s) {
  const int64_t cg = s.in_channels / s.groups, ocg = s.out_channels / s.groups;
  const bool fits = s.in_h * s.in_w <= kInt32Max && s.out_h * s.out_w <= kInt32Max &&
                    s.in_channels <= kInt32Max && s.out_channels <= kInt32Max &&
                    s.kernel_h * s.kernel_w * std::max(cg, ocg) <= kInt32Max;
  TORCH_CHECK(fits, "fastcnn: conv2d geometry too large for the CUDA kernels (input ", s.in_h, "x", s.in_w,
              ", output ", s.out_h, "x", s.out_w, ", channels ", s.in_channels, "->", s.out_channels,
              ", kernel ", s.kernel_h, "x", s.kernel_w, ", groups ", s.groups, ")");
}

namespace {

GemmParams geometry_params(const Conv2dShape& s) {
  GemmParams p{};
  static_cast<ConvGeometry32&>(p) = conv_geometry32(s);
  p.groups = static_cast<int>(s.groups);
  p.splits = 1;
  p.in_cg = static_cast<int>(s.in_channels / s.groups);
  p.out_cg = static_cast<int>(s.out_channels / s.groups);
  return p;
}

// ---- split reductions -----------------------------------------------------------------------------------

template <typename T, typename acc_t>
__global__ void reduce_weight_splits_kernel(const acc_t* __restrict__ partials, T* __restrict__ out,
                                            int64_t count, int64_t splits, int64_t split_stride, int cg,
                                            int kernel_h, int kernel_w) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < count; idx += step) {
    int64_t t = idx;
    const int kw = static_cast<int>(t % kernel_w);
    t /= kernel_w;
    const int kh = static_cast<int>(t % kernel_h);
    t /= kernel_h;
    const int c = static_cast<int>(t % cg);
    const int64_t oc = t / cg;
    const int64_t src = ((oc * kernel_h + kh) * kernel_w + kw) * cg + c;
    acc_t sum = 0;
    for (int64_t s = 0; s < splits; ++s) sum += partials[s * split_stride + src];
    out[idx] = static_cast<T>(sum);
  }
}

// Per (column block, row split): the block's 32 x 8 threads sum act'(grad_output) down their rows, then
// thread row 0 adds the 8 partial sums in a fixed order.
constexpr int kColSumThreadsX = 32, kColSumThreadsY = 8;

template <typename T, typename acc_t>
__global__ void __launch_bounds__(kColSumThreadsX* kColSumThreadsY)
    channel_partial_sum_kernel(const T* __restrict__ grad_output, const T* __restrict__ output,
                               int64_t activation, int64_t rows, int64_t channels, int64_t rows_per_split,
                               acc_t* __restrict__ partials) {
  __shared__ acc_t partial[kColSumThreadsY][kColSumThreadsX];
  const Activation act = static_cast<Activation>(activation);
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kColSumThreadsX + threadIdx.x;
  const int64_t row_begin = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  const int64_t row_end = std::min(rows, row_begin + rows_per_split);
  acc_t sum = 0;
  if (col < channels) {
    for (int64_t r = row_begin + threadIdx.y; r < row_end; r += kColSumThreadsY) {
      const int64_t idx = r * channels + col;
      acc_t g = static_cast<acc_t>(grad_output[idx]);
      if (output != nullptr) g = activation_grad<acc_t>(g, static_cast<acc_t>(output[idx]), act);
      sum += g;
    }
  }
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && col < channels) {
    acc_t total = 0;
#pragma unroll
    for (int i = 0; i < kColSumThreadsY; ++i) total += partial[i][threadIdx.x];
    partials[static_cast<int64_t>(blockIdx.y) * channels + col] = total;
  }
}

// Forward/dgrad split over K: out = epilogue(sum over splits of the acc_t partials), element by element in
// split order; `ep` is the launch's epilogue with the real output, rows mapped as in the GEMM.
template <typename T, typename acc_t>
__global__ void reduce_split_partials_kernel(const EpilogueParams ep, const acc_t* __restrict__ partials,
                                             int64_t splits, int64_t M, int N, int groups) {
  const int64_t count = static_cast<int64_t>(groups) * M * N;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < count; idx += step) {
    const int col = static_cast<int>(idx % N);
    const int64_t t = idx / N;
    const int64_t row = t % M;
    const int g = static_cast<int>(t / M);
    const int64_t off = epilogue_row_offset(ep, M, g, row);
    acc_t sum = 0;
    for (int64_t s = 0; s < splits; ++s) sum += partials[s * ep.split_stride + off + col];
    epilogue_store<T, acc_t, false>(ep, N, g, 0, off, col, sum);
  }
}

// ---- GEMM launches --------------------------------------------------------------------------------------

// K splits: enough blocks for about two waves, at least 4 K tiles per split, every split non-empty.
int64_t choose_k_splits(int64_t blocks, int64_t k_tiles, int64_t groups, int64_t sm_count) {
  if (k_tiles == 0) return 1;  // a dgrad phase that no tap reaches: nothing to split
  int64_t splits = std::max<int64_t>(1, ceil_div(2 * sm_count, blocks));
  splits = std::min({splits, std::max<int64_t>(1, k_tiles / 4), int64_t{256}, 65535 / groups});
  splits = std::max<int64_t>(splits, 1);
  const int64_t tiles_per_split = ceil_div(k_tiles, splits);
  return ceil_div(k_tiles, tiles_per_split);
}

template <typename T, typename Cfg, GemmMode kMode>
void launch_gemm(GemmParams p, const at::Tensor& like, const at::Tensor& grad_weight, const Conv2dShape& s) {
  using acc_t = at::opmath_type<T>;
  using Traits = GemmKernelTraits<T, Cfg, kMode>;
  const int64_t tiles_m = ceil_div(p.M, Cfg::kBM);
  const int64_t tiles_n = ceil_div(p.N, Cfg::kBN);
  const int64_t k_tiles = ceil_div(p.K, Cfg::kBK);
  if (tiles_m == 0 || tiles_n == 0) return;
  TORCH_CHECK(tiles_m <= kInt32Max && tiles_n <= 65535, "fastcnn: GEMM of ", p.M, "x", p.N,
              " is too large for one launch");
  at::Tensor workspace;
  const int64_t blocks = tiles_m * tiles_n * p.groups;
  const int64_t sm_count = current_sm_count();
  const EpilogueParams final_ep = p.ep;
  if constexpr (kMode == GemmMode::kWgrad) {
    const int64_t splits = choose_k_splits(blocks, k_tiles, p.groups, sm_count);
    p.splits = static_cast<int>(splits);
    p.k_tiles_per_split = ceil_div(k_tiles, splits);
    const int64_t slice = static_cast<int64_t>(p.groups) * p.M * p.N;
    workspace = at::empty({splits * slice}, like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    p.ep.out = workspace.data_ptr();
    p.ep.split_stride = slice;
  } else {
    // Fewer blocks than two waves: split K too, into acc_t partials that one more kernel adds up.
    const int64_t splits = blocks < 2 * sm_count ? choose_k_splits(blocks, k_tiles, p.groups, sm_count) : 1;
    p.splits = static_cast<int>(splits);
    p.k_tiles_per_split = ceil_div(k_tiles, splits);
    if (splits > 1) {
      workspace = at::empty({splits * p.ep.split_stride},
                            like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      p.ep.out = workspace.data_ptr();
      p.ep.to_partials = true;
    }
  }
  constexpr int64_t kV = kVecWidth<acc_t>;
  p.ep.raw_vec_ok = p.ep.ldc % kV == 0 && p.ep.col_group_stride % kV == 0 && p.ep.split_stride % kV == 0;
  TORCH_CHECK(static_cast<int64_t>(p.groups) * p.splits <= 65535, "fastcnn: too many groups (", p.groups,
              ") for one launch");

  auto kernel = conv_gemm_kernel<T, Cfg, kMode>;
  constexpr size_t smem_bytes = Traits::kSmemBytes;
  if constexpr (smem_bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem_bytes)));
  }
  const dim3 grid(static_cast<unsigned>(tiles_m), static_cast<unsigned>(tiles_n),
                  static_cast<unsigned>(p.groups * p.splits));
  launch_kernel<conv_gemm_kernel<T, Cfg, kMode>>(grid, Cfg::kThreads, smem_bytes,
                                                 c10::cuda::getCurrentCUDAStream(), p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  if constexpr (kMode == GemmMode::kWgrad) {
    reduce_weight_splits(workspace, p.splits, p.ep.split_stride, grad_weight, p.in_cg, s.kernel_h,
                         s.kernel_w);
  } else {
    if (p.splits > 1) {
      launch_kernel<reduce_split_partials_kernel<T, acc_t>>(
          grid_for(static_cast<int64_t>(p.groups) * p.M * p.N), kBlockThreads, 0,
          c10::cuda::getCurrentCUDAStream(), final_ep, workspace.const_data_ptr<acc_t>(),
          static_cast<int64_t>(p.splits), p.M, p.N, p.groups);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
}

// MMA rows and columns a bm x bn tile issues per useful one on an M x N GEMM (1.0: no tile padding).
double tile_padding(int64_t M, int64_t N, int64_t bm, int64_t bn) {
  return static_cast<double>(ceil_div(M, bm) * bm) * static_cast<double>(ceil_div(N, bn) * bn) /
         (static_cast<double>(M) * static_cast<double>(N));
}

// Tile choice: 128x128 blocks (8 warps, 4 stages) when they alone fill the machine or for wgrad (whose K
// splits fill it), and when they pad M and N no more than 64x64 blocks would (wgrad of 64 output
// channels: half of a 128-row tile would be padding); 64x64 blocks (4 warps, 3 stages) otherwise. Exact
// fp32 and fp64 take the FMA tile.
template <typename T, GemmMode kMode>
void run_gemm(const GemmParams& p, bool allow_tf32, const at::Tensor& like, const at::Tensor& grad_weight,
              const Conv2dShape& s) {
  if constexpr (std::is_same_v<T, double>) {
    launch_gemm<T, FmaConfig<T>, kMode>(p, like, grad_weight, s);
  } else {
    const int64_t cc_major = current_cc_major();
    const bool has_mma = cc_major >= 8;
    if constexpr (std::is_same_v<T, float>) {
      if (!allow_tf32 || !has_mma) {
        launch_gemm<T, FmaConfig<T>, kMode>(p, like, grad_weight, s);
        return;
      }
    } else {
      TORCH_CHECK(has_mma,
                  "fastcnn: float16/bfloat16 convolution needs compute capability 8.0 or newer, got ",
                  cc_major, ".x");
    }
    const int64_t big_blocks = ceil_div(p.M, 128) * ceil_div(p.N, 128) * p.groups;
    const bool fills = kMode == GemmMode::kWgrad || big_blocks >= current_sm_count();
    const bool pads_no_more = tile_padding(p.M, p.N, 128, 128) <= 1.05 * tile_padding(p.M, p.N, 64, 64);
    if (p.N > 64 && fills && pads_no_more) {
      launch_gemm<T, MmaConfig<T, 128, 128, 2, 4, 4>, kMode>(p, like, grad_weight, s);
    } else {
      launch_gemm<T, MmaConfig<T, 64, 64, 2, 2, 3>, kMode>(p, like, grad_weight, s);
    }
  }
}

template <GemmMode kMode>
void dispatch_gemm(const GemmParams& p, bool allow_tf32, const at::Tensor& like,
                   const at::Tensor& grad_weight, const Conv2dShape& s) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, like.scalar_type(), "fastcnn_conv_gemm",
                                  [&] { run_gemm<scalar_t, kMode>(p, allow_tf32, like, grad_weight, s); });
}

const void* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr() : nullptr;
}

}  // namespace

void conv_gemm_forward(const at::Tensor& input, const at::Tensor& weight_ohwi, const at::Tensor& bias,
                       const at::Tensor& residual, const at::Tensor& output, const Conv2dShape& s,
                       Activation act, bool allow_tf32) {
  check_int32_geometry(s);
  const int64_t vec = 16 / input.element_size();
  GemmParams p = geometry_params(s);
  p.M = s.batch * s.out_h * s.out_w;
  p.N = p.out_cg;
  p.K = s.kernel_h * s.kernel_w * p.in_cg;
  p.a = input.const_data_ptr();
  p.b = weight_ohwi.const_data_ptr();
  p.a_vec = p.b_vec = p.in_cg % vec == 0 && is_aligned(p.a, 16) && is_aligned(p.b, 16);
  p.ep.out = output.data_ptr();
  p.ep.bias = ptr_or_null(bias);
  p.ep.residual = ptr_or_null(residual);
  p.ep.ldc = s.out_channels;
  p.ep.row_group_stride = 0;
  p.ep.col_group_stride = p.out_cg;
  p.ep.activation = static_cast<int64_t>(act);
  p.ep.split_stride = output.numel();  // one slice per K split, should the launch split K
  p.ep.vec_ok = s.out_channels % vec == 0 && p.out_cg % vec == 0 && is_aligned(p.ep.out, 16) &&
                (p.ep.bias == nullptr || is_aligned(p.ep.bias, 16)) &&
                (p.ep.residual == nullptr || is_aligned(p.ep.residual, 16));
  dispatch_gemm<GemmMode::kForward>(p, allow_tf32, input, at::Tensor(), s);
}

namespace {

// The taps t of one kernel axis that reach input position `phase` (mod stride) from an output position:
// t * dilation = phase + pad (mod stride). They repeat every stride / gcd(stride, dilation) taps.
struct PhaseTaps {
  int64_t first, step, count;
};

PhaseTaps phase_taps(int64_t kernel, int64_t stride, int64_t dilation, int64_t pad, int64_t phase) {
  const int64_t step = stride / std::gcd(stride, dilation);
  for (int64_t t = 0; t < std::min(kernel, step); ++t) {
    if ((t * dilation - phase - pad) % stride == 0) return {t, step, (kernel - 1 - t) / step + 1};
  }
  return {0, step, 0};
}

}  // namespace

// One GEMM per stride phase (py, px) of grad_input: M = N * rows_h * rows_w pixels y = py + yq * stride,
// K = taps_h * taps_w * OCg over only the taps that reach them, B = the weight's rows at those taps
// (copied once per phase; the weight is small). A phase no tap reaches is a K = 0 GEMM: zeros.
void conv_gemm_dgrad(const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& weight_ihwo,
                     const at::Tensor& grad_input, const Conv2dShape& s, Activation act, bool allow_tf32) {
  check_int32_geometry(s);
  const int64_t vec = 16 / grad_output.element_size();
  GemmParams p = geometry_params(s);
  p.N = p.in_cg;
  p.a = grad_output.const_data_ptr();
  p.a_aux = act != Activation::None ? output.const_data_ptr() : nullptr;
  p.grad_activation = static_cast<int64_t>(act);
  p.a_vec = p.out_cg % vec == 0 && is_aligned(p.a, 16) && (p.a_aux == nullptr || is_aligned(p.a_aux, 16));
  p.ep.out = grad_input.data_ptr();
  p.ep.ldc = s.in_channels;
  p.ep.row_group_stride = 0;
  p.ep.col_group_stride = p.in_cg;
  p.ep.activation = 0;
  p.ep.split_stride = grad_input.numel();  // one slice per K split, should a phase split K
  p.ep.vec_ok = s.in_channels % vec == 0 && p.in_cg % vec == 0 && is_aligned(p.ep.out, 16);
  const bool strided = s.stride_h > 1 || s.stride_w > 1;
  for (int64_t py = 0; py < std::min(s.stride_h, s.in_h); ++py) {
    const PhaseTaps th = phase_taps(s.kernel_h, s.stride_h, s.dilation_h, s.pad_h, py);
    for (int64_t px = 0; px < std::min(s.stride_w, s.in_w); ++px) {
      const PhaseTaps tw = phase_taps(s.kernel_w, s.stride_w, s.dilation_w, s.pad_w, px);
      DgradPhase& d = p.dgrad;
      d.rows_h = static_cast<int>(ceil_div(s.in_h - py, s.stride_h));
      d.rows_w = static_cast<int>(ceil_div(s.in_w - px, s.stride_w));
      d.taps_h = static_cast<int>(th.count);
      d.taps_w = static_cast<int>(std::max<int64_t>(tw.count, 1));  // a divisor in the iterators' setup
      d.oy0 = static_cast<int>((py + s.pad_h - th.first * s.dilation_h) / s.stride_h);
      d.ox0 = static_cast<int>((px + s.pad_w - tw.first * s.dilation_w) / s.stride_w);
      d.oy_step = static_cast<int>(th.step * s.dilation_h / s.stride_h);
      d.ox_step = static_cast<int>(tw.step * s.dilation_w / s.stride_w);
      p.M = s.batch * d.rows_h * d.rows_w;
      p.K = th.count * tw.count * p.out_cg;
      at::Tensor w = weight_ihwo;
      if (p.K > 0 && (th.count != s.kernel_h || tw.count != s.kernel_w)) {
        w = weight_ihwo.view({s.in_channels, s.kernel_h, s.kernel_w, p.out_cg})
                .slice(1, th.first, s.kernel_h, th.step)
                .slice(2, tw.first, s.kernel_w, tw.step)
                .contiguous();
      }
      p.b = w.const_data_ptr();
      p.b_vec = p.out_cg % vec == 0 && is_aligned(p.b, 16);
      p.ep.phase = strided ? RowPhase{d.rows_h,
                                      d.rows_w,
                                      static_cast<int>(py),
                                      static_cast<int>(px),
                                      static_cast<int>(s.stride_h),
                                      static_cast<int>(s.stride_w),
                                      static_cast<int>(s.in_h),
                                      static_cast<int>(s.in_w)}
                           : RowPhase{};
      dispatch_gemm<GemmMode::kDgrad>(p, allow_tf32, grad_output, at::Tensor(), s);
    }
  }
}

void conv_gemm_wgrad(const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& input,
                     const at::Tensor& grad_weight, const Conv2dShape& s, Activation act, bool allow_tf32) {
  check_int32_geometry(s);
  const int64_t vec = 16 / grad_output.element_size();
  GemmParams p = geometry_params(s);
  p.M = p.out_cg;
  p.N = static_cast<int>(s.kernel_h * s.kernel_w * p.in_cg);
  p.K = s.batch * s.out_h * s.out_w;
  p.a = grad_output.const_data_ptr();
  p.a_aux = act != Activation::None ? output.const_data_ptr() : nullptr;
  p.grad_activation = static_cast<int64_t>(act);
  p.b = input.const_data_ptr();
  p.a_vec = p.out_cg % vec == 0 && is_aligned(p.a, 16) && (p.a_aux == nullptr || is_aligned(p.a_aux, 16));
  p.b_vec = p.in_cg % vec == 0 && is_aligned(p.b, 16);
  p.ep.ldc = p.N;
  p.ep.row_group_stride = p.M;
  p.ep.col_group_stride = 0;
  p.ep.activation = 0;  // workspace, output, split stride and vector flag are set with the split count
  dispatch_gemm<GemmMode::kWgrad>(p, allow_tf32, grad_output, grad_weight, s);
}

void reduce_weight_splits(const at::Tensor& partials, int64_t splits, int64_t split_stride,
                          const at::Tensor& out, int64_t cg, int64_t kernel_h, int64_t kernel_w) {
  const int64_t count = out.numel();
  if (count == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "fastcnn_reduce_splits", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(partials.scalar_type() == c10::CppTypeToScalarType<acc_t>::value,
                "fastcnn: split workspace has dtype ", partials.scalar_type());
    launch_kernel<reduce_weight_splits_kernel<scalar_t, acc_t>>(
        grid_for(count), kBlockThreads, 0, c10::cuda::getCurrentCUDAStream(),
        partials.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), count, splits, split_stride,
        static_cast<int>(cg), static_cast<int>(kernel_h), static_cast<int>(kernel_w));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void channel_grad_sum(const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& grad_bias,
                      int64_t rows, int64_t channels, Activation act) {
  if (channels == 0) return;
  const int64_t col_blocks = ceil_div(channels, kColSumThreadsX);
  TORCH_CHECK(col_blocks <= kInt32Max, "fastcnn: too many channels (", channels, ") for the bias gradient");
  const int64_t sm_count = current_sm_count();
  int64_t splits = std::max<int64_t>(1, ceil_div(4 * sm_count, col_blocks));
  splits = std::min({splits, std::max<int64_t>(1, ceil_div(rows, 64)), int64_t{1024}});
  const int64_t rows_per_split = std::max<int64_t>(1, ceil_div(rows, splits));
  splits = std::max<int64_t>(1, ceil_div(rows, rows_per_split));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_output.scalar_type(), "fastcnn_bias_grad", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        at::Tensor partials = at::empty({splits * channels},
                                        grad_output.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(splits));
        const dim3 block(kColSumThreadsX, kColSumThreadsY);
        launch_kernel<channel_partial_sum_kernel<scalar_t, acc_t>>(
            grid, block, 0, c10::cuda::getCurrentCUDAStream(), grad_output.const_data_ptr<scalar_t>(),
            act != Activation::None ? output.const_data_ptr<scalar_t>() : nullptr, static_cast<int64_t>(act),
            rows, channels, rows_per_split, partials.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        reduce_weight_splits(partials, splits, channels, grad_bias, 1, 1, 1);
      });
}

}  // namespace cuda
}  // namespace fastcnn
