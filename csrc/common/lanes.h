// Lane types: what the kernels written once (the integrate-and-fire update, the surrogates,
// the quantizer) compute on. ScalarLanes is one float, for the generic loops that the
// compiler vectorises; lanes_avx2.h and lanes_avx512.h give the same operations on 8 and 16
// floats. Each has Vec (the values), Mask (a per-lane condition), Count (per-lane int32) and
// the operations below; each operation rounds exactly as the scalar one.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/simd.h"

#if defined(__GNUC__) && !defined(__clang__)
// The shared templates take vectors by value and are always inlined into a function compiled
// for their ISA, so the ABI GCC warns about (vectors passed without AVX enabled) never exists.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace na {

struct ScalarLanes {
  using Vec = float;
  using Mask = bool;
  using Count = int32_t;
  static constexpr int kWidth = 1;

  static Vec set1(float value) { return value; }
  static Vec zero() { return 0.0f; }
  static Vec add(Vec a, Vec b) { return a + b; }
  static Vec sub(Vec a, Vec b) { return a - b; }
  static Vec mul(Vec a, Vec b) { return a * b; }
  static Vec div(Vec a, Vec b) { return a / b; }
  static Vec abs(Vec a) { return std::fabs(a); }
  static Vec neg(Vec a) { return -a; }
  static Vec exp(Vec a) { return std::exp(a); }
  // floor() that vectorises without SSE4.1; exact for every float, including -0.0, inf and NaN
  static Vec floor(Vec z) {
    float t = static_cast<float>(static_cast<int32_t>(z));
    t = t > z ? t - 1.0f : t;
    t = std::copysign(t, z);
    return std::fabs(z) < 8388608.0f ? t : z;  // |z| >= 2^23 (or inf, NaN) is already integral
  }
  static Mask ge(Vec a, Vec b) { return a >= b; }
  static Mask gt(Vec a, Vec b) { return a > b; }
  static Mask le(Vec a, Vec b) { return a <= b; }
  static Mask lt(Vec a, Vec b) { return a < b; }
  static Mask eq(Vec a, Vec b) { return a == b; }
  static Mask both(Mask a, Mask b) { return a && b; }
  // 1.0f where `mask`, else 0.0f
  static Vec one_where(Mask mask) { return mask ? 1.0f : 0.0f; }
  // `if_set` where `mask`, else `otherwise`
  static Vec select(Mask mask, Vec if_set, Vec otherwise) { return mask ? if_set : otherwise; }
  static Count count_zero() { return 0; }
  static Count count_where(Count count, Mask mask) { return count + (mask ? 1 : 0); }
};

}  // namespace na
