// event_conv's AVX-512 kernels: the event lists by compress stores (sixteen channels at a
// time), the gather in blocks of up to four zmm (64 output channels) per output pixel.
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

// one pixel's nonzero channels and values, compressed sixteen channels at a time
NA_AVX512 inline int32_t pixel_events(const float* in, int64_t cin, int32_t* channel, float* value) {
  int32_t k = 0;
  __m512i index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  for (int64_t c = 0; c < cin; c += 16) {
    const __mmask16 lanes = first_lanes(cin - c);
    const __m512 x = _mm512_maskz_loadu_ps(lanes, in + c);
    const __mmask16 nonzero = _mm512_mask_cmp_ps_mask(lanes, x, _mm512_setzero_ps(), _CMP_NEQ_UQ);
    _mm512_mask_compressstoreu_epi32(channel + k, nonzero, index);
    _mm512_mask_compressstoreu_ps(value + k, nonzero, x);
    k += __builtin_popcount(nonzero);
    index = _mm512_add_epi32(index, step);
  }
  return k;
}

}  // namespace

NA_AVX512 int64_t events_avx512(const float* x, const Geometry& g, const Events& e, int64_t begin, int64_t end) {
  int64_t total = 0;
  for (int64_t p = begin; p < end; ++p) {
    const int32_t k = pixel_events(x + p * g.cin, g.cin, e.channel + p * g.cin, e.value + p * g.cin);
    e.count[p] = k;
    total += k;
  }
  return total;
}

NA_AVX512 void rows_avx512(const ConvArgs& a, int64_t begin, int64_t end) {
  output_rows<Avx512Block, 4>(a, begin, end);
}

}  // namespace event_conv
}  // namespace na
#endif
