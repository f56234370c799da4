// integrate_fire's AVX-512 forward: forward_tile.h on sixteen neurons per zmm, a vector's
// neurons past a work item's end masked off. What is AVX-512's own: the loads and stores, and
// the spikes stored as a mask blend of the two precomputed bit patterns.
#include <cstdint>
#include <type_traits>

#include "common/lanes_avx512.h"
#include "common/storage_avx512.h"
#include "integrate_fire/forward_tile.h"
#include "integrate_fire/integrate_fire.h"
#include "integrate_fire/thresholds.h"

#ifdef NA_X86_SIMD
namespace na {
namespace integrate_fire {
namespace {

// the spike bits of W vectors of float32 storage
template <int W> struct SpikeBits32 {
  __m512 silent[W], fired[W];
  NA_AVX512 SpikeBits32(const float* silent_bits, const float* fired_bits) {
    for (int w = 0; w < W; ++w) {
      silent[w] = _mm512_loadu_ps(silent_bits + 16 * w);
      fired[w] = _mm512_loadu_ps(fired_bits + 16 * w);
    }
  }
  NA_AVX512 void store(float* spikes, const __mmask16* fired_now, const __mmask16* part) const {
    for (int w = 0; w < W; ++w)
      _mm512_mask_storeu_ps(spikes + 16 * w, part[w], _mm512_mask_blend_ps(fired_now[w], silent[w], fired[w]));
  }
  // all lanes, spikes 64-byte aligned
  NA_AVX512 void stream(float* spikes, const __mmask16* fired_now) const {
    for (int w = 0; w < W; ++w) _mm512_stream_ps(spikes + 16 * w, _mm512_mask_blend_ps(fired_now[w], silent[w], fired[w]));
  }
};

// the spike bits of W vectors of 16-bit storage (bfloat16 and float16 alike)
template <int W> struct SpikeBits16 {
  __m256i silent[W], fired[W];
  NA_AVX512 SpikeBits16(const uint16_t* silent_bits, const uint16_t* fired_bits) {
    for (int w = 0; w < W; ++w) {
      silent[w] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(silent_bits + 16 * w));
      fired[w] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(fired_bits + 16 * w));
    }
  }
  NA_AVX512 void store(uint16_t* spikes, const __mmask16* fired_now, const __mmask16* part) const {
    for (int w = 0; w < W; ++w)
      _mm256_mask_storeu_epi16(spikes + 16 * w, part[w], _mm256_mask_blend_epi16(fired_now[w], silent[w], fired[w]));
  }
  // all lanes, spikes 32-byte aligned
  NA_AVX512 void stream(uint16_t* spikes, const __mmask16* fired_now) const {
    for (int w = 0; w < W; ++w)
      _mm256_stream_si256(reinterpret_cast<__m256i*>(spikes + 16 * w),
                          _mm256_mask_blend_epi16(fired_now[w], silent[w], fired[w]));
  }
};

template <DType D> struct Avx512ForwardIo {
  using L = Avx512Lanes;
  using T = StorageType<D>;
  using Part = __mmask16;
  // Vectors per tile: 1 or 2 move x and the spikes fastest at T = 8, 4 and 8 are slower; 16-bit
  // inputs from T = 16 on gain from tiles of 4 (128 bytes of each step's row, as 2 for float32).
  static constexpr int kTile = 2, kWideTile = 4;
  static constexpr bool kMaskedTail = true;
  static constexpr bool kStreams = true;  // SpikeBits::stream; stream_fence() orders those stores
  NA_AVX512 static void stream_fence() { _mm_sfence(); }
  static bool wide_tiles(const Layer& layer) { return sizeof(T) == 2 && layer.steps >= 16; }
  NA_AVX512 static Part first_lanes(int64_t count) { return na::first_lanes(count); }
  template <int W> using SpikeBits = std::conditional_t<D == DType::FLOAT32, SpikeBits32<W>, SpikeBits16<W>>;
  NA_AVX512 static Part all_lanes() { return static_cast<__mmask16>(0xFFFF); }
  NA_AVX512 static __m512 load_x(const T* x, Part part) { return Avx512Storage<D>::load(x, part); }
  NA_AVX512 static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  NA_AVX512 static __m512 load(const float* p, Part part) { return _mm512_maskz_loadu_ps(part, p); }
  NA_AVX512 static void store(float* p, Part part, __m512 v) { _mm512_mask_storeu_ps(p, part, v); }
  NA_AVX512 static void store_counts(int32_t* p, Part part, __m512i count) { _mm512_mask_storeu_epi32(p, part, count); }
};

struct WorkItems {
  template <DType D, Reset R, bool SAVE_H>
  NA_AVX512 static void run(const ForwardArgs& args, const WorkItemSpikeTables<D>& tables, const WorkItem& item) {
    forward_work_item<Avx512ForwardIo<D>, D, R, SAVE_H>(args, tables, item);
  }
};

}  // namespace

void forward_avx512(const ForwardArgs& args) { forward_by_work_items<WorkItems>(args); }

}  // namespace integrate_fire
}  // namespace na
#endif
