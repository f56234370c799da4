// integrate_fire's AVX-512 backward: backward_tile.h on sixteen neurons per zmm, a vector's
// neurons past a work item's end masked off. What is AVX-512's own: the masked loads and stores.
#include <cstdint>

#include "common/lanes_avx512.h"
#include "common/storage_avx512.h"
#include "integrate_fire/backward_tile.h"
#include "integrate_fire/integrate_fire.h"

#ifdef NA_X86_SIMD
namespace na {
namespace integrate_fire {
namespace {

template <DType D> struct Avx512BackwardIo {
  using L = Avx512Lanes;
  using Part = __mmask16;
  static constexpr int kTile = backward_tile_vectors<L, D>();
  static constexpr bool kMaskedTail = true;
  NA_AVX512 static Part all_lanes() { return static_cast<__mmask16>(0xFFFF); }
  NA_AVX512 static Part first_lanes(int64_t count) { return na::first_lanes(count); }
  NA_AVX512 static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  NA_AVX512 static __m512 load(const float* p, Part part) { return _mm512_maskz_loadu_ps(part, p); }
  NA_AVX512 static void store(float* p, Part part, __m512 v) { _mm512_mask_storeu_ps(p, part, v); }
  NA_AVX512 static __m512 load_x(const StorageType<D>* p, Part part) { return Avx512Storage<D>::load(p, part); }
  NA_AVX512 static void store_x(StorageType<D>* p, Part part, __m512 v) { Avx512Storage<D>::store(p, part, v); }
};

struct Kernel {
  static constexpr int kLanes = 16, kTileLanes = 16 * Avx512BackwardIo<DType::BFLOAT16>::kTile;  // the widest tile
  template <DType D, Reset R, Surrogate SG, bool DETACH>
  NA_AVX512 static void run(const BackwardArgs& args, const WorkItem& item, BackwardState& state) {
    backward_work_item<Avx512BackwardIo<D>, D, R, SG, DETACH>(args, item, state);
  }
};

}  // namespace

void backward_avx512(const BackwardArgs& args) { backward_by_work_items<Kernel>(args); }

}  // namespace integrate_fire
}  // namespace na
#endif
