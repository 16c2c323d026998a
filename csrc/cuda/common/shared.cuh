// Dynamic shared memory for the fastcnn CUDA kernels: FASTCNN_EXTERN_SHARED(name) declares the block's
// dynamic shared memory as a 16-byte aligned unsigned char array `name`. In the emulation build
// (FASTCNN_CUDA_EMU) it is the emulated block's shared memory, poisoned with NaN (0xff bytes) at the
// start of every block.
#pragma once

#include <cuda_runtime.h>

#if FASTCNN_CUDA_EMU
#include "emu/runtime.h"
#define FASTCNN_EXTERN_SHARED(name) unsigned char* const name = ::fastcnn::emu::dynamic_shared_memory()
#else
#define FASTCNN_EXTERN_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif
