// integrate_fire on the CPU: multi-step IF forward (spikes, counts, final v, optionally h)
// and its surrogate-gradient BPTT backward, one pass over the [T, N] data each.
// Per neuron n, in float32 and in the reference's order (na_kernels/reference/integrate_fire.py):
//   v = v0[n]  or  v_frac * theta[c]
//   for t: h = v + x[t, n];  s = h >= theta[c];  v = h - s * theta[c]  (subtract) | h * (1 - s)  (zero)
//          spikes[t, n] = s * amp;  count += s
// with c = (n / inner) % channels. Work items are blocks of kBlock neurons: each keeps its state
// in small local arrays and walks t, so the inner loop streams contiguous memory.
// Backward walks t from T-1 down to 0 with the incoming grad of v per neuron:
//   sg = surrogate(h - theta);  grad_s = grad_spikes[t] * amp  (- theta * gv | - h * gv  unless detach)
//   gh = grad_s * sg + gv * (1 | 1 - s);  grad_x[t] = gh;  gv = gh;   grad_v_init = gv at the end.
// h is either the forward's saved [T, N] or, when the caller kept x instead, recomputed per block
// by the forward's own loop into a per-thread scratch of T x kBlock floats (no [T, N] buffer).
// Where the CPU has AVX-512 (checked at run time; the build needs no -march flag) forward and
// backward take avx512_forward / avx512_backward_impl instead: the same operations with the
// per-neuron state (v and the count; the grad of v) in registers across all T (see there); where
// it has AVX2 (and F16C) but not AVX-512, the forward takes avx2_forward, the same scheme on 8 lanes.
// GCC keeps an ordered float compare (h >= theta) out of vectorized loops while it must preserve
// FP traps (-ftrapping-math, the default): no if-conversion, no SIMD. Nothing here reads the FP
// exception flags, and the option changes no rounded result, so it is off for this file only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "avx512.h"
#include "float_convert.h"
#include "parallel.h"
#include "simd_level.h"
#include "vector_math.h"

namespace na {
namespace {

enum Reset : int { kSubtract = 0, kZero = 1 };
enum Surrogate : int { kSigmoid = 0, kAtan = 1, kTriangle = 2, kRectangle = 3 };

constexpr int64_t kBlock = 1024;  // neurons per work item: 4 state arrays of 4 KiB stay in L1, rows of 4 KiB stream

struct IFParams {
  int64_t steps, neurons, inner, channels;
  int64_t x_step;  // elements between two steps of x (neurons, or 0 for an input repeated over T, ...)
  const float* theta;  // [channels]
  int reset;
  bool amp_is_theta;
  float amp;
  // backward only: when recompute_x is set, h is recomputed from x (x_step apart) and v0
  // (or v_frac * theta) into a per-thread scratch instead of being read from a saved [T, N]
  const void* recompute_x = nullptr;
  const float* v0 = nullptr;
  float v_frac = 0.0f;
};

inline int64_t block_count(int64_t n) { return (n + kBlock - 1) / kBlock; }

// theta (and the spike amplitude) of the neurons [begin, begin + len)
inline void load_theta(const IFParams& k, int64_t begin, int64_t len, float* th, float* amp) {
  for (int64_t j = 0; j < len; ++j) {
    const int64_t c = k.channels == 1 ? 0 : ((begin + j) / k.inner) % k.channels;
    th[j] = k.theta[c];
    amp[j] = k.amp_is_theta ? th[j] : k.amp;
  }
}

// R (reset) and SAVE_H are template parameters so the inner loop has no branch but the select.
template <int D, int R, bool SAVE_H>
void forward_impl(const IFParams& k, const void* x_ptr, void* spikes_ptr, int32_t* counts, float* v_final,
                  float* h_out, const float* v0, float v_frac, int threads) {
  using S = Storage<D>;
  const auto* x = static_cast<const typename S::type*>(x_ptr);
  auto* spikes = static_cast<typename S::type*>(spikes_ptr);
  const int64_t blocks = block_count(k.neurons);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * kBlock;
    const int64_t len = begin + kBlock < k.neurons ? kBlock : k.neurons - begin;
    float v[kBlock], th[kBlock], amp[kBlock];
    int32_t count[kBlock];
    load_theta(k, begin, len, th, amp);
    for (int64_t j = 0; j < len; ++j) {
      v[j] = v0 ? v0[begin + j] : v_frac * th[j];
      count[j] = 0;
    }
    for (int64_t t = 0; t < k.steps; ++t) {
      const int64_t base = t * k.neurons + begin;
      const typename S::type* x_t = x + t * k.x_step + begin;
      for (int64_t j = 0; j < len; ++j) {
        const float h = v[j] + S::load(x_t, j);
        const bool fired = h >= th[j];
        const float s = fired ? 1.0f : 0.0f;
        v[j] = R == kSubtract ? h - s * th[j] : h * (1.0f - s);
        S::store(spikes, base + j, s * amp[j]);
        count[j] += fired ? 1 : 0;
        if (SAVE_H) h_out[base + j] = h;
      }
    }
    for (int64_t j = 0; j < len; ++j) {
      counts[begin + j] = count[j];
      v_final[begin + j] = v[j];
    }
  }
}

#ifdef NA_HAVE_AVX512
// AVX-512 forward: 16 neurons per zmm, a tile of W zmms keeps v and the count in registers over
// all T steps (t inside), so only x and the spikes move. The spike of a lane is a select between
// two precomputed values, s * amp for s = 0 and s = 1, already in the storage type: no float ->
// 16-bit conversion per step. theta and the two spike values come per neuron from the thread's
// chunk tables below; v and the count use the same float operations as forward_impl (same bits).
// Spikes as stored bits: sixteen lanes selected by `fired` from two precomputed vectors (loads
// of x are avx512.h's Avx512Storage<D>::load, exact for all three types).
struct SpikeBits32 {
  using bits = __m512;
  NA_AVX512 static bits load_bits(const float* p) { return _mm512_loadu_ps(p); }
  NA_AVX512 static void store_spikes(float* p, __mmask16 m, __mmask16 fired, bits off, bits on) {
    _mm512_mask_storeu_ps(p, m, _mm512_mask_blend_ps(fired, off, on));
  }
};
struct SpikeBits16 {  // bfloat16 and float16 alike
  using bits = __m256i;
  NA_AVX512 static bits load_bits(const uint16_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  NA_AVX512 static void store_spikes(uint16_t* p, __mmask16 m, __mmask16 fired, bits off, bits on) {
    _mm256_mask_storeu_epi16(p, m, _mm256_mask_blend_epi16(fired, off, on));
  }
};
template <int D>
struct Avx512IO : Avx512Storage<D>, std::conditional_t<D == kFloat32, SpikeBits32, SpikeBits16> {};

// out[j] = per_channel[c(begin + j)] for j < len, written as runs of equal channel (or, for inner 1,
// as copies of the channel table)
template <class T>
void fill_by_channel(const T* per_channel, int64_t inner, int64_t channels, int64_t begin, int64_t len, T* out) {
  int64_t c = (begin / inner) % channels, run = inner - begin % inner;
  if (inner == 1) {
    for (int64_t j = 0; j < len; c = 0) {
      const int64_t r = channels - c < len - j ? channels - c : len - j;
      std::copy_n(per_channel + c, r, out + j);
      j += r;
    }
    return;
  }
  for (int64_t j = 0; j < len; run = inner, c = c + 1 == channels ? 0 : c + 1) {
    const int64_t r = run < len - j ? run : len - j;
    std::fill_n(out + j, r, per_channel[c]);
    j += r;
  }
}

// Per neuron: theta and the spike (in the storage type) for s = 0 and s = 1, as forward_impl's
// s * amp. The channel pattern repeats every channels * inner neurons (every neuron for one
// channel): where that period is short, one table of a period and a chunk, filled once, serves
// every chunk at an offset; otherwise each thread fills its own chunk's worth per chunk.
template <int D> class NeuronTables {
 public:
  using T = typename Storage<D>::type;
  static constexpr int64_t kMaxPeriod = 1 << 15;

  // shareable: fill the periodic table where the period is short (else fill() per chunk)
  NeuronTables(const IFParams& k, bool shareable) : k_(k), off_c_(k.channels), on_c_(k.channels) {
    for (int64_t c = 0; c < k.channels; ++c) {
      const float amp = k.amp_is_theta ? k.theta[c] : k.amp;
      Storage<D>::store(off_c_.data(), c, 0.0f * amp);
      Storage<D>::store(on_c_.data(), c, 1.0f * amp);
    }
    const int64_t period = k.channels == 1 ? 1 : k.channels * k.inner;
    if (shareable && period <= kMaxPeriod && period <= k.neurons) {
      period_ = period;
      fill(0, period + kBlock);
    }
  }
  bool periodic() const { return period_ > 0; }
  // where the chunk from neuron `begin` starts in the tables
  int64_t offset(int64_t begin) const { return periodic() ? begin % period_ : 0; }
  // the tables of neurons [begin, begin + len), from index 0
  void fill(int64_t begin, int64_t len) {
    resize(len + 16);  // slack: lanes past a chunk's end are loaded, never used
    fill_by_channel(k_.theta, k_.inner, k_.channels, begin, len, theta.data());
    fill_by_channel(off_c_.data(), k_.inner, k_.channels, begin, len, off.data());
    fill_by_channel(on_c_.data(), k_.inner, k_.channels, begin, len, on.data());
  }
  std::vector<float> theta;
  std::vector<T> off, on;

 private:
  void resize(int64_t size) {
    if (static_cast<int64_t>(theta.size()) >= size) return;
    theta.resize(size);
    off.resize(size);
    on.resize(size);
  }
  const IFParams& k_;
  std::vector<T> off_c_, on_c_;
  int64_t period_ = 0;
};

// theta and the two spike values of the neurons of the work item [begin, begin + len): from the
// shared periodic tables, or from the thread's own, filled for this work item
template <int D> struct BlockTables {
  const float* theta;
  const typename Storage<D>::type *off, *on;
};

template <int D>
BlockTables<D> block_tables(const NeuronTables<D>& shared, NeuronTables<D>& own, int64_t begin, int64_t len) {
  if (!shared.periodic()) own.fill(begin, len);
  const NeuronTables<D>& tab = shared.periodic() ? shared : own;
  const int64_t at = tab.offset(begin);
  return {tab.theta.data() + at, tab.off.data() + at, tab.on.data() + at};
}

// the forward's arguments, typed
template <int D> struct SimdForward {
  using T = typename Storage<D>::type;
  const IFParams& k;
  const T* x;
  T* spikes;
  int32_t* counts;
  float* v_final;
  float* h_out;
  const float* v0;
  float v_frac;
};

// W vectors of neurons from n over all steps, their theta and spike values at theta, off, on;
// the last vector's lanes are `last`.
template <int D, int R, bool SAVE_H, int W>
NA_AVX512 inline void avx512_tile(const SimdForward<D>& f, const float* theta, const typename Storage<D>::type* off_bits,
                                  const typename Storage<D>::type* on_bits, int64_t n, __mmask16 last) {
  using IO = Avx512IO<D>;
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512i one_i = _mm512_set1_epi32(1);
  __m512 v[W], th[W];
  __m512i count[W];
  typename IO::bits off[W], on[W];
  __mmask16 m[W];
  for (int w = 0; w < W; ++w) {
    m[w] = w == W - 1 ? last : static_cast<__mmask16>(0xFFFF);
    th[w] = _mm512_loadu_ps(theta + 16 * w);
    off[w] = IO::load_bits(off_bits + 16 * w);
    on[w] = IO::load_bits(on_bits + 16 * w);
    v[w] = f.v0 ? _mm512_maskz_loadu_ps(m[w], f.v0 + n + 16 * w) : _mm512_mul_ps(_mm512_set1_ps(f.v_frac), th[w]);
    count[w] = _mm512_setzero_si512();
  }
  for (int64_t t = 0; t < f.k.steps; ++t) {
    const auto* x_t = f.x + t * f.k.x_step + n;
    const int64_t base = t * f.k.neurons + n;
    for (int w = 0; w < W; ++w) {
      const __m512 h = _mm512_add_ps(v[w], IO::load(x_t + 16 * w, m[w]));
      const __mmask16 fired = _mm512_cmp_ps_mask(h, th[w], _CMP_GE_OQ);
      const __m512 s = _mm512_maskz_mov_ps(fired, one);
      v[w] = R == kSubtract ? _mm512_sub_ps(h, _mm512_mul_ps(s, th[w])) : _mm512_mul_ps(h, _mm512_sub_ps(one, s));
      IO::store_spikes(f.spikes + base + 16 * w, m[w], fired, off[w], on[w]);
      count[w] = _mm512_mask_add_epi32(count[w], fired, count[w], one_i);
      if (SAVE_H) _mm512_mask_storeu_ps(f.h_out + base + 16 * w, m[w], h);
    }
  }
  for (int w = 0; w < W; ++w) {
    _mm512_mask_storeu_epi32(f.counts + n + 16 * w, m[w], count[w]);
    _mm512_mask_storeu_ps(f.v_final + n + 16 * w, m[w], v[w]);
  }
}

template <int D, int R, bool SAVE_H>
NA_AVX512 void avx512_forward_impl(const SimdForward<D>& f, int threads) {
  using T = typename Storage<D>::type;
  // vectors per tile; measured: 1 or 2 move x and the spikes fastest at T = 8, 4 and 8 are slower;
  // 16-bit inputs from T = 16 on gain from 4 (128 bytes of each step's row, as 2 for float32):
  // bfloat16 T = 32, N = 2^17, 1 thread 0.88 ms against 1.03 ms
  constexpr int kTile = 2;
  const IFParams& k = f.k;
  const bool wide_tiles = sizeof(T) == 2 && k.steps >= 16;
  const NeuronTables<D> shared(k, true);
  const int64_t blocks = block_count(k.neurons);
#pragma omp parallel num_threads(threads)
  {
    NeuronTables<D> own(k, false);  // filled per chunk where the period is long
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t begin = b * kBlock;
      const int64_t len = begin + kBlock < k.neurons ? kBlock : k.neurons - begin;
      const BlockTables<D> tab = block_tables(shared, own, begin, len);
      const float* theta = tab.theta;
      const T* off = tab.off;
      const T* on = tab.on;
      int64_t j = 0;
      if (wide_tiles)
        for (; j + 32 * kTile <= len; j += 32 * kTile)
          avx512_tile<D, R, SAVE_H, 2 * kTile>(f, theta + j, off + j, on + j, begin + j, static_cast<__mmask16>(0xFFFF));
      for (; j + 16 * kTile <= len; j += 16 * kTile)
        avx512_tile<D, R, SAVE_H, kTile>(f, theta + j, off + j, on + j, begin + j, static_cast<__mmask16>(0xFFFF));
      for (; j < len; j += 16) {
        const int64_t rest = len - j;
        const __mmask16 last = rest >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << rest) - 1);
        avx512_tile<D, R, SAVE_H, 1>(f, theta + j, off + j, on + j, begin + j, last);
      }
    }
  }
}

template <int D>
void avx512_forward(const IFParams& k, const void* xp, void* sp, int32_t* cp, float* vp, float* hp,
                    const float* v0p, float v_frac, int threads) {
  using T = typename Storage<D>::type;
  const SimdForward<D> f{k, static_cast<const T*>(xp), static_cast<T*>(sp), cp, vp, hp, v0p, v_frac};
  if (k.reset == kSubtract) {
    if (hp) avx512_forward_impl<D, kSubtract, true>(f, threads);
    else avx512_forward_impl<D, kSubtract, false>(f, threads);
  } else {
    if (hp) avx512_forward_impl<D, kZero, true>(f, threads);
    else avx512_forward_impl<D, kZero, false>(f, threads);
  }
}

// AVX2 forward (CPUs without AVX-512): avx512_tile's scheme on 8 neurons per ymm. With no mask
// registers, `fired` is a vector of all-ones / zero lanes: the count subtracts it, the spikes are a
// blend of the two precomputed bit patterns (for 16-bit storage the mask is first packed to 16-bit
// lanes), and a work item's last len % 8 neurons go through avx2_tail (forward_impl's scalar steps).
#define NA_AVX2 __attribute__((target("avx2,f16c")))

inline bool cpu_has_f16c() {
  static const bool has = __builtin_cpu_supports("f16c");
  return has;
}

// Spikes as stored bits: G vectors' worth (8 neurons each) selected by their `fired` lanes from two
// precomputed registers of bits. 16-bit storage packs two vectors' masks into one register (G = 2).
template <int D> struct Avx2IO;
template <> struct Avx2IO<kFloat32> {
  using bits = __m256;
  static constexpr int kGroup = 1;
  NA_AVX2 static __m256 load(const float* p) { return _mm256_loadu_ps(p); }
  template <int G> NA_AVX2 static bits load_bits(const float* p) { return _mm256_loadu_ps(p); }
  template <int G> NA_AVX2 static void store_spikes(float* p, const __m256* fired, bits off, bits on) {
    _mm256_storeu_ps(p, _mm256_blendv_ps(off, on, fired[0]));
  }
};
struct Avx2Bits16 {  // bfloat16 and float16 alike: G = 1 uses the low half
  using bits = __m256i;
  static constexpr int kGroup = 2;
  template <int G> NA_AVX2 static bits load_bits(const uint16_t* p) {
    return G == 2 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                  : _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  // fired lanes are -1 or 0: packed with signed saturation to 16 bits they stay -1 or 0
  template <int G> NA_AVX2 static void store_spikes(uint16_t* p, const __m256* fired, bits off, bits on) {
    const __m256i m0 = _mm256_castps_si256(fired[0]);
    if (G == 2) {  // packs works per 128-bit lane: neurons 0-3, 8-11 | 4-7, 12-15, put in order by permute
      const __m256i m = _mm256_permute4x64_epi64(_mm256_packs_epi32(m0, _mm256_castps_si256(fired[G - 1])), 0xD8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_blendv_epi8(off, on, m));
    } else {
      const __m128i m = _mm_packs_epi32(_mm256_castsi256_si128(m0), _mm256_extracti128_si256(m0, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                       _mm_blendv_epi8(_mm256_castsi256_si128(off), _mm256_castsi256_si128(on), m));
    }
  }
};
template <> struct Avx2IO<kBFloat16> : Avx2Bits16 {
  NA_AVX2 static __m256 load(const uint16_t* p) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16));
  }
};
template <> struct Avx2IO<kFloat16> : Avx2Bits16 {
  // vcvtph2ps: exact (see Avx512Storage<kFloat16>::load)
  NA_AVX2 static __m256 load(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
};

// W vectors of 8 neurons from n, all full, over all steps (as avx512_tile)
template <int D, int R, bool SAVE_H, int W>
NA_AVX2 inline void avx2_tile(const SimdForward<D>& f, const float* theta, const typename Storage<D>::type* off_bits,
                              const typename Storage<D>::type* on_bits, int64_t n) {
  using IO = Avx2IO<D>;
  constexpr int G = W % IO::kGroup == 0 ? IO::kGroup : 1;  // vectors per register of spike bits
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 v[W], th[W];
  __m256i count[W];
  typename IO::bits off[W / G], on[W / G];
  for (int g = 0; g < W / G; ++g) {
    off[g] = IO::template load_bits<G>(off_bits + 8 * G * g);
    on[g] = IO::template load_bits<G>(on_bits + 8 * G * g);
  }
  for (int w = 0; w < W; ++w) {
    th[w] = _mm256_loadu_ps(theta + 8 * w);
    v[w] = f.v0 ? _mm256_loadu_ps(f.v0 + n + 8 * w) : _mm256_mul_ps(_mm256_set1_ps(f.v_frac), th[w]);
    count[w] = _mm256_setzero_si256();
  }
  for (int64_t t = 0; t < f.k.steps; ++t) {
    const auto* x_t = f.x + t * f.k.x_step + n;
    const int64_t base = t * f.k.neurons + n;
    __m256 fired[W];
    for (int w = 0; w < W; ++w) {
      const __m256 h = _mm256_add_ps(v[w], IO::load(x_t + 8 * w));
      fired[w] = _mm256_cmp_ps(h, th[w], _CMP_GE_OQ);
      const __m256 s = _mm256_and_ps(fired[w], one);
      v[w] = R == kSubtract ? _mm256_sub_ps(h, _mm256_mul_ps(s, th[w])) : _mm256_mul_ps(h, _mm256_sub_ps(one, s));
      count[w] = _mm256_sub_epi32(count[w], _mm256_castps_si256(fired[w]));
      if (SAVE_H) _mm256_storeu_ps(f.h_out + base + 8 * w, h);
    }
    for (int g = 0; g < W / G; ++g)
      IO::template store_spikes<G>(f.spikes + base + 8 * G * g, fired + G * g, off[g], on[g]);
  }
  for (int w = 0; w < W; ++w) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(f.counts + n + 8 * w), count[w]);
    _mm256_storeu_ps(f.v_final + n + 8 * w, v[w]);
  }
}

// one neuron n over all steps, forward_impl's operations
template <int D, int R, bool SAVE_H>
void avx2_tail(const SimdForward<D>& f, float theta, typename Storage<D>::type off, typename Storage<D>::type on,
               int64_t n) {
  float v = f.v0 ? f.v0[n] : f.v_frac * theta;
  int32_t count = 0;
  for (int64_t t = 0; t < f.k.steps; ++t) {
    const float h = v + Storage<D>::load(f.x + t * f.k.x_step, n);
    const bool fired = h >= theta;
    const float s = fired ? 1.0f : 0.0f;
    v = R == kSubtract ? h - s * theta : h * (1.0f - s);
    f.spikes[t * f.k.neurons + n] = fired ? on : off;
    count += fired ? 1 : 0;
    if (SAVE_H) f.h_out[t * f.k.neurons + n] = h;
  }
  f.counts[n] = count;
  f.v_final[n] = v;
}

template <int D, int R, bool SAVE_H>
NA_AVX2 void avx2_forward_impl(const SimdForward<D>& f, int threads) {
  using T = typename Storage<D>::type;
  // vectors per tile; measured at T = 8 and 32, 1 thread: 4 beats 1, 2 and 8 (16-bit T = 8, N = 2^19: 1.3 ms, 2: 1.6)
  constexpr int kTile = 4;
  const IFParams& k = f.k;
  const NeuronTables<D> shared(k, true);
  const int64_t blocks = block_count(k.neurons);
#pragma omp parallel num_threads(threads)
  {
    NeuronTables<D> own(k, false);  // filled per chunk where the period is long
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t begin = b * kBlock;
      const int64_t len = begin + kBlock < k.neurons ? kBlock : k.neurons - begin;
      const BlockTables<D> tab = block_tables(shared, own, begin, len);
      const float* theta = tab.theta;
      const T* off = tab.off;
      const T* on = tab.on;
      int64_t j = 0;
      for (; j + 8 * kTile <= len; j += 8 * kTile)
        avx2_tile<D, R, SAVE_H, kTile>(f, theta + j, off + j, on + j, begin + j);
      for (; j + 8 <= len; j += 8) avx2_tile<D, R, SAVE_H, 1>(f, theta + j, off + j, on + j, begin + j);
      for (; j < len; ++j) avx2_tail<D, R, SAVE_H>(f, theta[j], off[j], on[j], begin + j);
    }
  }
}

template <int D>
void avx2_forward(const IFParams& k, const void* xp, void* sp, int32_t* cp, float* vp, float* hp, const float* v0p,
                  float v_frac, int threads) {
  using T = typename Storage<D>::type;
  const SimdForward<D> f{k, static_cast<const T*>(xp), static_cast<T*>(sp), cp, vp, hp, v0p, v_frac};
  if (k.reset == kSubtract) {
    if (hp) avx2_forward_impl<D, kSubtract, true>(f, threads);
    else avx2_forward_impl<D, kSubtract, false>(f, threads);
  } else {
    if (hp) avx2_forward_impl<D, kZero, true>(f, threads);
    else avx2_forward_impl<D, kZero, false>(f, threads);
  }
}

#endif  // NA_HAVE_AVX512

struct SurrogateParams {
  int kind;
  float alpha;       // alpha rounded to float32
  float atan_scale;  // pi / 2 * alpha (double) rounded to float32
  float half_alpha;  // alpha * 0.5 in float32
  float half_width;  // 0.5 / alpha (double) rounded to float32
};

template <int SG>
inline float surrogate_grad(const SurrogateParams& g, float u) {
  if (SG == kSigmoid) {
    const float sig = 1.0f / (1.0f + std::exp(-(u * g.alpha)));
    return g.alpha * sig * (1.0f - sig);
  } else if (SG == kAtan) {
    const float w = g.atan_scale * u;
    return g.half_alpha / (1.0f + w * w);
  } else if (SG == kTriangle) {
    const float r = 1.0f - g.alpha * std::fabs(u);
    return g.alpha * (r < 0.0f ? 0.0f : r);  // NaN stays NaN, like torch.clamp
  } else {
    return g.alpha * (std::fabs(u) < g.half_width ? 1.0f : 0.0f);
  }
}

// Reset R, surrogate SG and DETACH are template parameters: no branch in the inner loop.
template <int D, int R, int SG, bool DETACH>
void backward_impl(const IFParams& k, const SurrogateParams& g, const void* grad_spikes_ptr,
                   const float* grad_v, const float* h_in, void* grad_x_ptr, float* grad_v_init, int threads) {
  using S = Storage<D>;
  const auto* grad_spikes = static_cast<const typename S::type*>(grad_spikes_ptr);
  auto* grad_x = static_cast<typename S::type*>(grad_x_ptr);
  const auto* x = static_cast<const typename S::type*>(k.recompute_x);
  const int64_t blocks = block_count(k.neurons);
#pragma omp parallel num_threads(threads)
  {
  // recompute: this block's h of every step, [T, len], stays in this thread's cache-sized scratch
  std::vector<float> scratch(x ? static_cast<size_t>(k.steps * kBlock) : 0);
#pragma omp for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * kBlock;
    const int64_t len = begin + kBlock < k.neurons ? kBlock : k.neurons - begin;
    float gv[kBlock], th[kBlock], amp[kBlock];
    load_theta(k, begin, len, th, amp);
    if (x) {  // the forward's loop, same operations (same bits), keeping h
      float v[kBlock];
      for (int64_t j = 0; j < len; ++j) v[j] = k.v0 ? k.v0[begin + j] : k.v_frac * th[j];
      for (int64_t t = 0; t < k.steps; ++t) {
        const typename S::type* x_t = x + t * k.x_step + begin;
        float* h_t = scratch.data() + t * len;
        for (int64_t j = 0; j < len; ++j) {
          const float h = v[j] + S::load(x_t, j);
          const float s = h >= th[j] ? 1.0f : 0.0f;
          v[j] = R == kSubtract ? h - s * th[j] : h * (1.0f - s);
          h_t[j] = h;
        }
      }
    }
    for (int64_t j = 0; j < len; ++j) gv[j] = grad_v ? grad_v[begin + j] : 0.0f;
    for (int64_t t = k.steps - 1; t >= 0; --t) {
      const int64_t base = t * k.neurons + begin;
      const float* h_t = x ? scratch.data() + t * len : h_in + base;
      for (int64_t j = 0; j < len; ++j) {
        const float h = h_t[j];
        const float u = h - th[j];
        const float sg = surrogate_grad<SG>(g, u);
        float gs = grad_spikes ? S::load(grad_spikes, base + j) * amp[j] : 0.0f;
        float gh;
        if (R == kSubtract) {
          if (!DETACH) gs = gs - th[j] * gv[j];
          gh = gs * sg + gv[j];
        } else {
          const float not_fired = 1.0f - (u >= 0.0f ? 1.0f : 0.0f);
          if (!DETACH) gs = gs - h * gv[j];
          gh = gs * sg + gv[j] * not_fired;
        }
        if (grad_x) S::store(grad_x, base + j, gh);
        gv[j] = gh;
      }
    }
    if (grad_v_init)
      for (int64_t j = 0; j < len; ++j) grad_v_init[begin + j] = gv[j];
  }
  }
}

#ifdef NA_HAVE_AVX512
// AVX-512 backward: the scalar backward's operations on tiles of W vectors of 16 neurons, the
// grad of v in registers over all steps (t from T-1 down to 0). With recompute, the tile's h of
// every step is first rebuilt by the forward's operations into a per-thread scratch of T x 16W.
template <int D> struct Avx512Backward {
  using T = typename Storage<D>::type;
  const IFParams& k;
  const SurrogateParams& g;
  const T* grad_spikes;  // or null: zero
  const float* grad_v;   // or null: zero
  const float* h_in;     // saved h, or null: recompute from k.recompute_x
  T* grad_x;             // or null: not wanted
  float* grad_v_init;    // or null: not wanted
};

template <int SG>
NA_AVX512 inline __m512 surrogate_grad_avx512(const SurrogateParams& g, __m512 u) {
  const __m512 one = _mm512_set1_ps(1.0f), alpha = _mm512_set1_ps(g.alpha);
  if (SG == kSigmoid) {
    const __m512 minus_alpha_u = _mm512_xor_ps(_mm512_mul_ps(u, alpha), _mm512_set1_ps(-0.0f));
    const __m512 sig = _mm512_div_ps(one, _mm512_add_ps(one, exp_ps_avx512(minus_alpha_u)));
    return _mm512_mul_ps(_mm512_mul_ps(alpha, sig), _mm512_sub_ps(one, sig));
  } else if (SG == kAtan) {
    const __m512 w = _mm512_mul_ps(_mm512_set1_ps(g.atan_scale), u);
    return _mm512_div_ps(_mm512_set1_ps(g.half_alpha), _mm512_add_ps(one, _mm512_mul_ps(w, w)));
  }
  const __m512 magnitude = _mm512_abs_ps(u);
  if (SG == kTriangle) {
    const __m512 r = _mm512_sub_ps(one, _mm512_mul_ps(alpha, magnitude));
    const __m512 zero = _mm512_setzero_ps();
    return _mm512_mul_ps(alpha, _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(r, zero, _CMP_LT_OQ), zero));
  }
  const __mmask16 inside = _mm512_cmp_ps_mask(magnitude, _mm512_set1_ps(g.half_width), _CMP_LT_OQ);
  return _mm512_mul_ps(alpha, _mm512_maskz_mov_ps(inside, one));
}

template <int D, int R, int SG, bool DETACH, int W>
NA_AVX512 inline void avx512_backward_tile(const Avx512Backward<D>& f, const float* theta, const float* amp,
                                           int64_t n, __mmask16 last, float* scratch) {
  using IO = Avx512Storage<D>;
  const IFParams& k = f.k;
  const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
  __m512 th[W], am[W], gv[W];
  __mmask16 m[W];
  for (int w = 0; w < W; ++w) {
    m[w] = w == W - 1 ? last : static_cast<__mmask16>(0xFFFF);
    th[w] = _mm512_loadu_ps(theta + 16 * w);
    am[w] = _mm512_loadu_ps(amp + 16 * w);
    gv[w] = f.grad_v ? _mm512_maskz_loadu_ps(m[w], f.grad_v + n + 16 * w) : zero;
  }
  if (!f.h_in) {  // the forward's operations, keeping h
    const auto* x = static_cast<const typename IO::type*>(k.recompute_x);
    __m512 v[W];
    for (int w = 0; w < W; ++w)
      v[w] = k.v0 ? _mm512_maskz_loadu_ps(m[w], k.v0 + n + 16 * w) : _mm512_mul_ps(_mm512_set1_ps(k.v_frac), th[w]);
    for (int64_t t = 0; t < k.steps; ++t) {
      for (int w = 0; w < W; ++w) {
        const __m512 h = _mm512_add_ps(v[w], IO::load(x + t * k.x_step + n + 16 * w, m[w]));
        const __m512 s = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(h, th[w], _CMP_GE_OQ), one);
        v[w] = R == kSubtract ? _mm512_sub_ps(h, _mm512_mul_ps(s, th[w])) : _mm512_mul_ps(h, _mm512_sub_ps(one, s));
        _mm512_storeu_ps(scratch + (t * W + w) * 16, h);
      }
    }
  }
  for (int64_t t = k.steps - 1; t >= 0; --t) {
    const int64_t base = t * k.neurons + n;
    for (int w = 0; w < W; ++w) {
      const __m512 h = f.h_in ? _mm512_maskz_loadu_ps(m[w], f.h_in + base + 16 * w)
                              : _mm512_loadu_ps(scratch + (t * W + w) * 16);
      const __m512 u = _mm512_sub_ps(h, th[w]);
      const __m512 sg = surrogate_grad_avx512<SG>(f.g, u);
      __m512 gs = f.grad_spikes ? _mm512_mul_ps(IO::load(f.grad_spikes + base + 16 * w, m[w]), am[w]) : zero;
      __m512 gh;
      if (R == kSubtract) {
        if (!DETACH) gs = _mm512_sub_ps(gs, _mm512_mul_ps(th[w], gv[w]));
        gh = _mm512_add_ps(_mm512_mul_ps(gs, sg), gv[w]);
      } else {
        const __m512 not_fired = _mm512_sub_ps(one, _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(u, zero, _CMP_GE_OQ), one));
        if (!DETACH) gs = _mm512_sub_ps(gs, _mm512_mul_ps(h, gv[w]));
        gh = _mm512_add_ps(_mm512_mul_ps(gs, sg), _mm512_mul_ps(gv[w], not_fired));
      }
      if (f.grad_x) IO::store(f.grad_x + base + 16 * w, m[w], gh);
      gv[w] = gh;
    }
  }
  if (f.grad_v_init)
    for (int w = 0; w < W; ++w) _mm512_mask_storeu_ps(f.grad_v_init + n + 16 * w, m[w], gv[w]);
}

template <int D, int R, int SG, bool DETACH>
NA_AVX512 void avx512_backward_impl(const Avx512Backward<D>& f, int threads) {
  constexpr int kTile = 2;
  const IFParams& k = f.k;
  std::vector<float> amp_c(k.channels);
  for (int64_t c = 0; c < k.channels; ++c) amp_c[c] = k.amp_is_theta ? k.theta[c] : k.amp;
  const int64_t blocks = block_count(k.neurons);
#pragma omp parallel num_threads(threads)
  {
    // theta and amplitude per neuron of a block (+ one vector of slack: lanes past the end are read)
    std::vector<float> theta(kBlock + 16, 0.0f), amp(kBlock + 16, 0.0f);
    std::vector<float> scratch(f.h_in ? 0 : static_cast<size_t>(k.steps * 16 * kTile));
    bool filled = false;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t begin = b * kBlock;
      const int64_t len = begin + kBlock < k.neurons ? kBlock : k.neurons - begin;
      if (k.channels > 1 || !filled) {  // one channel: the same tables for every block
        const int64_t fill = k.channels > 1 ? len : kBlock;
        fill_by_channel(k.theta, k.inner, k.channels, begin, fill, theta.data());
        fill_by_channel(amp_c.data(), k.inner, k.channels, begin, fill, amp.data());
        filled = true;
      }
      int64_t j = 0;
      for (; j + 16 * kTile <= len; j += 16 * kTile)
        avx512_backward_tile<D, R, SG, DETACH, kTile>(f, theta.data() + j, amp.data() + j, begin + j,
                                                      static_cast<__mmask16>(0xFFFF), scratch.data());
      for (; j < len; j += 16)
        avx512_backward_tile<D, R, SG, DETACH, 1>(f, theta.data() + j, amp.data() + j, begin + j,
                                                  first_lanes(len - j), scratch.data());
    }
  }
}
#endif  // NA_HAVE_AVX512

template <int D>
void forward_dispatch(const IFParams& k, const void* xp, void* sp, int32_t* cp, float* vp, float* hp,
                      const float* v0p, float v_frac, int threads) {
#ifdef NA_HAVE_AVX512
  if (cpu_has_avx512()) return avx512_forward<D>(k, xp, sp, cp, vp, hp, v0p, v_frac, threads);
  if (cpu_has_avx2() && cpu_has_f16c()) return avx2_forward<D>(k, xp, sp, cp, vp, hp, v0p, v_frac, threads);
#endif
  if (k.reset == kSubtract) {
    if (hp) forward_impl<D, kSubtract, true>(k, xp, sp, cp, vp, hp, v0p, v_frac, threads);
    else forward_impl<D, kSubtract, false>(k, xp, sp, cp, vp, hp, v0p, v_frac, threads);
  } else {
    if (hp) forward_impl<D, kZero, true>(k, xp, sp, cp, vp, hp, v0p, v_frac, threads);
    else forward_impl<D, kZero, false>(k, xp, sp, cp, vp, hp, v0p, v_frac, threads);
  }
}

template <int D, int R, int SG>
void backward_detach(const IFParams& k, const SurrogateParams& g, bool detach, const void* gsp, const float* gvp,
                     const float* hp, void* gxp, float* gvip, int threads) {
#ifdef NA_HAVE_AVX512
  if (cpu_has_avx512()) {
    using T = typename Storage<D>::type;
    const Avx512Backward<D> f{k, g, static_cast<const T*>(gsp), gvp, hp, static_cast<T*>(gxp), gvip};
    if (detach) avx512_backward_impl<D, R, SG, true>(f, threads);
    else avx512_backward_impl<D, R, SG, false>(f, threads);
    return;
  }
#endif
  if (detach) backward_impl<D, R, SG, true>(k, g, gsp, gvp, hp, gxp, gvip, threads);
  else backward_impl<D, R, SG, false>(k, g, gsp, gvp, hp, gxp, gvip, threads);
}

template <int D, int R>
void backward_surrogate(const IFParams& k, const SurrogateParams& g, bool detach, const void* gsp, const float* gvp,
                        const float* hp, void* gxp, float* gvip, int threads) {
  switch (g.kind) {
    case kSigmoid: backward_detach<D, R, kSigmoid>(k, g, detach, gsp, gvp, hp, gxp, gvip, threads); break;
    case kAtan: backward_detach<D, R, kAtan>(k, g, detach, gsp, gvp, hp, gxp, gvip, threads); break;
    case kTriangle: backward_detach<D, R, kTriangle>(k, g, detach, gsp, gvp, hp, gxp, gvip, threads); break;
    default: backward_detach<D, R, kRectangle>(k, g, detach, gsp, gvp, hp, gxp, gvip, threads); break;
  }
}

template <int D>
void backward_dispatch(const IFParams& k, const SurrogateParams& g, bool detach, const void* gsp, const float* gvp,
                       const float* hp, void* gxp, float* gvip, int threads) {
  if (k.reset == kSubtract) backward_surrogate<D, kSubtract>(k, g, detach, gsp, gvp, hp, gxp, gvip, threads);
  else backward_surrogate<D, kZero>(k, g, detach, gsp, gvp, hp, gxp, gvip, threads);
}

IFParams make_params(int64_t steps, int64_t neurons, int64_t inner, int64_t channels, uintptr_t theta, int reset,
                     bool amp_is_theta, float amp) {
  if (steps < 1 || neurons < 0 || inner < 1 || channels < 1 || (reset != kSubtract && reset != kZero))
    throw std::invalid_argument("na_kernels: bad integrate_fire arguments");
  return IFParams{steps, neurons, inner, channels, neurons, reinterpret_cast<const float*>(theta), reset, amp_is_theta,
                  amp};
}

// Addresses: x / spikes in `dtype` (step t of x at x + t * x_step elements, each step contiguous;
// spikes [T, N] contiguous); counts int32 [N]; v_final float32 [N]; h float32 [T, N] or 0 (not
// saved); v0 float32 [N] or 0 (then v starts at v_frac * theta).
void integrate_fire_forward(uintptr_t x, int64_t x_step, uintptr_t spikes, uintptr_t counts, uintptr_t v_final,
                            uintptr_t h, int dtype, int64_t steps, int64_t neurons, int64_t inner, int64_t channels,
                            uintptr_t theta, uintptr_t v0, float v_frac, int reset, bool amp_is_theta, float amp,
                            int threads) {
  IFParams k = make_params(steps, neurons, inner, channels, theta, reset, amp_is_theta, amp);
  if (x_step < 0) throw std::invalid_argument("na_kernels: bad integrate_fire x_step");
  k.x_step = x_step;
  if (neurons == 0) return;
  const void* xp = reinterpret_cast<const void*>(x);
  void* sp = reinterpret_cast<void*>(spikes);
  int32_t* cp = reinterpret_cast<int32_t*>(counts);
  float* vp = reinterpret_cast<float*>(v_final);
  float* hp = reinterpret_cast<float*>(h);
  const float* v0p = reinterpret_cast<const float*>(v0);
  switch (dtype) {
    case kFloat32: forward_dispatch<kFloat32>(k, xp, sp, cp, vp, hp, v0p, v_frac, threads); break;
    case kFloat16: forward_dispatch<kFloat16>(k, xp, sp, cp, vp, hp, v0p, v_frac, threads); break;
    case kBFloat16: forward_dispatch<kBFloat16>(k, xp, sp, cp, vp, hp, v0p, v_frac, threads); break;
    default: throw std::invalid_argument("na_kernels: unsupported dtype code");
  }
}

// Addresses: grad_spikes in `dtype` [T, N] or 0 (zero); grad_v float32 [N] or 0 (zero); h float32 [T, N],
// or 0 to recompute h from x (in `dtype`, steps x_step apart) and v0 (float32 [N], or 0: v_frac * theta);
// grad_x in `dtype` [T, N] or 0 (not wanted); grad_v_init float32 [N] or 0 (not wanted).
void integrate_fire_backward(uintptr_t grad_spikes, uintptr_t grad_v, uintptr_t h, uintptr_t x, int64_t x_step,
                             uintptr_t v0, float v_frac, uintptr_t grad_x, uintptr_t grad_v_init, int dtype,
                             int64_t steps, int64_t neurons, int64_t inner, int64_t channels, uintptr_t theta,
                             int reset, bool amp_is_theta, float amp, int surrogate, double alpha, bool detach,
                             int threads) {
  IFParams k = make_params(steps, neurons, inner, channels, theta, reset, amp_is_theta, amp);
  if (neurons == 0) return;
  if ((h == 0) == (x == 0) || x_step < 0)
    throw std::invalid_argument("na_kernels: integrate_fire backward needs exactly one of h and x");
  k.recompute_x = reinterpret_cast<const void*>(x);
  k.x_step = x_step;
  k.v0 = reinterpret_cast<const float*>(v0);
  k.v_frac = v_frac;
  if (surrogate < kSigmoid || surrogate > kRectangle || !(alpha > 0))
    throw std::invalid_argument("na_kernels: bad integrate_fire surrogate");
  if (neurons == 0) return;
  const double pi = 3.14159265358979323846;
  const float alpha32 = static_cast<float>(alpha);
  const SurrogateParams g{surrogate, alpha32, static_cast<float>(pi / 2 * alpha), alpha32 * 0.5f,
                          static_cast<float>(0.5 / alpha)};
  const void* gsp = reinterpret_cast<const void*>(grad_spikes);
  const float* gvp = reinterpret_cast<const float*>(grad_v);
  const float* hp = reinterpret_cast<const float*>(h);
  void* gxp = reinterpret_cast<void*>(grad_x);
  float* gvip = reinterpret_cast<float*>(grad_v_init);
  switch (dtype) {
    case kFloat32: backward_dispatch<kFloat32>(k, g, detach, gsp, gvp, hp, gxp, gvip, threads); break;
    case kFloat16: backward_dispatch<kFloat16>(k, g, detach, gsp, gvp, hp, gxp, gvip, threads); break;
    case kBFloat16: backward_dispatch<kBFloat16>(k, g, detach, gsp, gvp, hp, gxp, gvip, threads); break;
    default: throw std::invalid_argument("na_kernels: unsupported dtype code");
  }
}

}  // namespace

void bind_integrate_fire(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("integrate_fire_forward", &integrate_fire_forward, py::call_guard<py::gil_scoped_release>(),
        py::kw_only(), py::arg("x"), py::arg("x_step"), py::arg("spikes"), py::arg("counts"), py::arg("v_final"), py::arg("h"), py::arg("dtype"), py::arg("steps"), py::arg("neurons"), py::arg("channel_stride"), py::arg("channels"), py::arg("theta"), py::arg("v0"), py::arg("v_frac"), py::arg("reset"), py::arg("amp_is_theta"), py::arg("amp"), py::arg("threads"),
        "multi-step integrate-and-fire forward on raw pointers (see csrc/integrate_fire.cpp)");
  m.def("integrate_fire_backward", &integrate_fire_backward, py::call_guard<py::gil_scoped_release>(),
        py::kw_only(), py::arg("grad_spikes"), py::arg("grad_v"), py::arg("h"), py::arg("x"), py::arg("x_step"), py::arg("v0"), py::arg("v_frac"), py::arg("grad_x"), py::arg("grad_v_init"), py::arg("dtype"), py::arg("steps"), py::arg("neurons"), py::arg("channel_stride"), py::arg("channels"), py::arg("theta"), py::arg("reset"), py::arg("amp_is_theta"), py::arg("amp"), py::arg("surrogate"), py::arg("alpha"), py::arg("detach_reset"), py::arg("threads"),
        "integrate-and-fire surrogate-gradient BPTT on raw pointers");
}

}  // namespace na
