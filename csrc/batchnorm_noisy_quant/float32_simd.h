// batchnorm_noisy_quant's kernels in explicit SIMD on float32 lanes (float32_avx2.cpp,
// float32_avx512.cpp): one body over lane types (common/lanes*.h) and the storage dtype D, a work
// item at a time, each channel run walked in whole vectors and one masked tail; the
// straight-through mask goes from compare masks straight to its bits and back. 16-bit x, residual,
// grad_y and y are widened to float32 lanes as they are loaded and outputs narrowed as they are
// stored; z is rounded to D in the lanes where the unfused ops store it. They compute what
// generic.cpp's per-element loops do, in the same order per element: y and the mask bit for bit,
// grad_residual, and grad_x from the same sums, too; the backward's per-channel sums go through
// float vectors per run, then float64, so they differ from the generic ones in rounding only.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "batchnorm_noisy_quant/batchnorm_noisy_quant.h"
#include "common/float_convert.h"
#include "common/lanes.h"
#include "common/parallel.h"
#include "noise/noise.h"
#include "noisy_quant/noisy_quant.h"

namespace na {
namespace batchnorm_noisy_quant {

// per-channel terms of the backward passes, [channels] each
struct ChannelTerms {
  const float *mean, *alpha, *beta, *lam;  // the sums pass
  const float *mean_dz, *k, *w_invstd;  // the input-gradient pass
};

// the statistics passes over one work item: per channel, sums[c] += sum of x, or of
// (x - mean[c])^2, in float64
void statistics_sums_avx2(const ForwardArgs& args, const noisy_quant::Quantizer& layout, const double* mean,
                          const WorkItem& item, double* sums);
void statistics_sums_avx512(const ForwardArgs& args, const noisy_quant::Quantizer& layout, const double* mean,
                            const WorkItem& item, double* sums);

// the quantize pass over one work item: y and the mask bits (alpha, beta: [channels])
void forward_avx2(const ForwardArgs& args, const noisy_quant::Quantizer& nq, const float* alpha, const float* beta,
                  const WorkItem& item);
void forward_avx512(const ForwardArgs& args, const noisy_quant::Quantizer& nq, const float* alpha,
                    const float* beta, const WorkItem& item);

// sums: this thread's [channels][3] float64 (sum dz, sum dz (x - mean), sum grad_y dy/dlam)
void backward_sums_avx2(const BackwardArgs& args, const noisy_quant::Quantizer& layout, const ChannelTerms& terms,
                        const WorkItem& item, double* sums);
void backward_inputs_avx2(const BackwardArgs& args, const noisy_quant::Quantizer& layout,
                          const ChannelTerms& terms, const WorkItem& item);
void backward_sums_avx512(const BackwardArgs& args, const noisy_quant::Quantizer& layout,
                          const ChannelTerms& terms, const WorkItem& item, double* sums);
void backward_inputs_avx512(const BackwardArgs& args, const noisy_quant::Quantizer& layout,
                            const ChannelTerms& terms, const WorkItem& item);

namespace simd {

// mask bits [first, first + 16) (at least) in the low bits; reads no byte past mask_bytes
inline uint32_t bits_at(const uint8_t* mask, int64_t mask_bytes, int64_t first) {
  const int64_t byte = first >> 3;
  uint32_t word = 0;
  if (byte + 4 <= mask_bytes) {
    std::memcpy(&word, mask + byte, 4);
  } else {
    for (int64_t b = byte; b < mask_bytes; ++b) word |= static_cast<uint32_t>(mask[b]) << (8 * (b - byte));
  }
  return word >> (first & 7);
}

// The backward's loops over one work item on lanes L and storage D, with Io<L> (the ISA's file)
// for memory: Part (the lanes of a partial vector), part(count), load / store of whole and
// partial float32 vectors, and for 16-bit D load16<D> / store16<D> (widening, narrowing as
// Storage<D> rounds), round16<D>(v) (v rounded to D) and copy16<D, FULL>(from, to, part, keep)
// (the stored bits where keep, 0 elsewhere); keep(part, v) (v on the part's lanes, 0 elsewhere),
// mask_of(bits) / bits_of(mask) between mask bits and lane masks, sum(v) (a float); for the
// statistics, Acc (a vector's worth of float64 accumulators), acc_zero, acc_add, acc_add_squares
// and acc_sum.
template <class L, template <class> class Io, DType D = DType::FLOAT32> struct Backward {
  using Vec = typename L::Vec;
  using Mask = typename L::Mask;
  using IO = Io<L>;
  using Part = typename IO::Part;
  using T = StorageType<D>;
  static constexpr int W = L::kWidth;

  // whole vectors (FULL) or the lanes of `part`, float32 or D's storage; lanes outside a partial
  // vector load as 0
  template <bool FULL> NA_INLINE static Vec load(const float* p, Part part) {
    if constexpr (FULL) {
      (void)part;
      return IO::load(p);
    } else {
      return IO::load(p, part);
    }
  }
  template <bool FULL> NA_INLINE static Vec load(const uint16_t* p, Part part) {
    if constexpr (FULL) {
      (void)part;
      return IO::template load16<D>(p);
    } else {
      return IO::template load16<D>(p, part);
    }
  }
  template <bool FULL> NA_INLINE static void store(float* p, Part part, Vec v) {
    if constexpr (FULL) {
      (void)part;
      IO::store(p, v);
    } else {
      IO::store(p, part, v);
    }
  }
  template <bool FULL> NA_INLINE static void store(uint16_t* p, Part part, Vec v) {
    if constexpr (FULL) {
      (void)part;
      IO::template store16<D>(p, v);
    } else {
      IO::template store16<D>(p, part, v);
    }
  }
  // v as a stored element of D holds it
  NA_INLINE static Vec round(Vec v) {
    if constexpr (D == DType::FLOAT32)
      return v;
    else
      return IO::template round16<D>(v);
  }
  // z = batch_norm(x) (+ residual), each sum rounded to D as the unfused ops store it
  template <bool RESIDUAL, bool FULL>
  NA_INLINE static Vec normalized(Vec x, const void* residual, int64_t at, Part part, Vec alpha, Vec beta) {
    Vec z = round(L::add(L::mul(x, alpha), beta));
    if (RESIDUAL) z = round(L::add(z, load<FULL>(static_cast<const T*>(residual) + at, part)));
    return z;
  }

  struct SumsConstants {
    Vec mean, alpha, beta, p, p_over_lam, inv_p, inv_lam, half;
  };
  struct Sums {
    Vec dz, dz_xc, lam;
  };

  // one vector of the sums pass at `at`: backward_sums' loop body in generic.cpp
  template <bool RESIDUAL, bool FULL>
  NA_INLINE static void sums_step(const BackwardArgs& a, const SumsConstants& c, int64_t at, Part part, Sums& s) {
    const Mask in = IO::mask_of(bits_at(a.mask, a.shape.mask_bytes(), at));
    const Vec dy = load<FULL>(static_cast<const T*>(a.grad_y) + at, part);
    const Vec x = load<FULL>(static_cast<const T*>(a.x) + at, part);
    const Vec y = load<FULL>(static_cast<const T*>(a.y) + at, part);
    const Vec z = normalized<RESIDUAL, FULL>(x, a.residual, at, part, c.alpha, c.beta);
    const Vec dz = L::select(in, dy, L::zero());
    // the level from y; outside [0, p] lam's gradient is 1 above (level p) and 0 below
    const Vec level = L::floor(L::add(L::mul(y, c.p_over_lam), c.half));
    const Vec g_in = L::sub(L::mul(level, c.inv_p), L::mul(z, c.inv_lam));
    const Vec g = L::select(in, g_in, L::one_where(L::eq(level, c.p)));
    Vec dy_g = L::mul(dy, g);
    if (!FULL) dy_g = IO::keep(part, dy_g);  // a zero dy times a non-finite g stays out
    s.dz = L::add(s.dz, dz);
    s.dz_xc = L::add(s.dz_xc, L::mul(dz, L::sub(x, c.mean)));
    s.lam = L::add(s.lam, dy_g);
  }

  // the sums of the elements [begin, end) of one channel into sums[0..2]: float vectors over
  // at most kChunk elements, then float64
  template <bool RESIDUAL>
  NA_INLINE static void sums_run(const BackwardArgs& a, const SumsConstants& c, int64_t begin, int64_t end,
                                 double* sums) {
    constexpr int64_t kChunk = 256;
    for (int64_t chunk = begin; chunk < end; chunk += kChunk) {
      const int64_t stop = std::min(end, chunk + kChunk);
      Sums s{L::zero(), L::zero(), L::zero()};
      int64_t at = chunk;
      for (; at + W <= stop; at += W) sums_step<RESIDUAL, true>(a, c, at, IO::part(W), s);
      if (at < stop) sums_step<RESIDUAL, false>(a, c, at, IO::part(stop - at), s);
      sums[0] += static_cast<double>(IO::sum(s.dz));
      sums[1] += static_cast<double>(IO::sum(s.dz_xc));
      sums[2] += static_cast<double>(IO::sum(s.lam));
    }
  }

  template <bool RESIDUAL>
  NA_INLINE static void sums_item(const BackwardArgs& a, const noisy_quant::Quantizer& layout,
                                  const ChannelTerms& t, const WorkItem& item, double* sums) {
    const float p = a.p;
    for (const noisy_quant::ChannelRun& run : noisy_quant::ChannelRuns(layout, item)) {
      const int64_t ch = run.channel;
      const float lam = t.lam[ch];
      const SumsConstants c{L::set1(t.mean[ch]), L::set1(t.alpha[ch]), L::set1(t.beta[ch]),   L::set1(p),
                            L::set1(p / lam),    L::set1(1.0f / p),    L::set1(1.0f / lam), L::set1(0.5f)};
      sums_run<RESIDUAL>(a, c, run.begin, run.end, sums + 3 * ch);
    }
  }

  struct InputsConstants {
    Vec mean, mean_dz, k, w_invstd;
  };

  // grad_residual = dz, grad_x = ((dz - mean_dz) - (x - mean) * k) * w_invstd
  template <bool GRAD_X, bool GRAD_RESIDUAL, bool FULL>
  NA_INLINE static void inputs_step(const BackwardArgs& a, const InputsConstants& c, int64_t at, Part part) {
    const Mask in = IO::mask_of(bits_at(a.mask, a.shape.mask_bytes(), at));
    const T* grad_y = static_cast<const T*>(a.grad_y) + at;
    const Vec dz = L::select(in, load<FULL>(grad_y, part), L::zero());
    if constexpr (GRAD_RESIDUAL && D == DType::FLOAT32)
      store<FULL>(static_cast<float*>(a.grad_residual) + at, part, dz);
    if constexpr (GRAD_RESIDUAL && D != DType::FLOAT32)
      IO::template copy16<D, FULL>(grad_y, static_cast<T*>(a.grad_residual) + at, part, in);
    if (GRAD_X) {
      const Vec x = load<FULL>(static_cast<const T*>(a.x) + at, part);
      const Vec g = L::mul(L::sub(L::sub(dz, c.mean_dz), L::mul(L::sub(x, c.mean), c.k)), c.w_invstd);
      store<FULL>(static_cast<T*>(a.grad_x) + at, part, g);
    }
  }

  template <bool GRAD_X, bool GRAD_RESIDUAL>
  NA_INLINE static void inputs_item(const BackwardArgs& a, const noisy_quant::Quantizer& layout,
                                    const ChannelTerms& t, const WorkItem& item) {
    for (const noisy_quant::ChannelRun& run : noisy_quant::ChannelRuns(layout, item)) {
      const int64_t ch = run.channel;
      const InputsConstants c{L::set1(t.mean[ch]), L::set1(t.mean_dz[ch]), L::set1(t.k[ch]),
                              L::set1(t.w_invstd[ch])};
      int64_t at = run.begin;
      for (; at + W <= run.end; at += W) inputs_step<GRAD_X, GRAD_RESIDUAL, true>(a, c, at, IO::part(W));
      if (at < run.end) inputs_step<GRAD_X, GRAD_RESIDUAL, false>(a, c, at, IO::part(run.end - at));
    }
  }
};

// The statistics passes on lanes L: x widened to float64 (Io's Acc: a vector's worth of float64
// accumulators), sums per channel run; mean null for the sum of x, else the squares about it.
template <class L, template <class> class Io, DType D = DType::FLOAT32> struct Statistics {
  using B = Backward<L, Io, D>;
  using IO = Io<L>;
  static constexpr int W = L::kWidth;

  template <bool SQUARES>
  NA_INLINE static void item(const ForwardArgs& a, const noisy_quant::Quantizer& layout, const double* mean,
                             const WorkItem& it, double* sums) {
    const auto* x = static_cast<const StorageType<D>*>(a.x);
    for (const noisy_quant::ChannelRun& run : noisy_quant::ChannelRuns(layout, it)) {
      const double m = SQUARES ? mean[run.channel] : 0.0;
      typename IO::Acc acc = IO::acc_zero();
      int64_t at = run.begin;
      for (; at + W <= run.end; at += W) {
        if (SQUARES)
          IO::acc_add_squares(acc, B::template load<true>(x + at, IO::part(W)), m, IO::part(W));
        else
          IO::acc_add(acc, B::template load<true>(x + at, IO::part(W)));
      }
      if (at < run.end) {
        const auto part = IO::part(run.end - at);
        if (SQUARES)
          IO::acc_add_squares(acc, B::template load<false>(x + at, part), m, part);
        else
          IO::acc_add(acc, B::template load<false>(x + at, part));
      }
      sums[run.channel] += IO::acc_sum(acc);
    }
  }
};

// The quantize pass on lanes L: per batch of kNoiseBatch elements (from a multiple of 8, as
// generic.cpp's), the noise of the whole batch, then its channel runs; the batch's mask bits
// gather in words and are stored as whole bytes (no other batch shares them).
template <class L, template <class> class Io, DType D = DType::FLOAT32> struct Forward {
  using B = Backward<L, Io, D>;
  using T = StorageType<D>;
  using Vec = typename L::Vec;
  using Part = typename Io<L>::Part;
  using IO = Io<L>;
  static constexpr int W = L::kWidth;
  static constexpr int kWords = kNoiseBatch / 64 + 1;  // one more for a last vector's spill

  struct Run {
    const noisy_quant::ChannelConstants<L> quantizer;
    Vec alpha, beta;
  };

  // bits of `lanes` lanes for the batch's elements from `offset` on
  NA_INLINE static void add_bits(uint64_t* words, int64_t offset, uint32_t bits) {
    const int shift = static_cast<int>(offset & 63);
    words[offset >> 6] |= static_cast<uint64_t>(bits) << shift;
    if (shift + W > 64) words[(offset >> 6) + 1] |= static_cast<uint64_t>(bits) >> (64 - shift);
  }

  // the vector at element `at`, `offset` into the batch (eps, words); `lanes` < W when not FULL
  template <Noise NOISE, bool RESIDUAL, bool FULL>
  NA_INLINE static void step(const ForwardArgs& a, const Run& r, const float* eps, int64_t at, int64_t offset,
                             int64_t lanes, uint64_t* words) {
    const Part part = IO::part(lanes);
    const Vec x = B::template load<FULL>(static_cast<const T*>(a.x) + at, part);
    const Vec z = B::template normalized<RESIDUAL, FULL>(x, a.residual, at, part, r.alpha, r.beta);
    const Vec e = NOISE == Noise::NONE ? L::zero() : B::template load<FULL>(eps + offset, part);
    const Vec q_raw = noisy_quant::quantize_raw<L, NOISE>(z, e, r.quantizer);
    B::template store<FULL>(static_cast<T*>(a.y) + at, part, noisy_quant::dequantize<L>(q_raw, r.quantizer));
    uint32_t bits = IO::bits_of(noisy_quant::passes<L>(q_raw, r.quantizer));
    if (!FULL) bits &= (1u << lanes) - 1u;
    add_bits(words, offset, bits);
  }

  template <Noise NOISE, bool RESIDUAL>
  NA_INLINE static void batch(const ForwardArgs& a, const noisy_quant::Quantizer& nq, const float* alpha,
                              const float* beta, int64_t at, int64_t count) {
    const Quantizer& q = a.quantizer;
    float eps[kNoiseBatch];
    if (NOISE != Noise::NONE) scaled_noise_batch(NOISE, q.seed, q.scale, static_cast<uint64_t>(at), count, eps);
    uint64_t words[kWords] = {};
    const WorkItem span{at, at + count};
    for (const noisy_quant::ChannelRun& run : noisy_quant::ChannelRuns(nq, span)) {
      const int64_t ch = run.channel;
      const Run r{noisy_quant::ChannelConstants<L>(nq, ch), L::set1(alpha[ch]), L::set1(beta[ch])};
      int64_t i = run.begin;
      for (; i + W <= run.end; i += W) step<NOISE, RESIDUAL, true>(a, r, eps, i, i - at, W, words);
      if (i < run.end) step<NOISE, RESIDUAL, false>(a, r, eps, i, i - at, run.end - i, words);
    }
    if (a.mask) std::memcpy(a.mask + (at >> 3), words, static_cast<size_t>((count + 7) >> 3));
  }

  template <Noise NOISE, bool RESIDUAL>
  NA_INLINE static void item(const ForwardArgs& a, const noisy_quant::Quantizer& nq, const float* alpha,
                             const float* beta, const WorkItem& it) {
    for (int64_t at = it.begin; at < it.end; at += kNoiseBatch)
      batch<NOISE, RESIDUAL>(a, nq, alpha, beta, at, std::min(kNoiseBatch, it.end - at));
  }

  template <bool RESIDUAL>
  NA_INLINE static void item_for_noise(const ForwardArgs& a, const noisy_quant::Quantizer& nq, const float* alpha,
                                       const float* beta, const WorkItem& it) {
    switch (a.quantizer.noise) {
      case Noise::NONE: return item<Noise::NONE, RESIDUAL>(a, nq, alpha, beta, it);
      case Noise::UNIFORM: return item<Noise::UNIFORM, RESIDUAL>(a, nq, alpha, beta, it);
      default: return item<Noise::GAUSSIAN, RESIDUAL>(a, nq, alpha, beta, it);
    }
  }
};

// The entry points' run-time arguments (dtype, residual, which gradients, mean) turned into the
// kernels' template parameters; inlined into each ISA file's entry point, under its target.
template <class L, template <class> class Io> struct Entry {
  template <DType D>
  NA_INLINE static void statistics_sums(const ForwardArgs& a, const noisy_quant::Quantizer& layout,
                                        const double* mean, const WorkItem& it, double* sums) {
    if (mean)
      Statistics<L, Io, D>::template item<true>(a, layout, mean, it, sums);
    else
      Statistics<L, Io, D>::template item<false>(a, layout, mean, it, sums);
  }
  template <DType D>
  NA_INLINE static void forward(const ForwardArgs& a, const noisy_quant::Quantizer& nq, const float* alpha,
                                const float* beta, const WorkItem& it) {
    if (a.residual)
      Forward<L, Io, D>::template item_for_noise<true>(a, nq, alpha, beta, it);
    else
      Forward<L, Io, D>::template item_for_noise<false>(a, nq, alpha, beta, it);
  }
  template <DType D>
  NA_INLINE static void backward_sums(const BackwardArgs& a, const noisy_quant::Quantizer& layout,
                                      const ChannelTerms& t, const WorkItem& it, double* sums) {
    if (a.residual)
      Backward<L, Io, D>::template sums_item<true>(a, layout, t, it, sums);
    else
      Backward<L, Io, D>::template sums_item<false>(a, layout, t, it, sums);
  }
  template <DType D>
  NA_INLINE static void backward_inputs(const BackwardArgs& a, const noisy_quant::Quantizer& layout,
                                        const ChannelTerms& t, const WorkItem& it) {
    using K = Backward<L, Io, D>;
    if (a.grad_x && a.grad_residual)
      K::template inputs_item<true, true>(a, layout, t, it);
    else if (a.grad_x)
      K::template inputs_item<true, false>(a, layout, t, it);
    else if (a.grad_residual)
      K::template inputs_item<false, true>(a, layout, t, it);
  }

  NA_INLINE static void statistics_sums(const ForwardArgs& a, const noisy_quant::Quantizer& layout,
                                        const double* mean, const WorkItem& it, double* sums) {
    switch (a.quantizer.dtype) {
      case DType::FLOAT32: return statistics_sums<DType::FLOAT32>(a, layout, mean, it, sums);
      case DType::FLOAT16: return statistics_sums<DType::FLOAT16>(a, layout, mean, it, sums);
      default: return statistics_sums<DType::BFLOAT16>(a, layout, mean, it, sums);
    }
  }
  NA_INLINE static void forward(const ForwardArgs& a, const noisy_quant::Quantizer& nq, const float* alpha,
                                const float* beta, const WorkItem& it) {
    switch (a.quantizer.dtype) {
      case DType::FLOAT32: return forward<DType::FLOAT32>(a, nq, alpha, beta, it);
      case DType::FLOAT16: return forward<DType::FLOAT16>(a, nq, alpha, beta, it);
      default: return forward<DType::BFLOAT16>(a, nq, alpha, beta, it);
    }
  }
  NA_INLINE static void backward_sums(const BackwardArgs& a, const noisy_quant::Quantizer& layout,
                                      const ChannelTerms& t, const WorkItem& it, double* sums) {
    switch (a.dtype) {
      case DType::FLOAT32: return backward_sums<DType::FLOAT32>(a, layout, t, it, sums);
      case DType::FLOAT16: return backward_sums<DType::FLOAT16>(a, layout, t, it, sums);
      default: return backward_sums<DType::BFLOAT16>(a, layout, t, it, sums);
    }
  }
  NA_INLINE static void backward_inputs(const BackwardArgs& a, const noisy_quant::Quantizer& layout,
                                        const ChannelTerms& t, const WorkItem& it) {
    switch (a.dtype) {
      case DType::FLOAT32: return backward_inputs<DType::FLOAT32>(a, layout, t, it);
      case DType::FLOAT16: return backward_inputs<DType::FLOAT16>(a, layout, t, it);
      default: return backward_inputs<DType::BFLOAT16>(a, layout, t, it);
    }
  }
};

}  // namespace simd
}  // namespace batchnorm_noisy_quant
}  // namespace na
