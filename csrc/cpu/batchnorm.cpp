// Batch normalization over (N, C, H, W) on the CPU, statistics per channel c over its
// M = N * HW values (HW = H * W). Element math and statistics: math/batchnorm.h.
//
// Every per-channel sum is formed in double in a fixed order: each (n, c) plane by one thread
// (lane_sum), then the N planes of a channel in order of n. The bits do not depend on the number
// of threads, so training stays bitwise reproducible.
#include <vector>

#include "core/backend.h"
#include "cpu/chunked_sum.h"
#include "cpu/fp_mode.h"
#include "math/batchnorm.h"

namespace pyregnet::cpu {
namespace {

// a[c], b[c] = sums over the channel's planes of the pair plane(nc, c) -> (double, double)
// returns for plane nc = n * C + c.
template <class Plane>
void channel_sums(const ChannelShape& s, const Plane& plane, std::vector<double>& a, std::vector<double>& b) {
  const int64_t planes = s.N * s.C;
  std::vector<double> pa(planes), pb(planes);
  parallel([&] {
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < planes; ++nc) plane(nc, nc % s.C, pa[nc], pb[nc]);
  });
  a.assign(s.C, 0.0);
  b.assign(s.C, 0.0);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t c = 0; c < s.C; ++c) {
      a[c] += pa[n * s.C + c];
      b[c] += pb[n * s.C + c];
    }
}

// f(nc, c) for every plane, in parallel.
template <class F>
void each_plane(const ChannelShape& s, const F& f) {
  parallel([&] {
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < s.N * s.C; ++nc) f(nc, nc % s.C);
  });
}

}  // namespace

template <class T>
void batchnorm_forward(const T* x, const T* gamma, const T* beta, T* running_mean, T* running_var, T* y, T* mean,
                       T* invstd, const ChannelShape& s, const BatchNormParams& p) {
  const double count = double(s.N * s.HW);
  if (p.training) {
    std::vector<double> s1, s2;
    channel_sums(s, [&](int64_t nc, int64_t c, double& a, double& b) {
      const T* xp = x + nc * s.HW;
      const double shift = double(x[c * s.HW]);  // the channel's first value, x[0, c, 0, 0]
      a = lane_sum(0, s.HW, [&](int64_t i) { return double(xp[i]) - shift; });
      b = lane_sum(0, s.HW, [&](int64_t i) {
        const double d = double(xp[i]) - shift;
        return d * d;
      });
    }, s1, s2);
    for (int64_t c = 0; c < s.C; ++c) {
      const BatchStats st = batch_stats(double(x[c * s.HW]), s1[c], s2[c], count, p.eps);
      mean[c] = T(st.mean);
      invstd[c] = T(st.invstd);
      running_mean[c] = T(running_update(double(running_mean[c]), st.mean, p.momentum));
      running_var[c] = T(running_update(double(running_var[c]), unbiased_var(st.var, count), p.momentum));
    }
  } else {
    for (int64_t c = 0; c < s.C; ++c) {
      mean[c] = running_mean[c];
      invstd[c] = T(batchnorm_invstd(double(running_var[c]), p.eps));
    }
  }
  each_plane(s, [&](int64_t nc, int64_t c) {
    const T* xp = x + nc * s.HW;
    T* yp = y + nc * s.HW;
    const T m = mean[c], is = invstd[c], g = gamma[c], b = beta[c];
#pragma omp simd
    for (int64_t i = 0; i < s.HW; ++i) yp[i] = batchnorm_element(xp[i], m, is, g, b);
  });
}

template <class T>
void batchnorm_backward(const T* x, const T* gamma, const T* dy, const T* mean, const T* invstd, T* dx, T* dgamma,
                        T* dbeta, const ChannelShape& s, bool training) {
  std::vector<double> sum_dy, sum_dy_xmu;
  channel_sums(s, [&](int64_t nc, int64_t c, double& a, double& b) {
    const T* xp = x + nc * s.HW;
    const T* dyp = dy + nc * s.HW;
    const double m = double(mean[c]);
    a = lane_sum(0, s.HW, [&](int64_t i) { return double(dyp[i]); });
    b = lane_sum(0, s.HW, [&](int64_t i) { return double(dyp[i]) * (double(xp[i]) - m); });
  }, sum_dy, sum_dy_xmu);
  std::vector<T> ka(s.C), kb(s.C), kc(s.C);
  for (int64_t c = 0; c < s.C; ++c) {
    dbeta[c] = T(sum_dy[c]);
    dgamma[c] = T(double(invstd[c]) * sum_dy_xmu[c]);
    const BatchNormGrad k = batchnorm_grad_coefficients(double(gamma[c]), double(invstd[c]), sum_dy[c],
                                                        sum_dy_xmu[c], double(s.N * s.HW), training);
    ka[c] = T(k.a);
    kb[c] = T(k.b);
    kc[c] = T(k.c);
  }
  each_plane(s, [&](int64_t nc, int64_t c) {
    const T* xp = x + nc * s.HW;
    const T* dyp = dy + nc * s.HW;
    T* dxp = dx + nc * s.HW;
    const T m = mean[c], a = ka[c], b = kb[c], k = kc[c];
#pragma omp simd
    for (int64_t i = 0; i < s.HW; ++i) dxp[i] = batchnorm_input_grad(dyp[i], xp[i], m, a, b, k);
  });
}

template void batchnorm_forward<float>(const float*, const float*, const float*, float*, float*, float*, float*,
                                       float*, const ChannelShape&, const BatchNormParams&);
template void batchnorm_forward<double>(const double*, const double*, const double*, double*, double*, double*,
                                        double*, double*, const ChannelShape&, const BatchNormParams&);
template void batchnorm_backward<float>(const float*, const float*, const float*, const float*, const float*, float*,
                                        float*, float*, const ChannelShape&, bool);
template void batchnorm_backward<double>(const double*, const double*, const double*, const double*, const double*,
                                         double*, double*, double*, const ChannelShape&, bool);

}  // namespace pyregnet::cpu
