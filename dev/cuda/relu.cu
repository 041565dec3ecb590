// ReLU forward y = relu(x) and backward dx = relu_grad(y, dy) (from the forward OUTPUT y, as
// the model calls it), elementwise over n floats, each out of place and in place (y == x
// forward, dx == dy backward: pyregnet/model.py runs every ReLU backward in place).
// The rule (math/elementwise.h): relu(x) = 0 where x < 0, else x (NaN passes through, so a
// diverging run shows in the loss); relu_grad(y, dy) = dy where y > 0, else 0 (y NaN gives 0).
//
// Cases (timed): the paper's ReLU activations at batch 64, conv1 (64,32,30,30), conv2
// (64,64,13,13), dense1 (64,128), and conv1's at the eval batch of 1000; then awkward sizes
// (validated only): n = 0, 1, 7, and 1,000,003 with every pointer 4 bytes past 16-byte
// alignment. Inputs hold exact zeros, negative zeros and NaNs (x and dy), so every branch runs.
//
// Versions:
//   1  the package: pyregnet::cuda::relu_forward / relu_backward<float> (csrc/cuda/activation.cu,
//      linked with -DWITH_PACKAGE): scalar loads, grid-stride loop capped at 4096 blocks
//   2  16-byte loads and stores (float4) over the aligned bulk when every pointer is 16-byte
//      aligned, then a scalar tail; all scalar otherwise. Four times the bytes in flight per
//      thread: the usual lever for a memory-bound elementwise pass. No __restrict__, since
//      the in-place calls alias their pointers.
//
// Memory bound: forward moves 8 bytes per element (read x, write y), backward 12 (read y and dy,
// write dx), in place or not, against the measured copy bandwidth.
//
// Build and run (see Makefile):  make relu && /tmp/pyregnet-dev-cuda/relu
// Without the package:           make relu_standalone (version 2 alone)
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "common.cuh"
#include "math/elementwise.h"
#ifdef WITH_PACKAGE
#include "core/backend.h"
#endif

namespace {

constexpr int kThreads = 256;

// ---- CPU reference -------------------------------------------------------------------------

// From the rule in words rather than with math/elementwise.h, so that the shared math is
// checked too.
float relu_reference(float x) { return std::isnan(x) ? x : (x < 0.0f ? 0.0f : x); }
float relu_grad_reference(float y, float dy) { return y > 0.0f ? dy : 0.0f; }

// ---- version 2: float4 ---------------------------------------------------------------------

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Vectors [0, n_vec) as float4, then elements [4 n_vec, n) one by one (n_vec = 0 when a pointer
// is not 16-byte aligned: the launcher decides).
__global__ void __launch_bounds__(kThreads)
    relu_forward_vec4_kernel(const float* x, float* y, int64_t n_vec, int64_t n) {
  const int64_t start = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const float4* const x4 = reinterpret_cast<const float4*>(x);
  float4* const y4 = reinterpret_cast<float4*>(y);
  for (int64_t q = start; q < n_vec; q += stride) {
    const float4 v = x4[q];
    y4[q] = make_float4(pyregnet::relu(v.x), pyregnet::relu(v.y), pyregnet::relu(v.z), pyregnet::relu(v.w));
  }
  for (int64_t i = 4 * n_vec + start; i < n; i += stride) y[i] = pyregnet::relu(x[i]);
}

__global__ void __launch_bounds__(kThreads)
    relu_backward_vec4_kernel(const float* y, const float* dy, float* dx, int64_t n_vec, int64_t n) {
  const int64_t start = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const float4* const y4 = reinterpret_cast<const float4*>(y);
  const float4* const dy4 = reinterpret_cast<const float4*>(dy);
  float4* const dx4 = reinterpret_cast<float4*>(dx);
  for (int64_t q = start; q < n_vec; q += stride) {
    const float4 a = y4[q], g = dy4[q];
    dx4[q] = make_float4(pyregnet::relu_grad(a.x, g.x), pyregnet::relu_grad(a.y, g.y), pyregnet::relu_grad(a.z, g.z),
                         pyregnet::relu_grad(a.w, g.w));
  }
  for (int64_t i = 4 * n_vec + start; i < n; i += stride) dx[i] = pyregnet::relu_grad(y[i], dy[i]);
}

void forward_v2(const float* x, float* y, int64_t n) {
  if (n == 0) return;
  const int64_t n_vec = aligned16(x) && aligned16(y) ? n / 4 : 0;
  relu_forward_vec4_kernel<<<dev::grid_for(std::max<int64_t>(n_vec, n - 4 * n_vec), kThreads), kThreads>>>(x, y, n_vec,
                                                                                                           n);
  cudaCheckLaunch();
}

void backward_v2(const float* y, const float* dy, float* dx, int64_t n) {
  if (n == 0) return;
  const int64_t n_vec = aligned16(y) && aligned16(dy) && aligned16(dx) ? n / 4 : 0;
  relu_backward_vec4_kernel<<<dev::grid_for(std::max<int64_t>(n_vec, n - 4 * n_vec), kThreads), kThreads>>>(
      y, dy, dx, n_vec, n);
  cudaCheckLaunch();
}

#ifdef WITH_PACKAGE
void forward_v1(const float* x, float* y, int64_t n) { pyregnet::cuda::relu_forward<float>(x, y, n, nullptr); }
void backward_v1(const float* y, const float* dy, float* dx, int64_t n) {
  pyregnet::cuda::relu_backward<float>(y, dy, dx, n, nullptr);
}
#endif

// ---- harness -------------------------------------------------------------------------------

// x uniform in [-1, 1], then every 101st element 0, every 103rd -0.0 and every 997th NaN
// (the first of each at a varying position so that short arrays get them too).
std::vector<float> make_data(size_t n, uint64_t seed) {
  std::vector<float> v = dev::random_floats(n, -1.0f, 1.0f, seed);
  for (size_t i = 3 % std::max<size_t>(n, 1); i < n; i += 101) v[i] = 0.0f;
  for (size_t i = 5 % std::max<size_t>(n, 1); i < n; i += 103) v[i] = -0.0f;
  for (size_t i = 2 % std::max<size_t>(n, 1); i < n; i += 997) v[i] = NAN;
  return v;
}

// Exact: ReLU selects, it does no arithmetic.
constexpr dev::Tolerance kExact{0.0, 0.0};

struct Case {
  std::string name;
  int64_t n;
  int64_t offset;  // elements past the 256-byte-aligned allocation (1: every pointer misaligned)
  bool timed;
};

struct Version {
  const char* name;
  void (*forward)(const float*, float*, int64_t);
  void (*backward)(const float*, const float*, float*, int64_t);
};

int run_case(const Case& c, const std::vector<Version>& versions, double bw) {
  const int64_t n = c.n;
  const size_t off = size_t(c.offset), count = size_t(n);
  std::printf("\n== %s: n = %lld%s ==\n", c.name.c_str(), (long long)n,
              c.offset ? ", pointers NOT 16-byte aligned" : "");
  const uint64_t seed = dev::kSeed + count;
  const std::vector<float> hx = make_data(count, seed);
  // dy: the forward output as y (so both branches of relu_grad run), NaNs of its own.
  const std::vector<float> hdy = make_data(count, seed + 1);
  std::vector<float> ref_y(count), ref_dx(count);
  for (size_t i = 0; i < count; ++i) {
    ref_y[i] = relu_reference(hx[i]);
    ref_dx[i] = relu_grad_reference(ref_y[i], hdy[i]);
  }
  // Backing stores with room for the offset; the tensors start `off` elements in.
  dev::DeviceBuffer<float> x(count + off), y(count + off), dy(count + off), dx(count + off);
  x.upload(hx, off);
  dy.upload(hdy, off);
  float *const px = x.get() + off, *const py = y.get() + off, *const pdy = dy.get() + off, *const pdx = dx.get() + off;

  const double fwd_bytes = 8.0 * double(n), bwd_bytes = 12.0 * double(n);
  const int repeats = 100;
  int failures = 0;
  for (const Version& v : versions) {
    std::printf("  %s\n", v.name);
    // Out of place: y from x, then dx from y and dy.
    y.poison();
    dx.poison();
    v.forward(px, py, n);
    v.backward(py, pdy, pdx, n);
    cudaCheck(cudaDeviceSynchronize());
    bool ok = dev::validate_result(py, ref_y.data(), count, "y", kExact);
    ok &= dev::validate_result(pdx, ref_dx.data(), count, "dx", kExact);
    // In place: the y buffer holds x and becomes y; the dx buffer holds dy and becomes dx.
    y.poison();
    dx.poison();
    y.upload(hx, off);
    dx.upload(hdy, off);
    v.forward(py, py, n);
    cudaCheck(cudaDeviceSynchronize());
    ok &= dev::validate_result(py, ref_y.data(), count, "y (in place)", kExact);
    v.backward(py, pdx, pdx, n);
    cudaCheck(cudaDeviceSynchronize());
    ok &= dev::validate_result(pdx, ref_dx.data(), count, "dx (in place)", kExact);
    if (!ok) {
      ++failures;
      std::printf("  %s: WRONG, not timed\n", v.name);
      continue;
    }
    if (!c.timed) continue;
    // In place repeats are idempotent (relu(relu(x)) = relu(x), relu_grad(y, relu_grad(y, g)) =
    // relu_grad(y, g)), so every repeat does the same work on the same values.
    dev::print_bytes_roofline("forward", dev::benchmark_kernel(repeats, [&] { v.forward(px, py, n); }), fwd_bytes, bw);
    dev::print_bytes_roofline("forward in place", dev::benchmark_kernel(repeats, [&] { v.forward(py, py, n); }),
                              fwd_bytes, bw);
    dev::print_bytes_roofline("backward", dev::benchmark_kernel(repeats, [&] { v.backward(py, pdy, pdx, n); }),
                              bwd_bytes, bw);
    dev::print_bytes_roofline("backward in place",
                              dev::benchmark_kernel(repeats, [&] { v.backward(py, pdx, pdx, n); }), bwd_bytes, bw);
  }
  return failures;
}

}  // namespace

int main() {
  return dev::harness_main([&]() -> int {
    const double bw = dev::measured_copy_bandwidth();
    std::vector<Version> versions;
#ifdef WITH_PACKAGE
    versions.push_back({"v1 package (scalar, grid-stride)", forward_v1, backward_v1});
#endif
    versions.push_back({"v2 float4 bulk + scalar tail", forward_v2, backward_v2});

    const std::vector<Case> cases = {
        {"conv1 activation (64,32,30,30)", 64 * 32 * 30 * 30, 0, true},
        {"conv2 activation (64,64,13,13)", 64 * 64 * 13 * 13, 0, true},
        {"dense1 activation (64,128)", 64 * 128, 0, true},
        {"conv1 activation, eval batch (1000,32,30,30)", int64_t(1000) * 32 * 30 * 30, 0, true},
        {"n = 0", 0, 0, false},
        {"n = 1", 1, 0, false},
        {"n = 7 (one vector + 3 tail)", 7, 0, false},
        {"n = 1000003, misaligned", 1000003, 1, false},
    };
    int failures = 0;
    for (const Case& c : cases) failures += run_case(c, versions, bw);
#ifndef WITH_PACKAGE
    std::printf("\n(v1, the package's relu, not built: compile with -DWITH_PACKAGE and csrc/cuda/activation.cu)\n");
#endif
    return failures;
  });
}
