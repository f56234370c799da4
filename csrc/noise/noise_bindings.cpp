// Exposes the Philox blocks of noise/philox.h and the noise of noise/noise.h so tests can
// compare them with Triton's tl.randint4x / tl.rand4x / tl.randn4x and the PyTorch reference
// at any index (including across 2^32 and from indices that are not multiples of 4).
// Both return a new bytearray (torch.frombuffer reads it): no address from Python is written to.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>

#include "common/arguments.h"
#include "common/dispatch.h"
#include "noise/noise.h"
#include "noise/philox.h"

namespace na {

namespace {
// the largest result: 1 GiB
constexpr int64_t kMaxFillBytes = int64_t{1} << 30;

// a new bytearray of `count` items of `item_bytes` each, and where to write them
pybind11::bytearray new_buffer(int64_t count, int64_t item_bytes, char** data) {
  require(count >= 0, "count", "must be >= 0");
  require(count <= kMaxFillBytes / item_bytes, "count", "must be at most 2^30 bytes of output");
  PyObject* raw = PyByteArray_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(count * item_bytes));
  if (raw == nullptr) throw pybind11::error_already_set();
  *data = PyByteArray_AsString(raw);
  return pybind11::reinterpret_steal<pybind11::bytearray>(raw);
}

// `count` blocks of four uint32 (int32 [count, 4]) for counters first .. first+count-1
pybind11::bytearray philox_fill(uint64_t seed, uint64_t first, int64_t count) {
  char* data = nullptr;
  pybind11::bytearray out = new_buffer(count, 4 * sizeof(uint32_t), &data);
  philox_blocks(seed, first, count, reinterpret_cast<uint32_t*>(data));
  return out;
}

#ifdef NA_X86_SIMD
// elements [first, first + count) with first a multiple of 4; returns how many were done
template <Noise NOISE>
NA_AVX512 int64_t noise_fill_avx512(uint64_t seed, uint64_t first, int64_t count, float scale, float* out) {
  const PhiloxKeysAvx512 keys = philox_keys_avx512(seed);
  const __m512 scale_lanes = _mm512_set1_ps(scale);
  int64_t done = 0;
  for (; done + 128 <= count; done += 128) {
    __m512 eps[8];
    scaled_noise_avx512<NOISE, 4>(keys, first + static_cast<uint64_t>(done), scale_lanes, eps);
    for (int v = 0; v < 8; ++v) _mm512_storeu_ps(out + done + 16 * v, eps[v]);
  }
  for (; done + 32 <= count; done += 32) {
    __m512 eps[2];
    scaled_noise_avx512<NOISE, 1>(keys, first + static_cast<uint64_t>(done), scale_lanes, eps);
    for (int v = 0; v < 2; ++v) _mm512_storeu_ps(out + done + 16 * v, eps[v]);
  }
  return done;
}

template <Noise NOISE>
NA_AVX2 int64_t noise_fill_avx2(uint64_t seed, uint64_t first, int64_t count, float scale, float* out) {
  const PhiloxKeysAvx2 keys = philox_keys_avx2(seed);
  const __m256 scale_lanes = _mm256_set1_ps(scale);
  int64_t done = 0;
  for (; done + 64 <= count; done += 64) {
    __m256 eps[8];
    scaled_noise64_avx2<NOISE>(keys, first + static_cast<uint64_t>(done), scale_lanes, eps);
    for (int v = 0; v < 8; ++v) _mm256_storeu_ps(out + done + 8 * v, eps[v]);
  }
  return done;
}
#endif

template <Noise NOISE> int64_t noise_fill_vector(uint64_t seed, uint64_t first, int64_t count, float scale, float* out) {
#ifdef NA_X86_SIMD
  if (cpu_has_avx512()) return noise_fill_avx512<NOISE>(seed, first, count, scale, out);
  if (cpu_has_avx2()) return noise_fill_avx2<NOISE>(seed, first, count, scale, out);
#endif
  return 0;
}

void noise_batches(Noise kind, uint64_t seed, uint64_t first, int64_t count, float scale, float* out) {
  for (int64_t done = 0; done < count; done += kNoiseBatch)
    scaled_noise_batch(kind, seed, scale, first + static_cast<uint64_t>(done), std::min(kNoiseBatch, count - done),
                       out + done);
}

// `count` floats: scale * eps of the given kind (UNIFORM or GAUSSIAN) for elements
// first .. first+count-1, by the paths noisy_quant takes at the current SIMD level: the buffer
// form up to the first multiple of 4 and after the last whole vector, registers between
pybind11::bytearray noise_fill(uint64_t seed, uint64_t first, int64_t count, int noise, float scale) {
  const Noise kind = member<Noise>(noise, "noise");
  require(kind != Noise::NONE, "noise", "must be UNIFORM or GAUSSIAN");
  char* data = nullptr;
  pybind11::bytearray result = new_buffer(count, sizeof(float), &data);
  float* out = reinterpret_cast<float*>(data);
  const int64_t head = std::min<int64_t>(count, static_cast<int64_t>((4u - (first & 3u)) & 3u));
  noise_batches(kind, seed, first, head, scale, out);
  const uint64_t aligned = first + static_cast<uint64_t>(head);
  const int64_t vector_done =
      kind == Noise::UNIFORM ? noise_fill_vector<Noise::UNIFORM>(seed, aligned, count - head, scale, out + head)
                             : noise_fill_vector<Noise::GAUSSIAN>(seed, aligned, count - head, scale, out + head);
  const int64_t done = head + vector_done;
  noise_batches(kind, seed, first + static_cast<uint64_t>(done), count - done, scale, out + done);
  return result;
}
}  // namespace

void bind_noise(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("philox_fill", &philox_fill, py::kw_only(), py::arg("seed"), py::arg("first"), py::arg("count"),
        "Philox4x32-10 blocks for counters first .. first+count-1: a bytearray of count * 4 uint32 "
        "(torch.frombuffer(..., dtype=torch.int32).reshape(count, 4))");
  m.def("noise_fill", &noise_fill, py::kw_only(), py::arg("seed"), py::arg("first"), py::arg("count"),
        py::arg("noise"), py::arg("scale"),
        "noisy_quant's scale * eps for element indices first .. first+count-1: a bytearray of count float32 "
        "(torch.frombuffer(..., dtype=torch.float32))");
}

}  // namespace na
