// fastcnn's SIMT emulator, the part the CUDA sources see: kernel launches and the sm_80 warp-level
// instructions of cuda/common/mma.cuh. Each CUDA thread runs as a fiber; a block's threads share one OS
// thread, blocks run one after another in a random order, and warps are interleaved by a seeded random
// scheduler between their blocking points (barriers and warp collectives). See csrc/emu/README.md.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

namespace fastcnn {
namespace emu {

struct LaunchConfig {
  const char* kernel_name;
  const void* kernel;
  dim3 grid;
  dim3 block;
  size_t dynamic_shared_bytes;
};

using ThreadBody = void (*)(void* context);

// Runs body(context) once per CUDA thread of the grid. Throws c10::Error for a bad configuration or
// when a thread faults (the message names the kernel, block and thread).
void run_grid(const LaunchConfig& config, ThreadBody body, void* context);

// The kernel's name, taken from the compiler's signature of this instantiation ("... Kernel = name]").
template <auto Kernel>
const char* kernel_name() {
  static const std::string name = [](std::string_view sig) {
    const auto begin = sig.find("Kernel = ");
    if (begin == std::string_view::npos) return std::string(sig);
    const auto end = sig.find_first_of(";]", begin);
    return std::string(sig.substr(begin + 9, end == std::string_view::npos ? end : end - begin - 9));
  }(__PRETTY_FUNCTION__);
  return name.c_str();
}

template <typename... Params, typename... Args>
void launch_with(void (*kernel)(Params...), const char* name, dim3 grid, dim3 block, size_t shared_bytes,
                 Args&&... args) {
  // Like the CUDA parameter buffer: arguments are converted to the parameter types once, and every
  // thread receives its own copies.
  struct Frame {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> params;
  };
  Frame frame{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
  run_grid(
      LaunchConfig{name, reinterpret_cast<const void*>(kernel), grid, block, shared_bytes},
      [](void* context) {
        Frame* f = static_cast<Frame*>(context);
        std::apply(f->kernel, f->params);
      },
      &frame);
}

template <auto Kernel, typename... Args>
void launch(dim3 grid, dim3 block, size_t shared_bytes, Args&&... args) {
  launch_with(Kernel, kernel_name<Kernel>(), grid, block, shared_bytes, std::forward<Args>(args)...);
}

// ---- the emulated device ------------------------------------------------------------------------------
struct DeviceProperties {
  int arch;  // compute capability as major * 10 + minor, e.g. 90 for sm_90
  int sm_count;
  int max_shared_optin;  // bytes of dynamic shared memory a kernel may opt in to
};
DeviceProperties device_properties();

// ---- sm_80 instructions (PTX ISA semantics; see instructions.cpp) -------------------------------------
// ldmatrix.sync.aligned.m8n8.x{num}{.trans}.shared.b16: lane 8i+j gives the shared address of row j of
// matrix i; out[i] receives the lane's two b16 elements of matrix i.
void ldmatrix(uint32_t* out, int num, bool trans, uint32_t shared_addr, Site site);
enum class MmaType : int { F16 = 0, BF16 = 1, TF32 = 2 };
// mma.sync.aligned.{m16n8k16 (f16, bf16), m16n8k8 (tf32)}.row.col.f32.T.T.f32, d = a * b + c in place.
void mma(MmaType type, float* d, const uint32_t* a, uint32_t b0, uint32_t b1, Site site);
uint32_t cvt_rna_tf32(float x);
// cp.async.cg.shared.global [dst], [src], 16, src_bytes: the 16 destination bytes read as NaN (0xff) from
// issue until the copy lands at the wait_group that completes its commit group.
void cp_async(void* shared_dst, const void* global_src, int src_bytes, Site site);
void cp_async_commit(Site site);
void cp_async_wait(int pending_groups, Site site);

}  // namespace emu
}  // namespace fastcnn
