// Softmax cross-entropy over N rows of `classes` logits: dlogits = (softmax(z) - onehot(label))
// / N (the gradient of the batch mean) and the batch totals (loss sum, rows whose first argmax
// is the label, rows whose label is outside [0, classes)). A bad label's row is not read: its
// dlogits are 0, it adds nothing to the loss and is counted (the labels live in device memory,
// so the CUDA backend cannot check them before the launch).
//
// The totals come back two ways (csrc/core/backend.h): into = nullptr returns XentTotals
// (the op synchronizes to read them); into = a device double[3] adds them there without
// synchronizing (the trainer's captured step). Both are validated, the second over 3 calls.
//
// Cases: N = 64 (the training batch), 1000 (the eval batch) and 16 (an epoch's last batch:
// 50,000 = 781 x 64 + 16), 10 classes, int32 labels (what `take` writes), with bad labels
// (-1 and = classes) mixed in (timed); then awkward ones (validated only): N = 0, N = 1, one
// class, N = 1025 (past one 1024-thread block) with int64 labels, 1000 classes, uint8 labels
// (255 = bad), logits of +-100 (exp would overflow without the max shift). Logits are
// quantized to half-integers so that rows hold tied maxima (the first one wins).
//
// Versions:
//   1  one fused launch: a single 1024-thread block computes every row (xent_row of
//      math/softmax_xent.h, thread t taking rows t, t + 1024, ...) and the totals (block_sum's
//      fixed tree, deterministic), no scratch memory; into-mode only. Suits the classifier's
//      batches (a few thousand rows at most: one block does not scale further)
//   2  the package: pyregnet::cuda::softmax_cross_entropy<float> (csrc/cuda/softmax_xent.cu,
//      linked with -DWITH_PACKAGE): a grid-wide row kernel writing per-row loss and outcome to
//      scratch from the stream's workspace, then a one-block totals kernel (+ a copy and a sync
//      with into = nullptr)
//
// The op is tiny (N = 64: 5 KB moved, ~2 ns at copy bandwidth), so its time is launch and
// latency: printed per call two ways, GPU time by events (L2 flushed) and host wall time per call
// back to back, beside the bytes roofline (logits + labels read, dlogits written).
//
// Build and run (see Makefile):  make softmax_xent && /tmp/pyregnet-dev-cuda/softmax_xent
// Without the package:           make softmax_xent_standalone (version 1 alone)
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "common.cuh"
#include "math/int_array.h"
#include "math/shapes.h"
#include "math/softmax_xent.h"
#ifdef WITH_PACKAGE
#include "core/backend.h"
#endif

using pyregnet::DType;
using pyregnet::IntArray;

namespace {

constexpr int kFusedThreads = 1024;
constexpr double kUnitRoundoff = 0x1p-24;  // u of float: round to nearest is within u |x|

// ---- CPU reference -------------------------------------------------------------------------

// The totals as three doubles, the layout of `into`.
struct Totals {
  double loss = 0.0, correct = 0.0, bad = 0.0;
};

struct XentReference {
  std::vector<double> dlogits;
  std::vector<double> dlogits_mag;  // per element: the scale of its float error (see kTolDlogits)
  Totals totals;
  double loss_atol = 0.0;  // bound on the float evaluation's error of the loss sum (see below)
};

// From the definition in double: p = exp(z - logsumexp(z)), the first maximum as the argmax.
// Error bounds of the float evaluation (xent_row<float> on the device), in units of u = 2^-24,
// first order, from: expf within 2 ulp (<= 4u relative) and logf within 1 ulp (CUDA C
// Programming Guide, "Mathematical Functions"), each float + - * rounding within u of its result.
//   s = sum_j exp(z_j - zmax): relative error <= (classes + 3) u   (classes - 1 additions + expf)
//   lse = log s: absolute error <= (classes + 3) u + 2u lse
//   a_j = (z_j - zmax) - lse: absolute error <= u (2 |z_j - zmax| + lse) + that of lse
//   p_j = exp(a_j): relative error <= a_j's absolute error + 4u
//                                  = u (2 |z_j - zmax| + 3 lse + classes + 7)
//   dz_j = (p_j - onehot) * (1/N, rounded): + 3u |p_j - onehot|
//   loss_i = lse - (z_label - zmax): absolute error <= u (3 lse + classes + 3 + |z_label - zmax|)
XentReference xent_cpu(const std::vector<float>& z, const std::vector<int64_t>& labels, int64_t N, int64_t classes) {
  XentReference r;
  r.dlogits.assign(size_t(N * classes), 0.0);
  r.dlogits_mag.assign(size_t(N * classes), 0.0);
  const double scale = 1.0 / double(N);
  const double u = kUnitRoundoff;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t label = labels[size_t(i)];
    if (label < 0 || label >= classes) {
      r.totals.bad += 1.0;
      continue;
    }
    const float* row = z.data() + i * classes;
    int64_t argmax = 0;
    for (int64_t j = 1; j < classes; ++j)
      if (row[j] > row[argmax]) argmax = j;
    const double zmax = row[argmax];
    double s = 0.0;
    for (int64_t j = 0; j < classes; ++j) s += std::exp(double(row[j]) - zmax);
    const double lse = std::log(s);  // logsumexp(z) - zmax, >= 0
    for (int64_t j = 0; j < classes; ++j) {
      const double d = double(row[j]) - zmax;
      const double p = std::exp(d - lse);
      const double onehot = j == label ? 1.0 : 0.0;
      const size_t k = size_t(i * classes + j);
      r.dlogits[k] = (p - onehot) * scale;
      r.dlogits_mag[k] = scale * (p * (2.0 * std::fabs(d) + 3.0 * lse + double(classes) + 7.0) + 3.0 * std::fabs(p - onehot));
    }
    const double d_label = double(row[label]) - zmax;
    r.totals.loss += lse - d_label;
    r.totals.correct += argmax == label ? 1.0 : 0.0;
    r.loss_atol += u * (3.0 * lse + double(classes) + 3.0 + std::fabs(d_label));
  }
  r.loss_atol *= 2.0;  // a factor 2 over the first-order bound
  return r;
}

// dlogits: the first-order bound above, times 2 (rtol = 2u against dlogits_mag); atol 1e-37 for
// probabilities in float's subnormal range (exp(-88) and below, rows with a logit 88 under the
// max), where a float keeps few significant bits: no gradient that small matters, and any real
// error (a missing 1/N, a wrong label) is larger by dozens of orders of magnitude.
constexpr dev::Tolerance kTolDlogits{1e-37, 2.0 * kUnitRoundoff};

// ---- version 1: one fused launch -----------------------------------------------------------

// Rows t, t + blockDim, ... per thread, in order; the totals by block_sum's fixed tree, then
// added to into[0..2] by thread 0 (in stream order: an epoch's accumulation is reproducible).
__global__ void __launch_bounds__(kFusedThreads)
    xent_fused_kernel(const float* __restrict__ logits, const IntArray labels, float* __restrict__ dlogits, int N,
                      int classes, float scale, double* __restrict__ into) {
  double loss = 0.0;
  long long correct = 0, bad = 0;
  for (int i = int(threadIdx.x); i < N; i += int(blockDim.x)) {
    const int64_t label = pyregnet::int_at(labels, i);
    float* const dz = dlogits + int64_t(i) * classes;
    if (label < 0 || label >= classes) {
      for (int j = 0; j < classes; ++j) dz[j] = 0.0f;
      ++bad;
      continue;
    }
    const pyregnet::XentRow row = pyregnet::xent_row(logits + int64_t(i) * classes, int64_t(classes), label, dz, scale);
    loss += row.loss;
    correct += row.correct;
  }
  loss = dev::block_sum(loss);
  correct = dev::block_sum(correct);
  bad = dev::block_sum(bad);
  if (threadIdx.x == 0) {
    into[0] += loss;
    into[1] += double(correct);
    into[2] += double(bad);
  }
}

void xent_v1(const float* logits, IntArray labels, float* dlogits, int64_t N, int64_t classes, double* into) {
  if (N == 0) return;
  xent_fused_kernel<<<1, kFusedThreads>>>(logits, labels, dlogits, int(N), int(classes), 1.0f / float(N), into);
  cudaCheckLaunch();
}

// ---- harness -------------------------------------------------------------------------------

// Each label array as the dtype a case asks for, on the device, viewed as an IntArray.
struct DeviceLabels {
  dev::DeviceBuffer<int32_t> i32;
  dev::DeviceBuffer<int64_t> i64;
  dev::DeviceBuffer<uint8_t> u8;
  IntArray view;
  DeviceLabels(const std::vector<int64_t>& labels, DType dtype)
      : i32(dtype == DType::i32 ? labels.size() : 0), i64(dtype == DType::i64 ? labels.size() : 0),
        u8(dtype == DType::u8 ? labels.size() : 0), view{nullptr, dtype} {
    if (dtype == DType::i32) {
      i32.upload(std::vector<int32_t>(labels.begin(), labels.end()));
      view.data = i32.get();
    } else if (dtype == DType::i64) {
      i64.upload(labels);
      view.data = i64.get();
    } else {
      std::vector<uint8_t> bytes(labels.size());
      for (size_t i = 0; i < labels.size(); ++i) bytes[i] = uint8_t(labels[i]);  // -1 wraps to 255
      u8.upload(bytes);
      view.data = u8.get();
    }
  }
  size_t bytes_per_label() const { return view.dtype == DType::i32 ? 4 : view.dtype == DType::i64 ? 8 : 1; }
};

struct Case {
  std::string name;
  int64_t N, classes;
  DType dtype;
  float logit_range;  // logits uniform in [-range, range], quantized to halves
  bool bad_labels;    // rows 5, 22, 39, ... get -1 and rows 7, 30, 53, ... get `classes`
  bool timed;
};

const char* dtype_name(DType t) { return t == DType::i32 ? "int32" : t == DType::i64 ? "int64" : "uint8"; }

// Reads a device double[3].
Totals read_totals(const double* device) {
  double h[3];
  cudaCheck(cudaMemcpy(h, device, sizeof h, cudaMemcpyDeviceToHost));
  Totals t;
  t.loss = h[0];
  t.correct = h[1];
  t.bad = h[2];
  return t;
}

// `expected` = start + calls x the reference's totals; counts exact (sums of whole numbers in
// double), the loss within calls x the bound (plus double rounding of the sum, negligible).
bool check_totals(const Totals& got, const Totals& expected, double loss_atol, const char* how) {
  std::printf("    totals (%s):\n", how);
  bool ok = dev::validate_scalar(got.loss, expected.loss, "  loss sum", {loss_atol, 1e-15});
  ok &= dev::validate_scalar(got.correct, expected.correct, "  correct", {0.0, 0.0});
  ok &= dev::validate_scalar(got.bad, expected.bad, "  bad labels", {0.0, 0.0});
  return ok;
}

int run_case(const Case& c, double bw) {
  const int64_t N = c.N, classes = c.classes;
  std::printf("\n== %s: N = %lld, classes = %lld, %s labels%s ==\n", c.name.c_str(), (long long)N,
              (long long)classes, dtype_name(c.dtype), c.bad_labels ? ", some out of range" : "");
  dev::Rng rng(dev::kSeed + uint64_t(N * 1009 + classes));
  std::vector<float> hz(size_t(N * classes));
  for (float& v : hz) v = std::round(rng.uniform(-c.logit_range, c.logit_range) * 2.0f) / 2.0f;
  std::vector<int64_t> labels(static_cast<size_t>(N));
  for (int64_t& l : labels) l = int64_t(rng.next() % uint64_t(classes));
  if (c.bad_labels) {
    for (int64_t i = 5; i < N; i += 17) labels[size_t(i)] = -1;
    for (int64_t i = 7; i < N; i += 23) labels[size_t(i)] = classes;
  }
  if (c.dtype == DType::u8)  // uint8 cannot hold -1 or a large class: such labels become 255
    for (int64_t& l : labels) l = (l < 0 || l > 255) ? 255 : l;
  const XentReference ref = xent_cpu(hz, labels, N, classes);
  std::printf("  reference: loss sum %.6f, correct %.0f, bad labels %.0f (loss tolerance %.2e)\n", ref.totals.loss,
              ref.totals.correct, ref.totals.bad, ref.loss_atol);

  const size_t n_elems = size_t(N * classes);
  dev::DeviceBuffer<float> logits(hz), dlogits(n_elems);
  const DeviceLabels dl(labels, c.dtype);
  dev::DeviceBuffer<double> into(3);
  const std::vector<double> start = {0.25, 1.0, 2.0};  // nonzero: "adds to into" must not overwrite
  const int kCalls = 3;
  Totals expected;
  expected.loss = start[0] + kCalls * ref.totals.loss;
  expected.correct = start[1] + kCalls * ref.totals.correct;
  expected.bad = start[2] + kCalls * ref.totals.bad;

  const double bytes = 4.0 * 2.0 * double(n_elems) + double(dl.bytes_per_label()) * double(N);
  const int repeats = 200, back_to_back = 1000;
  int failures = 0;
  const auto check_dlogits = [&](const char* what) {
    return dev::validate_result(dlogits.get(), ref.dlogits.data(), n_elems, what, kTolDlogits, ref.dlogits_mag.data());
  };
  const auto report = [&](const char* what, const dev::Timing& t, double host_us) {
    dev::print_bytes_roofline(what, t, bytes, bw);
    std::printf("      host wall time per call, %d back to back: %.2f us\n", back_to_back, host_us);
  };

  {
    std::printf("  v1 fused single block (into only)\n");
    bool ok = true;
    into.upload(start);
    for (int call = 0; call < kCalls; ++call) {
      dlogits.poison();
      xent_v1(logits.get(), dl.view, dlogits.get(), N, classes, into.get());
      cudaCheck(cudaDeviceSynchronize());
      ok &= check_dlogits("dlogits");
    }
    ok &= check_totals(read_totals(into.get()), expected, kCalls * ref.loss_atol, "into, 3 calls");
    if (!ok) {
      ++failures;
      std::printf("  v1: WRONG, not timed\n");
    } else if (c.timed) {
      const auto call = [&] { xent_v1(logits.get(), dl.view, dlogits.get(), N, classes, into.get()); };
      report("v1 into", dev::benchmark_kernel(repeats, call), dev::host_us_per_call(back_to_back, call));
    }
  }
#ifdef WITH_PACKAGE
  {
    using pyregnet::cuda::Stream;
    const Stream st = nullptr;  // the legacy default stream, where the events are recorded
    std::printf("  v2 package (row kernel + totals kernel)\n");
    // into = nullptr: the totals returned; `into` must stay as it was.
    into.upload(start);
    dlogits.poison();
    const pyregnet::XentTotals returned =
        pyregnet::cuda::softmax_cross_entropy<float>(logits.get(), dl.view, dlogits.get(), N, classes, nullptr, st);
    cudaCheck(cudaDeviceSynchronize());
    bool ok = check_dlogits("dlogits (into = null)");
    Totals got;
    got.loss = returned.loss_sum;
    got.correct = double(returned.correct);
    got.bad = double(returned.bad_labels);
    ok &= check_totals(got, ref.totals, ref.loss_atol, "returned, into = null");
    Totals untouched;
    untouched.loss = start[0];
    untouched.correct = start[1];
    untouched.bad = start[2];
    ok &= check_totals(read_totals(into.get()), untouched, 0.0, "device into left alone");
    // into set: added on the device over 3 calls; each call returns zeros.
    bool returned_zeros = true;
    for (int call = 0; call < kCalls; ++call) {
      dlogits.poison();
      const pyregnet::XentTotals r =
          pyregnet::cuda::softmax_cross_entropy<float>(logits.get(), dl.view, dlogits.get(), N, classes, into.get(), st);
      cudaCheck(cudaDeviceSynchronize());
      returned_zeros &= r.loss_sum == 0.0 && r.correct == 0 && r.bad_labels == 0;
      ok &= check_dlogits("dlogits (into)");
    }
    std::printf("    returned totals with into set: %s\n", returned_zeros ? "zeros, ok" : "NOT zeros, FAIL");
    ok &= returned_zeros;
    ok &= check_totals(read_totals(into.get()), expected, kCalls * ref.loss_atol, "into, 3 calls");
    if (!ok) {
      ++failures;
      std::printf("  v2: WRONG, not timed\n");
    } else if (c.timed) {
      const auto call_into = [&] {
        pyregnet::cuda::softmax_cross_entropy<float>(logits.get(), dl.view, dlogits.get(), N, classes, into.get(), st);
      };
      const auto call_returning = [&] {
        pyregnet::cuda::softmax_cross_entropy<float>(logits.get(), dl.view, dlogits.get(), N, classes, nullptr, st);
      };
      report("v2 into (no sync)", dev::benchmark_kernel(repeats, call_into),
             dev::host_us_per_call(back_to_back, call_into));
      report("v2 into = null (copy + sync)", dev::benchmark_kernel(repeats, call_returning),
             dev::host_us_per_call(back_to_back, call_returning));
    }
  }
#endif
  return failures;
}

}  // namespace

int main() {
  return dev::harness_main([&]() -> int {
    const double bw = dev::measured_copy_bandwidth();
    const std::vector<Case> cases = {
        {"training batch", 64, 10, DType::i32, 4.0f, true, true},
        {"eval batch", 1000, 10, DType::i32, 4.0f, true, true},
        {"an epoch's last batch", 16, 10, DType::i32, 4.0f, true, true},
        {"empty batch", 0, 10, DType::i32, 4.0f, false, false},
        {"one row", 1, 10, DType::i32, 4.0f, false, false},
        {"one class (p = 1, dlogits 0)", 5, 1, DType::i32, 4.0f, false, false},
        {"past one 1024-thread block", 1025, 10, DType::i64, 4.0f, true, false},
        {"1000 classes", 7, 1000, DType::i64, 4.0f, true, false},
        {"uint8 labels (255 = bad)", 33, 10, DType::u8, 4.0f, true, false},
        {"logits +-100 (needs the max shift)", 64, 10, DType::i32, 100.0f, false, false},
    };
    int failures = 0;
    for (const Case& c : cases) failures += run_case(c, bw);
#ifndef WITH_PACKAGE
    std::printf("\n(v2, the package's softmax_cross_entropy, not built: compile with -DWITH_PACKAGE and "
                "csrc/cuda/softmax_xent.cu)\n");
#endif
    return failures;
  });
}
