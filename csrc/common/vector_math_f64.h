// float64 log, sin and cos on vectors, for the gaussian noise's Box-Muller transform: written
// once over a double-lane type (Avx512Doubles: eight lanes, Avx2Doubles: four), each op
// rounding as the scalar one. The scalar path evaluates log, sin and cos in float64 with the C
// library and rounds once to float32; these follow fdlibm's algorithms (its polynomial
// coefficients: facts, not code), within about 1 ulp of float64, so after rounding to float32
// they agree with the C library except where the exact value lies within an ulp of float64 of
// a float32 rounding boundary (about 2^-29 of inputs; a sweep of every float32 input the noise
// can produce found no difference, see na_kernels' tests/test_noisy_quant_cpu.py).
#pragma once
#include <initializer_list>

#include "common/simd.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"  // always inlined into functions of their ISA (see lanes.h)
#endif

#ifdef NA_X86_SIMD
namespace na {

struct Avx512Doubles {
  using Vec = __m512d;
  NA_AVX512 static Vec set1(double v) { return _mm512_set1_pd(v); }
  NA_AVX512 static Vec add(Vec a, Vec b) { return _mm512_add_pd(a, b); }
  NA_AVX512 static Vec sub(Vec a, Vec b) { return _mm512_sub_pd(a, b); }
  NA_AVX512 static Vec mul(Vec a, Vec b) { return _mm512_mul_pd(a, b); }
  NA_AVX512 static Vec div(Vec a, Vec b) { return _mm512_div_pd(a, b); }
  NA_AVX512 static Vec round_nearest(Vec a) { return _mm512_roundscale_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // x = 2^k m, m in [sqrt(2)/2, sqrt(2)), for positive, finite, normal x
  NA_AVX512 static void split(Vec x, Vec& m, Vec& k) {
    m = _mm512_getmant_pd(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
    k = _mm512_getexp_pd(x);
    const __mmask8 high = _mm512_cmp_pd_mask(m, _mm512_set1_pd(1.4142135623730951), _CMP_GT_OQ);
    m = _mm512_mask_mul_pd(m, high, m, _mm512_set1_pd(0.5));
    k = _mm512_mask_add_pd(k, high, k, _mm512_set1_pd(1.0));
  }
  // quadrant n (a small non-negative integer) of x = n pi/2 + y: sin x and cos x from sin y, cos y
  NA_AVX512 static void by_quadrant(Vec n, Vec sin_y, Vec cos_y, Vec& sin_x, Vec& cos_x) {
    const __m512i quadrant = _mm512_and_si512(_mm512_cvtpd_epi64(n), _mm512_set1_epi64(3));
    const __mmask8 odd = _mm512_test_epi64_mask(quadrant, _mm512_set1_epi64(1));
    const __mmask8 sin_negative = _mm512_test_epi64_mask(quadrant, _mm512_set1_epi64(2));        // 2, 3
    const __mmask8 cos_negative = _mm512_test_epi64_mask(_mm512_add_epi64(quadrant, _mm512_set1_epi64(1)),
                                                         _mm512_set1_epi64(2));                   // 1, 2
    const __m512d c = _mm512_mask_mov_pd(cos_y, odd, sin_y), s = _mm512_mask_mov_pd(sin_y, odd, cos_y);
    cos_x = _mm512_mask_xor_pd(c, cos_negative, c, _mm512_set1_pd(-0.0));
    sin_x = _mm512_mask_xor_pd(s, sin_negative, s, _mm512_set1_pd(-0.0));
  }
};

struct Avx2Doubles {
  using Vec = __m256d;
  NA_AVX2 static Vec set1(double v) { return _mm256_set1_pd(v); }
  NA_AVX2 static Vec add(Vec a, Vec b) { return _mm256_add_pd(a, b); }
  NA_AVX2 static Vec sub(Vec a, Vec b) { return _mm256_sub_pd(a, b); }
  NA_AVX2 static Vec mul(Vec a, Vec b) { return _mm256_mul_pd(a, b); }
  NA_AVX2 static Vec div(Vec a, Vec b) { return _mm256_div_pd(a, b); }
  NA_AVX2 static Vec round_nearest(Vec a) { return _mm256_round_pd(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  NA_AVX2 static void split(Vec x, Vec& m, Vec& k) {
    const __m256i bits = _mm256_castpd_si256(x);
    m = _mm256_castsi256_pd(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi64x(0x000FFFFFFFFFFFFFll)),
                                            _mm256_set1_epi64x(0x3FF0000000000000ll)));  // [1, 2)
    // the biased exponent (11 bits) as a double: 2^52 + e, less 2^52 + 1023
    const __m256d biased = _mm256_castsi256_pd(
        _mm256_or_si256(_mm256_srli_epi64(bits, 52), _mm256_set1_epi64x(0x4330000000000000ll)));
    k = _mm256_sub_pd(biased, _mm256_set1_pd(4503599627370496.0 + 1023.0));
    const __m256d high = _mm256_cmp_pd(m, _mm256_set1_pd(1.4142135623730951), _CMP_GT_OQ);
    m = _mm256_blendv_pd(m, _mm256_mul_pd(m, _mm256_set1_pd(0.5)), high);
    k = _mm256_blendv_pd(k, _mm256_add_pd(k, _mm256_set1_pd(1.0)), high);
  }
  NA_AVX2 static void by_quadrant(Vec n, Vec sin_y, Vec cos_y, Vec& sin_x, Vec& cos_x) {
    // n + 2^52 is exact and holds n in its low mantissa bits
    const __m256i quadrant = _mm256_and_si256(_mm256_castpd_si256(_mm256_add_pd(n, _mm256_set1_pd(4503599627370496.0))),
                                              _mm256_set1_epi64x(3));
    const __m256i one = _mm256_set1_epi64x(1), two = _mm256_set1_epi64x(2);
    const __m256d odd = _mm256_castsi256_pd(_mm256_cmpeq_epi64(_mm256_and_si256(quadrant, one), one));
    const __m256d sign = _mm256_set1_pd(-0.0);
    const __m256d sin_negative = _mm256_and_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(_mm256_and_si256(quadrant, two), two)), sign);
    const __m256d cos_negative = _mm256_and_pd(
        _mm256_castsi256_pd(_mm256_cmpeq_epi64(_mm256_and_si256(_mm256_add_epi64(quadrant, one), two), two)), sign);
    cos_x = _mm256_xor_pd(_mm256_blendv_pd(cos_y, sin_y, odd), cos_negative);
    sin_x = _mm256_xor_pd(_mm256_blendv_pd(sin_y, cos_y, odd), sin_negative);
  }
};

template <class D>
NA_INLINE typename D::Vec polynomial(typename D::Vec z, std::initializer_list<double> coefficients_high_to_low) {
  auto it = coefficients_high_to_low.begin();
  typename D::Vec sum = D::set1(*it++);
  for (; it != coefficients_high_to_low.end(); ++it) sum = D::add(D::set1(*it), D::mul(z, sum));
  return sum;
}

// log(x) for positive, finite, normal x (fdlibm's e_log)
template <class D> NA_INLINE typename D::Vec log_pd(typename D::Vec x) {
  using Vec = typename D::Vec;
  Vec m, k;
  D::split(x, m, k);
  const Vec f = D::sub(m, D::set1(1.0));
  // log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)), s = f / (2 + f)
  const Vec s = D::div(f, D::add(D::set1(2.0), f));
  const Vec z = D::mul(s, s), w = D::mul(z, z);
  const Vec odd = D::mul(w, polynomial<D>(w, {1.531383769920937332e-01, 2.222219843214978396e-01,
                                              3.999999999940941908e-01}));
  const Vec even = D::mul(z, polynomial<D>(w, {1.479819860511658591e-01, 1.818357216161805012e-01,
                                               2.857142874366239149e-01, 6.666666666666735130e-01}));
  const Vec r = D::add(even, odd);
  const Vec half_f2 = D::mul(D::mul(D::set1(0.5), f), f);
  const Vec ln2_hi = D::set1(6.93147180369123816490e-01), ln2_lo = D::set1(1.90821492927058770002e-10);
  // k ln2_hi - ((f^2/2 - (s (f^2/2 + R) + k ln2_lo)) - f)
  const Vec tail = D::add(D::mul(s, D::add(half_f2, r)), D::mul(k, ln2_lo));
  return D::sub(D::mul(k, ln2_hi), D::sub(D::sub(half_f2, tail), f));
}

// sin(x) and cos(x) for 0 <= x < 8 (fdlibm's kernels after a two-part reduction by pi/2)
template <class D> NA_INLINE void sincos_pd(typename D::Vec x, typename D::Vec& sin_x, typename D::Vec& cos_x) {
  using Vec = typename D::Vec;
  // x = n pi/2 + (y + y_tail), |y| <= pi/4; pi/2 in two parts (the first with 33 bits, so
  // n * pi/2_hi is exact for the small n here)
  const Vec n = D::round_nearest(D::mul(x, D::set1(6.36619772367581382433e-01)));
  const Vec r = D::sub(x, D::mul(n, D::set1(1.57079632673412561417e+00)));
  const Vec w = D::mul(n, D::set1(6.07710050650619224932e-11));
  const Vec y = D::sub(r, w);
  const Vec y_tail = D::sub(D::sub(r, y), w);
  const Vec z = D::mul(y, y);
  // cos(y + t) ~ w + (((1 - w) - z/2) + (z^2 C(z) - y t)), w = 1 - z/2 (fdlibm's __kernel_cos)
  const Vec c = D::mul(z, polynomial<D>(z, {-1.13596475577881948265e-11, 2.08757232129817482790e-09,
                                            -2.75573143513906633035e-07, 2.48015872894767294178e-05,
                                            -1.38888888888741095749e-03, 4.16666666666666019037e-02}));
  const Vec half_z = D::mul(D::set1(0.5), z);
  const Vec one_less = D::sub(D::set1(1.0), half_z);
  const Vec cos_y = D::add(one_less, D::add(D::sub(D::sub(D::set1(1.0), one_less), half_z),
                                            D::sub(D::mul(z, c), D::mul(y, y_tail))));
  // sin(y + t) ~ y - ((z (t/2 - y^3 S(z)) - t) - y^3 S1)
  const Vec v = D::mul(z, y);
  const Vec s = polynomial<D>(z, {1.58969099521155010221e-10, -2.50507602534068634195e-08,
                                  2.75573137070700676789e-06, -1.98412698298579493134e-04,
                                  8.33333333332248946124e-03});
  const Vec sin_y = D::sub(
      y, D::sub(D::sub(D::mul(z, D::sub(D::mul(D::set1(0.5), y_tail), D::mul(v, s))), y_tail),
                D::mul(v, D::set1(-1.66666666666666324348e-01))));
  D::by_quadrant(n, sin_y, cos_y, sin_x, cos_x);
}

}  // namespace na
#endif
