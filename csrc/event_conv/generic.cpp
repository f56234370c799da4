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

// one pixel's events for scan_rows: every element written, kept where nonzero (branch-free)
struct GenericScan {
  bool check;
  bool bad = false;
  int32_t pixel(const float* in, int64_t count, int32_t first_key, int32_t* key, float* value, int32_t k) {
    for (int64_t i = 0; i < count; ++i) {
      key[k] = first_key + static_cast<int32_t>(i);
      value[k] = in[i];
      k += in[i] != 0.0f;
      bad |= check && !std::isfinite(in[i]);
    }
    return k;
  }
};

}  // namespace

int64_t events_generic(const float* x, const Geometry& g, const Events& e, int64_t begin, int64_t end,
                       bool* nonfinite) {
  GenericScan scan{nonfinite != nullptr};
  const int64_t total = scan_rows(x, g, e, begin, end, scan);
  if (scan.bad) *nonfinite = true;
  return total;
}

void rows_generic(const ConvArgs& a, int64_t begin, int64_t end) { output_rows<GenericBlock, 4>(a, begin, end); }

}  // namespace event_conv
}  // namespace na
