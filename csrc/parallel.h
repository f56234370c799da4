// OpenMP helpers: thread count from the caller (torch.get_num_threads()), serial without OpenMP.
#pragma once
#include <cstdint>
#ifdef _OPENMP
#include <omp.h>
#endif

// Compiles a function for AVX2 and for the baseline, picked at load time by the CPU (x86-64
// with GCC); elsewhere a no-op.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define NA_TARGET_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define NA_TARGET_CLONES
#endif

namespace na {

inline int thread_index() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Elements per parallel work item: large enough to amortise scheduling, small enough to balance.
constexpr int64_t kChunk = 1 << 14;

inline int64_t chunk_count(int64_t n) { return (n + kChunk - 1) / kChunk; }

}  // namespace na
