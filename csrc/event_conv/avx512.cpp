// event_conv's AVX-512 kernels: the event lists by compress stores (sixteen channels at a
// time, per input row), the gather in blocks of up to four zmm (64 output channels) per output pixel.
#include <cstdint>

#include "common/lanes_avx512.h"
#include "event_conv/event_conv.h"

#ifdef NA_X86_SIMD
namespace na {
namespace event_conv {
namespace {

struct Avx512Block {
  static constexpr int kWidth = 16;
  using Vec = __m512;
  NA_AVX512 static Vec load(const float* p) { return _mm512_loadu_ps(p); }
  NA_AVX512 static Vec set1(float value) { return _mm512_set1_ps(value); }
  NA_AVX512 static Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  NA_AVX512 static Vec add_first(const float* p, Vec v, int lanes) {
    return _mm512_add_ps(v, _mm512_maskz_loadu_ps(first_lanes(lanes), p));
  }
  NA_AVX512 static void store_first(float* p, Vec v, int lanes) { _mm512_mask_storeu_ps(p, first_lanes(lanes), v); }
};

// the nonzeros of in[0, count) keyed first_key + i, appended at key + k, value + k; returns the new k.
// Compress in registers and a masked store: a compress straight to memory is slow on some CPUs.
// kCheck: or-s into *nonfinite the lanes holding an infinity or a NaN (x - x is then a NaN).
template <bool kCheck>
NA_AVX512 inline int32_t append_events(const float* in, int64_t count, int32_t first_key, int32_t* key, float* value,
                                       int32_t k, __mmask16* nonfinite) {
  __m512i index = _mm512_add_epi32(_mm512_set1_epi32(first_key),
                                   _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  const __m512i step = _mm512_set1_epi32(16);
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 lanes = first_lanes(count - i);
    const __m512 x = _mm512_maskz_loadu_ps(lanes, in + i);
    const __mmask16 nonzero = _mm512_mask_cmp_ps_mask(lanes, x, _mm512_setzero_ps(), _CMP_NEQ_UQ);
    if constexpr (kCheck)
      *nonfinite |= _mm512_mask_cmp_ps_mask(lanes, _mm512_sub_ps(x, x), _mm512_setzero_ps(), _CMP_NEQ_UQ);
    const int found = __builtin_popcount(nonzero);
    const __mmask16 first = first_lanes(found);
    _mm512_mask_storeu_epi32(key + k, first, _mm512_maskz_compress_epi32(nonzero, index));
    _mm512_mask_storeu_ps(value + k, first, _mm512_maskz_compress_ps(nonzero, x));
    k += found;
    index = _mm512_add_epi32(index, step);
  }
  return k;
}

// one pixel's events for scan_rows, the non-finite lanes gathered in bad
template <bool kCheck> struct Avx512Scan {
  __mmask16 bad = 0;
  NA_AVX512 int32_t pixel(const float* in, int64_t count, int32_t first_key, int32_t* key, float* value, int32_t k) {
    return append_events<kCheck>(in, count, first_key, key, value, k, &bad);
  }
};

template <bool kCheck>
NA_AVX512 int64_t event_rows(const float* x, const Geometry& g, const Events& e, int64_t begin, int64_t end,
                             bool* nonfinite) {
  Avx512Scan<kCheck> scan;
  const int64_t total = scan_rows(x, g, e, begin, end, scan);
  if (scan.bad) *nonfinite = true;
  return total;
}

}  // namespace

NA_AVX512 int64_t events_avx512(const float* x, const Geometry& g, const Events& e, int64_t begin, int64_t end,
                                bool* nonfinite) {
  return nonfinite ? event_rows<true>(x, g, e, begin, end, nonfinite) : event_rows<false>(x, g, e, begin, end, nullptr);
}

NA_AVX512 void rows_avx512(const ConvArgs& a, int64_t begin, int64_t end) {
  output_rows<Avx512Block, 4>(a, begin, end);
}

}  // namespace event_conv
}  // namespace na
#endif
