// integrate_fire's AVX2 backward (CPUs without AVX-512): backward_tile.h on eight neurons per
// ymm. What is AVX2's own: with no mask registers every vector is full (a work item's last
// count % 8 neurons take the generic backward), and the loads and stores (F16C for float16).
#include <cstdint>

#include "common/lanes_avx2.h"
#include "integrate_fire/backward_tile.h"
#include "integrate_fire/integrate_fire.h"
#include "common/storage_avx2.h"

#ifdef NA_X86_SIMD
namespace na {
namespace integrate_fire {
namespace {

struct AllLanes {};

template <DType D> struct Avx2BackwardIo {
  using L = Avx2Lanes;
  using Part = AllLanes;
  static constexpr int kTile = backward_tile_vectors<L, D>();
  static constexpr bool kMaskedTail = false;
  NA_AVX2 static Part all_lanes() { return {}; }
  NA_AVX2 static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  NA_AVX2 static __m256 load(const float* p, Part) { return _mm256_loadu_ps(p); }
  NA_AVX2 static void store(float* p, Part, __m256 v) { _mm256_storeu_ps(p, v); }
  NA_AVX2 static __m256 load_x(const StorageType<D>* p, Part) { return Avx2Storage<D>::load(p); }
  NA_AVX2 static void store_x(StorageType<D>* p, Part, __m256 v) { Avx2Storage<D>::store(p, v); }
};

struct Kernel {
  static constexpr int kLanes = 8, kTileLanes = 8 * Avx2BackwardIo<DType::BFLOAT16>::kTile;  // the widest tile
  template <DType D, Reset R, Surrogate SG, bool DETACH>
  NA_AVX2 static void run(const BackwardArgs& args, const WorkItem& item, BackwardState& state) {
    backward_work_item<Avx2BackwardIo<D>, D, R, SG, DETACH>(args, item, state);
  }
};

}  // namespace

void backward_avx2(const BackwardArgs& args) { backward_by_work_items<Kernel>(args); }

}  // namespace integrate_fire
}  // namespace na
#endif
