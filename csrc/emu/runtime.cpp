// fastcnn's SIMT emulator runtime: fibers, the block scheduler, barriers, warp collectives, launch checks
// and the emulated device's attributes. One kernel launch runs at a time (a process-wide lock): blocks in
// a random order, each block's threads as fibers on the launching OS thread. Between blocking points a
// warp's lanes run freely; which warp runs next, and for how many steps, is drawn from a seeded
// generator, so that warps drift apart by random amounts between barriers (a plain round-robin keeps them
// in lockstep and hides missing barriers). Every fault is raised as a c10::Error that names the kernel,
// the block, the thread and the seed.
#include <c10/util/Exception.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

#include "emu/scheduler.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define FASTCNN_EMU_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define FASTCNN_EMU_TSAN 1
extern "C" {
void AnnotateIgnoreReadsBegin(const char* file, int line);
void AnnotateIgnoreReadsEnd(const char* file, int line);
void AnnotateIgnoreWritesBegin(const char* file, int line);
void AnnotateIgnoreWritesEnd(const char* file, int line);
}
#endif

// ---- context switch -------------------------------------------------------------------------------------
// switch(save, load): saves the callee-saved registers and the FP control words on the current stack,
// stores the stack pointer in *save and resumes the context whose stack pointer is `load`.
#if defined(__x86_64__)
extern "C" void fastcnn_emu_switch(void** save, void* load);
extern "C" void fastcnn_emu_trampoline();
asm(R"(
.text
.globl fastcnn_emu_switch
.hidden fastcnn_emu_switch
.type fastcnn_emu_switch,@function
fastcnn_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size fastcnn_emu_switch,.-fastcnn_emu_switch

.globl fastcnn_emu_trampoline
.hidden fastcnn_emu_trampoline
.type fastcnn_emu_trampoline,@function
fastcnn_emu_trampoline:
  movq %r12, %rdi
  andq $-16, %rsp
  call *%r13
  ud2
.size fastcnn_emu_trampoline,.-fastcnn_emu_trampoline
)");
#else
#error "the fastcnn emulator's fibers are written for x86-64"
#endif

namespace fastcnn {
namespace emu {

Builtins* current = nullptr;
LaunchCounters* g_counters = nullptr;

#if FASTCNN_EMU_TSAN
RuntimeScope::RuntimeScope() {
  AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
  AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
}
RuntimeScope::~RuntimeScope() {
  AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
  AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
}
KernelScope::KernelScope() {
  AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
  AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
}
KernelScope::~KernelScope() {
  AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
  AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
}
void happens_before_release(const void* token) {
  __tsan_release(const_cast<void*>(token));
}
void happens_before_acquire(const void* token) {
  __tsan_acquire(const_cast<void*>(token));
}
#endif

namespace {

// Fibers and blocks: a thread starting acquires what every earlier thread of the launch released on exit.
int g_launch_token = 0;

// ---- configuration --------------------------------------------------------------------------------------
int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

int max_shared_optin_for(int arch) {
  if (arch >= 90) return 227 * 1024;
  if (arch == 80 || arch == 87) return 163 * 1024;
  if (arch >= 86) return 99 * 1024;
  if (arch >= 75) return 64 * 1024;
  return 96 * 1024;
}

struct Settings {
  int arch = env_int("FASTCNN_EMU_ARCH", 90);
  int sm_count = env_int("FASTCNN_EMU_SM_COUNT", 132);
  uint64_t seed = static_cast<uint64_t>(env_int("FASTCNN_EMU_SEED", 0x5eed));
  size_t stack_bytes = static_cast<size_t>(env_int("FASTCNN_EMU_STACK_KB", 256)) * 1024;
  std::string ablate = std::getenv("FASTCNN_EMU_ABLATE") ? std::getenv("FASTCNN_EMU_ABLATE") : "";
};

Settings& settings() {
  static Settings s;
  return s;
}

std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

std::atomic<uint64_t> g_launches{0};
std::atomic<uint64_t> g_attribute_queries{0};
std::atomic<uint64_t> g_ablated_hits{0};
std::unordered_map<const void*, int>& func_max_dynamic_shared() {
  static std::unordered_map<const void*, int> m;
  return m;
}

// splitmix64: small, seedable, good enough to shuffle schedules.
struct Rng {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint32_t below(uint32_t n) { return static_cast<uint32_t>(next() % n); }
};

// ---- fibers ---------------------------------------------------------------------------------------------
struct Stack {
  unsigned char* base = nullptr;  // lowest address; the first page is a guard page
  size_t bytes = 0;
};

Stack make_stack(size_t bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  bytes = (bytes + page - 1) / page * page + page;
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  TORCH_CHECK(p != MAP_FAILED, "fastcnn emulator: could not map a ", bytes, "-byte fiber stack");
  mprotect(p, page, PROT_NONE);
  return Stack{static_cast<unsigned char*>(p), bytes};
}

enum class State : int { Runnable, AtBarrier, AtCollective, Exited };

struct Thread {
  Builtins builtins;
  void* sp = nullptr;
  Stack stack;
  int linear = 0, warp = 0, lane = 0;
  State state = State::Runnable;
  Site wait_site{nullptr, 0};
  LaneSlot slot;
  std::vector<AsyncCopy> copies;
  std::vector<size_t> group_ends;  // copies[0, group_ends[i]) belong to commit groups 0..i
  size_t landed = 0;               // copies[0, landed) have landed
  size_t groups_done = 0;
  uint64_t cp_async_issued = 0;  // this block's cp.async calls so far: the k-th joins warp instruction k
  uint64_t clean_epoch = 0;      // the fault epoch this fiber's stack and sanitizer state are clean for
#if FASTCNN_EMU_TSAN
  void* tsan_fiber = nullptr;
#endif
};

struct Warp {
  unsigned present = 0;  // lanes that exist (a partial last warp has fewer)
  unsigned arrived = 0;  // lanes waiting at the pending collective
  int kind = -1;
  unsigned mask = 0;
  Site site{nullptr, 0};
  int runnable = 0;
  CollectiveFn complete = nullptr;
};

struct Launch {
  const LaunchConfig* config = nullptr;
  ThreadBody body = nullptr;
  void* context = nullptr;
  uint64_t seed = 0;
  Rng rng{0};
  uint3 block_idx{0, 0, 0};
  int block_threads = 0;
  std::vector<Warp> warps;
  int barrier_arrived = 0;
  Site barrier_site{nullptr, 0};
  unsigned char* dynamic_shared = nullptr;
  size_t dynamic_shared_bytes = 0;
  bool failed = false;
  std::string error;
};

// ---- counters ---------------------------------------------------------------------------------------------
// Off unless counters_enable(true): then every launch appends one JSON record (README.md "Counters").
struct CounterSettings {
  bool enabled = false;
  int64_t sample_blocks = 0;  // 0: every block
  std::vector<std::string> records;
};

CounterSettings& counter_settings() {
  static CounterSettings s;
  return s;
}

// The 32-byte global sectors of one warp-level cp.async: the k-th request of each lane of the warp.
// fastcnn's loaders issue their cp.async convergently, so the k-th of every lane is the same instruction.
struct SectorGroup {
  unsigned lanes = 0;
  int count = 0;
  uint64_t sectors[32];
};

struct WarpCopies {
  uint64_t base = 0;  // index of groups.front()
  std::deque<SectorGroup> groups;
};

struct Counting {
  LaunchCounters counters;
  std::vector<WarpCopies> warps;  // of the running block

  void finish(SectorGroup& g) {
    std::sort(g.sectors, g.sectors + g.count);
    counters.cp_async_sectors +=
        static_cast<uint64_t>(std::unique(g.sectors, g.sectors + g.count) - g.sectors);
    ++counters.cp_async_warp;
  }
  // Groups some lanes never joined (a divergent tail) still count, with the sectors they have.
  void finish_block() {
    for (WarpCopies& w : warps) {
      for (SectorGroup& g : w.groups) finish(g);
      w.groups.clear();
      w.base = 0;
    }
  }
};

Counting* g_counting = nullptr;

std::vector<Thread>& thread_pool() {
  static std::vector<Thread> pool;
  return pool;
}

Launch* g_launch = nullptr;
// Counts launches that ended in an error: their fibers were abandoned mid-frame, which leaves ASan's
// stack shadow poisoned and TSan's ignore counts raised; prepare_fiber resets both before reuse.
uint64_t g_fault_epoch = 0;
Thread* g_running = nullptr;
void* g_scheduler_sp = nullptr;
#if FASTCNN_EMU_TSAN
void* g_scheduler_tsan_fiber = nullptr;
#endif
#if FASTCNN_EMU_ASAN
const void* g_scheduler_stack_bottom = nullptr;
size_t g_scheduler_stack_size = 0;
#endif

// Dynamic shared memory: one mapping, grown as needed, whose end abuts a guard page so that running off
// the end of the block's allocation faults at once.
struct SharedArena {
  unsigned char* map = nullptr;
  size_t map_bytes = 0;
  size_t capacity = 0;
  unsigned char* end = nullptr;
};

SharedArena& arena() {
  static SharedArena a;
  return a;
}

unsigned char* shared_buffer(size_t bytes) {
  SharedArena& a = arena();
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t rounded = (std::max<size_t>(bytes, 16) + 15) / 16 * 16;
  if (rounded > a.capacity) {
    if (a.map != nullptr) munmap(a.map, a.map_bytes);
    const size_t data = (rounded + page - 1) / page * page;
    a.map_bytes = data + page;
    void* p = mmap(nullptr, a.map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(p != MAP_FAILED, "fastcnn emulator: could not map ", a.map_bytes, " bytes of shared memory");
    a.map = static_cast<unsigned char*>(p);
    mprotect(a.map + data, page, PROT_NONE);
    a.capacity = data;
    a.end = a.map + data;
  }
  return a.end - rounded;
}

std::string site_text(Site s) {
  if (s.file == nullptr) return "?";
  std::string f = s.file;
  const auto slash = f.find("csrc/");
  if (slash != std::string::npos) f = f.substr(slash + 5);
  return f + ":" + std::to_string(s.line);
}

std::string dim_text(uint3 d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

std::string where(const Launch& L, const Thread* t) {
  std::ostringstream os;
  os << "fastcnn emulator: kernel " << L.config->kernel_name << ", grid " << dim_text(L.config->grid)
     << " x block " << dim_text(L.config->block) << ", block " << dim_text(L.block_idx);
  if (t != nullptr) {
    os << ", thread " << dim_text(t->builtins.thread_idx) << " (warp " << t->warp << ", lane " << t->lane
       << ")";
  }
  os << " [seed " << L.seed << "]: ";
  return os.str();
}

// ---- switching ------------------------------------------------------------------------------------------
void switch_to_scheduler() {
  Thread* t = g_running;
#if FASTCNN_EMU_TSAN
  __tsan_switch_to_fiber(g_scheduler_tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
#if FASTCNN_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(t->state == State::Exited ? nullptr : &fake, g_scheduler_stack_bottom,
                                 g_scheduler_stack_size);
  fastcnn_emu_switch(&t->sp, g_scheduler_sp);
  __sanitizer_finish_switch_fiber(fake, &g_scheduler_stack_bottom, &g_scheduler_stack_size);
#else
  fastcnn_emu_switch(&t->sp, g_scheduler_sp);
#endif
}

void resume(Thread& t) {
  g_running = &t;
  current = &t.builtins;
#if FASTCNN_EMU_TSAN
  __tsan_switch_to_fiber(t.tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
#if FASTCNN_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, t.stack.base, t.stack.bytes);
  fastcnn_emu_switch(&g_scheduler_sp, t.sp);
  // Back on the scheduler's stack: the "old" stack reported here is the fiber's, not ours.
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  fastcnn_emu_switch(&g_scheduler_sp, t.sp);
#endif
  g_running = nullptr;
  current = nullptr;
}

void thread_entry(void* arg) {
  Thread* t = static_cast<Thread*>(arg);
#if FASTCNN_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_scheduler_stack_bottom, &g_scheduler_stack_size);
#endif
  happens_before_acquire(&g_launch_token);
  try {
    g_launch->body(g_launch->context);
  } catch (const std::exception& e) {
    RuntimeScope runtime;
    g_launch->failed = true;
    g_launch->error = where(*g_launch, t) + "exception in kernel: " + e.what();
  } catch (...) {
    RuntimeScope runtime;
    g_launch->failed = true;
    g_launch->error = where(*g_launch, t) + "unknown exception in kernel";
  }
  happens_before_release(&g_launch_token);
  {
    RuntimeScope runtime;
    t->state = State::Exited;
    --g_launch->warps[t->warp].runnable;
  }
  switch_to_scheduler();
  __builtin_trap();  // an exited fiber is never resumed
}

void prepare_fiber(Thread& t) {
  if (t.stack.base == nullptr) t.stack = make_stack(settings().stack_bytes);
  unsigned char* top = t.stack.base + t.stack.bytes;
  auto* frame = reinterpret_cast<uint64_t*>(top - 72);
  // [fp control words][r15][r14][r13][r12][rbx][rbp][return address][unused]
  uint32_t controls[2] = {0x1f80u, 0x037fu};
  std::memcpy(&frame[0], controls, sizeof(controls));
  frame[1] = 0;                                                    // r15
  frame[2] = 0;                                                    // r14
  frame[3] = reinterpret_cast<uint64_t>(&thread_entry);            // r13
  frame[4] = reinterpret_cast<uint64_t>(&t);                       // r12
  frame[5] = 0;                                                    // rbx
  frame[6] = 0;                                                    // rbp
  frame[7] = reinterpret_cast<uint64_t>(&fastcnn_emu_trampoline);  // return address
  frame[8] = 0;
  t.sp = frame;
  if (t.clean_epoch != g_fault_epoch) {
#if FASTCNN_EMU_ASAN
    __asan_unpoison_memory_region(t.stack.base, t.stack.bytes);
#endif
#if FASTCNN_EMU_TSAN
    // Not destroyed: TSan stops the process when a fiber ends inside an ignore region. A fiber
    // abandoned by a fault is left behind (one per thread per failed launch).
    t.tsan_fiber = nullptr;
#endif
    t.clean_epoch = g_fault_epoch;
  }
#if FASTCNN_EMU_TSAN
  if (t.tsan_fiber == nullptr) t.tsan_fiber = __tsan_create_fiber(0);
#endif
}

// ---- stalls ---------------------------------------------------------------------------------------------
std::string lanes_text(unsigned mask) {
  std::string s;
  for (int l = 0; l < 32; ++l) {
    if ((mask >> l) & 1u) s += (s.empty() ? "" : ",") + std::to_string(l);
  }
  return s;
}

// No thread can run and not all have exited: say why, as specifically as the states allow.
[[noreturn]] void diagnose_stall(Launch& L, std::vector<Thread>& threads) {
  for (size_t wi = 0; wi < L.warps.size(); ++wi) {
    const Warp& w = L.warps[wi];
    if (w.arrived == 0) continue;
    const unsigned need = w.mask & w.present;
    const unsigned missing = need & ~w.arrived;
    unsigned exited = 0, at_barrier = 0;
    for (int l = 0; l < 32; ++l) {
      if (!((missing >> l) & 1u)) continue;
      const Thread& t = threads[wi * 32 + l];
      if (t.state == State::Exited) exited |= 1u << l;
      if (t.state == State::AtBarrier) at_barrier |= 1u << l;
    }
    const Thread* first = &threads[wi * 32 + __builtin_ctz(w.arrived)];
    std::string msg = std::string(collective_name(w.kind)) + " at " + site_text(w.site) +
                      " was reached by part of warp " + std::to_string(wi) + " only (lanes " +
                      lanes_text(w.arrived) + " of mask 0x";
    char hex[16];
    std::snprintf(hex, sizeof(hex), "%08x", w.mask);
    msg += hex;
    msg += ")";
    if (exited != 0) msg += "; lanes " + lanes_text(exited) + " had exited";
    if (at_barrier != 0) {
      msg +=
          "; lanes " + lanes_text(at_barrier) + " wait at __syncthreads (" + site_text(L.barrier_site) + ")";
    }
    TORCH_CHECK(false, where(L, first), msg);
  }
  if (L.barrier_arrived > 0) {
    const Thread* waiting = nullptr;
    int exited = 0;
    const Thread* exited_one = nullptr;
    for (int i = 0; i < L.block_threads; ++i) {
      if (threads[i].state == State::AtBarrier && waiting == nullptr) waiting = &threads[i];
      if (threads[i].state == State::Exited) {
        ++exited;
        if (exited_one == nullptr) exited_one = &threads[i];
      }
    }
    TORCH_CHECK(
        false, where(L, waiting), L.barrier_arrived, " threads wait at __syncthreads (",
        site_text(L.barrier_site), ") but ", exited, " threads of the block exited without reaching it",
        exited_one != nullptr ? " (first: thread " + dim_text(exited_one->builtins.thread_idx) + ")" : "");
  }
  TORCH_CHECK(false, where(L, nullptr), "deadlock: no thread of the block can proceed");
}

void run_block(Launch& L, std::vector<Thread>& threads, uint3 block_idx) {
  const LaunchConfig& c = *L.config;
  L.block_idx = block_idx;
  const int n = L.block_threads;
  const int warps = (n + 31) / 32;
  L.warps.assign(warps, Warp{});
  for (int i = 0; i < n; ++i) {
    Thread& t = threads[i];
    t.linear = i;
    t.warp = i / 32;
    t.lane = i % 32;
    t.builtins.thread_idx =
        uint3{static_cast<unsigned>(i % c.block.x), static_cast<unsigned>((i / c.block.x) % c.block.y),
              static_cast<unsigned>(i / (c.block.x * c.block.y))};
    t.builtins.block_idx = block_idx;
    t.builtins.block_dim = c.block;
    t.builtins.grid_dim = c.grid;
    t.state = State::Runnable;
    t.copies.clear();
    t.group_ends.clear();
    t.landed = 0;
    t.groups_done = 0;
    t.cp_async_issued = 0;
    prepare_fiber(t);
    L.warps[t.warp].present |= 1u << t.lane;
    ++L.warps[t.warp].runnable;
  }
  L.barrier_arrived = 0;
  if (g_counting != nullptr) g_counting->warps.assign(warps, WarpCopies{});
  if (L.dynamic_shared_bytes > 0) std::memset(L.dynamic_shared, 0xff, L.dynamic_shared_bytes);

  // Scheduling policy of this block: a warp runs `budget` steps (each runnable lane until it blocks) before
  // another is drawn; one step, a few, or until the whole warp waits at a barrier.
  const uint32_t policy = L.rng.below(3);
  int warp = -1;
  uint32_t budget = 0;
  std::vector<int> candidates;
  candidates.reserve(warps);
  while (true) {
    if (warp < 0 || budget == 0 || L.warps[warp].runnable == 0) {
      candidates.clear();
      for (int w = 0; w < warps; ++w) {
        if (L.warps[w].runnable > 0) candidates.push_back(w);
      }
      if (candidates.empty()) {
        bool all_exited = true;
        for (int i = 0; i < n; ++i) all_exited = all_exited && threads[i].state == State::Exited;
        if (all_exited) {
          if (g_counting != nullptr) g_counting->finish_block();
          return;
        }
        diagnose_stall(L, threads);
      }
      warp = candidates[L.rng.below(static_cast<uint32_t>(candidates.size()))];
      budget = policy == 0 ? 1 : policy == 1 ? 1 + L.rng.below(16) : UINT32_MAX;
    }
    const int first = warp * 32;
    const int lanes = std::min(32, n - first);
    const int start = static_cast<int>(L.rng.below(static_cast<uint32_t>(lanes)));
    for (int k = 0; k < lanes; ++k) {
      Thread& t = threads[first + (start + k) % lanes];
      if (t.state != State::Runnable) continue;
      resume(t);
      if (L.failed) TORCH_CHECK(false, L.error);
    }
    --budget;
  }
}

void check_config(const LaunchConfig& c, const DeviceProperties& props) {
  auto bad = [&](const std::string& why) {
    TORCH_CHECK(false, "fastcnn emulator: launch of ", c.kernel_name, " with grid ", dim_text(c.grid),
                " x block ", dim_text(c.block), ", ", c.dynamic_shared_bytes,
                " bytes of dynamic shared memory: ", why, " (a GPU would fail this launch)");
  };
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || c.block.x == 0 || c.block.y == 0 || c.block.z == 0) {
    bad("a grid or block dimension is zero");
  }
  const uint64_t threads = static_cast<uint64_t>(c.block.x) * c.block.y * c.block.z;
  if (threads > 1024) bad(std::to_string(threads) + " threads per block, more than 1024");
  if (c.block.x > 1024 || c.block.y > 1024 || c.block.z > 64) bad("block dimensions over (1024, 1024, 64)");
  if (c.grid.x > 2147483647u) bad("grid.x over 2^31 - 1");
  if (c.grid.y > 65535 || c.grid.z > 65535) bad("grid.y or grid.z over 65,535");
  const size_t smem = c.dynamic_shared_bytes;
  if (smem > 48 * 1024) {
    auto& attrs = func_max_dynamic_shared();
    const auto it = attrs.find(c.kernel);
    const int allowed = it == attrs.end() ? 48 * 1024 : it->second;
    if (smem > static_cast<size_t>(allowed)) {
      bad("dynamic shared memory over " + std::to_string(allowed) +
          " bytes; kernels need cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize) above 48 "
          "KiB");
    }
  }
  if (smem > static_cast<size_t>(props.max_shared_optin)) {
    bad("dynamic shared memory over the device's " + std::to_string(props.max_shared_optin) + " bytes");
  }
}

// Blocks of one SM at once on sm_90 from the block's threads and dynamic shared memory alone: 2,048
// threads, 228 KiB of shared memory (1 KiB of it reserved per block, allocated in 128-byte units) and 32
// blocks per SM. Registers and static __shared__ arrays are unknown to the emulator and not counted, so
// this is an upper bound (a kernel that needs 255 registers per thread fits one 256-thread block).
struct Residency {
  int64_t blocks;
  const char* limit;
};

Residency resident_blocks_per_sm(const LaunchConfig& c) {
  const int64_t threads = static_cast<int64_t>(c.block.x) * c.block.y * c.block.z;
  Residency r{32, "blocks"};
  const int64_t by_threads = 2048 / ((threads + 31) / 32 * 32);
  if (by_threads < r.blocks) r = {by_threads, "threads"};
  if (c.dynamic_shared_bytes > 0) {
    const int64_t per_block = (static_cast<int64_t>(c.dynamic_shared_bytes) + 1024 + 127) / 128 * 128;
    const int64_t by_shared = 228 * 1024 / per_block;
    if (by_shared < r.blocks) r = {by_shared, "shared"};
  }
  if (r.blocks < 1) r.blocks = 1;
  return r;
}

// The sampled blocks of a launch: `n` linear block indices spread evenly from the first to the last.
std::vector<uint64_t> sampled_blocks(uint64_t count, int64_t n) {
  std::vector<uint64_t> out;
  const uint64_t steps = static_cast<uint64_t>(n) - 1;
  for (uint64_t i = 0; i <= steps; ++i) {
    const unsigned __int128 scaled = static_cast<unsigned __int128>(i) * (count - 1) + steps / 2;
    out.push_back(static_cast<uint64_t>(scaled / steps));
  }
  return out;
}

std::string json_string(const char* text) {
  std::string out = "\"";
  for (const char* p = text; *p != '\0'; ++p) {
    const unsigned char ch = static_cast<unsigned char>(*p);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += static_cast<char>(ch);
    } else if (ch < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", ch);
      out += buf;
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out + "\"";
}

std::string json_dim(dim3 d) {
  return "[" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + "]";
}

// The counters as a JSON object, each multiplied by `scale` (blocks / blocks run) and rounded.
std::string json_counters(const LaunchCounters& c, long double scale) {
  const std::pair<const char*, uint64_t> fields[] = {
      {"mma_issued", c.mma},
      {"macs_issued", c.macs},
      {"useful_macs", c.useful_macs},
      {"ldmatrix", c.ldmatrix},
      {"ldmatrix_bytes", c.ldmatrix_bytes},
      {"ldmatrix_wavefronts", c.ldmatrix_wavefronts},
      {"bank_conflicts", c.bank_conflicts},
      {"cp_async", c.cp_async},
      {"cp_async_warp_instructions", c.cp_async_warp},
      {"cp_async_bytes", c.cp_async_bytes},
      {"cp_async_zero_fill", c.cp_async_zero_fill},
      {"cp_async_sectors", c.cp_async_sectors},
      {"barriers", c.barriers},
  };
  std::string out = "{";
  bool first = true;
  for (const auto& [name, value] : fields) {
    if (!first) out += ", ";
    first = false;
    const long double v = static_cast<long double>(value) * scale;
    out += json_string(name) + ": " + std::to_string(static_cast<uint64_t>(v + 0.5L));
  }
  return out + "}";
}

std::string launch_record(uint64_t index, const LaunchConfig& c, int sm_count, uint64_t blocks,
                          uint64_t blocks_run, const LaunchCounters& counters) {
  const Residency r = resident_blocks_per_sm(c);
  const uint64_t per_wave = static_cast<uint64_t>(r.blocks) * static_cast<uint64_t>(sm_count);
  const uint64_t waves = (blocks + per_wave - 1) / per_wave;
  const double fraction = static_cast<double>(blocks) / static_cast<double>(per_wave);
  char wave_text[32], barrier_text[32];
  std::snprintf(wave_text, sizeof(wave_text), "%.6g", fraction);
  std::snprintf(barrier_text, sizeof(barrier_text), "%.6g",
                static_cast<double>(counters.barriers) / static_cast<double>(blocks_run));
  const uint64_t threads = static_cast<uint64_t>(c.block.x) * c.block.y * c.block.z;
  std::string out = "{";
  out += "\"launch\": " + std::to_string(index);
  out += ", \"kernel\": " + json_string(c.kernel_name);
  out += ", \"grid\": " + json_dim(c.grid) + ", \"block\": " + json_dim(c.block);
  out += ", \"threads_per_block\": " + std::to_string(threads);
  out += ", \"dynamic_shared_bytes\": " + std::to_string(c.dynamic_shared_bytes);
  out += ", \"blocks\": " + std::to_string(blocks) + ", \"blocks_run\": " + std::to_string(blocks_run);
  out += std::string(", \"sampled\": ") + (blocks_run < blocks ? "true" : "false");
  out += ", \"sm_count\": " + std::to_string(sm_count);
  out += ", \"resident_blocks_per_sm\": " + std::to_string(r.blocks);
  out += ", \"resident_limit\": " + json_string(r.limit);
  out += ", \"registers_known\": false";
  out += ", \"waves\": " + std::to_string(waves) + ", \"wave_fraction\": " + wave_text;
  out += ", \"barriers_per_block\": " + std::string(barrier_text);
  out += ", \"raw\": " + json_counters(counters, 1.0L);
  out += ", \"scaled\": " +
         json_counters(counters, static_cast<long double>(blocks) / static_cast<long double>(blocks_run));
  return out + "}";
}

}  // namespace

// ---- public entry points --------------------------------------------------------------------------------
DeviceProperties device_properties() {
  const Settings& s = settings();
  return DeviceProperties{s.arch, s.sm_count, max_shared_optin_for(s.arch)};
}

namespace {
std::atomic<uint64_t> g_configuration_generation{0};
}  // namespace

void configure(int arch, int sm_count, int64_t seed) {
  std::lock_guard<std::mutex> lock(launch_mutex());
  Settings& s = settings();
  if (arch > 0) s.arch = arch;
  if (sm_count > 0) s.sm_count = sm_count;
  if (seed >= 0) s.seed = static_cast<uint64_t>(seed);
  g_configuration_generation.fetch_add(1, std::memory_order_relaxed);
}

uint64_t configuration_generation() {
  return g_configuration_generation.load(std::memory_order_relaxed);
}

void set_ablation(const std::string& site) {
  std::lock_guard<std::mutex> lock(launch_mutex());
  settings().ablate = site;
}

std::vector<int64_t> stats() {
  return {static_cast<int64_t>(g_launches.load()), static_cast<int64_t>(g_attribute_queries.load()),
          static_cast<int64_t>(g_ablated_hits.load())};
}

cudaError_t device_get_attribute(int* value, cudaDeviceAttr attr, int device) {
  g_attribute_queries.fetch_add(1, std::memory_order_relaxed);
  if (device != 0 || value == nullptr) return cudaErrorInvalidValue;
  const DeviceProperties p = device_properties();
  switch (attr) {
    case cudaDevAttrMultiProcessorCount:
      *value = p.sm_count;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor:
      *value = p.arch / 10;
      return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
      *value = p.arch % 10;
      return cudaSuccess;
    case cudaDevAttrMaxThreadsPerBlock:
      *value = 1024;
      return cudaSuccess;
    case cudaDevAttrWarpSize:
      *value = 32;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock:
      *value = 48 * 1024;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = p.max_shared_optin;
      return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

cudaError_t func_set_attribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
  if (value < 0 || value > device_properties().max_shared_optin) return cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(launch_mutex());
  func_max_dynamic_shared()[func] = value;
  return cudaSuccess;
}

cudaError_t get_last_error() {
  return cudaSuccess;  // launches raise their errors synchronously
}

const char* error_string(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    default:
      return "unspecified emulated error";
  }
}

void run_grid(const LaunchConfig& config, ThreadBody body, void* context) {
  std::lock_guard<std::mutex> lock(launch_mutex());
  RuntimeScope runtime;
  const DeviceProperties props = device_properties();
  check_config(config, props);
  const uint64_t index = g_launches.fetch_add(1, std::memory_order_relaxed);
  Launch L;
  L.config = &config;
  L.body = body;
  L.context = context;
  L.seed = settings().seed * 0x9e3779b97f4a7c15ull + index;
  L.rng = Rng{L.seed};
  L.block_threads = static_cast<int>(config.block.x * config.block.y * config.block.z);
  L.dynamic_shared_bytes = config.dynamic_shared_bytes;
  L.dynamic_shared = shared_buffer(config.dynamic_shared_bytes);
  std::vector<Thread>& threads = thread_pool();
  if (threads.size() < static_cast<size_t>(L.block_threads)) threads.resize(L.block_threads);
#if FASTCNN_EMU_TSAN
  g_scheduler_tsan_fiber = __tsan_get_current_fiber();
#endif
  g_launch = &L;
  // The host's writes before the launch happen before every CUDA thread; every thread's accesses happen
  // before the host's after it (TSan builds).
  happens_before_release(&g_launch_token);
  struct Reset {
    ~Reset() {
#if FASTCNN_EMU_TSAN
      // Threads abandoned by a fault never reached their release: release on their behalf.
      if (std::uncaught_exceptions() > 0) {
        for (Thread& t : thread_pool()) {
          if (t.tsan_fiber == nullptr) continue;
          __tsan_switch_to_fiber(t.tsan_fiber, __tsan_switch_to_fiber_no_sync);
          __tsan_release(&g_launch_token);
        }
        __tsan_switch_to_fiber(g_scheduler_tsan_fiber, __tsan_switch_to_fiber_no_sync);
      }
#endif
      happens_before_acquire(&g_launch_token);
      if (std::uncaught_exceptions() > 0) ++g_fault_epoch;
      g_launch = nullptr;
      g_running = nullptr;
      current = nullptr;
    }
  } reset;
  // Blocks in a random order: i -> (a * i + b) mod count with a coprime to count visits each once.
  const uint64_t gx = config.grid.x, gy = config.grid.y, gz = config.grid.z;
  const uint64_t count = gx * gy * gz;
  uint64_t a = 1, b = 0;
  if (count > 1) {
    b = L.rng.next() % count;
    do {
      a = 1 + L.rng.next() % (count - 1);
    } while (std::__gcd(a, count) != 1);
  }
  // Counting, when enabled, may run a sample of the blocks (counters_enable): the outputs of the other
  // blocks are never written, so a sampled launch is for its counters only.
  const CounterSettings& cs = counter_settings();
  Counting counting;
  std::vector<uint64_t> sample;
  if (cs.enabled) {
    g_counting = &counting;
    g_counters = &counting.counters;
    if (cs.sample_blocks > 0 && static_cast<uint64_t>(cs.sample_blocks) < count) {
      sample = sampled_blocks(count, cs.sample_blocks);
    }
  }
  struct StopCounting {
    ~StopCounting() {
      g_counting = nullptr;
      g_counters = nullptr;
    }
  } stop_counting;
  uint64_t blocks_run = 0;
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t linear = static_cast<uint64_t>((static_cast<unsigned __int128>(a) * i + b) % count);
    if (!sample.empty() && !std::binary_search(sample.begin(), sample.end(), linear)) continue;
    const uint3 block_idx{static_cast<unsigned>(linear % gx), static_cast<unsigned>((linear / gx) % gy),
                          static_cast<unsigned>(linear / (gx * gy))};
    run_block(L, threads, block_idx);
    ++blocks_run;
  }
  if (cs.enabled) {
    counter_settings().records.push_back(
        launch_record(index, config, props.sm_count, count, blocks_run, counting.counters));
  }
}

void counters_enable(bool enable, int64_t sample_blocks) {
  TORCH_CHECK(sample_blocks == 0 || sample_blocks >= 2,
              "fastcnn_emu: sample_blocks must be 0 (every block) or at least 2 (the first and the last)");
  std::lock_guard<std::mutex> lock(launch_mutex());
  CounterSettings& cs = counter_settings();
  cs.enabled = enable;
  cs.sample_blocks = enable ? sample_blocks : 0;
}

void counters_reset() {
  std::lock_guard<std::mutex> lock(launch_mutex());
  counter_settings().records.clear();
}

std::string counters_read() {
  std::lock_guard<std::mutex> lock(launch_mutex());
  std::string out = "[";
  const std::vector<std::string>& records = counter_settings().records;
  for (size_t i = 0; i < records.size(); ++i) {
    if (i > 0) out += ",\n ";
    out += records[i];
  }
  return out + "]";
}

// ---- called from kernels --------------------------------------------------------------------------------
int current_lane() {
  return g_running != nullptr ? g_running->lane : -1;
}

void fail(const std::string& message, int lane) {
  RuntimeScope runtime;
  TORCH_INTERNAL_ASSERT(g_running != nullptr && g_launch != nullptr, "fastcnn emulator: ", message);
  Launch& L = *g_launch;
  const Thread* t = g_running;
  if (lane >= 0) t = &thread_pool()[t->warp * 32 + lane];
  L.failed = true;
  L.error = where(L, t) + message;
  g_running->state = State::Exited;

  switch_to_scheduler();
  __builtin_trap();
}

bool site_ablated(Site site) {
  const std::string& target = settings().ablate;
  if (target.empty() || site.file == nullptr) return false;
  const std::string text = site_text(site);
  if (text.size() < target.size() || text.compare(text.size() - target.size(), target.size(), target) != 0) {
    return false;
  }
  g_ablated_hits.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void sync_threads(Site site) {
  RuntimeScope runtime;
  if (site_ablated(site)) return;
  Launch& L = *g_launch;
  happens_before_release(&L.barrier_arrived);
  Thread& t = *g_running;
  if (L.barrier_arrived == 0) {
    L.barrier_site = site;
  } else if (L.barrier_site.line != site.line || std::strcmp(L.barrier_site.file, site.file) != 0) {
    fail("threads of the block wait at different __syncthreads: this one at " + site_text(site) +
         ", others at " + site_text(L.barrier_site));
  }
  ++L.barrier_arrived;
  if (L.barrier_arrived == L.block_threads) {
    std::vector<Thread>& threads = thread_pool();
    for (int i = 0; i < L.block_threads; ++i) {
      if (threads[i].state == State::AtBarrier) {
        threads[i].state = State::Runnable;
        ++L.warps[threads[i].warp].runnable;
      }
    }
    L.barrier_arrived = 0;
    if (g_counters != nullptr) ++g_counters->barriers;
    happens_before_acquire(&L.barrier_arrived);
    return;
  }
  t.state = State::AtBarrier;
  t.wait_site = site;
  --L.warps[t.warp].runnable;
  switch_to_scheduler();
  happens_before_acquire(&L.barrier_arrived);
}

const char* collective_name(int kind) {
  static const char* names[] = {"__shfl_sync",       "__match_any_sync",  "__syncwarp",
                                "ldmatrix.x1",       "ldmatrix.x1.trans", "ldmatrix.x2",
                                "ldmatrix.x2.trans", "ldmatrix.x4",       "ldmatrix.x4.trans",
                                "mma.m16n8k16.f16",  "mma.m16n8k16.bf16", "mma.m16n8k8.tf32"};
  return kind >= 0 && kind < static_cast<int>(sizeof(names) / sizeof(names[0])) ? names[kind] : "collective";
}

LaneSlot& warp_collective(int kind, unsigned mask, Site site, const LaneSlot& input, CollectiveFn complete) {
  RuntimeScope runtime;
  Launch& L = *g_launch;
  Thread& t = *g_running;
  Warp& w = L.warps[t.warp];
  const unsigned self = 1u << t.lane;
  if (!(mask & self))
    fail(std::string(collective_name(kind)) + " called with a mask that leaves out the caller");
  if (mask & ~w.present) {
    fail(std::string(collective_name(kind)) + " mask names lanes that do not exist in this (partial) warp");
  }
  if (w.arrived == 0) {
    w.kind = kind;
    w.mask = mask;
    w.site = site;
    w.complete = complete;
  } else if (w.kind != kind || w.mask != mask ||
             (kind != static_cast<int>(Collective::SyncWarp) &&
              (w.site.line != site.line || std::strcmp(w.site.file, site.file) != 0))) {
    fail(std::string("lanes of one warp reached different collectives: this lane ") + collective_name(kind) +
         " at " + site_text(site) + ", others " + collective_name(w.kind) + " at " + site_text(w.site));
  }
  t.slot = input;
  w.arrived |= self;
  // Lanes of one collective are ordered with each other (TSan builds), as __syncwarp orders them.
  happens_before_release(&w);
  if ((w.arrived & mask) == mask) {
    std::vector<Thread>& threads = thread_pool();
    LaneSlot slots[32];
    for (int l = 0; l < 32; ++l) {
      if ((mask >> l) & 1u) slots[l] = threads[t.warp * 32 + l].slot;
    }
    happens_before_acquire(&w);
    if (w.complete != nullptr) {
      KernelScope kernel;
      w.complete(slots, mask);
    }
    for (int l = 0; l < 32; ++l) {
      if (!((mask >> l) & 1u)) continue;
      Thread& lane = threads[t.warp * 32 + l];
      std::memcpy(lane.slot.out, slots[l].out, sizeof(slots[l].out));
      if (l != t.lane) {
        lane.state = State::Runnable;
        ++w.runnable;
      }
    }
    w.arrived = 0;
    return t.slot;
  }
  t.state = State::AtCollective;
  t.wait_site = site;
  --w.runnable;
  switch_to_scheduler();
  happens_before_acquire(&w);
  return t.slot;
}

void sync_warp(unsigned mask, Site site) {
  if (site_ablated(site)) return;
  LaneSlot in{};
  warp_collective(static_cast<int>(Collective::SyncWarp), mask, site, in, nullptr);
}

uint64_t shfl(unsigned mask, uint64_t value, int operand, int width, int mode, Site site) {
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0)
    fail("shuffle width must be a power of 2 <= 32");
  LaneSlot in{};
  in.in[0] = value;
  in.in[1] = static_cast<uint64_t>(static_cast<uint32_t>(operand));
  in.in[2] = static_cast<uint64_t>(width);
  in.in[3] = static_cast<uint64_t>(mode);
  LaneSlot& out = warp_collective(
      static_cast<int>(Collective::Shfl), mask, site, in, [](LaneSlot* slots, unsigned participants) {
        for (int l = 0; l < 32; ++l) {
          if (!((participants >> l) & 1u)) continue;
          const int width = static_cast<int>(slots[l].in[2]);
          const int op = static_cast<int>(static_cast<uint32_t>(slots[l].in[1]));
          const int segment = l & ~(width - 1);
          const int pos = l - segment;
          int src = l;
          switch (static_cast<int>(slots[l].in[3])) {
            case 0:
              src = segment + (op & (width - 1));
              break;
            case 1:
              src = pos - op >= 0 ? l - op : l;
              break;
            case 2:
              src = pos + op < width ? l + op : l;
              break;
            default:
              src = segment + ((pos ^ op) & (width - 1));
              break;
          }
          // A source lane outside the mask yields an undefined value on a GPU: poison it.
          slots[l].out[0] = ((participants >> src) & 1u) ? slots[src].in[0] : ~uint64_t{0};
        }
      });
  return out.out[0];
}

unsigned match_any(unsigned mask, uint64_t value, Site site) {
  LaneSlot in{};
  in.in[0] = value;
  LaneSlot& out = warp_collective(static_cast<int>(Collective::Match), mask, site, in,
                                  [](LaneSlot* slots, unsigned participants) {
                                    for (int l = 0; l < 32; ++l) {
                                      if (!((participants >> l) & 1u)) continue;
                                      unsigned same = 0;
                                      for (int m = 0; m < 32; ++m) {
                                        if (((participants >> m) & 1u) && slots[m].in[0] == slots[l].in[0]) {
                                          same |= 1u << m;
                                        }
                                      }
                                      slots[l].out[0] = same;
                                    }
                                  });
  return static_cast<unsigned>(out.out[0]);
}

void trap(Site site) {
  fail("__trap() at " + site_text(site));
}

unsigned char* dynamic_shared_memory() {
  return g_launch->dynamic_shared;
}

bool in_dynamic_shared(const void* ptr, size_t bytes) {
  const auto* p = static_cast<const unsigned char*>(ptr);
  const Launch& L = *g_launch;
  return p >= L.dynamic_shared && p + bytes <= L.dynamic_shared + L.dynamic_shared_bytes;
}

uint32_t shared_address(const void* ptr, Site site) {
  const auto* p = static_cast<const unsigned char*>(ptr);
  const Launch& L = *g_launch;
  if (p < L.dynamic_shared || p > L.dynamic_shared + L.dynamic_shared_bytes) {
    fail("__cvta_generic_to_shared at " + site_text(site) +
         " got a pointer outside the block's dynamic shared memory (" +
         std::to_string(L.dynamic_shared_bytes) + " bytes)");
  }
  return static_cast<uint32_t>(p - L.dynamic_shared);
}

unsigned char* shared_pointer(uint32_t address, size_t bytes, const char* what, int lane) {
  const Launch& L = *g_launch;
  if (static_cast<size_t>(address) + bytes > L.dynamic_shared_bytes) {
    fail(std::string(what) + ": shared address " + std::to_string(address) + " + " + std::to_string(bytes) +
             " bytes is past the block's " + std::to_string(L.dynamic_shared_bytes) +
             " bytes of shared memory",
         lane);
  }
  return L.dynamic_shared + address;
}

void push_async_copy(const AsyncCopy& copy) {
  RuntimeScope runtime;
  g_running->copies.push_back(copy);
  if (g_counting == nullptr) return;
  Thread& t = *g_running;
  LaunchCounters& c = g_counting->counters;
  ++c.cp_async;
  c.cp_async_bytes += static_cast<uint64_t>(copy.src_bytes);
  if (copy.src_bytes == 0) ++c.cp_async_zero_fill;
  WarpCopies& w = g_counting->warps[t.warp];
  const uint64_t k = t.cp_async_issued++;
  while (w.base + w.groups.size() <= k) w.groups.emplace_back();
  SectorGroup& g = w.groups[k - w.base];
  g.lanes |= 1u << t.lane;
  // A 16-byte aligned request of at most 16 bytes lies in one sector; src-size 0 reads nothing.
  if (copy.src_bytes > 0) g.sectors[g.count++] = reinterpret_cast<uintptr_t>(copy.src) / 32;
  const unsigned present = g_launch->warps[t.warp].present;
  while (!w.groups.empty() && w.groups.front().lanes == present) {
    g_counting->finish(w.groups.front());
    w.groups.pop_front();
    ++w.base;
  }
}

void commit_async_copies() {
  RuntimeScope runtime;
  Thread& t = *g_running;
  t.group_ends.push_back(t.copies.size());
}

void wait_async_copies(int pending_groups) {
  RuntimeScope runtime;
  Thread& t = *g_running;
  const size_t allowed = static_cast<size_t>(std::max(pending_groups, 0));
  while (t.group_ends.size() - t.groups_done > allowed) {
    const size_t end = t.group_ends[t.groups_done++];
    for (; t.landed < end; ++t.landed) {
      const AsyncCopy& c = t.copies[t.landed];
      KernelScope kernel;
      if (c.src_bytes > 0) std::memcpy(c.dst, c.src, static_cast<size_t>(c.src_bytes));
      if (c.src_bytes < 16) std::memset(c.dst + c.src_bytes, 0, static_cast<size_t>(16 - c.src_bytes));
    }
  }
  if (t.landed == t.copies.size() && t.groups_done == t.group_ends.size()) {
    t.copies.clear();
    t.group_ends.clear();
    t.landed = 0;
    t.groups_done = 0;
  }
}

}  // namespace emu
}  // namespace fastcnn
