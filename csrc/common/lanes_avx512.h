// Avx512Lanes: ScalarLanes' operations (common/lanes.h) on sixteen floats in a zmm, with
// __mmask16 masks; exp is vector_math_avx512.h's (within about 1 ulp of the C library's).
#pragma once
#include "common/lanes.h"
#include "common/vector_math_avx512.h"

#ifdef NA_X86_SIMD
namespace na {

struct Avx512Lanes {
  using Vec = __m512;
  using Mask = __mmask16;
  using Count = __m512i;
  static constexpr int kWidth = 16;

  NA_AVX512 static Vec set1(float value) { return _mm512_set1_ps(value); }
  NA_AVX512 static Vec zero() { return _mm512_setzero_ps(); }
  NA_AVX512 static Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
  NA_AVX512 static Vec sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
  NA_AVX512 static Vec mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
  NA_AVX512 static Vec div(Vec a, Vec b) { return _mm512_div_ps(a, b); }
  NA_AVX512 static Vec abs(Vec a) { return _mm512_abs_ps(a); }
  NA_AVX512 static Vec neg(Vec a) { return _mm512_xor_ps(a, _mm512_set1_ps(-0.0f)); }
  NA_AVX512 static Vec exp(Vec a) { return exp_ps_avx512(a); }
  NA_AVX512 static Vec floor(Vec z) { return _mm512_roundscale_ps(z, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  NA_AVX512 static Mask ge(Vec a, Vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  NA_AVX512 static Mask gt(Vec a, Vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  NA_AVX512 static Mask le(Vec a, Vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
  NA_AVX512 static Mask lt(Vec a, Vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  NA_AVX512 static Mask eq(Vec a, Vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  NA_AVX512 static Mask both(Mask a, Mask b) { return a & b; }
  NA_AVX512 static Vec one_where(Mask mask) { return _mm512_maskz_mov_ps(mask, _mm512_set1_ps(1.0f)); }
  NA_AVX512 static Vec select(Mask mask, Vec if_set, Vec otherwise) { return _mm512_mask_mov_ps(otherwise, mask, if_set); }
  NA_AVX512 static Count count_zero() { return _mm512_setzero_si512(); }
  NA_AVX512 static Count count_where(Count count, Mask mask) {
    return _mm512_mask_add_epi32(count, mask, count, _mm512_set1_epi32(1));
  }
};

// lanes [0, count) of sixteen, count <= 16
NA_AVX512 inline __mmask16 first_lanes(int64_t count) {
  return count >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << count) - 1u);
}

}  // namespace na
#endif
