// batchnorm_noisy_quant on the CPU: BatchNorm (batch or running statistics) and noisy_quant
// in one op, for x contiguous [batch, channels, inner]. Per element of channel c, in float32:
//   z     = x * alpha[c] + beta[c]        alpha = invstd * weight, beta = bias - mean * alpha
//   z     = z + residual                  (when there is one; each sum rounded to x's dtype)
//   q_raw = floor((z * p) / lam[c] + scale * eps + shift),  y = (clamp(q_raw, 0, p) / p) * lam[c]
// with eps the noise of noisy_quant on the element's flat index (noise/noise.h), so y equals
// noisy_quant(batch_norm(x) + residual) with the same seed. Forward also writes one bit per
// element, [0 <= q_raw <= p], bit i % 8 of byte i / 8 for flat index i: backward reads the
// straight-through mask there and the level from y, and never regenerates the noise.
#pragma once
#include <cstdint>

#include "common/spec.h"

namespace na {
namespace batchnorm_noisy_quant {

struct Shape {
  int64_t batch, channels, inner;
  int64_t numel() const { return batch * channels * inner; }
  int64_t per_channel() const { return batch * inner; }
  int64_t mask_bytes() const { return (numel() + 7) / 8; }
};

struct Quantizer {
  DType dtype;
  Noise noise;
  uint64_t seed;
  float p, scale, shift;
};

struct ForwardArgs {
  Shape shape;
  Quantizer quantizer;
  bool batch_stats;  // statistics of this batch (training) or the running ones
  double momentum, eps;
  const void* x;
  const void* residual;  // x's shape and dtype, or null
  const float *weight, *bias, *lam;  // [channels] each
  const float *running_mean, *running_var;  // [channels], or null (only with batch_stats)
  float *new_running_mean, *new_running_var;  // [channels], written when running_mean is given
  float *save_mean, *save_invstd;  // [channels]
  void* y;
  uint8_t* mask;  // mask_bytes() bytes of bits, or null
  int threads;
};

struct BackwardArgs {
  Shape shape;
  DType dtype;
  float p;
  bool batch_stats;
  const void *grad_y, *x, *residual, *y;  // residual may be null
  const uint8_t* mask;
  const float *save_mean, *save_invstd, *weight, *bias, *lam;
  void* grad_x;  // or null
  void* grad_residual;  // or null
  float* grads;  // [3][channels]: grad_weight = sum dz (x - mean) invstd, grad_bias = sum dz,
                 // grad_lam = sum grad_y dy/dlam (float64 sums, rounded)
  int threads;
};

// per channel, from this batch's float64 sums of x and of (x - mean)^2 (read only when
// batch_stats) or the running statistics: save_mean, save_invstd, the new running statistics,
// alpha and beta (the formulas above; both memory orders)
void channel_terms(const ForwardArgs& args, const double* mean, const double* var_sum, float* alpha, float* beta);

void forward_generic(const ForwardArgs& args);
void backward_generic(const BackwardArgs& args);
// the same for channels-last float32 tensors, memory order [batch][inner][channels]; the mask's
// bit i is then the i-th element in that order (channels_last.cpp)
void forward_channels_last(const ForwardArgs& args);
void backward_channels_last(const BackwardArgs& args);

}  // namespace batchnorm_noisy_quant
}  // namespace na
