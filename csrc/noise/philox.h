// Philox4x32-10 exactly as Triton's tl.rand / tl.randn define it for an int64 offset i:
// counter (lo32(i), hi32(i), 0, 0), key (lo32(seed), hi32(seed)); ten rounds.
// philox_words() fills a batch of consecutive offsets, thirty-two at a time with AVX-512 or
// sixteen with AVX2 where the CPU has them (checked at run time), so the build needs no -march flag.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/simd.h"

namespace na {

constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u, kPhiloxKeyB = 0xBB67AE85u;
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u, kPhiloxRoundB = 0xCD9E8D57u;

struct PhiloxWords { uint32_t c0, c1; };

inline PhiloxWords philox4x32_10(uint64_t seed, uint64_t offset) {
  uint32_t c0 = static_cast<uint32_t>(offset), c1 = static_cast<uint32_t>(offset >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint64_t product_b = static_cast<uint64_t>(kPhiloxRoundB) * c2;
    const uint64_t product_a = static_cast<uint64_t>(kPhiloxRoundA) * c0;
    const uint32_t next_c0 = static_cast<uint32_t>(product_b >> 32) ^ c1 ^ k0;
    const uint32_t next_c2 = static_cast<uint32_t>(product_a >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(product_b);
    c3 = static_cast<uint32_t>(product_a);
    c0 = next_c0;
    c2 = next_c2;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return {c0, c1};
}

// Triton's uint_to_uniform_float: [0, 1) as float32
inline float uint_to_uniform_float(uint32_t word) {
  int32_t value = static_cast<int32_t>(word);
  value = value < 0 ? ~value : value;
  return static_cast<float>(value) * 4.6566127342e-10f;
}

// Triton's pair_uniform_to_normal (first output): Box-Muller on two words
inline float words_to_normal(uint32_t w0, uint32_t w1) {
  float u1 = uint_to_uniform_float(w0);
  const float u2 = uint_to_uniform_float(w1);
  u1 = u1 < 1.0e-7f ? 1.0e-7f : u1;
  const float theta = 6.283185307179586f * u2;
  // log and cos in double, rounded once: independent of the float32 libm, as the reference
  const float radius = std::sqrt(-2.0f * static_cast<float>(std::log(static_cast<double>(u1))));
  return radius * static_cast<float>(std::cos(static_cast<double>(theta)));
}

#ifdef NA_X86_SIMD
// (hi32, lo32) of a * b for eight uint32 lanes
NA_AVX2 inline void mul_hi_lo_avx2(__m256i a, __m256i b, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, b);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), b);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

NA_AVX2 inline __m256i offsets_lo_avx2(uint64_t start, __m256i& hi) {
  // lo32 of consecutive offsets may wrap past 2^32 inside a group of eight: build lanes exactly
  if (static_cast<uint32_t>(start) <= 0xFFFFFFFFu - 7u) {
    hi = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(start >> 32)));
    return _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(start))),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  alignas(32) uint32_t lo_words[8], hi_words[8];
  for (int l = 0; l < 8; ++l) {
    lo_words[l] = static_cast<uint32_t>(start + l);
    hi_words[l] = static_cast<uint32_t>((start + l) >> 32);
  }
  hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi_words));
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(lo_words));
}

// count: a multiple of 16; w1 may be null. Two independent groups of eight lanes per
// iteration hide the multiply latency.
NA_AVX2 inline void philox_words_avx2(uint64_t seed, uint64_t first, int64_t count,
                                                             uint32_t* w0, uint32_t* w1) {
  const __m256i round_a = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundA));
  const __m256i round_b = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundB));
  for (int64_t b = 0; b < count; b += 16) {
    __m256i c1x, c1y;
    __m256i c0x = offsets_lo_avx2(first + static_cast<uint64_t>(b), c1x);
    __m256i c0y = offsets_lo_avx2(first + static_cast<uint64_t>(b) + 8, c1y);
    __m256i c2x = _mm256_setzero_si256(), c3x = c2x, c2y = c2x, c3y = c2x;
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      const __m256i key0 = _mm256_set1_epi32(static_cast<int>(k0));
      const __m256i key1 = _mm256_set1_epi32(static_cast<int>(k1));
      __m256i hi_bx, lo_bx, hi_ax, lo_ax, hi_by, lo_by, hi_ay, lo_ay;
      mul_hi_lo_avx2(c2x, round_b, hi_bx, lo_bx);
      mul_hi_lo_avx2(c2y, round_b, hi_by, lo_by);
      mul_hi_lo_avx2(c0x, round_a, hi_ax, lo_ax);
      mul_hi_lo_avx2(c0y, round_a, hi_ay, lo_ay);
      c0x = _mm256_xor_si256(_mm256_xor_si256(hi_bx, c1x), key0);
      c0y = _mm256_xor_si256(_mm256_xor_si256(hi_by, c1y), key0);
      c2x = _mm256_xor_si256(_mm256_xor_si256(hi_ax, c3x), key1);
      c2y = _mm256_xor_si256(_mm256_xor_si256(hi_ay, c3y), key1);
      c1x = lo_bx;
      c1y = lo_by;
      c3x = lo_ax;
      c3y = lo_ay;
      k0 += kPhiloxKeyA;
      k1 += kPhiloxKeyB;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w0 + b), c0x);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w0 + b + 8), c0y);
    if (w1) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(w1 + b), c1x);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(w1 + b + 8), c1y);
    }
  }
}

// AVX-512: each uint32 of the state sits in the low half of a 64-bit lane, so one vpmuludq
// gives the whole 64-bit product (lo32 in place, hi32 one shift away) and the upper halves
// are don't-care bits that vpmuludq ignores; the two XORs of a round are one vpternlogd.
// Four groups of eight lanes per call keep the multiplier busy past its latency.
struct PhiloxKeysAvx512 {
  __m512i key0[10], key1[10];  // the round keys, broadcast
};

NA_AVX512 inline PhiloxKeysAvx512 philox_keys_avx512(uint64_t seed) {
  PhiloxKeysAvx512 keys;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    keys.key0[round] = _mm512_set1_epi32(static_cast<int>(k0));
    keys.key1[round] = _mm512_set1_epi32(static_cast<int>(k1));
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return keys;
}

// Words 0 (and 1, where w1 is not null) of offsets first .. first+31, as two vectors of
// sixteen consecutive offsets each.
NA_AVX512 inline void philox32_avx512(const PhiloxKeysAvx512& keys, uint64_t first,
                                                              __m512i w0[2], __m512i* w1) {
  constexpr int kGroups = 4;
  const __m512i round_a = _mm512_set1_epi64(kPhiloxRoundA);
  const __m512i round_b = _mm512_set1_epi64(kPhiloxRoundB);
  __m512i c0[kGroups], c1[kGroups], c2[kGroups], c3[kGroups];
  for (int group = 0; group < kGroups; ++group) {
    // the full 64-bit offset: its low half is counter word 0, its high half word 1
    const __m512i offset = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(first + 8 * group)),
                                            _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
    // round 0 with c2 = c3 = 0: the product with c2 is zero
    const __m512i product_a = _mm512_mul_epu32(offset, round_a);
    c0[group] = _mm512_xor_si512(_mm512_srli_epi64(offset, 32), keys.key0[0]);
    c1[group] = _mm512_setzero_si512();
    c2[group] = _mm512_xor_si512(_mm512_srli_epi64(product_a, 32), keys.key1[0]);
    c3[group] = product_a;
  }
  for (int round = 1; round < 9; ++round) {
    for (int group = 0; group < kGroups; ++group) {
      const __m512i product_b = _mm512_mul_epu32(c2[group], round_b);
      const __m512i product_a = _mm512_mul_epu32(c0[group], round_a);
      c0[group] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(product_b, 32), c1[group], keys.key0[round], 0x96);
      c2[group] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(product_a, 32), c3[group], keys.key1[round], 0x96);
      c1[group] = product_b;
      c3[group] = product_a;
    }
  }
  for (int group = 0; group < kGroups; ++group) {  // round 9: words 2 and 3 are never used
    const __m512i product_b = _mm512_mul_epu32(c2[group], round_b);
    c0[group] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(product_b, 32), c1[group], keys.key0[9], 0x96);
    c1[group] = product_b;
  }
  // low halves of two vectors of eight 64-bit lanes -> sixteen consecutive uint32
  const __m512i low_halves = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int half = 0; half < 2; ++half) {
    w0[half] = _mm512_permutex2var_epi32(c0[2 * half], low_halves, c0[2 * half + 1]);
    if (w1) w1[half] = _mm512_permutex2var_epi32(c1[2 * half], low_halves, c1[2 * half + 1]);
  }
}

// count: a multiple of 32; w1 may be null.
NA_AVX512 inline void philox_words_avx512(uint64_t seed, uint64_t first, int64_t count,
                                                                  uint32_t* w0, uint32_t* w1) {
  const PhiloxKeysAvx512 keys = philox_keys_avx512(seed);
  for (int64_t b = 0; b < count; b += 32) {
    __m512i word0[2], word1[2];
    philox32_avx512(keys, first + static_cast<uint64_t>(b), word0, w1 ? word1 : nullptr);
    for (int half = 0; half < 2; ++half) {
      _mm512_storeu_si512(w0 + b + 16 * half, word0[half]);
      if (w1) _mm512_storeu_si512(w1 + b + 16 * half, word1[half]);
    }
  }
}

#endif

// First (and, where w1 is not null, second) Philox word for offsets first .. first+count-1.
inline void philox_words(uint64_t seed, uint64_t first, int64_t count, uint32_t* w0, uint32_t* w1) {
  int64_t done = 0;
#ifdef NA_X86_SIMD
  if (cpu_has_avx512()) {
    done = count & ~static_cast<int64_t>(31);
    philox_words_avx512(seed, first, done, w0, w1);
  } else if (cpu_has_avx2()) {
    done = count & ~static_cast<int64_t>(15);
    philox_words_avx2(seed, first, done, w0, w1);
  }
#endif
  for (int64_t i = done; i < count; ++i) {
    const PhiloxWords words = philox4x32_10(seed, first + static_cast<uint64_t>(i));
    w0[i] = words.c0;
    if (w1) w1[i] = words.c1;
  }
}

}  // namespace na
