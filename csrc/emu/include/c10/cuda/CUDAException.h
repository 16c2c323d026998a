// fastcnn emulator stand-in for c10/cuda/CUDAException.h: the same checking macros over the emulated
// runtime's error codes. Kernel faults are raised by the emulated launch itself, as a c10::Error.
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#define C10_CUDA_CHECK(EXPR)                                                                      \
  do {                                                                                            \
    const cudaError_t fastcnn_emu_err = (EXPR);                                                   \
    TORCH_CHECK(fastcnn_emu_err == cudaSuccess,                                                   \
                "CUDA error (emulated): ", cudaGetErrorString(fastcnn_emu_err), " from ", #EXPR); \
  } while (0)

#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
