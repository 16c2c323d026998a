// Hardware goldens for fastcnn's SIMT emulator: runs the instruction-test kernels of
// csrc/emu/instruction_tests.cuh (the same source the emulator's tests run) on a real GPU, on inputs
// generated here, and writes inputs and outputs as JSON. Commit the file as tests/data/emu_goldens.json:
// tests/test_emulator.py then feeds the same inputs to the emulated instructions and compares bit for
// bit (exact cases) or within 2 ulp (cases whose f32 accumulation rounds).
//
// Build and run (scripts/gpu_check.sh does this first):
//   nvcc -std=c++17 -O2 -arch=sm_90 -Icsrc -I<torch>/include scripts/emu_goldens.cu -o emu_goldens
//   ./emu_goldens out.json
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "emu/instruction_tests.cuh"

using namespace fastcnn::emu_tests;

#define CHECK(expr)                                                             \
  do {                                                                          \
    cudaError_t err_ = (expr);                                                  \
    if (err_ != cudaSuccess) {                                                  \
      std::fprintf(stderr, "%s failed: %s\n", #expr, cudaGetErrorString(err_)); \
      std::exit(1);                                                             \
    }                                                                           \
  } while (0)

namespace {

uint32_t lcg_state = 12345u;
uint32_t lcg() {
  lcg_state = lcg_state * 1664525u + 1013904223u;
  return lcg_state;
}

template <typename T>
T* device_copy(const std::vector<T>& host) {
  T* d = nullptr;
  CHECK(cudaMalloc(&d, host.size() * sizeof(T) + 16));
  CHECK(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

template <typename T>
std::vector<T> host_copy(const T* d, size_t n) {
  std::vector<T> host(n);
  CHECK(cudaDeviceSynchronize());
  CHECK(cudaMemcpy(host.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

template <typename T>
std::string json_list(const std::vector<T>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

uint16_t half_bits(float f) {
  return c10::Half(f).x;
}
uint16_t bf16_bits(float f) {
  return c10::BFloat16(f).x;
}

template <int Num, bool Trans>
std::string ldmatrix_case() {
  std::vector<uint16_t> src(Num * 64);
  for (int i = 0; i < Num * 64; ++i) src[i] = static_cast<uint16_t>(i);
  uint16_t* d_src = device_copy(src);
  uint32_t* d_out = nullptr;
  CHECK(cudaMalloc(&d_out, 32 * Num * 4));
  ldmatrix_test_kernel<Num, Trans><<<1, 32, kInstructionTestSharedBytes>>>(d_src, d_out);
  CHECK(cudaGetLastError());
  const std::vector<uint32_t> out = host_copy(d_out, 32 * Num);
  std::vector<uint32_t> in(src.begin(), src.end());
  return "{\"num\": " + std::to_string(Num) + ", \"trans\": " + (Trans ? "true" : "false") +
         ", \"input\": " + json_list(in) + ", \"output\": " + json_list(out) + "}";
}

// exact: small integers (every sum exact in f32); else random values whose accumulation rounds.
template <int Kind>
std::string mma_case(bool exact) {
  std::vector<uint32_t> a(128), b(64), c(128);
  auto value = [&](bool small) {
    const uint32_t r = lcg();
    return small ? static_cast<float>(static_cast<int>(r % 17) - 8)
                 : (static_cast<float>(r % 200001) / 100000.0f - 1.0f) * 3.0f;
  };
  auto operand = [&]() -> uint32_t {
    if (Kind == 2) return bits_of(value(exact)) & 0xffffe000u;  // a tf32 value
    const float lo = value(exact), hi = value(exact);
    return Kind == 0 ? (half_bits(lo) | (static_cast<uint32_t>(half_bits(hi)) << 16))
                     : (bf16_bits(lo) | (static_cast<uint32_t>(bf16_bits(hi)) << 16));
  };
  for (auto& v : a) v = operand();
  for (auto& v : b) v = operand();
  for (auto& v : c) v = bits_of(value(exact) / 4.0f);
  uint32_t* d_a = device_copy(a);
  uint32_t* d_b = device_copy(b);
  float* d_c = reinterpret_cast<float*>(device_copy(c));
  float* d_d = nullptr;
  CHECK(cudaMalloc(&d_d, 128 * 4));
  mma_test_kernel<Kind><<<1, 32>>>(d_a, d_b, d_c, d_d);
  CHECK(cudaGetLastError());
  const std::vector<float> d = host_copy(d_d, 128);
  std::vector<uint32_t> out(128);
  for (int i = 0; i < 128; ++i) out[i] = bits_of(d[i]);
  return "{\"kind\": " + std::to_string(Kind) + ", \"exact\": " + (exact ? "true" : "false") +
         ", \"a\": " + json_list(a) + ", \"b\": " + json_list(b) + ", \"c\": " + json_list(c) +
         ", \"output\": " + json_list(out) + "}";
}

std::string cvt_case() {
  std::vector<uint32_t> in = {0x00000000u, 0x80000000u, 0x3f800000u, 0x3f801000u, 0xbf801000u,
                              0x3f800fffu, 0x3f803000u, 0x7f800000u, 0xff800000u, 0x7fc00000u,
                              0x7f800001u, 0x7f7fffffu, 0x00000001u, 0x00801000u};
  for (int i = 0; i < 242; ++i) in.push_back(lcg());
  std::vector<float> x(in.size());
  for (size_t i = 0; i < in.size(); ++i) std::memcpy(&x[i], &in[i], 4);
  float* d_x = device_copy(x);
  uint32_t* d_out = nullptr;
  CHECK(cudaMalloc(&d_out, in.size() * 4));
  cvt_tf32_test_kernel<<<1, 32>>>(d_x, d_out, static_cast<int>(in.size()));
  CHECK(cudaGetLastError());
  const std::vector<uint32_t> out = host_copy(d_out, in.size());
  return "{\"input\": " + json_list(in) + ", \"output\": " + json_list(out) + "}";
}

}  // namespace

int main(int argc, char** argv) {
  const char* path = argc > 1 ? argv[1] : "emu_goldens.json";
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::string json = "{\n\"device\": \"" + std::string(prop.name) + " sm_" + std::to_string(prop.major) +
                     std::to_string(prop.minor) + "\",\n\"ldmatrix\": [\n";
  json += ldmatrix_case<1, false>() + ",\n" + ldmatrix_case<1, true>() + ",\n" + ldmatrix_case<2, false>() +
          ",\n" + ldmatrix_case<2, true>() + ",\n" + ldmatrix_case<4, false>() + ",\n" +
          ldmatrix_case<4, true>() + "\n],\n\"mma\": [\n";
  json += mma_case<0>(true) + ",\n" + mma_case<1>(true) + ",\n" + mma_case<2>(true) + ",\n" +
          mma_case<0>(false) + ",\n" + mma_case<1>(false) + ",\n" + mma_case<2>(false) + "\n],\n";
  json += "\"cvt_tf32\": " + cvt_case() + "\n}\n";
  FILE* f = std::fopen(path, "w");
  if (f == nullptr) {
    std::perror(path);
    return 1;
  }
  std::fputs(json.c_str(), f);
  std::fclose(f);
  std::printf("wrote %s (%s)\n", path, prop.name);
  return 0;
}
