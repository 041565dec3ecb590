// Gathering a training batch on the GPU (csrc/cuda/augment.cu):
//   augment_batch  batch[b, c, h, w] = images[n, source_row, source_col, c] / 255, n =
//                  index[offset + b], uint8 (N, H, W, C) -> float (B, C, H, W); source_row =
//                  clamp(h - dy, 0, H - 1), source_col = clamp(w - dx, 0, W - 1), mirrored
//                  (W - 1 - source_col) when the sample is flipped; (dy, dx, flip) drawn per
//                  sample from (seed, step, b). A position outside [0, n_index) or an index entry
//                  outside [0, N) gives a zero image and is counted (returned, or added to into[0])
//   take           out[b] = values[index[offset + b]] as int32 (the batch's labels); -1 where
//                  the position, the index entry or the value is out of range.
// The step and the offset are Counters: a value, or an int64 in device memory that the kernel
// reads when it runs (the trainer's captured step; pyregnet/engine.py).
//
// The CPU reference takes the draw from math/augment.h (augment_draw: shared math, the same
// hash as pyregnet/reference.py) and checks everything the kernel does with it: the gather, the
// clamped shift, the mirror, the layout change, the scaling and the out-of-range handling.
//
// Cases: from a 50,000-image 32x32x3 uint8 set (CIFAR-10's size, random bytes) through a random
// permutation: batch 64 with shift 3 and flips (the training default) with step and offset by
// value and from device memory, the device values then changed without touching the shape (as
// a graph replay does); batch 1000 without augmentation (the eval gather) and with it; a last
// batch running past the end of the index, and an index holding -1 and N (zero images,
// counted); int32 indices; then awkward shapes (validated only): H != W with C = 1, a shift
// larger than the image, B = 1, B = 0. take: uint8 and int64 values, positions past the end, an
// index entry out of range, values outside int32.
//
// One version, the package (linked with -DWITH_PACKAGE): it already is the naive form (a
// thread per output element), so there is no simpler version of our own to put beside it.
// Built without the package the harness has nothing to validate and says FAILED.
//
// Memory bound: augment reads B images' bytes (gathered) and the index, writes 4 bytes per
// output element; at batch 64 that is ~1 MB (~0.3 us at copy bandwidth), so the time per call
// is launch and latency: printed as GPU time (events, L2 flushed) and host wall time per call.
//
// Build and run (see Makefile):  make augment && /tmp/pyregnet-dev-cuda/augment
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "common.cuh"
#include "math/augment.h"
#include "math/shapes.h"
#ifdef WITH_PACKAGE
#include "core/backend.h"
#endif

using pyregnet::AugmentShape;
using pyregnet::Counter;
using pyregnet::DType;
using pyregnet::IntArray;

namespace {
// Everything below needs the package (the only version); a build without it only says so.
#ifdef WITH_PACKAGE

// ---- CPU reference -------------------------------------------------------------------------

struct Images {
  int64_t N, H, W, C;
  std::vector<uint8_t> bytes;  // (N, H, W, C)
};

Images random_images(int64_t N, int64_t H, int64_t W, int64_t C, uint64_t seed) {
  Images im{N, H, W, C, std::vector<uint8_t>(size_t(N * H * W * C))};
  dev::Rng rng(seed);
  for (size_t i = 0; i < im.bytes.size(); i += 8) {
    const uint64_t r = rng.next();
    for (size_t k = 0; k < 8 && i + k < im.bytes.size(); ++k) im.bytes[i + k] = uint8_t(r >> (8 * k));
  }
  return im;
}

// What one call gathers, with the step and the offset as plain values.
struct Gather {
  int64_t B;
  int max_shift;
  bool flip;
  uint64_t seed;
  int64_t step, offset;
};

struct AugmentReference {
  std::vector<float> batch;  // (B, C, H, W)
  int64_t bad = 0;
};

AugmentReference augment_cpu(const Images& im, const std::vector<int64_t>& index, const Gather& g) {
  const int64_t H = im.H, W = im.W, C = im.C;
  AugmentReference r;
  r.batch.assign(size_t(g.B * C * H * W), 0.0f);
  for (int64_t b = 0; b < g.B; ++b) {
    const int64_t position = g.offset + b;
    const int64_t n = position >= 0 && position < int64_t(index.size()) ? index[size_t(position)] : -1;
    if (n < 0 || n >= im.N) {  // zero image (already zero), counted
      ++r.bad;
      continue;
    }
    const pyregnet::AugmentDraw d = pyregnet::augment_draw(g.seed, uint64_t(g.step), uint64_t(b), g.max_shift, g.flip);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t w = 0; w < W; ++w) {
          const int64_t row = std::min(std::max(h - d.dy, int64_t(0)), H - 1);
          int64_t col = std::min(std::max(w - d.dx, int64_t(0)), W - 1);
          if (d.flip) col = W - 1 - col;
          const uint8_t v = im.bytes[size_t(((n * H + row) * W + col) * C + c)];
          r.batch[size_t(((b * C + c) * H + h) * W + w)] = float(v) / 255.0f;
        }
  }
  return r;
}

// take from the rule: -1 unless the position is in [0, n_index), the entry in [0, n_values) and
// the value in [0, 2^31).
std::vector<int32_t> take_cpu(const std::vector<int64_t>& values, const std::vector<int64_t>& index, int64_t offset,
                              int64_t B) {
  std::vector<int32_t> out(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t position = offset + b;
    int32_t label = -1;
    if (position >= 0 && position < int64_t(index.size())) {
      const int64_t n = index[size_t(position)];
      if (n >= 0 && n < int64_t(values.size())) {
        const int64_t v = values[size_t(n)];
        if (v >= 0 && v <= INT32_MAX) label = int32_t(v);
      }
    }
    out[size_t(b)] = label;
  }
  return out;
}

// A random permutation of [0, n) (Fisher-Yates), the shape of the trainer's epoch order.
std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[size_t(i)] = i;
  dev::Rng rng(seed);
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[size_t(i)], p[size_t(rng.next() % uint64_t(i + 1))]);
  return p;
}

// Exact: the kernel only gathers bytes and divides by 255, an IEEE float division (correctly
// rounded on the device: no -use_fast_math / -prec-div=false here nor in the package's CMake
// build) that the host's float division reproduces bit for bit. Zero images must be exact zeros.
constexpr dev::Tolerance kExact{0.0, 0.0};

// ---- harness -------------------------------------------------------------------------------

// An integer array on the device in the dtype a case asks for (int32 or int64 or uint8).
struct DeviceInts {
  dev::DeviceBuffer<int32_t> i32;
  dev::DeviceBuffer<int64_t> i64;
  dev::DeviceBuffer<uint8_t> u8;
  IntArray view;
  DeviceInts(const std::vector<int64_t>& v, DType dtype)
      : i32(dtype == DType::i32 ? v.size() : 0), i64(dtype == DType::i64 ? v.size() : 0),
        u8(dtype == DType::u8 ? v.size() : 0), view{nullptr, dtype} {
    if (dtype == DType::i32) {
      std::vector<int32_t> narrow(v.size());
      for (size_t i = 0; i < v.size(); ++i) narrow[i] = int32_t(v[i]);  // callers keep values in range
      i32.upload(narrow);
      view.data = i32.get();
    } else if (dtype == DType::i64) {
      i64.upload(v);
      view.data = i64.get();
    } else {
      std::vector<uint8_t> narrow(v.size());
      for (size_t i = 0; i < v.size(); ++i) narrow[i] = uint8_t(v[i]);
      u8.upload(narrow);
      view.data = u8.get();
    }
  }
  double bytes_per_entry() const { return view.dtype == DType::i32 ? 4 : view.dtype == DType::i64 ? 8 : 1; }
};

const char* dtype_name(DType t) { return t == DType::i32 ? "int32" : t == DType::i64 ? "int64" : "uint8"; }

struct DeviceImages {
  const Images& host;
  dev::DeviceBuffer<uint8_t> bytes;
  explicit DeviceImages(const Images& im) : host(im), bytes(im.bytes) {}
};

// The counters a captured step reads: [0] step, [1] offset.
struct DeviceCounters {
  dev::DeviceBuffer<int64_t> values{size_t(2)};
  void set(int64_t step, int64_t offset) { values.upload({step, offset}); }
  Counter step() const { return Counter{values.get(), 0}; }
  Counter offset() const { return Counter{values.get() + 1, 0}; }
};

struct AugmentCase {
  std::string name;
  const DeviceImages* images;
  const std::vector<int64_t>* index;
  DType index_dtype;
  Gather g;
  bool counters_on_device;  // step and offset read from device memory (then changed once)
  bool timed;
};

int run_augment_case(const AugmentCase& c, DeviceCounters& counters, double bw) {
  const Images& im = c.images->host;
  const Gather& g = c.g;
  std::printf("\n== augment: %s: B = %lld of (%lld,%lld,%lld,%lld), %s index of %zu, shift %d, flip %s, "
              "step %lld, offset %lld%s ==\n",
              c.name.c_str(), (long long)g.B, (long long)im.N, (long long)im.H, (long long)im.W, (long long)im.C,
              dtype_name(c.index_dtype), c.index->size(), g.max_shift, g.flip ? "yes" : "no", (long long)g.step,
              (long long)g.offset, c.counters_on_device ? ", both from device memory" : "");
  const DeviceInts index(*c.index, c.index_dtype);
  const size_t n_out = size_t(g.B * im.C * im.H * im.W);
  dev::DeviceBuffer<float> batch(n_out);
  dev::DeviceBuffer<double> into(1);
  using pyregnet::cuda::Stream;
  const Stream st = nullptr;  // the legacy default stream, where the events are recorded

  AugmentShape s{im.N, im.H, im.W, im.C, g.B, g.max_shift, g.flip, g.seed, Counter{nullptr, g.step},
                 Counter{nullptr, g.offset}, int64_t(c.index->size())};
  if (c.counters_on_device) {
    counters.set(g.step, g.offset);
    s.step = counters.step();
    s.offset = counters.offset();
  }
  const AugmentReference ref = augment_cpu(im, *c.index, g);
  std::printf("  reference: %lld zero image(s) counted\n", (long long)ref.bad);

  bool ok = true;
  // into = nullptr: the count returned.
  batch.poison();
  const int64_t returned = pyregnet::cuda::augment_batch<float>(c.images->bytes.get(), index.view, batch.get(), s,
                                                                nullptr, st);
  cudaCheck(cudaDeviceSynchronize());
  ok &= dev::validate_result(batch.get(), ref.batch.data(), n_out, "batch (into = null)", kExact);
  ok &= dev::validate_scalar(double(returned), double(ref.bad), "zero images returned", {0.0, 0.0});
  // into set: added to into[0] on the device over 3 calls, each returning 0.
  const double start = 0.5;  // nonzero: "adds" must not overwrite
  into.upload({start});
  bool returned_zero = true;
  for (int call = 0; call < 3; ++call) {
    batch.poison();
    returned_zero &= pyregnet::cuda::augment_batch<float>(c.images->bytes.get(), index.view, batch.get(), s,
                                                          into.get(), st) == 0;
    cudaCheck(cudaDeviceSynchronize());
    ok &= dev::validate_result(batch.get(), ref.batch.data(), n_out, "batch (into)", kExact);
  }
  std::printf("    returned with into set: %s\n", returned_zero ? "0, ok" : "NOT 0, FAIL");
  ok &= returned_zero;
  ok &= dev::validate_scalar(into.download()[0], start + 3.0 * double(ref.bad), "into[0] after 3 calls", {0.0, 0.0});
  if (c.counters_on_device) {
    // A graph replay: new values in device memory, the same AugmentShape.
    Gather next = g;
    next.step = g.step + 1;
    next.offset = g.offset + g.B;
    counters.set(next.step, next.offset);
    const AugmentReference ref_next = augment_cpu(im, *c.index, next);
    batch.poison();
    const int64_t r = pyregnet::cuda::augment_batch<float>(c.images->bytes.get(), index.view, batch.get(), s, nullptr,
                                                           st);
    cudaCheck(cudaDeviceSynchronize());
    std::printf("    device counters changed to step %lld, offset %lld:\n", (long long)next.step,
                (long long)next.offset);
    ok &= dev::validate_result(batch.get(), ref_next.batch.data(), n_out, "batch (next step)", kExact);
    ok &= dev::validate_scalar(double(r), double(ref_next.bad), "zero images returned", {0.0, 0.0});
    counters.set(g.step, g.offset);
  }
  if (!ok) {
    std::printf("  augment: WRONG, not timed\n");
    return 1;
  }
  if (c.timed) {
    const double bytes = double(g.B) * double(im.H * im.W * im.C) * (1.0 + 4.0) + double(g.B) * index.bytes_per_entry();
    const auto call_into = [&] {
      pyregnet::cuda::augment_batch<float>(c.images->bytes.get(), index.view, batch.get(), s, into.get(), st);
    };
    const auto call_returning = [&] {
      pyregnet::cuda::augment_batch<float>(c.images->bytes.get(), index.view, batch.get(), s, nullptr, st);
    };
    const int repeats = 100, back_to_back = 500;
    dev::print_bytes_roofline("into (no sync)", dev::benchmark_kernel(repeats, call_into), bytes, bw);
    std::printf("      host wall time per call, %d back to back: %.2f us\n", back_to_back,
                dev::host_us_per_call(back_to_back, call_into));
    dev::print_bytes_roofline("into = null (copy + sync)", dev::benchmark_kernel(repeats, call_returning), bytes, bw);
    std::printf("      host wall time per call, %d back to back: %.2f us\n", back_to_back,
                dev::host_us_per_call(back_to_back, call_returning));
  }
  return 0;
}

struct TakeCase {
  std::string name;
  std::vector<int64_t> values;
  DType values_dtype;
  std::vector<int64_t> index;
  DType index_dtype;
  int64_t offset, B;
  bool offset_on_device, timed;
};

int run_take_case(const TakeCase& c, DeviceCounters& counters, double bw) {
  std::printf("\n== take: %s: B = %lld, %s values of %zu, %s index of %zu, offset %lld%s ==\n", c.name.c_str(),
              (long long)c.B, dtype_name(c.values_dtype), c.values.size(), dtype_name(c.index_dtype), c.index.size(),
              (long long)c.offset, c.offset_on_device ? " from device memory" : "");
  const DeviceInts values(c.values, c.values_dtype), index(c.index, c.index_dtype);
  dev::DeviceBuffer<int32_t> out(size_t(c.B));
  Counter offset{nullptr, c.offset};
  if (c.offset_on_device) {
    counters.set(0, c.offset);
    offset = counters.offset();
  }
  const std::vector<int32_t> ref = take_cpu(c.values, c.index, c.offset, c.B);
  int64_t minus_ones = 0;
  for (int32_t v : ref) minus_ones += v == -1;
  std::printf("  reference: %lld of %lld are -1\n", (long long)minus_ones, (long long)c.B);
  out.poison();
  pyregnet::cuda::take(values.view, int64_t(c.values.size()), index.view, int64_t(c.index.size()), offset, out.get(),
                       c.B, nullptr);
  cudaCheck(cudaDeviceSynchronize());
  if (!dev::validate_result(out.get(), ref.data(), size_t(c.B), "labels", kExact)) {
    std::printf("  take: WRONG, not timed\n");
    return 1;
  }
  if (c.timed) {
    const double bytes = double(c.B) * (index.bytes_per_entry() + values.bytes_per_entry() + 4.0);
    const auto call = [&] {
      pyregnet::cuda::take(values.view, int64_t(c.values.size()), index.view, int64_t(c.index.size()), offset, out.get(),
                           c.B, nullptr);
    };
    dev::print_bytes_roofline("take", dev::benchmark_kernel(200, call), bytes, bw);
    std::printf("      host wall time per call, 1000 back to back: %.2f us\n", dev::host_us_per_call(1000, call));
  }
  return 0;
}
#endif  // WITH_PACKAGE

}  // namespace

int main() {
  return dev::harness_main([&]() -> int {
#ifndef WITH_PACKAGE
    // The only version is the package's: without it nothing would be validated, and a harness
    // that validates nothing must not report success.
    std::printf("FAILED: built without the package (-DWITH_PACKAGE and csrc/cuda/augment.cu): no version to run\n");
    return 1;
#else
    const double bw = dev::measured_copy_bandwidth();

    constexpr int64_t kImages = 50000;
    const Images cifar = random_images(kImages, 32, 32, 3, dev::kSeed);
    const DeviceImages d_cifar(cifar);
    const std::vector<int64_t> order = permutation(kImages, dev::kSeed + 1);
    // The same order with entries out of range at a few positions of batch 3 (192..255).
    std::vector<int64_t> order_with_bad = order;
    order_with_bad[200] = -1;
    order_with_bad[230] = kImages;
    order_with_bad[255] = int64_t(1) << 40;
    const Images small = random_images(5, 7, 3, 1, dev::kSeed + 2);  // H != W, C = 1
    const DeviceImages d_small(small);
    const std::vector<int64_t> small_order = {4, 0, 3, 3, 1, 2};
    DeviceCounters counters;

    const uint64_t seed = 1234;
    const std::vector<AugmentCase> augment_cases = {
        {"training batch, by value", &d_cifar, &order, DType::i64, {64, 3, true, seed, 17, 17 * 64}, false, true},
        {"training batch, step and offset in device memory", &d_cifar, &order, DType::i64,
         {64, 3, true, seed, 17, 17 * 64}, true, true},
        {"eval batch (no shift, no flip)", &d_cifar, &order, DType::i64, {1000, 0, false, 0, 0, 7000}, true, true},
        {"batch 1000 with shift and flips", &d_cifar, &order, DType::i64, {1000, 3, true, seed, 3, 3000}, true, true},
        {"last batch past the end of the index", &d_cifar, &order, DType::i64,
         {64, 3, true, seed, 781, kImages - 60}, true, false},
        {"index entries -1, N and 2^40", &d_cifar, &order_with_bad, DType::i64, {64, 3, true, seed, 3, 192}, false, false},
        {"int32 index", &d_cifar, &order, DType::i32, {64, 3, true, seed, 9, 640}, true, false},
        {"negative offset (first 3 positions out of range)", &d_cifar, &order, DType::i64, {8, 3, true, seed, 1, -3},
         false, false},
        {"H != W, C = 1, shift 5 (beyond the 3-wide image)", &d_small, &small_order, DType::i64,
         {6, 5, true, seed, 2, 0}, false, false},
        {"B = 1", &d_small, &small_order, DType::i32, {1, 1, true, seed, 5, 2}, true, false},
        {"B = 0", &d_small, &small_order, DType::i64, {0, 3, true, seed, 0, 0}, false, false},
    };
    int failures = 0;
    for (const AugmentCase& c : augment_cases) failures += run_augment_case(c, counters, bw);

    // Labels as CIFAR ships them (0..9), as uint8 and as int64; int64 values with some out of
    // int32's range or negative.
    std::vector<int64_t> labels(static_cast<size_t>(kImages));
    dev::Rng rng(dev::kSeed + 3);
    for (int64_t& l : labels) l = int64_t(rng.next() % 10);
    std::vector<int64_t> wide_labels = labels;
    wide_labels[size_t(order[3])] = int64_t(INT32_MAX) + 1;
    wide_labels[size_t(order[5])] = -5;
    wide_labels[size_t(order[6])] = INT32_MAX;  // the largest value that fits: kept
    const std::vector<TakeCase> take_cases = {
        {"training batch, uint8 labels", labels, DType::u8, order, DType::i64, 17 * 64, 64, true, true},
        {"eval batch, int64 labels", labels, DType::i64, order, DType::i64, 7000, 1000, true, true},
        {"past the end of the index", labels, DType::u8, order, DType::i64, kImages - 60, 64, true, false},
        {"index entries out of range", labels, DType::u8, order_with_bad, DType::i64, 192, 64, false, false},
        {"values outside int32, int32 index", wide_labels, DType::i64, order, DType::i32, 0, 8, false, false},
        {"B = 0", labels, DType::u8, order, DType::i64, 0, 0, false, false},
    };
    for (const TakeCase& c : take_cases) failures += run_take_case(c, counters, bw);

    return failures;
#endif
  });
}
