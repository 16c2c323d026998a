// Launch helpers shared by the fastcnn CUDA kernels: grid sizing for grid-stride loops, the current
// stream, and the thread/stride arithmetic those loops use. Every index is int64 so that one launch can
// cover tensors of more than 2^31 elements.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace fastcnn {
namespace cuda {

constexpr int kBlockThreads = 256;
constexpr int kWarpSize = 32;

// Multiprocessor count of the current device, queried once per device. (ATen's CUDAContext.h would give
// it too, but pulls in the cuBLAS/cuSPARSE headers, which not every toolkit install ships.)
inline int64_t current_sm_count() {
  static std::atomic<int> cached[256] = {};
  const int device = c10::cuda::current_device();
  TORCH_INTERNAL_ASSERT(device >= 0 && device < 256, "fastcnn: unexpected CUDA device index ", device);
  int count = cached[device].load(std::memory_order_relaxed);
  if (count == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    cached[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

// Blocks for a grid-stride loop over `work` independent items: as many as the work needs, capped at
// enough resident blocks to fill every SM (`blocks_per_sm` of `threads` each, 8 x 256 = 2048 threads,
// the Hopper per-SM limit), so that each thread loops a few times instead of the launch queueing waves.
inline unsigned grid_for(int64_t work, int threads = kBlockThreads, int blocks_per_sm = 8) {
  if (work <= 0) return 1;
  const int64_t needed = (work + threads - 1) / threads;
  const int64_t sms = current_sm_count();
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(needed, sms * blocks_per_sm)));
}

inline void check_cuda_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "fastcnn: ", name, " must be a CUDA tensor, got one on ", t.device());
}

inline cudaStream_t current_stream() {
  return c10::cuda::getCurrentCUDAStream().stream();
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
