// Checking the entry points' arguments (std::invalid_argument naming the argument) and turning
// the addresses Python passes (tensor.data_ptr(), 0 for none) into pointers.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace na {

inline void require(bool ok, const char* argument, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("na_kernels: ") + argument + " " + what);
}

// an address as a typed pointer (null for 0)
template <class T> T* address_of(uintptr_t address) { return reinterpret_cast<T*>(address); }

}  // namespace na
