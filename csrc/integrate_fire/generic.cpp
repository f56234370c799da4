// integrate_fire's generic kernels: per work item, the state of its neurons in arrays, t
// outside and the neurons inside, so the compiler vectorises the inner loops.
#include <cstdint>
#include <vector>

#include "integrate_fire/backward_generic.h"
#include "integrate_fire/forward_generic.h"
#include "integrate_fire/integrate_fire.h"

namespace na {
namespace integrate_fire {

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
        [&] { return std::vector<float>(recompute_scratch_floats(args, kWorkItemNeurons)); },
        [&](const WorkItem& item, std::vector<float>& h_scratch) {
          backward_neurons_generic<decltype(dtype)::value, decltype(reset)::value, decltype(surrogate)::value,
                                   decltype(detach)::value>(args, item, h_scratch.data());
        });
  });
}

}  // namespace integrate_fire
}  // namespace na
