// The vector forward's tile: W vectors of neurons over all T steps, v and the count in
// registers (t inside), so only x, the spikes (and h) move. A lane's spike is a select between
// two precomputed values, s * amp for s = 0 and s = 1, already in the storage type: no float ->
// 16-bit conversion per step. theta and the two spike values come from the work item's tables
// (thresholds.h); v and the count use integrate_and_fire, the generic forward's update (same bits).
// Io is an ISA's loads and stores for one dtype (forward_avx2.cpp, forward_avx512.cpp):
//   L, T                 the lanes and the storage type
//   Part, all_lanes()    which lanes of a vector hold neurons (AVX-512: a mask; AVX2: always all)
//   load_x(x, part)      x as float32; load(p) / load(p, part) / store(p, part, v) of float32
//   store_counts(p, part, count)
//   SpikeBits<W>         the two spike bit patterns of W vectors: SpikeBits(silent, fired),
//                        store(spikes, fired masks[W], parts[W])
// and the ISA's tiling of a work item (forward_work_item):
//   kTile                vectors per tile
//   kWideTile, wide_tiles(layer)  vectors per wide tile (0: none), taken where wide_tiles says
//   kMaskedTail          the last count % lanes neurons as a masked vector (first_lanes(count)),
//                        else by the generic loops (forward_generic.h)
#pragma once
#include <algorithm>
#include <cstdint>

#include "common/float_convert.h"
#include "integrate_fire/forward_generic.h"
#include "integrate_fire/integrate_fire.h"
#include "integrate_fire/thresholds.h"

namespace na {
namespace integrate_fire {

// the neurons [n, n + W * lanes): theta, silent and fired point at their table entries; the
// last vector's lanes are `last`
template <class Io, Reset R, bool SAVE_H, int W, bool STREAM = false>
NA_INLINE void forward_tile(const ForwardArgs& args, const typename Io::T* x, typename Io::T* spikes,
                            const float* theta, const typename Io::T* silent, const typename Io::T* fired,
                            int64_t n, typename Io::Part last) {
  using L = typename Io::L;
  constexpr int kLanes = L::kWidth;
  const Layer& layer = args.layer;
  typename L::Vec v[W], threshold[W];
  typename L::Count fired_count[W];
  typename Io::Part part[W];
  const typename Io::template SpikeBits<W> spike_bits(silent, fired);
  for (int w = 0; w < W; ++w) {
    part[w] = w == W - 1 ? last : Io::all_lanes();
    threshold[w] = Io::load(theta + kLanes * w);
    v[w] = args.v0 ? Io::load(args.v0 + n + kLanes * w, part[w]) : L::mul(L::set1(args.v_frac), threshold[w]);
    fired_count[w] = L::count_zero();
  }
  for (int64_t t = 0; t < layer.steps; ++t) {
    const typename Io::T* x_t = x + t * layer.x_step + n;
    const int64_t row = t * layer.neurons + n;
    typename L::Mask fired_now[W];
    for (int w = 0; w < W; ++w) {
      typename L::Vec h;
      fired_now[w] = integrate_and_fire<L, R>(v[w], Io::load_x(x_t + kLanes * w, part[w]), threshold[w], h);
      fired_count[w] = L::count_where(fired_count[w], fired_now[w]);
      if (SAVE_H) Io::store(args.h + row + kLanes * w, part[w], h);
    }
    if constexpr (STREAM)
      spike_bits.stream(spikes + row, fired_now);
    else
      spike_bits.store(spikes + row, fired_now, part);
  }
  if (args.counts)
    for (int w = 0; w < W; ++w) Io::store_counts(args.counts + n + kLanes * w, part[w], fired_count[w]);
  if (args.v_final)
    for (int w = 0; w < W; ++w) Io::store(args.v_final + n + kLanes * w, part[w], v[w]);
}

// the tile of W vectors from a work item's neuron j
template <class Io, Reset R, bool SAVE_H, int W, DType D, bool STREAM = false>
NA_INLINE void forward_tile_at(const ForwardArgs& args, const WorkItemSpikeTables<D>& tables, int64_t begin, int64_t j,
                               typename Io::Part last) {
  forward_tile<Io, R, SAVE_H, W, STREAM>(args, static_cast<const StorageType<D>*>(args.x), static_cast<StorageType<D>*>(args.spikes),
                                 tables.theta + j, tables.silent + j, tables.fired + j, begin + j, last);
}

// one work item: wide tiles (where the ISA takes them), tiles, single vectors, then the tail
template <class Io, DType D, Reset R, bool SAVE_H>
NA_INLINE void forward_work_item(const ForwardArgs& args, const WorkItemSpikeTables<D>& tables, const WorkItem& item) {
  constexpr int kLanes = Io::L::kWidth, kTile = Io::kTile, kWideTile = Io::kWideTile;
  const int64_t count = item.size();
  int64_t j = 0;
  if constexpr (Io::kStreams)
    if (args.stream_spikes) {  // whole tiles streamed (rows aligned: see ForwardArgs), the rest as below
      for (; j + kLanes * kTile <= count; j += kLanes * kTile)
        forward_tile_at<Io, R, SAVE_H, kTile, D, true>(args, tables, item.begin, j, Io::all_lanes());
      Io::stream_fence();
    }
  if constexpr (kWideTile > 0)
    if (Io::wide_tiles(args.layer))
      for (; j + kLanes * kWideTile <= count; j += kLanes * kWideTile)
        forward_tile_at<Io, R, SAVE_H, kWideTile>(args, tables, item.begin, j, Io::all_lanes());
  for (; j + kLanes * kTile <= count; j += kLanes * kTile)
    forward_tile_at<Io, R, SAVE_H, kTile>(args, tables, item.begin, j, Io::all_lanes());
  for (; j + kLanes <= count; j += kLanes) forward_tile_at<Io, R, SAVE_H, 1>(args, tables, item.begin, j, Io::all_lanes());
  if (j == count) return;
  if constexpr (Io::kMaskedTail)
    forward_tile_at<Io, R, SAVE_H, 1>(args, tables, item.begin, j, Io::first_lanes(count - j));
  else
    forward_neurons_generic<D, R, SAVE_H>(args, WorkItem{item.begin + j, item.end});
}

// body(WorkItem, State&) over the work items of kWorkItemNeurons covering [0, neurons), as
// common/parallel.h's for_each_work_item but handed out in runs of kForwardRun items as threads
// come free (schedule dynamic): on a shared machine one preempted thread then no longer holds
// back the others' finish; each work item is independent, so the results do not change.
constexpr int64_t kForwardRun = 8;
template <class MakeState, class Body>
void for_each_forward_work_item(int64_t neurons, int threads, MakeState&& make_state, Body&& body) {
  const int64_t items = (neurons + kWorkItemNeurons - 1) / kWorkItemNeurons;
  const int64_t runs = (items + kForwardRun - 1) / kForwardRun;
  if (threads > runs) threads = static_cast<int>(runs > 0 ? runs : 1);
#pragma omp parallel num_threads(threads)
  {
    auto state = make_state();
#pragma omp for schedule(dynamic, 1)
    for (int64_t run = 0; run < runs; ++run)
      for (int64_t item = run * kForwardRun; item < std::min(items, (run + 1) * kForwardRun); ++item)
        body(WorkItem{item * kWorkItemNeurons, std::min(neurons, (item + 1) * kWorkItemNeurons)}, state);
  }
}

// The vector forward over work items, with their spike tables; WorkItems::run<D, R, SAVE_H>(args,
// tables, item) is an ISA's forward_work_item (the function that carries its target attribute).
template <class WorkItems> void forward_by_work_items(const ForwardArgs& args) {
  const Layer& layer = args.layer;
  with_forward_variant(args, [&](auto dtype, auto reset, auto save_h) {
    constexpr DType D = decltype(dtype)::value;
    const SpikeTables<D> shared(layer, true);
    for_each_forward_work_item(
        layer.neurons, layer.threads,
        [&] { return SpikeTables<D>(layer, false); },  // filled per work item where the period is long
        [&](const WorkItem& item, SpikeTables<D>& own) {
          WorkItems::template run<D, decltype(reset)::value, decltype(save_h)::value>(
              args, spike_tables(shared, own, item), item);
        });
  });
}

}  // namespace integrate_fire
}  // namespace na
