// noisy_quant's generic kernels: per channel run, the noise of kNoiseBatch elements made
// together into a buffer (Philox words by AVX2 or AVX-512 where the CPU has them), then
// loops over the batch that the compiler vectorises (compiled for AVX2 and the baseline).
#include <algorithm>
#include <cstdint>

#include "common/float_convert.h"
#include "common/lanes.h"
#include "noise/noise.h"
#include "noisy_quant/noisy_quant.h"

namespace na {
namespace noisy_quant {
namespace {

using L = ScalarLanes;

template <DType D, Noise NOISE>
NA_TARGET_CLONES void forward_work_item(const ForwardArgs& args, WorkItem item) {
  using S = Storage<D>;
  const Quantizer& q = args.quantizer;
  const auto* x = static_cast<const StorageType<D>*>(args.x);
  auto* y = static_cast<StorageType<D>*>(args.y);
  for (const ChannelRun& run : ChannelRuns(q, item)) {
    const ChannelConstants<L> constants(q, run.channel);
    float eps[kNoiseBatch];
    for (int64_t batch = run.begin; batch < run.end; batch += kNoiseBatch) {
      const int64_t count = std::min(kNoiseBatch, run.end - batch);
      if (NOISE != Noise::NONE) scaled_noise_batch(NOISE, q.seed, q.scale, static_cast<uint64_t>(batch), count, eps);
      for (int64_t j = 0; j < count; ++j) {
        const float q_raw = quantize_raw<L, NOISE>(S::load(x, batch + j), eps[j], constants);
        S::store(y, batch + j, dequantize<L>(q_raw, constants));
      }
    }
  }
}

// Returns the work item's grad_lam contribution per channel into `grad_lam` (unless null):
// float sums per batch (vectorised, reassociated), float64 across batches.
template <DType D, Noise NOISE>
NA_TARGET_CLONES void backward_work_item(const BackwardArgs& args, WorkItem item, double* grad_lam) {
  using S = Storage<D>;
  const Quantizer& q = args.quantizer;
  const auto* grad_y = static_cast<const StorageType<D>*>(args.grad_y);
  const auto* x = static_cast<const StorageType<D>*>(args.x);
  auto* grad_x = static_cast<StorageType<D>*>(args.grad_x);
  for (const ChannelRun& run : ChannelRuns(q, item)) {
    const ChannelConstants<L> constants(q, run.channel);
    float eps[kNoiseBatch], contribution[kNoiseBatch];
    double sum = 0.0;
    for (int64_t batch = run.begin; batch < run.end; batch += kNoiseBatch) {
      const int64_t count = std::min(kNoiseBatch, run.end - batch);
      if (NOISE != Noise::NONE) scaled_noise_batch(NOISE, q.seed, q.scale, static_cast<uint64_t>(batch), count, eps);
      for (int64_t j = 0; j < count; ++j) {  // branch-free so it vectorises
        const float x_j = S::load(x, batch + j);
        const float q_raw = quantize_raw<L, NOISE>(x_j, eps[j], constants);
        const bool inside = passes<L>(q_raw, constants);
        // grad_y or zero, as stored bits: no float -> 16-bit conversion needed
        grad_x[batch + j] = inside ? grad_y[batch + j] : StorageType<D>(0);
        contribution[j] = S::load(grad_y, batch + j) * lam_gradient<L>(q_raw, x_j, inside, constants);
      }
      if (grad_lam) {
        float batch_sum = 0.0f;
#pragma omp simd reduction(+ : batch_sum)
        for (int64_t j = 0; j < count; ++j) batch_sum += contribution[j];
        sum += static_cast<double>(batch_sum);
      }
    }
    if (grad_lam) grad_lam[run.channel] += sum;
  }
}

}  // namespace

void forward_generic(const ForwardArgs& args) {
  const Quantizer& q = args.quantizer;
  with_quantizer_variant(q, [&](auto dtype, auto noise) {
    for_each_work_item(q.numel, kWorkItemElements, q.threads, [&](const WorkItem& item) {
      forward_work_item<decltype(dtype)::value, decltype(noise)::value>(args, item);
    });
  });
}

void backward_generic(const BackwardArgs& args) {
  const Quantizer& q = args.quantizer;
  with_quantizer_variant(q, [&](auto dtype, auto noise) {
    for_each_work_item(
        q.numel, kWorkItemElements, q.threads,
        [&] { return args.grad_lam_partial ? args.grad_lam_partial + thread_index() * q.channels : nullptr; },
        [&](const WorkItem& item, double* grad_lam) {
          backward_work_item<decltype(dtype)::value, decltype(noise)::value>(args, item, grad_lam);
        });
  });
}

}  // namespace noisy_quant
}  // namespace na
