// The generic forward of a run of neurons: the work item's state in arrays, t outside, the
// neurons inside, in loops the compiler vectorises. The vector forwards use it for the
// neurons left over after their tiles.
#pragma once
#include <cstdint>

#include "common/float_convert.h"
#include "common/lanes.h"
#include "integrate_fire/integrate_fire.h"
#include "integrate_fire/thresholds.h"

namespace na {
namespace integrate_fire {

// the neurons [neurons.begin, neurons.end), at most kWorkItemNeurons
template <DType D, Reset R, bool SAVE_H> void forward_neurons_generic(const ForwardArgs& args, const WorkItem& neurons) {
  using S = Storage<D>;
  const Layer& layer = args.layer;
  const auto* x = static_cast<const StorageType<D>*>(args.x);
  auto* spikes = static_cast<StorageType<D>*>(args.spikes);
  float* h_out = args.h;
  const int64_t begin = neurons.begin, count = neurons.size();
  float v[kWorkItemNeurons], theta[kWorkItemNeurons], amp[kWorkItemNeurons];
  int32_t fired_count[kWorkItemNeurons];
  neuron_thresholds(layer, begin, count, theta, amp);
  for (int64_t j = 0; j < count; ++j) {
    v[j] = args.v0 ? args.v0[begin + j] : args.v_frac * theta[j];
    fired_count[j] = 0;
  }
  for (int64_t t = 0; t < layer.steps; ++t) {
    const int64_t row = t * layer.neurons + begin;
    const StorageType<D>* x_t = x + t * layer.x_step + begin;
    for (int64_t j = 0; j < count; ++j) {
      float h;
      const bool fired = integrate_and_fire<ScalarLanes, R>(v[j], S::load(x_t, j), theta[j], h);
      S::store(spikes, row + j, ScalarLanes::one_where(fired) * amp[j]);
      fired_count[j] = ScalarLanes::count_where(fired_count[j], fired);
      if (SAVE_H) h_out[row + j] = h;
    }
  }
  if (args.counts)
    for (int64_t j = 0; j < count; ++j) args.counts[begin + j] = fired_count[j];
  if (args.v_final)
    for (int64_t j = 0; j < count; ++j) args.v_final[begin + j] = v[j];
}

}  // namespace integrate_fire
}  // namespace na
