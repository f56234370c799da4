// Avx2Lanes: ScalarLanes' operations (common/lanes.h) on eight floats in a ymm. AVX2 has no
// mask registers: a Mask is a vector of all-ones / zero lanes; exp is vector_math_avx2.h's (the
// same bits as Avx512Lanes::exp).
#pragma once
#include "common/lanes.h"
#include "common/vector_math_avx2.h"

#ifdef NA_X86_SIMD
namespace na {

struct Avx2Lanes {
  using Vec = __m256;
  using Mask = __m256;
  using Count = __m256i;
  static constexpr int kWidth = 8;

  NA_AVX2 static Vec set1(float value) { return _mm256_set1_ps(value); }
  NA_AVX2 static Vec zero() { return _mm256_setzero_ps(); }
  NA_AVX2 static Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  NA_AVX2 static Vec sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
  NA_AVX2 static Vec mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
  NA_AVX2 static Vec div(Vec a, Vec b) { return _mm256_div_ps(a, b); }
  NA_AVX2 static Vec abs(Vec a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  NA_AVX2 static Vec neg(Vec a) { return _mm256_xor_ps(a, _mm256_set1_ps(-0.0f)); }
  NA_AVX2 static Vec exp(Vec a) { return exp_ps_avx2(a); }
  // exact for every float, -0.0, inf and NaN included, as ScalarLanes::floor
  NA_AVX2 static Vec floor(Vec z) { return _mm256_round_ps(z, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  NA_AVX2 static Mask ge(Vec a, Vec b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  NA_AVX2 static Mask gt(Vec a, Vec b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  NA_AVX2 static Mask le(Vec a, Vec b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
  NA_AVX2 static Mask lt(Vec a, Vec b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  NA_AVX2 static Mask eq(Vec a, Vec b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  NA_AVX2 static Mask both(Mask a, Mask b) { return _mm256_and_ps(a, b); }
  NA_AVX2 static Vec one_where(Mask mask) { return _mm256_and_ps(mask, _mm256_set1_ps(1.0f)); }
  NA_AVX2 static Vec select(Mask mask, Vec if_set, Vec otherwise) { return _mm256_blendv_ps(otherwise, if_set, mask); }
  NA_AVX2 static Count count_zero() { return _mm256_setzero_si256(); }
  // mask lanes are -1 where set
  NA_AVX2 static Count count_where(Count count, Mask mask) { return _mm256_sub_epi32(count, _mm256_castps_si256(mask)); }
};

}  // namespace na
#endif
