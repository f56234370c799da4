// Vector math for the AVX-512 kernels: float64 log and cos on eight lanes for the gaussian
// noise's Box-Muller transform, and float32 exp for the sigmoid surrogate.
// The scalar path evaluates log and cos in float64 with the C library and rounds once to
// float32; these follow fdlibm's algorithms (its polynomial coefficients: facts, not code),
// within about 1 ulp of float64, so after rounding to float32 they agree with the C library
// except where the exact value lies within an ulp of float64 of a float32 rounding boundary
// (about 2^-29 of inputs; tests compare millions of samples bit for bit).
#pragma once
#include <initializer_list>

#include "common/simd.h"

#ifdef NA_X86_SIMD
namespace na {

NA_AVX512 inline __m512d polynomial(__m512d z, std::initializer_list<double> coefficients_high_to_low) {
  auto it = coefficients_high_to_low.begin();
  __m512d sum = _mm512_set1_pd(*it++);
  for (; it != coefficients_high_to_low.end(); ++it) sum = _mm512_add_pd(_mm512_set1_pd(*it), _mm512_mul_pd(z, sum));
  return sum;
}

// log(x) for positive, finite, normal x
NA_AVX512 inline __m512d log_pd_avx512(__m512d x) {
  // x = 2^k * m with m in [sqrt(2)/2, sqrt(2)), f = m - 1
  __m512d m = _mm512_getmant_pd(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
  __m512d k = _mm512_getexp_pd(x);
  const __mmask8 high = _mm512_cmp_pd_mask(m, _mm512_set1_pd(1.4142135623730951), _CMP_GT_OQ);
  m = _mm512_mask_mul_pd(m, high, m, _mm512_set1_pd(0.5));
  k = _mm512_mask_add_pd(k, high, k, _mm512_set1_pd(1.0));
  const __m512d f = _mm512_sub_pd(m, _mm512_set1_pd(1.0));
  // log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)), s = f / (2 + f)
  const __m512d s = _mm512_div_pd(f, _mm512_add_pd(_mm512_set1_pd(2.0), f));
  const __m512d z = _mm512_mul_pd(s, s), w = _mm512_mul_pd(z, z);
  const __m512d odd = _mm512_mul_pd(w, polynomial(w, {1.531383769920937332e-01, 2.222219843214978396e-01,
                                                      3.999999999940941908e-01}));
  const __m512d even = _mm512_mul_pd(z, polynomial(w, {1.479819860511658591e-01, 1.818357216161805012e-01,
                                                       2.857142874366239149e-01, 6.666666666666735130e-01}));
  const __m512d r = _mm512_add_pd(even, odd);
  const __m512d half_f2 = _mm512_mul_pd(_mm512_mul_pd(_mm512_set1_pd(0.5), f), f);
  const __m512d ln2_hi = _mm512_set1_pd(6.93147180369123816490e-01), ln2_lo = _mm512_set1_pd(1.90821492927058770002e-10);
  // k ln2_hi - ((f^2/2 - (s (f^2/2 + R) + k ln2_lo)) - f)
  const __m512d tail = _mm512_add_pd(_mm512_mul_pd(s, _mm512_add_pd(half_f2, r)), _mm512_mul_pd(k, ln2_lo));
  return _mm512_sub_pd(_mm512_mul_pd(k, ln2_hi), _mm512_sub_pd(_mm512_sub_pd(half_f2, tail), f));
}

// cos(x) for 0 <= x < 8
NA_AVX512 inline __m512d cos_pd_avx512(__m512d x) {
  // x = n pi/2 + (y + y_tail), |y| <= pi/4; pi/2 in two parts (the first with 33 bits, so
  // n * pi/2_hi is exact for the small n here)
  const __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(6.36619772367581382433e-01)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512d r = _mm512_sub_pd(x, _mm512_mul_pd(n, _mm512_set1_pd(1.57079632673412561417e+00)));
  const __m512d w = _mm512_mul_pd(n, _mm512_set1_pd(6.07710050650619224932e-11));
  const __m512d y = _mm512_sub_pd(r, w);
  const __m512d y_tail = _mm512_sub_pd(_mm512_sub_pd(r, y), w);
  const __m512d z = _mm512_mul_pd(y, y);
  // cos(y + t) ~ 1 - (z/2 - (z^2 C(z) - y t))
  const __m512d c = _mm512_mul_pd(z, polynomial(z, {-1.13596475577881948265e-11, 2.08757232129817482790e-09,
                                                    -2.75573143513906633035e-07, 2.48015872894767294178e-05,
                                                    -1.38888888888741095749e-03, 4.16666666666666019037e-02}));
  const __m512d cos_y = _mm512_sub_pd(
      _mm512_set1_pd(1.0),
      _mm512_sub_pd(_mm512_mul_pd(_mm512_set1_pd(0.5), z),
                    _mm512_sub_pd(_mm512_mul_pd(z, c), _mm512_mul_pd(y, y_tail))));
  // sin(y + t) ~ y - ((z (t/2 - y^3 S(z)) - t) - y^3 S1)
  const __m512d v = _mm512_mul_pd(z, y);
  const __m512d s = polynomial(z, {1.58969099521155010221e-10, -2.50507602534068634195e-08,
                                   2.75573137070700676789e-06, -1.98412698298579493134e-04,
                                   8.33333333332248946124e-03});
  const __m512d sin_y = _mm512_sub_pd(
      y, _mm512_sub_pd(_mm512_sub_pd(_mm512_mul_pd(z, _mm512_sub_pd(_mm512_mul_pd(_mm512_set1_pd(0.5), y_tail),
                                                                    _mm512_mul_pd(v, s))),
                                     y_tail),
                       _mm512_mul_pd(v, _mm512_set1_pd(-1.66666666666666324348e-01))));
  // quadrant n mod 4: cos, -sin, -cos, sin
  const __m512i quadrant = _mm512_and_si512(_mm512_cvtpd_epi64(n), _mm512_set1_epi64(3));
  const __mmask8 odd = _mm512_test_epi64_mask(quadrant, _mm512_set1_epi64(1));
  const __mmask8 negate = _mm512_test_epi64_mask(_mm512_add_epi64(quadrant, _mm512_set1_epi64(1)), _mm512_set1_epi64(2));
  const __m512d value = _mm512_mask_mov_pd(cos_y, odd, sin_y);
  return _mm512_mask_xor_pd(value, negate, value, _mm512_set1_pd(-0.0));
}

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
