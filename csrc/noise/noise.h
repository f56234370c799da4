// The noise of noisy_quant, scale * eps, as a pure function of (seed, flat index i): element i
// takes word i % 4 of the Philox block for counter i / 4 (noise/philox.h). eps is
// U(-0.5, 0.5) (Triton's tl.rand4x - 0.5) or N(0, 1) (tl.randn4x: Box-Muller on words (0, 1)
// and (2, 3), each pair giving r cos θ then r sin θ; log, sin and cos in float64).
// Three forms of one stream: batches of up to kNoiseBatch elements from any index into a
// buffer (any CPU), and whole blocks in registers: 32 G elements in AVX-512 registers, 64 in
// AVX2 registers, from an index that is a multiple of 4. na_kernels._C.noise_fill exposes them.
#pragma once
#include <cstdint>

#include "common/spec.h"
#include "common/vector_math_f64.h"
#include "noise/philox.h"

namespace na {

constexpr int64_t kNoiseBatch = 256;  // a multiple of 4

// scale * eps for the elements [first, first + count), count <= kNoiseBatch; noise is not NONE
inline void scaled_noise_batch(Noise noise, uint64_t seed, float scale, uint64_t first, int64_t count, float* eps) {
  if (count <= 0) return;
  const int64_t lead = static_cast<int64_t>(first & 3u);  // elements of the first block before `first`
  const int64_t blocks = (lead + count + 3) / 4;
  uint32_t words[kNoiseBatch + 8];
  philox_blocks(seed, first >> 2, blocks, words);
  if (noise == Noise::UNIFORM) {
    for (int64_t j = 0; j < count; ++j) eps[j] = scale * (uint_to_uniform_float(words[lead + j]) - 0.5f);
  } else {
    float normal[kNoiseBatch + 8];
    const int64_t pair_end = (lead + count + 1) / 2;
    for (int64_t pair = lead / 2; pair < pair_end; ++pair)
      words_to_normal_pair(words[2 * pair], words[2 * pair + 1], normal[2 * pair], normal[2 * pair + 1]);
    for (int64_t j = 0; j < count; ++j) eps[j] = scale * normal[lead + j];
  }
}

#ifdef NA_X86_SIMD
// ---- AVX-512

// Triton's uint_to_uniform_float on sixteen words: [0, 1) as float32
NA_AVX512 inline __m512 uniform_float_avx512(__m512i word) {
  const __m512i value = _mm512_xor_si512(word, _mm512_srai_epi32(word, 31));  // x < 0 ? ~x : x
  return _mm512_mul_ps(_mm512_cvtepi32_ps(value), _mm512_set1_ps(4.6566127342e-10f));
}

NA_AVX512 inline __m512 join_avx512(const __m256 halves[2]) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(halves[0]), halves[1], 1);
}

// Triton's pair_uniform_to_normal on sixteen pairs of words, as words_to_normal_pair
NA_AVX512 inline void normal_pairs_avx512(__m512i w_first, __m512i w_second, __m512& first, __m512& second) {
  const __m512 u1 = _mm512_max_ps(uniform_float_avx512(w_first), _mm512_set1_ps(1.0e-7f));
  const __m512 theta = _mm512_mul_ps(_mm512_set1_ps(6.283185307179586f), uniform_float_avx512(w_second));
  __m256 log_u1[2], cos_theta[2], sin_theta[2];
  for (int half = 0; half < 2; ++half) {
    const __m256 u1_half = half ? _mm512_extractf32x8_ps(u1, 1) : _mm512_castps512_ps256(u1);
    const __m256 theta_half = half ? _mm512_extractf32x8_ps(theta, 1) : _mm512_castps512_ps256(theta);
    log_u1[half] = _mm512_cvtpd_ps(log_pd<Avx512Doubles>(_mm512_cvtps_pd(u1_half)));
    __m512d sin_d, cos_d;
    sincos_pd<Avx512Doubles>(_mm512_cvtps_pd(theta_half), sin_d, cos_d);
    cos_theta[half] = _mm512_cvtpd_ps(cos_d);
    sin_theta[half] = _mm512_cvtpd_ps(sin_d);
  }
  const __m512 radius = _mm512_sqrt_ps(_mm512_mul_ps(_mm512_set1_ps(-2.0f), join_avx512(log_u1)));
  first = _mm512_mul_ps(radius, join_avx512(cos_theta));
  second = _mm512_mul_ps(radius, join_avx512(sin_theta));
}

// scale * eps for the elements first .. first + 32 G - 1 (first a multiple of 4), as 2 G
// vectors of sixteen; zero without noise
template <Noise NOISE, int G>
NA_AVX512 inline void scaled_noise_avx512(const PhiloxKeysAvx512& keys, uint64_t first, __m512 scale, __m512 eps[2 * G]) {
  if (NOISE == Noise::NONE) {
    for (int v = 0; v < 2 * G; ++v) eps[v] = _mm512_setzero_ps();
    return;
  }
  __m512i words[G][4];
  philox_avx512<G>(keys, first >> 2, words);
  for (int g = 0; g < G; ++g) {
    // (words 0 | words 2) and (words 1 | words 3) of the group's eight counters
    const __m512i w_first = low_halves_avx512(words[g][0], words[g][2]);
    const __m512i w_second = low_halves_avx512(words[g][1], words[g][3]);
    __m512 x, y;
    if (NOISE == Noise::GAUSSIAN) {
      normal_pairs_avx512(w_first, w_second, x, y);
    } else {
      x = _mm512_sub_ps(uniform_float_avx512(w_first), _mm512_set1_ps(0.5f));
      y = _mm512_sub_ps(uniform_float_avx512(w_second), _mm512_set1_ps(0.5f));
    }
    interleave_pairs_avx512(_mm512_mul_ps(scale, x), _mm512_mul_ps(scale, y), eps + 2 * g);
  }
}

// ---- AVX2

NA_AVX2 inline __m256 uniform_float_avx2(__m256i word) {
  const __m256i value = _mm256_xor_si256(word, _mm256_srai_epi32(word, 31));
  return _mm256_mul_ps(_mm256_cvtepi32_ps(value), _mm256_set1_ps(4.6566127342e-10f));
}

NA_AVX2 inline __m256 join_avx2(const __m128 halves[2]) { return _mm256_set_m128(halves[1], halves[0]); }

NA_AVX2 inline void normal_pairs_avx2(__m256i w_first, __m256i w_second, __m256& first, __m256& second) {
  const __m256 u1 = _mm256_max_ps(uniform_float_avx2(w_first), _mm256_set1_ps(1.0e-7f));
  const __m256 theta = _mm256_mul_ps(_mm256_set1_ps(6.283185307179586f), uniform_float_avx2(w_second));
  __m128 log_u1[2], cos_theta[2], sin_theta[2];
  for (int half = 0; half < 2; ++half) {
    const __m128 u1_half = half ? _mm256_extractf128_ps(u1, 1) : _mm256_castps256_ps128(u1);
    const __m128 theta_half = half ? _mm256_extractf128_ps(theta, 1) : _mm256_castps256_ps128(theta);
    log_u1[half] = _mm256_cvtpd_ps(log_pd<Avx2Doubles>(_mm256_cvtps_pd(u1_half)));
    __m256d sin_d, cos_d;
    sincos_pd<Avx2Doubles>(_mm256_cvtps_pd(theta_half), sin_d, cos_d);
    cos_theta[half] = _mm256_cvtpd_ps(cos_d);
    sin_theta[half] = _mm256_cvtpd_ps(sin_d);
  }
  const __m256 radius = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), join_avx2(log_u1)));
  first = _mm256_mul_ps(radius, join_avx2(cos_theta));
  second = _mm256_mul_ps(radius, join_avx2(sin_theta));
}

// scale * eps for the elements first .. first + 63 (first a multiple of 4), as eight vectors
// of eight; zero without noise
template <Noise NOISE>
NA_AVX2 inline void scaled_noise64_avx2(const PhiloxKeysAvx2& keys, uint64_t first, __m256 scale, __m256 eps[8]) {
  if (NOISE == Noise::NONE) {
    for (int v = 0; v < 8; ++v) eps[v] = _mm256_setzero_ps();
    return;
  }
  __m256i words[2][4];
  philox16_avx2(keys, first >> 2, words);
  for (int g = 0; g < 2; ++g) {
    __m256 value[4];
    if (NOISE == Noise::GAUSSIAN) {
      normal_pairs_avx2(words[g][0], words[g][1], value[0], value[1]);
      normal_pairs_avx2(words[g][2], words[g][3], value[2], value[3]);
    } else {
      for (int j = 0; j < 4; ++j) value[j] = _mm256_sub_ps(uniform_float_avx2(words[g][j]), _mm256_set1_ps(0.5f));
    }
    for (int j = 0; j < 4; ++j) value[j] = _mm256_mul_ps(scale, value[j]);
    interleave4_avx2(value[0], value[1], value[2], value[3], eps + 4 * g);
  }
}
#endif

}  // namespace na
