// Single-warp kernels that exercise each emulated instruction through fastcnn's own wrappers
// (cuda/common/mma.cuh), on inputs chosen by the caller (lane-coded or random). The same source is
// compiled twice: into the emulation extension (tests/test_emulator.py compares the results with plain
// references and with the hardware goldens) and by scripts/emu_goldens.cu for a real GPU, which writes
// those goldens. Launch each with one block of 32 threads and kInstructionTestSharedBytes of dynamic
// shared memory.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/common/mma.cuh"
#include "cuda/common/shared.cuh"

namespace fastcnn {
namespace emu_tests {

constexpr int kInstructionTestSharedBytes = 4096;
// Rows of the test matrices in shared memory are 16 b16 elements (32 bytes) apart, so that the row
// addresses are not simply consecutive.
constexpr int kPitch = 16;

// src: Num 8x8 b16 matrices, row-major, one after another; out[lane * Num + i] = register i of `lane`.
template <int Num, bool Trans>
__global__ void ldmatrix_test_kernel(const uint16_t* src, uint32_t* out) {
  FASTCNN_EXTERN_SHARED(smem_raw);
  uint16_t* smem = reinterpret_cast<uint16_t*>(smem_raw);
  const int lane = threadIdx.x;
  for (int i = lane; i < Num * 64; i += 32) smem[(i / 8) * kPitch + i % 8] = src[i];
  __syncthreads();
  const int row = lane % (8 * Num);  // lanes past the used ones repeat valid addresses
  uint32_t r[Num];
  const void* addr = smem + row * kPitch;
  if constexpr (Num == 1) {
    if constexpr (Trans) {
      cuda::ldmatrix_x1_trans(r, addr);
    } else {
      cuda::ldmatrix_x1(r, addr);
    }
  } else if constexpr (Num == 2) {
    if constexpr (Trans) {
      cuda::ldmatrix_x2_trans(r, addr);
    } else {
      cuda::ldmatrix_x2(r, addr);
    }
  } else {
    if constexpr (Trans) {
      cuda::ldmatrix_x4_trans(r, addr);
    } else {
      cuda::ldmatrix_x4(r, addr);
    }
  }
  for (int i = 0; i < Num; ++i) out[lane * Num + i] = r[i];
}

// Register-level mma: lane l's a[4], b[2], c[4] come from a[l*4..], b[l*2..], c[l*4..]; d likewise.
// Kind 0: f16 m16n8k16, 1: bf16 m16n8k16, 2: tf32 m16n8k8.
template <int Kind>
__global__ void mma_test_kernel(const uint32_t* a, const uint32_t* b, const float* c, float* d) {
  const int lane = threadIdx.x;
  uint32_t af[4];
  float acc[4];
  for (int i = 0; i < 4; ++i) {
    af[i] = a[lane * 4 + i];
    acc[i] = c[lane * 4 + i];
  }
  if constexpr (Kind == 0) {
    cuda::mma_m16n8k16<c10::Half>(acc, af, b[lane * 2], b[lane * 2 + 1]);
  } else if constexpr (Kind == 1) {
    cuda::mma_m16n8k16<c10::BFloat16>(acc, af, b[lane * 2], b[lane * 2 + 1]);
  } else {
    cuda::mma_m16n8k8_tf32(acc, af, b[lane * 2], b[lane * 2 + 1]);
  }
  for (int i = 0; i < 4; ++i) d[lane * 4 + i] = acc[i];
}

// The GEMM core's fragment path for one 16x8x16 tile: D = A * B^T + C with A [16, 16] and B [8, 16]
// (both K-contiguous, like forward/dgrad) loaded by ldmatrix.x4 / .x2, or, when KMajor is false, stored
// K-major ([16 k, 16 m] and [16 k, 8 n], like wgrad) and loaded with .trans. D is written row-major
// [16, 8] from the accumulator layout.
template <typename T, bool KMajor>
__global__ void mma_chain_test_kernel(const T* a, const T* b, const float* c, float* d) {
  FASTCNN_EXTERN_SHARED(smem_raw);
  T* as = reinterpret_cast<T*>(smem_raw);
  T* bs = as + 16 * kPitch;
  const int lane = threadIdx.x;
  // A: 16 lines of 16; B: 8 lines (K-major) or 16 lines of 8 (MN-major).
  for (int i = lane; i < 256; i += 32) as[(i / 16) * kPitch + i % 16] = a[i];
  for (int i = lane; i < 128; i += 32) {
    if constexpr (KMajor) {
      bs[(i / 16) * kPitch + i % 16] = b[i];
    } else {
      bs[(i / 8) * kPitch + i % 8] = b[i];
    }
  }
  __syncthreads();
  uint32_t af[4], bf[2];
  const int j = lane % 8, mat = lane / 8;
  if constexpr (KMajor) {
    cuda::ldmatrix_x4(af, as + (lane % 16) * kPitch + (lane / 16) * 8);
    const int bl = lane % 16;  // lanes 0-7: k 0-7 of rows n; 8-15: k 8-15
    cuda::ldmatrix_x2(bf, bs + (bl % 8) * kPitch + (bl / 8) * 8);
  } else {
    // as[k][m]: matrix (mat % 2) covers m 0-7 / 8-15, (mat / 2) k 0-7 / 8-15.
    cuda::ldmatrix_x4_trans(af, as + ((mat / 2) * 8 + j) * kPitch + (mat % 2) * 8);
    const int bl = lane % 16;
    cuda::ldmatrix_x2_trans(bf, bs + ((bl / 8) * 8 + bl % 8) * kPitch);
  }
  const int g = lane / 4, t = lane % 4;
  float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
  cuda::mma_m16n8k16<T>(acc, af, bf[0], bf[1]);
  d[g * 8 + 2 * t] = acc[0];
  d[g * 8 + 2 * t + 1] = acc[1];
  d[(g + 8) * 8 + 2 * t] = acc[2];
  d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

// tf32: D [16, 8] = A [16, 8] * B [8 n, 8 k]^T + C with scalar fragment reads and cvt.rna.tf32.f32.
__global__ void mma_tf32_chain_test_kernel(const float* a, const float* b, const float* c, float* d) {
  const int lane = threadIdx.x;
  const int g = lane / 4, t = lane % 4;
  uint32_t af[4] = {cuda::to_tf32(a[g * 8 + t]), cuda::to_tf32(a[(g + 8) * 8 + t]),
                    cuda::to_tf32(a[g * 8 + t + 4]), cuda::to_tf32(a[(g + 8) * 8 + t + 4])};
  const uint32_t b0 = cuda::to_tf32(b[g * 8 + t]), b1 = cuda::to_tf32(b[g * 8 + t + 4]);
  float acc[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
  cuda::mma_m16n8k8_tf32(acc, af, b0, b1);
  d[g * 8 + 2 * t] = acc[0];
  d[g * 8 + 2 * t + 1] = acc[1];
  d[(g + 8) * 8 + 2 * t] = acc[2];
  d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

__global__ void cvt_tf32_test_kernel(const float* x, uint32_t* out, int n) {
  for (int i = threadIdx.x; i < n; i += 32) out[i] = cuda::to_tf32(x[i]);
}

// Lane l copies 16 bytes of src[l * 4 ..] into shared memory with cp.async, zero-filled when l % 3 == 2;
// out[l * 4 ..] is the shared chunk after cp.async.wait_group 0 (and a barrier).
__global__ void cp_async_test_kernel(const uint32_t* src, uint32_t* out) {
  FASTCNN_EXTERN_SHARED(smem_raw);
  uint32_t* smem = reinterpret_cast<uint32_t*>(smem_raw);
  const int lane = threadIdx.x;
  cuda::cp_async_16(smem + lane * 4, src + lane * 4, lane % 3 != 2);
  cuda::cp_async_commit();
  cuda::cp_async_wait<0>();
  __syncthreads();
  for (int i = 0; i < 4; ++i) out[lane * 4 + i] = smem[((lane + 1) % 32) * 4 + i];
}

// out[l] = values[(l * 5 + 3) % 32] via __shfl_sync; out[32 + l] = __match_any_sync of values[l] % 4.
__global__ void shfl_match_test_kernel(const int* values, unsigned* out) {
  const int lane = threadIdx.x;
  const int v = values[lane];
  out[lane] = static_cast<unsigned>(__shfl_sync(0xffffffffu, v, (lane * 5 + 3) % 32));
  out[32 + lane] = __match_any_sync(0xffffffffu, v % 4);
}

}  // namespace emu_tests
}  // namespace fastcnn
