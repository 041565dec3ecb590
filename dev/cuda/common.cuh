// Shared pieces of the dev/cuda kernel harnesses, in the style of karpathy/llm.c's
// dev/cuda/common.h: error checking, device facts, the measured ceilings (copy bandwidth, FP32
// peak), result validation against a CPU reference, and CUDA-event timing with the L2 flushed.
//
// These are stand-alone development programs, not the package: a failed CUDA call prints
// file:line and exits (docs/design.md §3.5's "throw, never exit" is for csrc/). The package's own
// entry points throw std::runtime_error; each harness's main() catches it and exits nonzero.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cuda/block_reduce.cuh"  // the package's block_sum, used by the harnesses' reductions

// ---- error checking ------------------------------------------------------------------------

inline void cuda_check(cudaError_t err, const char* file, int line) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "[CUDA ERROR] %s:%d: %s (%s)\n", file, line, cudaGetErrorString(err),
                 cudaGetErrorName(err));
    std::exit(EXIT_FAILURE);
  }
}
#define cudaCheck(call) cuda_check((call), __FILE__, __LINE__)
// After every <<<...>>>: a bad configuration or a missing sm_90 image is reported only here.
#define cudaCheckLaunch() cuda_check(cudaGetLastError(), __FILE__, __LINE__)

namespace dev {

// ---- device facts ----------------------------------------------------------------------------

// Assumption, from NVIDIA's H200 SXM datasheet: non-tensor FP32 peak about 67 TFLOP/s
// (132 SMs x 128 FP32 lanes x 2 FLOP per FMA x ~1.98 GHz boost). Used for the roofline when the
// device's own figure cannot be computed (an architecture whose FP32 lanes per SM we don't know).
constexpr double kAssumedPeakFp32FlopPerS = 67.0e12;

// Fixed seeds: every run of a harness sees the same data.
constexpr uint64_t kSeed = 0x5eed0f9e9e7e7ull;

inline int current_device() {
  int dev = 0;
  cudaCheck(cudaGetDevice(&dev));
  return dev;
}

inline const cudaDeviceProp& device_props() {
  static cudaDeviceProp props = [] {
    cudaDeviceProp p;
    cudaCheck(cudaGetDeviceProperties(&p, current_device()));
    return p;
  }();
  return props;
}

inline int sm_count() { return device_props().multiProcessorCount; }

// Peak SM clock in kHz. CUDA 13 removed cudaDeviceProp::clockRate; the attribute remains.
inline int sm_clock_khz() {
  int khz = 0;
  cudaCheck(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, current_device()));
  return khz;
}

// FP32 FMA lanes per SM by compute capability (CUDA C Programming Guide, "Arithmetic
// Instructions" throughput table); 0 where we don't know it.
inline int fp32_lanes_per_sm(int major, int minor) {
  if (major == 9) return 128;                                    // Hopper
  if (major == 8) return minor == 0 ? 64 : 128;                  // A100: 64; GA10x, AD10x: 128
  if (major == 7) return 64;                                     // Volta, Turing
  return 0;
}

struct Fp32Peak {
  double assumed;      // kAssumedPeakFp32FlopPerS
  double from_device;  // SMs x clock x lanes x 2, or 0 when the lanes are unknown
  double used() const { return from_device > 0 ? from_device : assumed; }
};

inline Fp32Peak fp32_peak() {
  const cudaDeviceProp& p = device_props();
  const int lanes = fp32_lanes_per_sm(p.major, p.minor);
  return {kAssumedPeakFp32FlopPerS, double(p.multiProcessorCount) * sm_clock_khz() * 1e3 * lanes * 2.0};
}

// ---- timing --------------------------------------------------------------------------------

struct Timing {
  double median_ms, min_ms, p10_ms, p90_ms;
  int repeats;
  // Relative spread of the middle 80% of the samples.
  double spread() const { return median_ms > 0 ? (p90_ms - p10_ms) / median_ms : 0.0; }
};

// A buffer larger than L2, written before every timed repeat so that a kernel's inputs come from
// DRAM as they do in training (the H200's 60 MB L2 would otherwise hold the smaller tensors
// from the previous repeat). Twice L2 so that no line of the previous repeat survives whatever
// the replacement policy. Written with cudaMemsetAsync as nvbench does; the dirty lines this
// leaves are evicted during the timed kernel, a small cost that every version pays alike.
struct L2Flusher {
  void* buffer = nullptr;
  size_t bytes = 0;
  unsigned char value = 0;
  L2Flusher() {
    bytes = std::max<size_t>(2 * size_t(device_props().l2CacheSize), size_t(64) << 20);
    cudaCheck(cudaMalloc(&buffer, bytes));
  }
  ~L2Flusher() { cudaFree(buffer); }  // at exit; an error here changes nothing
  void flush(cudaStream_t st) { cudaCheck(cudaMemsetAsync(buffer, ++value, bytes, st)); }
};

inline L2Flusher& l2_flusher() {
  static L2Flusher flusher;
  return flusher;
}

// Times fn() (which enqueues its work on `st`), `repeats` times after `warmup` untimed calls,
// each timed repeat bracketed by CUDA events on `st` right after an L2 flush. fn may call
// library code that synchronizes; the events still bracket exactly its GPU work plus any gaps
// that synchronization causes, which is what a caller of that code pays.
template <class F>
Timing benchmark_kernel(int repeats, F&& fn, cudaStream_t st = 0, int warmup = 2) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaCheck(cudaStreamSynchronize(st));
  cudaEvent_t start, stop;
  cudaCheck(cudaEventCreate(&start));
  cudaCheck(cudaEventCreate(&stop));
  std::vector<float> ms(size_t(std::max(repeats, 1)));
  for (float& sample : ms) {
    l2_flusher().flush(st);
    cudaCheck(cudaEventRecord(start, st));
    fn();
    cudaCheck(cudaEventRecord(stop, st));
    cudaCheck(cudaEventSynchronize(stop));
    cudaCheck(cudaEventElapsedTime(&sample, start, stop));
  }
  cudaCheck(cudaEventDestroy(start));
  cudaCheck(cudaEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  const auto at = [&](double q) { return double(ms[size_t(q * double(ms.size() - 1) + 0.5)]); };
  return {at(0.5), double(ms.front()), at(0.1), at(0.9), int(ms.size())};
}

// Host wall-clock microseconds per call of fn() when `calls` calls are enqueued back to back on
// the legacy default stream and then waited for once (after one untimed call), no L2 flush. The
// complement of benchmark_kernel for launch-bound ops: with a flush before each repeat the host
// has enqueued the op's launches long before the GPU reaches them, so the events time the GPU's
// work alone, while a training step also pays each call's host-side launch cost, measured here.
template <class F>
double host_us_per_call(int calls, F&& fn) {
  fn();
  cudaCheck(cudaStreamSynchronize(0));
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < calls; ++i) fn();
  cudaCheck(cudaStreamSynchronize(0));
  const std::chrono::duration<double, std::micro> elapsed = std::chrono::steady_clock::now() - start;
  return elapsed.count() / std::max(calls, 1);
}

// Device-to-device copy bandwidth in bytes/s: a 256 MiB cudaMemcpyAsync, counted as the bytes
// read plus the bytes written, median of 20. The ceiling the memory-bound kernels are put
// against (the datasheet's 4.8 TB/s is not reachable by any kernel). Measured once per process.
inline double measured_copy_bandwidth() {
  static const double bytes_per_s = [] {
    const size_t bytes = size_t(256) << 20;
    void *src, *dst;
    cudaCheck(cudaMalloc(&src, bytes));
    cudaCheck(cudaMalloc(&dst, bytes));
    cudaCheck(cudaMemset(src, 1, bytes));
    const Timing t = benchmark_kernel(20, [&] {
      cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0));
    });
    cudaCheck(cudaFree(src));
    cudaCheck(cudaFree(dst));
    return 2.0 * double(bytes) / (t.median_ms * 1e-3);
  }();
  return bytes_per_s;
}

// Prints the device, its L2, the measured copy bandwidth and both FP32 peaks.
inline void print_device_summary() {
  const cudaDeviceProp& p = device_props();
  int runtime = 0, driver = 0;
  cudaCheck(cudaRuntimeGetVersion(&runtime));
  cudaCheck(cudaDriverGetVersion(&driver));
  const Fp32Peak peak = fp32_peak();
  std::printf("device: %s (sm_%d%d), %d SMs at %.0f MHz, L2 %.1f MiB, %.1f GiB; runtime %d, driver %d\n",
              p.name, p.major, p.minor, p.multiProcessorCount, sm_clock_khz() / 1e3,
              p.l2CacheSize / 1048576.0, double(p.totalGlobalMem) / (1u << 30), runtime, driver);
  std::printf("measured D2D copy bandwidth (256 MiB, read+write): %.0f GB/s\n",
              measured_copy_bandwidth() / 1e9);
  std::printf("FP32 peak: %.1f TFLOP/s assumed (H200 SXM datasheet), %.1f TFLOP/s from the device "
              "(SMs x clock x %d lanes x 2)%s; using %.1f\n",
              peak.assumed / 1e12, peak.from_device / 1e12, fp32_lanes_per_sm(p.major, p.minor),
              peak.from_device > 0 ? "" : " [lanes unknown for this architecture]", peak.used() / 1e12);
}

// ---- validation ----------------------------------------------------------------------------

// |got - ref| <= atol + rtol * scale, where scale is |ref| or, when given, a per-element
// magnitude (for a sum: the sum of the absolute values of its terms, which bounds its rounding
// error better than |ref| does when terms cancel).
struct Tolerance {
  double atol, rtol;
};

// Copies n elements from device_ptr and compares them with host_ref. NaN must meet NaN and an
// infinity the same infinity. Prints the max abs and rel error and the first mismatches; returns
// whether every element is within tolerance. `quiet` prints nothing (the self test).
template <class T, class R>
bool validate_result(const T* device_ptr, const R* host_ref, size_t n, const char* name,
                     Tolerance tol, const double* magnitude = nullptr, bool quiet = false) {
  std::vector<T> got(n);
  if (n > 0) cudaCheck(cudaMemcpy(got.data(), device_ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
  double max_abs = 0.0, max_rel = 0.0, max_used = 0.0;  // max_used: the largest err / allowed
  size_t worst = 0, bad = 0;
  constexpr size_t kShown = 5;
  for (size_t i = 0; i < n; ++i) {
    const double r = double(host_ref[i]), g = double(got[i]);
    bool ok;
    double err = 0.0;
    if (std::isnan(r) || std::isnan(g)) {
      ok = std::isnan(r) && std::isnan(g);
      err = ok ? 0.0 : INFINITY;
    } else if (std::isinf(r) || std::isinf(g)) {
      ok = r == g;
      err = ok ? 0.0 : INFINITY;
    } else {
      err = std::fabs(g - r);
      const double scale = magnitude ? magnitude[i] : std::fabs(r);
      const double allowed = tol.atol + tol.rtol * scale;
      ok = err <= allowed;
      if (err > 0.0) max_used = std::max(max_used, allowed > 0.0 ? err / allowed : INFINITY);
      if (r != 0.0) max_rel = std::max(max_rel, err / std::fabs(r));  // among nonzero references
    }
    if (err > max_abs) {
      max_abs = err;
      worst = i;
    }
    if (!ok) {
      if (!quiet && bad < kShown) {
        const double scale = magnitude ? magnitude[i] : std::fabs(r);
        std::printf("    MISMATCH %s[%zu]: ref %.9g got %.9g |diff| %.3g allowed %.3g\n", name, i, r, g,
                    err, tol.atol + tol.rtol * scale);
      }
      ++bad;
    }
  }
  if (!quiet) {
    // "of tol": the largest error as a fraction of what the tolerance allowed that element, the
    // margin left (1.0 = at the limit).
    std::printf("    %-22s n=%-9zu max abs err %.3e (at %zu)  max rel err %.3e  %.3f of tol  %s", name, n,
                max_abs, worst, max_rel, max_used, bad ? "FAIL" : "ok");
    if (bad) std::printf(" (%zu of %zu outside atol %.1e + rtol %.1e)", bad, n, tol.atol, tol.rtol);
    std::printf("\n");
  }
  return bad == 0;
}

// A scalar that lives on the device (a reduction's result), checked the same way.
inline bool validate_scalar(double got, double ref, const char* name, Tolerance tol) {
  const double err = std::fabs(got - ref);
  const bool ok = (std::isnan(ref) && std::isnan(got)) || err <= tol.atol + tol.rtol * std::fabs(ref);
  std::printf("    %-30s got %.17g ref %.17g |diff| %.3e  %s\n", name, got, ref, err, ok ? "ok" : "FAIL");
  return ok;
}

// Proof that validation can fail: a one-element-off copy and a NaN must both be rejected.
// Run at the start of every harness; exits if the checker is broken.
inline void validator_self_test() {
  const float good[4] = {1.0f, 2.0f, 3.0f, 4.0f};
  const float off[4] = {1.0f, 2.0f, 3.001f, 4.0f};
  const float nan_ref[4] = {1.0f, 2.0f, NAN, 4.0f};
  float* d;
  cudaCheck(cudaMalloc(&d, sizeof good));
  cudaCheck(cudaMemcpy(d, good, sizeof good, cudaMemcpyHostToDevice));
  const Tolerance tight{1e-6, 1e-6};
  const bool accepts_same = validate_result(d, good, 4, "self", tight, nullptr, true);
  const bool rejects_off = !validate_result(d, off, 4, "self", tight, nullptr, true);
  const bool rejects_nan = !validate_result(d, nan_ref, 4, "self", tight, nullptr, true);
  cudaCheck(cudaFree(d));
  if (!(accepts_same && rejects_off && rejects_nan)) {
    std::fprintf(stderr, "validator self test failed: same %d, off rejected %d, NaN rejected %d\n",
                 accepts_same, rejects_off, rejects_nan);
    std::exit(EXIT_FAILURE);
  }
}

// ---- data ----------------------------------------------------------------------------------

// splitmix64: a tiny, seedable generator, so that data do not depend on the C library's rand().
struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed) {}
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [lo, hi).
  float uniform(float lo, float hi) { return lo + (hi - lo) * float(double(next() >> 40) * 0x1p-24); }
};

inline std::vector<float> random_floats(size_t n, float lo, float hi, uint64_t seed) {
  std::vector<float> out(n);
  Rng rng(seed);
  for (float& x : out) x = rng.uniform(lo, hi);
  return out;
}

// cudaMalloc'd array of T, freed when it goes out of scope.
template <class T>
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t count) : n_(count) {
    if (count > 0) cudaCheck(cudaMalloc(reinterpret_cast<void**>(&p_), count * sizeof(T)));
  }
  DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return p_; }
  size_t size() const { return n_; }
  void upload(const std::vector<T>& host, size_t offset = 0) {
    if (!host.empty())
      cudaCheck(cudaMemcpy(p_ + offset, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(n_);
    if (n_ > 0) cudaCheck(cudaMemcpy(host.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  // Fills with a byte pattern, so that a kernel that skips an element leaves garbage behind
  // rather than a lucky zero (0xff bytes read as NaN for float and double).
  void poison() {
    if (n_ > 0) cudaCheck(cudaMemset(p_, 0xff, n_ * sizeof(T)));
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// ---- kernel helpers ------------------------------------------------------------------------

template <class A, class B>
constexpr A ceil_div(A a, B b) {
  return (a + A(b) - 1) / A(b);
}

// Blocks for a grid-stride loop over `work` items: enough to cover the work, at most
// `blocks_per_sm` blocks per SM (the loop takes the rest).
inline unsigned grid_for(int64_t work, int threads, int blocks_per_sm = 32) {
  const int64_t cap = int64_t(sm_count()) * blocks_per_sm;
  return unsigned(std::max<int64_t>(1, std::min<int64_t>(ceil_div(work, int64_t(threads)), cap)));
}

// The package's deterministic block sum (one definition: csrc/cuda/block_reduce.cuh).
using pyregnet::cuda::block_sum;

// *total += sum of partial[0..count), in a fixed order (each thread's strided share in index
// order, then block_sum): the second pass of a deterministic two-pass reduction.
constexpr int kFinalSumThreads = 1024;
static __global__ void __launch_bounds__(kFinalSumThreads)
    add_partial_sums_kernel(const double* partial, int count, double* total) {
  double s = 0.0;
  for (int i = int(threadIdx.x); i < count; i += int(blockDim.x)) s += partial[i];
  s = block_sum(s);
  if (threadIdx.x == 0) *total += s;
}

// ---- printing ------------------------------------------------------------------------------

inline void print_timing(const char* what, const Timing& t) {
  std::printf("    %-34s median %9.2f us  min %9.2f us  spread(p10-p90) %5.1f%%  (%d runs)", what,
              t.median_ms * 1e3, t.min_ms * 1e3, 100.0 * t.spread(), t.repeats);
}

// print_timing, then the bytes a pass must move, the rate achieved and the bytes roofline (those
// bytes at the measured copy bandwidth `bw`) with the fraction of it reached. One line.
inline void print_bytes_roofline(const char* what, const Timing& t, double bytes, double bw) {
  print_timing(what, t);
  const double sec = t.median_ms * 1e-3;
  std::printf("  %.3f MB, %6.0f GB/s, roofline %.2f us = %5.1f%% reached\n", bytes / 1e6, bytes / sec / 1e9,
              bytes / bw * 1e6, 100.0 * (bytes / bw) / sec);
}

// A compute-heavy kernel's timing beside its roofline: GFLOP/s and % of FP32 peak, the bytes it
// must move at the measured bandwidth, and which bound the roofline time is.
inline void print_compute_rates(const char* what, const Timing& t, double flops, double bytes, double peak,
                                double bw) {
  print_timing(what, t);
  const double sec = t.median_ms * 1e-3;
  const double t_compute = flops / peak, t_memory = bytes / bw;
  const double t_roof = std::max(t_compute, t_memory);
  std::printf("\n      %8.1f GFLOP/s = %5.2f%% of FP32 peak; %.3f MB at %.0f GB/s; roofline %.2f us (%s bound) = %5.1f%% reached\n",
              flops / sec / 1e9, 100.0 * flops / sec / peak, bytes / 1e6, bytes / sec / 1e9, t_roof * 1e6,
              t_compute >= t_memory ? "compute" : "memory", 100.0 * t_roof / sec);
}

// A harness's main: the validator's self-test and the device summary, then body() (which returns
// its number of failures), then the verdict line. Exit status 1 on any failure or exception.
template <class Body>
int harness_main(const Body& body) {
  try {
    validator_self_test();
    print_device_summary();
    const int failures = body();
    std::printf("\n%s: %d failure(s)\n", failures ? "FAILED" : "ALL OK", failures);
    return failures ? 1 : 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}

// Neumaier's compensated sum: a reference sum to about 1 ulp of double whatever the count, so
// that the GPU's tree-ordered sums are checked against the true value, not against a serial
// sum's own rounding (which was measured 3e-13 off at n = 16M).
struct CompensatedSum {
  double sum = 0.0, compensation = 0.0;
  void add(double x) {
    const double t = sum + x;
    compensation += std::fabs(sum) >= std::fabs(x) ? (sum - t) + x : (x - t) + sum;
    sum = t;
  }
  double value() const { return sum + compensation; }
};

}  // namespace dev
