// noisy_quant on the CPU: forward and straight-through backward, one pass each.
// Per element, in float32 and in the reference's order (na_kernels/reference/noisy_quant.py):
//   z = x * inv_step[c] (+ scale * eps);  q_raw = floor(z + shift);  q = clamp(q_raw, 0, p)
//   y = (q / p) * lam[c]
// with c = (i / inner) % channels (channels == 1 for a scalar lam) and eps a pure function of
// (seed, i). Backward regenerates eps from the seed.
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "float_convert.h"
#include "parallel.h"
#include "philox.h"

namespace na {
namespace {

enum NoiseKind : int { kNoNoise = 0, kUniform = 1, kGaussian = 2 };

struct QuantParams {
  int64_t n, inner, channels;
  const float* lam;       // per channel
  const float* inv_step;  // p / lam per channel, IEEE division as in the reference
  uint64_t seed;
  float p, scale, shift;
  int noise;
};

inline float shifted_z(const QuantParams& k, float x, float inv_step, int64_t i) {
  float z = x * inv_step;
  if (k.noise == kUniform) {
    z = z + k.scale * (philox_uniform(k.seed, static_cast<uint64_t>(i)) - 0.5f);
  } else if (k.noise == kGaussian) {
    z = z + k.scale * philox_normal(k.seed, static_cast<uint64_t>(i));
  }
  return z + k.shift;
}

// Runs body(i, c) for i in [begin, end) with c the channel of element i.
template <typename Body>
inline void for_each_element(const QuantParams& k, int64_t begin, int64_t end, Body&& body) {
  if (k.channels == 1) {
    for (int64_t i = begin; i < end; ++i) body(i, 0);
    return;
  }
  int64_t row = begin / k.inner, position = begin % k.inner, c = row % k.channels;
  for (int64_t i = begin; i < end; ++i) {
    body(i, c);
    if (++position == k.inner) {
      position = 0;
      if (++c == k.channels) c = 0;
    }
  }
}

template <int D>
void forward_impl(const QuantParams& k, const void* x_ptr, void* y_ptr, int threads) {
  using S = Storage<D>;
  const auto* x = static_cast<const typename S::type*>(x_ptr);
  auto* y = static_cast<typename S::type*>(y_ptr);
  const int64_t chunks = chunk_count(k.n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t begin = chunk * kChunk, end = begin + kChunk < k.n ? begin + kChunk : k.n;
    for_each_element(k, begin, end, [&](int64_t i, int64_t c) {
      const float q_raw = std::floor(shifted_z(k, S::load(x, i), k.inv_step[c], i));
      const float q = q_raw < 0.0f ? 0.0f : (q_raw > k.p ? k.p : q_raw);  // NaN stays NaN
      S::store(y, i, (q / k.p) * k.lam[c]);
    });
  }
}

template <int D>
void backward_impl(const QuantParams& k, const void* grad_y_ptr, const void* x_ptr, void* grad_x_ptr,
                   double* grad_lam, int threads) {
  using S = Storage<D>;
  const auto* grad_y = static_cast<const typename S::type*>(grad_y_ptr);
  const auto* x = static_cast<const typename S::type*>(x_ptr);
  auto* grad_x = static_cast<typename S::type*>(grad_x_ptr);
  const int64_t chunks = chunk_count(k.n);
  std::vector<double> partial(grad_lam ? static_cast<size_t>(threads * k.channels) : 0, 0.0);
#pragma omp parallel num_threads(threads)
  {
    double* mine = grad_lam ? partial.data() + thread_index() * k.channels : nullptr;
#pragma omp for schedule(static)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t begin = chunk * kChunk, end = begin + kChunk < k.n ? begin + kChunk : k.n;
      for_each_element(k, begin, end, [&](int64_t i, int64_t c) {
        const float xi = S::load(x, i);
        const float q_raw = std::floor(shifted_z(k, xi, k.inv_step[c], i));
        const bool inside = q_raw >= 0.0f && q_raw <= k.p;
        const float gy = S::load(grad_y, i);
        S::store(grad_x, i, inside ? gy : 0.0f);
        if (mine) {
          const float g = inside ? q_raw / k.p - xi / k.lam[c] : (q_raw > k.p ? 1.0f : 0.0f);
          mine[c] += static_cast<double>(gy * g);
        }
      });
    }
  }
  if (grad_lam) {
    for (int64_t c = 0; c < k.channels; ++c) grad_lam[c] = 0.0;
    for (int t = 0; t < threads; ++t)
      for (int64_t c = 0; c < k.channels; ++c) grad_lam[c] += partial[t * k.channels + c];
  }
}

// `inv_step` is storage for the per-channel p / lam; it must outlive the returned params.
QuantParams make_params(int64_t n, int64_t inner, int64_t channels, uintptr_t lam_address, uint64_t seed,
                        int64_t p, int noise, float scale, float shift, std::vector<float>& inv_step) {
  if (n < 0 || inner < 1 || channels < 1 || p < 1 || noise < kNoNoise || noise > kGaussian)
    throw std::invalid_argument("na_kernels: bad noisy_quant arguments");
  const float* lam = reinterpret_cast<const float*>(lam_address);
  const float p_float = static_cast<float>(p);
  inv_step.resize(static_cast<size_t>(channels));
  for (int64_t c = 0; c < channels; ++c) inv_step[c] = p_float / lam[c];
  return QuantParams{n, inner, channels, lam, inv_step.data(), seed, p_float, scale, shift, noise};
}

void noisy_quant_forward(uintptr_t x, uintptr_t y, int dtype, int64_t n, int64_t inner, int64_t channels,
                         uintptr_t lam, uint64_t seed, int64_t p, int noise, float scale, float shift,
                         int threads) {
  std::vector<float> inv_step;
  const QuantParams k = make_params(n, inner, channels, lam, seed, p, noise, scale, shift, inv_step);
  const void* xp = reinterpret_cast<const void*>(x);
  void* yp = reinterpret_cast<void*>(y);
  switch (dtype) {
    case kFloat32: forward_impl<kFloat32>(k, xp, yp, threads); break;
    case kFloat16: forward_impl<kFloat16>(k, xp, yp, threads); break;
    case kBFloat16: forward_impl<kBFloat16>(k, xp, yp, threads); break;
    default: throw std::invalid_argument("na_kernels: unsupported dtype code");
  }
}

// grad_lam: address of `channels` float64 sums, or 0 to skip the lam gradient.
void noisy_quant_backward(uintptr_t grad_y, uintptr_t x, uintptr_t grad_x, int dtype, int64_t n, int64_t inner,
                          int64_t channels, uintptr_t lam, uint64_t seed, int64_t p, int noise, float scale,
                          float shift, uintptr_t grad_lam, int threads) {
  std::vector<float> inv_step;
  const QuantParams k = make_params(n, inner, channels, lam, seed, p, noise, scale, shift, inv_step);
  const void* gyp = reinterpret_cast<const void*>(grad_y);
  const void* xp = reinterpret_cast<const void*>(x);
  void* gxp = reinterpret_cast<void*>(grad_x);
  double* glp = reinterpret_cast<double*>(grad_lam);
  switch (dtype) {
    case kFloat32: backward_impl<kFloat32>(k, gyp, xp, gxp, glp, threads); break;
    case kFloat16: backward_impl<kFloat16>(k, gyp, xp, gxp, glp, threads); break;
    case kBFloat16: backward_impl<kBFloat16>(k, gyp, xp, gxp, glp, threads); break;
    default: throw std::invalid_argument("na_kernels: unsupported dtype code");
  }
}

}  // namespace

void bind_noisy_quant(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("noisy_quant_forward", &noisy_quant_forward, py::call_guard<py::gil_scoped_release>(),
        "noisy_quant forward on raw pointers (see csrc/noisy_quant.cpp)");
  m.def("noisy_quant_backward", &noisy_quant_backward, py::call_guard<py::gil_scoped_release>(),
        "noisy_quant straight-through backward on raw pointers");
}

}  // namespace na
