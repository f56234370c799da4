// batchnorm_noisy_quant's entry points: argument checks and their Python bindings.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "batchnorm_noisy_quant/batchnorm_noisy_quant.h"
#include "common/arguments.h"

namespace na {
namespace batchnorm_noisy_quant {
namespace {

Shape make_shape(int64_t batch, int64_t channels, int64_t inner) {
  require(batch >= 0, "batch", "must be >= 0");
  require(channels >= 1, "channels", "must be >= 1");
  require(inner >= 0, "inner", "must be >= 0");
  return Shape{batch, channels, inner};
}

void forward(uintptr_t x, uintptr_t residual, uintptr_t y, uintptr_t mask, int dtype, int64_t batch,
             int64_t channels, int64_t inner, uintptr_t weight, uintptr_t bias, uintptr_t lam,
             uintptr_t running_mean, uintptr_t running_var, uintptr_t new_running_mean, uintptr_t new_running_var,
             uintptr_t save_mean, uintptr_t save_invstd, bool batch_stats, double momentum, double eps,
             uint64_t seed, int64_t p, int noise, float scale, float shift, int threads, bool channels_last) {
  require(p >= 1, "p", "must be >= 1");
  require(threads >= 1, "threads", "must be >= 1");
  require(weight && bias && lam && save_mean && save_invstd, "weight, bias, lam, save_mean, save_invstd",
          "must be addresses of `channels` float32");
  require(batch_stats || (running_mean && running_var), "running_mean", "is needed without batch statistics");
  require(!running_mean || (new_running_mean && new_running_var), "new_running_mean", "is needed with running_mean");
  const ForwardArgs args{make_shape(batch, channels, inner),
                         Quantizer{member<DType>(dtype, "dtype"), member<Noise>(noise, "noise"), seed,
                                   static_cast<float>(p), scale, shift},
                         batch_stats,
                         momentum,
                         eps,
                         address_of<const void>(x),
                         address_of<const void>(residual),
                         address_of<const float>(weight),
                         address_of<const float>(bias),
                         address_of<const float>(lam),
                         address_of<const float>(running_mean),
                         address_of<const float>(running_var),
                         address_of<float>(new_running_mean),
                         address_of<float>(new_running_var),
                         address_of<float>(save_mean),
                         address_of<float>(save_invstd),
                         address_of<void>(y),
                         address_of<uint8_t>(mask),
                         threads};
  require(!channels_last || args.quantizer.dtype == DType::FLOAT32, "channels_last", "needs float32");
  if (channels_last)
    forward_channels_last(args);
  else
    forward_generic(args);
}

void backward(uintptr_t grad_y, uintptr_t x, uintptr_t residual, uintptr_t y, uintptr_t mask, int dtype,
              int64_t batch, int64_t channels, int64_t inner, uintptr_t save_mean, uintptr_t save_invstd,
              uintptr_t weight, uintptr_t bias, uintptr_t lam, int64_t p, bool batch_stats, uintptr_t grad_x,
              uintptr_t grad_residual, uintptr_t grads, int threads, bool channels_last) {
  require(p >= 1, "p", "must be >= 1");
  require(threads >= 1, "threads", "must be >= 1");
  require(mask && grads, "mask, grads", "must be given");
  const BackwardArgs args{make_shape(batch, channels, inner),
                          member<DType>(dtype, "dtype"),
                          static_cast<float>(p),
                          batch_stats,
                          address_of<const void>(grad_y),
                          address_of<const void>(x),
                          address_of<const void>(residual),
                          address_of<const void>(y),
                          address_of<const uint8_t>(mask),
                          address_of<const float>(save_mean),
                          address_of<const float>(save_invstd),
                          address_of<const float>(weight),
                          address_of<const float>(bias),
                          address_of<const float>(lam),
                          address_of<void>(grad_x),
                          address_of<void>(grad_residual),
                          address_of<float>(grads),
                          threads};
  require(!channels_last || args.dtype == DType::FLOAT32, "channels_last", "needs float32");
  if (channels_last)
    backward_channels_last(args);
  else
    backward_generic(args);
}

}  // namespace
}  // namespace batchnorm_noisy_quant

void bind_batchnorm_noisy_quant(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("batchnorm_noisy_quant_forward", &batchnorm_noisy_quant::forward, py::call_guard<py::gil_scoped_release>(),
        py::kw_only(), py::arg("x"), py::arg("residual"), py::arg("y"), py::arg("mask"), py::arg("dtype"),
        py::arg("batch"), py::arg("channels"), py::arg("inner"), py::arg("weight"), py::arg("bias"), py::arg("lam"),
        py::arg("running_mean"), py::arg("running_var"), py::arg("new_running_mean"), py::arg("new_running_var"),
        py::arg("save_mean"), py::arg("save_invstd"), py::arg("batch_stats"), py::arg("momentum"), py::arg("eps"),
        py::arg("seed"), py::arg("p"), py::arg("noise"), py::arg("scale"), py::arg("shift"), py::arg("threads"),
        py::arg("channels_last") = false, "batchnorm_noisy_quant forward on raw pointers (see csrc/batchnorm_noisy_quant/)");
  m.def("batchnorm_noisy_quant_backward", &batchnorm_noisy_quant::backward, py::call_guard<py::gil_scoped_release>(),
        py::kw_only(), py::arg("grad_y"), py::arg("x"), py::arg("residual"), py::arg("y"), py::arg("mask"),
        py::arg("dtype"), py::arg("batch"), py::arg("channels"), py::arg("inner"), py::arg("save_mean"),
        py::arg("save_invstd"), py::arg("weight"), py::arg("bias"), py::arg("lam"), py::arg("p"),
        py::arg("batch_stats"), py::arg("grad_x"), py::arg("grad_residual"), py::arg("grads"), py::arg("threads"),
        py::arg("channels_last") = false, "batchnorm_noisy_quant backward on raw pointers");
}

}  // namespace na
