// fastcnn emulator stand-in for c10/cuda/CUDAStream.h: launches run synchronously, in call order, so a
// single (null) stream is all the emulated device has.
#pragma once

#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime.h>

namespace c10 {
namespace cuda {

class CUDAStream {
 public:
  cudaStream_t stream() const { return nullptr; }
  operator cudaStream_t() const { return nullptr; }
  c10::DeviceIndex device_index() const { return 0; }
};

inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) {
  return CUDAStream();
}

}  // namespace cuda
}  // namespace c10
