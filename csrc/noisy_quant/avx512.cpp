// noisy_quant's AVX-512 kernels: sixteen lanes at a time, the noise of whole Philox blocks made
// in registers (noise/noise.h) instead of a buffer: 128 elements (32 blocks) at a time, then
// 32. One driver walks the channel runs from the block boundary at or before each run's start
// and hands each vector of sixteen, with the mask of its lanes inside the run, to the forward
// or backward body.
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

// lanes [from, to) of sixteen, from and to clamped to [0, 16]
NA_AVX512 inline __mmask16 lanes_between(int64_t from, int64_t to) {
  const __mmask16 below_to = to <= 0 ? 0 : first_lanes(to);
  const __mmask16 below_from = from <= 0 ? 0 : first_lanes(from);
  return static_cast<__mmask16>(below_to & ~below_from);
}

// body.run_begin(run), body(at, lanes, eps, constants) for each vector, body.run_end(run)
template <Noise NOISE, class Body>
NA_AVX512 inline void drive(const Quantizer& q, const PhiloxKeysAvx512& keys, WorkItem item, Body& body) {
  for (const ChannelRun& run : ChannelRuns(q, item)) {
    const ChannelConstants<L> constants(q, run.channel);
    body.run_begin();
    int64_t offset = run.begin & ~static_cast<int64_t>(3);  // the block of run.begin
    for (; offset + 128 <= run.end; offset += 128) {
      __m512 eps[8];
      scaled_noise_avx512<NOISE, 4>(keys, static_cast<uint64_t>(offset), constants.scale, eps);
      for (int v = 0; v < 8; ++v) {
        const int64_t at = offset + 16 * v;
        body(at, lanes_between(run.begin - at, 16), eps[v], constants);
      }
    }
    for (; offset < run.end; offset += 32) {
      __m512 eps[2];
      scaled_noise_avx512<NOISE, 1>(keys, static_cast<uint64_t>(offset), constants.scale, eps);
      for (int v = 0; v < 2; ++v) {
        const int64_t at = offset + 16 * v;
        body(at, lanes_between(run.begin - at, run.end - at), eps[v], constants);
      }
    }
    body.run_end(run);
  }
}

template <DType D, Noise NOISE> struct ForwardBody {
  using S = Avx512Storage<D>;
  const StorageType<D>* x;
  StorageType<D>* y;
  NA_AVX512 void run_begin() {}
  NA_AVX512 void operator()(int64_t at, __mmask16 lanes, __m512 eps, const ChannelConstants<L>& constants) {
    const __m512 q_raw = quantize_raw<L, NOISE>(S::load(x + at, lanes), eps, constants);
    S::store(y + at, lanes, dequantize<L>(q_raw, constants));
  }
  NA_AVX512 void run_end(const ChannelRun&) {}
};

NA_AVX512 inline double sum_as_double(__m512 values) {
  return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(values)),
                                            _mm512_cvtps_pd(_mm512_extractf32x8_ps(values, 1))));
}

// Adds the work item's grad_lam contribution per channel into `grad_lam` (unless null): float
// vectors over 256 elements (sixteen vectors), then float64.
template <DType D, Noise NOISE> struct BackwardBody {
  using S = Avx512Storage<D>;
  const StorageType<D>* grad_y;
  const StorageType<D>* x;
  StorageType<D>* grad_x;
  double* grad_lam;
  __m512 batch_sum;
  double sum;
  int vectors;
  NA_AVX512 void run_begin() {
    batch_sum = _mm512_setzero_ps();
    sum = 0.0;
    vectors = 0;
  }
  NA_AVX512 void operator()(int64_t at, __mmask16 lanes, __m512 eps, const ChannelConstants<L>& constants) {
    const __m512 x_lanes = S::load(x + at, lanes);
    const __m512 q_raw = quantize_raw<L, NOISE>(x_lanes, eps, constants);
    const __mmask16 inside = passes<L>(q_raw, constants);
    S::copy_or_zero(grad_y + at, grad_x + at, lanes, inside);  // grad_y or zero, as stored bits
    if (grad_lam) {
      const __m512 gradient = lam_gradient<L>(q_raw, x_lanes, inside, constants);
      batch_sum = _mm512_add_ps(batch_sum, _mm512_maskz_mul_ps(lanes, S::load(grad_y + at, lanes), gradient));
      if (++vectors == 16) {
        sum += sum_as_double(batch_sum);
        batch_sum = _mm512_setzero_ps();
        vectors = 0;
      }
    }
  }
  NA_AVX512 void run_end(const ChannelRun& run) {
    if (grad_lam) grad_lam[run.channel] += sum + sum_as_double(batch_sum);
  }
};

// the ISA's work items for run_simd_forward / run_simd_backward (noisy_quant.h)
struct Kernels {
  using Keys = PhiloxKeysAvx512;
  static Keys keys(uint64_t seed) { return philox_keys_avx512(seed); }

  template <DType D, Noise NOISE> NA_AVX512 static void forward(const ForwardArgs& args, const Keys& keys, WorkItem item) {
    ForwardBody<D, NOISE> body{static_cast<const StorageType<D>*>(args.x), static_cast<StorageType<D>*>(args.y)};
    drive<NOISE>(args.quantizer, keys, item, body);
  }

  template <DType D, Noise NOISE>
  NA_AVX512 static void backward(const BackwardArgs& args, const Keys& keys, WorkItem item, double* grad_lam) {
    BackwardBody<D, NOISE> body{static_cast<const StorageType<D>*>(args.grad_y),
                                static_cast<const StorageType<D>*>(args.x), static_cast<StorageType<D>*>(args.grad_x),
                                grad_lam, L::zero(), 0.0, 0};
    drive<NOISE>(args.quantizer, keys, item, body);
  }
};

}  // namespace

void forward_avx512(const ForwardArgs& args) { run_simd_forward<Kernels>(args); }

void backward_avx512(const BackwardArgs& args) { run_simd_backward<Kernels>(args); }

}  // namespace noisy_quant
}  // namespace na
#endif
