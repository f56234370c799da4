// event_conv on the CPU: a 2-D convolution whose cost scales with the nonzero inputs.
//   out[n, oh, ow, co] = bias[co] + sum_{kh, kw, c} x[n, oh*sh - ph + kh, ow*sw - pw + kw, c] * w[kh, kw, c, co]
//                        (+ residual[n, oh, ow, co])
// channels-last x [N, H, W, Cin], weights packed [KH][KW][Cin][CoutP] (CoutP = Cout rounded up
// to 16, zero columns), bias [CoutP], residual and out [N, OH, OW, Cout].
// Per image n (or band of its output rows), two steps: the events of each input row (n, ih) it
// reads, its nonzeros in (iw, c) order, each with the key iw * Cin + c and its value, and where
// each pixel's start (in the thread's buffer, still in its cache for the next step); then each
// output pixel gathers,
// per Cout block, acc = fma(v, w[kh][kw][c][block], acc) over its in-bounds taps in (kh, kw, c)
// order, starting from the bias and adding the residual last. A tap row's events (kw = kw_begin
// .. kw_end - 1) are one contiguous run of its input row, and key - iw0 * Cin = kw * Cin + c
// picks the weight row, so each output pixel runs one loop per kh. Where CoutP == 16 the pixels
// go in tiles (tile_block): the same sums plus exact zeros. Every lane sees one order on every ISA
// (the tiles depend on the shape alone), and the generic kernel uses std::fma, so generic, AVX2
// and AVX-512 outputs are bitwise equal.
#pragma once
#include <algorithm>
#include <cstdint>

#include "common/lanes.h"  // also silences -Wpsabi for the always-inlined vector templates
#include "common/simd.h"

namespace na {
namespace event_conv {

constexpr int64_t kCoutAlign = 16;  // CoutP: Cout rounded up to this

struct Geometry {
  int64_t n, h, w, cin;
  int64_t oh, ow, cout, cout_padded;
  int64_t kh, kw, stride_h, stride_w, pad_h, pad_w;
  int64_t pixels() const { return n * h * w; }
};

// per input row r = (n, ih), counted from first_row: its events key[r * W * Cin + k], value[...]
// (k < start[r * (W + 1) + W]), pixel iw's from k = start[r * (W + 1) + iw]
struct Events {
  int32_t* start;
  int32_t* key;
  float* value;
  int64_t first_row;
};

struct ConvArgs {
  Geometry g;
  Events events;
  const float* weight;    // [KH][KW][Cin][CoutP]
  const float* tiled;     // [KH][tile_rows(g)][Cin][CoutP] (tile_weights), or null: one pixel at a time
  const float* bias;      // [CoutP]
  const float* residual;  // [N, OH, OW, Cout], or null
  float* out;             // [N, OH, OW, Cout]
  int threads;
};

// the events of input rows [begin, end) of x; returns their nonzero count, and sets *nonfinite
// where one of them is an infinity or a NaN (unchecked where nonfinite is null)
int64_t events_generic(const float* x, const Geometry& g, const Events& e, int64_t begin, int64_t end,
                       bool* nonfinite);
int64_t events_avx512(const float* x, const Geometry& g, const Events& e, int64_t begin, int64_t end,
                      bool* nonfinite);

// The event lists of input rows [begin, end): per input pixel, Scan::pixel(in, count, first_key,
// key, value, k) appends its nonzeros and returns the new k (Scan: each ISA's, inlined under its
// target); returns the rows' nonzero count.
template <class Scan>
NA_INLINE int64_t scan_rows(const float* x, const Geometry& g, const Events& e, int64_t begin, int64_t end,
                            Scan& scan) {
  int64_t total = 0;
  const int64_t row_events = g.w * g.cin;
  for (int64_t row = begin; row < end; ++row) {
    const float* in = x + row * row_events;
    const int64_t at = row - e.first_row;
    int32_t* start = e.start + at * (g.w + 1);
    int32_t* key = e.key + at * row_events;
    float* value = e.value + at * row_events;
    int32_t k = 0;
    for (int64_t iw = 0; iw < g.w; ++iw) {
      start[iw] = k;
      k = scan.pixel(in + iw * g.cin, g.cin, static_cast<int32_t>(iw * g.cin), key, value, k);
    }
    start[g.w] = k;
    total += k;
  }
  return total;
}

// the output rows [begin, end) of (n, oh)
void rows_generic(const ConvArgs& a, int64_t begin, int64_t end);
void rows_avx2(const ConvArgs& a, int64_t begin, int64_t end);
void rows_avx512(const ConvArgs& a, int64_t begin, int64_t end);

// the first input pixel of output pixel (oh, ow)'s window and its in-bounds taps
struct Window {
  int64_t ih0, iw0, kh_begin, kh_end, kw_begin, kw_end;
};

inline Window window(const Geometry& g, int64_t oh, int64_t ow) {
  Window win;
  win.ih0 = oh * g.stride_h - g.pad_h;
  win.iw0 = ow * g.stride_w - g.pad_w;
  win.kh_begin = win.ih0 < 0 ? -win.ih0 : 0;
  win.kw_begin = win.iw0 < 0 ? -win.iw0 : 0;
  win.kh_end = g.h - win.ih0 < g.kh ? g.h - win.ih0 : g.kh;
  win.kw_end = g.w - win.iw0 < g.kw ? g.w - win.iw0 : g.kw;
  return win;
}

// One output pixel's Cout block [block, block + NV * V::kWidth) on vector ops V (load, fma,
// set1, store_first(ptr, vec, lanes), add_first(ptr, vec, lanes) -> vec + ptr[lanes]).
template <class V, int NV>
NA_INLINE void output_block(const ConvArgs& a, int64_t n, int64_t oh, int64_t ow, int64_t block) {
  const Geometry& g = a.g;
  typename V::Vec acc[NV];
  for (int j = 0; j < NV; ++j) acc[j] = V::load(a.bias + block + j * V::kWidth);
  const Window win = window(g, oh, ow);
  const int64_t row_events = g.w * g.cin;
  for (int64_t kh = win.kh_begin; kh < win.kh_end; ++kh) {
    const int64_t row = n * g.h + win.ih0 + kh - a.events.first_row;
    const int32_t* start = a.events.start + row * (g.w + 1) + win.iw0;
    const int32_t* key = a.events.key + row * row_events;
    const float* value = a.events.value + row * row_events;
    // weight row of key: (kh * KW * Cin + key - iw0 * Cin) * CoutP
    const int64_t tap = block + (kh * g.kw - win.iw0) * g.cin * g.cout_padded;
    for (int32_t k = start[win.kw_begin], end = start[win.kw_end]; k < end; ++k) {
      const typename V::Vec v = V::set1(value[k]);
      const float* w = a.weight + (tap + static_cast<int64_t>(key[k]) * g.cout_padded);
      for (int j = 0; j < NV; ++j) acc[j] = V::fma(v, V::load(w + j * V::kWidth), acc[j]);
    }
  }
  const int64_t at = ((n * g.oh + oh) * g.ow + ow) * g.cout + block;
  for (int j = 0; j < NV; ++j) {
    const int64_t lanes = g.cout - block - j * V::kWidth;
    if (lanes <= 0) break;
    const int lanes_here = lanes < V::kWidth ? static_cast<int>(lanes) : V::kWidth;
    typename V::Vec result = acc[j];
    if (a.residual) result = V::add_first(a.residual + at + j * V::kWidth, result, lanes_here);
    V::store_first(a.out + at + j * V::kWidth, result, lanes_here);
  }
}

// output pixels (n, oh, 0..OW) of the Cout block at `block`, NV vectors wide
template <class V, int NV> NA_INLINE void row_block(const ConvArgs& a, int64_t n, int64_t oh, int64_t block) {
  for (int64_t ow = 0; ow < a.g.ow; ++ow) output_block<V, NV>(a, n, oh, ow, block);
}

// row_block with NV = `vectors` (1 <= vectors <= MAX), a compile-time width for each
template <class V, int MAX>
NA_INLINE void row_block_of(int64_t vectors, const ConvArgs& a, int64_t n, int64_t oh, int64_t block) {
  if constexpr (MAX > 1) {
    if (vectors < MAX) return row_block_of<V, MAX - 1>(vectors, a, n, oh, block);
  }
  row_block<V, MAX>(a, n, oh, block);
}

// Narrow convolutions (CoutP == 16): kTilePixels(CoutP) adjacent output pixels (n, oh, ow0 + p)
// at once, one accumulator set each. A tile's windows cover the input segment
// iw in [ow0 * SW - PW, ow0 * SW - PW + J), J = (P - 1) * SW + KW, whose events are one contiguous
// run per kernel row; every event of the run updates every pixel of the tile, through a weight
// table whose rows outside a pixel's window are zero: tiled[kh][r][c] = w[kh][r - (P - 1) * SW][c]
// for 0 <= r - (P - 1) * SW < KW, else 0, and pixel p reads row j + (P - 1 - p) * SW for the event
// at iw = ow0 * SW - PW + j. So each output sums its window's taps in the (kh, kw, c) order of
// output_block plus exact zeros (fma(v, 0, acc) == acc but for the sign of a zero acc), branch
// free; the caller takes this path only for finite inputs (inf * 0 is a NaN). P depends on CoutP
// alone, so every ISA adds the same zeros.
inline int64_t tile_pixels(int64_t cout_padded) { return cout_padded == 16 ? 4 : 0; }
inline int64_t tile_rows(const Geometry& g) {
  return 2 * (tile_pixels(g.cout_padded) - 1) * g.stride_w + g.kw;
}

// pixels (n, oh, ow0 .. ow0 + valid - 1) (valid <= P) of the Cout block at `block`, NV vectors wide
template <class V, int NV, int P>
NA_INLINE void tile_block(const ConvArgs& a, int64_t n, int64_t oh, int64_t ow0, int64_t valid, int64_t block) {
  const Geometry& g = a.g;
  typename V::Vec acc[P][NV];
  for (int j = 0; j < NV; ++j) {
    const typename V::Vec b = V::load(a.bias + block + j * V::kWidth);
    for (int p = 0; p < P; ++p) acc[p][j] = b;
  }
  const Window win = window(g, oh, ow0);
  const int64_t first = win.iw0, last = win.iw0 + (valid - 1) * g.stride_w + g.kw;  // the segment
  const int64_t lo = std::min(std::max(first, int64_t{0}), g.w), hi = std::max(lo, std::min(last, g.w));
  const int64_t row_events = g.w * g.cin, rows = tile_rows(g);
  const int64_t step = g.stride_w * g.cin * g.cout_padded;  // pixel p + 1 reads this much lower
  for (int64_t kh = win.kh_begin; kh < win.kh_end; ++kh) {
    const int64_t row = n * g.h + win.ih0 + kh - a.events.first_row;
    const int32_t* start = a.events.start + row * (g.w + 1);
    const int32_t* key = a.events.key + row * row_events;
    const float* value = a.events.value + row * row_events;
    // pixel 0's table row of key: kh * rows * Cin + (P - 1) * SW * Cin + key - first * Cin
    const int64_t tap = block + (kh * rows * g.cin + ((P - 1) * g.stride_w - first) * g.cin) * g.cout_padded;
    for (int32_t k = start[lo], end = start[hi]; k < end; ++k) {
      const typename V::Vec v = V::set1(value[k]);
      const float* w = a.tiled + (tap + static_cast<int64_t>(key[k]) * g.cout_padded);
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) {
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[p][j] = V::fma(v, V::load(w - p * step + j * V::kWidth), acc[p][j]);
      }
    }
  }
  for (int64_t p = 0; p < valid; ++p) {
    const int64_t at = ((n * g.oh + oh) * g.ow + ow0 + p) * g.cout + block;
    for (int j = 0; j < NV; ++j) {
      const int64_t lanes = g.cout - block - j * V::kWidth;
      if (lanes <= 0) break;
      const int lanes_here = lanes < V::kWidth ? static_cast<int>(lanes) : V::kWidth;
      typename V::Vec result = acc[p][j];
      if (a.residual) result = V::add_first(a.residual + at + j * V::kWidth, result, lanes_here);
      V::store_first(a.out + at + j * V::kWidth, result, lanes_here);
    }
  }
}

// output pixels (n, oh, 0..OW) in tiles of P, Cout (<= NV vectors) in one block
template <class V, int NV, int P> NA_INLINE void tile_row(const ConvArgs& a, int64_t n, int64_t oh) {
  for (int64_t ow = 0; ow < a.g.ow; ow += P)
    tile_block<V, NV, P>(a, n, oh, ow, a.g.ow - ow < P ? a.g.ow - ow : P, 0);
}

// output rows [begin, end) of (n, oh), Cout in blocks of up to MAX vectors (in tiles where a.tiled)
template <class V, int MAX> NA_INLINE void output_rows(const ConvArgs& a, int64_t begin, int64_t end) {
  const Geometry& g = a.g;
  const int64_t block_width = MAX * V::kWidth;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t n = row / g.oh, oh = row % g.oh;
    if (a.tiled) {  // CoutP == 16
      tile_row<V, 16 / V::kWidth, 4>(a, n, oh);
      continue;
    }
    for (int64_t block = 0; block < g.cout; block += block_width) {
      const int64_t width = g.cout - block < block_width ? g.cout - block : block_width;
      row_block_of<V, MAX>((width + V::kWidth - 1) / V::kWidth, a, n, oh, block);
    }
  }
}

}  // namespace event_conv
}  // namespace na
