// batchnorm_noisy_quant's float32 backward on eight lanes (float32_simd.h): partial vectors
// through AVX2's masked loads and stores (lane masks as vectors), a byte of mask bits spread
// over the eight lanes by a compare.
#include <cstdint>

#include "batchnorm_noisy_quant/float32_simd.h"
#include "common/lanes_avx2.h"

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

using K = simd::Backward<Avx2Lanes, Io>;
using F = simd::Forward<Avx2Lanes, Io>;
using S = simd::Statistics<Avx2Lanes, Io>;

}  // namespace

NA_AVX2 void statistics_sums_avx2(const ForwardArgs& args, const noisy_quant::Quantizer& layout, const double* mean,
                                  const WorkItem& item, double* sums) {
  if (mean)
    S::item<true>(args, layout, mean, item, sums);
  else
    S::item<false>(args, layout, mean, item, sums);
}

NA_AVX2 void forward_avx2(const ForwardArgs& args, const noisy_quant::Quantizer& nq, const float* alpha,
                         const float* beta, const WorkItem& item) {
  if (args.residual)
    F::item_for_noise<true>(args, nq, alpha, beta, item);
  else
    F::item_for_noise<false>(args, nq, alpha, beta, item);
}

NA_AVX2 void backward_sums_avx2(const BackwardArgs& args, const noisy_quant::Quantizer& layout,
                                const ChannelTerms& terms, const WorkItem& item, double* sums) {
  if (args.residual)
    K::sums_item<true>(args, layout, terms, item, sums);
  else
    K::sums_item<false>(args, layout, terms, item, sums);
}

NA_AVX2 void backward_inputs_avx2(const BackwardArgs& args, const noisy_quant::Quantizer& layout,
                                  const ChannelTerms& terms, const WorkItem& item) {
  if (args.grad_x && args.grad_residual)
    K::inputs_item<true, true>(args, layout, terms, item);
  else if (args.grad_x)
    K::inputs_item<true, false>(args, layout, terms, item);
  else if (args.grad_residual)
    K::inputs_item<false, true>(args, layout, terms, item);
}

}  // namespace batchnorm_noisy_quant
}  // namespace na
#endif
