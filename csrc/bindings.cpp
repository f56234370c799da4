// The na_kernels._C module: each op's file registers its functions here.
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "simd_level.h"

namespace na {
void bind_noisy_quant(pybind11::module_& m);
void bind_integrate_fire(pybind11::module_& m);
void bind_philox(pybind11::module_& m);
void bind_float_convert(pybind11::module_& m);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "na_kernels C++ CPU kernels (raw pointers, no torch headers)";
  na::bind_noisy_quant(m);
  na::bind_integrate_fire(m);
  na::bind_philox(m);
  na::bind_float_convert(m);
  m.def("simd_level", &na::simd_level, "explicit-SIMD kernels in use: 0 generic, 1 AVX2, 2 AVX-512");
  m.def("detected_simd_level", &na::detected_simd_level, "the best level this CPU supports");
  m.def("set_simd_limit", [](int level) {
    if (level < na::kSimdGeneric || level > na::kSimdAvx512) throw std::invalid_argument("simd level must be 0, 1 or 2");
    na::simd_limit().store(level);
  }, "cap the explicit-SIMD level (tests run every path on one machine)");
}
