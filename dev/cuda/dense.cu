// Dense (fully connected) layer, PyTorch layout: x (N, in), w (out, in), b (out), y (N, out).
//   forward   y = x . w^T + b, optionally with the ReLU fused into the epilogue
//   backward  dx = dy . w,  dw = dy^T . x,  db = column sums of dy (one call, all three written)
//
// Cases: the paper's two layers at the training batch of 64 (timed), dense1 x (64,2304) w
// (128,2304) with the fused ReLU, dense2 x (64,128) w (10,128) without; the same at the eval
// batch of 1000 (timed: the forward pass is what evaluation runs; the backward pass there takes
// the package's split-K path, the weight gradient's k being the batch); then awkward sizes
// (validated only): N = 1, odd in and out, in = out = 1, M past two 64-row tiles, an uneven
// split-K (N = 777: slices of 272, 272, 233), and an empty batch (N = 0: dw and db must be 0).
//
// Versions:
//   1  naive: one thread per output element of each pass (y; dx; dw; db), a serial k loop
//   2  the package's tiled GEMM (csrc/cuda/gemm.cuh): pyregnet::cuda::dense_forward /
//      dense_backward<float> (csrc/cuda/dense.cu, linked with -DWITH_PACKAGE)
//
// Per pass: FLOPs = 2 N in out for the forward pass, 4 N in out + N out for the backward pass
// (dx and dw are a GEMM of that size each, db N out adds), against the FP32 peak; bytes = the
// tensors the pass must read and write once, against the measured copy bandwidth; the roofline
// time is the larger of the two. These layers are small: dense1 forward at batch 64 is 38 MFLOP
// (0.56 us at FP32 peak) over 1.8 MB (~0.5 us at copy bandwidth), and its 64 x 128 output is two
// 64 x 64 tiles that split-K spreads over 18 blocks for 132 SMs: occupancy and launch overhead,
// not either ceiling, decide its time.
//
// Build and run (see Makefile):  make dense && /tmp/pyregnet-dev-cuda/dense
// Without the package:           make dense_standalone
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "common.cuh"
#include "math/elementwise.h"
#include "math/shapes.h"
#ifdef WITH_PACKAGE
#include "core/backend.h"
#endif

using pyregnet::DenseShape;

namespace {

constexpr int kThreads = 256;

int64_t x_size(const DenseShape& s) { return s.N * s.in; }
int64_t w_size(const DenseShape& s) { return s.out * s.in; }
int64_t y_size(const DenseShape& s) { return s.N * s.out; }
double gemm_flops(const DenseShape& s) { return 2.0 * double(s.N) * double(s.in) * double(s.out); }

// ---- CPU reference -------------------------------------------------------------------------

// Every pass in double, each output with the sum of the absolute values of its terms (the scale
// of its float rounding error; see kTol).
struct DenseReference {
  std::vector<double> y, y_relu, y_mag;  // forward with the bias, without and with the ReLU
  std::vector<double> dx, dx_mag, dw, dw_mag, db, db_mag;
};

// One loop nest over (n, j, k) visits every product w[j,k] x[n,k] with its output-gradient
// partner dy[n,j] exactly once, so it accumulates all three products straight from their
// definitions: y[n,j] += w x, dx[n,k] += dy w, dw[j,k] += dy x. The inner loop runs along k,
// contiguous in x, w, dx and dw.
DenseReference dense_cpu(const DenseShape& s, const std::vector<float>& x, const std::vector<float>& w,
                         const std::vector<float>& b, const std::vector<float>& dy) {
  DenseReference r;
  r.y.assign(size_t(y_size(s)), 0.0);
  r.y_mag.assign(size_t(y_size(s)), 0.0);
  r.dx.assign(size_t(x_size(s)), 0.0);
  r.dx_mag.assign(size_t(x_size(s)), 0.0);
  r.dw.assign(size_t(w_size(s)), 0.0);
  r.dw_mag.assign(size_t(w_size(s)), 0.0);
  r.db.assign(size_t(s.out), 0.0);
  r.db_mag.assign(size_t(s.out), 0.0);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t j = 0; j < s.out; ++j) {
      const size_t yi = size_t(n * s.out + j);
      const double g = dy[yi];
      const float* xr = x.data() + n * s.in;
      const float* wr = w.data() + j * s.in;
      double* dxr = r.dx.data() + n * s.in;
      double* dxm = r.dx_mag.data() + n * s.in;
      double* dwr = r.dw.data() + j * s.in;
      double* dwm = r.dw_mag.data() + j * s.in;
      double acc = 0.0, mag = 0.0;
      for (int64_t k = 0; k < s.in; ++k) {
        const double xv = xr[k], wv = wr[k];
        acc += xv * wv;
        mag += std::fabs(xv * wv);
        dxr[k] += g * wv;
        dxm[k] += std::fabs(g * wv);
        dwr[k] += g * xv;
        dwm[k] += std::fabs(g * xv);
      }
      r.y[yi] = acc + b[size_t(j)];
      r.y_mag[yi] = mag + std::fabs(double(b[size_t(j)]));
      r.db[size_t(j)] += g;
      r.db_mag[size_t(j)] += std::fabs(g);
    }
  r.y_relu.resize(r.y.size());
  for (size_t i = 0; i < r.y.size(); ++i) r.y_relu[i] = r.y[i] < 0.0 ? 0.0 : r.y[i];
  return r;
}

// ---- version 1: naive ----------------------------------------------------------------------

// One thread per y[n, j]: in products in k order, then the bias, then the ReLU.
__global__ void __launch_bounds__(kThreads)
    dense_forward_naive_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                               float* __restrict__ y, int N, int in, int out, bool relu_out) {
  const int i = int(blockIdx.x) * kThreads + int(threadIdx.x);
  if (i >= N * out) return;
  const int n = i / out, j = i % out;
  float acc = 0.0f;
  for (int k = 0; k < in; ++k) acc += x[n * in + k] * w[j * in + k];
  const float z = acc + b[j];
  y[i] = relu_out ? pyregnet::relu(z) : z;
}

// One thread per dx[n, k] = sum over j of dy[n, j] w[j, k].
__global__ void __launch_bounds__(kThreads)
    dense_backward_data_naive_kernel(const float* __restrict__ w, const float* __restrict__ dy,
                                     float* __restrict__ dx, int N, int in, int out) {
  const int i = int(blockIdx.x) * kThreads + int(threadIdx.x);
  if (i >= N * in) return;
  const int n = i / in, k = i % in;
  float acc = 0.0f;
  for (int j = 0; j < out; ++j) acc += dy[n * out + j] * w[j * in + k];
  dx[i] = acc;
}

// One thread per dw[j, k] = sum over n of dy[n, j] x[n, k]: few threads with batch-long loops
// (the case the package splits k for).
__global__ void __launch_bounds__(kThreads)
    dense_backward_weight_naive_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                       float* __restrict__ dw, int N, int in, int out) {
  const int i = int(blockIdx.x) * kThreads + int(threadIdx.x);
  if (i >= out * in) return;
  const int j = i / in, k = i % in;
  float acc = 0.0f;
  for (int n = 0; n < N; ++n) acc += dy[n * out + j] * x[n * in + k];
  dw[i] = acc;
}

// One thread per db[j].
__global__ void __launch_bounds__(kThreads)
    dense_backward_bias_naive_kernel(const float* __restrict__ dy, float* __restrict__ db, int N, int out) {
  const int j = int(blockIdx.x) * kThreads + int(threadIdx.x);
  if (j >= out) return;
  float acc = 0.0f;
  for (int n = 0; n < N; ++n) acc += dy[n * out + j];
  db[j] = acc;
}

unsigned blocks_for(int64_t n) { return unsigned(std::max<int64_t>(1, dev::ceil_div(n, kThreads))); }

void forward_v1(const float* x, const float* w, const float* b, float* y, const DenseShape& s, bool relu_out) {
  if (y_size(s) == 0) return;
  dense_forward_naive_kernel<<<blocks_for(y_size(s)), kThreads>>>(x, w, b, y, int(s.N), int(s.in), int(s.out),
                                                                  relu_out);
  cudaCheckLaunch();
}

void backward_v1(const float* x, const float* w, const float* dy, float* dx, float* dw, float* db,
                 const DenseShape& s) {
  if (x_size(s) > 0) {
    dense_backward_data_naive_kernel<<<blocks_for(x_size(s)), kThreads>>>(w, dy, dx, int(s.N), int(s.in), int(s.out));
    cudaCheckLaunch();
  }
  if (w_size(s) > 0) {
    dense_backward_weight_naive_kernel<<<blocks_for(w_size(s)), kThreads>>>(x, dy, dw, int(s.N), int(s.in),
                                                                            int(s.out));
    cudaCheckLaunch();
  }
  if (s.out > 0) {
    dense_backward_bias_naive_kernel<<<blocks_for(s.out), kThreads>>>(dy, db, int(s.N), int(s.out));
    cudaCheckLaunch();
  }
}

#ifdef WITH_PACKAGE
// ---- version 2: the package ----------------------------------------------------------------

void forward_v2(const float* x, const float* w, const float* b, float* y, const DenseShape& s, bool relu_out) {
  pyregnet::cuda::dense_forward<float>(x, w, b, y, s, relu_out, nullptr);
}
void backward_v2(const float* x, const float* w, const float* dy, float* dx, float* dw, float* db,
                 const DenseShape& s) {
  pyregnet::cuda::dense_backward<float>(x, w, dy, dx, dw, db, s, nullptr);
}
#endif

// ---- harness -------------------------------------------------------------------------------

// |got - ref| <= rtol * (sum of |terms|): a float sum's rounding error scales with that sum, not
// with its (possibly cancelled) value. For products of uniform [-1, 1] data the error of a float
// sum stays within a few 1e-7 of that magnitude whatever the summation order or the number of
// terms (the conv2d harness measured under 2.4e-7 for 27 to 57,600 terms, serially; tiled and
// split-K orders only shorten the chains). 2e-6 leaves that room, yet a missing or doubled term
// is ~1/terms of the magnitude (at most 1/2304 = 4e-4 here) and fails by a factor of 200.
constexpr dev::Tolerance kTol{0.0, 2e-6};

struct Tensors {
  dev::DeviceBuffer<float> x, w, b, dy, y, dx, dw, db;
  Tensors(const DenseShape& s, const std::vector<float>& hx, const std::vector<float>& hw,
          const std::vector<float>& hb, const std::vector<float>& hdy)
      : x(hx), w(hw), b(hb), dy(hdy), y(size_t(y_size(s))), dx(size_t(x_size(s))), dw(size_t(w_size(s))),
        db(size_t(s.out)) {}
  void poison_outputs() {
    y.poison();
    dx.poison();
    dw.poison();
    db.poison();
  }
};

struct Case {
  std::string name;
  DenseShape s;
  bool relu_in_model;  // the layer's ReLU: the forward pass is timed with it when set
  bool timed;
};

struct Version {
  const char* name;
  void (*forward)(const float*, const float*, const float*, float*, const DenseShape&, bool);
  void (*backward)(const float*, const float*, const float*, float*, float*, float*, const DenseShape&);
};

int run_case(const Case& c, const std::vector<Version>& versions, double peak, double bw) {
  const DenseShape& s = c.s;
  std::printf("\n== %s: x (%lld,%lld) w (%lld,%lld) -> y (%lld,%lld) ==\n", c.name.c_str(), (long long)s.N,
              (long long)s.in, (long long)s.out, (long long)s.in, (long long)s.N, (long long)s.out);
  const uint64_t seed = dev::kSeed + uint64_t(x_size(s) * 31 + w_size(s) * 7 + s.out);
  const std::vector<float> hx = dev::random_floats(size_t(x_size(s)), -1.0f, 1.0f, seed);
  const std::vector<float> hw = dev::random_floats(size_t(w_size(s)), -1.0f, 1.0f, seed + 1);
  const std::vector<float> hb = dev::random_floats(size_t(s.out), -1.0f, 1.0f, seed + 2);
  const std::vector<float> hdy = dev::random_floats(size_t(y_size(s)), -1.0f, 1.0f, seed + 3);
  const DenseReference ref = dense_cpu(s, hx, hw, hb, hdy);
  Tensors t(s, hx, hw, hb, hdy);

  const size_t ny = size_t(y_size(s)), nx = size_t(x_size(s)), nw = size_t(w_size(s)), nb = size_t(s.out);
  const double flops = gemm_flops(s);
  const double fwd_bytes = 4.0 * double(nx + nw + nb + ny);
  const double bwd_bytes = 4.0 * double(nx + nw + ny + nx + nw + nb);
  const int repeats = 100;
  int failures = 0;

  for (const Version& v : versions) {
    std::printf("  %s\n", v.name);
    bool ok = true;
    for (bool relu_out : {false, true}) {
      t.poison_outputs();
      v.forward(t.x.get(), t.w.get(), t.b.get(), t.y.get(), s, relu_out);
      cudaCheck(cudaDeviceSynchronize());
      ok &= dev::validate_result(t.y.get(), relu_out ? ref.y_relu.data() : ref.y.data(), ny,
                                 relu_out ? "y (bias + ReLU)" : "y (bias)", kTol, ref.y_mag.data());
    }
    t.poison_outputs();
    v.backward(t.x.get(), t.w.get(), t.dy.get(), t.dx.get(), t.dw.get(), t.db.get(), s);
    cudaCheck(cudaDeviceSynchronize());
    ok &= dev::validate_result(t.dx.get(), ref.dx.data(), nx, "dx", kTol, ref.dx_mag.data());
    ok &= dev::validate_result(t.dw.get(), ref.dw.data(), nw, "dw", kTol, ref.dw_mag.data());
    ok &= dev::validate_result(t.db.get(), ref.db.data(), nb, "db", kTol, ref.db_mag.data());
    if (!ok) {
      ++failures;
      std::printf("  %s: WRONG, not timed\n", v.name);
      continue;
    }
    if (!c.timed) continue;
    dev::print_compute_rates(c.relu_in_model ? "forward (+bias+ReLU)" : "forward (+bias)", dev::benchmark_kernel(repeats, [&] {
                  v.forward(t.x.get(), t.w.get(), t.b.get(), t.y.get(), s, c.relu_in_model);
                }),
                flops, fwd_bytes, peak, bw);
    dev::print_compute_rates("backward (dx+dw+db)", dev::benchmark_kernel(repeats, [&] {
                  v.backward(t.x.get(), t.w.get(), t.dy.get(), t.dx.get(), t.dw.get(), t.db.get(), s);
                }),
                2.0 * flops + double(ny), bwd_bytes, peak, bw);
  }
  return failures;
}

}  // namespace

int main() {
  return dev::harness_main([&]() -> int {
    const double peak = dev::fp32_peak().used(), bw = dev::measured_copy_bandwidth();
    std::vector<Version> versions = {{"v1 naive (a thread per output)", forward_v1, backward_v1}};
#ifdef WITH_PACKAGE
    versions.push_back({"v2 package tiled GEMM", forward_v2, backward_v2});
#endif

    const std::vector<Case> cases = {
        {"dense1 (paper, batch 64)", DenseShape{64, 2304, 128}, true, true},
        {"dense2 (paper, batch 64)", DenseShape{64, 128, 10}, false, true},
        {"dense1 (eval batch 1000; split-K dw)", DenseShape{1000, 2304, 128}, true, true},
        {"dense2 (eval batch 1000; split-K dw)", DenseShape{1000, 128, 10}, false, true},
        {"N=1 (dense1 sizes)", DenseShape{1, 2304, 128}, true, false},
        {"odd in and out", DenseShape{3, 67, 65}, true, false},
        {"in = out = 1", DenseShape{7, 1, 1}, true, false},
        {"1 x 1 x 1", DenseShape{1, 1, 1}, false, false},
        {"M past two tiles, odd in", DenseShape{130, 129, 3}, true, false},
        {"uneven split-K (N = 777)", DenseShape{777, 33, 20}, false, false},
        {"empty batch (N = 0)", DenseShape{0, 5, 3}, false, false},
    };
    int failures = 0;
    for (const Case& c : cases) {
      if (x_size(c.s) >= (int64_t(1) << 31) || w_size(c.s) >= (int64_t(1) << 31)) {
        std::fprintf(stderr, "%s: too large for int indexing\n", c.name.c_str());
        return 1;
      }
      failures += run_case(c, versions, peak, bw);
    }
#ifndef WITH_PACKAGE
    std::printf("\n(v2, the package's dense, not built: compile with -DWITH_PACKAGE and csrc/cuda/dense.cu)\n");
#endif
    return failures;
  });
}
