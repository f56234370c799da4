// event_conv's entry point: argument checks, the event buffers, the density decision, the
// parallel region over images on the kernels this CPU allows, and the Python binding.
#include <pybind11/pybind11.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>

#include "common/arguments.h"
#include "common/simd.h"
#include "event_conv/event_conv.h"

namespace na {
namespace event_conv {
namespace {

// a buffer of at least `size` elements in `buffer`, grown when needed and kept between calls: a
// fresh one would pay its page faults on every call
template <class T> T* scratch(std::unique_ptr<T[]>& buffer, int64_t& capacity, int64_t size) {
  if (size > capacity) {
    buffer.reset(new T[size]);
    capacity = size;
  }
  return buffer.get();
}

// the calling thread's event lists, room for one image's rows, their first row first_row
Events band_events(const Geometry& g, int64_t first_row) {
  thread_local std::unique_ptr<int32_t[]> start, key;
  thread_local std::unique_ptr<float[]> value;
  thread_local int64_t start_capacity = 0, key_capacity = 0, value_capacity = 0;
  const int64_t size = g.h * g.w * g.cin;
  return Events{scratch(start, start_capacity, g.h * (g.w + 1)), scratch(key, key_capacity, size),
                scratch(value, value_capacity, size), first_row};
}

// x's nonzero count
int64_t count_nonzeros(const float* x, int64_t size, int threads) {
  int64_t total = 0;
#pragma omp parallel for simd reduction(+ : total) num_threads(threads) schedule(static)
  for (int64_t i = 0; i < size; ++i) total += x[i] != 0.0f;
  return total;
}

// Work items: an image's output rows in bands of band_rows(g) rows, so that a small batch still
// gives every thread work; the bands depend on the shape alone (each output sums in one order
// whatever the band, but an image band holding an infinity or a NaN is gathered one pixel at a
// time, so the band must not depend on the thread count).
constexpr int64_t kMinItems = 64;
int64_t band_rows(const Geometry& g) {
  const int64_t bands = std::min(g.oh, (kMinItems + g.n - 1) / std::max<int64_t>(g.n, 1));
  return (g.oh + bands - 1) / bands;
}

// In one parallel region, per band of an image: the event lists of the input rows its output rows
// read (in the thread's buffer, still in its cache when read), then those output rows. Bands are
// handed out as threads come free: a spiking network's batch is time-major and its firing rate
// varies over the steps, so equal static shares are unequal work. A band whose input rows hold an
// infinity or a NaN is gathered one pixel at a time (the tiles need finite inputs). Returns the
// nonzero count of the rows scanned (x's, where the bands are whole images).
// limit >= 0 (whole images only): once the images scanned hold more than `limit` nonzeros, the
// remaining ones are skipped and the count returned is above limit; `out` is then incomplete.
// The stop is exact whatever the order images are taken in: it happens if and only if x holds
// more than `limit` nonzeros.
int64_t convolve_bands(const float* x, const ConvArgs& args, int64_t limit) {
  const Geometry& g = args.g;
  const bool avx512 = cpu_has_avx512(), avx2 = cpu_has_avx2();
  const int64_t rows = band_rows(g), bands = (g.oh + rows - 1) / rows;
  std::atomic<int64_t> scanned{0};
  std::atomic<bool> stopped{false};
#pragma omp parallel for schedule(dynamic, 1) num_threads(args.threads)
  for (int64_t item = 0; item < g.n * bands; ++item) {
    if (stopped.load(std::memory_order_relaxed)) continue;
    const int64_t image = item / bands, oh_begin = item % bands * rows, oh_end = std::min(g.oh, oh_begin + rows);
    // the input rows of output rows [oh_begin, oh_end); all of them for a whole image (so that
    // the scans count every nonzero of x)
    const bool whole = bands == 1;
    const int64_t ih_begin = whole ? 0 : std::max<int64_t>(0, oh_begin * g.stride_h - g.pad_h);
    const int64_t ih_end = whole ? g.h : std::min(g.h, (oh_end - 1) * g.stride_h - g.pad_h + g.kh);
    ConvArgs a = args;
    a.events = band_events(g, image * g.h + ih_begin);
    bool nonfinite = false;
    bool* check = a.tiled ? &nonfinite : nullptr;
    const int64_t begin = image * g.h + ih_begin, end = image * g.h + std::max(ih_begin, ih_end);
    const int64_t count =
        avx512 ? events_avx512(x, g, a.events, begin, end, check) : events_generic(x, g, a.events, begin, end, check);
    const int64_t total = scanned.fetch_add(count, std::memory_order_relaxed) + count;
    if (limit >= 0 && total > limit) {
      stopped.store(true, std::memory_order_relaxed);
      continue;
    }
    if (nonfinite) a.tiled = nullptr;
    const int64_t first = image * g.oh + oh_begin, last = image * g.oh + oh_end;
    if (avx512)
      rows_avx512(a, first, last);
    else if (avx2)
      rows_avx2(a, first, last);
    else
      rows_generic(a, first, last);
  }
  return scanned.load();
}

// the weight table of the tiled gather (event_conv.h tile_block) of the weights packed for g,
// in a buffer of the calling thread
const float* tile_weights(const float* weight, const Geometry& g) {
  thread_local std::unique_ptr<float[]> table;
  thread_local int64_t capacity = 0;
  const int64_t rows = tile_rows(g), row_size = g.cin * g.cout_padded;
  const int64_t offset = (tile_pixels(g.cout_padded) - 1) * g.stride_w;  // table row of kw = 0
  float* t = scratch(table, capacity, g.kh * rows * row_size);
  for (int64_t kh = 0; kh < g.kh; ++kh) {
    for (int64_t r = 0; r < rows; ++r) {
      float* to = t + (kh * rows + r) * row_size;
      const int64_t kw = r - offset;
      if (kw >= 0 && kw < g.kw)
        std::copy(weight + (kh * g.kw + kw) * row_size, weight + (kh * g.kw + kw + 1) * row_size, to);
      else
        std::fill(to, to + row_size, 0.0f);
    }
  }
  return t;
}

// Asks for transparent huge pages over the 2 MiB-aligned interior of a large output: a fresh
// output (glibc maps big blocks anew on most calls) is then faulted in 2 MiB at a time instead of
// 4 KiB, far fewer traps to the OS for the same zeroing. Only a hint: where the kernel allows
// huge pages on request (transparent_hugepage "madvise" or "always"); elsewhere nothing changes.
void advise_huge_pages(void* data, int64_t bytes) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  if (bytes < static_cast<int64_t>(2 * kHuge)) return;
  const uintptr_t at = reinterpret_cast<uintptr_t>(data);
  const uintptr_t begin = (at + kHuge - 1) & ~(kHuge - 1), end = (at + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

Geometry make_geometry(int64_t n, int64_t h, int64_t w, int64_t cin, int64_t cout, int64_t kh, int64_t kw,
                       int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w) {
  require(n >= 0 && h >= 1 && w >= 1, "x", "must have N >= 0, H >= 1 and W >= 1");
  require(cin >= 1 && cout >= 1, "channels", "must be >= 1 (in and out)");
  require(w * cin < (int64_t{1} << 31), "W * Cin", "must be < 2^31 (the keys of an input row are int32)");
  require(kh >= 1 && kw >= 1, "kernel_size", "must be >= 1");
  require(stride_h >= 1 && stride_w >= 1, "stride", "must be >= 1");
  require(pad_h >= 0 && pad_w >= 0, "padding", "must be >= 0");
  Geometry g{n, h, w, cin, (h + 2 * pad_h - kh) / stride_h + 1, (w + 2 * pad_w - kw) / stride_w + 1,
             cout, (cout + kCoutAlign - 1) / kCoutAlign * kCoutAlign, kh, kw, stride_h, stride_w, pad_h, pad_w};
  require(h + 2 * pad_h >= kh && w + 2 * pad_w >= kw, "kernel_size", "must fit the padded input");
  return g;
}

// Returns the input's nonzero count; when it exceeds max_nonzeros, returns a count above
// max_nonzeros and `out` is not to be used (the caller runs the dense convolution instead).
// Whether it does is decided exactly either way; count_first only chooses how: count x's nonzeros
// in a pass of their own before convolving (cheaper for an input that will exceed the limit), or
// count them while convolving whole images and stop once past it (one read of x fewer). A small
// batch, in bands of output rows whose scans overlap, is always counted first.
int64_t event_conv_forward(uintptr_t x, uintptr_t weight, uintptr_t bias, uintptr_t residual, uintptr_t out,
                           int64_t n, int64_t h, int64_t w, int64_t cin, int64_t cout, int64_t kh, int64_t kw,
                           int64_t stride_h, int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t max_nonzeros,
                           bool count_first, int threads) {
  const Geometry g = make_geometry(n, h, w, cin, cout, kh, kw, stride_h, stride_w, pad_h, pad_w);
  require(threads >= 1, "threads", "must be >= 1");
  require(x != 0 && weight != 0 && bias != 0 && out != 0, "x, weight, bias and out", "must be addresses");
  const float* input = address_of<const float>(x);
  const bool whole_images = band_rows(g) >= g.oh;  // the bands' scans then count x's nonzeros
  const bool limited = max_nonzeros < g.pixels() * g.cin;
  int64_t counted = -1;
  if ((limited && count_first) || !whole_images) {
    counted = count_nonzeros(input, g.pixels() * g.cin, threads);
    if (counted > max_nonzeros) return counted;
  }
  advise_huge_pages(address_of<float>(out), g.n * g.oh * g.ow * g.cout * static_cast<int64_t>(sizeof(float)));
  const float* packed = address_of<const float>(weight);
  const float* tiled = tile_pixels(g.cout_padded) > 0 ? tile_weights(packed, g) : nullptr;
  const int64_t scanned = convolve_bands(input, ConvArgs{g, Events{}, packed, tiled, address_of<const float>(bias),
                                                         address_of<const float>(residual), address_of<float>(out),
                                                         threads},
                                        limited && counted < 0 ? max_nonzeros : -1);
  return counted >= 0 ? counted : scanned;
}

}  // namespace
}  // namespace event_conv

void bind_event_conv(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("event_conv_forward", &event_conv::event_conv_forward, py::arg("x"), py::arg("weight"), py::arg("bias"),
        py::arg("residual"), py::arg("out"), py::arg("n"), py::arg("h"), py::arg("w"), py::arg("cin"),
        py::arg("cout"), py::arg("kh"), py::arg("kw"), py::arg("stride_h"), py::arg("stride_w"), py::arg("pad_h"),
        py::arg("pad_w"), py::arg("max_nonzeros"), py::arg("count_first"), py::arg("threads"),
        py::call_guard<py::gil_scoped_release>(),
        "channels-last float32 convolution gathering only the nonzero inputs; returns the nonzero count "
        "(above max_nonzeros: out is not to be used)");
}

}  // namespace na
