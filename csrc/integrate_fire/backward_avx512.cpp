// integrate_fire's AVX-512 backward: backward_step on tiles of W vectors of 16 neurons, the grad
// of v in registers over all steps (t from T-1 down to 0). With recompute, the tile's h of every
// step is first rebuilt by integrate_and_fire into a per-thread scratch of T x 16W floats.
#include <cstdint>
#include <vector>

#include "common/lanes_avx512.h"
#include "common/storage_avx512.h"
#include "integrate_fire/integrate_fire.h"
#include "integrate_fire/thresholds.h"

#ifdef NA_X86_SIMD
namespace na {
namespace integrate_fire {
namespace {

using L = Avx512Lanes;

constexpr int kTile = 2;  // vectors per tile

// per thread: theta and amplitude of a work item's neurons (+ one vector of slack: lanes past
// the end are read), and the recompute scratch
struct BackwardState {
  std::vector<float> theta, amp, h_scratch;
  bool filled = false;
  BackwardState(const BackwardArgs& args)
      : theta(kWorkItemNeurons + 16, 0.0f), amp(kWorkItemNeurons + 16, 0.0f),
        h_scratch(args.h ? 0 : static_cast<size_t>(args.layer.steps * 16 * kTile)) {}
  void fill(const Layer& layer, const WorkItem& item) {
    if (layer.channels > 1 || !filled) {  // one channel: the same tables for every work item
      neuron_thresholds(layer, item.begin, layer.channels > 1 ? item.size() : kWorkItemNeurons, theta.data(), amp.data());
      filled = true;
    }
  }
};

// the neurons [n, n + 16 W); theta and amp point at their table entries; the last vector's lanes are `last`
template <DType D, Reset R, Surrogate SG, bool DETACH, int W>
NA_AVX512 inline void backward_tile(const BackwardArgs& args, const float* theta, const float* amp, int64_t n,
                                    __mmask16 last, float* h_scratch) {
  using S = Avx512Storage<D>;
  const Layer& layer = args.layer;
  const auto* grad_spikes = static_cast<const StorageType<D>*>(args.grad_spikes);
  auto* grad_x = static_cast<StorageType<D>*>(args.grad_x);
  const __m512 zero = _mm512_setzero_ps();
  __m512 threshold[W], amplitude[W], grad_v[W];
  __mmask16 part[W];
  for (int w = 0; w < W; ++w) {
    part[w] = w == W - 1 ? last : static_cast<__mmask16>(0xFFFF);
    threshold[w] = _mm512_loadu_ps(theta + 16 * w);
    amplitude[w] = _mm512_loadu_ps(amp + 16 * w);
    grad_v[w] = args.grad_v ? _mm512_maskz_loadu_ps(part[w], args.grad_v + n + 16 * w) : zero;
  }
  if (!args.h) {  // the forward's update, keeping h
    const auto* x = static_cast<const StorageType<D>*>(args.x);
    __m512 v[W];
    for (int w = 0; w < W; ++w)
      v[w] = args.v0 ? _mm512_maskz_loadu_ps(part[w], args.v0 + n + 16 * w)
                     : _mm512_mul_ps(_mm512_set1_ps(args.v_frac), threshold[w]);
    for (int64_t t = 0; t < layer.steps; ++t)
      for (int w = 0; w < W; ++w) {
        __m512 h;
        integrate_and_fire<L, R>(v[w], S::load(x + t * layer.x_step + n + 16 * w, part[w]), threshold[w], h);
        _mm512_storeu_ps(h_scratch + (t * W + w) * 16, h);
      }
  }
  for (int64_t t = layer.steps - 1; t >= 0; --t) {
    const int64_t row = t * layer.neurons + n;
    for (int w = 0; w < W; ++w) {
      const __m512 h = args.h ? _mm512_maskz_loadu_ps(part[w], args.h + row + 16 * w)
                              : _mm512_loadu_ps(h_scratch + (t * W + w) * 16);
      const __m512 grad_spike =
          grad_spikes ? _mm512_mul_ps(S::load(grad_spikes + row + 16 * w, part[w]), amplitude[w]) : zero;
      const __m512 grad_h =
          backward_step<L, R, SG, DETACH>(args.surrogate_params, h, threshold[w], grad_spike, grad_v[w]);
      if (grad_x) S::store(grad_x + row + 16 * w, part[w], grad_h);
      grad_v[w] = grad_h;
    }
  }
  if (args.grad_v_init)
    for (int w = 0; w < W; ++w) _mm512_mask_storeu_ps(args.grad_v_init + n + 16 * w, part[w], grad_v[w]);
}

template <DType D, Reset R, Surrogate SG, bool DETACH>
NA_AVX512 void backward_work_item(const BackwardArgs& args, const WorkItem& item, BackwardState& state) {
  state.fill(args.layer, item);
  const float* theta = state.theta.data();
  const float* amp = state.amp.data();
  const int64_t count = item.size();
  int64_t j = 0;
  for (; j + 16 * kTile <= count; j += 16 * kTile)
    backward_tile<D, R, SG, DETACH, kTile>(args, theta + j, amp + j, item.begin + j, static_cast<__mmask16>(0xFFFF),
                                           state.h_scratch.data());
  for (; j < count; j += 16)
    backward_tile<D, R, SG, DETACH, 1>(args, theta + j, amp + j, item.begin + j, first_lanes(count - j),
                                       state.h_scratch.data());
}

}  // namespace

void backward_avx512(const BackwardArgs& args) {
  with_backward_variant(args, [&](auto dtype, auto reset, auto surrogate, auto detach) {
    for_each_work_item(
        args.layer.neurons, kWorkItemNeurons, args.layer.threads, [&] { return BackwardState(args); },
        [&](const WorkItem& item, BackwardState& state) {
          backward_work_item<decltype(dtype)::value, decltype(reset)::value, decltype(surrogate)::value,
                             decltype(detach)::value>(args, item, state);
        });
  });
}

}  // namespace integrate_fire
}  // namespace na
#endif
