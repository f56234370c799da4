// Exposes the Philox stream of noise/philox.h and the noise of noise/noise.h so tests can
// compare them with Triton's tl.rand / tl.randn and the PyTorch reference at any offset
// (including across 2^32).
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>

#include "common/arguments.h"
#include "common/dispatch.h"
#include "noise/noise.h"
#include "noise/philox.h"

namespace na {

namespace {
// w0, w1: addresses of `count` uint32 each (w1 may be 0)
void philox_fill(uint64_t seed, uint64_t first, int64_t count, uintptr_t w0, uintptr_t w1) {
  require(count >= 0, "count", "must be >= 0");
  philox_words(seed, first, count, address_of<uint32_t>(w0), address_of<uint32_t>(w1));
}

#ifdef NA_X86_SIMD
template <Noise NOISE>
NA_AVX512 int64_t noise_fill_avx512(uint64_t seed, uint64_t first, int64_t count, float scale, float* out) {
  const PhiloxKeysAvx512 keys = philox_keys_avx512(seed);
  int64_t done = 0;
  for (; done + 32 <= count; done += 32) {
    __m512 eps[2];
    scaled_noise32_avx512<NOISE>(keys, first + static_cast<uint64_t>(done), _mm512_set1_ps(scale), eps);
    _mm512_storeu_ps(out + done, eps[0]);
    _mm512_storeu_ps(out + done + 16, eps[1]);
  }
  return done;
}
#endif

// out: address of `count` floats; scale * eps of the given kind (UNIFORM or GAUSSIAN) for
// offsets first .. first+count-1, by the path noisy_quant takes on this CPU
void noise_fill(uint64_t seed, uint64_t first, int64_t count, int noise, float scale, uintptr_t out_address) {
  const Noise kind = member<Noise>(noise, "noise");
  require(kind != Noise::NONE, "noise", "must be UNIFORM or GAUSSIAN");
  require(count >= 0, "count", "must be >= 0");
  float* out = address_of<float>(out_address);
  int64_t done = 0;
#ifdef NA_X86_SIMD
  if (cpu_has_avx512())
    done = kind == Noise::UNIFORM ? noise_fill_avx512<Noise::UNIFORM>(seed, first, count, scale, out)
                                  : noise_fill_avx512<Noise::GAUSSIAN>(seed, first, count, scale, out);
#endif
  for (; done < count; done += kNoiseBatch) {
    const int64_t batch = std::min(kNoiseBatch, count - done);
    scaled_noise_batch(kind, seed, scale, first + static_cast<uint64_t>(done), batch, out + done);
  }
}
}  // namespace

void bind_noise(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("philox_fill", &philox_fill, py::kw_only(), py::arg("seed"), py::arg("first"), py::arg("count"), py::arg("w0"),
        py::arg("w1"), "Philox4x32-10 words 0 and 1 for offsets first .. first+count-1");
  m.def("noise_fill", &noise_fill, py::kw_only(), py::arg("seed"), py::arg("first"), py::arg("count"),
        py::arg("noise"), py::arg("scale"), py::arg("out"), "noisy_quant's scale * eps for offsets first .. first+count-1");
}

}  // namespace na
