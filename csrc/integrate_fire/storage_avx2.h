// Avx2Storage<D>: eight-lane float32 loads and stores of float32 / float16 / bfloat16 storage for
// the AVX2 kernels, rounding exactly as float_convert.h (and Avx512Storage) do. Every access is
// a full vector (AVX2 kernels leave a work item's last count % 8 neurons to the generic loops).
#pragma once
#include "common/float_convert.h"
#include "common/simd.h"

#ifdef NA_X86_SIMD
namespace na {
namespace integrate_fire {

// eight 32-bit lanes, each < 2^16, to eight 16-bit lanes
NA_AVX2 inline __m128i narrow_u32_u16(__m256i v) {
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(v, v), 0x08));
}

template <DType D> struct Avx2Storage;

template <> struct Avx2Storage<DType::FLOAT32> {
  NA_AVX2 static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  NA_AVX2 static void store(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
};

template <> struct Avx2Storage<DType::BFLOAT16> {
  NA_AVX2 static __m256 load(const uint16_t* p) {
    const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
  }
  NA_AVX2 static void store(uint16_t* p, __m256 v) {
    // float_to_bfloat16: round to nearest even on the bits, NaN -> 0x7fc0
    const __m256i x = _mm256_castps_si256(v);
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    const __m256i b = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), odd), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow_u32_u16(_mm256_blendv_epi8(b, _mm256_set1_epi32(0x7fc0), nan)));
  }
};

template <> struct Avx2Storage<DType::FLOAT16> {
  // vcvtph2ps: exact (see Avx512Storage<DType::FLOAT16>::load)
  NA_AVX2 static __m256 load(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  NA_AVX2 static void store(uint16_t* p, __m256 v) {
    // vcvtps2ph rounds to nearest even like float_to_half; NaNs become sign | 0x7e00 as there
    const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(_mm256_castps_si256(v), 16), _mm256_set1_epi32(0x8000));
    const __m128i nan_bits = narrow_u32_u16(_mm256_or_si256(sign, _mm256_set1_epi32(0x7e00)));
    const __m256i nan32 = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    const __m128i nan = _mm_packs_epi32(_mm256_castsi256_si128(nan32), _mm256_extracti128_si256(nan32, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm_blendv_epi8(h, nan_bits, nan));
  }
};

}  // namespace integrate_fire
}  // namespace na
#endif
