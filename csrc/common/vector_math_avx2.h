// Vector math for the AVX2 kernels: float32 exp for the sigmoid surrogate, the twin of
// vector_math_avx512.h's exp_ps_avx512 with the same operations in the same order, so the two
// give the same bits. AVX2 has no vscalefps: exp(r) * 2^n is taken as (exp(r) * 2^n1) * 2^n2 with
// n1 = floor(n / 2), n2 = n - n1 (both in [-75, 64], normal floats); the first product is exact
// (exp(r) is in [0.7, 1.42]), so the second rounds once, as vscalefps does (to inf, zero and
// subnormals alike).
#pragma once
#include <initializer_list>

#include "common/simd.h"

#ifdef NA_X86_SIMD
namespace na {

// 2^k for integral k in [-126, 127], as a float
NA_AVX2 inline __m256 pow2_ps_avx2(__m256 k) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23));
}

// exp(x) in float32 on eight lanes within about 1 ulp; the same bits as exp_ps_avx512
NA_AVX2 inline __m256 exp_ps_avx2(__m256 x) {
  const __m256 clamped = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-104.0f)), _mm256_set1_ps(89.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(clamped, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // ln 2 in two parts, the first exact in a few bits so n * it is exact
  __m256 r = _mm256_sub_ps(clamped, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(-2.12194440e-4f)));
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  for (const float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(c));
  const __m256 exp_r = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r), _mm256_set1_ps(1.0f));
  const __m256 n1 = _mm256_round_ps(_mm256_mul_ps(n, _mm256_set1_ps(0.5f)), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m256 n2 = _mm256_sub_ps(n, n1);
  const __m256 result = _mm256_mul_ps(_mm256_mul_ps(exp_r, pow2_ps_avx2(n1)), pow2_ps_avx2(n2));
  return _mm256_blendv_ps(result, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}

}  // namespace na
#endif
