// Whole-array reductions over a weight array and the unfused penalty pass, on the GPU:
//   penalty           sum_{i < n} l1 |w[i]| + l2 w[i]^2, in double (csrc/cuda/reduce.cu)
//   sparsity_count    the number of i < n with |w[i]| <= threshold, compared in double
//                     (a float threshold would round) (csrc/cuda/reduce.cu)
//   penalty_gradient  g[i] += l1 sign0(w[i]) + 2 l2 w[i] for i < n_penalized, in float, and with
//                     with_penalty the penalty value of w[:n_penalized] from the same pass
//                     (csrc/cuda/update.cu: the unfused pass the fused Adam update is measured against)
// The values come back two ways (csrc/core/backend.h): into = nullptr returns them (the op
// synchronizes to read them); into = a device double adds them there without synchronizing (the
// trainer's captured step) and returns 0. Both are validated, the second over 3 calls, and two
// runs of each must give the same bits (sum_over's two-pass scheme: a grid that depends only on
// n, fixed-order partial sums, no atomics).
//
// Every array is followed by 234 elements the op must not touch (the model's biases, after its
// 315,488 kernel weights in the flat parameter buffer): w's are NaN, so a penalty or gradient
// that read past n would turn NaN; g's are checked unchanged. For sparsity_count they are made
// 0 (which would be counted) before its calls.
//
// Cases: n = 315,488 (the model's kernel weights), 16M and 64M (timed); n = 0, 1, 7 (validated
// only). Weights uniform in [-1, 1] with exact zeros, negative zeros, a subnormal, and values
// planted on both sides of the thresholds (float(1e-3) lies above the double 1e-3 and must not be
// counted at threshold 1e-3; float(1e-4) lies below 1e-4 and must be); thresholds 0, 1e-4, 1e-3
// and +inf. Penalties far above the paper's lambdas (l1 = 0.02, l2 = 0.01, l1 != l2) so that a
// dropped or swapped term shows far above rounding.
//
// One version, the package (linked with -DWITH_PACKAGE): its passes are already the plain form
// (one grid-stride pass of sum_over / for_each), so there is no simpler version of our own to
// put beside it. Built without the package the harness has nothing to validate and says FAILED.
//
// Memory bound: penalty and sparsity_count read 4 bytes per element, penalty_gradient 12 (read w
// and g, write g); the per-block partials (at most 1024 doubles) are left out. Timed with events
// (L2 flushed) against the bytes roofline at the measured copy bandwidth, and as host wall time
// per call back to back (the into = nullptr forms copy the value back and synchronize per call).
//
// Build and run (see Makefile):  make reduce && /tmp/pyregnet-dev-cuda/reduce
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "common.cuh"
#ifdef WITH_PACKAGE
#include "core/backend.h"
#endif

namespace {
// Everything below needs the package (the only version); a build without it only says so.
#ifdef WITH_PACKAGE

using pyregnet::cuda::Stream;

// Elements after the n the op is given (the model's 234 biases), which it must leave alone.
constexpr size_t kTail = 234;
constexpr double kL1 = 0.02, kL2 = 0.01;
const std::vector<double> kThresholds = {0.0, 1e-4, 1e-3, INFINITY};
constexpr double kTimedThreshold = 1e-4;  // the threshold of the results' sparsity figures
constexpr double kUnitRoundoff = 0x1p-24;  // u of float: round to nearest is within u |x|

// ---- tolerances ----------------------------------------------------------------------------

// Penalty value (penalty, and penalty_gradient's): a double sum of n positive terms, each from a
// float weight. A term l1 |x| + l2 x x (x = double(w), evaluated as (l2 x) x) carries at most 4
// roundings of double (u_d = 2^-53), 3 u_d of the term as all its parts are positive, fewer where
// the device contracts into FMAs. The device sums each thread's grid-stride share serially
// (sum_over: at most 1024 blocks x 256 threads, so at n = 64M 256 terms per thread), then two
// 5-level warp trees per block and a 10-level tree over the 1024 partials: a depth of at most
// 255 + 10 + 10. All terms positive, so the relative error is below (3 + 275) u_d = 3.1e-14 of
// the sum; the reference (compensated sum, terms in the same order of operations) is within
// ~4 u_d. rtol 1e-13 leaves 3x; a single dropped term of typical size (~1/n of the sum) is
// >= 1.5e-8 of it at n = 64M.
// The into = 3-call totals add 3 more roundings of the total (3 u_d): within the same rtol.
// (On the CPU the package's CPU backend, whose lane and chunk sums are deeper, came within
// 4.3e-15 of this reference at 64M: 0.043 of the tolerance.)
constexpr dev::Tolerance kTolPenalty{0.0, 1e-13};

// Gradient: g + (float(l1) sign0(w) + (2 float(l2)) w) in float, against the same formula in
// double with the double l1, l2. With A = l1 sign0(w), B = 2 l2 w and magnitude m = |g| + |A| +
// |B|: float(l1) is within u of l1 (A then exact: sign0 is -1, 0 or 1), float(l2) within u and the
// product 2 l2 w one rounding (2u |B|), the inner sum one (u (|A| + |B|)), the outer sum one
// (u m): at most 3u |A| + 4u |B| + u |g| <= 4u m to first order (fewer roundings where the device
// contracts into an FMA). Taken as 5u m to cover the second-order terms. Checked on the CPU with
// this data: the package's CPU backend (the same float formula) uses at most 0.34 of it (with and
// without FMA contraction); a dropped L1 term is off by >= 4.7e5 times the tolerance, a dropped
// factor 2 on the L2 term by >= 2.7e3 times wherever |w| > 0.01.
constexpr dev::Tolerance kTolGradient{0.0, 5.0 * kUnitRoundoff};

constexpr dev::Tolerance kExact{0.0, 0.0};

// ---- CPU reference -------------------------------------------------------------------------

// From the rule in words rather than with math/elementwise.h, so that the shared math is checked
// too; all in double.
double penalty_term_reference(float w) {
  const double x = double(w);
  return kL1 * std::fabs(x) + kL2 * x * x;
}
double sign0_reference(float w) { return w > 0.0f ? 1.0 : (w < 0.0f ? -1.0 : 0.0); }

struct Reference {
  double penalty;                 // over w[:n]
  std::vector<int64_t> counts;    // sparsity count at each of kThresholds
  std::vector<double> g_after;    // g[:n] + the penalty gradient, in double
  std::vector<double> magnitude;  // |g| + |l1 sign0(w)| + |2 l2 w| (kTolGradient's scale)
};

Reference reference(const std::vector<float>& w, const std::vector<float>& g, size_t n) {
  Reference ref{0.0, std::vector<int64_t>(kThresholds.size(), 0), std::vector<double>(n), std::vector<double>(n)};
  dev::CompensatedSum sum;
  for (size_t i = 0; i < n; ++i) {
    sum.add(penalty_term_reference(w[i]));
    for (size_t t = 0; t < kThresholds.size(); ++t) ref.counts[t] += std::fabs(double(w[i])) <= kThresholds[t] ? 1 : 0;
    const double a = kL1 * sign0_reference(w[i]), b = 2.0 * kL2 * double(w[i]);
    ref.g_after[i] = double(g[i]) + a + b;
    ref.magnitude[i] = std::fabs(double(g[i])) + std::fabs(a) + std::fabs(b);
  }
  ref.penalty = sum.value();
  return ref;
}

// ---- data ----------------------------------------------------------------------------------

// w: n weights uniform in [-1, 1] with planted values (the first of each at a varying position,
// so that n = 7 holds one of each), then kTail NaNs. g: n + kTail gradients in [-0.1, 0.1], the
// size of the penalty gradient, so that a wrong gradient shows against it.
std::vector<float> make_weights(size_t n, uint64_t seed) {
  std::vector<float> w = dev::random_floats(n, -1.0f, 1.0f, seed);
  const auto plant = [&](size_t first, size_t step, float value) {
    for (size_t i = first; i < n; i += step) w[i] = value;
  };
  const float t3 = 1e-3f, t4 = 1e-4f;  // float(1e-3) > 1e-3; float(1e-4) < 1e-4
  plant(0, 97, 0.0f);
  plant(1, 89, -0.0f);
  plant(2, 101, t3);                             // above 1e-3 in double: not counted at 1e-3
  plant(3, 103, -std::nextafter(t3, 0.0f));      // below 1e-3: counted
  plant(4, 107, -t4);                            // below 1e-4: counted at 1e-4
  plant(5, 109, std::nextafter(t4, 1.0f));       // above 1e-4: not counted at 1e-4
  plant(6, 113, 1e-40f);                         // subnormal: counted at 1e-4, not at 0
  w.resize(n + kTail, NAN);
  return w;
}

// ---- checks --------------------------------------------------------------------------------

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

bool report(bool ok, const char* what) {
  std::printf("    %-52s %s\n", what, ok ? "ok" : "FAIL");
  return ok;
}

double read_double(const double* device_ptr) {
  double v = 0.0;
  cudaCheck(cudaMemcpy(&v, device_ptr, sizeof v, cudaMemcpyDeviceToHost));
  return v;
}

void write_double(double* device_ptr, double v) {
  cudaCheck(cudaMemcpy(device_ptr, &v, sizeof v, cudaMemcpyHostToDevice));
}

struct Case {
  std::string name;
  int64_t n;
  bool timed;
  int repeats;
};

constexpr double kIntoStart = 0.25;  // nonzero: "adds to into" must not overwrite it
constexpr int kCalls = 3;            // calls accumulated into `into`
constexpr int kBackToBack = 200;     // calls for the host wall time per call

int run_case(const Case& c, double bw) {
  const int64_t n = c.n;
  const size_t count = size_t(n);
  std::printf("\n== %s: n = %lld (+ %zu elements past n that must stay untouched) ==\n", c.name.c_str(),
              (long long)n, kTail);
  const std::vector<float> hw = make_weights(count, dev::kSeed + count);
  const std::vector<float> hg = dev::random_floats(count + kTail, -0.1f, 0.1f, dev::kSeed + count + 1);
  const Reference ref = reference(hw, hg, count);
  std::printf("  reference: penalty %.17g; sparsity counts", ref.penalty);
  for (size_t t = 0; t < kThresholds.size(); ++t)
    std::printf(" %lld (<= %g)", (long long)ref.counts[t], kThresholds[t]);
  std::printf("\n");

  dev::DeviceBuffer<float> w(hw), g(count + kTail);
  dev::DeviceBuffer<double> into(1);
  const std::vector<float> g_tail(hg.begin() + std::ptrdiff_t(count), hg.end());
  const Stream st = nullptr;  // the legacy default stream, where the events are recorded
  int failures = 0;

  // ---- penalty ----
  {
    std::printf("  penalty (reduce.cu)\n");
    bool ok = true;
    write_double(into.get(), kIntoStart);
    const double first = pyregnet::cuda::penalty<float>(w.get(), n, kL1, kL2, nullptr, st);
    ok &= dev::validate_scalar(first, ref.penalty, "returned (into = null)", kTolPenalty);
    ok &= dev::validate_scalar(read_double(into.get()), kIntoStart, "into left alone", kExact);
    const double second = pyregnet::cuda::penalty<float>(w.get(), n, kL1, kL2, nullptr, st);
    ok &= report(same_bits(first, second), "second call: the same bits");
    // into: one call from 0 gives the returned value's bits (0 + s = s), then kCalls from
    // kIntoStart, twice, the same bits both times.
    write_double(into.get(), 0.0);
    ok &= report(pyregnet::cuda::penalty<float>(w.get(), n, kL1, kL2, into.get(), st) == 0.0, "returns 0 with into");
    cudaCheck(cudaDeviceSynchronize());
    ok &= report(same_bits(read_double(into.get()), first), "into from 0, one call: the returned value's bits");
    double totals[2] = {0.0, 0.0};
    for (double& total : totals) {
      write_double(into.get(), kIntoStart);
      for (int call = 0; call < kCalls; ++call) pyregnet::cuda::penalty<float>(w.get(), n, kL1, kL2, into.get(), st);
      cudaCheck(cudaDeviceSynchronize());
      total = read_double(into.get());
    }
    ok &= dev::validate_scalar(totals[0], kIntoStart + kCalls * ref.penalty, "into, 3 calls", kTolPenalty);
    ok &= report(same_bits(totals[0], totals[1]), "into, 3 calls again: the same bits");
    if (!ok) {
      ++failures;
      std::printf("  penalty: WRONG, not timed\n");
    } else if (c.timed) {
      const double bytes = 4.0 * double(n);
      const auto call_into = [&] { pyregnet::cuda::penalty<float>(w.get(), n, kL1, kL2, into.get(), st); };
      const auto call_returning = [&] { pyregnet::cuda::penalty<float>(w.get(), n, kL1, kL2, nullptr, st); };
      dev::print_bytes_roofline("penalty into (no sync)", dev::benchmark_kernel(c.repeats, call_into), bytes, bw);
      std::printf("      host wall time per call, %d back to back: %.2f us\n", kBackToBack,
                  dev::host_us_per_call(kBackToBack, call_into));
      dev::print_bytes_roofline("penalty into = null (copy + sync)", dev::benchmark_kernel(c.repeats, call_returning),
                                bytes, bw);
      std::printf("      host wall time per call, %d back to back: %.2f us\n", kBackToBack,
                  dev::host_us_per_call(kBackToBack, call_returning));
    }
  }

  // ---- sparsity_count ----
  {
    std::printf("  sparsity_count (reduce.cu)\n");
    // The tail as zeros, which a count that read past n would include.
    w.upload(std::vector<float>(kTail, 0.0f), count);
    bool ok = true;
    for (size_t t = 0; t < kThresholds.size(); ++t) {
      const int64_t got = pyregnet::cuda::sparsity_count<float>(w.get(), n, kThresholds[t], st);
      const int64_t again = pyregnet::cuda::sparsity_count<float>(w.get(), n, kThresholds[t], st);
      const bool good = got == ref.counts[t] && again == got;
      std::printf("    threshold %-8g got %lld, again %lld, ref %lld  %s\n", kThresholds[t], (long long)got,
                  (long long)again, (long long)ref.counts[t], good ? "ok" : "FAIL");
      ok &= good;
    }
    if (!ok) {
      ++failures;
      std::printf("  sparsity_count: WRONG, not timed\n");
    } else if (c.timed) {
      const auto call = [&] { pyregnet::cuda::sparsity_count<float>(w.get(), n, kTimedThreshold, st); };
      dev::print_bytes_roofline("sparsity_count (copy + sync)", dev::benchmark_kernel(c.repeats, call), 4.0 * double(n),
                                bw);
      std::printf("      host wall time per call, %d back to back: %.2f us\n", kBackToBack,
                  dev::host_us_per_call(kBackToBack, call));
    }
    w.upload(std::vector<float>(kTail, NAN), count);  // back to NaN for the passes below
  }

  // ---- penalty_gradient ----
  {
    std::printf("  penalty_gradient (update.cu), n_penalized = n\n");
    // One call from the initial g; checks g (and its untouched tail) and returns the value.
    const auto run = [&](bool with_penalty, double* into_ptr, const char* label, bool* ok) {
      g.upload(hg);
      const double value =
          pyregnet::cuda::penalty_gradient<float>(w.get(), g.get(), n, kL1, kL2, with_penalty, into_ptr, st);
      cudaCheck(cudaDeviceSynchronize());
      const std::string g_name = std::string("g (") + label + ")";
      *ok &= dev::validate_result(g.get(), ref.g_after.data(), count, g_name.c_str(), kTolGradient,
                                  ref.magnitude.data());
      *ok &= dev::validate_result(g.get() + count, g_tail.data(), kTail, "g past n_penalized", kExact);
      return value;
    };
    bool ok = true;
    // Without the value: nothing returned, into untouched.
    write_double(into.get(), kIntoStart);
    const double none = run(false, into.get(), "no value", &ok);
    ok &= report(none == 0.0, "no value: returns 0");
    ok &= dev::validate_scalar(read_double(into.get()), kIntoStart, "no value: into left alone", kExact);
    // With the value, returned: twice, the same bits (g too).
    const double first = run(true, nullptr, "value returned", &ok);
    const std::vector<float> g_first = g.download();
    ok &= dev::validate_scalar(first, ref.penalty, "returned (into = null)", kTolPenalty);
    ok &= dev::validate_scalar(read_double(into.get()), kIntoStart, "into left alone", kExact);
    const double second = run(true, nullptr, "value returned, again", &ok);
    ok &= report(same_bits(first, second), "second call: the same bits");
    const std::vector<float> g_second = g.download();
    ok &= report(std::memcmp(g_first.data(), g_second.data(), g_first.size() * sizeof(float)) == 0,
                 "second call: g the same bits");
    // With into: kCalls calls (g restored before each), each returning 0, twice.
    double totals[2] = {0.0, 0.0};
    for (double& total : totals) {
      write_double(into.get(), kIntoStart);
      bool zeros = true;
      for (int call = 0; call < kCalls; ++call) {
        const double returned = run(true, into.get(), "value into", &ok);
        zeros &= returned == 0.0;
      }
      ok &= report(zeros, "returns 0 with into");
      total = read_double(into.get());
    }
    ok &= dev::validate_scalar(totals[0], kIntoStart + kCalls * ref.penalty, "into, 3 calls", kTolPenalty);
    ok &= report(same_bits(totals[0], totals[1]), "into, 3 calls again: the same bits");
    if (!ok) {
      ++failures;
      std::printf("  penalty_gradient: WRONG, not timed\n");
    } else if (c.timed) {
      // Each timed call adds the gradient to g again: the same work on values that stay finite.
      const double bytes = 12.0 * double(n);
      const auto call_value = [&] {
        pyregnet::cuda::penalty_gradient<float>(w.get(), g.get(), n, kL1, kL2, true, into.get(), st);
      };
      const auto call_plain = [&] {
        pyregnet::cuda::penalty_gradient<float>(w.get(), g.get(), n, kL1, kL2, false, nullptr, st);
      };
      dev::print_bytes_roofline("gradient + value into (no sync)", dev::benchmark_kernel(c.repeats, call_value), bytes,
                                bw);
      std::printf("      host wall time per call, %d back to back: %.2f us\n", kBackToBack,
                  dev::host_us_per_call(kBackToBack, call_value));
      dev::print_bytes_roofline("gradient, no value", dev::benchmark_kernel(c.repeats, call_plain), bytes, bw);
      std::printf("      host wall time per call, %d back to back: %.2f us\n", kBackToBack,
                  dev::host_us_per_call(kBackToBack, call_plain));
    }
  }
  return failures;
}
#endif  // WITH_PACKAGE

}  // namespace

int main() {
  return dev::harness_main([&]() -> int {
#ifndef WITH_PACKAGE
    // The only version is the package's: without it nothing would be validated, and a harness
    // that validates nothing must not report success.
    std::printf("FAILED: built without the package (-DWITH_PACKAGE and csrc/cuda/reduce.cu + update.cu): "
                "no version to run\n");
    return 1;
#else
    const double bw = dev::measured_copy_bandwidth();
    const std::vector<Case> cases = {
        {"the model's kernel weights", 315488, true, 200},
        {"16M", int64_t(16) << 20, true, 50},
        {"64M", int64_t(64) << 20, true, 30},
        {"n = 0", 0, false, 0},
        {"n = 1", 1, false, 0},
        {"n = 7", 7, false, 0},
    };
    int failures = 0;
    for (const Case& c : cases) failures += run_case(c, bw);
    return failures;
#endif
  });
}
