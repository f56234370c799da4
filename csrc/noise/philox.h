// Philox4x32-10 exactly as Triton's tl.randint4x defines it for an int64 counter c:
// counter (lo32(c), hi32(c), 0, 0), key (lo32(seed), hi32(seed)); ten rounds; all four words.
// The noise (noise/noise.h) gives element i word i % 4 of the block for counter i / 4.
// philox_blocks() fills a batch of consecutive counters, 32 at a time with AVX-512 or 16 with
// AVX2 where the CPU has them (checked at run time), so the build needs no -march flag.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/simd.h"

namespace na {

constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u, kPhiloxKeyB = 0xBB67AE85u;
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u, kPhiloxRoundB = 0xCD9E8D57u;

struct PhiloxBlock { uint32_t w[4]; };

inline PhiloxBlock philox4x32_10(uint64_t seed, uint64_t counter) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
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
  return {{c0, c1, c2, c3}};
}

// Triton's uint_to_uniform_float: [0, 1) as float32
inline float uint_to_uniform_float(uint32_t word) {
  int32_t value = static_cast<int32_t>(word);
  value = value < 0 ? ~value : value;
  return static_cast<float>(value) * 4.6566127342e-10f;
}

// Triton's pair_uniform_to_normal: Box-Muller on two words, (r cos θ, r sin θ); log, cos and
// sin in float64 rounded once, so the result does not depend on a float32 libm (as the reference)
inline void words_to_normal_pair(uint32_t w_first, uint32_t w_second, float& first, float& second) {
  float u1 = uint_to_uniform_float(w_first);
  const float u2 = uint_to_uniform_float(w_second);
  u1 = u1 < 1.0e-7f ? 1.0e-7f : u1;
  const float theta = 6.283185307179586f * u2;
  const float radius = std::sqrt(-2.0f * static_cast<float>(std::log(static_cast<double>(u1))));
  first = radius * static_cast<float>(std::cos(static_cast<double>(theta)));
  second = radius * static_cast<float>(std::sin(static_cast<double>(theta)));
}

#ifdef NA_X86_SIMD
// (hi32, lo32) of a * b for eight uint32 lanes
NA_AVX2 inline void mul_hi_lo_avx2(__m256i a, __m256i b, __m256i& hi, __m256i& lo) {
  const __m256i even = _mm256_mul_epu32(a, b);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), b);
  lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

NA_AVX2 inline __m256i counters_lo_avx2(uint64_t start, __m256i& hi) {
  // lo32 of consecutive counters may wrap past 2^32 inside a group of eight: build lanes exactly
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

struct PhiloxKeysAvx2 {
  uint32_t key0[10], key1[10];
};

inline PhiloxKeysAvx2 philox_keys_avx2(uint64_t seed) {
  PhiloxKeysAvx2 keys;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    keys.key0[round] = k0;
    keys.key1[round] = k1;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return keys;
}

// The four words of the blocks for counters first .. first+15, as two groups of eight lanes
// (words[g][j] lane l: word j of counter first + 8 g + l); two independent groups hide the
// multiply latency.
NA_AVX2 inline void philox16_avx2(const PhiloxKeysAvx2& keys, uint64_t first, __m256i words[2][4]) {
  const __m256i round_a = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundA));
  const __m256i round_b = _mm256_set1_epi32(static_cast<int>(kPhiloxRoundB));
  __m256i c1x, c1y;
  __m256i c0x = counters_lo_avx2(first, c1x);
  __m256i c0y = counters_lo_avx2(first + 8, c1y);
  __m256i c2x = _mm256_setzero_si256(), c3x = c2x, c2y = c2x, c3y = c2x;
  for (int round = 0; round < 10; ++round) {
    const __m256i key0 = _mm256_set1_epi32(static_cast<int>(keys.key0[round]));
    const __m256i key1 = _mm256_set1_epi32(static_cast<int>(keys.key1[round]));
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
  }
  words[0][0] = c0x; words[0][1] = c1x; words[0][2] = c2x; words[0][3] = c3x;
  words[1][0] = c0y; words[1][1] = c1y; words[1][2] = c2y; words[1][3] = c3y;
}

// Four vectors of eight lanes (a[l], b[l], c[l], d[l] of counter l) -> 32 values in element
// order a0 b0 c0 d0 a1 b1 ...: out[m] holds counters 2m and 2m + 1.
NA_AVX2 inline void interleave4_avx2(__m256 a, __m256 b, __m256 c, __m256 d, __m256 out[4]) {
  const __m256 ab_lo = _mm256_unpacklo_ps(a, b), ab_hi = _mm256_unpackhi_ps(a, b);  // a0 b0 a1 b1 | a4 b4 a5 b5
  const __m256 cd_lo = _mm256_unpacklo_ps(c, d), cd_hi = _mm256_unpackhi_ps(c, d);
  const __m256 q0 = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(ab_lo), _mm256_castps_pd(cd_lo)));  // 0 | 4
  const __m256 q1 = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(ab_lo), _mm256_castps_pd(cd_lo)));  // 1 | 5
  const __m256 q2 = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(ab_hi), _mm256_castps_pd(cd_hi)));  // 2 | 6
  const __m256 q3 = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(ab_hi), _mm256_castps_pd(cd_hi)));  // 3 | 7
  out[0] = _mm256_permute2f128_ps(q0, q1, 0x20);
  out[1] = _mm256_permute2f128_ps(q2, q3, 0x20);
  out[2] = _mm256_permute2f128_ps(q0, q1, 0x31);
  out[3] = _mm256_permute2f128_ps(q2, q3, 0x31);
}

// count: a multiple of 16; out: 4 count words, block after block
NA_AVX2 inline void philox_blocks_avx2(uint64_t seed, uint64_t first, int64_t count, uint32_t* out) {
  const PhiloxKeysAvx2 keys = philox_keys_avx2(seed);
  for (int64_t b = 0; b < count; b += 16) {
    __m256i words[2][4];
    philox16_avx2(keys, first + static_cast<uint64_t>(b), words);
    for (int g = 0; g < 2; ++g) {
      __m256 ordered[4];
      interleave4_avx2(_mm256_castsi256_ps(words[g][0]), _mm256_castsi256_ps(words[g][1]),
                       _mm256_castsi256_ps(words[g][2]), _mm256_castsi256_ps(words[g][3]), ordered);
      for (int m = 0; m < 4; ++m) _mm256_storeu_ps(reinterpret_cast<float*>(out + 4 * b + 32 * g + 8 * m), ordered[m]);
    }
  }
}

// AVX-512: each uint32 of the state sits in the low half of a 64-bit lane, so one vpmuludq
// gives the whole 64-bit product (lo32 in place, hi32 one shift away) and the upper halves
// are don't-care bits that vpmuludq ignores; the two XORs of a round are one vpternlogd.
// G groups of eight counters per call keep the multiplier busy past its latency.
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

// The four words of G groups of eight arbitrary counters: counter[g] holds the full 64-bit
// counters (low half counter word 0, high half word 1; words 2 and 3 are 0); words[g][j],
// 64-bit lane l, low half: word j of counter l of group g (the high halves are don't-care bits).
template <int G>
NA_AVX512 inline void philox_counters_avx512(const PhiloxKeysAvx512& keys, const __m512i counter[G],
                                             __m512i words[G][4]) {
  const __m512i round_a = _mm512_set1_epi64(kPhiloxRoundA);
  const __m512i round_b = _mm512_set1_epi64(kPhiloxRoundB);
  __m512i c0[G], c1[G], c2[G], c3[G];
  for (int group = 0; group < G; ++group) {
    // round 0 with c2 = c3 = 0: the product with c2 is zero
    const __m512i product_a = _mm512_mul_epu32(counter[group], round_a);
    c0[group] = _mm512_xor_si512(_mm512_srli_epi64(counter[group], 32), keys.key0[0]);
    c1[group] = _mm512_setzero_si512();
    c2[group] = _mm512_xor_si512(_mm512_srli_epi64(product_a, 32), keys.key1[0]);
    c3[group] = product_a;
  }
  for (int round = 1; round < 10; ++round) {
    for (int group = 0; group < G; ++group) {
      const __m512i product_b = _mm512_mul_epu32(c2[group], round_b);
      const __m512i product_a = _mm512_mul_epu32(c0[group], round_a);
      c0[group] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(product_b, 32), c1[group], keys.key0[round], 0x96);
      c2[group] = _mm512_ternarylogic_epi32(_mm512_srli_epi64(product_a, 32), c3[group], keys.key1[round], 0x96);
      c1[group] = product_b;
      c3[group] = product_a;
    }
  }
  for (int group = 0; group < G; ++group) {
    words[group][0] = c0[group];
    words[group][1] = c1[group];
    words[group][2] = c2[group];
    words[group][3] = c3[group];
  }
}

// The four words of counters first .. first + 8G - 1: words[g][j], 64-bit lane l, low half:
// word j of counter first + 8 g + l (the high halves are don't-care bits).
template <int G>
NA_AVX512 inline void philox_avx512(const PhiloxKeysAvx512& keys, uint64_t first, __m512i words[G][4]) {
  __m512i counter[G];
  for (int group = 0; group < G; ++group)
    counter[group] = _mm512_add_epi64(_mm512_set1_epi64(static_cast<long long>(first + 8 * group)),
                                      _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
  philox_counters_avx512<G>(keys, counter, words);
}

// The low halves of two vectors of eight 64-bit lanes -> sixteen uint32 (a's then b's)
NA_AVX512 inline __m512i low_halves_avx512(__m512i a, __m512i b) {
  return _mm512_permutex2var_epi32(a, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), b);
}

// Sixteen-lane x = (a of counters 0..7, c of counters 0..7) and y = (b, d) of one group ->
// 32 values in element order a0 b0 c0 d0 a1 ...: out[0] counters 0..3, out[1] counters 4..7.
NA_AVX512 inline void interleave_pairs_avx512(__m512 x, __m512 y, __m512 out[2]) {
  out[0] = _mm512_permutex2var_ps(x, _mm512_setr_epi32(0, 16, 8, 24, 1, 17, 9, 25, 2, 18, 10, 26, 3, 19, 11, 27), y);
  out[1] = _mm512_permutex2var_ps(x, _mm512_setr_epi32(4, 20, 12, 28, 5, 21, 13, 29, 6, 22, 14, 30, 7, 23, 15, 31), y);
}

// count: a multiple of 32; out: 4 count words, block after block
NA_AVX512 inline void philox_blocks_avx512(uint64_t seed, uint64_t first, int64_t count, uint32_t* out) {
  const PhiloxKeysAvx512 keys = philox_keys_avx512(seed);
  for (int64_t b = 0; b < count; b += 32) {
    __m512i words[4][4];
    philox_avx512<4>(keys, first + static_cast<uint64_t>(b), words);
    for (int g = 0; g < 4; ++g) {
      __m512 ordered[2];
      interleave_pairs_avx512(_mm512_castsi512_ps(low_halves_avx512(words[g][0], words[g][2])),
                              _mm512_castsi512_ps(low_halves_avx512(words[g][1], words[g][3])), ordered);
      _mm512_storeu_ps(reinterpret_cast<float*>(out + 4 * b + 32 * g), ordered[0]);
      _mm512_storeu_ps(reinterpret_cast<float*>(out + 4 * b + 32 * g + 16), ordered[1]);
    }
  }
}

#endif

// The blocks for counters first .. first+count-1: out holds 4 count words, block after block.
inline void philox_blocks(uint64_t seed, uint64_t first, int64_t count, uint32_t* out) {
  int64_t done = 0;
#ifdef NA_X86_SIMD
  if (cpu_has_avx512()) {
    done = count & ~static_cast<int64_t>(31);
    philox_blocks_avx512(seed, first, done, out);
  } else if (cpu_has_avx2()) {
    done = count & ~static_cast<int64_t>(15);
    philox_blocks_avx2(seed, first, done, out);
  }
#endif
  for (int64_t i = done; i < count; ++i) {
    const PhiloxBlock block = philox4x32_10(seed, first + static_cast<uint64_t>(i));
    for (int j = 0; j < 4; ++j) out[4 * i + j] = block.w[j];
  }
}

}  // namespace na
