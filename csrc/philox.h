// Philox4x32-10 exactly as Triton's tl.rand / tl.randn define it for an int64 offset i:
// counter (lo32(i), hi32(i), 0, 0), key (lo32(seed), hi32(seed)).
#pragma once
#include <cmath>
#include <cstdint>

namespace na {

struct PhiloxWords { uint32_t c0, c1; };

inline PhiloxWords philox4x32_10(uint64_t seed, uint64_t offset) {
  uint32_t c0 = static_cast<uint32_t>(offset), c1 = static_cast<uint32_t>(offset >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t product_b = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint64_t product_a = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint32_t next_c0 = static_cast<uint32_t>(product_b >> 32) ^ c1 ^ k0;
    const uint32_t next_c2 = static_cast<uint32_t>(product_a >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(product_b);
    c3 = static_cast<uint32_t>(product_a);
    c0 = next_c0;
    c2 = next_c2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {c0, c1};
}

// Triton's uint_to_uniform_float: [0, 1) as float32
inline float uint_to_uniform_float(uint32_t word) {
  int32_t value = static_cast<int32_t>(word);
  value = value < 0 ? ~value : value;
  return static_cast<float>(value) * 4.6566127342e-10f;
}

inline float philox_uniform(uint64_t seed, uint64_t offset) {
  return uint_to_uniform_float(philox4x32_10(seed, offset).c0);
}

inline float philox_normal(uint64_t seed, uint64_t offset) {
  const PhiloxWords words = philox4x32_10(seed, offset);
  float u1 = uint_to_uniform_float(words.c0);
  const float u2 = uint_to_uniform_float(words.c1);
  u1 = u1 < 1.0e-7f ? 1.0e-7f : u1;
  const float theta = 6.283185307179586f * u2;
  const float radius = std::sqrt(-2.0f * std::log(u1));
  return radius * std::cos(theta);
}

}  // namespace na
