// The vector backward, written once for every ISA: backward_step (integrate_fire.h) on tiles of W
// vectors of neurons, the grad of v in registers over all steps (t from T-1 down to 0), so only h,
// the grad of the spikes and grad_x move. With recompute, the tile's h of every step is first
// rebuilt by integrate_and_fire, the forward's update, into a per-thread scratch of T x the
// tile's lanes floats. Io is an ISA's loads, stores and tiling for one dtype D (backward_avx2.cpp,
// backward_avx512.cpp):
//   L, Part, all_lanes()   the lanes, and which lanes of a vector hold neurons
//   load(p) / load(p, part) / store(p, part, v) of float32; load_x(p, part) / store_x(p, part, v)
//                          of storage D as float32
//   kTile                  vectors per tile
//   kMaskedTail            the last count % lanes neurons as a masked vector (first_lanes(count)),
//                          else by the generic loops (backward_generic.h)
#pragma once
#include <cstdint>
#include <vector>

#include "integrate_fire/backward_generic.h"
#include "integrate_fire/integrate_fire.h"
#include "integrate_fire/thresholds.h"

namespace na {
namespace integrate_fire {

// Vectors per tile: one cache line of each of the T rows a tile walks (for float32, 2 ymm or 1 zmm;
// for 16-bit storage, 4 or 2). Rows N apart fall in the same cache sets, and a tile touches 2-3 of
// them per step (the grad of the spikes, grad_x, x): wider tiles than a line measured slower.
template <class L, DType D> constexpr int backward_tile_vectors() {
  constexpr int vectors = 64 / (L::kWidth * static_cast<int>(sizeof(StorageType<D>)));
  return vectors > 1 ? vectors : 1;
}

// per thread: theta and amplitude of a work item's neurons (+ one vector of slack: lanes past
// the end are read), and the recompute scratch (T x a tile, at most T x the layer's vectors)
struct BackwardState {
  std::vector<float> theta, amp, h_scratch;
  bool filled = false;
  BackwardState(const BackwardArgs& args, int lanes, int tile_lanes)
      : theta(kWorkItemNeurons + lanes, 0.0f), amp(kWorkItemNeurons + lanes, 0.0f),
        h_scratch(recompute_scratch_floats(args, tile_lanes, lanes)) {}
  void fill(const Layer& layer, const WorkItem& item) {
    if (layer.channels > 1 || !filled) {  // one channel: the same tables for every work item
      neuron_thresholds(layer, item.begin, layer.channels > 1 ? item.size() : kWorkItemNeurons, theta.data(), amp.data());
      filled = true;
    }
  }
};

// the neurons [n, n + W lanes); theta and amp point at their table entries; the last vector's lanes are `last`
template <class Io, DType D, Reset R, Surrogate SG, bool DETACH, int W>
NA_INLINE void backward_tile(const BackwardArgs& args, const float* theta, const float* amp, int64_t n,
                             typename Io::Part last, float* h_scratch) {
  using L = typename Io::L;
  using Vec = typename L::Vec;
  constexpr int kLanes = L::kWidth;
  // the tile walks T rows N apart, backwards in t: more streams than the hardware prefetchers
  // follow, so each row's data two tiles ahead is asked for here
  constexpr int64_t kPrefetchLanes = 2 * W * kLanes;
  const Layer& layer = args.layer;
  const auto* grad_spikes = static_cast<const StorageType<D>*>(args.grad_spikes);
  auto* grad_x = static_cast<StorageType<D>*>(args.grad_x);
  const Vec zero = L::zero();
  Vec threshold[W], amplitude[W], grad_v[W];
  typename Io::Part part[W];
  for (int w = 0; w < W; ++w) {
    part[w] = w == W - 1 ? last : Io::all_lanes();
    threshold[w] = Io::load(theta + kLanes * w);
    amplitude[w] = Io::load(amp + kLanes * w);
    grad_v[w] = args.grad_v ? Io::load(args.grad_v + n + kLanes * w, part[w]) : zero;
  }
  if (!args.h) {  // the forward's update, keeping h
    const auto* x = static_cast<const StorageType<D>*>(args.x);
    Vec v[W];
    for (int w = 0; w < W; ++w)
      v[w] = args.v0 ? Io::load(args.v0 + n + kLanes * w, part[w]) : L::mul(L::set1(args.v_frac), threshold[w]);
    for (int64_t t = 0; t < layer.steps; ++t)
      for (int w = 0; w < W; ++w) {
        Vec h;
        if (w == 0) __builtin_prefetch(x + t * layer.x_step + n + kPrefetchLanes, 0, 3);
        integrate_and_fire<L, R>(v[w], Io::load_x(x + t * layer.x_step + n + kLanes * w, part[w]), threshold[w], h);
        Io::store(h_scratch + (t * W + w) * kLanes, Io::all_lanes(), h);
      }
  }
  for (int64_t t = layer.steps - 1; t >= 0; --t) {
    const int64_t row = t * layer.neurons + n;
    if (grad_spikes) __builtin_prefetch(grad_spikes + row + kPrefetchLanes, 0, 3);
    if (grad_x) __builtin_prefetch(grad_x + row + kPrefetchLanes, 1, 3);
    for (int w = 0; w < W; ++w) {
      const Vec h = args.h ? Io::load(args.h + row + kLanes * w, part[w]) : Io::load(h_scratch + (t * W + w) * kLanes);
      const Vec grad_spike = grad_spikes ? L::mul(Io::load_x(grad_spikes + row + kLanes * w, part[w]), amplitude[w]) : zero;
      const Vec grad_h = backward_step<L, R, SG, DETACH>(args.surrogate_params, h, threshold[w], grad_spike, grad_v[w]);
      if (grad_x) Io::store_x(grad_x + row + kLanes * w, part[w], grad_h);
      grad_v[w] = grad_h;
    }
  }
  if (args.grad_v_init)
    for (int w = 0; w < W; ++w) Io::store(args.grad_v_init + n + kLanes * w, part[w], grad_v[w]);
}

// one work item: tiles of Io::kTile vectors, then single vectors, then the tail (masked or generic)
template <class Io, DType D, Reset R, Surrogate SG, bool DETACH>
NA_INLINE void backward_work_item(const BackwardArgs& args, const WorkItem& item, BackwardState& state) {
  constexpr int kLanes = Io::L::kWidth, kTile = Io::kTile;
  state.fill(args.layer, item);
  const float* theta = state.theta.data();
  const float* amp = state.amp.data();
  float* h_scratch = state.h_scratch.data();
  const int64_t count = item.size();
  int64_t j = 0;
  for (; j + kLanes * kTile <= count; j += kLanes * kTile)
    backward_tile<Io, D, R, SG, DETACH, kTile>(args, theta + j, amp + j, item.begin + j, Io::all_lanes(), h_scratch);
  for (; j + kLanes <= count; j += kLanes)
    backward_tile<Io, D, R, SG, DETACH, 1>(args, theta + j, amp + j, item.begin + j, Io::all_lanes(), h_scratch);
  if (j == count) return;
  if constexpr (Io::kMaskedTail)
    backward_tile<Io, D, R, SG, DETACH, 1>(args, theta + j, amp + j, item.begin + j, Io::first_lanes(count - j),
                                           h_scratch);
  else
    backward_neurons_generic<D, R, SG, DETACH>(args, WorkItem{item.begin + j, item.end}, h_scratch);
}

// The vector backward over work items; Kernel::run<D, R, SG, DETACH>(args, item, state) is an ISA's
// backward_work_item (the function that carries its target attribute), Kernel::kLanes and
// Kernel::kTileLanes its vector and tile widths.
template <class Kernel> void backward_by_work_items(const BackwardArgs& args) {
  with_backward_variant(args, [&](auto dtype, auto reset, auto surrogate, auto detach) {
    for_each_work_item(
        args.layer.neurons, kWorkItemNeurons, args.layer.threads,
        [&] { return BackwardState(args, Kernel::kLanes, Kernel::kTileLanes); },
        [&](const WorkItem& item, BackwardState& state) {
          Kernel::template run<decltype(dtype)::value, decltype(reset)::value, decltype(surrogate)::value,
                               decltype(detach)::value>(args, item, state);
        });
  });
}

}  // namespace integrate_fire
}  // namespace na
