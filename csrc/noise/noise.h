// The noise of noisy_quant, scale * eps, as a pure function of (seed, flat index): eps is
// U(-0.5, 0.5) (Triton's tl.rand - 0.5) or N(0, 1) (tl.randn, log and cos in float64).
// Two forms of one stream: batches of up to kNoiseBatch offsets into a buffer (any CPU), and
// 32 offsets in AVX-512 registers. na_kernels._C.noise_fill exposes both to the tests.
#pragma once
#include <cstdint>

#include "common/spec.h"
#include "common/vector_math_avx512.h"
#include "noise/philox.h"

namespace na {

constexpr int64_t kNoiseBatch = 256;  // a multiple of 32 (philox_words' vector width)

// scale * eps for the offsets [first, first + count), count <= kNoiseBatch; noise is not NONE
inline void scaled_noise_batch(Noise noise, uint64_t seed, float scale, uint64_t first, int64_t count, float* eps) {
  uint32_t w0[kNoiseBatch], w1[kNoiseBatch];
  philox_words(seed, first, count, w0, noise == Noise::GAUSSIAN ? w1 : nullptr);
  if (noise == Noise::UNIFORM) {
    for (int64_t j = 0; j < count; ++j) eps[j] = scale * (uint_to_uniform_float(w0[j]) - 0.5f);
  } else {
    for (int64_t j = 0; j < count; ++j) eps[j] = scale * words_to_normal(w0[j], w1[j]);
  }
}

#ifdef NA_X86_SIMD
// Triton's uint_to_uniform_float on sixteen words: [0, 1) as float32
NA_AVX512 inline __m512 uniform_float_avx512(__m512i word) {
  const __m512i value = _mm512_xor_si512(word, _mm512_srai_epi32(word, 31));  // x < 0 ? ~x : x
  return _mm512_mul_ps(_mm512_cvtepi32_ps(value), _mm512_set1_ps(4.6566127342e-10f));
}

// Triton's pair_uniform_to_normal on sixteen pairs of Philox words, log and cos in float64
// rounded once (as words_to_normal in philox.h)
NA_AVX512 inline __m512 normal_from_words_avx512(__m512i word0, __m512i word1) {
  const __m512 u1 = _mm512_max_ps(uniform_float_avx512(word0), _mm512_set1_ps(1.0e-7f));
  const __m512 theta = _mm512_mul_ps(_mm512_set1_ps(6.283185307179586f), uniform_float_avx512(word1));
  __m256 log_u1[2], cos_theta[2];
  for (int half = 0; half < 2; ++half) {
    const __m256 u1_half = half ? _mm512_extractf32x8_ps(u1, 1) : _mm512_castps512_ps256(u1);
    const __m256 theta_half = half ? _mm512_extractf32x8_ps(theta, 1) : _mm512_castps512_ps256(theta);
    log_u1[half] = _mm512_cvtpd_ps(log_pd_avx512(_mm512_cvtps_pd(u1_half)));
    cos_theta[half] = _mm512_cvtpd_ps(cos_pd_avx512(_mm512_cvtps_pd(theta_half)));
  }
  const __m512 log_all = _mm512_insertf32x8(_mm512_castps256_ps512(log_u1[0]), log_u1[1], 1);
  const __m512 cos_all = _mm512_insertf32x8(_mm512_castps256_ps512(cos_theta[0]), cos_theta[1], 1);
  const __m512 radius = _mm512_sqrt_ps(_mm512_mul_ps(_mm512_set1_ps(-2.0f), log_all));
  return _mm512_mul_ps(radius, cos_all);
}
// scale * eps for the offsets first .. first+31, as two vectors of sixteen (zero without noise)
template <Noise NOISE>
NA_AVX512 inline void scaled_noise32_avx512(const PhiloxKeysAvx512& keys, uint64_t first, __m512 scale, __m512 eps[2]) {
  if (NOISE == Noise::NONE) {
    eps[0] = eps[1] = _mm512_setzero_ps();
    return;
  }
  __m512i words[2], second_words[2];
  philox32_avx512(keys, first, words, NOISE == Noise::GAUSSIAN ? second_words : nullptr);
  for (int half = 0; half < 2; ++half) {
    const __m512 unit = NOISE == Noise::GAUSSIAN ? normal_from_words_avx512(words[half], second_words[half])
                                                 : _mm512_sub_ps(uniform_float_avx512(words[half]), _mm512_set1_ps(0.5f));
    eps[half] = _mm512_mul_ps(scale, unit);
  }
}
#endif

}  // namespace na
