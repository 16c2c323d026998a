// torch.ops.fastcnn_emu: the emulation extension's own controls and self-tests, and the poisoning of
// new CPU tensors (every allocation starts as NaN, 0xff bytes, unless FASTCNN_EMU_POISON=0), so that an
// output element a kernel never writes fails the tests instead of passing on leftover memory.
// configure() picks the
// emulated device (compute capability, SM count) and the scheduling seed; stats() counts launches and
// device-attribute queries; set_ablation() removes one barrier or wait_group site at run time;
// counters_enable/reset/read() count the work of each launch (README.md "Counters",
// tests/test_emu_counters.py); the test_* ops run the kernels of instruction_tests.cuh and deliberately
// faulty kernels whose faults the emulator must report (tests/test_emulator.py).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/common/launch.cuh"
#include "emu/instruction_tests.cuh"

namespace fastcnn {
namespace emu {

void configure(int arch, int sm_count, int64_t seed);
void set_ablation(const std::string& site);
std::vector<int64_t> stats();
void counters_enable(bool enable, int64_t sample_blocks);
void counters_reset();
std::string counters_read();

namespace {

class PoisoningAllocator final : public c10::Allocator {
 public:
  explicit PoisoningAllocator(c10::Allocator* base) : base_(base) {}
  c10::DataPtr allocate(size_t bytes) override {
    c10::DataPtr p = base_->allocate(bytes);
    if (p.get() != nullptr && bytes > 0) std::memset(p.get(), 0xff, bytes);
    return p;
  }
  c10::DeleterFnPtr raw_deleter() const override { return base_->raw_deleter(); }
  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  c10::Allocator* base_;
};

const bool g_poison_installed = [] {
  const char* env = std::getenv("FASTCNN_EMU_POISON");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  static PoisoningAllocator poisoning(c10::GetCPUAllocator());
  c10::SetCPUAllocator(&poisoning, /*priority=*/1);
  return true;
}();

using cuda::launch_kernel;
using namespace emu_tests;

void configure_op(int64_t arch, int64_t sm_count, int64_t seed) {
  configure(static_cast<int>(arch), static_cast<int>(sm_count), seed);
}

std::vector<int64_t> properties_op() {
  const DeviceProperties p = device_properties();
  return {p.arch, p.sm_count, p.max_shared_optin};
}

void set_ablation_op(c10::string_view site) {
  set_ablation(std::string(site));
}

void counters_enable_op(bool enable, int64_t sample_blocks) {
  counters_enable(enable, sample_blocks);
}

at::Tensor contiguous_of(const at::Tensor& t, at::ScalarType dtype, int64_t numel, const char* name) {
  TORCH_CHECK(t.scalar_type() == dtype && t.numel() == numel, "fastcnn_emu: ", name, " must be ", dtype,
              " with ", numel, " elements, got ", t.scalar_type(), " with ", t.numel());
  return t.contiguous();
}

template <typename T>
T* ptr(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

at::Tensor test_ldmatrix(const at::Tensor& src, int64_t num, bool trans) {
  TORCH_CHECK(num == 1 || num == 2 || num == 4, "fastcnn_emu: num must be 1, 2 or 4");
  const at::Tensor s = contiguous_of(src, at::kShort, num * 64, "src");
  at::Tensor out = at::empty({32 * num}, src.options().dtype(at::kInt));
  const auto* in = ptr<const uint16_t>(s);
  auto* o = ptr<uint32_t>(out);
  const size_t shm = kInstructionTestSharedBytes;
  if (num == 1) {
    trans ? launch_kernel<ldmatrix_test_kernel<1, true>>(1, 32, shm, nullptr, in, o)
          : launch_kernel<ldmatrix_test_kernel<1, false>>(1, 32, shm, nullptr, in, o);
  } else if (num == 2) {
    trans ? launch_kernel<ldmatrix_test_kernel<2, true>>(1, 32, shm, nullptr, in, o)
          : launch_kernel<ldmatrix_test_kernel<2, false>>(1, 32, shm, nullptr, in, o);
  } else {
    trans ? launch_kernel<ldmatrix_test_kernel<4, true>>(1, 32, shm, nullptr, in, o)
          : launch_kernel<ldmatrix_test_kernel<4, false>>(1, 32, shm, nullptr, in, o);
  }
  return out;
}

at::Tensor test_mma(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, int64_t kind) {
  const at::Tensor ac = contiguous_of(a, at::kInt, 128, "a");
  const at::Tensor bc = contiguous_of(b, at::kInt, 64, "b");
  const at::Tensor cc = contiguous_of(c, at::kFloat, 128, "c");
  at::Tensor d = at::empty({128}, c.options());
  const auto* pa = ptr<const uint32_t>(ac);
  const auto* pb = ptr<const uint32_t>(bc);
  const auto* pc = ptr<const float>(cc);
  auto* pd = ptr<float>(d);
  if (kind == 0) {
    launch_kernel<mma_test_kernel<0>>(1, 32, 0, nullptr, pa, pb, pc, pd);
  } else if (kind == 1) {
    launch_kernel<mma_test_kernel<1>>(1, 32, 0, nullptr, pa, pb, pc, pd);
  } else {
    TORCH_CHECK(kind == 2, "fastcnn_emu: kind must be 0 (f16), 1 (bf16) or 2 (tf32)");
    launch_kernel<mma_test_kernel<2>>(1, 32, 0, nullptr, pa, pb, pc, pd);
  }
  return d;
}

at::Tensor test_mma_chain(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, bool k_major) {
  const at::Tensor cc = contiguous_of(c, at::kFloat, 128, "c");
  at::Tensor d = at::empty({16, 8}, c.options());
  const size_t shm = kInstructionTestSharedBytes;
  if (a.scalar_type() == at::kFloat) {
    const at::Tensor ac = contiguous_of(a, at::kFloat, 128, "a");
    const at::Tensor bc = contiguous_of(b, at::kFloat, 64, "b");
    launch_kernel<mma_tf32_chain_test_kernel>(1, 32, 0, nullptr, ptr<const float>(ac), ptr<const float>(bc),
                                              ptr<const float>(cc), ptr<float>(d));
    return d;
  }
  const at::ScalarType dt = a.scalar_type();
  const at::Tensor ac = contiguous_of(a, dt, 256, "a");
  const at::Tensor bc = contiguous_of(b, dt, 128, "b");
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* pa = ptr<const T>(ac);
    const T* pb = ptr<const T>(bc);
    k_major ? launch_kernel<mma_chain_test_kernel<T, true>>(1, 32, shm, nullptr, pa, pb, ptr<const float>(cc),
                                                            ptr<float>(d))
            : launch_kernel<mma_chain_test_kernel<T, false>>(1, 32, shm, nullptr, pa, pb,
                                                             ptr<const float>(cc), ptr<float>(d));
  };
  if (dt == at::kHalf) {
    run(c10::Half{});
  } else {
    TORCH_CHECK(dt == at::kBFloat16, "fastcnn_emu: a must be float16, bfloat16 or float32");
    run(c10::BFloat16{});
  }
  return d;
}

// ldmatrix with lane l's row at byte offset offsets[l] of zeroed shared memory, so that a test can pick
// the row addresses (the bank-conflict counters depend on them alone). Returns lane-major registers.
template <int Num>
__global__ void ldmatrix_rows_kernel(const int* offsets, uint32_t* out) {
  FASTCNN_EXTERN_SHARED(smem);
  for (int i = threadIdx.x; i < kInstructionTestSharedBytes; i += 32) smem[i] = 0;
  __syncthreads();
  uint32_t r[Num];
  const unsigned char* row = smem + offsets[threadIdx.x];
  if constexpr (Num == 1) {
    cuda::ldmatrix_x1(r, row);
  } else if constexpr (Num == 2) {
    cuda::ldmatrix_x2(r, row);
  } else {
    cuda::ldmatrix_x4(r, row);
  }
  for (int i = 0; i < Num; ++i) out[threadIdx.x * Num + i] = r[i];
}

at::Tensor test_ldmatrix_rows(const at::Tensor& offsets, int64_t num) {
  const at::Tensor o = contiguous_of(offsets, at::kInt, 32, "offsets");
  const auto* po = ptr<const int>(o);
  for (int l = 0; l < 32; ++l) {
    TORCH_CHECK(po[l] >= 0 && po[l] + 16 <= kInstructionTestSharedBytes,
                "fastcnn_emu: offsets must lie in [0, ", kInstructionTestSharedBytes - 16, "]");
  }
  at::Tensor out = at::empty({32 * num}, offsets.options());
  auto* pout = ptr<uint32_t>(out);
  const size_t shm = kInstructionTestSharedBytes;
  if (num == 1) {
    launch_kernel<ldmatrix_rows_kernel<1>>(1, 32, shm, nullptr, po, pout);
  } else if (num == 2) {
    launch_kernel<ldmatrix_rows_kernel<2>>(1, 32, shm, nullptr, po, pout);
  } else {
    TORCH_CHECK(num == 4, "fastcnn_emu: num must be 1, 2 or 4");
    launch_kernel<ldmatrix_rows_kernel<4>>(1, 32, shm, nullptr, po, pout);
  }
  return out;
}

at::Tensor test_cvt_tf32(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "fastcnn_emu: x must be float32");
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kInt));
  launch_kernel<cvt_tf32_test_kernel>(1, 32, 0, nullptr, ptr<const float>(xc), ptr<uint32_t>(out),
                                      static_cast<int>(x.numel()));
  return out;
}

at::Tensor test_cp_async(const at::Tensor& src) {
  const at::Tensor s = contiguous_of(src, at::kInt, 128, "src");
  at::Tensor out = at::empty({128}, src.options());
  launch_kernel<cp_async_test_kernel>(1, 32, kInstructionTestSharedBytes, nullptr, ptr<const uint32_t>(s),
                                      ptr<uint32_t>(out));
  return out;
}

at::Tensor test_shfl_match(const at::Tensor& values) {
  const at::Tensor v = contiguous_of(values, at::kInt, 32, "values");
  at::Tensor out = at::empty({64}, values.options());
  launch_kernel<shfl_match_test_kernel>(1, 32, 0, nullptr, ptr<const int>(v), ptr<unsigned>(out));
  return out;
}

// ---- faulty kernels: each must be stopped with a clear message -----------------------------------------
__global__ void partial_warp_shuffle_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x < 16) v = __shfl_sync(0xffffffffu, v, 0);
  out[threadIdx.x] = v;
}

__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

__global__ void exit_before_barrier_kernel(float* out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void misaligned_vector_kernel(float* out) {
  // 16-byte vector load from an address 4 bytes past alignment.
  const uint4 v = *reinterpret_cast<const uint4*>(out + 1);
  out[threadIdx.x] = static_cast<float>(v.x);
}

__global__ void ldmatrix_misaligned_kernel(float* out) {
  FASTCNN_EXTERN_SHARED(smem);
  uint32_t r[4];
  cuda::ldmatrix_x4(r, smem + 8 + threadIdx.x * 32);
  out[threadIdx.x] = static_cast<float>(r[0]);
}

__global__ void ldmatrix_out_of_range_kernel(float* out) {
  FASTCNN_EXTERN_SHARED(smem);
  uint32_t r[4];
  // Lanes 16-31 give the address one past the 1 KiB allocation: a row there runs off its end.
  cuda::ldmatrix_x4(r, smem + (threadIdx.x < 16 ? threadIdx.x * 16 : 1024));
  out[threadIdx.x] = static_cast<float>(r[0]);
}

__global__ void generic_pointer_outside_shared_kernel(float* out) {
  FASTCNN_EXTERN_SHARED(smem);
  uint32_t r[4];
  cuda::ldmatrix_x4(r, smem + threadIdx.x * 64);  // past lane 16: beyond the block's shared memory
  out[threadIdx.x] = static_cast<float>(r[0]);
}

__global__ void trap_kernel(float* out) {
  if (threadIdx.x == 3) __trap();
  out[threadIdx.x] = 1.f;
}

__global__ void plain_kernel(float* out) {
  out[threadIdx.x % 32] = 1.f;
}

void test_fault(c10::string_view name_view, const at::Tensor& scratch) {
  const std::string name(name_view);
  TORCH_CHECK(scratch.scalar_type() == at::kFloat && scratch.numel() >= 2048 && scratch.is_contiguous(),
              "fastcnn_emu: scratch must be a contiguous float32 tensor of >= 2048 elements");
  float* out = ptr<float>(scratch);
  if (name == "partial_warp_collective") {
    launch_kernel<partial_warp_shuffle_kernel>(1, 32, 0, nullptr, out);
  } else if (name == "divergent_barrier") {
    launch_kernel<divergent_barrier_kernel>(1, 64, 0, nullptr, out);
  } else if (name == "exit_before_barrier") {
    launch_kernel<exit_before_barrier_kernel>(1, 64, 0, nullptr, out);
  } else if (name == "misaligned_vector") {
    launch_kernel<misaligned_vector_kernel>(1, 32, 0, nullptr, out);
  } else if (name == "ldmatrix_misaligned") {
    launch_kernel<ldmatrix_misaligned_kernel>(1, 32, 2048, nullptr, out);
  } else if (name == "ldmatrix_out_of_range") {
    launch_kernel<ldmatrix_out_of_range_kernel>(1, 32, 1024, nullptr, out);
  } else if (name == "pointer_outside_shared") {
    launch_kernel<generic_pointer_outside_shared_kernel>(1, 32, 1024, nullptr, out);
  } else if (name == "trap") {
    launch_kernel<trap_kernel>(1, 32, 0, nullptr, out);
  } else if (name == "too_many_threads") {
    launch_kernel<plain_kernel>(1, 1025, 0, nullptr, out);
  } else if (name == "grid_y_too_large") {
    launch_kernel<plain_kernel>(dim3(1, 65536), 32, 0, nullptr, out);
  } else if (name == "shared_over_48k") {
    launch_kernel<plain_kernel>(1, 32, 64 * 1024, nullptr, out);
  } else {
    TORCH_CHECK(false, "fastcnn_emu: no fault test named '", name, "'");
  }
}

// Each warp writes its own 32 values to shared memory and reads the next warp's, with or without the
// barrier in between: without it, a reader that runs ahead of the writer sees the NaN poison.
__global__ void neighbour_exchange_kernel(float* out, bool with_barrier) {
  FASTCNN_EXTERN_SHARED(smem_raw);
  float* smem = reinterpret_cast<float*>(smem_raw);
  const int tid = threadIdx.x;
  smem[tid] = static_cast<float>(tid);
  if (with_barrier) __syncthreads();
  out[tid] = smem[(tid + 32) % blockDim.x];
}

at::Tensor test_neighbour_exchange(bool with_barrier) {
  at::Tensor out = at::empty({256}, at::TensorOptions().dtype(at::kFloat));
  launch_kernel<neighbour_exchange_kernel>(1, 256, 256 * sizeof(float), nullptr, ptr<float>(out),
                                           with_barrier);
  return out;
}

}  // namespace
}  // namespace emu
}  // namespace fastcnn

TORCH_LIBRARY(fastcnn_emu, m) {
  m.def("configure(int arch, int sm_count, int seed) -> ()", &fastcnn::emu::configure_op);
  m.def("properties() -> int[]", &fastcnn::emu::properties_op);
  m.def("stats() -> int[]", &fastcnn::emu::stats);
  m.def("set_ablation(str site) -> ()", &fastcnn::emu::set_ablation_op);
  m.def("counters_enable(bool enable, int sample_blocks=0) -> ()", &fastcnn::emu::counters_enable_op);
  m.def("counters_reset() -> ()", &fastcnn::emu::counters_reset);
  m.def("counters_read() -> str", &fastcnn::emu::counters_read);
  m.def("test_ldmatrix_rows(Tensor offsets, int num) -> Tensor", &fastcnn::emu::test_ldmatrix_rows);
  m.def("test_ldmatrix(Tensor src, int num, bool trans) -> Tensor", &fastcnn::emu::test_ldmatrix);
  m.def("test_mma(Tensor a, Tensor b, Tensor c, int kind) -> Tensor", &fastcnn::emu::test_mma);
  m.def("test_mma_chain(Tensor a, Tensor b, Tensor c, bool k_major) -> Tensor",
        &fastcnn::emu::test_mma_chain);
  m.def("test_cvt_tf32(Tensor x) -> Tensor", &fastcnn::emu::test_cvt_tf32);
  m.def("test_cp_async(Tensor src) -> Tensor", &fastcnn::emu::test_cp_async);
  m.def("test_shfl_match(Tensor values) -> Tensor", &fastcnn::emu::test_shfl_match);
  m.def("test_fault(str name, Tensor scratch) -> ()", &fastcnn::emu::test_fault);
  m.def("test_neighbour_exchange(bool with_barrier) -> Tensor", &fastcnn::emu::test_neighbour_exchange);
}
