// fastcnn emulator stand-in for c10/cuda/CUDAFunctions.h: one emulated device, index 0.
#pragma once

#include <c10/core/Device.h>
#include <cuda_runtime.h>

namespace c10 {
namespace cuda {

inline c10::DeviceIndex current_device() {
  return 0;
}
inline c10::DeviceIndex device_count() noexcept {
  return 1;
}

}  // namespace cuda
}  // namespace c10
