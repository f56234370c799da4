// float32 <-> float16 / bfloat16 conversions without torch headers, rounding to nearest
// even exactly as torch does, plus typed load/store by dtype code.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace na {

// dtype codes shared with na_kernels/cpu.py
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

inline uint32_t float_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float32
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return bits_float(float_bits(magnitude) | sign);
  }
  if (exponent == 31) return bits_float(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

inline uint16_t float_to_half(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t magnitude = x & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to inf
  if (magnitude < 0x38800000u) {                        // below 2^-14: half subnormal
    const float scaled = std::fabs(f) * 16777216.0f;    // exact: times 2^24
    return sign | static_cast<uint16_t>(std::nearbyint(scaled));  // 1024 encodes 2^-14
  }
  const uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
  return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
}

inline float bfloat16_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

inline uint16_t float_to_bfloat16(float f) {
  if (std::isnan(f)) return 0x7fc0u;
  const uint32_t x = float_bits(f);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

template <int D> struct Storage;
template <> struct Storage<kFloat32> {
  using type = float;
  static float load(const float* p, int64_t i) { return p[i]; }
  static void store(float* p, int64_t i, float v) { p[i] = v; }
};
template <> struct Storage<kFloat16> {
  using type = uint16_t;
  static float load(const uint16_t* p, int64_t i) { return half_to_float(p[i]); }
  static void store(uint16_t* p, int64_t i, float v) { p[i] = float_to_half(v); }
};
template <> struct Storage<kBFloat16> {
  using type = uint16_t;
  static float load(const uint16_t* p, int64_t i) { return bfloat16_to_float(p[i]); }
  static void store(uint16_t* p, int64_t i, float v) { p[i] = float_to_bfloat16(v); }
};

}  // namespace na
