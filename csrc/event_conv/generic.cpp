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

int64_t events_generic(const float* x, const Geometry& g, const Events& e, int64_t begin, int64_t end,
                       bool* nonfinite) {
  int64_t total = 0;
  bool bad = false;
  const int64_t row_events = g.w * g.cin;
  for (int64_t row = begin; row < end; ++row) {
    const float* in = x + row * row_events;
    int32_t* start = e.start + row * (g.w + 1);
    int32_t* key = e.key + row * row_events;
    float* value = e.value + row * row_events;
    int32_t k = 0;
    for (int64_t iw = 0; iw < g.w; ++iw) {
      start[iw] = k;
      for (int64_t i = iw * g.cin; i < (iw + 1) * g.cin; ++i) {  // written always, kept where nonzero
        key[k] = static_cast<int32_t>(i);
        value[k] = in[i];
        k += in[i] != 0.0f;
        bad |= nonfinite && !std::isfinite(in[i]);
      }
    }
    start[g.w] = k;
    total += k;
  }
  if (bad) *nonfinite = true;
  return total;
}

void rows_generic(const ConvArgs& a, int64_t begin, int64_t end) { output_rows<GenericBlock, 4>(a, begin, end); }

}  // namespace event_conv
}  // namespace na
