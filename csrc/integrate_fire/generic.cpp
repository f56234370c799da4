// integrate_fire's generic kernels: per work item, the state of its neurons in arrays, t
// outside and the neurons inside, so the compiler vectorises the inner loops.
#include <cstdint>
#include <vector>

#include "common/float_convert.h"
#include "common/lanes.h"
#include "integrate_fire/forward_generic.h"
#include "integrate_fire/integrate_fire.h"
#include "integrate_fire/thresholds.h"

namespace na {
namespace integrate_fire {
namespace {

using L = ScalarLanes;

// recompute: the work item's h of every step, [T, count], into `h_steps` by the forward's update
template <DType D, Reset R>
void recompute_h(const BackwardArgs& args, const WorkItem& item, const float* theta, float* h_steps) {
  const Layer& layer = args.layer;
  const auto* x = static_cast<const StorageType<D>*>(args.x);
  const int64_t begin = item.begin, count = item.size();
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

template <DType D, Reset R, Surrogate SG, bool DETACH>
void backward_work_item(const BackwardArgs& args, const WorkItem& item, std::vector<float>& h_scratch) {
  using S = Storage<D>;
  const Layer& layer = args.layer;
  const auto* grad_spikes = static_cast<const StorageType<D>*>(args.grad_spikes);
  auto* grad_x = static_cast<StorageType<D>*>(args.grad_x);
  const SurrogateParams params = args.surrogate_params;  // a local: stores to grad_x cannot change it
  const int64_t begin = item.begin, count = item.size();
  float grad_v[kWorkItemNeurons], theta[kWorkItemNeurons], amp[kWorkItemNeurons];
  neuron_thresholds(layer, begin, count, theta, amp);
  if (args.x) recompute_h<D, R>(args, item, theta, h_scratch.data());
  for (int64_t j = 0; j < count; ++j) grad_v[j] = args.grad_v ? args.grad_v[begin + j] : 0.0f;
  for (int64_t t = layer.steps - 1; t >= 0; --t) {
    const int64_t row = t * layer.neurons + begin;
    const float* h_t = args.x ? h_scratch.data() + t * count : args.h + row;
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

}  // namespace

void forward_generic(const ForwardArgs& args) {
  const Layer& layer = args.layer;
  with_forward_variant(args, [&](auto dtype, auto reset, auto save_h) {
    for_each_work_item(layer.neurons, kWorkItemNeurons, layer.threads, [&](const WorkItem& item) {
      forward_neurons_generic<decltype(dtype)::value, decltype(reset)::value, decltype(save_h)::value>(args, item);
    });
  });
}

void backward_generic(const BackwardArgs& args) {
  const Layer& layer = args.layer;
  with_backward_variant(args, [&](auto dtype, auto reset, auto surrogate, auto detach) {
    for_each_work_item(
        layer.neurons, kWorkItemNeurons, layer.threads,
        // recompute: the work item's h of every step stays in this thread's cache-sized scratch
        [&] { return std::vector<float>(args.x ? static_cast<size_t>(layer.steps * kWorkItemNeurons) : 0); },
        [&](const WorkItem& item, std::vector<float>& h_scratch) {
          backward_work_item<decltype(dtype)::value, decltype(reset)::value, decltype(surrogate)::value,
                             decltype(detach)::value>(args, item, h_scratch);
        });
  });
}

}  // namespace integrate_fire
}  // namespace na
