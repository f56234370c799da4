// noisy_quant's AVX-512 kernels: sixteen lanes at a time, the noise of 32 offsets made in
// registers (noise/noise.h) instead of a buffer; the tail of a channel run under a lane mask.
#include <cstdint>

#include "common/lanes_avx512.h"
#include "common/storage_avx512.h"
#include "noise/noise.h"
#include "noisy_quant/noisy_quant.h"

#ifdef NA_X86_SIMD
namespace na {
namespace noisy_quant {
namespace {

using L = Avx512Lanes;

NA_AVX512 inline __mmask16 lanes_left(int64_t count) { return count <= 0 ? 0 : first_lanes(count); }

template <DType D, Noise NOISE>
NA_AVX512 void forward_work_item(const ForwardArgs& args, const PhiloxKeysAvx512& keys, WorkItem item) {
  using S = Avx512Storage<D>;
  const Quantizer& q = args.quantizer;
  const auto* x = static_cast<const StorageType<D>*>(args.x);
  auto* y = static_cast<StorageType<D>*>(args.y);
  for (const ChannelRun& run : ChannelRuns(q, item)) {
    const ChannelConstants<L> constants(q, run.channel);
    for (int64_t offset = run.begin; offset < run.end; offset += 32) {
      __m512 eps[2];
      scaled_noise32_avx512<NOISE>(keys, static_cast<uint64_t>(offset), constants.scale, eps);
      for (int half = 0; half < 2; ++half) {
        const int64_t at = offset + 16 * half;
        const __mmask16 lanes = lanes_left(run.end - at);
        const __m512 q_raw = quantize_raw<L, NOISE>(S::load(x + at, lanes), eps[half], constants);
        S::store(y + at, lanes, dequantize<L>(q_raw, constants));
      }
    }
  }
}

NA_AVX512 inline double sum_as_double(__m512 values) {
  return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(values)),
                                            _mm512_cvtps_pd(_mm512_extractf32x8_ps(values, 1))));
}

// Adds the work item's grad_lam contribution per channel into `grad_lam` (unless null): float
// vectors over 256 elements, then float64.
template <DType D, Noise NOISE>
NA_AVX512 void backward_work_item(const BackwardArgs& args, const PhiloxKeysAvx512& keys, WorkItem item,
                                  double* grad_lam) {
  using S = Avx512Storage<D>;
  const Quantizer& q = args.quantizer;
  const auto* grad_y = static_cast<const StorageType<D>*>(args.grad_y);
  const auto* x = static_cast<const StorageType<D>*>(args.x);
  auto* grad_x = static_cast<StorageType<D>*>(args.grad_x);
  const bool with_grad_lam = grad_lam != nullptr;
  for (const ChannelRun& run : ChannelRuns(q, item)) {
    const ChannelConstants<L> constants(q, run.channel);
    __m512 batch_sum = _mm512_setzero_ps();
    double sum = 0.0;
    for (int64_t offset = run.begin; offset < run.end; offset += 32) {
      __m512 eps[2];
      scaled_noise32_avx512<NOISE>(keys, static_cast<uint64_t>(offset), constants.scale, eps);
      for (int half = 0; half < 2; ++half) {
        const int64_t at = offset + 16 * half;
        const __mmask16 lanes = lanes_left(run.end - at);
        const __m512 x_lanes = S::load(x + at, lanes);
        const __m512 q_raw = quantize_raw<L, NOISE>(x_lanes, eps[half], constants);
        const __mmask16 inside = passes<L>(q_raw, constants);
        S::copy_or_zero(grad_y + at, grad_x + at, lanes, inside);  // grad_y or zero, as stored bits
        if (with_grad_lam) {
          const __m512 gradient = lam_gradient<L>(q_raw, x_lanes, inside, constants);
          batch_sum = _mm512_add_ps(batch_sum, _mm512_maskz_mul_ps(lanes, S::load(grad_y + at, lanes), gradient));
        }
      }
      if (with_grad_lam && ((offset - run.begin) & 255) == 224) {
        sum += sum_as_double(batch_sum);
        batch_sum = _mm512_setzero_ps();
      }
    }
    if (with_grad_lam) grad_lam[run.channel] += sum + sum_as_double(batch_sum);
  }
}

}  // namespace

void forward_avx512(const ForwardArgs& args) {
  const Quantizer& q = args.quantizer;
  with_quantizer_variant(q, [&](auto dtype, auto noise) {
    for_each_work_item(
        q.numel, kWorkItemElements, q.threads, [&] { return philox_keys_avx512(q.seed); },
        [&](const WorkItem& item, const PhiloxKeysAvx512& keys) {
          forward_work_item<decltype(dtype)::value, decltype(noise)::value>(args, keys, item);
        });
  });
}

void backward_avx512(const BackwardArgs& args) {
  const Quantizer& q = args.quantizer;
  struct PerThread {
    PhiloxKeysAvx512 keys;
    double* grad_lam;
  };
  with_quantizer_variant(q, [&](auto dtype, auto noise) {
    for_each_work_item(
        q.numel, kWorkItemElements, q.threads,
        [&] {
          return PerThread{philox_keys_avx512(q.seed),
                           args.grad_lam_partial ? args.grad_lam_partial + thread_index() * q.channels : nullptr};
        },
        [&](const WorkItem& item, const PerThread& state) {
          backward_work_item<decltype(dtype)::value, decltype(noise)::value>(args, state.keys, item, state.grad_lam);
        });
  });
}

}  // namespace noisy_quant
}  // namespace na
#endif
