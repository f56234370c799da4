// The na_kernels._C module: each op's file registers its functions here.
#include <pybind11/pybind11.h>

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
}
