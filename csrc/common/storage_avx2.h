// Avx2Storage<D>: eight-lane float32 loads and stores of float32 / float16 (F16C) / bfloat16
// storage for the AVX2 kernels, rounding exactly as float_convert.h (and torch) do. Whole
// vectors only: AVX2 has no 16-bit masked moves, so kernels stage partial vectors.
#pragma once
#include "common/float_convert.h"
#include "common/simd.h"

#ifdef NA_X86_SIMD
namespace na {

// eight int32 lanes holding values 0 .. 0xffff -> eight 16-bit lanes (packus works per 128-bit
// lane, 0-3 0-3 | 4-7 4-7; the permute puts 0-3, 4-7 in the low half)
NA_AVX2 inline __m128i narrow_values_avx2(__m256i v) {
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(v, v), 0x08));
}
// eight -1 / 0 lanes -> eight 16-bit -1 / 0 lanes (signed saturation keeps -1)
NA_AVX2 inline __m128i narrow_mask_avx2(__m256 mask) {
  const __m256i m = _mm256_castps_si256(mask);
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packs_epi32(m, m), 0x08));
}

NA_AVX2 inline __m128i load8_16(const uint16_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
NA_AVX2 inline void store8_16(uint16_t* p, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v); }

template <DType D> struct Avx2Storage;

template <> struct Avx2Storage<DType::FLOAT32> {
  NA_AVX2 static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  NA_AVX2 static void store(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
  // the stored bits of eight elements, zero where `keep` is clear
  NA_AVX2 static void copy_or_zero(const float* from, float* to, __m256 keep) {
    _mm256_storeu_ps(to, _mm256_and_ps(keep, _mm256_loadu_ps(from)));
  }
};

template <> struct Avx2Storage<DType::BFLOAT16> {
  NA_AVX2 static __m256 load(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load8_16(p)), 16));
  }
  NA_AVX2 static void store(uint16_t* p, __m256 v) {
    // float_to_bfloat16: round to nearest even on the bits, NaN -> 0x7fc0
    const __m256i x = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    __m256i b = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), odd), 16);
    const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    b = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(b), _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc0)), nan));
    store8_16(p, narrow_values_avx2(b));
  }
  NA_AVX2 static void copy_or_zero(const uint16_t* from, uint16_t* to, __m256 keep) {
    store8_16(to, _mm_and_si128(load8_16(from), narrow_mask_avx2(keep)));
  }
};

template <> struct Avx2Storage<DType::FLOAT16> {
  // vcvtph2ps is exact for every half (subnormals included) except that it quiets signalling NaNs
  NA_AVX2 static __m256 load(const uint16_t* p) { return _mm256_cvtph_ps(load8_16(p)); }
  NA_AVX2 static void store(uint16_t* p, __m256 v) {
    // vcvtps2ph rounds to nearest even like float_to_half; NaNs become sign | 0x7e00 as there
    __m256i h = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    const __m256i nan_bits = _mm256_or_si256(
        _mm256_and_si256(_mm256_srli_epi32(_mm256_castps_si256(v), 16), _mm256_set1_epi32(0x8000)),
        _mm256_set1_epi32(0x7e00));
    h = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(h), _mm256_castsi256_ps(nan_bits), nan));
    store8_16(p, narrow_values_avx2(h));
  }
  NA_AVX2 static void copy_or_zero(const uint16_t* from, uint16_t* to, __m256 keep) {
    store8_16(to, _mm_and_si128(load8_16(from), narrow_mask_avx2(keep)));
  }
};

}  // namespace na
#endif
