// noisy_quant on the CPU: forward and straight-through backward, one pass each.
// Per element, in float32 and in the reference's order (na_kernels/reference/noisy_quant.py):
//   z = x * inv_step[c] (+ scale * eps);  q_raw = floor(z + shift);  q = clamp(q_raw, 0, p)
//   y = (q / p) * lam[c]
// with inv_step = p / lam, c = (i / inner) % channels (channels == 1 for a scalar lam) and eps
// a pure function of (seed, i). Backward regenerates eps from the seed.
// Work is split into chunks (OpenMP), chunks into segments of one channel. Where the CPU has
// AVX-512, segments run sixteen lanes at a time with the noise of 32 offsets made in
// registers; otherwise in batches whose Philox words are generated together (AVX2 where
// available) by loops the compiler vectorises.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "avx512.h"
#include "float_convert.h"
#include "noise.h"
#include "parallel.h"
#include "philox.h"

namespace na {
namespace {

constexpr int64_t kBatch = kNoiseBatch;

struct QuantParams {
  int64_t n, inner, channels;
  const float* lam;       // per channel
  const float* inv_step;  // p / lam per channel, IEEE division as in the reference
  uint64_t seed;
  float p, scale, shift;
  int noise;
};

// floor() that vectorises without SSE4.1; exact for every float, including -0.0, inf and NaN.
inline float floor_exact(float z) {
  float t = static_cast<float>(static_cast<int32_t>(z));
  t = t > z ? t - 1.0f : t;
  t = std::copysign(t, z);
  return std::fabs(z) < 8388608.0f ? t : z;  // |z| >= 2^23 (or inf, NaN) is already integral
}

// The segment of one channel that starts at `begin`: its end (at most `end`) and channel.
inline int64_t segment_end(const QuantParams& k, int64_t begin, int64_t end, int64_t& channel) {
  if (k.channels == 1) {
    channel = 0;
    return end;
  }
  const int64_t row = begin / k.inner;
  channel = row % k.channels;
  return std::min(end, (row + 1) * k.inner);
}

#ifdef NA_HAVE_AVX512
// The same arithmetic, sixteen lanes at a time, with the noise of 32 offsets made in
// registers (noise.h) instead of a buffer.

// AVX-512 pays where segments are long: a scalar lam, or per-channel rows of 64 and more
inline bool use_avx512(const QuantParams& k) { return cpu_has_avx512() && (k.channels == 1 || k.inner >= 64); }

struct QuantVectors {
  __m512 inv_step, lam, p, shift, scale;
};

NA_AVX512 inline QuantVectors quant_vectors(const QuantParams& k, int64_t c) {
  return {_mm512_set1_ps(k.inv_step[c]), _mm512_set1_ps(k.lam[c]), _mm512_set1_ps(k.p), _mm512_set1_ps(k.shift),
          _mm512_set1_ps(k.scale)};
}

// q_raw = floor(x * inv_step (+ eps) + shift)
template <int NOISE>
NA_AVX512 inline __m512 quant_raw(__m512 x, __m512 eps, const QuantVectors& v) {
  __m512 z = _mm512_mul_ps(x, v.inv_step);
  if (NOISE != kNoNoise) z = _mm512_add_ps(z, eps);
  return _mm512_roundscale_ps(_mm512_add_ps(z, v.shift), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
}

NA_AVX512 inline __mmask16 lanes_left(int64_t count) { return count <= 0 ? 0 : first_lanes(count); }

template <int D, int NOISE>
NA_AVX512 void forward_segment_avx512(const QuantParams& k, const PhiloxKeysAvx512& keys,
                                      const typename Avx512Storage<D>::type* x, typename Avx512Storage<D>::type* y,
                                      int64_t begin, int64_t end, int64_t c) {
  using S = Avx512Storage<D>;
  const QuantVectors v = quant_vectors(k, c);
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t s = begin; s < end; s += 32) {
    __m512 eps[2];
    scaled_noise32_avx512<NOISE>(keys, static_cast<uint64_t>(s), v.scale, eps);
    for (int half = 0; half < 2; ++half) {
      const int64_t at = s + 16 * half;
      const __mmask16 m = lanes_left(end - at);
      const __m512 q_raw = quant_raw<NOISE>(S::load(x + at, m), eps[half], v);
      // q_raw < 0 ? 0 : (q_raw > p ? p : q_raw); NaN stays NaN
      __m512 q = _mm512_mask_mov_ps(q_raw, _mm512_cmp_ps_mask(q_raw, zero, _CMP_LT_OQ), zero);
      q = _mm512_mask_mov_ps(q, _mm512_cmp_ps_mask(q_raw, v.p, _CMP_GT_OQ), v.p);
      S::store(y + at, m, _mm512_mul_ps(_mm512_div_ps(q, v.p), v.lam));
    }
  }
}

template <int D, int NOISE>
NA_AVX512 void forward_avx512(const QuantParams& k, const void* x_ptr, void* y_ptr, int threads) {
  using S = Avx512Storage<D>;
  const auto* x = static_cast<const typename S::type*>(x_ptr);
  auto* y = static_cast<typename S::type*>(y_ptr);
  const int64_t chunks = chunk_count(k.n);
#pragma omp parallel num_threads(threads)
  {
    const PhiloxKeysAvx512 keys = philox_keys_avx512(k.seed);
#pragma omp for schedule(static)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t chunk_end = std::min(k.n, (chunk + 1) * kChunk);
      for (int64_t begin = chunk * kChunk, c = 0, end; begin < chunk_end; begin = end) {
        end = segment_end(k, begin, chunk_end, c);
        forward_segment_avx512<D, NOISE>(k, keys, x, y, begin, end, c);
      }
    }
  }
}

NA_AVX512 inline double sum_as_double(__m512 values) {
  return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(values)),
                                            _mm512_cvtps_pd(_mm512_extractf32x8_ps(values, 1))));
}

// Returns the segment's grad_lam contribution (0 when !with_grad_lam): float vectors over 256
// elements, then float64.
template <int D, int NOISE>
NA_AVX512 double backward_segment_avx512(const QuantParams& k, const PhiloxKeysAvx512& keys,
                                         const typename Avx512Storage<D>::type* grad_y,
                                         const typename Avx512Storage<D>::type* x,
                                         typename Avx512Storage<D>::type* grad_x, bool with_grad_lam,
                                         int64_t begin, int64_t end, int64_t c) {
  using S = Avx512Storage<D>;
  const QuantVectors v = quant_vectors(k, c);
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
  __m512 batch_sum = zero;
  double sum = 0.0;
  for (int64_t s = begin; s < end; s += 32) {
    __m512 eps[2];
    scaled_noise32_avx512<NOISE>(keys, static_cast<uint64_t>(s), v.scale, eps);
    for (int half = 0; half < 2; ++half) {
      const int64_t at = s + 16 * half;
      const __mmask16 m = lanes_left(end - at);
      const __m512 xi = S::load(x + at, m);
      const __m512 q_raw = quant_raw<NOISE>(xi, eps[half], v);
      const __mmask16 above = _mm512_cmp_ps_mask(q_raw, v.p, _CMP_GT_OQ);
      const __mmask16 inside =
          _mm512_cmp_ps_mask(q_raw, zero, _CMP_GE_OQ) & _mm512_cmp_ps_mask(q_raw, v.p, _CMP_LE_OQ);
      S::copy_or_zero(grad_y + at, grad_x + at, m, inside);  // grad_y or zero, as stored bits
      if (with_grad_lam) {
        // g = inside ? q_raw / p - x / lam : (q_raw > p ? 1 : 0)
        const __m512 g_inside = _mm512_sub_ps(_mm512_div_ps(q_raw, v.p), _mm512_div_ps(xi, v.lam));
        const __m512 g = _mm512_mask_mov_ps(_mm512_maskz_mov_ps(above, one), inside, g_inside);
        batch_sum = _mm512_add_ps(batch_sum, _mm512_maskz_mul_ps(m, S::load(grad_y + at, m), g));
      }
    }
    if (with_grad_lam && ((s - begin) & 255) == 224) {
      sum += sum_as_double(batch_sum);
      batch_sum = zero;
    }
  }
  return with_grad_lam ? sum + sum_as_double(batch_sum) : 0.0;
}

template <int D, int NOISE>
NA_AVX512 void backward_avx512(const QuantParams& k, const void* grad_y_ptr, const void* x_ptr, void* grad_x_ptr,
                               double* partial, int threads) {
  using S = Avx512Storage<D>;
  const auto* grad_y = static_cast<const typename S::type*>(grad_y_ptr);
  const auto* x = static_cast<const typename S::type*>(x_ptr);
  auto* grad_x = static_cast<typename S::type*>(grad_x_ptr);
  const int64_t chunks = chunk_count(k.n);
#pragma omp parallel num_threads(threads)
  {
    const PhiloxKeysAvx512 keys = philox_keys_avx512(k.seed);
    double* mine = partial ? partial + thread_index() * k.channels : nullptr;
#pragma omp for schedule(static)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t chunk_end = std::min(k.n, (chunk + 1) * kChunk);
      for (int64_t begin = chunk * kChunk, c = 0, end; begin < chunk_end; begin = end) {
        end = segment_end(k, begin, chunk_end, c);
        const double sum = backward_segment_avx512<D, NOISE>(k, keys, grad_y, x, grad_x, mine != nullptr, begin, end, c);
        if (mine) mine[c] += sum;
      }
    }
  }
}
#endif

template <int D, int NOISE>
NA_TARGET_CLONES void forward_impl(const QuantParams& k, const void* x_ptr, void* y_ptr, int threads) {
  using S = Storage<D>;
  const auto* x = static_cast<const typename S::type*>(x_ptr);
  auto* y = static_cast<typename S::type*>(y_ptr);
  const int64_t chunks = chunk_count(k.n);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t chunk_end = std::min(k.n, (chunk + 1) * kChunk);
    for (int64_t begin = chunk * kChunk, c = 0, end; begin < chunk_end; begin = end) {
        end = segment_end(k, begin, chunk_end, c);
      const float inv_step = k.inv_step[c], lam = k.lam[c], p = k.p, shift = k.shift;
      float eps[kBatch];
      for (int64_t s = begin; s < end; s += kBatch) {
        const int64_t count = std::min(kBatch, end - s);
        if (NOISE != kNoNoise) scaled_noise_batch(NOISE, k.seed, k.scale, static_cast<uint64_t>(s), count, eps);
        for (int64_t j = 0; j < count; ++j) {
          float z = S::load(x, s + j) * inv_step;
          if (NOISE != kNoNoise) z = z + eps[j];
          const float q_raw = floor_exact(z + shift);
          const float q = q_raw < 0.0f ? 0.0f : (q_raw > p ? p : q_raw);  // NaN stays NaN
          S::store(y, s + j, (q / p) * lam);
        }
      }
    }
  }
}

// partial: threads x channels float64 sums of grad_lam, or null to skip the lam gradient
template <int D, int NOISE>
NA_TARGET_CLONES void backward_impl(const QuantParams& k, const void* grad_y_ptr, const void* x_ptr, void* grad_x_ptr,
                                    double* partial, int threads) {
  using S = Storage<D>;
  const auto* grad_y = static_cast<const typename S::type*>(grad_y_ptr);
  const auto* x = static_cast<const typename S::type*>(x_ptr);
  auto* grad_x = static_cast<typename S::type*>(grad_x_ptr);
  const int64_t chunks = chunk_count(k.n);
#pragma omp parallel num_threads(threads)
  {
    double* mine = partial ? partial + thread_index() * k.channels : nullptr;
#pragma omp for schedule(static)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t chunk_end = std::min(k.n, (chunk + 1) * kChunk);
      for (int64_t begin = chunk * kChunk, c = 0, end; begin < chunk_end; begin = end) {
        end = segment_end(k, begin, chunk_end, c);
        const float inv_step = k.inv_step[c], lam = k.lam[c], p = k.p, shift = k.shift;
        float eps[kBatch], contribution[kBatch];
        double sum = 0.0;
        for (int64_t s = begin; s < end; s += kBatch) {
          const int64_t count = std::min(kBatch, end - s);
          if (NOISE != kNoNoise) scaled_noise_batch(NOISE, k.seed, k.scale, static_cast<uint64_t>(s), count, eps);
          for (int64_t j = 0; j < count; ++j) {  // branch-free so it vectorises
            const float xi = S::load(x, s + j);
            float z = xi * inv_step;
            if (NOISE != kNoNoise) z = z + eps[j];
            const float q_raw = floor_exact(z + shift);
            const bool inside = q_raw >= 0.0f && q_raw <= p;
            const float gy = S::load(grad_y, s + j);
            // grad_y or zero, as stored bits: no float -> 16-bit conversion needed
            grad_x[s + j] = inside ? grad_y[s + j] : typename S::type(0);
            const float g = inside ? q_raw / p - xi / lam : (q_raw > p ? 1.0f : 0.0f);
            contribution[j] = gy * g;
          }
          if (mine) {
            // float sum per batch (vectorised, reassociated), float64 across batches
            float batch_sum = 0.0f;
#pragma omp simd reduction(+ : batch_sum)
            for (int64_t j = 0; j < count; ++j) batch_sum += contribution[j];
            sum += static_cast<double>(batch_sum);
          }
        }
        if (mine) mine[c] += sum;
      }
    }
  }
}

// Calls body(dtype tag, noise tag) with std::integral_constant tags for the runtime codes.
template <typename Body>
void dispatch(int dtype, int noise, Body&& body) {
  auto with_noise = [&](auto dtype_tag) {
    switch (noise) {
      case kNoNoise: body(dtype_tag, std::integral_constant<int, kNoNoise>{}); break;
      case kUniform: body(dtype_tag, std::integral_constant<int, kUniform>{}); break;
      case kGaussian: body(dtype_tag, std::integral_constant<int, kGaussian>{}); break;
      default: throw std::invalid_argument("na_kernels: unsupported noise code");
    }
  };
  switch (dtype) {
    case kFloat32: with_noise(std::integral_constant<int, kFloat32>{}); break;
    case kFloat16: with_noise(std::integral_constant<int, kFloat16>{}); break;
    case kBFloat16: with_noise(std::integral_constant<int, kBFloat16>{}); break;
    default: throw std::invalid_argument("na_kernels: unsupported dtype code");
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
  dispatch(dtype, noise, [&](auto dtype_tag, auto noise_tag) {
    constexpr int D = decltype(dtype_tag)::value, NOISE = decltype(noise_tag)::value;
#ifdef NA_HAVE_AVX512
    if (use_avx512(k)) return forward_avx512<D, NOISE>(k, xp, yp, threads);
#endif
    forward_impl<D, NOISE>(k, xp, yp, threads);
  });
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
  std::vector<double> partial(glp ? static_cast<size_t>(threads * channels) : 0, 0.0);
  double* partial_ptr = glp ? partial.data() : nullptr;
  dispatch(dtype, noise, [&](auto dtype_tag, auto noise_tag) {
    constexpr int D = decltype(dtype_tag)::value, NOISE = decltype(noise_tag)::value;
#ifdef NA_HAVE_AVX512
    if (use_avx512(k))
      return backward_avx512<D, NOISE>(k, gyp, xp, gxp, partial_ptr, threads);
#endif
    backward_impl<D, NOISE>(k, gyp, xp, gxp, partial_ptr, threads);
  });
  if (glp) {  // the threads' partial sums, in thread order
    for (int64_t c = 0; c < channels; ++c) glp[c] = 0.0;
    for (int t = 0; t < threads; ++t)
      for (int64_t c = 0; c < channels; ++c) glp[c] += partial[t * channels + c];
  }
}

}  // namespace

void bind_noisy_quant(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("noisy_quant_forward", &noisy_quant_forward, py::call_guard<py::gil_scoped_release>(),
        py::kw_only(), py::arg("x"), py::arg("y"), py::arg("dtype"), py::arg("numel"), py::arg("channel_stride"), py::arg("channels"), py::arg("lam"), py::arg("seed"), py::arg("p"), py::arg("noise"), py::arg("scale"), py::arg("shift"), py::arg("threads"),
        "noisy_quant forward on raw pointers (see csrc/noisy_quant.cpp)");
  m.def("noisy_quant_backward", &noisy_quant_backward, py::call_guard<py::gil_scoped_release>(),
        py::kw_only(), py::arg("grad_y"), py::arg("x"), py::arg("grad_x"), py::arg("dtype"), py::arg("numel"), py::arg("channel_stride"), py::arg("channels"), py::arg("lam"), py::arg("seed"), py::arg("p"), py::arg("noise"), py::arg("scale"), py::arg("shift"), py::arg("grad_lam"), py::arg("threads"),
        "noisy_quant straight-through backward on raw pointers");
}

}  // namespace na
