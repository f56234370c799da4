// Exposes the Philox stream of csrc/philox.h so tests can compare it with Triton's tl.rand /
// tl.randn and the PyTorch reference at any offset (including across 2^32).
#include <pybind11/pybind11.h>

#include <cstdint>

#include "philox.h"

namespace na {

namespace {
// w0, w1: addresses of `count` uint32 each (w1 may be 0)
void philox_fill(uint64_t seed, uint64_t first, int64_t count, uintptr_t w0, uintptr_t w1) {
  philox_words(seed, first, count, reinterpret_cast<uint32_t*>(w0), reinterpret_cast<uint32_t*>(w1));
}
}  // namespace

void bind_philox(pybind11::module_& m) {
  m.def("philox_fill", &philox_fill, "Philox4x32-10 words 0 and 1 for offsets first .. first+count-1");
}

}  // namespace na
