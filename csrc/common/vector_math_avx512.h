// Vector math for the AVX-512 kernels: float32 exp for the sigmoid surrogate (the float64
// log, sin and cos of the gaussian noise are vector_math_f64.h's, included here).
#pragma once
#include <initializer_list>

#include "common/simd.h"
#include "common/vector_math_f64.h"

#ifdef NA_X86_SIMD
namespace na {

// exp(x) in float32 on sixteen lanes within about 1 ulp (Cephes' expf algorithm): x = n ln2 + r
// with |r| <= ln2 / 2, exp(r) by a degree-6 polynomial, times 2^n by vscalefps (which gives inf
// and zero, subnormals included, at the ends of the range). NaN stays NaN.
NA_AVX512 inline __m512 exp_ps_avx512(__m512 x) {
  const __m512 clamped = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(89.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(clamped, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // ln 2 in two parts, the first exact in a few bits so n * it is exact
  __m512 r = _mm512_sub_ps(clamped, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f)));
  r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(-2.12194440e-4f)));
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  for (const float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(c));
  const __m512 exp_r = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(p, _mm512_mul_ps(r, r)), r), _mm512_set1_ps(1.0f));
  const __m512 result = _mm512_scalef_ps(exp_r, n);
  return _mm512_mask_mov_ps(result, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}

}  // namespace na
#endif
