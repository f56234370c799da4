// The OpenMP loop every kernel runs: a range split into work items of a fixed size, handed out
// statically to `threads` threads (the caller's torch.get_num_threads()), each thread with its
// own state; serial without OpenMP.
#pragma once
#include <algorithm>
#include <cstdint>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace na {

inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// [begin, end) of a range's elements (or neurons)
struct WorkItem {
  int64_t begin, end;
  int64_t size() const { return end - begin; }
};

struct NoState {};

// body(WorkItem, State&) for the work items of `item_size` covering [0, total), with one
// State = make_state() per thread, built on that thread.
template <class MakeState, class Body>
void for_each_work_item(int64_t total, int64_t item_size, int threads, MakeState&& make_state, Body&& body) {
  const int64_t items = (total + item_size - 1) / item_size;
#pragma omp parallel num_threads(threads)
  {
    auto state = make_state();
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item)
      body(WorkItem{item * item_size, std::min(total, (item + 1) * item_size)}, state);
  }
}

template <class Body>
void for_each_work_item(int64_t total, int64_t item_size, int threads, Body&& body) {
  for_each_work_item(total, item_size, threads, [] { return NoState{}; },
                     [&](const WorkItem& item, NoState&) { body(item); });
}

}  // namespace na
