// integrate_fire's entry points: argument checks, the choice of kernel for this CPU, and
// their Python bindings.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/arguments.h"
#include "common/simd.h"
#include "integrate_fire/integrate_fire.h"

namespace na {
namespace integrate_fire {
namespace {

// spikes from this size on (four per-core L2s here) are stored around the cache
// (ForwardArgs::stream_spikes): through it, every line would be read first and the inputs evicted.
// Spikes written over x (overwrite) are not: their lines were just read, and the next layer of a
// network reads them at once.
constexpr int64_t kStreamFromBytes = int64_t{4} << 20;

Layer make_layer(int64_t steps, int64_t neurons, int64_t channel_stride, int64_t channels, int64_t x_step,
                 uintptr_t theta, bool amp_is_theta, float amp, int threads) {
  require(steps >= 1, "steps", "must be >= 1");
  require(neurons >= 0, "neurons", "must be >= 0");
  require(channel_stride >= 1, "channel_stride", "must be >= 1");
  require(channels >= 1, "channels", "must be >= 1");
  require(x_step >= 0, "x_step", "must be >= 0");
  require(threads >= 1, "threads", "must be >= 1");
  require(theta != 0, "theta", "must be the address of `channels` float32");
  return Layer{steps, neurons, channel_stride, channels, x_step, address_of<const float>(theta), amp_is_theta, amp,
               threads};
}

void integrate_fire_forward(uintptr_t x, int64_t x_step, uintptr_t spikes, uintptr_t counts, uintptr_t v_final,
                            uintptr_t h, int dtype, int64_t steps, int64_t neurons, int64_t channel_stride,
                            int64_t channels, uintptr_t theta, uintptr_t v0, float v_frac, int reset,
                            bool amp_is_theta, float amp, int threads) {
  ForwardArgs args{make_layer(steps, neurons, channel_stride, channels, x_step, theta, amp_is_theta, amp, threads),
                         member<DType>(dtype, "dtype"),
                         member<Reset>(reset, "reset"),
                         address_of<const void>(x),
                         address_of<void>(spikes),
                         address_of<int32_t>(counts),
                         address_of<float>(v_final),
                         address_of<float>(h),
                         address_of<const float>(v0),
                         v_frac};
  if (neurons == 0) return;
  const int64_t spike_row_bytes = neurons * element_bytes(args.dtype);
  args.stream_spikes =
      spikes != x && steps * spike_row_bytes >= kStreamFromBytes && spike_row_bytes % 64 == 0 && spikes % 64 == 0;
#ifdef NA_X86_SIMD
  if (cpu_has_avx512()) return forward_avx512(args);
  if (cpu_has_avx2() && cpu_has_f16c()) return forward_avx2(args);
#endif
  forward_generic(args);
}

void integrate_fire_backward(uintptr_t grad_spikes, uintptr_t grad_v, uintptr_t h, uintptr_t x, int64_t x_step,
                             uintptr_t v0, float v_frac, uintptr_t grad_x, uintptr_t grad_v_init, int dtype,
                             int64_t steps, int64_t neurons, int64_t channel_stride, int64_t channels,
                             uintptr_t theta, int reset, bool amp_is_theta, float amp, int surrogate, double alpha,
                             bool detach_reset, int threads) {
  require((h == 0) != (x == 0), "h", "and x: exactly one must be given (x to recompute h)");
  require(alpha > 0, "alpha", "must be > 0");
  const double pi = 3.14159265358979323846;
  const float alpha32 = static_cast<float>(alpha);
  const BackwardArgs args{make_layer(steps, neurons, channel_stride, channels, x_step, theta, amp_is_theta, amp, threads),
                          member<DType>(dtype, "dtype"),
                          member<Reset>(reset, "reset"),
                          member<Surrogate>(surrogate, "surrogate"),
                          SurrogateParams{alpha32, static_cast<float>(pi / 2 * alpha), alpha32 * 0.5f,
                                          static_cast<float>(0.5 / alpha)},
                          detach_reset,
                          address_of<const void>(grad_spikes),
                          address_of<const float>(grad_v),
                          address_of<const float>(h),
                          address_of<const void>(x),
                          address_of<const float>(v0),
                          v_frac,
                          address_of<void>(grad_x),
                          address_of<float>(grad_v_init)};
  if (neurons == 0) return;
#ifdef NA_X86_SIMD
  if (cpu_has_avx512()) return backward_avx512(args);
  if (cpu_has_avx2() && cpu_has_f16c()) return backward_avx2(args);
#endif
  backward_generic(args);
}

}  // namespace
}  // namespace integrate_fire

void bind_integrate_fire(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("integrate_fire_forward", &integrate_fire::integrate_fire_forward, py::call_guard<py::gil_scoped_release>(),
        py::kw_only(), py::arg("x"), py::arg("x_step"), py::arg("spikes"), py::arg("counts"), py::arg("v_final"),
        py::arg("h"), py::arg("dtype"), py::arg("steps"), py::arg("neurons"), py::arg("channel_stride"),
        py::arg("channels"), py::arg("theta"), py::arg("v0"), py::arg("v_frac"), py::arg("reset"),
        py::arg("amp_is_theta"), py::arg("amp"), py::arg("threads"),
        "multi-step integrate-and-fire forward on raw pointers (see csrc/integrate_fire/)");
  m.def("integrate_fire_backward", &integrate_fire::integrate_fire_backward, py::call_guard<py::gil_scoped_release>(),
        py::kw_only(), py::arg("grad_spikes"), py::arg("grad_v"), py::arg("h"), py::arg("x"), py::arg("x_step"),
        py::arg("v0"), py::arg("v_frac"), py::arg("grad_x"), py::arg("grad_v_init"), py::arg("dtype"),
        py::arg("steps"), py::arg("neurons"), py::arg("channel_stride"), py::arg("channels"), py::arg("theta"),
        py::arg("reset"), py::arg("amp_is_theta"), py::arg("amp"), py::arg("surrogate"), py::arg("alpha"),
        py::arg("detach_reset"), py::arg("threads"), "integrate-and-fire surrogate-gradient BPTT on raw pointers");
}

}  // namespace na
