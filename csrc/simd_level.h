// Which explicit-SIMD kernels run: the best the CPU has (checked once, at run time, so the
// build needs no -march flag), capped by a limit that tests lower to exercise every path
// on one machine (na_kernels.cpu.limit_simd).
#pragma once
#include <algorithm>
#include <atomic>

namespace na {

enum SimdLevel : int { kSimdGeneric = 0, kSimdAvx2 = 1, kSimdAvx512 = 2 };

inline int detected_simd_level() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  // AVX-512 F, BW, VL and DQ: the set every AVX-512 CPU since Skylake-SP has, and the kernels use
  static const int level =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
              __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
          ? kSimdAvx512
          : (__builtin_cpu_supports("avx2") ? kSimdAvx2 : kSimdGeneric);
  return level;
#else
  return kSimdGeneric;
#endif
}

inline std::atomic<int>& simd_limit() {
  static std::atomic<int> limit{kSimdAvx512};
  return limit;
}

inline int simd_level() { return std::min(detected_simd_level(), simd_limit().load(std::memory_order_relaxed)); }
inline bool cpu_has_avx512() { return simd_level() >= kSimdAvx512; }
inline bool cpu_has_avx2() { return simd_level() >= kSimdAvx2; }

}  // namespace na
