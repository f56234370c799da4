// event_conv's AVX2 gather: blocks of up to eight ymm (64 output channels) per output pixel.
#include <cstdint>

#include "event_conv/event_conv.h"

#ifdef NA_X86_SIMD
namespace na {
namespace event_conv {
namespace {

struct Avx2Block {
  static constexpr int kWidth = 8;
  using Vec = __m256;
  NA_AVX2 static Vec load(const float* p) { return _mm256_loadu_ps(p); }
  NA_AVX2 static Vec set1(float value) { return _mm256_set1_ps(value); }
  NA_AVX2 __attribute__((target("fma"))) static Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  NA_AVX2 static __m256i first(int lanes) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  NA_AVX2 static Vec add_first(const float* p, Vec v, int lanes) {
    return _mm256_add_ps(v, _mm256_maskload_ps(p, first(lanes)));
  }
  NA_AVX2 static void store_first(float* p, Vec v, int lanes) { _mm256_maskstore_ps(p, first(lanes), v); }
};

}  // namespace

NA_AVX2 __attribute__((target("fma"))) void rows_avx2(const ConvArgs& a, int64_t begin, int64_t end) {
  output_rows<Avx2Block, 8>(a, begin, end);
}

}  // namespace event_conv
}  // namespace na
#endif
