// event_conv's portable kernels: the event lists by a branch-free scan, and the gather on
// sixteen-float blocks with std::fma per lane (the rounding of the SIMD kernels' FMA).
#include <cmath>
#include <cstdint>

#include "event_conv/event_conv.h"

namespace na {
namespace event_conv {
namespace {

struct GenericBlock {
  static constexpr int kWidth = 16;
  struct Vec {
    float lane[kWidth];
  };
  static Vec load(const float* p) {
    Vec v;
    for (int i = 0; i < kWidth; ++i) v.lane[i] = p[i];
    return v;
  }
  static Vec set1(float value) {
    Vec v;
    for (int i = 0; i < kWidth; ++i) v.lane[i] = value;
    return v;
  }
  static Vec fma(const Vec& a, const Vec& b, const Vec& c) {
    Vec v;
    for (int i = 0; i < kWidth; ++i) v.lane[i] = std::fma(a.lane[i], b.lane[i], c.lane[i]);
    return v;
  }
  static Vec add_first(const float* p, Vec v, int lanes) {
    for (int i = 0; i < lanes; ++i) v.lane[i] = v.lane[i] + p[i];
    return v;
  }
  static void store_first(float* p, const Vec& v, int lanes) {
    for (int i = 0; i < lanes; ++i) p[i] = v.lane[i];
  }
};

}  // namespace

int64_t events_generic(const float* x, const Geometry& g, const Events& e, int64_t begin, int64_t end) {
  int64_t total = 0;
  for (int64_t p = begin; p < end; ++p) {
    const float* in = x + p * g.cin;
    int32_t* channel = e.channel + p * g.cin;
    float* value = e.value + p * g.cin;
    int32_t k = 0;
    for (int32_t c = 0; c < g.cin; ++c) {  // written always, kept where nonzero
      channel[k] = c;
      value[k] = in[c];
      k += in[c] != 0.0f;
    }
    e.count[p] = k;
    total += k;
  }
  return total;
}

void rows_generic(const ConvArgs& a, int64_t begin, int64_t end) { output_rows<GenericBlock, 4>(a, begin, end); }

}  // namespace event_conv
}  // namespace na
