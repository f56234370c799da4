// Per-neuron tables of a work item's thresholds (and spike amplitudes or spike bits), built
// from the per-channel values: neuron n is in channel (n / channel_stride) % channels.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/float_convert.h"
#include "integrate_fire/integrate_fire.h"

namespace na {
namespace integrate_fire {

// out[j] = per_channel[channel of neuron begin + j] for j < count, written as runs of equal
// channel (or, for channel_stride 1, as copies of the channel table)
template <class T>
void fill_by_channel(const T* per_channel, const Layer& layer, int64_t begin, int64_t count, T* out) {
  const int64_t stride = layer.channel_stride, channels = layer.channels;
  if (channels == 1) {
    std::fill_n(out, count, per_channel[0]);
    return;
  }
  int64_t channel = (begin / stride) % channels, run = stride - begin % stride;
  if (stride == 1) {
    for (int64_t j = 0; j < count; channel = 0) {
      const int64_t copied = std::min(channels - channel, count - j);
      std::copy_n(per_channel + channel, copied, out + j);
      j += copied;
    }
    return;
  }
  for (int64_t j = 0; j < count; run = stride, channel = channel + 1 == channels ? 0 : channel + 1) {
    const int64_t filled = std::min(run, count - j);
    std::fill_n(out + j, filled, per_channel[channel]);
    j += filled;
  }
}

// theta and the spike amplitude of the neurons [begin, begin + count)
inline void neuron_thresholds(const Layer& layer, int64_t begin, int64_t count, float* theta, float* amp) {
  fill_by_channel(layer.theta, layer, begin, count, theta);
  for (int64_t j = 0; j < count; ++j) amp[j] = layer.amp_is_theta ? theta[j] : layer.amp;
}

// Per neuron: theta and the spike (in the storage type) for s = 0 and s = 1, the generic
// forward's s * amp, for the vector forwards, which select spikes as bits. The channel pattern
// repeats every channels * channel_stride neurons (every neuron for one channel): where that
// period is short, one table of a period and a work item, filled once, serves every work item
// at an offset; otherwise each thread fills its own work item's worth per work item.
template <DType D> class SpikeTables {
 public:
  using T = StorageType<D>;
  static constexpr int64_t kMaxPeriod = 1 << 15;

  // shareable: fill the periodic table where the period is short (else fill() per work item)
  SpikeTables(const Layer& layer, bool shareable)
      : layer_(layer), silent_per_channel_(layer.channels), fired_per_channel_(layer.channels) {
    for (int64_t c = 0; c < layer.channels; ++c) {
      Storage<D>::store(silent_per_channel_.data(), c, 0.0f * layer.amplitude(c));
      Storage<D>::store(fired_per_channel_.data(), c, 1.0f * layer.amplitude(c));
    }
    const int64_t period = layer.channels == 1 ? 1 : layer.channels * layer.channel_stride;
    if (shareable && period <= kMaxPeriod && period <= layer.neurons) {
      period_ = period;
      fill(0, period + kWorkItemNeurons);
    }
  }
  bool periodic() const { return period_ > 0; }
  // where the work item from neuron `begin` starts in the tables
  int64_t offset(int64_t begin) const { return periodic() ? begin % period_ : 0; }
  // the tables of neurons [begin, begin + count), from index 0
  void fill(int64_t begin, int64_t count) {
    resize(count + 16);  // slack: lanes past a work item's end are loaded, never used
    fill_by_channel(layer_.theta, layer_, begin, count, theta.data());
    fill_by_channel(silent_per_channel_.data(), layer_, begin, count, silent.data());
    fill_by_channel(fired_per_channel_.data(), layer_, begin, count, fired.data());
  }
  std::vector<float> theta;
  std::vector<T> silent, fired;  // the stored spike for s = 0 and s = 1

 private:
  void resize(int64_t size) {
    if (static_cast<int64_t>(theta.size()) >= size) return;
    theta.resize(size);
    silent.resize(size);
    fired.resize(size);
  }
  const Layer& layer_;
  std::vector<T> silent_per_channel_, fired_per_channel_;
  int64_t period_ = 0;
};

// theta and the two spike values of a work item's neurons, from index 0
template <DType D> struct WorkItemSpikeTables {
  const float* theta;
  const StorageType<D>*silent, *fired;
};

// from the shared periodic tables, or from the thread's own, filled for this work item
template <DType D>
WorkItemSpikeTables<D> spike_tables(const SpikeTables<D>& shared, SpikeTables<D>& own, const WorkItem& item) {
  if (!shared.periodic()) own.fill(item.begin, item.size());
  const SpikeTables<D>& tables = shared.periodic() ? shared : own;
  const int64_t at = tables.offset(item.begin);
  return {tables.theta.data() + at, tables.silent.data() + at, tables.fired.data() + at};
}

}  // namespace integrate_fire
}  // namespace na
