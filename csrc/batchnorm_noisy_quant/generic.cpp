// batchnorm_noisy_quant's kernels: one channel per work item; within it the runs of `inner`
// elements, one per batch entry, in batches of kNoiseBatch elements whose loops the compiler
// vectorises (compiled for AVX2 and the baseline). Float32 sums over a batch, float64 across.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "batchnorm_noisy_quant/batchnorm_noisy_quant.h"
#include "common/dispatch.h"
#include "common/float_convert.h"
#include "common/lanes.h"
#include "common/parallel.h"
#include "noise/noise.h"
#include "noisy_quant/noisy_quant.h"

namespace na {
namespace batchnorm_noisy_quant {
namespace {

using L = ScalarLanes;
using noisy_quant::ChannelConstants;
using noisy_quant::dequantize;
using noisy_quant::lam_gradient;
using noisy_quant::passes;
using noisy_quant::quantize_raw;

// the value a stored element of D holds: float32 rounded to D
template <DType D> inline float round_to(float v) {
  if (D == DType::FLOAT32) return v;
  StorageType<D> stored;
  Storage<D>::store(&stored, 0, v);
  return Storage<D>::load(&stored, 0);
}

// body(first flat index, index within the channel, count) for the batches of channel c
template <class Body> inline void for_each_batch(const Shape& s, int64_t c, Body&& body) {
  for (int64_t n = 0; n < s.batch; ++n) {
    const int64_t run = (n * s.channels + c) * s.inner;
    for (int64_t j = 0; j < s.inner; j += kNoiseBatch)
      body(run + j, n * s.inner + j, std::min(kNoiseBatch, s.inner - j));
  }
}

// the channel's mean and sum of squared deviations, both passes in float64 (ATen's CPU batch
// norm takes its statistics from float64 var_mean: the float32 mean and invstd then agree)
template <DType D>
NA_TARGET_CLONES void channel_moments(const ForwardArgs& args, int64_t c, double& mean, double& var_sum) {
  const auto* x = static_cast<const StorageType<D>*>(args.x);
  double sum = 0.0;
  for_each_batch(args.shape, c, [&](int64_t at, int64_t, int64_t count) {
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < count; ++j) sum += static_cast<double>(Storage<D>::load(x, at + j));
  });
  mean = sum / static_cast<double>(args.shape.per_channel());
  const double m = mean;
  double squares = 0.0;
  for_each_batch(args.shape, c, [&](int64_t at, int64_t, int64_t count) {
#pragma omp simd reduction(+ : squares)
    for (int64_t j = 0; j < count; ++j) {
      const double d = static_cast<double>(Storage<D>::load(x, at + j)) - m;
      squares += d * d;
    }
  });
  var_sum = squares;
}

// the statistics of channel c: save_mean/save_invstd, the running ones updated, and (alpha, beta)
template <DType D> void channel_statistics(const ForwardArgs& args, int64_t c, float& alpha, float& beta) {
  float mean32, invstd;
  if (args.batch_stats) {
    double mean, var_sum;
    channel_moments<D>(args, c, mean, var_sum);
    mean32 = static_cast<float>(mean);
    const double n = static_cast<double>(args.shape.per_channel());
    // as ATen: the biased variance rounded to float32, invstd from it in float64
    const float var = static_cast<float>(var_sum / n);
    invstd = static_cast<float>(1.0 / std::sqrt(static_cast<double>(var) + args.eps));
    if (args.running_mean) {  // as F.batch_norm: momentum * batch + (1 - momentum) * running, in float32
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
  alpha = invstd * args.weight[c];
  beta = args.bias[c] - mean32 * alpha;
}

// z of one element: batch_norm(x) (+ residual), each result rounded to D as the unfused ops store it
template <DType D, bool RESIDUAL>
inline float normalized(const StorageType<D>* x, const StorageType<D>* residual, int64_t i, float alpha, float beta) {
  float z = round_to<D>(Storage<D>::load(x, i) * alpha + beta);
  if (RESIDUAL) z = round_to<D>(z + Storage<D>::load(residual, i));
  return z;
}

inline void set_bits(uint8_t* mask, int64_t first, const uint8_t* inside, int64_t count) {
  if ((first & 7) == 0) {
    int64_t j = 0;
    for (; j + 8 <= count; j += 8) {
      uint8_t byte = 0;
      for (int b = 0; b < 8; ++b) byte |= static_cast<uint8_t>(inside[j + b] << b);
      mask[(first + j) >> 3] = byte;
    }
    for (; j < count; ++j) mask[(first + j) >> 3] |= static_cast<uint8_t>(inside[j] << ((first + j) & 7));
    return;
  }
  for (int64_t j = 0; j < count; ++j) mask[(first + j) >> 3] |= static_cast<uint8_t>(inside[j] << ((first + j) & 7));
}

template <DType D, Noise NOISE, bool RESIDUAL>
NA_TARGET_CLONES void forward_channel(const ForwardArgs& args, int64_t c) {
  using S = Storage<D>;
  const Quantizer& q = args.quantizer;
  const auto* x = static_cast<const StorageType<D>*>(args.x);
  const auto* residual = static_cast<const StorageType<D>*>(args.residual);
  auto* y = static_cast<StorageType<D>*>(args.y);
  uint8_t* mask = args.mask ? args.mask + c * args.shape.mask_bytes() : nullptr;
  if (mask) std::memset(mask, 0, static_cast<size_t>(args.shape.mask_bytes()));
  float alpha, beta;
  channel_statistics<D>(args, c, alpha, beta);
  noisy_quant::Quantizer nq{};
  nq.lam = args.lam;
  nq.p = q.p;
  nq.scale = q.scale;
  nq.shift = q.shift;
  const ChannelConstants<L> constants(nq, c);
  float eps[kNoiseBatch] = {};
  uint8_t inside[kNoiseBatch];
  for_each_batch(args.shape, c, [&](int64_t at, int64_t k, int64_t count) {
    if (NOISE != Noise::NONE) scaled_noise_batch(NOISE, q.seed, q.scale, static_cast<uint64_t>(at), count, eps);
    for (int64_t j = 0; j < count; ++j) {
      const float z = normalized<D, RESIDUAL>(x, residual, at + j, alpha, beta);
      const float q_raw = quantize_raw<L, NOISE>(z, eps[j], constants);
      S::store(y, at + j, dequantize<L>(q_raw, constants));
      inside[j] = passes<L>(q_raw, constants);
    }
    if (mask) set_bits(mask, k, inside, count);
  });
}

template <DType D, bool RESIDUAL, bool BATCH_STATS>
NA_TARGET_CLONES void backward_channel(const BackwardArgs& args, int64_t c) {
  using S = Storage<D>;
  using T = StorageType<D>;
  const auto* grad_y = static_cast<const T*>(args.grad_y);
  const auto* x = static_cast<const T*>(args.x);
  const auto* residual = static_cast<const T*>(args.residual);
  const auto* y = static_cast<const T*>(args.y);
  auto* grad_x = static_cast<T*>(args.grad_x);
  auto* grad_residual = static_cast<T*>(args.grad_residual);
  const uint8_t* mask = args.mask + c * args.shape.mask_bytes();
  const float mean = args.save_mean[c], invstd = args.save_invstd[c];
  const float alpha = invstd * args.weight[c], beta = args.bias[c] - mean * alpha;
  noisy_quant::Quantizer nq{};
  nq.lam = args.lam;
  nq.p = args.p;
  const ChannelConstants<L> constants(nq, c);
  const float lam = args.lam[c];
  // pass 1: dz = grad_y where the gradient passes; the three per-channel sums
  double sum_dz = 0.0, sum_dz_xc = 0.0, sum_lam = 0.0;
  for_each_batch(args.shape, c, [&](int64_t at, int64_t k, int64_t count) {
    float b_dz = 0.0f, b_dz_xc = 0.0f, b_lam = 0.0f;
#pragma omp simd reduction(+ : b_dz, b_dz_xc, b_lam)
    for (int64_t j = 0; j < count; ++j) {
      const int64_t bit = k + j;
      const bool in = (mask[bit >> 3] >> (bit & 7)) & 1;
      const float dy = S::load(grad_y, at + j);
      const float dz = in ? dy : 0.0f;
      const float z = normalized<D, RESIDUAL>(x, residual, at + j, alpha, beta);
      // the level from y (exact: the op's levels are apart by more than y's rounding), and
      // whether an element outside [0, p] was above (y = lam) or below
      const float level = L::floor((S::load(y, at + j) * constants.p) / lam + 0.5f);
      const float q_raw = in ? level : (level == constants.p ? constants.p + 1.0f : -1.0f);
      b_dz += dz;
      b_dz_xc += dz * (S::load(x, at + j) - mean);
      b_lam += dy * lam_gradient<L>(q_raw, z, in, constants);
    }
    sum_dz += b_dz;
    sum_dz_xc += b_dz_xc;
    sum_lam += b_lam;
  });
  args.sums[3 * c] = sum_dz;
  args.sums[3 * c + 1] = sum_dz_xc;
  args.sums[3 * c + 2] = sum_lam;
  // pass 2: grad_x (BatchNorm's backward, as ATen writes it) and the residual's gradient dz
  const double n = static_cast<double>(args.shape.per_channel());
  const float mean_dz = BATCH_STATS ? static_cast<float>(sum_dz / n) : 0.0f;
  const float k_c = BATCH_STATS ? static_cast<float>(sum_dz_xc / n * invstd * invstd) : 0.0f;
  const float w_invstd = invstd * args.weight[c];
  for_each_batch(args.shape, c, [&](int64_t at, int64_t k, int64_t count) {
    for (int64_t j = 0; j < count; ++j) {
      const int64_t bit = k + j;
      const bool in = (mask[bit >> 3] >> (bit & 7)) & 1;
      if (grad_residual) grad_residual[at + j] = in ? grad_y[at + j] : T(0);
      if (grad_x) {
        const float dz = in ? S::load(grad_y, at + j) : 0.0f;
        S::store(grad_x, at + j, ((dz - mean_dz) - (S::load(x, at + j) - mean) * k_c) * w_invstd);
      }
    }
  });
}

}  // namespace

void forward_generic(const ForwardArgs& args) {
  dispatch(
      [&](auto dtype, auto noise, auto residual) {
        for_each_work_item(args.shape.channels, 1, args.threads, [&](const WorkItem& item) {
          forward_channel<decltype(dtype)::value, decltype(noise)::value, decltype(residual)::value>(args, item.begin);
        });
      },
      args.quantizer.dtype, args.quantizer.noise, args.residual != nullptr);
}

void backward_generic(const BackwardArgs& args) {
  dispatch(
      [&](auto dtype, auto residual, auto batch_stats) {
        for_each_work_item(args.shape.channels, 1, args.threads, [&](const WorkItem& item) {
          backward_channel<decltype(dtype)::value, decltype(residual)::value, decltype(batch_stats)::value>(
              args, item.begin);
        });
      },
      args.dtype, args.residual != nullptr, args.batch_stats);
}

}  // namespace batchnorm_noisy_quant
}  // namespace na
