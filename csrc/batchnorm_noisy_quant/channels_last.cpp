// batchnorm_noisy_quant's float32 kernels for channels-last x, y (and residual, grad_y,
// grad_x, grad_residual): memory order [batch][inner][channels]. Rows of `channels` elements,
// vectors across the channels (AVX-512, AVX2, or one lane; simd_level() picks), the per-channel
// constants loaded as vectors. Every element computes what the contiguous kernels compute for
// it (generic.cpp): the same float32 operations in the same order, and the noise of its
// logical (row-major [batch][channels][inner]) flat index, so y at each logical position equals
// the contiguous path's; the mask's bit i is the i-th element of y in memory.
//
// Work items are row ranges of one image (the whole image when it is small); mask bytes shared
// by two items are or-ed into atomically. The noise: on AVX-512 with channels % 16 == 0 and
// inner % 4 == 0, in registers, one Philox block per channel giving four consecutive rows
// (forward_item_avx512_direct); otherwise made channel by channel (logical indices consecutive
// within a channel) with scaled_noise_batch into a buffer, then transposed to memory order.
// Per-channel sums are float64, per thread, added in thread order; backward's three sums
// collect in float32 for kRowsPerFlush rows at a time, then in float64.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "batchnorm_noisy_quant/batchnorm_noisy_quant.h"
#include "batchnorm_noisy_quant/mask_bits.h"
#include "common/dispatch.h"
#include "common/lanes.h"
#include "common/lanes_avx2.h"
#include "common/lanes_avx512.h"
#include "common/parallel.h"
#include "common/simd.h"
#include "noise/noise.h"
#include "noisy_quant/noisy_quant.h"

namespace na {
namespace batchnorm_noisy_quant {
namespace {

using noisy_quant::ChannelConstants;
using noisy_quant::dequantize;
using noisy_quant::passes;
using noisy_quant::quantize_raw;

constexpr int64_t kItemElements = 1 << 15;  // elements of a work item (at least kMinRows rows)
constexpr int64_t kMinRows = 256;  // rows of a work item when an image is split: whole noise batches per channel
constexpr int64_t kRowsPerFlush = 256;  // backward's float32 partial sums, then float64

// ---- memory access per lane type: loads and stores of a vector, 0 / 1 bytes of a mask, and
// float64 sums of the lanes into consecutive doubles

template <class L> struct Mem;

template <> struct Mem<ScalarLanes> {
  using Vec = float;
  using Mask = bool;
  static NA_INLINE Vec load(const float* p) { return *p; }
  static NA_INLINE void store(float* p, Vec v) { *p = v; }
  static NA_INLINE void store_inside(uint8_t* p, Mask m) { *p = m ? 1 : 0; }
  static NA_INLINE Mask load_inside(const uint8_t* p) { return *p != 0; }
  static NA_INLINE void add_sum(double* s, Vec v) { *s += static_cast<double>(v); }
  static NA_INLINE void add_squares(double* s, Vec v, const double* mean) {
    const double d = static_cast<double>(v) - *mean;
    *s += d * d;
  }
  // four rows: ((a + b) + (c + d)) in float64, then into the sum (a shorter dependency chain)
  static NA_INLINE void add_sum4(double* s, const Vec* v) {
    *s += (static_cast<double>(v[0]) + static_cast<double>(v[1])) +
          (static_cast<double>(v[2]) + static_cast<double>(v[3]));
  }
  static NA_INLINE void add_squares4(double* s, const Vec* v, const double* mean) {
    double d[4];
    for (int j = 0; j < 4; ++j) d[j] = static_cast<double>(v[j]) - *mean;
    *s += (d[0] * d[0] + d[1] * d[1]) + (d[2] * d[2] + d[3] * d[3]);
  }
};

#ifdef NA_X86_SIMD
template <> struct Mem<Avx2Lanes> {
  using Vec = __m256;
  using Mask = __m256;
  NA_AVX2 static Vec load(const float* p) { return _mm256_loadu_ps(p); }
  NA_AVX2 static void store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  NA_AVX2 static void store_inside(uint8_t* p, Mask m) {
    std::memcpy(p, &kBitBytes.of[_mm256_movemask_ps(m)], 8);
  }
  NA_AVX2 static Mask load_inside(const uint8_t* p) {
    const __m256i wide = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(wide, _mm256_setzero_si256()));
  }
  NA_AVX2 static void add_sum(double* s, Vec v) {
    _mm256_storeu_pd(s, _mm256_add_pd(_mm256_loadu_pd(s), _mm256_cvtps_pd(_mm256_castps256_ps128(v))));
    _mm256_storeu_pd(s + 4, _mm256_add_pd(_mm256_loadu_pd(s + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))));
  }
  NA_AVX2 static void add_squares(double* s, Vec v, const double* mean) {
    const __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_loadu_pd(mean));
    const __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)), _mm256_loadu_pd(mean + 4));
    _mm256_storeu_pd(s, _mm256_add_pd(_mm256_loadu_pd(s), _mm256_mul_pd(d0, d0)));
    _mm256_storeu_pd(s + 4, _mm256_add_pd(_mm256_loadu_pd(s + 4), _mm256_mul_pd(d1, d1)));
  }
  NA_AVX2 static void add_sum4(double* s, const Vec* v) {
    for (int h = 0; h < 2; ++h) {
      __m256d d[4];
      for (int j = 0; j < 4; ++j)
        d[j] = _mm256_cvtps_pd(h ? _mm256_extractf128_ps(v[j], 1) : _mm256_castps256_ps128(v[j]));
      const __m256d t = _mm256_add_pd(_mm256_add_pd(d[0], d[1]), _mm256_add_pd(d[2], d[3]));
      _mm256_storeu_pd(s + 4 * h, _mm256_add_pd(_mm256_loadu_pd(s + 4 * h), t));
    }
  }
  NA_AVX2 static void add_squares4(double* s, const Vec* v, const double* mean) {
    for (int h = 0; h < 2; ++h) {
      const __m256d m = _mm256_loadu_pd(mean + 4 * h);
      __m256d d[4];
      for (int j = 0; j < 4; ++j) {
        d[j] = _mm256_sub_pd(_mm256_cvtps_pd(h ? _mm256_extractf128_ps(v[j], 1) : _mm256_castps256_ps128(v[j])), m);
        d[j] = _mm256_mul_pd(d[j], d[j]);
      }
      const __m256d t = _mm256_add_pd(_mm256_add_pd(d[0], d[1]), _mm256_add_pd(d[2], d[3]));
      _mm256_storeu_pd(s + 4 * h, _mm256_add_pd(_mm256_loadu_pd(s + 4 * h), t));
    }
  }
};

template <> struct Mem<Avx512Lanes> {
  using Vec = __m512;
  using Mask = __mmask16;
  NA_AVX512 static Vec load(const float* p) { return _mm512_loadu_ps(p); }
  NA_AVX512 static void store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  NA_AVX512 static void store_inside(uint8_t* p, Mask m) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm_maskz_set1_epi8(m, 1));
  }
  NA_AVX512 static Mask load_inside(const uint8_t* p) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm_test_epi8_mask(bytes, bytes);
  }
  NA_AVX512 static void add_sum(double* s, Vec v) {
    _mm512_storeu_pd(s, _mm512_add_pd(_mm512_loadu_pd(s), _mm512_cvtps_pd(_mm512_castps512_ps256(v))));
    _mm512_storeu_pd(s + 8, _mm512_add_pd(_mm512_loadu_pd(s + 8), _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1))));
  }
  NA_AVX512 static void add_squares(double* s, Vec v, const double* mean) {
    const __m512d d0 = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), _mm512_loadu_pd(mean));
    const __m512d d1 = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)), _mm512_loadu_pd(mean + 8));
    _mm512_storeu_pd(s, _mm512_add_pd(_mm512_loadu_pd(s), _mm512_mul_pd(d0, d0)));
    _mm512_storeu_pd(s + 8, _mm512_add_pd(_mm512_loadu_pd(s + 8), _mm512_mul_pd(d1, d1)));
  }
  NA_AVX512 static void add_sum4(double* s, const Vec* v) {
    for (int h = 0; h < 2; ++h) {
      __m512d d[4];
      for (int j = 0; j < 4; ++j)
        d[j] = _mm512_cvtps_pd(h ? _mm512_extractf32x8_ps(v[j], 1) : _mm512_castps512_ps256(v[j]));
      const __m512d t = _mm512_add_pd(_mm512_add_pd(d[0], d[1]), _mm512_add_pd(d[2], d[3]));
      _mm512_storeu_pd(s + 8 * h, _mm512_add_pd(_mm512_loadu_pd(s + 8 * h), t));
    }
  }
  NA_AVX512 static void add_squares4(double* s, const Vec* v, const double* mean) {
    for (int h = 0; h < 2; ++h) {
      const __m512d m = _mm512_loadu_pd(mean + 8 * h);
      __m512d d[4];
      for (int j = 0; j < 4; ++j) {
        d[j] = _mm512_sub_pd(_mm512_cvtps_pd(h ? _mm512_extractf32x8_ps(v[j], 1) : _mm512_castps512_ps256(v[j])), m);
        d[j] = _mm512_mul_pd(d[j], d[j]);
      }
      const __m512d t = _mm512_add_pd(_mm512_add_pd(d[0], d[1]), _mm512_add_pd(d[2], d[3]));
      _mm512_storeu_pd(s + 8 * h, _mm512_add_pd(_mm512_loadu_pd(s + 8 * h), t));
    }
  }
};
#endif

// body.template at<Lanes>(c) for the channels of one row: vectors of L, the rest one lane at a time
template <class L, class Body> NA_INLINE void across_channels(int64_t channels, Body& body) {
  int64_t c = 0;
  if constexpr (L::kWidth > 1)
    for (; c + L::kWidth <= channels; c += L::kWidth) body.template at<L>(c);
  for (; c < channels; ++c) body.template at<ScalarLanes>(c);
}

// ---- work items: rows [row, row + rows) of image n

struct Item {
  int64_t n, row, rows;
};

struct Items {
  int64_t rows_per_item, per_image, count;
  explicit Items(const Shape& s) {
    const int64_t inner = std::max<int64_t>(s.inner, 1);
    rows_per_item = std::min(inner, std::max(kMinRows, kItemElements / s.channels) & ~static_cast<int64_t>(3));
    per_image = (inner + rows_per_item - 1) / rows_per_item;
    count = s.batch * per_image;
  }
  Item operator()(int64_t index, const Shape& s) const {
    const int64_t n = index / per_image, row = (index % per_image) * rows_per_item;
    return {n, row, std::min(rows_per_item, s.inner - row)};
  }
};

// first memory index of an item's rows
inline int64_t memory_begin(const Shape& s, const Item& it) { return (it.n * s.inner + it.row) * s.channels; }

// ---- the mask: bits [first, first + count) from / to 0 / 1 bytes. A byte wholly inside is
// written; a byte shared with another work item is or-ed into atomically (the mask starts zeroed)

inline uint8_t pack8(const uint8_t* inside) {
  uint64_t v;
  std::memcpy(&v, inside, 8);
  return static_cast<uint8_t>((v * 0x0102040810204080ull) >> 56);
}

inline void set_bits_shared(uint8_t* mask, int64_t first, const uint8_t* inside, int64_t count) {
  int64_t j = 0;
  auto partial = [&](int64_t end) {
    uint8_t byte = 0;
    const int64_t at = (first + j) >> 3;
    for (; j < end && ((first + j) >> 3) == at; ++j) byte |= static_cast<uint8_t>(inside[j] << ((first + j) & 7));
    __atomic_fetch_or(mask + at, byte, __ATOMIC_RELAXED);
  };
  if (count <= 0) return;
  if ((first & 7) != 0) partial(count);
  for (; j + 8 <= count; j += 8) mask[(first + j) >> 3] = pack8(inside + j);
  if (j < count) partial(count);
}


// inside has room for count + 16
inline void get_bits(const uint8_t* mask, int64_t first, int64_t count, uint8_t* inside) {
  int64_t j = 0;
  for (; j < count && ((first + j) & 7); ++j) inside[j] = (mask[(first + j) >> 3] >> ((first + j) & 7)) & 1;
  for (; j + 8 <= count; j += 8) std::memcpy(inside + j, &kBitBytes.of[mask[(first + j) >> 3]], 8);
  for (; j < count; ++j) inside[j] = (mask[(first + j) >> 3] >> ((first + j) & 7)) & 1;
}

// ---- forward

// the noise of an item in memory order, eps[row][channel]. Channel by channel first (a channel's
// logical indices are consecutive), into rows of `ld` floats: a whole image with short channels
// in one sweep (ld = inner), longer channels one at a time with a stride that is not a multiple
// of 4 KiB (the transpose would read one cache set); then transposed in tiles
template <Noise NOISE>
void item_noise(const Shape& s, const Quantizer& q, const Item& it, std::vector<float>& by_channel, float* eps) {
  if (NOISE == Noise::NONE) return;
  const int64_t C = s.channels, rows = it.rows;
  const bool sweep = rows == s.inner && rows < kNoiseBatch;
  const int64_t ld = sweep ? rows : rows + 16;
  by_channel.resize(static_cast<size_t>(C * ld));
  if (sweep) {
    const int64_t first = it.n * C * s.inner, count = C * rows;
    for (int64_t j = 0; j < count; j += kNoiseBatch)
      scaled_noise_batch(NOISE, q.seed, q.scale, static_cast<uint64_t>(first + j), std::min(kNoiseBatch, count - j),
                         by_channel.data() + j);
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const int64_t first = (it.n * C + c) * s.inner + it.row;
      for (int64_t j = 0; j < rows; j += kNoiseBatch)
        scaled_noise_batch(NOISE, q.seed, q.scale, static_cast<uint64_t>(first + j),
                           std::min(kNoiseBatch, rows - j), by_channel.data() + c * ld + j);
    }
  }
  const float* in = by_channel.data();
  for (int64_t r0 = 0; r0 < rows; r0 += 16)
    for (int64_t c0 = 0; c0 < C; c0 += 16) {
      const int64_t r1 = std::min(rows, r0 + 16), c1 = std::min(C, c0 + 16);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) eps[r * C + c] = in[c * ld + r];
    }
}

struct ForwardConstants {
  const float *alpha, *beta, *lam;
};

// one vector of L at channel c of a row: z, the quantizer with the noise `e`, y and the mask bytes
template <class L, Noise NOISE, bool RESIDUAL>
NA_INLINE void forward_vector(const float* x, const float* residual, float* y, uint8_t* inside,
                              const ForwardConstants& k, const noisy_quant::Quantizer& nq, int64_t c,
                              typename L::Vec e) {
  using M = Mem<L>;
  ChannelConstants<L> constants(nq, 0);
  constants.lam = M::load(k.lam + c);
  typename L::Vec z = L::add(L::mul(M::load(x + c), M::load(k.alpha + c)), M::load(k.beta + c));
  if (RESIDUAL) z = L::add(z, M::load(residual + c));
  const typename L::Vec q_raw = quantize_raw<L, NOISE>(z, e, constants);
  M::store(y + c, dequantize<L>(q_raw, constants));
  M::store_inside(inside + c, passes<L>(q_raw, constants));
}

template <Noise NOISE, bool RESIDUAL> struct ForwardRow {
  const float *x, *residual, *eps;
  float* y;
  uint8_t* inside;
  const ForwardConstants& k;
  const noisy_quant::Quantizer& nq;
  template <class L> NA_INLINE void at(int64_t c) {
    const typename L::Vec e = NOISE == Noise::NONE ? L::zero() : Mem<L>::load(eps + c);
    forward_vector<L, NOISE, RESIDUAL>(x, residual, y, inside, k, nq, c, e);
  }
};

template <class L, Noise NOISE, bool RESIDUAL>
NA_INLINE void forward_rows(const ForwardArgs& args, const noisy_quant::Quantizer& nq, const ForwardConstants& k,
                            int64_t at, int64_t rows, const float* eps, uint8_t* inside) {
  const int64_t C = args.shape.channels;
  const auto* x = static_cast<const float*>(args.x);
  const auto* residual = static_cast<const float*>(args.residual);
  auto* y = static_cast<float*>(args.y);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = at + r * C;
    ForwardRow<NOISE, RESIDUAL> row{x + i, RESIDUAL ? residual + i : nullptr, eps + r * C, y + i, inside + r * C, k, nq};
    across_channels<L>(C, row);
  }
}

template <Noise NOISE, bool RESIDUAL>
void forward_rows_generic(const ForwardArgs& a, const noisy_quant::Quantizer& nq, const ForwardConstants& k,
                          int64_t at, int64_t rows, const float* eps, uint8_t* inside) {
  forward_rows<ScalarLanes, NOISE, RESIDUAL>(a, nq, k, at, rows, eps, inside);
}
#ifdef NA_X86_SIMD
template <Noise NOISE, bool RESIDUAL>
NA_AVX2 void forward_rows_avx2(const ForwardArgs& a, const noisy_quant::Quantizer& nq, const ForwardConstants& k,
                               int64_t at, int64_t rows, const float* eps, uint8_t* inside) {
  forward_rows<Avx2Lanes, NOISE, RESIDUAL>(a, nq, k, at, rows, eps, inside);
}
template <Noise NOISE, bool RESIDUAL>
NA_AVX512 void forward_rows_avx512(const ForwardArgs& a, const noisy_quant::Quantizer& nq, const ForwardConstants& k,
                                   int64_t at, int64_t rows, const float* eps, uint8_t* inside) {
  forward_rows<Avx512Lanes, NOISE, RESIDUAL>(a, nq, k, at, rows, eps, inside);
}

// Philox4x32-10 (noise/philox.h) on sixteen arbitrary counters, two groups of eight 64-bit lanes:
// words[j] holds word j of the sixteen blocks, counter order
NA_AVX512 inline void philox16_avx512(const PhiloxKeysAvx512& keys, const __m512i counter[2], __m512i words[4]) {
  __m512i groups[2][4];
  philox_counters_avx512<2>(keys, counter, groups);
  for (int j = 0; j < 4; ++j) words[j] = low_halves_avx512(groups[0][j], groups[1][j]);
}

// The forward of an item with the noise made in registers, in memory order: with inner a
// multiple of 4, the logical indices of channels c .. c + 15 at rows hw .. hw + 3 (hw a multiple
// of 4) are words 0 .. 3 of the blocks for counters (image row of channel c + lane) * inner / 4
// + hw / 4. Channels a multiple of 16; the item's first row a multiple of 4.
template <Noise NOISE, bool RESIDUAL>
NA_AVX512 void forward_item_avx512_direct(const ForwardArgs& args, const noisy_quant::Quantizer& nq,
                                          const ForwardConstants& k, const PhiloxKeysAvx512& keys, const Item& it,
                                          int64_t at, uint8_t* inside) {
  const Shape& s = args.shape;
  const int64_t C = s.channels, quarter = s.inner / 4;
  const auto* x = static_cast<const float*>(args.x) + at;
  const auto* residual = RESIDUAL ? static_cast<const float*>(args.residual) + at : nullptr;
  auto* y = static_cast<float*>(args.y) + at;
  const __m512 scale = _mm512_set1_ps(args.quantizer.scale), half = _mm512_set1_ps(0.5f);
  const __m512i lane = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  const __m512i lane_step = _mm512_mullo_epi64(lane, _mm512_set1_epi64(quarter));
  for (int64_t r = 0; r < it.rows; r += 4) {
    const int64_t rows = std::min<int64_t>(4, it.rows - r);
    for (int64_t c = 0; c < C; c += 16) {
      const int64_t first = (it.n * C + c) * quarter + (it.row + r) / 4;
      const __m512i counter[2] = {_mm512_add_epi64(_mm512_set1_epi64(first), lane_step),
                                  _mm512_add_epi64(_mm512_set1_epi64(first + 8 * quarter), lane_step)};
      __m512i words[4];
      philox16_avx512(keys, counter, words);
      __m512 eps[4];
      if (NOISE == Noise::GAUSSIAN) {
        normal_pairs_avx512(words[0], words[1], eps[0], eps[1]);
        normal_pairs_avx512(words[2], words[3], eps[2], eps[3]);
        for (int j = 0; j < 4; ++j) eps[j] = _mm512_mul_ps(scale, eps[j]);
      } else {
        for (int j = 0; j < 4; ++j) eps[j] = _mm512_mul_ps(scale, _mm512_sub_ps(uniform_float_avx512(words[j]), half));
      }
      for (int64_t j = 0; j < rows; ++j) {
        const int64_t i = (r + j) * C;
        forward_vector<Avx512Lanes, NOISE, RESIDUAL>(x + i, RESIDUAL ? residual + i : nullptr, y + i,
                                                      inside + i, k, nq, c, eps[j]);
      }
    }
  }
}
#endif

// ---- batch statistics: float64 sums per channel

// `rows` rows of x (1 or 4, the rows `stride` floats apart) into the sums
struct SumRows {
  const float* x;
  int64_t stride, rows;
  double* sums;
  const double* mean;  // null: sums of x, else of (x - mean)^2
  template <class L> NA_INLINE void at(int64_t c) {
    using M = Mem<L>;
    if (rows == 4) {
      const typename L::Vec v[4] = {M::load(x + c), M::load(x + stride + c), M::load(x + 2 * stride + c),
                                    M::load(x + 3 * stride + c)};
      if (mean)
        M::add_squares4(sums + c, v, mean + c);
      else
        M::add_sum4(sums + c, v);
    } else if (mean) {
      M::add_squares(sums + c, M::load(x + c), mean + c);
    } else {
      M::add_sum(sums + c, M::load(x + c));
    }
  }
};

template <class L> NA_INLINE void sum_rows(const float* x, int64_t rows, int64_t C, double* sums, const double* mean) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    SumRows four{x + r * C, C, 4, sums, mean};
    across_channels<L>(C, four);
  }
  for (; r < rows; ++r) {
    SumRows one{x + r * C, C, 1, sums, mean};
    across_channels<L>(C, one);
  }
}
void sum_rows_generic(const float* x, int64_t rows, int64_t C, double* sums, const double* mean) {
  sum_rows<ScalarLanes>(x, rows, C, sums, mean);
}
#ifdef NA_X86_SIMD
NA_AVX2 void sum_rows_avx2(const float* x, int64_t rows, int64_t C, double* sums, const double* mean) {
  sum_rows<Avx2Lanes>(x, rows, C, sums, mean);
}
NA_AVX512 void sum_rows_avx512(const float* x, int64_t rows, int64_t C, double* sums, const double* mean) {
  sum_rows<Avx512Lanes>(x, rows, C, sums, mean);
}
#endif

void sum_rows_at(SimdLevel level, const float* x, int64_t rows, int64_t C, double* sums, const double* mean) {
#ifdef NA_X86_SIMD
  if (level == SimdLevel::AVX512) return sum_rows_avx512(x, rows, C, sums, mean);
  if (level == SimdLevel::AVX2) return sum_rows_avx2(x, rows, C, sums, mean);
#endif
  (void)level;
  sum_rows_generic(x, rows, C, sums, mean);
}

// per-channel sums over the items, `width` float64 per channel: body(item, first memory index,
// this thread's sums) adds to them; returned added in thread order
template <class Body> std::vector<double> item_sums(const Shape& s, int threads, int64_t width, Body&& body) {
  const Items items(s);
  std::vector<double> partial(static_cast<size_t>(threads * s.channels * width), 0.0);
  for_each_work_item(
      items.count, 1, threads, [&] { return partial.data() + thread_index() * s.channels * width; },
      [&](const WorkItem& w, double* sums) {
        const Item it = items(w.begin, s);
        body(it, memory_begin(s, it), sums);
      });
  std::vector<double> total(static_cast<size_t>(s.channels * width), 0.0);
  for (int t = 0; t < threads; ++t)
    for (size_t i = 0; i < total.size(); ++i) total[i] += partial[t * total.size() + i];
  return total;
}

// the float64 sums of this batch in NHWC order (when batch_stats), then channel_terms
void statistics(const ForwardArgs& args, SimdLevel level, std::vector<float>& alpha, std::vector<float>& beta) {
  const Shape& s = args.shape;
  const auto* x = static_cast<const float*>(args.x);
  std::vector<double> mean(s.channels), var_sum(s.channels);
  const double n = static_cast<double>(s.per_channel());
  if (args.batch_stats && s.numel() > 0) {
    mean = item_sums(s, args.threads, 1, [&](const Item& it, int64_t at, double* sums) {
      sum_rows_at(level, x + at, it.rows, s.channels, sums, nullptr);
    });
    for (double& m : mean) m /= n;
    var_sum = item_sums(s, args.threads, 1, [&](const Item& it, int64_t at, double* sums) {
      sum_rows_at(level, x + at, it.rows, s.channels, sums, mean.data());
    });
  }
  channel_terms(args, mean.data(), var_sum.data(), alpha.data(), beta.data());
}

// ---- backward

struct BackwardConstants {
  const float *alpha, *beta, *lam, *mean, *p_over_lam, *inv_lam;
  float p;
};

// float32 partial sums of dz, dz (x - mean) and grad_y dy/dlam, [3][channels]
template <bool RESIDUAL> struct SumsRow {
  const float *grad_y, *x, *residual, *y;
  const uint8_t* inside;
  const BackwardConstants& k;
  float *s_dz, *s_dz_xc, *s_lam;
  template <class L> NA_INLINE void at(int64_t c) {
    using M = Mem<L>;
    using V = typename L::Vec;
    const auto in = M::load_inside(inside + c);
    const V dy = M::load(grad_y + c), xv = M::load(x + c), zero = L::zero(), p = L::set1(k.p);
    const V dz = L::select(in, dy, zero);
    V z = L::add(L::mul(xv, M::load(k.alpha + c)), M::load(k.beta + c));
    if (RESIDUAL) z = L::add(z, M::load(residual + c));
    // as generic.cpp's backward_batch: the level from y, and whether an element outside was above
    const V level = L::floor(L::add(L::mul(M::load(y + c), M::load(k.p_over_lam + c)), L::set1(0.5f)));
    const V g_in = L::sub(L::mul(level, L::set1(1.0f / k.p)), L::mul(z, M::load(k.inv_lam + c)));
    const V g = L::select(in, g_in, L::one_where(L::eq(level, p)));
    M::store(s_dz + c, L::add(M::load(s_dz + c), dz));
    M::store(s_dz_xc + c, L::add(M::load(s_dz_xc + c), L::mul(dz, L::sub(xv, M::load(k.mean + c)))));
    M::store(s_lam + c, L::add(M::load(s_lam + c), L::mul(dy, g)));
  }
};

template <class L, bool RESIDUAL>
NA_INLINE void backward_sum_rows(const BackwardArgs& a, const BackwardConstants& k, int64_t at, int64_t rows,
                                 const uint8_t* inside, float* partial) {
  const int64_t C = a.shape.channels;
  const auto* grad_y = static_cast<const float*>(a.grad_y);
  const auto* x = static_cast<const float*>(a.x);
  const auto* residual = static_cast<const float*>(a.residual);
  const auto* y = static_cast<const float*>(a.y);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = at + r * C;
    SumsRow<RESIDUAL> row{grad_y + i,   x + i, RESIDUAL ? residual + i : nullptr, y + i, inside + r * C, k,
                          partial, partial + C, partial + 2 * C};
    across_channels<L>(C, row);
  }
}

struct InputsConstants {
  const float *mean, *mean_dz, *k, *w_invstd;
};

template <bool GRAD_X, bool GRAD_RESIDUAL> struct InputsRow {
  const float *grad_y, *x;
  const uint8_t* inside;
  float *grad_x, *grad_residual;
  const InputsConstants& k;
  template <class L> NA_INLINE void at(int64_t c) {
    using M = Mem<L>;
    using V = typename L::Vec;
    const V dz = L::select(M::load_inside(inside + c), M::load(grad_y + c), L::zero());
    if (GRAD_RESIDUAL) M::store(grad_residual + c, dz);
    if (GRAD_X) {
      const V xc = L::sub(M::load(x + c), M::load(k.mean + c));
      M::store(grad_x + c, L::mul(L::sub(L::sub(dz, M::load(k.mean_dz + c)), L::mul(xc, M::load(k.k + c))),
                                  M::load(k.w_invstd + c)));
    }
  }
};

template <class L, bool GRAD_X, bool GRAD_RESIDUAL>
NA_INLINE void backward_input_rows(const BackwardArgs& a, const InputsConstants& k, int64_t at, int64_t rows,
                                   const uint8_t* inside) {
  const int64_t C = a.shape.channels;
  const auto* grad_y = static_cast<const float*>(a.grad_y);
  const auto* x = static_cast<const float*>(a.x);
  auto* grad_x = static_cast<float*>(a.grad_x);
  auto* grad_residual = static_cast<float*>(a.grad_residual);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = at + r * C;
    InputsRow<GRAD_X, GRAD_RESIDUAL> row{grad_y + i,
                                         x + i,
                                         inside + r * C,
                                         GRAD_X ? grad_x + i : nullptr,
                                         GRAD_RESIDUAL ? grad_residual + i : nullptr,
                                         k};
    across_channels<L>(C, row);
  }
}

// the ISA-specific entry points of the row loops above
#define NA_ROW_KERNELS(SUFFIX, ATTRIBUTE, LANES)                                                                    \
  template <bool RESIDUAL>                                                                                       \
  ATTRIBUTE void backward_sum_rows_##SUFFIX(const BackwardArgs& a, const BackwardConstants& k, int64_t at,       \
                                            int64_t rows, const uint8_t* inside, float* partial) {               \
    backward_sum_rows<LANES, RESIDUAL>(a, k, at, rows, inside, partial);                                           \
  }                                                                                                              \
  template <bool GRAD_X, bool GRAD_RESIDUAL>                                                                     \
  ATTRIBUTE void backward_input_rows_##SUFFIX(const BackwardArgs& a, const InputsConstants& k, int64_t at,       \
                                              int64_t rows, const uint8_t* inside) {                             \
    backward_input_rows<LANES, GRAD_X, GRAD_RESIDUAL>(a, k, at, rows, inside);                                     \
  }

NA_ROW_KERNELS(generic, , ScalarLanes)
#ifdef NA_X86_SIMD
NA_ROW_KERNELS(avx2, NA_AVX2, Avx2Lanes)
NA_ROW_KERNELS(avx512, NA_AVX512, Avx512Lanes)
#endif
#undef NA_ROW_KERNELS

// per-thread buffers of a work item
struct Buffers {
  std::vector<float> eps, by_channel, partial;
  std::vector<uint8_t> inside;
  Buffers(int64_t elements, int64_t channels)
      : eps(static_cast<size_t>(elements)), partial(static_cast<size_t>(3 * channels)),
        inside(static_cast<size_t>(elements + 16)) {}
};

}  // namespace

void forward_channels_last(const ForwardArgs& args) {
  const Shape& s = args.shape;
  const SimdLevel level = simd_level();
  if (args.mask) std::memset(args.mask, 0, static_cast<size_t>(s.mask_bytes()));
  std::vector<float> alpha(s.channels), beta(s.channels);
  statistics(args, level, alpha, beta);
  if (s.numel() == 0) return;
  noisy_quant::Quantizer nq{};
  nq.lam = args.lam;
  nq.p = args.quantizer.p;
  nq.scale = args.quantizer.scale;
  nq.shift = args.quantizer.shift;
  const ForwardConstants k{alpha.data(), beta.data(), args.lam};
  const Items items(s);
  // the noise in registers (forward_item_avx512_direct) where the shape allows
  const bool direct = level == SimdLevel::AVX512 && args.quantizer.noise != Noise::NONE && s.channels % 16 == 0 &&
                      s.inner % 4 == 0;
#ifdef NA_X86_SIMD
  PhiloxKeysAvx512 keys{};
  if (direct) keys = philox_keys_avx512(args.quantizer.seed);
#endif
  dispatch(
      [&](auto noise, auto residual) {
        constexpr Noise NOISE = decltype(noise)::value;
        constexpr bool RESIDUAL = decltype(residual)::value;
        for_each_work_item(
            items.count, 1, args.threads, [&] { return Buffers(items.rows_per_item * s.channels, s.channels); },
            [&](const WorkItem& w, Buffers& b) {
              const Item it = items(w.begin, s);
              const int64_t at = memory_begin(s, it);
#ifdef NA_X86_SIMD
              if (direct) {
                if constexpr (NOISE != Noise::NONE)
                  forward_item_avx512_direct<NOISE, RESIDUAL>(args, nq, k, keys, it, at, b.inside.data());
                if (args.mask) set_bits_shared(args.mask, at, b.inside.data(), it.rows * s.channels);
                return;
              }
#endif
              item_noise<NOISE>(s, args.quantizer, it, b.by_channel, b.eps.data());
#ifdef NA_X86_SIMD
              if (level == SimdLevel::AVX512)
                forward_rows_avx512<NOISE, RESIDUAL>(args, nq, k, at, it.rows, b.eps.data(), b.inside.data());
              else if (level == SimdLevel::AVX2)
                forward_rows_avx2<NOISE, RESIDUAL>(args, nq, k, at, it.rows, b.eps.data(), b.inside.data());
              else
#endif
                forward_rows_generic<NOISE, RESIDUAL>(args, nq, k, at, it.rows, b.eps.data(), b.inside.data());
              if (args.mask) set_bits_shared(args.mask, at, b.inside.data(), it.rows * s.channels);
            });
      },
      args.quantizer.noise, args.residual != nullptr);
}

void backward_channels_last(const BackwardArgs& args) {
  const Shape& s = args.shape;
  const int64_t C = s.channels;
  const SimdLevel level = simd_level();
  const double n = static_cast<double>(s.per_channel());
  std::vector<float> alpha(C), beta(C), p_over_lam(C), inv_lam(C), mean_dz(C, 0.0f), kk(C, 0.0f), w_invstd(C);
  for (int64_t c = 0; c < C; ++c) {
    alpha[c] = args.save_invstd[c] * args.weight[c];
    beta[c] = args.bias[c] - args.save_mean[c] * alpha[c];
    w_invstd[c] = args.save_invstd[c] * args.weight[c];
    p_over_lam[c] = args.p / args.lam[c];
    inv_lam[c] = 1.0f / args.lam[c];
  }
  const Items items(s);
  const BackwardConstants bk{alpha.data(),      beta.data(),    args.lam, args.save_mean,
                             p_over_lam.data(), inv_lam.data(), args.p};
  std::vector<double> sums(static_cast<size_t>(3 * C), 0.0);
  if (s.numel() > 0) {
    dispatch(
        [&](auto residual) {
          constexpr bool RESIDUAL = decltype(residual)::value;
          std::vector<double> partial(static_cast<size_t>(args.threads * 3 * C), 0.0);
          for_each_work_item(
              items.count, 1, args.threads,
              [&] { return Buffers(items.rows_per_item * C, C); },
              [&](const WorkItem& w, Buffers& b) {
                const Item it = items(w.begin, s);
                const int64_t at = memory_begin(s, it);
                double* total = partial.data() + thread_index() * 3 * C;
                get_bits(args.mask, at, it.rows * C, b.inside.data());
                for (int64_t r = 0; r < it.rows; r += kRowsPerFlush) {
                  const int64_t rows = std::min(kRowsPerFlush, it.rows - r);
                  std::fill(b.partial.begin(), b.partial.end(), 0.0f);
                  const uint8_t* inside = b.inside.data() + r * C;
#ifdef NA_X86_SIMD
                  if (level == SimdLevel::AVX512)
                    backward_sum_rows_avx512<RESIDUAL>(args, bk, at + r * C, rows, inside, b.partial.data());
                  else if (level == SimdLevel::AVX2)
                    backward_sum_rows_avx2<RESIDUAL>(args, bk, at + r * C, rows, inside, b.partial.data());
                  else
#endif
                    backward_sum_rows_generic<RESIDUAL>(args, bk, at + r * C, rows, inside, b.partial.data());
                  for (int64_t c = 0; c < C; ++c)
                    for (int j = 0; j < 3; ++j) total[3 * c + j] += static_cast<double>(b.partial[j * C + c]);
                }
              });
          for (int t = 0; t < args.threads; ++t)
            for (size_t i = 0; i < sums.size(); ++i) sums[i] += partial[t * sums.size() + i];
        },
        args.residual != nullptr);
  }
  for (int64_t c = 0; c < C; ++c) {
    args.grads[c] = static_cast<float>(sums[3 * c + 1] * static_cast<double>(args.save_invstd[c]));
    args.grads[C + c] = static_cast<float>(sums[3 * c]);
    args.grads[2 * C + c] = static_cast<float>(sums[3 * c + 2]);
    if (args.batch_stats) {
      const double invstd = args.save_invstd[c];
      mean_dz[c] = static_cast<float>(sums[3 * c] / n);
      kk[c] = static_cast<float>(sums[3 * c + 1] / n * invstd * invstd);
    }
  }
  if (s.numel() == 0 || (!args.grad_x && !args.grad_residual)) return;
  const InputsConstants ik{args.save_mean, mean_dz.data(), kk.data(), w_invstd.data()};
  dispatch(
      [&](auto grad_x, auto grad_residual) {
        constexpr bool GX = decltype(grad_x)::value, GR = decltype(grad_residual)::value;
        for_each_work_item(
            items.count, 1, args.threads, [&] { return std::vector<uint8_t>(items.rows_per_item * C + 16); },
            [&](const WorkItem& w, std::vector<uint8_t>& inside) {
              const Item it = items(w.begin, s);
              const int64_t at = memory_begin(s, it);
              get_bits(args.mask, at, it.rows * C, inside.data());
#ifdef NA_X86_SIMD
              if (level == SimdLevel::AVX512)
                backward_input_rows_avx512<GX, GR>(args, ik, at, it.rows, inside.data());
              else if (level == SimdLevel::AVX2)
                backward_input_rows_avx2<GX, GR>(args, ik, at, it.rows, inside.data());
              else
#endif
                backward_input_rows_generic<GX, GR>(args, ik, at, it.rows, inside.data());
            });
      },
      args.grad_x != nullptr, args.grad_residual != nullptr);
}

}  // namespace batchnorm_noisy_quant
}  // namespace na
