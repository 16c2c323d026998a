// Launch helpers shared by the fastcnn CUDA kernels: the one kernel-launch call, grid sizing for
// grid-stride loops, the current stream, and the thread/stride arithmetic those loops use. Every index is
// int64 so that one launch can cover tensors of more than 2^31 elements. This header is also the seam of
// the emulation build (FASTCNN_CUDA_EMU): there the kernels run on the host under csrc/emu's runtime,
// take CPU tensors and register on the CPU dispatch key.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <utility>

#include "cuda/common/helpers.cuh"
#include "cuda/common/shared.cuh"

#if FASTCNN_CUDA_EMU
#include "emu/runtime.h"
// The dispatch key the CUDA kernels register on: CPU tensors in the emulation build.
#define FASTCNN_CUDA_DISPATCH_KEY CPU
#else
#define FASTCNN_CUDA_DISPATCH_KEY CUDA
#endif

namespace fastcnn {
namespace cuda {

// Launches Kernel<<<grid, block, shared_bytes, stream>>>(args...); every kernel of fastcnn goes through
// here, so that the emulation build can run it. The caller still checks the launch
// (C10_CUDA_KERNEL_LAUNCH_CHECK).
template <auto Kernel, typename... Args>
void launch_kernel(dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream, Args&&... args) {
#if FASTCNN_CUDA_EMU
  (void)stream;
  ::fastcnn::emu::launch<Kernel>(grid, block, shared_bytes, std::forward<Args>(args)...);
#else
  // clang-format takes .cuh files for C++ and would split the triple chevrons.
  // clang-format off
  Kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
  // clang-format on
#endif
}

constexpr int kBlockThreads = 256;
constexpr int kWarpSize = 32;

// An attribute of the current device, queried once per device and attribute. (ATen's CUDAContext.h would
// give them too, but pulls in the cuBLAS/cuSPARSE headers, which not every toolkit install ships.) The
// emulated device can be reconfigured (torch.ops.fastcnn_emu.configure: another SM count or compute
// capability), after which its attributes are queried afresh.
template <cudaDeviceAttr kAttr>
int64_t cached_device_attribute() {
  static std::atomic<int> cached[256] = {};
#if FASTCNN_CUDA_EMU
  static std::atomic<uint64_t> seen_generation{0};
  const uint64_t generation = ::fastcnn::emu::configuration_generation();
  if (seen_generation.exchange(generation, std::memory_order_relaxed) != generation) {
    for (auto& c : cached) c.store(0, std::memory_order_relaxed);
  }
#endif
  const int device = c10::cuda::current_device();
  TORCH_INTERNAL_ASSERT(device >= 0 && device < 256, "fastcnn: unexpected CUDA device index ", device);
  int value = cached[device].load(std::memory_order_relaxed);
  if (value == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&value, kAttr, device));
    cached[device].store(value, std::memory_order_relaxed);
  }
  return value;
}

inline int64_t current_sm_count() {
  return cached_device_attribute<cudaDevAttrMultiProcessorCount>();
}

inline int64_t current_cc_major() {
  return cached_device_attribute<cudaDevAttrComputeCapabilityMajor>();
}

// Blocks for a grid-stride loop over `work` independent items: as many as the work needs, capped at
// enough resident blocks to fill every SM (`blocks_per_sm` of `threads` each, 8 x 256 = 2048 threads,
// the Hopper per-SM limit), so that each thread loops a few times instead of the launch queueing waves.
inline unsigned grid_for(int64_t work, int threads = kBlockThreads, int blocks_per_sm = 8) {
  if (work <= 0) return 1;
  const int64_t needed = ceil_div(work, threads);
  const int64_t sms = current_sm_count();
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(needed, sms * blocks_per_sm)));
}

inline void check_cuda_tensor(const at::Tensor& t, const char* name) {
#if FASTCNN_CUDA_EMU
  TORCH_CHECK(t.is_cpu(), "fastcnn: ", name,
              " must be a CPU tensor for the emulated CUDA kernels, got one on ", t.device());
#else
  TORCH_CHECK(t.is_cuda(), "fastcnn: ", name, " must be a CUDA tensor, got one on ", t.device());
#endif
}

inline cudaStream_t current_stream() {
  return c10::cuda::getCurrentCUDAStream().stream();
}

// Position of flat index i in a dense [outer][h][w][inner] iteration space: an NCHW element loop is
// (plane, y, x) with inner = 1, an NHWC loop over channel vectors is (n, y, x, vector).
struct ImageIndex {
  int64_t outer, y, x, inner;
};

C10_HOST_DEVICE inline ImageIndex image_index(int64_t i, int64_t inner, int64_t h, int64_t w) {
  ImageIndex r;
  r.inner = i % inner;
  int64_t rest = i / inner;
  r.x = rest % w;
  rest /= w;
  r.y = rest % h;
  r.outer = rest / h;
  return r;
}

__device__ __forceinline__ int64_t global_thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ int64_t grid_thread_count() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Warps: kernels that give one warp a unit of work loop over units with these, warp-uniformly.
__device__ __forceinline__ int64_t global_warp_index() {
  return global_thread_index() / kWarpSize;
}

__device__ __forceinline__ int64_t grid_warp_count() {
  return grid_thread_count() / kWarpSize;
}

}  // namespace cuda
}  // namespace fastcnn
