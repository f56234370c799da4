// Which explicit-SIMD kernels may run, and the macros that compile them. The CPU is checked
// once, at run time, so the build needs no -march flag: AVX2 and AVX-512 functions carry
// target attributes (NA_AVX2, NA_AVX512) and run only where simd_level() allows. The level
// is the best the CPU has, capped by a limit that tests lower to exercise every path on one
// machine (na_kernels.cpu.limit_simd, NA_KERNELS_SIMD).
#pragma once
#include <algorithm>
#include <atomic>

#include "common/spec.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define NA_X86_SIMD 1
#define NA_AVX2 __attribute__((target("avx2,f16c")))
// AVX-512 F, BW, VL and DQ: the set every AVX-512 CPU since Skylake-SP has, and the kernels use
#define NA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's own avx512fintrin.h (its _mm512_undefined_* idiom) trips this warning wherever its
// intrinsics inline: a known false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif

// Compiles a function for AVX2 and for the baseline, picked at load time by the CPU (x86-64
// with GCC); elsewhere a no-op.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define NA_TARGET_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define NA_TARGET_CLONES
#endif

// Kernels written once over lane types (common/lanes*.h) are always inlined into the
// ISA-specific function that calls them, which carries the target attribute.
#define NA_INLINE inline __attribute__((always_inline))

namespace na {

inline SimdLevel detected_simd_level() {
#ifdef NA_X86_SIMD
  static const SimdLevel level =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
              __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
          ? SimdLevel::AVX512
          : (__builtin_cpu_supports("avx2") ? SimdLevel::AVX2 : SimdLevel::GENERIC);
  return level;
#else
  return SimdLevel::GENERIC;
#endif
}

inline std::atomic<int>& simd_limit() {
  static std::atomic<int> limit{static_cast<int>(SimdLevel::AVX512)};
  return limit;
}

inline SimdLevel simd_level() {
  return static_cast<SimdLevel>(
      std::min(static_cast<int>(detected_simd_level()), simd_limit().load(std::memory_order_relaxed)));
}
inline bool cpu_has_avx512() { return simd_level() >= SimdLevel::AVX512; }
inline bool cpu_has_avx2() { return simd_level() >= SimdLevel::AVX2; }

// F16C (float16 <-> float32) comes with every AVX2 CPU in practice, but is its own CPUID bit.
inline bool cpu_has_f16c() {
#ifdef NA_X86_SIMD
  static const bool has = __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

}  // namespace na
