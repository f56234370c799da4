// Exposes the Philox stream of csrc/philox.h so tests can compare it with Triton's tl.rand /
// tl.randn and the PyTorch reference at any offset (including across 2^32).
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "noise.h"
#include "philox.h"

namespace na {

namespace {
// w0, w1: addresses of `count` uint32 each (w1 may be 0)
void philox_fill(uint64_t seed, uint64_t first, int64_t count, uintptr_t w0, uintptr_t w1) {
  philox_words(seed, first, count, reinterpret_cast<uint32_t*>(w0), reinterpret_cast<uint32_t*>(w1));
}
#ifdef NA_HAVE_AVX512
template <int NOISE>
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

// out: address of `count` floats; scale * eps of the given kind (1 uniform, 2 gaussian) for
// offsets first .. first+count-1, by the path noisy_quant takes on this CPU
void noise_fill(uint64_t seed, uint64_t first, int64_t count, int kind, float scale, uintptr_t out_address) {
  if (kind != kUniform && kind != kGaussian) throw std::invalid_argument("noise kind must be 1 or 2");
  float* out = reinterpret_cast<float*>(out_address);
  int64_t done = 0;
#ifdef NA_HAVE_AVX512
  if (cpu_has_avx512())
    done = kind == kUniform ? noise_fill_avx512<kUniform>(seed, first, count, scale, out)
                            : noise_fill_avx512<kGaussian>(seed, first, count, scale, out);
#endif
  for (; done < count; done += kNoiseBatch) {
    const int64_t batch = std::min(kNoiseBatch, count - done);
    scaled_noise_batch(kind, seed, scale, first + static_cast<uint64_t>(done), batch, out + done);
  }
}
}  // namespace

void bind_philox(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("philox_fill", &philox_fill, py::kw_only(), py::arg("seed"), py::arg("first"), py::arg("count"), py::arg("w0"), py::arg("w1"), "Philox4x32-10 words 0 and 1 for offsets first .. first+count-1");
  m.def("noise_fill", &noise_fill, py::kw_only(), py::arg("seed"), py::arg("first"), py::arg("count"), py::arg("noise"), py::arg("scale"), py::arg("out"), "noisy_quant's scale * eps for offsets first .. first+count-1");
}

}  // namespace na
