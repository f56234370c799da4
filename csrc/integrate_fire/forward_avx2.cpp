// integrate_fire's AVX2 forward (CPUs without AVX-512): forward_tile.h on eight neurons per ymm.
// What is AVX2's own: with no mask registers, `fired` is a vector of all-ones / zero lanes and
// every vector is full (a work item's last count % 8 neurons take the generic forward); the
// spikes are a blend of the two precomputed bit patterns, for 16-bit storage with two vectors'
// masks packed to 16-bit lanes first.
#include <cstdint>
#include <type_traits>

#include "common/lanes_avx2.h"
#include "integrate_fire/forward_tile.h"
#include "integrate_fire/integrate_fire.h"
#include "common/storage_avx2.h"
#include "integrate_fire/thresholds.h"

#ifdef NA_X86_SIMD
namespace na {
namespace integrate_fire {
namespace {

struct AllLanes {};

template <int W> struct SpikeBits32 {
  __m256 silent[W], fired[W];
  NA_AVX2 SpikeBits32(const float* silent_bits, const float* fired_bits) {
    for (int w = 0; w < W; ++w) {
      silent[w] = _mm256_loadu_ps(silent_bits + 8 * w);
      fired[w] = _mm256_loadu_ps(fired_bits + 8 * w);
    }
  }
  NA_AVX2 void store(float* spikes, const __m256* fired_now, const AllLanes*) const {
    for (int w = 0; w < W; ++w) _mm256_storeu_ps(spikes + 8 * w, _mm256_blendv_ps(silent[w], fired[w], fired_now[w]));
  }
  // spikes 32-byte aligned
  NA_AVX2 void stream(float* spikes, const __m256* fired_now) const {
    for (int w = 0; w < W; ++w) _mm256_stream_ps(spikes + 8 * w, _mm256_blendv_ps(silent[w], fired[w], fired_now[w]));
  }
};

// 16-bit storage (bfloat16 and float16 alike): pairs of vectors share one register of spike
// bits (a single vector uses its low half)
template <int W> struct SpikeBits16 {
  static constexpr int kPair = W % 2 == 0 ? 2 : 1;  // vectors per register of spike bits
  __m256i silent[W / kPair], fired[W / kPair];
  NA_AVX2 static __m256i load_bits(const uint16_t* p) {
    return kPair == 2 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                      : _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  NA_AVX2 SpikeBits16(const uint16_t* silent_bits, const uint16_t* fired_bits) {
    for (int pair = 0; pair < W / kPair; ++pair) {
      silent[pair] = load_bits(silent_bits + 8 * kPair * pair);
      fired[pair] = load_bits(fired_bits + 8 * kPair * pair);
    }
  }
  // fired lanes are -1 or 0: packed with signed saturation to 16 bits they stay -1 or 0
  NA_AVX2 void store(uint16_t* spikes, const __m256* fired_now, const AllLanes*) const {
    for (int pair = 0; pair < W / kPair; ++pair) {
      uint16_t* p = spikes + 8 * kPair * pair;
      if (kPair == 2) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), pair_bits(pair, fired_now));
      } else {
        const __m256i low = _mm256_castps_si256(fired_now[pair]);
        const __m128i mask = _mm_packs_epi32(_mm256_castsi256_si128(low), _mm256_extracti128_si256(low, 1));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm_blendv_epi8(_mm256_castsi256_si128(silent[pair]),
                                                                        _mm256_castsi256_si128(fired[pair]), mask));
      }
    }
  }
  // whole pairs only (W even), spikes 32-byte aligned
  NA_AVX2 void stream(uint16_t* spikes, const __m256* fired_now) const {
    static_assert(kPair == 2, "streamed tiles hold whole pairs of vectors");
    for (int pair = 0; pair < W / kPair; ++pair)
      _mm256_stream_si256(reinterpret_cast<__m256i*>(spikes + 16 * pair), pair_bits(pair, fired_now));
  }

 private:
  // the spike bits of vectors 2 pair and 2 pair + 1; packs works per 128-bit lane (neurons 0-3,
  // 8-11 | 4-7, 12-15), put in order by the permute
  NA_AVX2 __m256i pair_bits(int pair, const __m256* fired_now) const {
    const __m256i low = _mm256_castps_si256(fired_now[2 * pair]), high = _mm256_castps_si256(fired_now[2 * pair + 1]);
    const __m256i mask = _mm256_permute4x64_epi64(_mm256_packs_epi32(low, high), 0xD8);
    return _mm256_blendv_epi8(silent[pair], fired[pair], mask);
  }
};

struct Avx2ForwardIoCommon {
  using L = Avx2Lanes;
  using Part = AllLanes;
  static constexpr int kTile = 4;       // vectors per tile, at T = 8 and 32: 4 beats 1, 2 and 8
  static constexpr int kWideTile = 0;   // none
  static constexpr bool kMaskedTail = false;
  static constexpr bool kStreams = true;  // SpikeBits::stream; stream_fence() orders those stores
  NA_AVX2 static void stream_fence() { _mm_sfence(); }
  static bool wide_tiles(const Layer&) { return false; }
  NA_AVX2 static Part all_lanes() { return {}; }
  NA_AVX2 static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  NA_AVX2 static __m256 load(const float* p, Part) { return _mm256_loadu_ps(p); }
  NA_AVX2 static void store(float* p, Part, __m256 v) { _mm256_storeu_ps(p, v); }
  NA_AVX2 static void store_counts(int32_t* p, Part, __m256i count) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), count);
  }
};

template <DType D> struct Avx2ForwardIo : Avx2ForwardIoCommon {
  using T = StorageType<D>;
  template <int W> using SpikeBits = std::conditional_t<D == DType::FLOAT32, SpikeBits32<W>, SpikeBits16<W>>;
  NA_AVX2 static __m256 load_x(const T* x, Part) { return Avx2Storage<D>::load(x); }
};

struct WorkItems {
  template <DType D, Reset R, bool SAVE_H>
  NA_AVX2 static void run(const ForwardArgs& args, const WorkItemSpikeTables<D>& tables, const WorkItem& item) {
    forward_work_item<Avx2ForwardIo<D>, D, R, SAVE_H>(args, tables, item);
  }
};

}  // namespace

void forward_avx2(const ForwardArgs& args) { forward_by_work_items<WorkItems>(args); }

}  // namespace integrate_fire
}  // namespace na
#endif
