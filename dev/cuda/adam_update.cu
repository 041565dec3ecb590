// The fused penalty + Adam update over one flat parameter buffer (docs/design.md §2): elements
// [0, n_penalized) are kernel weights and get the L1/L2 penalty gradient, the rest (the biases,
// at the end of the buffer) do not; optionally the penalty value of the weights before the step,
// summed in the same pass (the reported loss includes it).
//
// The element math is csrc/math/elementwise.h (adam_element, penalty_value, adam_alpha), called
// here on the host and on the device alike; nothing below restates a formula.
//
// Versions:
//   1  scalar loads and stores, one element per thread per grid-stride iteration
//   2  16-byte loads and stores (float4) over the aligned bulk, a scalar tail; the penalized
//      boundary is decided per lane (element i is penalized iff i < n_penalized), so it may fall
//      inside a vector
//   3  the package: pyregnet::cuda::adam_update<float> (csrc/cuda/update.cu); built with
//      -DWITH_PACKAGE and csrc/cuda/update.cu linked in (make adam_update)
// each with and without the penalty value, a deterministic two-pass reduction in double.
//
// Memory bound: 7 streams of n floats (read w, g, m, v; write w, m, v) = 28 bytes per element,
// put against the measured device-to-device copy bandwidth.
//
// Build and run (see Makefile):  make adam_update && /tmp/pyregnet-dev-cuda/adam_update
// Without the package:           make adam_update_standalone
#include <cstdio>
#include <exception>
#include <vector>

#include "common.cuh"
#include "math/elementwise.h"
#include "math/int_array.h"
#ifdef WITH_PACKAGE
#include "core/backend.h"
#endif

using pyregnet::AdamStep;
using pyregnet::Counter;

namespace {

constexpr int kThreads = 256;
// Adam step t of the test: > 1 so that the bias corrections differ from the first step's.
constexpr int64_t kStep = 5;

// The brief's layout: 234 biases after the kernels. Buffers too small for that keep half of
// their elements unpenalized, so the boundary is still inside the buffer.
int64_t penalized_count(int64_t n) { return n - std::min<int64_t>(234, n / 2); }

// ---- CPU reference -------------------------------------------------------------------------

struct State {
  std::vector<float> w, g, m, v;
};

// Data that exercise every branch: weights in [-1, 1] with every 97th exactly 0 (sign0(0) = 0:
// L1 must leave an exact zero's gradient alone), gradients of the size of the penalty gradient so
// that applying the penalty to a bias (or not to a weight) shows far above rounding, moments in
// the ranges a trained network has.
State make_state(int64_t n, uint64_t seed) {
  State st{dev::random_floats(size_t(n), -1.0f, 1.0f, seed), dev::random_floats(size_t(n), -0.1f, 0.1f, seed + 1),
           dev::random_floats(size_t(n), -0.05f, 0.05f, seed + 2), dev::random_floats(size_t(n), 0.0f, 0.01f, seed + 3)};
  for (int64_t i = 0; i < n; i += 97) st.w[size_t(i)] = 0.0f;
  return st;
}

struct Reference {
  State after;               // w, m, v after the step (g unchanged)
  double penalty;            // sum of penalty_value(w before) over [0, n_penalized)
};

// adam_element<float> on the host, element by element: the exact float formula the kernels run
// (the device contracts a*b+c into FMAs, the host compiler does not: hence a tolerance of a few
// ulp, not zero). Double-checked: the same step in float64 from the same inputs must agree with
// the float reference to float precision, else the reference itself is not trustworthy.
Reference adam_update_cpu(const State& init, int64_t n, int64_t n_penalized, const AdamStep& s, bool* sane) {
  Reference ref{init, 0.0};
  dev::CompensatedSum penalty;
  const float alpha = float(pyregnet::adam_alpha(s, kStep));
  const double alpha64 = pyregnet::adam_alpha(s, kStep);
  double max_dw = 0, max_dm = 0, max_dv = 0;
  for (int64_t i = 0; i < n; ++i) {
    const size_t k = size_t(i);
    const bool penalized = i < n_penalized;
    if (penalized) penalty.add(pyregnet::penalty_value(init.w[k], s.penalty.l1, s.penalty.l2));
    pyregnet::adam_element(ref.after.w[k], init.g[k], ref.after.m[k], ref.after.v[k], penalized, s, alpha);
    double w = init.w[k], m = init.m[k], v = init.v[k];
    pyregnet::adam_element(w, double(init.g[k]), m, v, penalized, s, alpha64);
    max_dw = std::max(max_dw, std::fabs(w - ref.after.w[k]) / std::max(1.0, std::fabs(w)));
    max_dm = std::max(max_dm, std::fabs(m - ref.after.m[k]));
    max_dv = std::max(max_dv, std::fabs(v - ref.after.v[k]));
  }
  ref.penalty = penalty.value();
  // float carries 24 bits: a correct float step is within a few 1e-7 (relative) of float64.
  *sane = max_dw < 1e-5 && max_dm < 1e-6 && max_dv < 1e-7;
  std::printf("  CPU reference: float vs float64 step: max |dw|/max(1,|w|) %.2e, max |dm| %.2e, max |dv| %.2e  %s\n",
              max_dw, max_dm, max_dv, *sane ? "ok" : "FAIL");
  return ref;
}

// ---- kernels -------------------------------------------------------------------------------

// One element: its penalty term before the step (0 for a bias or when not wanted), then the step.
template <bool kWithPenalty>
__device__ __forceinline__ double update_element(float& w, float g, float& m, float& v, bool penalized,
                                                 const AdamStep& s, float alpha) {
  const double term = (kWithPenalty && penalized) ? pyregnet::penalty_value(w, s.penalty.l1, s.penalty.l2) : 0.0;
  pyregnet::adam_element(w, g, m, v, penalized, s, alpha);
  return term;
}

// alpha_t once per thread: the step count may live in device memory (a captured CUDA graph
// advances it on every replay), so the host cannot fold it into a launch argument.
__device__ __forceinline__ float thread_alpha(const AdamStep& s) {
  return float(pyregnet::adam_alpha(s, pyregnet::read_counter(s.step)));
}

// Version 1: scalar loads, one element per thread per grid-stride iteration.
template <bool kWithPenalty>
__global__ void __launch_bounds__(kThreads)
    adam_scalar_kernel(float* __restrict__ w, const float* __restrict__ g, float* __restrict__ m,
                       float* __restrict__ v, int64_t n, int64_t n_penalized, AdamStep s,
                       double* __restrict__ block_partials) {
  const float alpha = thread_alpha(s);
  double penalty = 0.0;
  // Not unrolled: the IEEE division and square root have out-of-line slow paths, and unrolled
  // bodies keep values live across those calls (the package saw spills that way).
#pragma unroll 1
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float wi = w[i], mi = m[i], vi = v[i];
    penalty += update_element<kWithPenalty>(wi, g[i], mi, vi, i < n_penalized, s, alpha);
    w[i] = wi;
    m[i] = mi;
    v[i] = vi;
  }
  if (kWithPenalty) {
    penalty = dev::block_sum(penalty);
    if (threadIdx.x == 0) block_partials[blockIdx.x] = penalty;
  }
}

// Version 2: float4 over the first 4 * n_vec elements (all four pointers 16-byte aligned, checked
// by the launcher, which passes n_vec = 0 otherwise), then the n - 4 * n_vec tail elements one by
// one. One 16-byte load per stream per iteration puts 4x the bytes in flight per thread that
// version 1 does, which is what a memory-bound kernel needs to approach copy bandwidth.
template <bool kWithPenalty>
__global__ void __launch_bounds__(kThreads)
    adam_vec4_kernel(float* __restrict__ w, const float* __restrict__ g, float* __restrict__ m,
                     float* __restrict__ v, int64_t n_vec, int64_t n, int64_t n_penalized, AdamStep s,
                     double* __restrict__ block_partials) {
  const float alpha = thread_alpha(s);
  const int64_t start = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  float4* const w4 = reinterpret_cast<float4*>(w);
  const float4* const g4 = reinterpret_cast<const float4*>(g);
  float4* const m4 = reinterpret_cast<float4*>(m);
  float4* const v4 = reinterpret_cast<float4*>(v);
  double penalty = 0.0;
#pragma unroll 1
  for (int64_t q = start; q < n_vec; q += stride) {
    float4 wq = w4[q], mq = m4[q], vq = v4[q];
    const float4 gq = g4[q];
    const int64_t i = 4 * q;  // first element of the vector; lane j is element i + j
    penalty += update_element<kWithPenalty>(wq.x, gq.x, mq.x, vq.x, i + 0 < n_penalized, s, alpha);
    penalty += update_element<kWithPenalty>(wq.y, gq.y, mq.y, vq.y, i + 1 < n_penalized, s, alpha);
    penalty += update_element<kWithPenalty>(wq.z, gq.z, mq.z, vq.z, i + 2 < n_penalized, s, alpha);
    penalty += update_element<kWithPenalty>(wq.w, gq.w, mq.w, vq.w, i + 3 < n_penalized, s, alpha);
    w4[q] = wq;
    m4[q] = mq;
    v4[q] = vq;
  }
  // Tail: fewer than 4 elements when aligned (all n when not), spread over the first threads.
#pragma unroll 1
  for (int64_t i = 4 * n_vec + start; i < n; i += stride) {
    float wi = w[i], mi = m[i], vi = v[i];
    penalty += update_element<kWithPenalty>(wi, g[i], mi, vi, i < n_penalized, s, alpha);
    w[i] = wi;
    m[i] = mi;
    v[i] = vi;
  }
  if (kWithPenalty) {
    penalty = dev::block_sum(penalty);
    if (threadIdx.x == 0) block_partials[blockIdx.x] = penalty;
  }
}

// ---- launchers -----------------------------------------------------------------------------

struct Problem {
  float* w;
  const float* g;
  float* m;
  float* v;
  int64_t n, n_penalized;
  AdamStep s;
};

// Every launcher follows the package's `totals` convention: with_penalty adds the penalty value
// to *totals (device memory) without synchronizing; without it *totals is left alone.
// `partials` holds one double per block of the first pass (grid_for's cap).
void adam_v1(const Problem& p, bool with_penalty, double* totals, double* partials, cudaStream_t st) {
  if (p.n == 0) return;
  const unsigned blocks = dev::grid_for(p.n, kThreads);
  if (with_penalty) {
    adam_scalar_kernel<true><<<blocks, kThreads, 0, st>>>(p.w, p.g, p.m, p.v, p.n, p.n_penalized, p.s, partials);
    cudaCheckLaunch();
    dev::add_partial_sums_kernel<<<1, dev::kFinalSumThreads, 0, st>>>(partials, int(blocks), totals);
    cudaCheckLaunch();
  } else {
    adam_scalar_kernel<false><<<blocks, kThreads, 0, st>>>(p.w, p.g, p.m, p.v, p.n, p.n_penalized, p.s, nullptr);
    cudaCheckLaunch();
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void adam_v2(const Problem& p, bool with_penalty, double* totals, double* partials, cudaStream_t st) {
  if (p.n == 0) return;
  const bool vectorizable = aligned16(p.w) && aligned16(p.g) && aligned16(p.m) && aligned16(p.v);
  const int64_t n_vec = vectorizable ? p.n / 4 : 0;
  const unsigned blocks = dev::grid_for(std::max<int64_t>(n_vec, p.n - 4 * n_vec), kThreads);
  if (with_penalty) {
    adam_vec4_kernel<true><<<blocks, kThreads, 0, st>>>(p.w, p.g, p.m, p.v, n_vec, p.n, p.n_penalized, p.s, partials);
    cudaCheckLaunch();
    dev::add_partial_sums_kernel<<<1, dev::kFinalSumThreads, 0, st>>>(partials, int(blocks), totals);
    cudaCheckLaunch();
  } else {
    adam_vec4_kernel<false><<<blocks, kThreads, 0, st>>>(p.w, p.g, p.m, p.v, n_vec, p.n, p.n_penalized, p.s, nullptr);
    cudaCheckLaunch();
  }
}

#ifdef WITH_PACKAGE
// The package: totals != nullptr adds on the device and does not synchronize (the training
// step's path, timed here); totals == nullptr returns the value (synchronizes).
double adam_v3(const Problem& p, bool with_penalty, double* totals, cudaStream_t st) {
  return pyregnet::cuda::adam_update<float>(p.w, p.g, p.m, p.v, p.n, p.n_penalized, p.s, with_penalty, totals,
                                            static_cast<pyregnet::cuda::Stream>(st));
}
#endif

const char* version_name(int version) {
  switch (version) {
    case 1: return "v1 scalar";
    case 2: return "v2 float4";
    case 3: return "v3 package";
    default: return "?";
  }
}

// ---- one size ------------------------------------------------------------------------------

// Device copies of a State at an element offset from a 256-byte-aligned allocation: offset 1
// makes every pointer 4 bytes past 16-byte alignment, the case version 2 must fall back on.
struct DeviceState {
  dev::DeviceBuffer<float> w, g, m, v;
  int64_t offset;
  DeviceState(int64_t n, int64_t off) : w(size_t(n + off)), g(size_t(n + off)), m(size_t(n + off)), v(size_t(n + off)), offset(off) {}
  void load(const State& st) {
    w.upload(st.w, size_t(offset));
    g.upload(st.g, size_t(offset));
    m.upload(st.m, size_t(offset));
    v.upload(st.v, size_t(offset));
  }
};

// Update tolerance against the float host reference. The device fuses multiply-adds (one
// rounding instead of two) in the moment updates and the penalty gradient; the host does not.
// Emulated on the host (g++ -mfma -ffp-contract=fast against -ffp-contract=off, 4M elements of
// this data) that moves w by at most 1 ulp of |w| <= 1 (6e-8), m by 2 ulp of its largest values
// (7.5e-9, where m's two terms cancel, so no rtol covers it) and v by 1 ulp (9.3e-10), with
// relative errors of a few 1e-7 elsewhere. atol: 2 ulp of each array's largest magnitude
// (|w| ~ 1, |m| ~ 0.06, v ~ 0.01); rtol 1e-6 (~8 ulp).
constexpr dev::Tolerance kTolW{2.5e-7, 1e-6}, kTolM{1.5e-8, 1e-6}, kTolV{2e-9, 1e-6};
// The GPU sums positive double terms serially per thread (at most a few hundred at n = 64M), then
// in block and grid trees: relative error below (300 + log2 n) x 1.1e-16 ~ 4e-14 even in the
// worst case, against a reference accurate to ~1e-16.
constexpr dev::Tolerance kTolPenalty{0.0, 1e-13};

struct Case {
  int64_t n;
  int64_t offset;  // elements past 16-byte alignment
  int repeats;
};

int run_case(const Case& c, double copy_bw, dev::DeviceBuffer<double>& partials,
             dev::DeviceBuffer<int64_t>& step_counter, dev::DeviceBuffer<double>& totals) {
  const int64_t n = c.n, n_pen = penalized_count(n);
  std::printf("\n== n = %lld, n_penalized = %lld, pointers %s16-byte aligned ==\n", (long long)n, (long long)n_pen,
              c.offset ? "NOT " : "");
  const State init = make_state(n, dev::kSeed + uint64_t(n));
  // Penalties much larger than the paper's lambdas so that a misplaced boundary or a missing
  // penalty moves w by far more than rounding.
  AdamStep s{1e-3, 0.9, 0.999, 1e-7, {0.02, 0.01, false}, Counter{nullptr, kStep}};
  bool sane = false;
  const Reference ref = adam_update_cpu(init, n, n_pen, s, &sane);
  int failures = sane ? 0 : 1;

  DeviceState d(n, c.offset);
  s.step = Counter{step_counter.get(), 0};  // the kernels read t from device memory, as in a graph
  Problem p{d.w.get() + c.offset, d.g.get() + c.offset, d.m.get() + c.offset, d.v.get() + c.offset, n, n_pen, s};
  const double kTotalsStart = 0.25;  // nonzero: "adds to totals" must not overwrite it
  const size_t off = size_t(c.offset);

  std::vector<int> versions = {1, 2};
#ifdef WITH_PACKAGE
  versions.push_back(3);
#endif
  for (int version : versions) {
    for (bool with_penalty : {false, true}) {
      // Runs one update from the initial state. host_return: the package's totals == nullptr
      // path, whose return value is the penalty (versions 1 and 2 always add to totals).
      const auto run_once = [&](bool host_return, Counter step) -> double {
        d.load(init);
        const double start = kTotalsStart;
        cudaCheck(cudaMemcpy(totals.get(), &start, sizeof start, cudaMemcpyHostToDevice));
        Problem q = p;
        q.s.step = step;
        double returned = 0.0;
        if (version == 1) adam_v1(q, with_penalty, totals.get(), partials.get(), 0);
        if (version == 2) adam_v2(q, with_penalty, totals.get(), partials.get(), 0);
#ifdef WITH_PACKAGE
        if (version == 3) returned = adam_v3(q, with_penalty, host_return ? nullptr : totals.get(), 0);
#else
        (void)host_return;
#endif
        cudaCheck(cudaDeviceSynchronize());
        return returned;
      };
      const auto check = [&](const char* label, double penalty_got) {
        std::printf("  %s, %s penalty value (%s)\n", version_name(version), with_penalty ? "with" : "without", label);
        bool ok = dev::validate_result(d.w.get() + off, ref.after.w.data(), size_t(n), "w", kTolW);
        ok &= dev::validate_result(d.m.get() + off, ref.after.m.data(), size_t(n), "m", kTolM);
        ok &= dev::validate_result(d.v.get() + off, ref.after.v.data(), size_t(n), "v", kTolV);
        ok &= dev::validate_scalar(penalty_got, with_penalty ? ref.penalty : 0.0, "penalty value", kTolPenalty);
        return ok;
      };
      const auto device_total = [&] {
        double t = 0;
        cudaCheck(cudaMemcpy(&t, totals.get(), sizeof t, cudaMemcpyDeviceToHost));
        return t;
      };

      bool ok = true;
      run_once(false, s.step);
      ok &= check("step count in device memory, added to device totals", device_total() - kTotalsStart);
#ifdef WITH_PACKAGE
      if (version == 3) {
        // The same update with the step count by value and the value returned to the host.
        const double returned = run_once(true, Counter{nullptr, kStep});
        ok &= check("step count by value, returned to the host", returned);
        ok &= dev::validate_scalar(device_total(), kTotalsStart, "totals untouched (nullptr)", {0.0, 0.0});
      }
#endif
      if (!ok) {
        ++failures;
        std::printf("  %s: WRONG, not timed\n", version_name(version));
        continue;
      }
      const dev::Timing t = dev::benchmark_kernel(c.repeats, [&] {
        if (version == 1) adam_v1(p, with_penalty, totals.get(), partials.get(), 0);
        if (version == 2) adam_v2(p, with_penalty, totals.get(), partials.get(), 0);
#ifdef WITH_PACKAGE
        if (version == 3) adam_v3(p, with_penalty, totals.get(), 0);
#endif
      });
      const double bytes = 7.0 * double(n) * sizeof(float);
      const double bw = bytes / (t.median_ms * 1e-3);
      char what[64];
      std::snprintf(what, sizeof what, "%s%s", version_name(version), with_penalty ? " + penalty value" : "");
      dev::print_timing(what, t);
      std::printf("  %8.1f GB/s  %5.1f%% of copy\n", bw / 1e9, 100.0 * bw / copy_bw);
    }
  }
  return failures;
}

}  // namespace

int main() {
  return dev::harness_main([&]() -> int {
    const double copy_bw = dev::measured_copy_bandwidth();

    const std::vector<Case> cases = {
        {1, 0, 200},
        {7, 0, 200},
        {1000003, 0, 100},
        {1000003, 1, 100},          // misaligned: version 2 takes its scalar path throughout
        {int64_t(16) << 20, 0, 50},
        {int64_t(64) << 20, 0, 30},
    };
    int64_t max_n = 0;
    for (const Case& c : cases) max_n = std::max(max_n, c.n);
    dev::DeviceBuffer<double> partials(size_t(dev::grid_for(max_n, kThreads)));
    dev::DeviceBuffer<int64_t> step_counter(1);
    step_counter.upload({kStep});
    dev::DeviceBuffer<double> totals(1);

    int failures = 0;
    for (const Case& c : cases) failures += run_case(c, copy_bw, partials, step_counter, totals);
#ifndef WITH_PACKAGE
    std::printf("\n(v3, the package's adam_update, not built: compile with -DWITH_PACKAGE and csrc/cuda/update.cu)\n");
#endif
    return failures;
  });
}
