// integrate_fire on the CPU, the parts every ISA shares: the arguments, the integrate-and-fire
// update, the surrogates and the backward step, each written once over lane types
// (common/lanes.h), and the kernels' variants.
// Per neuron n, in float32 and in the reference's order (na_kernels/ops/integrate_fire/reference.py):
//   v = v0[n]  or  v_frac * theta[c]
//   for t: h = v + x[t, n];  s = h >= theta[c];  v = h - s * theta[c]  (subtract) | h * (1 - s)  (zero)
//          spikes[t, n] = s * amp;  count += s
// with c = (n / channel_stride) % channels. Backward walks t from T-1 down to 0 with the
// incoming grad of v per neuron:
//   sg = surrogate(h - theta);  grad_s = grad_spikes[t] * amp  (- theta * gv | - h * gv where gv != 0,  unless detach)
//   gh = grad_s * sg + gv * (1 | 1 - s);  grad_x[t] = gh;  gv = gh;   grad_v_init = gv at the end.
// h is either the forward's saved [T, N] or, when the caller kept x instead, recomputed per work
// item by the forward's update (no [T, N] buffer).
// Work items are runs of kWorkItemNeurons neurons walked over all T, so the inner loops stream
// contiguous memory. The kernels: generic.cpp (loops over a work item's state arrays, which the
// compiler vectorises), forward_avx2.cpp, forward_avx512.cpp (forward_tile.h), backward_avx2.cpp and
// backward_avx512.cpp (backward_tile.h): tiles of vectors whose state stays in registers over all T.
#pragma once
#include <cstdint>

#include "common/dispatch.h"
#include "common/lanes.h"
#include "common/parallel.h"
#include "common/spec.h"

namespace na {
namespace integrate_fire {

constexpr int64_t kWorkItemNeurons = 1024;  // 4 state arrays of 4 KiB stay in L1, rows of 4 KiB stream

// The neurons and their thresholds, as both passes see them.
struct Layer {
  int64_t steps, neurons, channel_stride, channels;
  int64_t x_step;      // elements between two steps of x (neurons, or 0 for an input repeated over T, ...)
  const float* theta;  // [channels]
  bool amp_is_theta;   // spikes are theta, else amp
  float amp;
  int threads;
  float amplitude(int64_t channel) const { return amp_is_theta ? theta[channel] : amp; }
};

// Addresses: x / spikes in dtype (step t of x at x + t * x_step elements, each step contiguous;
// spikes [T, N] contiguous); counts int32 [N] or null and v_final float32 [N] or null (not wanted:
// nothing stored); h float32 [T, N] or null (not saved); v0 float32 [N] or null (then v starts at
// v_frac * theta).
struct ForwardArgs {
  Layer layer;
  DType dtype;
  Reset reset;
  const void* x;
  void* spikes;
  int32_t* counts;
  float* v_final;
  float* h;
  const float* v0;
  float v_frac;
  // spikes far larger than the cache, every row 64-byte aligned: the vector forwards that can
  // store whole vectors of spikes with non-temporal stores (no read of the lines first)
  bool stream_spikes = false;
};

// The surrogate's constants, each rounded to float32 as the reference rounds it.
struct SurrogateParams {
  float alpha;
  float atan_scale;  // pi / 2 * alpha (double) rounded to float32
  float half_alpha;  // alpha * 0.5 in float32
  float half_width;  // 0.5 / alpha (double) rounded to float32
};

// Addresses: grad_spikes in dtype [T, N] or null (zero); grad_v float32 [N] or null (zero); h
// float32 [T, N], or null to recompute h from x (in dtype, steps x_step apart) and v0 (float32
// [N], or null: v_frac * theta); grad_x in dtype [T, N] or null (not wanted); grad_v_init
// float32 [N] or null (not wanted).
struct BackwardArgs {
  Layer layer;
  DType dtype;
  Reset reset;
  Surrogate surrogate;
  SurrogateParams surrogate_params;
  bool detach_reset;
  const void* grad_spikes;
  const float* grad_v;
  const float* h;
  const void* x;
  const float* v0;
  float v_frac;
  void* grad_x;
  float* grad_v_init;
};

// body(dtype, reset, save_h tags): the forward kernel's variant for the arguments
template <class Body> void with_forward_variant(const ForwardArgs& args, Body&& body) {
  dispatch(body, args.dtype, args.reset, args.h != nullptr);
}

// body(dtype, reset, surrogate, detach_reset tags): the backward kernel's variant
template <class Body> void with_backward_variant(const BackwardArgs& args, Body&& body) {
  dispatch(body, args.dtype, args.reset, args.surrogate, args.detach_reset);
}

// ---- the arithmetic on lanes L, written once for every ISA

// One step: charge (h = v + x), fire (the mask returned: h >= theta), reset v in place.
template <class L, Reset R>
NA_INLINE typename L::Mask integrate_and_fire(typename L::Vec& v, typename L::Vec x, typename L::Vec theta,
                                              typename L::Vec& h) {
  h = L::add(v, x);
  const typename L::Mask fired = L::ge(h, theta);
  const typename L::Vec s = L::one_where(fired);
  v = R == Reset::SUBTRACT ? L::sub(h, L::mul(s, theta)) : L::mul(h, L::sub(L::set1(1.0f), s));
  return fired;
}

// d s / d h at u = h - theta
template <class L, Surrogate SG>
NA_INLINE typename L::Vec surrogate_gradient(const SurrogateParams& params, typename L::Vec u) {
  using Vec = typename L::Vec;
  const Vec one = L::set1(1.0f), alpha = L::set1(params.alpha);
  if constexpr (SG == Surrogate::SIGMOID) {  // alpha sig(alpha u) (1 - sig(alpha u))
    const Vec sig = L::div(one, L::add(one, L::exp(L::neg(L::mul(u, alpha)))));
    return L::mul(L::mul(alpha, sig), L::sub(one, sig));
  } else if constexpr (SG == Surrogate::ATAN) {  // alpha / 2 / (1 + (pi/2 alpha u)^2)
    const Vec w = L::mul(L::set1(params.atan_scale), u);
    return L::div(L::set1(params.half_alpha), L::add(one, L::mul(w, w)));
  } else if constexpr (SG == Surrogate::TRIANGLE) {  // alpha max(0, 1 - alpha |u|); NaN stays NaN, like torch.clamp
    const Vec rest = L::sub(one, L::mul(alpha, L::abs(u))), zero = L::set1(0.0f);
    return L::mul(alpha, L::select(L::lt(rest, zero), zero, rest));
  } else {  // alpha [|u| < 1 / (2 alpha)]
    static_assert(SG == Surrogate::RECTANGLE, "a surrogate without its gradient");
    return L::mul(alpha, L::one_where(L::lt(L::abs(u), L::set1(params.half_width))));
  }
}

// One step back: the grad of h (= grad_x[t], the next grad of v) from h, theta, the grad of the
// spike (grad_spikes[t] * amp) and the grad of v.
template <class L, Reset R, Surrogate SG, bool DETACH>
NA_INLINE typename L::Vec backward_step(const SurrogateParams& params, typename L::Vec h, typename L::Vec theta,
                                        typename L::Vec grad_spike, typename L::Vec grad_v) {
  using Vec = typename L::Vec;
  const Vec u = L::sub(h, theta);
  const Vec sg = surrogate_gradient<L, SG>(params, u);
  if (R == Reset::SUBTRACT) {
    if (!DETACH) grad_spike = L::sub(grad_spike, L::mul(theta, grad_v));
    return L::add(L::mul(grad_spike, sg), grad_v);
  }
  const Vec zero = L::set1(0.0f), not_fired = L::sub(L::set1(1.0f), L::one_where(L::ge(u, zero)));
  // the reset path h * gv only where gv != 0: autograd has no such term where v's gradient is
  // absent, and h = +-inf (which a zero reset turns into NaN) must not make inf * 0 = NaN there
  if (!DETACH) grad_spike = L::select(L::eq(grad_v, zero), grad_spike, L::sub(grad_spike, L::mul(h, grad_v)));
  return L::add(L::mul(grad_spike, sg), L::mul(grad_v, not_fired));
}

// ---- the kernels

void forward_generic(const ForwardArgs& args);
void backward_generic(const BackwardArgs& args);
void forward_avx2(const ForwardArgs& args);
void forward_avx512(const ForwardArgs& args);
void backward_avx2(const BackwardArgs& args);
void backward_avx512(const BackwardArgs& args);

}  // namespace integrate_fire
}  // namespace na
