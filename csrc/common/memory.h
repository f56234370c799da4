// Output memory, shared by the kernels: element sizes and the huge-page hint.
//
// Outputs are fresh tensors: a large one is fresh anonymous memory (glibc maps it with mmap),
// and the kernel's first write to each 4 KiB page traps to the OS, which zeroes it. Asking for
// transparent huge pages on the whole 2 MiB blocks inside an output (a hint, as torch's
// THP_MEM_ALLOC_ENABLE gives: the contents are not touched) makes that one fault per 2 MiB.
// Pages already mapped (memory the allocator reuses) are unaffected.
#pragma once
#include <cstdint>
#ifdef __linux__
#include <sys/mman.h>
#endif

#include "common/spec.h"

namespace na {

constexpr int64_t kHugePage = int64_t{1} << 21;
constexpr int64_t kAdviseFromBytes = 2 * kHugePage;

// bytes per element of a storage type
inline int64_t element_bytes(DType dtype) { return dtype == DType::FLOAT32 ? 4 : 2; }

inline void advise_huge_pages(void* p, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (p == nullptr || bytes < kAdviseFromBytes) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHugePage - 1) & ~static_cast<uintptr_t>(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~static_cast<uintptr_t>(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // a hint: errors ignored
#else
  (void)p, (void)bytes;
#endif
}

}  // namespace na
