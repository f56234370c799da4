// Avx512Storage<D>: sixteen-lane float32 loads and stores of float32 / float16 / bfloat16
// storage for the AVX-512 kernels, rounding exactly as float_convert.h (and torch) do.
#pragma once
#include "common/float_convert.h"
#include "common/simd.h"

#ifdef NA_X86_SIMD
namespace na {

template <DType D> struct Avx512Storage;

template <> struct Avx512Storage<DType::FLOAT32> {
  using type = float;
  NA_AVX512 static __m512 load(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
  NA_AVX512 static void store(float* p, __mmask16 m, __m512 v) { _mm512_mask_storeu_ps(p, m, v); }
  // the stored bits of sixteen elements, zero where `keep` is clear
  NA_AVX512 static void copy_or_zero(const float* from, float* to, __mmask16 m, __mmask16 keep) {
    _mm512_mask_storeu_epi32(to, m, _mm512_maskz_loadu_epi32(m & keep, from));
  }
};

template <> struct Avx512Storage<DType::BFLOAT16> {
  using type = uint16_t;
  NA_AVX512 static __m512 load(const uint16_t* p, __mmask16 m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
  }
  NA_AVX512 static void store(uint16_t* p, __mmask16 m, __m512 v) {
    // float_to_bfloat16: round to nearest even on the bits, NaN -> 0x7fc0
    const __m512i x = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    __m512i b = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), odd), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    b = _mm512_mask_mov_epi32(b, nan, _mm512_set1_epi32(0x7fc0));
    _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(b));
  }
  NA_AVX512 static void copy_or_zero(const uint16_t* from, uint16_t* to, __mmask16 m, __mmask16 keep) {
    _mm256_mask_storeu_epi16(to, m, _mm256_maskz_loadu_epi16(m & keep, from));
  }
};

template <> struct Avx512Storage<DType::FLOAT16> {
  using type = uint16_t;
  // vcvtph2ps is exact for every half (subnormals included) except that it quiets signalling
  // NaNs, which the first arithmetic on them does anyway
  NA_AVX512 static __m512 load(const uint16_t* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
  }
  NA_AVX512 static void store(uint16_t* p, __mmask16 m, __m512 v) {
    // vcvtps2ph rounds to nearest even like float_to_half; NaNs become sign | 0x7e00 as there
    __m256i h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    const __m256i sign = _mm256_and_si256(_mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(v), 16)),
                                          _mm256_set1_epi16(static_cast<short>(0x8000)));
    h = _mm256_mask_mov_epi16(h, nan, _mm256_or_si256(sign, _mm256_set1_epi16(0x7e00)));
    _mm256_mask_storeu_epi16(p, m, h);
  }
  NA_AVX512 static void copy_or_zero(const uint16_t* from, uint16_t* to, __mmask16 m, __mmask16 keep) {
    _mm256_mask_storeu_epi16(to, m, _mm256_maskz_loadu_epi16(m & keep, from));
  }
};

}  // namespace na
#endif
