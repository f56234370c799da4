// float32 <-> float16 / bfloat16 conversions without torch headers, rounding to nearest
// even exactly as torch does, and Storage<D>: one element of dtype D loaded as / stored from float.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/spec.h"

namespace na {

inline uint32_t float_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// The conversions are branch-free (selects only) so loops over them vectorise.
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t rest = h & 0x7fffu;
  const uint32_t normal = (rest << 13) + 0x38000000u;             // exponent rebiased by 127 - 15
  const uint32_t inf_nan = (rest << 13) | 0x7f800000u;
  const float subnormal = static_cast<float>(rest) * 5.9604644775390625e-8f;  // rest * 2^-24, exact
  uint32_t bits = rest >= 0x7c00u ? inf_nan : normal;
  bits = rest < 0x400u ? float_bits(subnormal) : bits;
  return bits_float(bits | sign);
}

inline uint16_t float_to_half(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t magnitude = x & 0x7fffffffu;
  // |f| < 2^-14 (a half subnormal): adding 0.5f makes the float's ulp 2^-24, so the float
  // addition itself rounds to the nearest even multiple of 2^-24; 1024 encodes 2^-14.
  const uint32_t subnormal = float_bits(bits_float(magnitude) + 0.5f) - 0x3f000000u;
  // normal: rebias the exponent (-112 << 23), round the 13 dropped bits to nearest even;
  // a carry into the exponent is correct, up to 65520 and above rounding to inf (0x7c00)
  const uint32_t normal = (magnitude + 0xc8000fffu + ((magnitude >> 13) & 1u)) >> 13;
  const uint32_t inf_nan = magnitude > 0x7f800000u ? 0x7e00u : 0x7c00u;
  uint32_t h = magnitude < 0x38800000u ? subnormal : normal;
  h = magnitude >= 0x47800000u ? inf_nan : h;
  return static_cast<uint16_t>(sign | h);
}

inline float bfloat16_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

inline uint16_t float_to_bfloat16(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;  // nearest even
  return static_cast<uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : rounded);  // NaN -> quiet NaN
}

template <DType D> struct Storage;
template <> struct Storage<DType::FLOAT32> {
  using type = float;
  static float load(const float* p, int64_t i) { return p[i]; }
  static void store(float* p, int64_t i, float v) { p[i] = v; }
};
template <> struct Storage<DType::FLOAT16> {
  using type = uint16_t;
  static float load(const uint16_t* p, int64_t i) { return half_to_float(p[i]); }
  static void store(uint16_t* p, int64_t i, float v) { p[i] = float_to_half(v); }
};
template <> struct Storage<DType::BFLOAT16> {
  using type = uint16_t;
  static float load(const uint16_t* p, int64_t i) { return bfloat16_to_float(p[i]); }
  static void store(uint16_t* p, int64_t i, float v) { p[i] = float_to_bfloat16(v); }
};

// the C++ type of one stored element of D
template <DType D> using StorageType = typename Storage<D>::type;

}  // namespace na
