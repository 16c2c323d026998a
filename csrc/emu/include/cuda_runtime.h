// fastcnn's SIMT emulator: the CUDA runtime and device built-ins as seen by the csrc/cuda/ sources when
// they are compiled for the host (FASTCNN_CUDA_EMU). This header stands in for the toolkit's
// cuda_runtime.h: kernel qualifiers become plain C++, threadIdx/blockIdx/... read the state of the CUDA
// thread (a fiber) that is running, and barriers, warp collectives and atomics call into the runtime
// (csrc/emu/runtime.cpp), which decides when each thread runs. No CUDA toolkit is needed to build it.
#pragma once

#if !defined(FASTCNN_CUDA_EMU)
#error \
    "csrc/emu/include/cuda_runtime.h is the emulator's; it is only on the include path of the emulation build"
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

// ---- qualifiers ---------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) alignas(n)
// Static __shared__ arrays are plain statics: launches are serialised and a block runs to completion
// before the next starts, so one copy serves every block. (They are not poisoned between blocks; the
// dynamic shared memory of FASTCNN_EXTERN_SHARED is.)
#define __shared__ static
#define __constant__ static const

// ---- vector and launch types --------------------------------------------------------------------------
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) {
  return uint4{x, y, z, w};
}
inline uint2 make_uint2(unsigned x, unsigned y) {
  return uint2{x, y};
}

typedef struct CUstream_st* cudaStream_t;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorLaunchFailure = 719,
};
typedef cudaError_t cudaError;

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

// Calls that never return to a kernel are [[noreturn]] except under AddressSanitizer, whose handling of
// no-return calls assumes the thread's own stack and trips on a fiber's.
#if defined(__SANITIZE_ADDRESS__)
#define FASTCNN_EMU_NORETURN
#else
#define FASTCNN_EMU_NORETURN [[noreturn]]
#endif

namespace fastcnn {
namespace emu {

// What a running CUDA thread sees of itself; the runtime points `current` at the running thread's copy.
struct Builtins {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
extern Builtins* current;

// A source position (of a barrier or collective), for error messages and for barrier ablation.
struct Site {
  const char* file;
  int line;
};

cudaError_t device_get_attribute(int* value, cudaDeviceAttr attr, int device);
// Bumped by every configure(): the emulated device's attributes may have changed since.
uint64_t configuration_generation();
cudaError_t func_set_attribute(const void* func, cudaFuncAttribute attr, int value);
cudaError_t get_last_error();
const char* error_string(cudaError_t error);

void sync_threads(Site site);
void sync_warp(unsigned mask, Site site);
// Shuffle of up to 8 bytes among the lanes of `mask`, as __shfl{,_up,_down,_xor}_sync (mode 0-3) with
// `operand` the source lane, delta or lane mask and `width` the segment size.
uint64_t shfl(unsigned mask, uint64_t value, int operand, int width, int mode, Site site);
unsigned match_any(unsigned mask, uint64_t value, Site site);
FASTCNN_EMU_NORETURN void trap(Site site);
// The shared-window address of a generic pointer into shared memory (error when it points elsewhere).
uint32_t shared_address(const void* ptr, Site site);
unsigned char* dynamic_shared_memory();

template <typename T>
uint64_t to_bits64(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffles move at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <typename T>
T from_bits64(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

}  // namespace emu
}  // namespace fastcnn

// ---- built-in variables -------------------------------------------------------------------------------
#define threadIdx (::fastcnn::emu::current->thread_idx)
#define blockIdx (::fastcnn::emu::current->block_idx)
#define blockDim (::fastcnn::emu::current->block_dim)
#define gridDim (::fastcnn::emu::current->grid_dim)
constexpr int warpSize = 32;

// ---- runtime API --------------------------------------------------------------------------------------
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  return ::fastcnn::emu::device_get_attribute(value, attr, device);
}
template <typename F>
cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  return ::fastcnn::emu::func_set_attribute(reinterpret_cast<const void*>(func), attr, value);
}
inline cudaError_t cudaGetLastError() {
  return ::fastcnn::emu::get_last_error();
}
inline cudaError_t cudaPeekAtLastError() {
  return cudaSuccess;
}
inline const char* cudaGetErrorString(cudaError_t error) {
  return ::fastcnn::emu::error_string(error);
}

// ---- device functions ---------------------------------------------------------------------------------
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::fastcnn::emu::sync_threads({file, line});
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  ::fastcnn::emu::sync_warp(mask, {file, line});
}
#define FASTCNN_EMU_SHUFFLE(NAME, MODE)                                                                    \
  template <typename T>                                                                                    \
  T NAME(unsigned mask, T value, int operand, int width = warpSize, const char* file = __builtin_FILE(),   \
         int line = __builtin_LINE()) {                                                                    \
    return ::fastcnn::emu::from_bits64<T>(                                                                 \
        ::fastcnn::emu::shfl(mask, ::fastcnn::emu::to_bits64(value), operand, width, MODE, {file, line})); \
  }
FASTCNN_EMU_SHUFFLE(__shfl_sync, 0)
FASTCNN_EMU_SHUFFLE(__shfl_up_sync, 1)
FASTCNN_EMU_SHUFFLE(__shfl_down_sync, 2)
FASTCNN_EMU_SHUFFLE(__shfl_xor_sync, 3)
#undef FASTCNN_EMU_SHUFFLE
template <typename T>
unsigned __match_any_sync(unsigned mask, T value, const char* file = __builtin_FILE(),
                          int line = __builtin_LINE()) {
  return ::fastcnn::emu::match_any(mask, ::fastcnn::emu::to_bits64(value), {file, line});
}
FASTCNN_EMU_NORETURN inline void __trap(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::fastcnn::emu::trap({file, line});
}
inline int __ffs(int x) {
  return __builtin_ffs(x);
}
inline int __popc(unsigned x) {
  return __builtin_popcount(x);
}
inline unsigned __float_as_uint(float x) {
  unsigned u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
inline float __uint_as_float(unsigned u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}
inline size_t __cvta_generic_to_shared(const void* ptr, const char* file = __builtin_FILE(),
                                       int line = __builtin_LINE()) {
  return ::fastcnn::emu::shared_address(ptr, {file, line});
}
// Read-only loads are plain loads; misaligned vector types are caught by the build's alignment checks.
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
template <typename T>
inline T atomicAdd(T* address, T value) {
  static_assert(std::is_arithmetic_v<T>, "atomicAdd is emulated for arithmetic types");
  T old;
  __atomic_load(address, &old, __ATOMIC_RELAXED);
  T desired;
  do {
    desired = old + value;
  } while (!__atomic_compare_exchange(address, &old, &desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
  return old;
}

// CUDA's math library gives min/max and float overloads of the math functions in the global namespace.
using std::exp;
using std::fma;
using std::tanh;
inline int min(int a, int b) {
  return a < b ? a : b;
}
inline int max(int a, int b) {
  return a > b ? a : b;
}
inline long long min(long long a, long long b) {
  return a < b ? a : b;
}
inline long long max(long long a, long long b) {
  return a > b ? a : b;
}
inline long min(long a, long b) {
  return a < b ? a : b;
}
inline long max(long a, long b) {
  return a > b ? a : b;
}
inline unsigned min(unsigned a, unsigned b) {
  return a < b ? a : b;
}
inline unsigned max(unsigned a, unsigned b) {
  return a > b ? a : b;
}
