// The na_kernels._C module: each op's file registers its functions here, and the module
// exports the vocabulary (common/spec.h) and the SIMD level (common/simd.h).
#include <pybind11/pybind11.h>

#include "common/arguments.h"
#include "common/simd.h"
#include "common/spec.h"

namespace na {
void bind_noisy_quant(pybind11::module_& m);
void bind_batchnorm_noisy_quant(pybind11::module_& m);
void bind_integrate_fire(pybind11::module_& m);
void bind_noise(pybind11::module_& m);
void bind_float_convert(pybind11::module_& m);
void bind_event_conv(pybind11::module_& m);

namespace {
// {"Noise": {"NONE": 0, ...}, ...}: every enum of common/spec.h by its Python name
pybind11::dict vocabulary() {
  pybind11::dict table;
#define NA_EXPORT_ENUM(Enum, MEMBERS)                                              \
  {                                                                                \
    pybind11::dict members;                                                        \
    for (const Member& m : Vocabulary<Enum>::members) members[m.name] = m.value;   \
    table[Vocabulary<Enum>::name] = members;                                       \
  }
  NA_VOCABULARY(NA_EXPORT_ENUM)
#undef NA_EXPORT_ENUM
  return table;
}
}  // namespace
}  // namespace na

PYBIND11_MODULE(_C, m) {
  namespace py = pybind11;
  m.doc() = "na_kernels C++ CPU kernels (raw pointers, no torch headers)";
  na::bind_noisy_quant(m);
  na::bind_batchnorm_noisy_quant(m);
  na::bind_integrate_fire(m);
  na::bind_noise(m);
  na::bind_float_convert(m);
  na::bind_event_conv(m);
  m.def("vocabulary", &na::vocabulary, "the C++ enums: {enum name: {member name: value}}, as na_kernels._spec's");
  m.def("simd_level", [] { return static_cast<int>(na::simd_level()); },
        "explicit-SIMD kernels in use (a SimdLevel value)");
  m.def("detected_simd_level", [] { return static_cast<int>(na::detected_simd_level()); },
        "the best SimdLevel this CPU supports");
  m.def("set_simd_limit", [](int level) { na::simd_limit().store(static_cast<int>(na::member<na::SimdLevel>(level, "level"))); },
        py::arg("level"), "cap the explicit-SIMD level (tests run every path on one machine)");
}
