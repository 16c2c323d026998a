// FASTCNN_SIMD_CLONES: compile a loop for AVX-512, AVX2 and baseline x86-64 and pick one at load time,
// since the extension is built without -march flags (it must load on any x86-64). Put it on the
// function that holds the loop (never on a parallel_for lambda, which inherits no target); inline
// helpers it calls are compiled for the caller's target. A cloned function must neither throw nor
// allocate: an exception does not unwind through GCC's clone dispatch.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTCNN_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FASTCNN_SIMD_CLONES
#endif
