// The noise of noisy_quant, scale * eps, as a pure function of (seed, flat index): eps is
// U(-0.5, 0.5) (Triton's tl.rand - 0.5) or N(0, 1) (tl.randn, log and cos in float64).
// Two forms of one stream: batches of up to kNoiseBatch offsets into a buffer (any CPU), and
// 32 offsets in AVX-512 registers. na_kernels._C.noise_fill exposes both to the tests.
#pragma once
#include <cstdint>

#include "avx512.h"
#include "philox.h"
#include "vector_math.h"

namespace na {

enum NoiseKind : int { kNoNoise = 0, kUniform = 1, kGaussian = 2 };
constexpr int64_t kNoiseBatch = 256;  // a multiple of 32 (philox_words' vector width)

// scale * eps for the offsets [first, first + count), count <= kNoiseBatch; kind is not kNoNoise
inline void scaled_noise_batch(int kind, uint64_t seed, float scale, uint64_t first, int64_t count, float* eps) {
  uint32_t w0[kNoiseBatch], w1[kNoiseBatch];
  philox_words(seed, first, count, w0, kind == kGaussian ? w1 : nullptr);
  if (kind == kUniform) {
    for (int64_t j = 0; j < count; ++j) eps[j] = scale * (uint_to_uniform_float(w0[j]) - 0.5f);
  } else {
    for (int64_t j = 0; j < count; ++j) eps[j] = scale * words_to_normal(w0[j], w1[j]);
  }
}

#ifdef NA_HAVE_AVX512
// scale * eps for the offsets first .. first+31, as two vectors of sixteen (zero without noise)
template <int NOISE>
NA_AVX512 inline void scaled_noise32_avx512(const PhiloxKeysAvx512& keys, uint64_t first, __m512 scale, __m512 eps[2]) {
  if (NOISE == kNoNoise) {
    eps[0] = eps[1] = _mm512_setzero_ps();
    return;
  }
  __m512i words[2], second_words[2];
  philox32_avx512(keys, first, words, NOISE == kGaussian ? second_words : nullptr);
  for (int half = 0; half < 2; ++half) {
    const __m512 unit = NOISE == kGaussian ? normal_from_words_avx512(words[half], second_words[half])
                                           : _mm512_sub_ps(uniform_float_avx512(words[half]), _mm512_set1_ps(0.5f));
    eps[half] = _mm512_mul_ps(scale, unit);
  }
}
#endif

}  // namespace na
