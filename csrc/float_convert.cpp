// Exposes the float32 <-> float16/bfloat16 conversions of float_convert.h so tests can check
// them exhaustively against torch's.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>

#include "float_convert.h"

namespace na {

namespace {
// src: `count` float32; dst: `count` 16-bit values of `dtype` (kFloat16 or kBFloat16)
void convert_from_float(int dtype, uintptr_t src, uintptr_t dst, int64_t count) {
  const float* in = reinterpret_cast<const float*>(src);
  uint16_t* out = reinterpret_cast<uint16_t*>(dst);
  if (dtype == kFloat16) {
    for (int64_t i = 0; i < count; ++i) out[i] = float_to_half(in[i]);
  } else if (dtype == kBFloat16) {
    for (int64_t i = 0; i < count; ++i) out[i] = float_to_bfloat16(in[i]);
  } else {
    throw std::invalid_argument("na_kernels: dtype must be float16 or bfloat16");
  }
}

void convert_to_float(int dtype, uintptr_t src, uintptr_t dst, int64_t count) {
  const uint16_t* in = reinterpret_cast<const uint16_t*>(src);
  float* out = reinterpret_cast<float*>(dst);
  if (dtype == kFloat16) {
    for (int64_t i = 0; i < count; ++i) out[i] = half_to_float(in[i]);
  } else if (dtype == kBFloat16) {
    for (int64_t i = 0; i < count; ++i) out[i] = bfloat16_to_float(in[i]);
  } else {
    throw std::invalid_argument("na_kernels: dtype must be float16 or bfloat16");
  }
}
}  // namespace

void bind_float_convert(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("convert_from_float", &convert_from_float, py::kw_only(), py::arg("dtype"), py::arg("src"), py::arg("dst"), py::arg("count"), "float32 -> float16/bfloat16 (round to nearest even)");
  m.def("convert_to_float", &convert_to_float, py::kw_only(), py::arg("dtype"), py::arg("src"), py::arg("dst"), py::arg("count"), "float16/bfloat16 -> float32");
}

}  // namespace na
