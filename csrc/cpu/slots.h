// The static work split of the CPU conv2d and linear kernels: tasks in contiguous per-thread slots whose
// partial sums are reduced in slot order, so results are bit-identical from run to run.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace fastcnn {
namespace cpu {

// Static split of `num_tasks` into at most get_num_threads() contiguous slots; fn(slot, begin, end) runs
// each slot once. The split depends only on the task count and the thread count, so per-slot partial
// sums reduced in slot order give the same bits on every run.
inline int64_t num_slots(int64_t num_tasks) {
  return std::max<int64_t>(1, std::min<int64_t>(num_tasks, at::get_num_threads()));
}

template <typename F>
void for_each_slot(int64_t num_tasks, int64_t slots, const F& fn) {
  at::parallel_for(0, slots, 1, [&](int64_t s_begin, int64_t s_end) {
    for (int64_t s = s_begin; s < s_end; ++s) {
      const int64_t begin = num_tasks * s / slots;
      const int64_t end = num_tasks * (s + 1) / slots;
      if (begin < end) fn(s, begin, end);
    }
  });
}

// dst[i] = sum over s of partials[s * stride + i], in slot order (deterministic), parallel over i.
template <typename T>
void reduce_partials(const T* partials, int64_t slots, int64_t stride, int64_t count, T* dst) {
  at::parallel_for(0, count, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T acc = partials[i];
      for (int64_t s = 1; s < slots; ++s) acc += partials[s * stride + i];
      dst[i] = acc;
    }
  });
}

}  // namespace cpu
}  // namespace fastcnn
