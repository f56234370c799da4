// Exposes the float32 <-> float16/bfloat16 conversions of float_convert.h so tests can check
// them exhaustively against torch's.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/arguments.h"
#include "common/dispatch.h"
#include "common/float_convert.h"

namespace na {

namespace {
// body(Storage<D>) for the 16-bit dtype `dtype`
template <class Body> void with_16_bit_dtype(int dtype, Body&& body) {
  const DType d = member<DType>(dtype, "dtype");
  require(d != DType::FLOAT32, "dtype", "must be FLOAT16 or BFLOAT16");
  dispatch([&](auto d_tag) { body(Storage<decltype(d_tag)::value>{}); }, d);
}

// src: `count` float32; dst: `count` 16-bit values of `dtype`
void convert_from_float(int dtype, uintptr_t src, uintptr_t dst, int64_t count) {
  with_16_bit_dtype(dtype, [&](auto storage) {
    const float* in = address_of<const float>(src);
    auto* out = address_of<typename decltype(storage)::type>(dst);
    for (int64_t i = 0; i < count; ++i) storage.store(out, i, in[i]);
  });
}

void convert_to_float(int dtype, uintptr_t src, uintptr_t dst, int64_t count) {
  with_16_bit_dtype(dtype, [&](auto storage) {
    const auto* in = address_of<const typename decltype(storage)::type>(src);
    float* out = address_of<float>(dst);
    for (int64_t i = 0; i < count; ++i) out[i] = storage.load(in, i);
  });
}
}  // namespace

void bind_float_convert(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("convert_from_float", &convert_from_float, py::kw_only(), py::arg("dtype"), py::arg("src"), py::arg("dst"),
        py::arg("count"), "float32 -> float16/bfloat16 (round to nearest even)");
  m.def("convert_to_float", &convert_to_float, py::kw_only(), py::arg("dtype"), py::arg("src"), py::arg("dst"),
        py::arg("count"), "float16/bfloat16 -> float32");
}

}  // namespace na
