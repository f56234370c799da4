// batchnorm_noisy_quant's kernels on sixteen float32 lanes (float32_simd.h): partial vectors
// through masked loads and stores, 16-bit storage through common/storage_avx512.h, mask bits as a
// __mmask16 as they are.
#include <cstdint>

#include "batchnorm_noisy_quant/float32_simd.h"
#include "common/lanes_avx512.h"
#include "common/storage_avx512.h"

#ifdef NA_X86_SIMD
namespace na {
namespace batchnorm_noisy_quant {
namespace {

template <class L> struct Io;
template <> struct Io<Avx512Lanes> {
  using Part = __mmask16;
  NA_AVX512 static Part part(int64_t count) { return first_lanes(count); }
  NA_AVX512 static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  NA_AVX512 static __m512 load(const float* p, Part part) { return _mm512_maskz_loadu_ps(part, p); }
  NA_AVX512 static void store(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
  NA_AVX512 static void store(float* p, Part part, __m512 v) { _mm512_mask_storeu_ps(p, part, v); }
  NA_AVX512 static __m512 keep(Part part, __m512 v) { return _mm512_maskz_mov_ps(part, v); }
  template <DType D> NA_AVX512 static __m512 load16(const uint16_t* p) { return Avx512Storage<D>::load(p, 0xffff); }
  template <DType D> NA_AVX512 static __m512 load16(const uint16_t* p, Part part) {
    return Avx512Storage<D>::load(p, part);
  }
  template <DType D> NA_AVX512 static void store16(uint16_t* p, __m512 v) { Avx512Storage<D>::store(p, 0xffff, v); }
  template <DType D> NA_AVX512 static void store16(uint16_t* p, Part part, __m512 v) {
    Avx512Storage<D>::store(p, part, v);
  }
  template <DType D, bool FULL>
  NA_AVX512 static void copy16(const uint16_t* from, uint16_t* to, Part part, __mmask16 keep) {
    Avx512Storage<D>::copy_or_zero(from, to, FULL ? __mmask16(0xffff) : part, keep);
  }
  // as Avx512Storage<D>::store then load would give, but for NaNs, which stay NaNs (their payload
  // reaches no output: y and the gradients store NaNs as such)
  template <DType D> NA_AVX512 static __m512 round16(__m512 v) {
    if constexpr (D == DType::BFLOAT16) {
      const __m512i x = _mm512_castps_si512(v);
      const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
      const __m512i up = _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), odd);
      const __m512i high = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
      const __m512 rounded = _mm512_castsi512_ps(_mm512_and_si512(up, high));
      return _mm512_mask_mov_ps(rounded, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), v);
    } else {
      return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
  }
  NA_AVX512 static __mmask16 mask_of(uint32_t bits) { return static_cast<__mmask16>(bits); }
  NA_AVX512 static uint32_t bits_of(__mmask16 mask) { return mask; }
  NA_AVX512 static float sum(__m512 v) { return _mm512_reduce_add_ps(v); }

  // sixteen float64 accumulators
  struct Acc {
    __m512d low, high;
  };
  NA_AVX512 static Acc acc_zero() { return {_mm512_setzero_pd(), _mm512_setzero_pd()}; }
  NA_AVX512 static void acc_add(Acc& acc, __m512 v) {
    acc.low = _mm512_add_pd(acc.low, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    acc.high = _mm512_add_pd(acc.high, _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)));
  }
  // (v - mean)^2 on the part's lanes
  NA_AVX512 static void acc_add_squares(Acc& acc, __m512 v, double mean, Part part) {
    const __m512d m = _mm512_set1_pd(mean);
    const __m512d v_low = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d v_high = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
    const __m512d low = _mm512_maskz_sub_pd(static_cast<__mmask8>(part), v_low, m);
    const __m512d high = _mm512_maskz_sub_pd(static_cast<__mmask8>(part >> 8), v_high, m);
    acc.low = _mm512_add_pd(acc.low, _mm512_mul_pd(low, low));
    acc.high = _mm512_add_pd(acc.high, _mm512_mul_pd(high, high));
  }
  NA_AVX512 static double acc_sum(const Acc& acc) { return _mm512_reduce_add_pd(_mm512_add_pd(acc.low, acc.high)); }
};

using E = simd::Entry<Avx512Lanes, Io>;

}  // namespace

NA_AVX512 void statistics_sums_avx512(const ForwardArgs& args, const noisy_quant::Quantizer& layout,
                                      const double* mean, const WorkItem& item, double* sums) {
  E::statistics_sums(args, layout, mean, item, sums);
}

NA_AVX512 void forward_avx512(const ForwardArgs& args, const noisy_quant::Quantizer& nq, const float* alpha,
                             const float* beta, const WorkItem& item) {
  E::forward(args, nq, alpha, beta, item);
}

NA_AVX512 void backward_sums_avx512(const BackwardArgs& args, const noisy_quant::Quantizer& layout,
                                    const ChannelTerms& terms, const WorkItem& item, double* sums) {
  E::backward_sums(args, layout, terms, item, sums);
}

NA_AVX512 void backward_inputs_avx512(const BackwardArgs& args, const noisy_quant::Quantizer& layout,
                                      const ChannelTerms& terms, const WorkItem& item) {
  E::backward_inputs(args, layout, terms, item);
}

}  // namespace batchnorm_noisy_quant
}  // namespace na
#endif
