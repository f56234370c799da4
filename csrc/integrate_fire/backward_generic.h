// The generic backward of a run of neurons: the state in arrays, t outside, the neurons inside, in
// loops the compiler vectorises. The AVX2 backward uses it for the neurons left over after its
// vectors.
#pragma once
#include <algorithm>
#include <cstdint>

#include "common/float_convert.h"
#include "common/lanes.h"
#include "integrate_fire/integrate_fire.h"
#include "integrate_fire/thresholds.h"

namespace na {
namespace integrate_fire {

// recompute: h of every step of the neurons, [T, count], into `h_steps` by the forward's update
template <DType D, Reset R>
void recompute_h_generic(const BackwardArgs& args, const WorkItem& neurons, const float* theta, float* h_steps) {
  using L = ScalarLanes;
  const Layer& layer = args.layer;
  const auto* x = static_cast<const StorageType<D>*>(args.x);
  const int64_t begin = neurons.begin, count = neurons.size();
  float v[kWorkItemNeurons];
  for (int64_t j = 0; j < count; ++j) v[j] = args.v0 ? args.v0[begin + j] : args.v_frac * theta[j];
  for (int64_t t = 0; t < layer.steps; ++t) {
    const StorageType<D>* x_t = x + t * layer.x_step + begin;
    float* h_t = h_steps + t * count;
    for (int64_t j = 0; j < count; ++j) {
      float h;
      integrate_and_fire<L, R>(v[j], Storage<D>::load(x_t, j), theta[j], h);
      h_t[j] = h;
    }
  }
}

// the neurons [neurons.begin, neurons.end), at most kWorkItemNeurons; with recompute, h_scratch
// holds T x their count floats
template <DType D, Reset R, Surrogate SG, bool DETACH>
void backward_neurons_generic(const BackwardArgs& args, const WorkItem& neurons, float* h_scratch) {
  using L = ScalarLanes;
  using S = Storage<D>;
  const Layer& layer = args.layer;
  const auto* grad_spikes = static_cast<const StorageType<D>*>(args.grad_spikes);
  auto* grad_x = static_cast<StorageType<D>*>(args.grad_x);
  const SurrogateParams params = args.surrogate_params;  // a local: stores to grad_x cannot change it
  const int64_t begin = neurons.begin, count = neurons.size();
  float grad_v[kWorkItemNeurons], theta[kWorkItemNeurons], amp[kWorkItemNeurons];
  neuron_thresholds(layer, begin, count, theta, amp);
  if (args.x) recompute_h_generic<D, R>(args, neurons, theta, h_scratch);
  for (int64_t j = 0; j < count; ++j) grad_v[j] = args.grad_v ? args.grad_v[begin + j] : 0.0f;
  for (int64_t t = layer.steps - 1; t >= 0; --t) {
    const int64_t row = t * layer.neurons + begin;
    const float* h_t = args.x ? h_scratch + t * count : args.h + row;
    for (int64_t j = 0; j < count; ++j) {
      const float grad_spike = grad_spikes ? S::load(grad_spikes, row + j) * amp[j] : 0.0f;
      const float grad_h = backward_step<L, R, SG, DETACH>(params, h_t[j], theta[j], grad_spike, grad_v[j]);
      if (grad_x) S::store(grad_x, row + j, grad_h);
      grad_v[j] = grad_h;
    }
  }
  if (args.grad_v_init)
    for (int64_t j = 0; j < count; ++j) args.grad_v_init[begin + j] = grad_v[j];
}

// floats of recompute scratch per thread: T x the neurons a pass over all T holds at once, at most
// `per_pass` and never more than the layer's neurons rounded up to `granule` (a vector); none with
// h saved. (T x 1024 whatever N would cost gigabytes at T = 10^6, N = 2.)
inline size_t recompute_scratch_floats(const BackwardArgs& args, int64_t per_pass, int64_t granule = 1) {
  if (args.h) return 0;
  const int64_t neurons = (args.layer.neurons + granule - 1) / granule * granule;
  return static_cast<size_t>(args.layer.steps * std::min(per_pass, neurons));
}

}  // namespace integrate_fire
}  // namespace na
