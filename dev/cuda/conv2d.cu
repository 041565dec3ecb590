// conv2d, stride 1, zero padding `pad`, cross-correlation, NCHW, w (K, C, R, S): forward (with
// the fused bias and optional ReLU), backward-data (dx) and backward-filter (dw, db).
//
// Shape letters: N, C, H, W input; K output channels; R, S filter; P = H + 2 pad - R + 1,
// Q = W + 2 pad - S + 1 output.
//
// Cases: the paper's two layers at batch 64 (timed), conv1 x (64,3,32,32) w (32,3,3,3) and
// conv2 x (64,32,15,15) w (64,32,3,3), both 'valid'; then awkward sizes (validated only):
// N = 1, C = 1, odd H and W, padding 1, K past one 64-wide tile, a 1x1 and a non-square filter.
//
// Versions:
//   1  naive direct convolution: one thread per output element of each pass (y; dx; dw; db)
//   2  the package's implicit GEMMs: pyregnet::cuda::conv2d_forward / conv2d_backward<float>
//      (csrc/cuda/conv2d.cu, linked with -DWITH_PACKAGE). Its backward computes dx and dw+db
//      in one call; dx = nullptr skips dx (the first layer), which times the filter pass alone,
//      and the data pass is timed as the difference.
//
// Per pass: FLOPs = 2 N K P Q C R S (the direct convolution's multiply-adds), against the FP32
// peak; bytes = the tensors the pass must read and write once, against the measured copy
// bandwidth; the roofline time is the larger of the two.
//
// Build and run (see Makefile):  make conv2d && /tmp/pyregnet-dev-cuda/conv2d
// Without the package:           make conv2d_standalone
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

using pyregnet::ConvShape;

namespace {

constexpr int kThreads = 256;

ConvShape make_shape(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t pad) {
  return ConvShape{N, C, H, W, K, R, S, pad, 1, H + 2 * pad - R + 1, W + 2 * pad - S + 1};  // stride 1
}

int64_t x_size(const ConvShape& s) { return s.N * s.C * s.H * s.W; }
int64_t w_size(const ConvShape& s) { return s.K * s.C * s.R * s.S; }
int64_t y_size(const ConvShape& s) { return s.N * s.K * s.P * s.Q; }
double pass_flops(const ConvShape& s) { return 2.0 * double(y_size(s)) * double(s.C * s.R * s.S); }

// ---- CPU reference -------------------------------------------------------------------------

// Every pass in double, each output with the sum of the absolute values of its terms (the scale
// of its float rounding error; see kTol).
struct ConvReference {
  std::vector<double> y, y_relu, y_mag;  // forward: y = b + w * x, with and without the ReLU
  std::vector<double> dx, dx_mag;
  std::vector<double> dw, dw_mag;
  std::vector<double> db, db_mag;
};

// One loop nest over (n, k, p, q, c, r, s) visits every product w[k,c,r,s] * x[n,c,h,w] with
// its output-gradient partner dy[n,k,p,q] exactly once, so it accumulates all three passes
// straight from their definitions: y[n,k,p,q] += w x, dx[n,c,h,w] += w dy, dw[k,c,r,s] += dy x.
ConvReference conv2d_cpu(const ConvShape& s, const std::vector<float>& x, const std::vector<float>& w,
                         const std::vector<float>& b, const std::vector<float>& dy) {
  ConvReference ref;
  ref.y.assign(size_t(y_size(s)), 0.0);
  ref.y_mag.assign(size_t(y_size(s)), 0.0);
  ref.dx.assign(size_t(x_size(s)), 0.0);
  ref.dx_mag.assign(size_t(x_size(s)), 0.0);
  ref.dw.assign(size_t(w_size(s)), 0.0);
  ref.dw_mag.assign(size_t(w_size(s)), 0.0);
  ref.db.assign(size_t(s.K), 0.0);
  ref.db_mag.assign(size_t(s.K), 0.0);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t k = 0; k < s.K; ++k)
      for (int64_t p = 0; p < s.P; ++p)
        for (int64_t q = 0; q < s.Q; ++q) {
          const size_t yi = size_t(((n * s.K + k) * s.P + p) * s.Q + q);
          const double g = dy[yi];
          double acc = 0.0, mag = 0.0;
          for (int64_t c = 0; c < s.C; ++c)
            for (int64_t r = 0; r < s.R; ++r) {
              const int64_t h = p + r - s.pad;
              if (h < 0 || h >= s.H) continue;
              for (int64_t t = 0; t < s.S; ++t) {
                const int64_t col = q + t - s.pad;
                if (col < 0 || col >= s.W) continue;
                const size_t xi = size_t(((n * s.C + c) * s.H + h) * s.W + col);
                const size_t wi = size_t(((k * s.C + c) * s.R + r) * s.S + t);
                const double xv = x[xi], wv = w[wi];
                acc += wv * xv;
                mag += std::fabs(wv * xv);
                ref.dx[xi] += wv * g;
                ref.dx_mag[xi] += std::fabs(wv * g);
                ref.dw[wi] += g * xv;
                ref.dw_mag[wi] += std::fabs(g * xv);
              }
            }
          ref.y[yi] = acc + b[size_t(k)];
          ref.y_mag[yi] = mag + std::fabs(double(b[size_t(k)]));
          ref.db[size_t(k)] += g;
          ref.db_mag[size_t(k)] += std::fabs(g);
        }
  ref.y_relu.resize(ref.y.size());
  for (size_t i = 0; i < ref.y.size(); ++i) ref.y_relu[i] = pyregnet::relu(ref.y[i]);
  return ref;
}

// ---- version 1: naive direct convolution ---------------------------------------------------

// ConvShape as int (every tensor here is far below 2^31 elements; checked in main).
struct Dims {
  int N, C, H, W, K, R, S, pad, P, Q;
  explicit Dims(const ConvShape& s)
      : N(int(s.N)), C(int(s.C)), H(int(s.H)), W(int(s.W)), K(int(s.K)), R(int(s.R)), S(int(s.S)),
        pad(int(s.pad)), P(int(s.P)), Q(int(s.Q)) {}
};

// One thread per y[n, k, p, q]: the C R S taps in order, then the bias, then the ReLU.
__global__ void __launch_bounds__(kThreads)
    conv_forward_naive_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                              float* __restrict__ y, Dims d, bool relu_out) {
  const int i = int(blockIdx.x) * kThreads + int(threadIdx.x);
  if (i >= d.N * d.K * d.P * d.Q) return;
  const int q = i % d.Q, p = i / d.Q % d.P, k = i / (d.P * d.Q) % d.K, n = i / (d.K * d.P * d.Q);
  float acc = 0.0f;
  for (int c = 0; c < d.C; ++c)
    for (int r = 0; r < d.R; ++r) {
      const int h = p + r - d.pad;
      if (h < 0 || h >= d.H) continue;
      for (int s = 0; s < d.S; ++s) {
        const int col = q + s - d.pad;
        if (col < 0 || col >= d.W) continue;
        acc += w[((k * d.C + c) * d.R + r) * d.S + s] * x[((n * d.C + c) * d.H + h) * d.W + col];
      }
    }
  const float z = acc + b[k];
  y[i] = relu_out ? pyregnet::relu(z) : z;
}

// One thread per dx[n, c, h, w]: the outputs whose window put (h, w) under tap (r, s) are
// p = h + pad - r, q = w + pad - s.
__global__ void __launch_bounds__(kThreads)
    conv_backward_data_naive_kernel(const float* __restrict__ w, const float* __restrict__ dy,
                                    float* __restrict__ dx, Dims d) {
  const int i = int(blockIdx.x) * kThreads + int(threadIdx.x);
  if (i >= d.N * d.C * d.H * d.W) return;
  const int col = i % d.W, h = i / d.W % d.H, c = i / (d.H * d.W) % d.C, n = i / (d.C * d.H * d.W);
  float acc = 0.0f;
  for (int k = 0; k < d.K; ++k)
    for (int r = 0; r < d.R; ++r) {
      const int p = h + d.pad - r;
      if (p < 0 || p >= d.P) continue;
      for (int s = 0; s < d.S; ++s) {
        const int q = col + d.pad - s;
        if (q < 0 || q >= d.Q) continue;
        acc += w[((k * d.C + c) * d.R + r) * d.S + s] * dy[((n * d.K + k) * d.P + p) * d.Q + q];
      }
    }
  dx[i] = acc;
}

// One thread per dw[k, c, r, s]: a sum over all N P Q output pixels, so few threads with long
// loops (864 threads of 57,600 terms for conv1): the case the package's split-K addresses.
__global__ void __launch_bounds__(kThreads)
    conv_backward_filter_naive_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                      float* __restrict__ dw, Dims d) {
  const int i = int(blockIdx.x) * kThreads + int(threadIdx.x);
  if (i >= d.K * d.C * d.R * d.S) return;
  const int s = i % d.S, r = i / d.S % d.R, c = i / (d.R * d.S) % d.C, k = i / (d.C * d.R * d.S);
  float acc = 0.0f;
  for (int n = 0; n < d.N; ++n)
    for (int p = 0; p < d.P; ++p) {
      const int h = p + r - d.pad;
      if (h < 0 || h >= d.H) continue;
      for (int q = 0; q < d.Q; ++q) {
        const int col = q + s - d.pad;
        if (col < 0 || col >= d.W) continue;
        acc += dy[((n * d.K + k) * d.P + p) * d.Q + q] * x[((n * d.C + c) * d.H + h) * d.W + col];
      }
    }
  dw[i] = acc;
}

// One thread per db[k].
__global__ void __launch_bounds__(kThreads)
    conv_backward_bias_naive_kernel(const float* __restrict__ dy, float* __restrict__ db, Dims d) {
  const int k = int(blockIdx.x) * kThreads + int(threadIdx.x);
  if (k >= d.K) return;
  float acc = 0.0f;
  for (int n = 0; n < d.N; ++n)
    for (int pq = 0; pq < d.P * d.Q; ++pq) acc += dy[(n * d.K + k) * d.P * d.Q + pq];
  db[k] = acc;
}

unsigned blocks_for(int64_t n) { return unsigned(std::max<int64_t>(1, dev::ceil_div(n, kThreads))); }

void forward_v1(const float* x, const float* w, const float* b, float* y, const ConvShape& s, bool relu_out) {
  if (y_size(s) == 0) return;
  conv_forward_naive_kernel<<<blocks_for(y_size(s)), kThreads>>>(x, w, b, y, Dims(s), relu_out);
  cudaCheckLaunch();
}
void backward_data_v1(const float* w, const float* dy, float* dx, const ConvShape& s) {
  if (x_size(s) == 0) return;
  conv_backward_data_naive_kernel<<<blocks_for(x_size(s)), kThreads>>>(w, dy, dx, Dims(s));
  cudaCheckLaunch();
}
void backward_filter_v1(const float* x, const float* dy, float* dw, float* db, const ConvShape& s) {
  if (w_size(s) > 0) {
    conv_backward_filter_naive_kernel<<<blocks_for(w_size(s)), kThreads>>>(x, dy, dw, Dims(s));
    cudaCheckLaunch();
  }
  conv_backward_bias_naive_kernel<<<blocks_for(s.K), kThreads>>>(dy, db, Dims(s));
  cudaCheckLaunch();
}

// ---- harness -------------------------------------------------------------------------------

// |got - ref| <= rtol * (sum of |terms|): a float sum's rounding error scales with that sum,
// not with its (possibly cancelled) value. Simulated serial float sums of products of
// uniform [-1, 1] data (27 to 57,600 terms) stay under 2.4e-7 of it; 2e-6 leaves room for other
// summation orders (tiles, split-K) yet catches one missing or doubled term even in conv1's
// 57,600-term filter gradient (a term is ~1/(4 x 57,600) = 4e-6 of the sum there).
constexpr dev::Tolerance kTol{0.0, 2e-6};

struct Tensors {
  dev::DeviceBuffer<float> x, w, b, dy, y, dx, dw, db;
  Tensors(const ConvShape& s, const std::vector<float>& hx, const std::vector<float>& hw,
          const std::vector<float>& hb, const std::vector<float>& hdy)
      : x(hx), w(hw), b(hb), dy(hdy), y(size_t(y_size(s))), dx(size_t(x_size(s))), dw(size_t(w_size(s))),
        db(size_t(s.K)) {}
  void poison_outputs() {
    y.poison();
    dx.poison();
    dw.poison();
    db.poison();
  }
};

struct Case {
  std::string name;
  ConvShape s;
  bool timed;
};

int run_case(const Case& c, double peak, double bw) {
  const ConvShape& s = c.s;
  std::printf("\n== %s: x (%lld,%lld,%lld,%lld) w (%lld,%lld,%lld,%lld) pad %lld -> y (%lld,%lld,%lld,%lld) ==\n",
              c.name.c_str(), (long long)s.N, (long long)s.C, (long long)s.H, (long long)s.W, (long long)s.K,
              (long long)s.C, (long long)s.R, (long long)s.S, (long long)s.pad, (long long)s.N, (long long)s.K,
              (long long)s.P, (long long)s.Q);
  const uint64_t seed = dev::kSeed + uint64_t(x_size(s) * 31 + w_size(s));
  const std::vector<float> hx = dev::random_floats(size_t(x_size(s)), -1.0f, 1.0f, seed);
  const std::vector<float> hw = dev::random_floats(size_t(w_size(s)), -1.0f, 1.0f, seed + 1);
  const std::vector<float> hb = dev::random_floats(size_t(s.K), -1.0f, 1.0f, seed + 2);
  const std::vector<float> hdy = dev::random_floats(size_t(y_size(s)), -1.0f, 1.0f, seed + 3);
  const ConvReference ref = conv2d_cpu(s, hx, hw, hb, hdy);
  Tensors t(s, hx, hw, hb, hdy);

  const size_t ny = size_t(y_size(s)), nx = size_t(x_size(s)), nw = size_t(w_size(s)), nk = size_t(s.K);
  const auto check_forward = [&](bool relu_out) {
    return dev::validate_result(t.y.get(), relu_out ? ref.y_relu.data() : ref.y.data(), ny,
                                relu_out ? "y (bias + ReLU)" : "y (bias)", kTol, ref.y_mag.data());
  };
  const auto check_filter = [&] {
    bool ok = dev::validate_result(t.dw.get(), ref.dw.data(), nw, "dw", kTol, ref.dw_mag.data());
    ok &= dev::validate_result(t.db.get(), ref.db.data(), nk, "db", kTol, ref.db_mag.data());
    return ok;
  };
  const auto check_data = [&] {
    return dev::validate_result(t.dx.get(), ref.dx.data(), nx, "dx", kTol, ref.dx_mag.data());
  };

  const double flops = pass_flops(s);
  const double fwd_bytes = 4.0 * double(nx + nw + nk + ny);
  const double data_bytes = 4.0 * double(ny + nw + nx);
  const double filter_bytes = 4.0 * double(ny + nx + nw + nk);
  const int repeats = 50;
  int failures = 0;

  // Version 1.
  {
    std::printf("  v1 naive direct\n");
    bool ok = true;
    for (bool relu_out : {false, true}) {
      t.poison_outputs();
      forward_v1(t.x.get(), t.w.get(), t.b.get(), t.y.get(), s, relu_out);
      cudaCheck(cudaDeviceSynchronize());
      ok &= check_forward(relu_out);
    }
    t.poison_outputs();
    backward_data_v1(t.w.get(), t.dy.get(), t.dx.get(), s);
    backward_filter_v1(t.x.get(), t.dy.get(), t.dw.get(), t.db.get(), s);
    cudaCheck(cudaDeviceSynchronize());
    ok &= check_data();
    ok &= check_filter();
    if (!ok) {
      ++failures;
      std::printf("  v1: WRONG, not timed\n");
    } else if (c.timed) {
      dev::print_compute_rates("v1 forward (+bias+ReLU)",
                  dev::benchmark_kernel(repeats, [&] { forward_v1(t.x.get(), t.w.get(), t.b.get(), t.y.get(), s, true); }),
                  flops, fwd_bytes, peak, bw);
      dev::print_compute_rates("v1 backward-data (dx)",
                  dev::benchmark_kernel(repeats, [&] { backward_data_v1(t.w.get(), t.dy.get(), t.dx.get(), s); }), flops,
                  data_bytes, peak, bw);
      dev::print_compute_rates("v1 backward-filter (dw+db)", dev::benchmark_kernel(repeats, [&] {
                    backward_filter_v1(t.x.get(), t.dy.get(), t.dw.get(), t.db.get(), s);
                  }),
                  flops, filter_bytes, peak, bw);
    }
  }

#ifdef WITH_PACKAGE
  // Version 2: the package.
  {
    using pyregnet::cuda::Stream;
    const Stream st = nullptr;  // the legacy default stream, where the events are recorded
    std::printf("  v2 package implicit GEMM\n");
    bool ok = true;
    for (bool relu_out : {false, true}) {
      t.poison_outputs();
      pyregnet::cuda::conv2d_forward<float>(t.x.get(), t.w.get(), t.b.get(), t.y.get(), s, relu_out, st);
      cudaCheck(cudaDeviceSynchronize());
      ok &= check_forward(relu_out);
    }
    t.poison_outputs();
    pyregnet::cuda::conv2d_backward<float>(t.x.get(), t.w.get(), t.dy.get(), t.dx.get(), t.dw.get(), t.db.get(), s, st);
    cudaCheck(cudaDeviceSynchronize());
    ok &= check_data();
    ok &= check_filter();
    std::printf("    (dx = nullptr: the filter gradient alone)\n");
    t.poison_outputs();
    pyregnet::cuda::conv2d_backward<float>(t.x.get(), t.w.get(), t.dy.get(), nullptr, t.dw.get(), t.db.get(), s, st);
    cudaCheck(cudaDeviceSynchronize());
    ok &= check_filter();
    if (!ok) {
      ++failures;
      std::printf("  v2: WRONG, not timed\n");
    } else if (c.timed) {
      dev::print_compute_rates("v2 forward (+bias+ReLU)", dev::benchmark_kernel(repeats, [&] {
                    pyregnet::cuda::conv2d_forward<float>(t.x.get(), t.w.get(), t.b.get(), t.y.get(), s, true, st);
                  }),
                  flops, fwd_bytes, peak, bw);
      const dev::Timing filter = dev::benchmark_kernel(repeats, [&] {
        pyregnet::cuda::conv2d_backward<float>(t.x.get(), t.w.get(), t.dy.get(), nullptr, t.dw.get(), t.db.get(), s, st);
      });
      const dev::Timing both = dev::benchmark_kernel(repeats, [&] {
        pyregnet::cuda::conv2d_backward<float>(t.x.get(), t.w.get(), t.dy.get(), t.dx.get(), t.dw.get(), t.db.get(), s,
                                               st);
      });
      dev::print_compute_rates("v2 backward-filter (dw+db, dx=null)", filter, flops, filter_bytes, peak, bw);
      dev::print_compute_rates("v2 backward (dx+dw+db)", both, 2.0 * flops, data_bytes + filter_bytes, peak, bw);
      // Medians subtract; the spread of a difference is not meaningful, so only the median.
      dev::Timing data = both;
      data.median_ms = both.median_ms - filter.median_ms;
      data.min_ms = data.p10_ms = data.p90_ms = data.median_ms;
      dev::print_compute_rates("v2 backward-data (dx) = both - filter", data, flops, data_bytes, peak, bw);
    }
  }
#endif
  return failures;
}

}  // namespace

int main() {
  return dev::harness_main([&]() -> int {
    const double peak = dev::fp32_peak().used(), bw = dev::measured_copy_bandwidth();

    const std::vector<Case> cases = {
        {"conv1 (paper, batch 64)", make_shape(64, 3, 32, 32, 32, 3, 3, 0), true},
        {"conv2 (paper, batch 64)", make_shape(64, 32, 15, 15, 64, 3, 3, 0), true},
        {"N=1, C=1, odd H W, pad 1", make_shape(1, 1, 7, 5, 3, 3, 3, 1), false},
        {"odd everything, pad 1", make_shape(3, 5, 9, 11, 7, 3, 3, 1), false},
        {"K=65 (past one tile), odd H W", make_shape(2, 3, 33, 31, 65, 3, 3, 0), false},
        {"1x1 filter, C R S = 70", make_shape(2, 70, 5, 6, 3, 1, 1, 0), false},
        {"non-square 2x3 filter, pad 1", make_shape(1, 2, 6, 7, 4, 2, 3, 1), false},
        {"filter covers the image (P = Q = 1)", make_shape(4, 3, 3, 3, 5, 3, 3, 0), false},
    };
    int failures = 0;
    for (const Case& c : cases) {
      if (x_size(c.s) >= (int64_t(1) << 31) || y_size(c.s) >= (int64_t(1) << 31)) {
        std::fprintf(stderr, "%s: too large for int indexing\n", c.name.c_str());
        return 1;
      }
      failures += run_case(c, peak, bw);
    }
#ifndef WITH_PACKAGE
    std::printf("\n(v2, the package's conv2d, not built: compile with -DWITH_PACKAGE and csrc/cuda/conv2d.cu)\n");
#endif
    return failures;
  });
}
