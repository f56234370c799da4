// batchnorm_noisy_quant's kernels on eight float32 lanes (float32_simd.h): partial vectors
// through AVX2's masked loads and stores (lane masks as vectors), 16-bit storage through
// common/storage_avx2.h (partial vectors staged through eight elements on the stack), a byte of
// mask bits spread over the eight lanes by a compare.
#include <cstdint>
#include <cstring>

#include "batchnorm_noisy_quant/float32_simd.h"
#include "common/lanes_avx2.h"
#include "common/storage_avx2.h"

#ifdef NA_X86_SIMD
namespace na {
namespace batchnorm_noisy_quant {
namespace {

template <class L> struct Io;
template <> struct Io<Avx2Lanes> {
  using Part = __m256i;
  NA_AVX2 static Part part(int64_t count) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(count)), lane);
  }
  NA_AVX2 static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  NA_AVX2 static __m256 load(const float* p, Part part) { return _mm256_maskload_ps(p, part); }
  NA_AVX2 static void store(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
  NA_AVX2 static void store(float* p, Part part, __m256 v) { _mm256_maskstore_ps(p, part, v); }
  NA_AVX2 static __m256 keep(Part part, __m256 v) { return _mm256_and_ps(_mm256_castsi256_ps(part), v); }
  // the lanes of a partial vector (its first ones)
  NA_AVX2 static size_t lanes(Part part) {
    return static_cast<size_t>(__builtin_popcount(_mm256_movemask_ps(_mm256_castsi256_ps(part))));
  }
  template <DType D> NA_AVX2 static __m256 load16(const uint16_t* p) { return Avx2Storage<D>::load(p); }
  template <DType D> NA_AVX2 static __m256 load16(const uint16_t* p, Part part) {
    uint16_t staged[8] = {};
    std::memcpy(staged, p, lanes(part) * sizeof(uint16_t));
    return Avx2Storage<D>::load(staged);
  }
  template <DType D> NA_AVX2 static void store16(uint16_t* p, __m256 v) { Avx2Storage<D>::store(p, v); }
  template <DType D> NA_AVX2 static void store16(uint16_t* p, Part part, __m256 v) {
    uint16_t staged[8];
    Avx2Storage<D>::store(staged, v);
    std::memcpy(p, staged, lanes(part) * sizeof(uint16_t));
  }
  template <DType D, bool FULL>
  NA_AVX2 static void copy16(const uint16_t* from, uint16_t* to, Part part, __m256 keep) {
    if constexpr (FULL) {
      (void)part;
      Avx2Storage<D>::copy_or_zero(from, to, keep);
    } else {
      uint16_t staged[8] = {};
      std::memcpy(staged, from, lanes(part) * sizeof(uint16_t));
      Avx2Storage<D>::copy_or_zero(staged, staged, keep);
      std::memcpy(to, staged, lanes(part) * sizeof(uint16_t));
    }
  }
  // as Avx2Storage<D>::store then load would give, but for NaNs, which stay NaNs (their payload
  // reaches no output: y and the gradients store NaNs as such)
  template <DType D> NA_AVX2 static __m256 round16(__m256 v) {
    if constexpr (D == DType::BFLOAT16) {
      const __m256i x = _mm256_castps_si256(v);
      const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
      const __m256i up = _mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), odd);
      const __m256i high = _mm256_set1_epi32(static_cast<int>(0xffff0000u));
      const __m256 rounded = _mm256_castsi256_ps(_mm256_and_si256(up, high));
      return _mm256_blendv_ps(rounded, v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    } else {
      return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
  }
  // bit i of the low byte -> all-ones lane i
  NA_AVX2 static __m256 mask_of(uint32_t bits) {
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i set = _mm256_and_si256(_mm256_set1_epi32(static_cast<int32_t>(bits)), lane_bit);
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(set, lane_bit));
  }
  NA_AVX2 static uint32_t bits_of(__m256 mask) { return static_cast<uint32_t>(_mm256_movemask_ps(mask)); }
  // eight float64 accumulators
  struct Acc {
    __m256d low, high;
  };
  NA_AVX2 static Acc acc_zero() { return {_mm256_setzero_pd(), _mm256_setzero_pd()}; }
  NA_AVX2 static void acc_add(Acc& acc, __m256 v) {
    acc.low = _mm256_add_pd(acc.low, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    acc.high = _mm256_add_pd(acc.high, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  // (v - mean)^2 on the part's lanes
  NA_AVX2 static void acc_add_squares(Acc& acc, __m256 v, double mean, Part part) {
    const __m256d m = _mm256_set1_pd(mean);
    const __m256d keep_low = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(part)));
    const __m256d keep_high = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm256_extracti128_si256(part, 1)));
    const __m256d low = _mm256_and_pd(keep_low, _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), m));
    const __m256d high = _mm256_and_pd(keep_high, _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), m));
    acc.low = _mm256_add_pd(acc.low, _mm256_mul_pd(low, low));
    acc.high = _mm256_add_pd(acc.high, _mm256_mul_pd(high, high));
  }
  NA_AVX2 static double acc_sum(const Acc& acc) {
    const __m256d v = _mm256_add_pd(acc.low, acc.high);
    const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  NA_AVX2 static float sum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

using E = simd::Entry<Avx2Lanes, Io>;

}  // namespace

// float16 needs F16C, which generic.cpp checks before it calls these
NA_AVX2 void statistics_sums_avx2(const ForwardArgs& args, const noisy_quant::Quantizer& layout, const double* mean,
                                  const WorkItem& item, double* sums) {
  E::statistics_sums(args, layout, mean, item, sums);
}

NA_AVX2 void forward_avx2(const ForwardArgs& args, const noisy_quant::Quantizer& nq, const float* alpha,
                         const float* beta, const WorkItem& item) {
  E::forward(args, nq, alpha, beta, item);
}

NA_AVX2 void backward_sums_avx2(const BackwardArgs& args, const noisy_quant::Quantizer& layout,
                                const ChannelTerms& terms, const WorkItem& item, double* sums) {
  E::backward_sums(args, layout, terms, item, sums);
}

NA_AVX2 void backward_inputs_avx2(const BackwardArgs& args, const noisy_quant::Quantizer& layout,
                                  const ChannelTerms& terms, const WorkItem& item) {
  E::backward_inputs(args, layout, terms, item);
}

}  // namespace batchnorm_noisy_quant
}  // namespace na
#endif
