// 2x2, stride-2, floor max-pooling, NCHW: forward y = the window's maximum, backward dy routed
// to the element the forward pass chose (others 0; rows and columns the floor drops get 0).
// The window rule (math/maxpool.h): row-major order (0,0) (0,1) (1,0) (1,1), the first maximum
// wins ties, a NaN wins over numbers (the first NaN, then nothing replaces it), so NaN propagates.
//
// Shape letters: N, C, H, W input; P = H / 2, Q = W / 2 output.
//
// Cases: the paper's pools at batch 64 (timed), (64,32,30,30) after conv1 and (64,64,13,13)
// after conv2 (odd: the last row and column are dropped); then awkward sizes (validated only):
// an empty output (1x1 input), odd H and W, a single window, all-equal inputs (ties everywhere).
// Inputs are quantized to 9 levels (a fifth of the windows hold a tied maximum) and 1% are NaN
// (4% of the windows), so every rule is hit.
//
// Versions, both the package (pyregnet::cuda::maxpool2d_forward / maxpool2d_backward<float>,
// csrc/cuda/maxpool2d.cu, linked with -DWITH_PACKAGE):
//   1  argmax = nullptr: the forward pass writes y only, the backward pass re-reads the 4 x
//      elements of each window to recompute its argmax (16 bytes per window)
//   2  the stored argmax (what the trainer uses, pyregnet/model.py): the forward pass also writes
//      each window's argmax as one uint8 (0..3), the backward pass reads that (1 byte per
//      window) instead of x
// The harness's own earlier argmax kernels (the former version 2) are gone: the package now runs
// the same algorithm (one thread per output forward, one per input backward, the same byte code),
// differing only in launch geometry (a grid-stride loop capped at 4096 blocks against one thread
// per element), so they were a duplicate of version 2.
//
// Memory bound: each version's bytes (below) against the measured copy bandwidth.
//
// Build and run (see Makefile):  make maxpool2d && /tmp/pyregnet-dev-cuda/maxpool2d
// Both versions are the package's: built without it (make maxpool2d_standalone) the harness
// has nothing to validate and says FAILED.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "common.cuh"
#include "math/shapes.h"
#ifdef WITH_PACKAGE
#include "core/backend.h"
#endif

using pyregnet::PoolShape;

namespace {

PoolShape make_shape(int64_t N, int64_t C, int64_t H, int64_t W) { return PoolShape{N, C, H, W, H / 2, W / 2}; }
int64_t x_size(const PoolShape& s) { return s.N * s.C * s.H * s.W; }
int64_t y_size(const PoolShape& s) { return s.N * s.C * s.P * s.Q; }

// ---- CPU reference -------------------------------------------------------------------------

struct PoolReference {
  std::vector<float> y;
  std::vector<uint8_t> argmax;  // 0..3, row-major in the window
  std::vector<float> dx;
};

// Written from the rule, not with math/maxpool.h, so that it checks the shared math too: walk
// the window in row-major order and take an element when the best so far is a number and the
// element is larger or is NaN.
PoolReference maxpool2d_cpu(const PoolShape& s, const std::vector<float>& x, const std::vector<float>& dy) {
  PoolReference ref{std::vector<float>(size_t(y_size(s))), std::vector<uint8_t>(size_t(y_size(s))),
                    std::vector<float>(size_t(x_size(s)), 0.0f)};
  for (int64_t nc = 0; nc < s.N * s.C; ++nc)
    for (int64_t p = 0; p < s.P; ++p)
      for (int64_t q = 0; q < s.Q; ++q) {
        int64_t at[4];
        for (int j = 0; j < 4; ++j) at[j] = (nc * s.H + 2 * p + j / 2) * s.W + 2 * q + j % 2;
        int best = 0;
        for (int j = 1; j < 4; ++j) {
          const float best_value = x[size_t(at[best])], value = x[size_t(at[j])];
          if (!std::isnan(best_value) && (std::isnan(value) || value > best_value)) best = j;
        }
        const size_t yi = size_t((nc * s.P + p) * s.Q + q);
        ref.y[yi] = x[size_t(at[best])];
        ref.argmax[yi] = uint8_t(best);
        ref.dx[size_t(at[best])] = dy[yi];
      }
  return ref;
}

// ---- harness -------------------------------------------------------------------------------

enum class Data { quantized_with_nans, all_equal };

std::vector<float> make_input(size_t n, Data kind, uint64_t seed) {
  std::vector<float> x(n, 0.5f);
  if (kind == Data::all_equal) return x;
  dev::Rng rng(seed);
  for (float& v : x) {
    v = std::round(rng.uniform(-1.0f, 1.0f) * 4.0f) / 4.0f;  // 9 levels: a fifth of the windows tie at the max
    if (rng.uniform(0.0f, 1.0f) < 0.01f) v = NAN;
  }
  return x;
}

struct Case {
  std::string name;
  PoolShape s;
  Data data;
  bool timed;
};

// Exact: pooling only selects and copies, no arithmetic. ([[maybe_unused]]: only the package's
// versions use it, and a build without the package has none.)
[[maybe_unused]] constexpr dev::Tolerance kExact{0.0, 0.0};

int run_case(const Case& c, double bw) {
  const PoolShape& s = c.s;
  std::printf("\n== %s: x (%lld,%lld,%lld,%lld) -> y (%lld,%lld,%lld,%lld) ==\n", c.name.c_str(), (long long)s.N,
              (long long)s.C, (long long)s.H, (long long)s.W, (long long)s.N, (long long)s.C, (long long)s.P,
              (long long)s.Q);
  const size_t nx = size_t(x_size(s)), ny = size_t(y_size(s));
  const uint64_t seed = dev::kSeed + nx * 7 + ny;
  const std::vector<float> hx = make_input(nx, c.data, seed);
  const std::vector<float> hdy = dev::random_floats(ny, -1.0f, 1.0f, seed + 1);
  const PoolReference ref = maxpool2d_cpu(s, hx, hdy);
  int failures = 0;
#ifdef WITH_PACKAGE
  using pyregnet::cuda::Stream;
  const Stream st = nullptr;  // the legacy default stream, where the events are recorded

  // x_nan: all NaN, handed to version 2's backward pass in place of x. Were that pass to
  // recompute the argmax from x rather than read the stored one, every window would pick
  // element 0 (the first NaN wins) and dx would fail validation.
  dev::DeviceBuffer<float> x(hx), x_nan(nx), dy(hdy), y(ny), dx(nx);
  dev::DeviceBuffer<uint8_t> argmax(ny);
  x_nan.poison();  // 0xffffffff is a NaN
  const auto poison = [&] {
    y.poison();
    dx.poison();
    argmax.poison();  // 0xff: no valid argmax, so a window the forward pass skips is caught
  };

  // Bytes each pass must move: the x elements inside windows (4 per output), y or dy, dx, and
  // for version 2 one argmax byte per output.
  const double window_x = 4.0 * 4.0 * double(ny), y_bytes = 4.0 * double(ny), dx_bytes = 4.0 * double(nx);
  const double v1_fwd = window_x + y_bytes, v1_bwd = window_x + y_bytes + dx_bytes;
  const double v2_fwd = window_x + y_bytes + double(ny), v2_bwd = double(ny) + y_bytes + dx_bytes;
  const int repeats = 100;
  double v1_backward_ms = 0.0;

  {
    std::printf("  v1 package, argmax = nullptr (backward re-reads x)\n");
    poison();
    pyregnet::cuda::maxpool2d_forward<float>(x.get(), y.get(), nullptr, s, st);
    pyregnet::cuda::maxpool2d_backward<float>(x.get(), nullptr, dy.get(), nullptr, dx.get(), s, st);
    cudaCheck(cudaDeviceSynchronize());
    bool ok = dev::validate_result(y.get(), ref.y.data(), ny, "y", kExact);
    ok &= dev::validate_result(dx.get(), ref.dx.data(), nx, "dx", kExact);
    if (!ok) {
      ++failures;
      std::printf("  v1: WRONG, not timed\n");
    } else if (c.timed) {
      const dev::Timing f = dev::benchmark_kernel(
          repeats, [&] { pyregnet::cuda::maxpool2d_forward<float>(x.get(), y.get(), nullptr, s, st); });
      const dev::Timing b = dev::benchmark_kernel(repeats, [&] {
        pyregnet::cuda::maxpool2d_backward<float>(x.get(), nullptr, dy.get(), nullptr, dx.get(), s, st);
      });
      dev::print_bytes_roofline("v1 forward", f, v1_fwd, bw);
      dev::print_bytes_roofline("v1 backward (from x)", b, v1_bwd, bw);
      std::printf("    v1 forward + backward: %.2f us (medians)\n", (f.median_ms + b.median_ms) * 1e3);
      v1_backward_ms = b.median_ms;
    }
  }
  {
    std::printf("  v2 package, stored uint8 argmax (backward reads argmax, not x)\n");
    poison();
    pyregnet::cuda::maxpool2d_forward<float>(x.get(), y.get(), argmax.get(), s, st);
    pyregnet::cuda::maxpool2d_backward<float>(x_nan.get(), argmax.get(), dy.get(), nullptr, dx.get(), s, st);
    cudaCheck(cudaDeviceSynchronize());
    bool ok = dev::validate_result(y.get(), ref.y.data(), ny, "y", kExact);
    ok &= dev::validate_result(argmax.get(), ref.argmax.data(), ny, "argmax", kExact);
    ok &= dev::validate_result(dx.get(), ref.dx.data(), nx, "dx (x all NaN)", kExact);
    if (!ok) {
      ++failures;
      std::printf("  v2: WRONG, not timed\n");
    } else if (c.timed) {
      const dev::Timing f = dev::benchmark_kernel(
          repeats, [&] { pyregnet::cuda::maxpool2d_forward<float>(x.get(), y.get(), argmax.get(), s, st); });
      const dev::Timing b = dev::benchmark_kernel(repeats, [&] {
        pyregnet::cuda::maxpool2d_backward<float>(x.get(), argmax.get(), dy.get(), nullptr, dx.get(), s, st);
      });
      dev::print_bytes_roofline("v2 forward (+argmax)", f, v2_fwd, bw);
      dev::print_bytes_roofline("v2 backward (from argmax)", b, v2_bwd, bw);
      std::printf("    v2 forward + backward: %.2f us (medians)", (f.median_ms + b.median_ms) * 1e3);
      if (v1_backward_ms > 0) std::printf("; backward %.2fx v1's", v1_backward_ms / b.median_ms);
      std::printf("\n");
    }
  }
#else
  (void)bw;
  (void)ref;
#endif
  return failures;
}

}  // namespace

int main() {
  return dev::harness_main([&]() -> int {
#ifndef WITH_PACKAGE
    // Both versions are the package's: without it nothing would be validated, and a harness that
    // validates nothing must not report success.
    std::printf("FAILED: built without the package (-DWITH_PACKAGE and csrc/cuda/maxpool2d.cu): no version to run\n");
    return 1;
#endif
    const double bw = dev::measured_copy_bandwidth();
    const std::vector<Case> cases = {
        {"pool1 (paper, batch 64)", make_shape(64, 32, 30, 30), Data::quantized_with_nans, true},
        {"pool2 (paper, batch 64, odd)", make_shape(64, 64, 13, 13), Data::quantized_with_nans, true},
        {"1x1 input: empty output", make_shape(1, 1, 1, 1), Data::quantized_with_nans, false},
        {"odd H and W", make_shape(1, 1, 3, 5), Data::quantized_with_nans, false},
        {"odd everything", make_shape(2, 3, 7, 9), Data::quantized_with_nans, false},
        {"one window per plane", make_shape(3, 5, 2, 2), Data::quantized_with_nans, false},
        {"33 x 31", make_shape(1, 1, 33, 31), Data::quantized_with_nans, false},
        {"all equal: ties everywhere", make_shape(2, 2, 4, 6), Data::all_equal, false},
    };
    int failures = 0;
    for (const Case& c : cases) failures += run_case(c, bw);
    return failures;
  });
}
