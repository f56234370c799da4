// noisy_quant's AVX2 kernels (CPUs without AVX-512): eight lanes at a time, the noise of 64
// elements (16 Philox blocks) made in registers (noise/noise.h). One driver walks the channel
// runs from the block boundary at or before each run's start; vectors wholly inside a run go
// to the body directly, the partial ones at a run's ends through a zero-padded staging copy
// (AVX2 has no 16-bit masked loads and stores). F16C converts float16.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/lanes_avx2.h"
#include "common/storage_avx2.h"
#include "noise/noise.h"
#include "noisy_quant/noisy_quant.h"

#ifdef NA_X86_SIMD
namespace na {
namespace noisy_quant {
namespace {

using L = Avx2Lanes;

// body.run_begin(), body.full(at, eps, constants) / body.partial(at, from, to, eps, constants)
// for each vector (lanes [from, to) of eight inside the run), body.run_end(run)
template <Noise NOISE, class Body>
NA_AVX2 inline void drive(const Quantizer& q, const PhiloxKeysAvx2& keys, WorkItem item, Body& body) {
  const __m256 scale = _mm256_set1_ps(q.scale);
  for (const ChannelRun& run : ChannelRuns(q, item)) {
    const ChannelConstants<L> constants(q, run.channel);
    body.run_begin();
    for (int64_t offset = run.begin & ~static_cast<int64_t>(3); offset < run.end; offset += 64) {
      __m256 eps[8];
      scaled_noise64_avx2<NOISE>(keys, static_cast<uint64_t>(offset), scale, eps);
      for (int v = 0; v < 8; ++v) {
        const int64_t at = offset + 8 * v;
        const int64_t from = std::max<int64_t>(run.begin - at, 0), to = std::min<int64_t>(run.end - at, 8);
        if (from == 0 && to == 8)
          body.full(at, eps[v], constants);
        else if (from < to)
          body.partial(at, from, to, eps[v], constants);
      }
    }
    body.run_end(run);
  }
}

// elements [from, to) of p + at into a zero-padded vector's worth
template <class T> inline void stage_in(T staged[8], const T* p, int64_t at, int64_t from, int64_t to) {
  std::memset(staged, 0, 8 * sizeof(T));
  std::memcpy(staged + from, p + at + from, static_cast<size_t>(to - from) * sizeof(T));
}
template <class T> inline void stage_out(const T staged[8], T* p, int64_t at, int64_t from, int64_t to) {
  std::memcpy(p + at + from, staged + from, static_cast<size_t>(to - from) * sizeof(T));
}

template <DType D, Noise NOISE> struct ForwardBody {
  using S = Avx2Storage<D>;
  using T = StorageType<D>;
  const T* x;
  T* y;
  NA_AVX2 void run_begin() {}
  NA_AVX2 void vector(const T* x_at, T* y_at, __m256 eps, const ChannelConstants<L>& constants) {
    S::store(y_at, dequantize<L>(quantize_raw<L, NOISE>(S::load(x_at), eps, constants), constants));
  }
  NA_AVX2 void full(int64_t at, __m256 eps, const ChannelConstants<L>& constants) { vector(x + at, y + at, eps, constants); }
  NA_AVX2 void partial(int64_t at, int64_t from, int64_t to, __m256 eps, const ChannelConstants<L>& constants) {
    T x_staged[8], y_staged[8];
    stage_in(x_staged, x, at, from, to);
    vector(x_staged, y_staged, eps, constants);
    stage_out(y_staged, y, at, from, to);
  }
  NA_AVX2 void run_end(const ChannelRun&) {}
};

NA_AVX2 inline double sum_as_double(__m256 values) {
  const __m256d sum4 = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(values)),
                                     _mm256_cvtps_pd(_mm256_extractf128_ps(values, 1)));
  const __m128d sum2 = _mm_add_pd(_mm256_castpd256_pd128(sum4), _mm256_extractf128_pd(sum4, 1));
  return _mm_cvtsd_f64(_mm_add_sd(sum2, _mm_unpackhi_pd(sum2, sum2)));
}

// Adds the work item's grad_lam contribution per channel into `grad_lam` (unless null): float
// vectors over 256 elements (32 vectors), then float64. Staged lanes outside the run hold
// grad_y = 0 and add nothing.
template <DType D, Noise NOISE> struct BackwardBody {
  using S = Avx2Storage<D>;
  using T = StorageType<D>;
  const T* grad_y;
  const T* x;
  T* grad_x;
  double* grad_lam;
  __m256 batch_sum;
  double sum;
  int vectors;
  NA_AVX2 void run_begin() {
    batch_sum = _mm256_setzero_ps();
    sum = 0.0;
    vectors = 0;
  }
  NA_AVX2 void vector(const T* grad_y_at, const T* x_at, T* grad_x_at, __m256 eps, const ChannelConstants<L>& constants) {
    const __m256 x_lanes = S::load(x_at);
    const __m256 q_raw = quantize_raw<L, NOISE>(x_lanes, eps, constants);
    const __m256 inside = passes<L>(q_raw, constants);
    S::copy_or_zero(grad_y_at, grad_x_at, inside);  // grad_y or zero, as stored bits
    if (grad_lam) {
      const __m256 gradient = lam_gradient<L>(q_raw, x_lanes, inside, constants);
      batch_sum = _mm256_add_ps(batch_sum, _mm256_mul_ps(S::load(grad_y_at), gradient));
      if (++vectors == 32) {
        sum += sum_as_double(batch_sum);
        batch_sum = _mm256_setzero_ps();
        vectors = 0;
      }
    }
  }
  NA_AVX2 void full(int64_t at, __m256 eps, const ChannelConstants<L>& constants) {
    vector(grad_y + at, x + at, grad_x + at, eps, constants);
  }
  NA_AVX2 void partial(int64_t at, int64_t from, int64_t to, __m256 eps, const ChannelConstants<L>& constants) {
    T grad_y_staged[8], x_staged[8], grad_x_staged[8];
    stage_in(grad_y_staged, grad_y, at, from, to);
    stage_in(x_staged, x, at, from, to);
    vector(grad_y_staged, x_staged, grad_x_staged, eps, constants);
    stage_out(grad_x_staged, grad_x, at, from, to);
  }
  NA_AVX2 void run_end(const ChannelRun& run) {
    if (grad_lam) grad_lam[run.channel] += sum + sum_as_double(batch_sum);
  }
};

// the ISA's work items for run_simd_forward / run_simd_backward (noisy_quant.h)
struct Kernels {
  using Keys = PhiloxKeysAvx2;
  static Keys keys(uint64_t seed) { return philox_keys_avx2(seed); }

  template <DType D, Noise NOISE> NA_AVX2 static void forward(const ForwardArgs& args, const Keys& keys, WorkItem item) {
    ForwardBody<D, NOISE> body{static_cast<const StorageType<D>*>(args.x), static_cast<StorageType<D>*>(args.y)};
    drive<NOISE>(args.quantizer, keys, item, body);
  }

  template <DType D, Noise NOISE>
  NA_AVX2 static void backward(const BackwardArgs& args, const Keys& keys, WorkItem item, double* grad_lam) {
    BackwardBody<D, NOISE> body{static_cast<const StorageType<D>*>(args.grad_y),
                                static_cast<const StorageType<D>*>(args.x), static_cast<StorageType<D>*>(args.grad_x),
                                grad_lam, L::zero(), 0.0, 0};
    drive<NOISE>(args.quantizer, keys, item, body);
  }
};

}  // namespace

void forward_avx2(const ForwardArgs& args) { run_simd_forward<Kernels>(args); }

void backward_avx2(const BackwardArgs& args) { run_simd_backward<Kernels>(args); }

}  // namespace noisy_quant
}  // namespace na
#endif
