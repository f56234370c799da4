// batchnorm_noisy_quant's kernels. Every pass streams x in memory order: work items of
// kWorkItemElements (a multiple of 8, so no two threads share a byte of the mask), split into
// channel runs (noisy_quant::ChannelRuns), and, inside a run, batches of kNoiseBatch elements
// (compiled for AVX2 and the baseline). Per-channel sums are per thread (float64), added in
// thread order. 16-bit elements are computed in float32 and rounded to the dtype where the
// unfused ops store. On AVX2 and AVX-512 CPUs every dtype runs on float32_simd.h's kernels
// instead (the same results; the backward's sums within rounding), these loops only at
// NA_KERNELS_SIMD=generic, without AVX2, or for float16 without F16C.
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
#include "common/parallel.h"
#include "common/simd.h"
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

// which explicit-SIMD kernels run D (float16 needs F16C)
enum class Isa { GENERIC, AVX2, AVX512 };

inline Isa simd_isa(DType d) {
#ifdef NA_X86_SIMD
  if (cpu_has_avx512()) return Isa::AVX512;
  if (cpu_has_avx2() && (d != DType::FLOAT16 || cpu_has_f16c())) return Isa::AVX2;
#endif
  (void)d;
  return Isa::GENERIC;
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
  const double n = static_cast<double>(s.per_channel());
  mean = stream(s, args.threads, 1, [&](const ChannelRun&, double* sum, int64_t at, int64_t count) {
    *sum += batch_sum<D>(x, at, count);
  });
  for (double& m : mean) m /= n;
  var_sum = stream(s, args.threads, 1, [&](const ChannelRun& run, double* sum, int64_t at, int64_t count) {
    *sum += batch_squares<D>(x, at, count, mean[run.channel]);
  });
}

// per channel: the sum of x (mean null), or of (x - mean)^2, on the explicit-SIMD kernels of `isa`
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
  const Isa isa = simd_isa(D);
  std::vector<double> mean(s.channels), var_sum(s.channels);
  if (args.batch_stats) {
    const double n = static_cast<double>(s.per_channel());
    if (isa != Isa::GENERIC) {
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
    for (int64_t j = 0; j < count; ++j) {
      const float dz = inside[j] ? S::load(grad_y, at + j) : 0.0f;
      S::store(grad_x, at + j, ((dz - mean_dz) - (S::load(x, at + j) - mean) * k) * w_invstd);
    }
  }
}

// the backward's passes on the explicit-SIMD kernels of `isa` (float32_simd.h)
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
        const Isa isa = simd_isa(D);
        for_each_work_item(s.numel(), kWorkItemElements, args.threads, [&](const WorkItem& item) {
#ifdef NA_X86_SIMD
          if (isa == Isa::AVX512) return forward_avx512(args, nq, alpha.data(), beta.data(), item);
          if (isa == Isa::AVX2) return forward_avx2(args, nq, alpha.data(), beta.data(), item);
#endif
          for (int64_t at = item.begin; at < item.end; at += kNoiseBatch) {
            const int64_t count = std::min(kNoiseBatch, item.end - at);
            forward_batch<D, decltype(noise)::value, decltype(residual)::value>(args, nq, alpha.data(), beta.data(),
                                                                                at, count);
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
        const Isa isa = simd_isa(D);
        const bool simd = isa != Isa::GENERIC;
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
            backward_batch<D, decltype(residual)::value>(args, sum, args.save_mean[c], alpha[c], beta[c], args.lam[c],
                                                         at, count);
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
