// Internals of the fastcnn emulator shared by runtime.cpp and instructions.cpp: the running thread, warp
// collectives and fault reporting. Not included by kernel code.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "emu/runtime.h"

namespace fastcnn {
namespace emu {

// What one lane hands to a warp collective and what it gets back.
struct LaneSlot {
  uint64_t in[12];
  uint64_t out[4];
};

enum class Collective : int {
  Shfl,
  Match,
  SyncWarp,
  Ldmatrix,  // + 2 * {0: x1, 1: x2, 2: x4} + trans: six kinds, so that lanes must agree on the variant
  MmaF16 = Ldmatrix + 6,
  MmaBF16,
  MmaTF32,
};

const char* collective_name(int kind);

using CollectiveFn = void (*)(LaneSlot* slots, unsigned participants);

// Blocks the calling lane until every lane of `mask` in its warp has arrived at the same collective
// (kind and site); the last to arrive runs `complete` over all slots. Returns the caller's slot.
LaneSlot& warp_collective(int kind, unsigned mask, Site site, const LaneSlot& input, CollectiveFn complete);

// Stops the running kernel with `message`, attributed to the running thread (or to `lane` of its warp).
FASTCNN_EMU_NORETURN void fail(const std::string& message, int lane = -1);

int current_lane();
bool site_ablated(Site site);

// ThreadSanitizer builds (make emu-tsan): each CUDA thread is a TSan fiber, fiber switches carry no
// synchronisation, and the runtime's own bookkeeping is hidden from TSan (RuntimeScope), so that what
// TSan orders are exactly the kernel's barriers, warp collectives and atomics. KernelScope re-exposes
// the accesses an instruction makes on the kernel's behalf (ldmatrix's shared-memory reads, cp.async's
// writes). In other builds both are empty.
#if defined(__SANITIZE_THREAD__)
struct RuntimeScope {
  RuntimeScope();
  ~RuntimeScope();
};
struct KernelScope {
  KernelScope();
  ~KernelScope();
};
void happens_before_release(const void* token);
void happens_before_acquire(const void* token);
#else
struct RuntimeScope {
  RuntimeScope() {}  // user-provided: no unused-variable warning for the empty scope
};
struct KernelScope {
  KernelScope() {}
};
inline void happens_before_release(const void*) {}
inline void happens_before_acquire(const void*) {}
#endif

// Shared window: [0, dynamic bytes) maps to the block's dynamic shared memory.
unsigned char* shared_pointer(uint32_t address, size_t bytes, const char* what, int lane = -1);
bool in_dynamic_shared(const void* ptr, size_t bytes);

// Work counters of the running launch (torch.ops.fastcnn_emu.counters_*; README.md "Counters"). Null
// unless counting is enabled, so that each instruction pays one load and a branch when it is off. The
// runtime counts barriers and cp.async (per thread, grouped into warp instructions); instructions.cpp
// counts what a warp collective completes (mma, ldmatrix).
struct LaunchCounters {
  uint64_t mma = 0;          // warp-level mma.sync instructions
  uint64_t macs = 0;         // 16*8*16 per m16n8k16, 16*8*8 per m16n8k8
  uint64_t useful_macs = 0;  // products a[m][k] * b[k][n] with both operands non-zero
  uint64_t ldmatrix = 0;     // warp-level ldmatrix instructions
  uint64_t ldmatrix_bytes = 0;
  uint64_t ldmatrix_wavefronts = 0;  // shared-memory wavefronts of the ldmatrix phases
  uint64_t bank_conflicts = 0;       // wavefronts beyond one per 8-address phase
  uint64_t cp_async = 0;             // per-thread 16-byte requests
  uint64_t cp_async_warp = 0;        // warp instructions they group into
  uint64_t cp_async_bytes = 0;       // global bytes requested (src-size)
  uint64_t cp_async_zero_fill = 0;   // requests with src-size 0
  uint64_t cp_async_sectors = 0;     // distinct 32-byte global sectors per warp instruction, summed
  uint64_t barriers = 0;             // completed __syncthreads, summed over blocks
};
extern LaunchCounters* g_counters;

// cp.async state of the running thread.
struct AsyncCopy {
  unsigned char* dst;
  const unsigned char* src;
  int src_bytes;
};
void push_async_copy(const AsyncCopy& copy);
void commit_async_copies();
void wait_async_copies(int pending_groups);

}  // namespace emu
}  // namespace fastcnn
