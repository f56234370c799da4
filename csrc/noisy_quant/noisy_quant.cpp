// noisy_quant's entry points: argument checks, the choice of kernel for this CPU, the
// grad_lam reduction over threads, and their Python bindings.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

#include "common/arguments.h"
#include "common/simd.h"
#include "noisy_quant/noisy_quant.h"

namespace na {
namespace noisy_quant {
namespace {

Quantizer make_quantizer(int dtype, int64_t numel, int64_t channel_stride, int64_t channels, uintptr_t lam,
                         uint64_t seed, int64_t p, int noise, float scale, float shift, int threads) {
  const DType storage = member<DType>(dtype, "dtype");
  const Noise kind = member<Noise>(noise, "noise");
  require(numel >= 0, "numel", "must be >= 0");
  require(channel_stride >= 1, "channel_stride", "must be >= 1");
  require(channels >= 1, "channels", "must be >= 1");
  require(p >= 1, "p", "must be >= 1");
  require(threads >= 1, "threads", "must be >= 1");
  require(lam != 0, "lam", "must be the address of `channels` float32");
  const float* lam_per_channel = address_of<const float>(lam);
  return Quantizer{storage, kind, numel, channel_stride, channels, lam_per_channel, seed,
                   static_cast<float>(p), scale, shift, threads};
}

// The explicit-SIMD kernels pay where channel runs are long: a scalar lam, or per-channel rows
// of 64 and more; float16 on AVX2 needs F16C.
enum class Kernel { GENERIC, AVX2, AVX512 };

Kernel kernel_for(const Quantizer& q) {
#ifdef NA_X86_SIMD
  if (q.channels == 1 || q.channel_stride >= 64) {
    if (cpu_has_avx512()) return Kernel::AVX512;
    if (cpu_has_avx2() && (q.dtype != DType::FLOAT16 || cpu_has_f16c())) return Kernel::AVX2;
  }
#endif
  return Kernel::GENERIC;
}

void noisy_quant_forward(uintptr_t x, uintptr_t y, int dtype, int64_t numel, int64_t channel_stride,
                         int64_t channels, uintptr_t lam, uint64_t seed, int64_t p, int noise, float scale,
                         float shift, int threads) {
  const ForwardArgs args{
      make_quantizer(dtype, numel, channel_stride, channels, lam, seed, p, noise, scale, shift, threads),
      address_of<const void>(x), address_of<void>(y)};
  switch (kernel_for(args.quantizer)) {
    case Kernel::AVX512: forward_avx512(args); break;
    case Kernel::AVX2: forward_avx2(args); break;
    default: forward_generic(args);
  }
}

// grad_lam: address of `channels` float64 sums, or 0 to skip the lam gradient.
void noisy_quant_backward(uintptr_t grad_y, uintptr_t x, uintptr_t grad_x, int dtype, int64_t numel,
                          int64_t channel_stride, int64_t channels, uintptr_t lam, uint64_t seed, int64_t p,
                          int noise, float scale, float shift, uintptr_t grad_lam, int threads) {
  const Quantizer q = make_quantizer(dtype, numel, channel_stride, channels, lam, seed, p, noise, scale, shift, threads);
  double* grad_lam_sums = address_of<double>(grad_lam);
  std::vector<double> partial(grad_lam_sums ? static_cast<size_t>(threads * channels) : 0, 0.0);
  const BackwardArgs args{q, address_of<const void>(grad_y), address_of<const void>(x), address_of<void>(grad_x),
                          grad_lam_sums ? partial.data() : nullptr};
  switch (kernel_for(q)) {
    case Kernel::AVX512: backward_avx512(args); break;
    case Kernel::AVX2: backward_avx2(args); break;
    default: backward_generic(args);
  }
  if (grad_lam_sums) {  // the threads' partial sums, in thread order
    for (int64_t c = 0; c < channels; ++c) grad_lam_sums[c] = 0.0;
    for (int t = 0; t < threads; ++t)
      for (int64_t c = 0; c < channels; ++c) grad_lam_sums[c] += partial[t * channels + c];
  }
}

}  // namespace
}  // namespace noisy_quant

void bind_noisy_quant(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("noisy_quant_forward", &noisy_quant::noisy_quant_forward, py::call_guard<py::gil_scoped_release>(),
        py::kw_only(), py::arg("x"), py::arg("y"), py::arg("dtype"), py::arg("numel"), py::arg("channel_stride"),
        py::arg("channels"), py::arg("lam"), py::arg("seed"), py::arg("p"), py::arg("noise"), py::arg("scale"),
        py::arg("shift"), py::arg("threads"), "noisy_quant forward on raw pointers (see csrc/noisy_quant/)");
  m.def("noisy_quant_backward", &noisy_quant::noisy_quant_backward, py::call_guard<py::gil_scoped_release>(),
        py::kw_only(), py::arg("grad_y"), py::arg("x"), py::arg("grad_x"), py::arg("dtype"), py::arg("numel"),
        py::arg("channel_stride"), py::arg("channels"), py::arg("lam"), py::arg("seed"), py::arg("p"),
        py::arg("noise"), py::arg("scale"), py::arg("shift"), py::arg("grad_lam"), py::arg("threads"),
        "noisy_quant straight-through backward on raw pointers");
}

}  // namespace na
