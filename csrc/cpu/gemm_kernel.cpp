// The GEMM micro-kernels behind fastcnn's CPU conv2d and linear, one set per instruction set, picked at
// run time from what the CPU reports (no -march flag: the module still loads on any x86-64, and on
// other architectures only the portable set is compiled).
//  * AVX-512F: 14 x 32 fp32 (14 x 16 fp64) tiles, 28 zmm accumulators + 2 B vectors + 1 broadcast.
//  * AVX2/FMA: 6 x 16 fp32 (6 x 8 fp64) tiles, 12 ymm accumulators.
//  * portable: 4 x 4 scalar tiles (the compiler's default vector ISA at best).
// Measured: see benchmarks/NOTES.md (2026-11-25, "packed GEMM micro-kernel").
#include "cpu/gemm_kernel.h"

#include "cpu/epilogue.h"

// GCC 12 flags the undefined source operand inside its own masked-load intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <utility>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define FASTCNN_X86 1
#endif

namespace fastcnn {
namespace cpu {
namespace {

namespace portable {
template <typename TT>
struct Ops {
  using T = TT;
  using V = TT;
  static constexpr int W = 1;
  static inline V zero() { return T(0); }
  static inline V load(const T* p) { return *p; }
  static inline V loadm(const T* p, int n) { return n > 0 ? *p : T(0); }
  static inline void store(T* p, V v) { *p = v; }
  static inline void storem(T* p, V v, int n) {
    if (n > 0) *p = v;
  }
  static inline V set1(T x) { return x; }
  static inline V fma(V a, V b, V c) { return a * b + c; }
  static inline V add(V a, V b) { return a + b; }
  static inline V relu(V x) { return x < T(0) ? T(0) : x; }
};
#include "cpu/gemm_microkernel.inc"
}  // namespace portable

#ifdef FASTCNN_X86
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
struct OpsF {
  using T = float;
  using V = __m256;
  static constexpr int W = 8;
  static inline __m256i lanes_below(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static inline V zero() { return _mm256_setzero_ps(); }
  static inline V load(const T* p) { return _mm256_loadu_ps(p); }
  static inline V loadm(const T* p, int n) { return _mm256_maskload_ps(p, lanes_below(n)); }
  static inline void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  static inline void storem(T* p, V v, int n) { _mm256_maskstore_ps(p, lanes_below(n), v); }
  static inline V set1(T x) { return _mm256_set1_ps(x); }
  static inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static inline V add(V a, V b) { return _mm256_add_ps(a, b); }
  // max(0, x) returns its second operand when either is NaN, so NaN propagates like torch.relu.
  static inline V relu(V x) { return _mm256_max_ps(_mm256_setzero_ps(), x); }
};
struct OpsD {
  using T = double;
  using V = __m256d;
  static constexpr int W = 4;
  static inline __m256i lanes_below(int n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static inline V zero() { return _mm256_setzero_pd(); }
  static inline V load(const T* p) { return _mm256_loadu_pd(p); }
  static inline V loadm(const T* p, int n) { return _mm256_maskload_pd(p, lanes_below(n)); }
  static inline void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  static inline void storem(T* p, V v, int n) { _mm256_maskstore_pd(p, lanes_below(n), v); }
  static inline V set1(T x) { return _mm256_set1_pd(x); }
  static inline V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static inline V add(V a, V b) { return _mm256_add_pd(a, b); }
  static inline V relu(V x) { return _mm256_max_pd(_mm256_setzero_pd(), x); }
};
#include "cpu/gemm_microkernel.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
namespace avx512 {
struct OpsF {
  using T = float;
  using V = __m512;
  static constexpr int W = 16;
  static inline __mmask16 lanes_below(int n) { return __mmask16((1u << n) - 1u); }
  static inline V zero() { return _mm512_setzero_ps(); }
  static inline V load(const T* p) { return _mm512_loadu_ps(p); }
  static inline V loadm(const T* p, int n) { return _mm512_maskz_loadu_ps(lanes_below(n), p); }
  static inline void store(T* p, V v) { _mm512_storeu_ps(p, v); }
  static inline void storem(T* p, V v, int n) { _mm512_mask_storeu_ps(p, lanes_below(n), v); }
  static inline V set1(T x) { return _mm512_set1_ps(x); }
  static inline V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static inline V add(V a, V b) { return _mm512_add_ps(a, b); }
  static inline V relu(V x) { return _mm512_max_ps(_mm512_setzero_ps(), x); }
};
struct OpsD {
  using T = double;
  using V = __m512d;
  static constexpr int W = 8;
  static inline __mmask8 lanes_below(int n) { return __mmask8((1u << n) - 1u); }
  static inline V zero() { return _mm512_setzero_pd(); }
  static inline V load(const T* p) { return _mm512_loadu_pd(p); }
  static inline V loadm(const T* p, int n) { return _mm512_maskz_loadu_pd(lanes_below(n), p); }
  static inline void store(T* p, V v) { _mm512_storeu_pd(p, v); }
  static inline void storem(T* p, V v, int n) { _mm512_mask_storeu_pd(p, lanes_below(n), v); }
  static inline V set1(T x) { return _mm512_set1_pd(x); }
  static inline V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static inline V add(V a, V b) { return _mm512_add_pd(a, b); }
  static inline V relu(V x) { return _mm512_max_pd(_mm512_setzero_pd(), x); }
};
#include "cpu/gemm_microkernel.inc"
}  // namespace avx512
#pragma GCC pop_options
#endif  // FASTCNN_X86

Isa detect_isa() {
#ifdef FASTCNN_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
#endif
  return Isa::Portable;
}

template <typename T>
KernelSet<T> select_kernels(Isa isa) {
#ifdef FASTCNN_X86
  if constexpr (std::is_same_v<T, float>) {
    if (isa == Isa::Avx512)
      return avx512::make_kernel_set<avx512::OpsF, 2>(std::make_integer_sequence<int, 14>{});
    if (isa == Isa::Avx2) return avx2::make_kernel_set<avx2::OpsF, 2>(std::make_integer_sequence<int, 6>{});
  } else {
    if (isa == Isa::Avx512)
      return avx512::make_kernel_set<avx512::OpsD, 2>(std::make_integer_sequence<int, 14>{});
    if (isa == Isa::Avx2) return avx2::make_kernel_set<avx2::OpsD, 2>(std::make_integer_sequence<int, 6>{});
  }
#endif
  return portable::make_kernel_set<portable::Ops<T>, 4>(std::make_integer_sequence<int, 4>{});
}

}  // namespace

Isa active_isa() {
  static const Isa isa = [] {
    const char* forced = std::getenv("FASTCNN_CPU_ISA");  // "avx2" / "portable": exercise the fallbacks
    const Isa best = detect_isa();
    if (forced != nullptr) {
      const std::string name(forced);
      if (name == "portable") return Isa::Portable;
      if (name == "avx2" && best != Isa::Portable) return Isa::Avx2;
    }
    return best;
  }();
  return isa;
}

template <>
const KernelSet<float>& kernels<float>() {
  static const KernelSet<float> set = select_kernels<float>(active_isa());
  return set;
}

template <>
const KernelSet<double>& kernels<double>() {
  static const KernelSet<double> set = select_kernels<double>(active_isa());
  return set;
}

}  // namespace cpu
}  // namespace fastcnn
