// batchnorm_noisy_quant's kernels. Every pass streams x in memory order: work items of
// kWorkItemElements (a multiple of 8, so no two threads share a byte of the mask), split into
// channel runs (noisy_quant::ChannelRuns), and, inside a run, batches of kNoiseBatch elements
// whose loops the compiler vectorises (compiled for AVX2 and the baseline). Per-channel sums are
// per thread (float64), added in thread order. 16-bit x is widened to float32 a batch at a time
// with explicit AVX2 / AVX-512 conversions (a scalar conversion inside a loop keeps the compiler
// from vectorising it), and the batch runs through float32 loops that compute what the float32
// kernel does, rounding to the dtype where the unfused ops store. On AVX2 and AVX-512 CPUs
// float32 runs on float32_simd.h's kernels instead (the same results; the backward's sums within
// rounding), these loops only at NA_KERNELS_SIMD=generic or without AVX2.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "batchnorm_noisy_quant/batchnorm_noisy_quant.h"
#include "batchnorm_noisy_quant/mask_bits.h"
#include "batchnorm_noisy_quant/float32_simd.h"
#include "common/dispatch.h"
#include "common/float_convert.h"
#include "common/lanes.h"
#include "common/lanes_avx512.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "common/storage_avx2.h"
#include "common/storage_avx512.h"
#include "noise/noise.h"
#include "noisy_quant/noisy_quant.h"

namespace na {
namespace batchnorm_noisy_quant {
namespace {

using L = ScalarLanes;
using noisy_quant::ChannelConstants;
using noisy_quant::ChannelRun;
using noisy_quant::ChannelRuns;
using noisy_quant::dequantize;
using noisy_quant::kWorkItemElements;
using noisy_quant::passes;
using noisy_quant::quantize_raw;

// the value a stored element of D holds: float32 rounded to D
template <DType D> inline float round_to(float v) {
  if (D == DType::FLOAT32) return v;
  StorageType<D> stored;
  Storage<D>::store(&stored, 0, v);
  return Storage<D>::load(&stored, 0);
}

// the elementwise float32 loops of the 16-bit path: clones for AVX-512 too
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define NA_BATCH_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define NA_BATCH_CLONES
#endif

// how 16-bit batches are converted
enum class Isa { GENERIC, AVX2, AVX512 };

inline Isa conversion_isa(DType d) {
#ifdef NA_X86_SIMD
  if (cpu_has_avx512()) return Isa::AVX512;
  if (cpu_has_avx2() && (d != DType::FLOAT16 || cpu_has_f16c())) return Isa::AVX2;
#endif
  (void)d;
  return Isa::GENERIC;
}

#ifdef NA_X86_SIMD
template <DType D> NA_AVX512 void widen_avx512(const uint16_t* in, int64_t count, float* out) {
  for (int64_t j = 0; j < count; j += 16) {
    const __mmask16 m = first_lanes(count - j);
    _mm512_mask_storeu_ps(out + j, m, Avx512Storage<D>::load(in + j, m));
  }
}
template <DType D> NA_AVX512 void narrow_avx512(const float* in, int64_t count, uint16_t* out) {
  for (int64_t j = 0; j < count; j += 16) {
    const __mmask16 m = first_lanes(count - j);
    Avx512Storage<D>::store(out + j, m, _mm512_maskz_loadu_ps(m, in + j));
  }
}
template <DType D> NA_AVX2 void widen_avx2(const uint16_t* in, int64_t count, float* out) {
  int64_t j = 0;
  for (; j + 8 <= count; j += 8) _mm256_storeu_ps(out + j, Avx2Storage<D>::load(in + j));
  for (; j < count; ++j) out[j] = Storage<D>::load(in, j);
}
template <DType D> NA_AVX2 void narrow_avx2(const float* in, int64_t count, uint16_t* out) {
  int64_t j = 0;
  for (; j + 8 <= count; j += 8) Avx2Storage<D>::store(out + j, _mm256_loadu_ps(in + j));
  for (; j < count; ++j) Storage<D>::store(out, j, in[j]);
}

NA_AVX512 inline double lanes_sum(__m512d v) {
  double lanes[8];
  _mm512_storeu_pd(lanes, v);
  double sum = 0.0;
  for (double lane : lanes) sum += lane;
  return sum;
}
NA_AVX512 inline double lanes_sum(__m512 v) {
  float lanes[16];
  _mm512_storeu_ps(lanes, v);
  double sum = 0.0;
  for (float lane : lanes) sum += static_cast<double>(lane);
  return sum;
}

// batch_sum and batch_squares of a float32 batch in eight float64 lanes
NA_AVX512 double batch_sum_avx512(const float* x, int64_t count) {
  __m512d sum = _mm512_setzero_pd();
  for (int64_t j = 0; j < count; j += 8) {
    const __mmask8 m = static_cast<__mmask8>(first_lanes(count - j));
    sum = _mm512_add_pd(sum, _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, x + j)));
  }
  return lanes_sum(sum);
}
NA_AVX512 double batch_squares_avx512(const float* x, int64_t count, double mean) {
  const __m512d vmean = _mm512_set1_pd(mean);
  __m512d sum = _mm512_setzero_pd();
  for (int64_t j = 0; j < count; j += 8) {
    const __mmask8 m = static_cast<__mmask8>(first_lanes(count - j));
    const __m512d d = _mm512_maskz_sub_pd(m, _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, x + j)), vmean);
    sum = _mm512_add_pd(sum, _mm512_mul_pd(d, d));
  }
  return lanes_sum(sum);
}
#endif

// count 16-bit elements of D -> float32, and back (rounding as Storage<D> does)
template <DType D> void widen(Isa isa, const uint16_t* in, int64_t count, float* out) {
#ifdef NA_X86_SIMD
  if (isa == Isa::AVX512) return widen_avx512<D>(in, count, out);
  if (isa == Isa::AVX2) return widen_avx2<D>(in, count, out);
#endif
  (void)isa;
  for (int64_t j = 0; j < count; ++j) out[j] = Storage<D>::load(in, j);
}
template <DType D> void narrow(Isa isa, const float* in, int64_t count, uint16_t* out) {
#ifdef NA_X86_SIMD
  if (isa == Isa::AVX512) return narrow_avx512<D>(in, count, out);
  if (isa == Isa::AVX2) return narrow_avx2<D>(in, count, out);
#endif
  (void)isa;
  for (int64_t j = 0; j < count; ++j) Storage<D>::store(out, j, in[j]);
}

// v rounded to D in place
template <DType D> void round_batch(Isa isa, float* v, int64_t count) {
  uint16_t stored[kNoiseBatch];
  narrow<D>(isa, v, count, stored);
  widen<D>(isa, stored, count, v);
}

NA_BATCH_CLONES void affine(const float* x, float* z, int64_t count, float alpha, float beta) {
  for (int64_t j = 0; j < count; ++j) z[j] = x[j] * alpha + beta;
}
NA_BATCH_CLONES void add_to(float* z, const float* r, int64_t count) {
  for (int64_t j = 0; j < count; ++j) z[j] = z[j] + r[j];
}

// the channel layout for ChannelRuns: element i is in channel (i / inner) % channels
noisy_quant::Quantizer layout(const Shape& s) {
  noisy_quant::Quantizer q{};
  q.numel = s.numel();
  q.channel_stride = std::max<int64_t>(s.inner, 1);
  q.channels = s.channels;
  return q;
}

// item_body(work item, its thread's sums) for every work item, spread over `threads`; per-thread
// sums of `width` float64 per channel, returned added in thread order ([channels][width]; empty
// when width is 0; the sums pointer is null then)
template <class ItemBody>
std::vector<double> per_thread_sums(const Shape& s, int threads, int width, ItemBody&& item_body) {
  std::vector<double> partial(static_cast<size_t>(threads * s.channels * width), 0.0);
  for_each_work_item(
      s.numel(), kWorkItemElements, threads,
      [&] { return width ? partial.data() + thread_index() * s.channels * width : nullptr; }, item_body);
  std::vector<double> total(static_cast<size_t>(s.channels * width), 0.0);
  for (int t = 0; t < threads; ++t)
    for (size_t i = 0; i < total.size(); ++i) total[i] += partial[t * total.size() + i];
  return total;
}

// body(run, its channel's sums, first index, count) for the batches of every channel run of
// every work item, as per_thread_sums
template <class Body>
std::vector<double> stream(const Shape& s, int threads, int width, Body&& body) {
  const noisy_quant::Quantizer q = layout(s);
  return per_thread_sums(s, threads, width, [&](const WorkItem& item, double* sums) {
    for (const ChannelRun& run : ChannelRuns(q, item))
      for (int64_t at = run.begin; at < run.end; at += kNoiseBatch)
        body(run, sums ? sums + run.channel * width : nullptr, at, std::min(kNoiseBatch, run.end - at));
  });
}

template <DType D> NA_TARGET_CLONES double batch_sum(const StorageType<D>* x, int64_t at, int64_t count) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < count; ++j) sum += static_cast<double>(Storage<D>::load(x, at + j));
  return sum;
}

template <DType D>
NA_TARGET_CLONES double batch_squares(const StorageType<D>* x, int64_t at, int64_t count, double mean) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < count; ++j) {
    const double d = static_cast<double>(Storage<D>::load(x, at + j)) - mean;
    sum += d * d;
  }
  return sum;
}

// per channel: the mean of x and the sum of (x - mean)^2, on the loops of batches
template <DType D>
void generic_statistics(const ForwardArgs& args, std::vector<double>& mean, std::vector<double>& var_sum) {
  const Shape& s = args.shape;
  const auto* x = static_cast<const StorageType<D>*>(args.x);
  const Isa isa = conversion_isa(D);
  const double n = static_cast<double>(s.per_channel());
  mean = stream(s, args.threads, 1, [&](const ChannelRun&, double* sum, int64_t at, int64_t count) {
    if constexpr (D == DType::FLOAT32) {
      *sum += batch_sum<D>(x, at, count);
    } else {
      float tile[kNoiseBatch];
      widen<D>(isa, x + at, count, tile);
#ifdef NA_X86_SIMD
      if (isa == Isa::AVX512) {
        *sum += batch_sum_avx512(tile, count);
        return;
      }
#endif
      *sum += batch_sum<DType::FLOAT32>(tile, 0, count);
    }
  });
  for (double& m : mean) m /= n;
  var_sum = stream(s, args.threads, 1, [&](const ChannelRun& run, double* sum, int64_t at, int64_t count) {
    if constexpr (D == DType::FLOAT32) {
      *sum += batch_squares<D>(x, at, count, mean[run.channel]);
    } else {
      float tile[kNoiseBatch];
      widen<D>(isa, x + at, count, tile);
#ifdef NA_X86_SIMD
      if (isa == Isa::AVX512) {
        *sum += batch_squares_avx512(tile, count, mean[run.channel]);
        return;
      }
#endif
      *sum += batch_squares<DType::FLOAT32>(tile, 0, count, mean[run.channel]);
    }
  });
}

// per channel: the sum of x (mean null), or of (x - mean)^2, on the float32 kernels of `isa`
std::vector<double> simd_statistics(Isa isa, const ForwardArgs& args, const double* mean) {
  const noisy_quant::Quantizer q = layout(args.shape);
  return per_thread_sums(args.shape, args.threads, 1, [&](const WorkItem& item, double* sums) {
#ifdef NA_X86_SIMD
    if (isa == Isa::AVX512) return statistics_sums_avx512(args, q, mean, item, sums);
    statistics_sums_avx2(args, q, mean, item, sums);
#else
    (void)isa, (void)mean, (void)item, (void)sums;
#endif
  });
}

// the float64 sums of this batch (when batch_stats), then channel_terms
template <DType D> void statistics(const ForwardArgs& args, std::vector<float>& alpha, std::vector<float>& beta) {
  const Shape& s = args.shape;
  const Isa isa = conversion_isa(D);
  std::vector<double> mean(s.channels), var_sum(s.channels);
  if (args.batch_stats) {
    const double n = static_cast<double>(s.per_channel());
    if (D == DType::FLOAT32 && isa != Isa::GENERIC) {
      mean = simd_statistics(isa, args, nullptr);
      for (double& m : mean) m /= n;
      var_sum = simd_statistics(isa, args, mean.data());
    } else {
      generic_statistics<D>(args, mean, var_sum);
    }
  }
  channel_terms(args, mean.data(), var_sum.data(), alpha.data(), beta.data());
}

// z of one element: batch_norm(x) (+ residual), each result rounded to D as the unfused ops store it
template <DType D, bool RESIDUAL>
inline float normalized(const StorageType<D>* x, const StorageType<D>* residual, int64_t i, float alpha, float beta) {
  float z = round_to<D>(Storage<D>::load(x, i) * alpha + beta);
  if (RESIDUAL) z = round_to<D>(z + Storage<D>::load(residual, i));
  return z;
}

// bits [first, first + count) of the mask from 0 / 1 bytes; bytes wholly inside are overwritten,
// a byte shared with a neighbouring run is or-ed into (the mask starts zeroed there)
inline void set_bits(uint8_t* mask, int64_t first, const uint8_t* inside, int64_t count) {
  int64_t j = 0;
  for (; j < count && ((first + j) & 7); ++j) mask[(first + j) >> 3] |= static_cast<uint8_t>(inside[j] << ((first + j) & 7));
  for (; j + 8 <= count; j += 8) {
    uint8_t byte = 0;
    for (int b = 0; b < 8; ++b) byte |= static_cast<uint8_t>(inside[j + b] << b);
    mask[(first + j) >> 3] = byte;
  }
  for (; j < count; ++j) mask[(first + j) >> 3] |= static_cast<uint8_t>(inside[j] << ((first + j) & 7));
}

#ifdef NA_X86_SIMD
// set_bits, sixteen bytes to two mask bytes at a time
NA_AVX512 void set_bits_avx512(uint8_t* mask, int64_t first, const uint8_t* inside, int64_t count) {
  int64_t j = 0;
  for (; j < count && ((first + j) & 7); ++j) mask[(first + j) >> 3] |= static_cast<uint8_t>(inside[j] << ((first + j) & 7));
  for (; j + 16 <= count; j += 16) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(inside + j));
    const uint16_t bits = _mm_test_epi8_mask(bytes, bytes);
    std::memcpy(mask + ((first + j) >> 3), &bits, 2);
  }
  set_bits(mask, first + j, inside + j, count - j);
}
#endif

// bits [first, first + count) of the mask as 0 / 1 bytes (inside has room for count + 8)
inline void get_bits(const uint8_t* mask, int64_t first, int64_t count, uint8_t* inside) {
  if ((first & 7) == 0) {
    for (int64_t j = 0; j < count; j += 8) std::memcpy(inside + j, &kBitBytes.of[mask[(first + j) >> 3]], 8);
    return;
  }
  for (int64_t j = 0; j < count; ++j) inside[j] = (mask[(first + j) >> 3] >> ((first + j) & 7)) & 1;
}

// the elements [at, at + count) of channel c
template <DType D, Noise NOISE, bool RESIDUAL>
NA_TARGET_CLONES void forward_run(const ForwardArgs& args, const noisy_quant::Quantizer& nq, int64_t c, float alpha,
                                  float beta, int64_t at, int64_t count, const float* eps, uint8_t* inside) {
  using S = Storage<D>;
  const ChannelConstants<L> constants(nq, c);  // local: the stores to y cannot alias it
  const auto* x = static_cast<const StorageType<D>*>(args.x);
  const auto* residual = static_cast<const StorageType<D>*>(args.residual);
  auto* y = static_cast<StorageType<D>*>(args.y);
  for (int64_t j = 0; j < count; ++j) {
    const float z = normalized<D, RESIDUAL>(x, residual, at + j, alpha, beta);
    const float q_raw = quantize_raw<L, NOISE>(z, eps[j], constants);
    S::store(y, at + j, dequantize<L>(q_raw, constants));
    inside[j] = passes<L>(q_raw, constants);
  }
}

// a batch of kNoiseBatch elements from a multiple of 8: the noise of the whole batch at once
// (short channel runs would each make too few Philox blocks for the vector code), then its runs
template <DType D, Noise NOISE, bool RESIDUAL>
void forward_batch(const ForwardArgs& args, const noisy_quant::Quantizer& nq, const float* alpha, const float* beta,
                   int64_t at, int64_t count) {
  const Quantizer& q = args.quantizer;
  float eps[kNoiseBatch] = {};
  uint8_t inside[kNoiseBatch];
  if (NOISE != Noise::NONE) scaled_noise_batch(NOISE, q.seed, q.scale, static_cast<uint64_t>(at), count, eps);
  const int64_t inner = nq.channel_stride;
  for (int64_t i = at; i < at + count;) {
    const int64_t row = i / inner, end = std::min(at + count, (row + 1) * inner), c = row % nq.channels;
    forward_run<D, NOISE, RESIDUAL>(args, nq, c, alpha[c], beta[c], i, end - i, eps + (i - at), inside + (i - at));
    i = end;
  }
  if (args.mask) set_bits(args.mask, at, inside, count);
}

// forward_run on a float32 batch: z already normalised and rounded, y as float32
template <Noise NOISE>
NA_TARGET_CLONES void quantize_run(const noisy_quant::Quantizer& nq, int64_t c, const float* z, const float* eps,
                                   float* y, uint8_t* inside, int64_t count) {
  const ChannelConstants<L> constants(nq, c);
  for (int64_t j = 0; j < count; ++j) {
    const float q_raw = quantize_raw<L, NOISE>(z[j], eps[j], constants);
    y[j] = dequantize<L>(q_raw, constants);
    inside[j] = passes<L>(q_raw, constants);
  }
}

#ifdef NA_X86_SIMD
template <Noise NOISE>
NA_AVX512 void quantize_run_avx512(const noisy_quant::Quantizer& nq, int64_t c, const float* z, const float* eps,
                                   float* y, uint8_t* inside, int64_t count) {
  using V = Avx512Lanes;
  const ChannelConstants<V> constants(nq, c);
  for (int64_t j = 0; j < count; j += 16) {
    const __mmask16 m = first_lanes(count - j);
    const __m512 q_raw =
        quantize_raw<V, NOISE>(_mm512_maskz_loadu_ps(m, z + j), _mm512_maskz_loadu_ps(m, eps + j), constants);
    _mm512_mask_storeu_ps(y + j, m, dequantize<V>(q_raw, constants));
    _mm_mask_storeu_epi8(inside + j, m, _mm_maskz_set1_epi8(passes<V>(q_raw, constants), 1));
  }
}
#endif

template <Noise NOISE>
void quantize_batch_run(Isa isa, const noisy_quant::Quantizer& nq, int64_t c, const float* z, const float* eps,
                        float* y, uint8_t* inside, int64_t count) {
#ifdef NA_X86_SIMD
  if (isa == Isa::AVX512) return quantize_run_avx512<NOISE>(nq, c, z, eps, y, inside, count);
#endif
  quantize_run<NOISE>(nq, c, z, eps, y, inside, count);
}

// forward_batch for 16-bit D: widen the batch, run it in float32, narrow y
template <DType D, Noise NOISE, bool RESIDUAL>
void forward_batch_16(Isa isa, const ForwardArgs& args, const noisy_quant::Quantizer& nq, const float* alpha,
                      const float* beta, int64_t at, int64_t count) {
  using T = StorageType<D>;
  const Quantizer& q = args.quantizer;
  float eps[kNoiseBatch] = {}, z[kNoiseBatch], out[kNoiseBatch];
  uint8_t inside[kNoiseBatch];
  if (NOISE != Noise::NONE) scaled_noise_batch(NOISE, q.seed, q.scale, static_cast<uint64_t>(at), count, eps);
  widen<D>(isa, static_cast<const T*>(args.x) + at, count, out);
  const int64_t inner = nq.channel_stride;
  for (int64_t i = at; i < at + count;) {
    const int64_t row = i / inner, end = std::min(at + count, (row + 1) * inner), c = row % nq.channels;
    affine(out + (i - at), z + (i - at), end - i, alpha[c], beta[c]);
    i = end;
  }
  round_batch<D>(isa, z, count);
  if (RESIDUAL) {
    widen<D>(isa, static_cast<const T*>(args.residual) + at, count, out);
    add_to(z, out, count);
    round_batch<D>(isa, z, count);
  }
  for (int64_t i = at; i < at + count;) {
    const int64_t row = i / inner, end = std::min(at + count, (row + 1) * inner), c = row % nq.channels;
    quantize_batch_run<NOISE>(isa, nq, c, z + (i - at), eps + (i - at), out + (i - at), inside + (i - at), end - i);
    i = end;
  }
  narrow<D>(isa, out, count, static_cast<T*>(args.y) + at);
  if (!args.mask) return;
#ifdef NA_X86_SIMD
  if (isa == Isa::AVX512) return set_bits_avx512(args.mask, at, inside, count);
#endif
  set_bits(args.mask, at, inside, count);
}

template <DType D, bool RESIDUAL>
NA_TARGET_CLONES void backward_batch(const BackwardArgs& args, double* sums, float mean, float alpha, float beta,
                                     float lam, int64_t at, int64_t count) {
  using S = Storage<D>;
  using T = StorageType<D>;
  const auto* grad_y = static_cast<const T*>(args.grad_y);
  const auto* x = static_cast<const T*>(args.x);
  const auto* residual = static_cast<const T*>(args.residual);
  const auto* y = static_cast<const T*>(args.y);
  // reciprocals, not noisy_quant's divisions: the level is rounded anyway, and lam's gradient is
  // a sum within rounding of noisy_quant's
  const float p = args.p, above = args.p + 1.0f, p_over_lam = p / lam, inv_p = 1.0f / p, inv_lam = 1.0f / lam;
  uint8_t inside[kNoiseBatch + 8];
  get_bits(args.mask, at, count, inside);
  float b_dz = 0.0f, b_dz_xc = 0.0f, b_lam = 0.0f;
#pragma omp simd reduction(+ : b_dz, b_dz_xc, b_lam)
  for (int64_t j = 0; j < count; ++j) {
    const bool in = inside[j] != 0;
    const float dy = S::load(grad_y, at + j);
    const float dz = in ? dy : 0.0f;
    const float z = normalized<D, RESIDUAL>(x, residual, at + j, alpha, beta);
    // the level from y (exact: the levels are apart by more than y's rounding), and whether an
    // element outside [0, p] was above (y = lam) or below; then noisy_quant's lam gradient
    const float level = L::floor(S::load(y, at + j) * p_over_lam + 0.5f);
    const float q_raw = in ? level : (level == p ? above : -1.0f);
    const float g = in ? q_raw * inv_p - z * inv_lam : (q_raw > p ? 1.0f : 0.0f);
    b_dz += dz;
    b_dz_xc += dz * (S::load(x, at + j) - mean);
    b_lam += dy * g;
  }
  sums[0] += b_dz;
  sums[1] += b_dz_xc;
  sums[2] += b_lam;
}

// backward_batch's loop on float32 batches: z normalised and rounded
NA_TARGET_CLONES void backward_sums(double* sums, const float* grad_y, const float* x, const float* y,
                                    const float* z, const uint8_t* inside, float p, float mean, float lam,
                                    int64_t count) {
  const float above = p + 1.0f, p_over_lam = p / lam, inv_p = 1.0f / p, inv_lam = 1.0f / lam;
  float b_dz = 0.0f, b_dz_xc = 0.0f, b_lam = 0.0f;
#pragma omp simd reduction(+ : b_dz, b_dz_xc, b_lam)
  for (int64_t j = 0; j < count; ++j) {
    const bool in = inside[j] != 0;
    const float dy = grad_y[j];
    const float dz = in ? dy : 0.0f;
    const float level = L::floor(y[j] * p_over_lam + 0.5f);
    const float q_raw = in ? level : (level == p ? above : -1.0f);
    const float g = in ? q_raw * inv_p - z[j] * inv_lam : (q_raw > p ? 1.0f : 0.0f);
    b_dz += dz;
    b_dz_xc += dz * (x[j] - mean);
    b_lam += dy * g;
  }
  sums[0] += b_dz;
  sums[1] += b_dz_xc;
  sums[2] += b_lam;
}

#ifdef NA_X86_SIMD

// backward_sums in sixteen lanes (the float sums in another order, within their rounding)
NA_AVX512 void backward_sums_avx512(double* sums, const float* grad_y, const float* x, const float* y,
                                    const float* z, const uint8_t* inside, float p, float mean, float lam,
                                    int64_t count) {
  const __m512 vp = _mm512_set1_ps(p), above = _mm512_set1_ps(p + 1.0f), p_over_lam = _mm512_set1_ps(p / lam),
               inv_p = _mm512_set1_ps(1.0f / p), inv_lam = _mm512_set1_ps(1.0f / lam), vmean = _mm512_set1_ps(mean),
               half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
  __m512 b_dz = _mm512_setzero_ps(), b_dz_xc = _mm512_setzero_ps(), b_lam = _mm512_setzero_ps();
  for (int64_t j = 0; j < count; j += 16) {
    const __mmask16 m = first_lanes(count - j);
    const __m128i bytes = _mm_maskz_loadu_epi8(m, inside + j);
    const __mmask16 in = _mm_test_epi8_mask(bytes, bytes);
    const __m512 dy = _mm512_maskz_loadu_ps(m, grad_y + j);
    const __m512 dz = _mm512_maskz_mov_ps(in, dy);
    const __m512 level = Avx512Lanes::floor(_mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, y + j), p_over_lam), half));
    const __m512 q_out = _mm512_mask_mov_ps(_mm512_set1_ps(-1.0f), _mm512_cmp_ps_mask(level, vp, _CMP_EQ_OQ), above);
    const __m512 g_in = _mm512_sub_ps(_mm512_mul_ps(level, inv_p), _mm512_mul_ps(_mm512_maskz_loadu_ps(m, z + j), inv_lam));
    const __m512 g_out = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(q_out, vp, _CMP_GT_OQ), one);
    const __m512 g = _mm512_mask_mov_ps(g_out, in, g_in);
    b_dz = _mm512_add_ps(b_dz, dz);
    b_dz_xc = _mm512_add_ps(b_dz_xc, _mm512_mul_ps(dz, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + j), vmean)));
    b_lam = _mm512_add_ps(b_lam, _mm512_maskz_mov_ps(m, _mm512_mul_ps(dy, g)));
  }
  sums[0] += lanes_sum(b_dz);
  sums[1] += lanes_sum(b_dz_xc);
  sums[2] += lanes_sum(b_lam);
}
#endif

template <DType D, bool RESIDUAL>
void backward_batch_16(Isa isa, const BackwardArgs& args, double* sums, float mean, float alpha, float beta,
                       float lam, int64_t at, int64_t count) {
  using T = StorageType<D>;
  float dy[kNoiseBatch], x[kNoiseBatch], y[kNoiseBatch], z[kNoiseBatch];
  uint8_t inside[kNoiseBatch + 8];
  get_bits(args.mask, at, count, inside);
  widen<D>(isa, static_cast<const T*>(args.grad_y) + at, count, dy);
  widen<D>(isa, static_cast<const T*>(args.x) + at, count, x);
  affine(x, z, count, alpha, beta);
  round_batch<D>(isa, z, count);
  if (RESIDUAL) {
    widen<D>(isa, static_cast<const T*>(args.residual) + at, count, y);
    add_to(z, y, count);
    round_batch<D>(isa, z, count);
  }
  widen<D>(isa, static_cast<const T*>(args.y) + at, count, y);
#ifdef NA_X86_SIMD
  if (isa == Isa::AVX512) return backward_sums_avx512(sums, dy, x, y, z, inside, args.p, mean, lam, count);
#endif
  backward_sums(sums, dy, x, y, z, inside, args.p, mean, lam, count);
}

NA_BATCH_CLONES void grad_x_batch(const float* grad_y, const float* x, const uint8_t* inside, float* grad_x,
                                   float mean, float mean_dz, float k, float w_invstd, int64_t count) {
  for (int64_t j = 0; j < count; ++j) {
    const float dz = inside[j] ? grad_y[j] : 0.0f;
    grad_x[j] = ((dz - mean_dz) - (x[j] - mean) * k) * w_invstd;
  }
}

// grad_x = ((dz - mean_dz) - (x - mean) * k) * invstd * weight (ATen's order), and grad_residual = dz
template <DType D, bool GRAD_X, bool GRAD_RESIDUAL>
NA_TARGET_CLONES void backward_inputs_batch(const BackwardArgs& args, float mean, float mean_dz, float k,
                                            float w_invstd, int64_t at, int64_t count) {
  using S = Storage<D>;
  using T = StorageType<D>;
  const auto* grad_y = static_cast<const T*>(args.grad_y);
  const auto* x = static_cast<const T*>(args.x);
  auto* grad_x = static_cast<T*>(args.grad_x);
  auto* grad_residual = static_cast<T*>(args.grad_residual);
  uint8_t inside[kNoiseBatch + 8];
  get_bits(args.mask, at, count, inside);
  if (GRAD_RESIDUAL)
    for (int64_t j = 0; j < count; ++j) grad_residual[at + j] = inside[j] ? grad_y[at + j] : T(0);
  if (GRAD_X) {
    if constexpr (D == DType::FLOAT32) {
      for (int64_t j = 0; j < count; ++j) {
        const float dz = inside[j] ? S::load(grad_y, at + j) : 0.0f;
        S::store(grad_x, at + j, ((dz - mean_dz) - (S::load(x, at + j) - mean) * k) * w_invstd);
      }
    } else {
      const Isa isa = conversion_isa(D);
      float dy[kNoiseBatch], xf[kNoiseBatch], out[kNoiseBatch];
      widen<D>(isa, grad_y + at, count, dy);
      widen<D>(isa, x + at, count, xf);
      grad_x_batch(dy, xf, inside, out, mean, mean_dz, k, w_invstd, count);
      narrow<D>(isa, out, count, grad_x + at);
    }
  }
}

// the float32 backward's passes on the explicit-SIMD kernels of `isa` (float32_simd.h)
std::vector<double> simd_sums(Isa isa, const BackwardArgs& args, const ChannelTerms& terms) {
  const noisy_quant::Quantizer q = layout(args.shape);
  return per_thread_sums(args.shape, args.threads, 3, [&](const WorkItem& item, double* sums) {
#ifdef NA_X86_SIMD
    if (isa == Isa::AVX512) return backward_sums_avx512(args, q, terms, item, sums);
    backward_sums_avx2(args, q, terms, item, sums);
#else
    (void)isa, (void)item, (void)sums;
#endif
  });
}

void simd_inputs(Isa isa, const BackwardArgs& args, const ChannelTerms& terms) {
  const noisy_quant::Quantizer q = layout(args.shape);
  for_each_work_item(args.shape.numel(), kWorkItemElements, args.threads, [&](const WorkItem& item) {
#ifdef NA_X86_SIMD
    if (isa == Isa::AVX512) return backward_inputs_avx512(args, q, terms, item);
    backward_inputs_avx2(args, q, terms, item);
#else
    (void)isa, (void)item;
#endif
  });
}

}  // namespace

// per channel: save_mean, save_invstd, the new running statistics, alpha and beta. The batch
// statistics as torch's CPU BatchNorm computes them: float64 mean and biased variance (two
// passes), the variance rounded to float32 and invstd from it in float64; running statistics in
// float32 (momentum * batch + (1 - momentum) * running, the unbiased variance)
void channel_terms(const ForwardArgs& args, const double* mean, const double* var_sum, float* alpha, float* beta) {
  const Shape& s = args.shape;
  const double n = static_cast<double>(s.per_channel());
  for (int64_t c = 0; c < s.channels; ++c) {
    float mean32, invstd;
    if (args.batch_stats) {
      mean32 = static_cast<float>(mean[c]);
      const float var = static_cast<float>(var_sum[c] / n);
      invstd = static_cast<float>(1.0 / std::sqrt(static_cast<double>(var) + args.eps));
      if (args.running_mean) {
        const float m = static_cast<float>(args.momentum), keep = static_cast<float>(1.0 - args.momentum);
        const float unbiased = static_cast<float>(static_cast<double>(var) * n / (n - 1.0));
        args.new_running_mean[c] = m * mean32 + keep * args.running_mean[c];
        args.new_running_var[c] = m * unbiased + keep * args.running_var[c];
      }
    } else {
      mean32 = args.running_mean[c];
      invstd = 1.0f / std::sqrt(args.running_var[c] + static_cast<float>(args.eps));
      if (args.new_running_mean) {
        args.new_running_mean[c] = args.running_mean[c];
        args.new_running_var[c] = args.running_var[c];
      }
    }
    args.save_mean[c] = mean32;
    args.save_invstd[c] = invstd;
    alpha[c] = invstd * args.weight[c];
    beta[c] = args.bias[c] - mean32 * alpha[c];
  }
}

void forward_generic(const ForwardArgs& args) {
  const Shape& s = args.shape;
  if (args.mask) std::memset(args.mask, 0, static_cast<size_t>(s.mask_bytes()));
  dispatch(
      [&](auto dtype, auto noise, auto residual) {
        constexpr DType D = decltype(dtype)::value;
        std::vector<float> alpha(s.channels), beta(s.channels);
        statistics<D>(args, alpha, beta);
        if (s.numel() == 0) return;
        noisy_quant::Quantizer nq = layout(s);
        nq.lam = args.lam;
        nq.p = args.quantizer.p;
        nq.scale = args.quantizer.scale;
        nq.shift = args.quantizer.shift;
        const Isa isa = conversion_isa(D);
        for_each_work_item(s.numel(), kWorkItemElements, args.threads, [&](const WorkItem& item) {
#ifdef NA_X86_SIMD
          if constexpr (D == DType::FLOAT32) {
            if (isa == Isa::AVX512) return forward_avx512(args, nq, alpha.data(), beta.data(), item);
            if (isa == Isa::AVX2) return forward_avx2(args, nq, alpha.data(), beta.data(), item);
          }
#endif
          for (int64_t at = item.begin; at < item.end; at += kNoiseBatch) {
            const int64_t count = std::min(kNoiseBatch, item.end - at);
            if constexpr (D == DType::FLOAT32)
              forward_batch<D, decltype(noise)::value, decltype(residual)::value>(args, nq, alpha.data(),
                                                                                  beta.data(), at, count);
            else
              forward_batch_16<D, decltype(noise)::value, decltype(residual)::value>(isa, args, nq, alpha.data(),
                                                                                     beta.data(), at, count);
          }
        });
      },
      args.quantizer.dtype, args.quantizer.noise, args.residual != nullptr);
}

void backward_generic(const BackwardArgs& args) {
  const Shape& s = args.shape;
  const double n = static_cast<double>(s.per_channel());
  dispatch(
      [&](auto dtype, auto residual, auto grad_x, auto grad_residual) {
        constexpr DType D = decltype(dtype)::value;
        const Isa isa = conversion_isa(D);
        const bool simd = D == DType::FLOAT32 && isa != Isa::GENERIC;
        std::vector<float> alpha(s.channels), beta(s.channels), mean_dz(s.channels, 0.0f), k(s.channels, 0.0f),
            w_invstd(s.channels);
        for (int64_t c = 0; c < s.channels; ++c) {
          alpha[c] = args.save_invstd[c] * args.weight[c];
          beta[c] = args.bias[c] - args.save_mean[c] * alpha[c];
          w_invstd[c] = args.save_invstd[c] * args.weight[c];
        }
        const ChannelTerms terms{args.save_mean, alpha.data(), beta.data(),    args.lam,
                                 mean_dz.data(), k.data(),     w_invstd.data()};
        std::vector<double> sums(3 * s.channels, 0.0);
        if (s.numel() > 0 && simd) {
          sums = simd_sums(isa, args, terms);
        } else if (s.numel() > 0) {
          sums = stream(s, args.threads, 3, [&](const ChannelRun& run, double* sum, int64_t at, int64_t count) {
            const int64_t c = run.channel;
            if constexpr (D == DType::FLOAT32)
              backward_batch<D, decltype(residual)::value>(args, sum, args.save_mean[c], alpha[c], beta[c],
                                                           args.lam[c], at, count);
            else
              backward_batch_16<D, decltype(residual)::value>(isa, args, sum, args.save_mean[c], alpha[c], beta[c],
                                                              args.lam[c], at, count);
          });
        }
        for (int64_t c = 0; c < s.channels; ++c) {
          args.grads[c] = static_cast<float>(sums[3 * c + 1] * static_cast<double>(args.save_invstd[c]));
          args.grads[s.channels + c] = static_cast<float>(sums[3 * c]);
          args.grads[2 * s.channels + c] = static_cast<float>(sums[3 * c + 2]);
          if (args.batch_stats) {
            const double invstd = args.save_invstd[c];
            mean_dz[c] = static_cast<float>(sums[3 * c] / n);
            k[c] = static_cast<float>(sums[3 * c + 1] / n * invstd * invstd);
          }
        }
        if (s.numel() == 0 || (!args.grad_x && !args.grad_residual)) return;
        if (simd) return simd_inputs(isa, args, terms);
        stream(s, args.threads, 0, [&](const ChannelRun& run, double*, int64_t at, int64_t count) {
          const int64_t c = run.channel;
          backward_inputs_batch<D, decltype(grad_x)::value, decltype(grad_residual)::value>(
              args, args.save_mean[c], mean_dz[c], k[c], w_invstd[c], at, count);
        });
      },
      args.dtype, args.residual != nullptr, args.grad_x != nullptr, args.grad_residual != nullptr);
}

}  // namespace batchnorm_noisy_quant
}  // namespace na
