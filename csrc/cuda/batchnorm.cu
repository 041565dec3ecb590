// Batch normalization over (N, C, H, W) on the GPU, statistics per channel c over its
// M = N * HW values (HW = H * W). Element math and statistics: math/batchnorm.h.
//
// Each per-channel sum is deterministic, with no atomics: a grid of (C, splits) blocks writes one
// partial sum per block (the block's contiguous share of the channel's values, each thread's
// strided part in index order, then block_sum's fixed tree), and one block per channel adds the
// partials in order. `splits` depends on M alone, so the same input gives the same bits.
//   forward (training)  partials of (x - shift, (x - shift)^2) -> statistics, running update
//                       -> normalize (3 launches);
//   forward (eval)      invstd of the running variance -> normalize (2 launches);
//   backward            partials of (dy, dy * (x - mean)) -> dgamma, dbeta and the dx
//                       coefficients -> dx (3 launches).
// The bindings keep x under 2^31 elements, so indices are ints.
#include <algorithm>

#include "core/backend.h"
#include "cuda/block_reduce.cuh"
#include "cuda/check.cuh"
#include "cuda/divmod.cuh"
#include "cuda/scratch.cuh"
#include "cuda/sum_over.cuh"
#include "math/batchnorm.h"

namespace pyregnet::cuda {
namespace {

// At most this many partial sums per channel; a channel gets one per 4096 values, enough blocks
// to fill the GPU for ResNet-20's shapes (C = 16..64) without making the final sums long.
constexpr int kMaxSplits = 64;
constexpr int kChannelThreads = 64;  // >= kMaxSplits, a multiple of 32 (block_sum)

struct ChannelGeometry {
  int C, HW, count, splits;
  DivMod by_HW, by_C;

  explicit ChannelGeometry(const ChannelShape& s)
      : C(int(s.C)), HW(int(s.HW)), count(int(s.N * s.HW)),
        splits(int(std::clamp<int64_t>(s.N * s.HW / 4096, 1, kMaxSplits))), by_HW(int(s.HW)), by_C(int(s.C)) {}

  // Channel of the element at flat index e of x.
  __device__ __forceinline__ int channel(int e) const {
    int n, c;
    by_C.divmod(by_HW.div(e), n, c);
    return c;
  }
};

// partial[(c * splits + split) * 2 + {0, 1}] = the two sums of terms.at(c) over the split's
// share of channel c; terms.at(c) is a functor adding the terms of element (n, c, i) to (a, b).
template <class Terms>
__global__ void __launch_bounds__(kBlockThreads)
    channel_partials_kernel(const Terms terms, const ChannelGeometry g, double* const partial) {
  const int c = int(blockIdx.x), split = int(blockIdx.y);  // channels in x: more than 65,535 allowed
  const int begin = int(int64_t(g.count) * split / g.splits), end = int(int64_t(g.count) * (split + 1) / g.splits);
  const auto add = terms.at(c);
  double a = 0.0, b = 0.0;
  for (int64_t e = begin + int64_t(threadIdx.x); e < end; e += kBlockThreads) {  // int64: no overflow near 2^31
    int n, i;
    g.by_HW.divmod(int(e), n, i);
    add((n * g.C + c) * g.HW + i, a, b);
  }
  a = block_sum(a);
  b = block_sum(b);
  if (threadIdx.x == 0) {
    partial[(c * g.splits + split) * 2] = a;
    partial[(c * g.splits + split) * 2 + 1] = b;
  }
}

// finish(c, a, b) with the channel's two sums, the partials added in split order.
template <class Finish>
__global__ void __launch_bounds__(kChannelThreads)
    channel_finish_kernel(const Finish finish, const double* const partial, const int splits) {
  const int c = int(blockIdx.x), t = int(threadIdx.x);
  const double a = block_sum(t < splits ? partial[(c * splits + t) * 2] : 0.0);
  const double b = block_sum(t < splits ? partial[(c * splits + t) * 2 + 1] : 0.0);
  if (t == 0) finish(c, a, b);
}

// Both sums of every channel, then finish(c, a, b) per channel.
template <class Terms, class Finish>
void channel_reduce(const Terms& terms, const Finish& finish, const ChannelGeometry& g, cudaStream_t st,
                    const char* what) {
  Scratch<double> partial(int64_t(g.C) * g.splits * 2, st, what);
  channel_partials_kernel<<<dim3(unsigned(g.C), unsigned(g.splits)), kBlockThreads, 0, st>>>(terms, g, partial.get());
  check_launch(what);
  channel_finish_kernel<<<unsigned(g.C), kChannelThreads, 0, st>>>(finish, partial.get(), g.splits);
  check_launch(what);
}

// ---- forward -----------------------------------------------------------------------------

// (x - shift, (x - shift)^2), shift = x[0, c, 0, 0].
template <class T>
struct MomentTerms {
  const T* x;
  int HW;
  struct Add {
    const T* x;
    double shift;
    __device__ void operator()(int e, double& a, double& b) const {
      const double d = double(x[e]) - shift;
      a += d;
      b += d * d;
    }
  };
  __device__ Add at(int c) const { return {x, double(x[c * HW])}; }
};

template <class T>
struct TrainStats {
  const T* x;
  T *running_mean, *running_var, *mean, *invstd;
  int HW;
  double count, momentum, eps;
  __device__ void operator()(int c, double s1, double s2) const {
    const BatchStats st = batch_stats(double(x[c * HW]), s1, s2, count, eps);
    mean[c] = T(st.mean);
    invstd[c] = T(st.invstd);
    running_mean[c] = T(running_update(double(running_mean[c]), st.mean, momentum));
    running_var[c] = T(running_update(double(running_var[c]), unbiased_var(st.var, count), momentum));
  }
};

template <class T>
struct EvalStats {
  const T *running_mean, *running_var;
  T *mean, *invstd;
  double eps;
  __device__ void operator()(int64_t c) const {
    mean[c] = running_mean[c];
    invstd[c] = T(batchnorm_invstd(double(running_var[c]), eps));
  }
};

template <class T>
struct Normalize {
  const T *x, *gamma, *beta, *mean, *invstd;
  T* y;
  ChannelGeometry g;
  __device__ void operator()(int64_t i) const {
    const int e = int(i), c = g.channel(e);
    y[e] = batchnorm_element(x[e], mean[c], invstd[c], gamma[c], beta[c]);
  }
};

// ---- backward ----------------------------------------------------------------------------

// (dy, dy * (x - mean))
template <class T>
struct GradTerms {
  const T *x, *dy, *mean;
  struct Add {
    const T *x, *dy;
    double mean;
    __device__ void operator()(int e, double& a, double& b) const {
      const double d = double(dy[e]);
      a += d;
      b += d * (double(x[e]) - mean);
    }
  };
  __device__ Add at(int c) const { return {x, dy, double(mean[c])}; }
};

// dgamma, dbeta and the dx coefficients (a, b, c) of each channel, coef[3 * c + {0, 1, 2}].
template <class T>
struct GradFinish {
  const T *gamma, *invstd;
  T *dgamma, *dbeta, *coef;
  double count;
  bool training;
  __device__ void operator()(int c, double sum_dy, double sum_dy_xmu) const {
    dbeta[c] = T(sum_dy);
    dgamma[c] = T(double(invstd[c]) * sum_dy_xmu);
    const BatchNormGrad k =
        batchnorm_grad_coefficients(double(gamma[c]), double(invstd[c]), sum_dy, sum_dy_xmu, count, training);
    coef[3 * c] = T(k.a);
    coef[3 * c + 1] = T(k.b);
    coef[3 * c + 2] = T(k.c);
  }
};

template <class T>
struct InputGrad {
  const T *x, *dy, *mean, *coef;
  T* dx;
  ChannelGeometry g;
  __device__ void operator()(int64_t i) const {
    const int e = int(i), c = g.channel(e);
    dx[e] = batchnorm_input_grad(dy[e], x[e], mean[c], coef[3 * c], coef[3 * c + 1], coef[3 * c + 2]);
  }
};

}  // namespace

template <class T>
void batchnorm_forward(const T* x, const T* gamma, const T* beta, T* running_mean, T* running_var, T* y, T* mean,
                       T* invstd, const ChannelShape& s, const BatchNormParams& p, Stream stream) {
  const cudaStream_t st = as_cuda_stream(stream);
  const ChannelGeometry g(s);
  if (p.training) {
    channel_reduce(MomentTerms<T>{x, g.HW},
                   TrainStats<T>{x, running_mean, running_var, mean, invstd, g.HW, double(g.count), p.momentum, p.eps},
                   g, st, "batchnorm_forward");
  } else {
    for_each(EvalStats<T>{running_mean, running_var, mean, invstd, p.eps}, s.C, st, "batchnorm_forward");
  }
  for_each(Normalize<T>{x, gamma, beta, mean, invstd, y, g}, s.N * s.C * s.HW, st, "batchnorm_forward");
}

template <class T>
void batchnorm_backward(const T* x, const T* gamma, const T* dy, const T* mean, const T* invstd, T* dx, T* dgamma,
                        T* dbeta, const ChannelShape& s, bool training, Stream stream) {
  const cudaStream_t st = as_cuda_stream(stream);
  const ChannelGeometry g(s);
  Scratch<T> coef(3 * s.C, st, "batchnorm_backward");
  channel_reduce(GradTerms<T>{x, dy, mean},
                 GradFinish<T>{gamma, invstd, dgamma, dbeta, coef.get(), double(g.count), training}, g, st,
                 "batchnorm_backward");
  for_each(InputGrad<T>{x, dy, mean, coef.get(), dx, g}, s.N * s.C * s.HW, st, "batchnorm_backward");
}

template void batchnorm_forward<float>(const float*, const float*, const float*, float*, float*, float*, float*,
                                       float*, const ChannelShape&, const BatchNormParams&, Stream);
template void batchnorm_forward<double>(const double*, const double*, const double*, double*, double*, double*,
                                        double*, double*, const ChannelShape&, const BatchNormParams&, Stream);
template void batchnorm_backward<float>(const float*, const float*, const float*, const float*, const float*, float*,
                                        float*, float*, const ChannelShape&, bool, Stream);
template void batchnorm_backward<double>(const double*, const double*, const double*, const double*, const double*,
                                         double*, double*, double*, const ChannelShape&, bool, Stream);

}  // namespace pyregnet::cuda
