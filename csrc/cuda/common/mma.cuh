// Thin wrappers over the sm_80+ PTX the fastcnn GEMM core is built from: cp.async (16-byte global to
// shared copies with zero fill), ldmatrix (plain and transposed 8x8 b16 fragments) and the warp-level
// tensor-core mma.sync shapes m16n8k16 (fp16/bf16 in, fp32 accumulate) and m16n8k8 (tf32 in, fp32
// accumulate). Fragment layouts follow the PTX ISA "Matrix Fragments for mma.m16n8k16 / m16n8k8" tables:
// with g = lane / 4 and t = lane % 4, a thread holds C/D elements (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1).
//
// Under FASTCNN_CUDA_EMU (the emulation build) each wrapper calls the emulator's implementation of the
// same instruction instead of issuing inline PTX; the kernels that use them are compiled unchanged.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/common/shared.cuh"

#if FASTCNN_CUDA_EMU
#include "emu/runtime.h"
#endif

namespace fastcnn {
namespace cuda {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define FASTCNN_HAS_SM80_PTX 1
#else
#define FASTCNN_HAS_SM80_PTX 0
#endif

#if FASTCNN_CUDA_EMU
// Source position of the caller, so that the emulator can name (and ablate) each wait_group site.
#define FASTCNN_EMU_SITE_ARGS const char *site_file = __builtin_FILE(), int site_line = __builtin_LINE()
#define FASTCNN_EMU_SITE \
  ::fastcnn::emu::Site { \
    site_file, site_line \
  }

// cp.async is available when the device is sm_80 or newer (a runtime property of the emulated device).
__device__ __forceinline__ bool has_cp_async() {
  return ::fastcnn::emu::device_properties().arch >= 80;
}

__device__ __forceinline__ uint32_t smem_address(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid, FASTCNN_EMU_SITE_ARGS) {
  ::fastcnn::emu::cp_async(smem, gmem, valid ? 16 : 0, FASTCNN_EMU_SITE);
}
__device__ __forceinline__ void cp_async_commit(FASTCNN_EMU_SITE_ARGS) {
  ::fastcnn::emu::cp_async_commit(FASTCNN_EMU_SITE);
}
template <int kPending>
__device__ __forceinline__ void cp_async_wait(FASTCNN_EMU_SITE_ARGS) {
  ::fastcnn::emu::cp_async_wait(kPending, FASTCNN_EMU_SITE);
}
template <int N>
__device__ __forceinline__ void ldmatrix_xn(uint32_t (&r)[N], const void* smem_row, bool trans,
                                            ::fastcnn::emu::Site site) {
  ::fastcnn::emu::ldmatrix(r, N, trans, smem_address(smem_row), site);
}
__device__ __forceinline__ void ldmatrix_x1(uint32_t (&r)[1], const void* smem_row, FASTCNN_EMU_SITE_ARGS) {
  ldmatrix_xn(r, smem_row, false, FASTCNN_EMU_SITE);
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* smem_row, FASTCNN_EMU_SITE_ARGS) {
  ldmatrix_xn(r, smem_row, false, FASTCNN_EMU_SITE);
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row, FASTCNN_EMU_SITE_ARGS) {
  ldmatrix_xn(r, smem_row, false, FASTCNN_EMU_SITE);
}
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t (&r)[1], const void* smem_row,
                                                  FASTCNN_EMU_SITE_ARGS) {
  ldmatrix_xn(r, smem_row, true, FASTCNN_EMU_SITE);
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* smem_row,
                                                  FASTCNN_EMU_SITE_ARGS) {
  ldmatrix_xn(r, smem_row, true, FASTCNN_EMU_SITE);
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row,
                                                  FASTCNN_EMU_SITE_ARGS) {
  ldmatrix_xn(r, smem_row, true, FASTCNN_EMU_SITE);
}
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                                             FASTCNN_EMU_SITE_ARGS) {
  static_assert(std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>,
                "m16n8k16 is instantiated for Half and BFloat16 only");
  ::fastcnn::emu::mma(
      std::is_same_v<T, c10::BFloat16> ? ::fastcnn::emu::MmaType::BF16 : ::fastcnn::emu::MmaType::F16, d, a,
      b0, b1, FASTCNN_EMU_SITE);
}
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                 uint32_t b1, FASTCNN_EMU_SITE_ARGS) {
  ::fastcnn::emu::mma(::fastcnn::emu::MmaType::TF32, d, a, b0, b1, FASTCNN_EMU_SITE);
}
__device__ __forceinline__ uint32_t to_tf32(float x) {
  return ::fastcnn::emu::cvt_rna_tf32(x);
}
#undef FASTCNN_EMU_SITE_ARGS
#undef FASTCNN_EMU_SITE
#else

// cp.async exists from sm_80 on; below it the loaders stage every chunk through registers instead.
__device__ __forceinline__ constexpr bool has_cp_async() {
  return FASTCNN_HAS_SM80_PTX != 0;
}

__device__ __forceinline__ uint32_t smem_address(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// Copies 16 bytes global -> shared without staging in registers. When `valid` is false nothing is read
// (src-size 0) and the 16 destination bytes are zero-filled, which is how out-of-bounds tile elements
// (padding, tails) become zeros. `gmem` must still be a mapped address; callers pass the tensor base.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
#if FASTCNN_HAS_SM80_PTX
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_address(smem)), "l"(gmem),
               "r"(src_bytes)
               : "memory");
#else
  __trap();
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if FASTCNN_HAS_SM80_PTX
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most kPending of this thread's most recent commit groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
#if FASTCNN_HAS_SM80_PTX
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 supply the row addresses of matrix i.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
#if FASTCNN_HAS_SM80_PTX
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(smem_row)));
#else
  __trap();
#endif
}

// As ldmatrix_x4, but each 8x8 matrix is delivered transposed: used when the tile is stored
// MN-major in shared memory (rows are k) and the fragment wants k as the column.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
#if FASTCNN_HAS_SM80_PTX
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(smem_row)));
#else
  __trap();
#endif
}

// One or two 8x8 b16 matrices (lanes 0-7, or 0-15, supply the row addresses), plain and transposed.
__device__ __forceinline__ void ldmatrix_x1(uint32_t (&r)[1], const void* smem_row) {
#if FASTCNN_HAS_SM80_PTX
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(smem_address(smem_row)));
#else
  __trap();
#endif
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* smem_row) {
#if FASTCNN_HAS_SM80_PTX
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_address(smem_row)));
#else
  __trap();
#endif
}
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t (&r)[1], const void* smem_row) {
#if FASTCNN_HAS_SM80_PTX
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(smem_address(smem_row)));
#else
  __trap();
#endif
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* smem_row) {
#if FASTCNN_HAS_SM80_PTX
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_address(smem_row)));
#else
  __trap();
#endif
}

// d += a * b for one 16x8x16 tile; T selects the f16 or bf16 instruction.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                             uint32_t b1) {
#if FASTCNN_HAS_SM80_PTX
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    static_assert(std::is_same_v<T, c10::Half>, "m16n8k16 is instantiated for Half and BFloat16 only");
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#else
  __trap();
#endif
}

// d += a * b for one 16x8x8 tile of tf32 operands (registers hold tf32 bit patterns, see to_tf32).
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                 uint32_t b1) {
#if FASTCNN_HAS_SM80_PTX
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();
#endif
}

// Round-to-nearest fp32 -> tf32, as cuDNN/cuBLAS do for their TF32 math modes.
__device__ __forceinline__ uint32_t to_tf32(float x) {
#if FASTCNN_HAS_SM80_PTX
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
#else
  return __float_as_uint(x);
#endif
}

#endif  // FASTCNN_CUDA_EMU

}  // namespace cuda
}  // namespace fastcnn
