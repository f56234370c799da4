// noisy_quant on the CPU, the parts every ISA shares. Per element i, in float32 and in the
// reference's order (na_kernels/ops/noisy_quant/reference.py):
//   z = (x * p) / lam[c] (+ scale * eps);  q_raw = floor(z + shift);  q = clamp(q_raw, 0, p)
//   y = (q / p) * lam[c]
// with c = (i / channel_stride) % channels (channels == 1 for a scalar lam)
// and eps a pure function of (seed, i) (noise/noise.h); backward regenerates eps from the seed.
// Work items of kWorkItemElements split into runs of one channel (ChannelRuns). The kernels:
// generic.cpp (loops the compiler vectorises, noise in batches), avx2.cpp (eight lanes at a
// time, the noise of 64 elements in registers) and avx512.cpp (sixteen lanes, 128 elements).
#pragma once
#include <algorithm>
#include <cstdint>

#include "common/dispatch.h"
#include "common/lanes.h"
#include "common/parallel.h"
#include "common/spec.h"

namespace na {
namespace noisy_quant {

constexpr int64_t kWorkItemElements = 1 << 14;  // large enough to amortise scheduling, small enough to balance

struct Quantizer {
  DType dtype;
  Noise noise;
  int64_t numel, channel_stride, channels;
  const float* lam;  // per channel
  uint64_t seed;
  float p, scale, shift;
  int threads;
};

struct ForwardArgs {
  Quantizer quantizer;
  const void* x;  // numel elements of dtype
  void* y;
};

struct BackwardArgs {
  Quantizer quantizer;
  const void* grad_y;  // numel elements of dtype each
  const void* x;
  void* grad_x;
  double* grad_lam_partial;  // threads x channels float64 sums, or null to skip the lam gradient
};

// body(dtype tag, noise tag): the kernel variant for the arguments
template <class Body> void with_quantizer_variant(const Quantizer& q, Body&& body) { dispatch(body, q.dtype, q.noise); }

// The threads and work items of a SIMD kernel (AVX2, AVX-512). Kernels supplies Keys, keys(seed)
// and its ISA's target-attributed forward<D, NOISE>(args, keys, item) and
// backward<D, NOISE>(args, keys, item, grad_lam partial sums of this thread, or null).
template <class Kernels> void run_simd_forward(const ForwardArgs& args) {
  const Quantizer& q = args.quantizer;
  with_quantizer_variant(q, [&](auto dtype, auto noise) {
    for_each_work_item(
        q.numel, kWorkItemElements, q.threads, [&] { return Kernels::keys(q.seed); },
        [&](const WorkItem& item, const typename Kernels::Keys& keys) {
          Kernels::template forward<decltype(dtype)::value, decltype(noise)::value>(args, keys, item);
        });
  });
}

template <class Kernels> void run_simd_backward(const BackwardArgs& args) {
  const Quantizer& q = args.quantizer;
  struct PerThread {
    typename Kernels::Keys keys;
    double* grad_lam;
  };
  with_quantizer_variant(q, [&](auto dtype, auto noise) {
    for_each_work_item(
        q.numel, kWorkItemElements, q.threads,
        [&] {
          return PerThread{Kernels::keys(q.seed),
                           args.grad_lam_partial ? args.grad_lam_partial + thread_index() * q.channels : nullptr};
        },
        [&](const WorkItem& item, const PerThread& state) {
          Kernels::template backward<decltype(dtype)::value, decltype(noise)::value>(args, state.keys, item,
                                                                                     state.grad_lam);
        });
  });
}

// [begin, end) of one channel inside a work item
struct ChannelRun {
  int64_t begin, end, channel;
};

// The channel runs of a work item, in order: for (const ChannelRun& run : ChannelRuns(q, item))
class ChannelRuns {
 public:
  ChannelRuns(const Quantizer& q, const WorkItem& item) : q_(q), item_(item) {}
  class Iterator {
   public:
    Iterator(const ChannelRuns& runs, int64_t begin) : runs_(runs), run_(runs.run_from(begin)) {}
    const ChannelRun& operator*() const { return run_; }
    Iterator& operator++() {
      run_ = runs_.run_from(run_.end);
      return *this;
    }
    bool operator!=(const Iterator& other) const { return run_.begin != other.run_.begin; }

   private:
    const ChannelRuns& runs_;
    ChannelRun run_;
  };
  Iterator begin() const { return Iterator(*this, item_.begin); }
  Iterator end() const { return Iterator(*this, item_.end); }

 private:
  ChannelRun run_from(int64_t begin) const {
    if (q_.channels == 1 || begin >= item_.end) return {begin, item_.end, 0};
    const int64_t row = begin / q_.channel_stride;
    return {begin, std::min(item_.end, (row + 1) * q_.channel_stride), row % q_.channels};
  }
  const Quantizer& q_;
  WorkItem item_;
};

// ---- the quantizer on lanes L (common/lanes.h), written once for every ISA

template <class L> struct ChannelConstants {
  typename L::Vec lam, p, shift, scale;
  NA_INLINE ChannelConstants(const Quantizer& q, int64_t channel)
      : lam(L::set1(q.lam[channel])), p(L::set1(q.p)), shift(L::set1(q.shift)), scale(L::set1(q.scale)) {}
};

// q_raw = floor((x * p) / lam (+ eps) + shift); eps already scaled. (x * p) / lam, not
// x * (p / lam): a half-step tie stays exact wherever x * p is exact.
template <class L, Noise NOISE>
NA_INLINE typename L::Vec quantize_raw(typename L::Vec x, typename L::Vec eps, const ChannelConstants<L>& c) {
  typename L::Vec z = L::div(L::mul(x, c.p), c.lam);
  if (NOISE != Noise::NONE) z = L::add(z, eps);
  return L::floor(L::add(z, c.shift));
}

// y = clamp(q_raw, 0, p) / p * lam; NaN stays NaN
template <class L> NA_INLINE typename L::Vec dequantize(typename L::Vec q_raw, const ChannelConstants<L>& c) {
  const typename L::Vec zero = L::set1(0.0f);
  typename L::Vec q = L::select(L::lt(q_raw, zero), zero, q_raw);
  q = L::select(L::gt(q_raw, c.p), c.p, q);
  return L::mul(L::div(q, c.p), c.lam);
}

// where the straight-through gradient passes: 0 <= q_raw <= p
template <class L> NA_INLINE typename L::Mask passes(typename L::Vec q_raw, const ChannelConstants<L>& c) {
  return L::both(L::ge(q_raw, L::set1(0.0f)), L::le(q_raw, c.p));
}

// d y / d lam: inside ? q_raw / p - x / lam : (q_raw > p ? 1 : 0)
template <class L>
NA_INLINE typename L::Vec lam_gradient(typename L::Vec q_raw, typename L::Vec x, typename L::Mask inside,
                                       const ChannelConstants<L>& c) {
  return L::select(inside, L::sub(L::div(q_raw, c.p), L::div(x, c.lam)), L::one_where(L::gt(q_raw, c.p)));
}

// the kernels of generic.cpp, avx2.cpp and avx512.cpp
void forward_generic(const ForwardArgs& args);
void backward_generic(const BackwardArgs& args);
void forward_avx2(const ForwardArgs& args);
void backward_avx2(const BackwardArgs& args);
void forward_avx512(const ForwardArgs& args);
void backward_avx512(const BackwardArgs& args);

}  // namespace noisy_quant
}  // namespace na
