// Batch normalization and global average pooling: the per-channel statistics and the element
// math, the one definition both backends call. The backends differ only in how they form the
// per-channel sums (always in double, in an order fixed by the shape).
#pragma once
#include "math/hd.h"

namespace pyregnet {

// One channel's training-mode statistics from its M = N*H*W values x, given the sums in double
// about a shift that is one of those values (the channel's first): s1 = sum(x - shift),
// s2 = sum((x - shift)^2). One pass instead of two, and the cancellation in s2/M - (s1/M)^2 is
// bounded: (mean - shift)^2 <= (M - 1) var for any of the M values (Samuelson's inequality), so
// the variance keeps a relative error of about M * 2^-53 at worst (1.5e-11 for M = 131,072, a
// ResNet-20 batch of 128 at 32x32), and of order 2^-53 for a typical shift. The summations add
// theirs: at most (the longest chain of additions) * 2^-53 times the sum of |terms|, a chain of
// at most HW / 16 + 16 + N additions on the CPU (lanes of a plane, then planes) and fewer on the
// GPU. Both are far below float32's 6e-8.
struct BatchStats {
  double mean, var, invstd;  // var: biased (divided by M), the one that normalizes
};

PYREGNET_HD BatchStats batch_stats(double shift, double s1, double s2, double count, double eps) {
  const double d = s1 / count;
  double var = s2 / count - d * d;
  if (var < 0.0) var = 0.0;  // rounding; a NaN stays NaN and shows up in the loss
  return {shift + d, var, 1.0 / hd_sqrt(var + eps)};
}

// 1 / sqrt(var + eps) of the running variance, in evaluation mode.
PYREGNET_HD double batchnorm_invstd(double var, double eps) { return 1.0 / hd_sqrt(var + eps); }

// PyTorch's running-statistics convention: running = (1 - momentum) * running + momentum * batch,
// where the batch variance is the unbiased one, var * M / (M - 1) (M > 1: checked by the
// bindings).
PYREGNET_HD double running_update(double running, double batch, double momentum) {
  return (1.0 - momentum) * running + momentum * batch;
}
PYREGNET_HD double unbiased_var(double biased, double count) { return biased * count / (count - 1.0); }

// y = (x - mean) * (invstd * gamma) + beta, in the array's precision.
template <class T>
PYREGNET_HD T batchnorm_element(T x, T mean, T invstd, T gamma, T beta) {
  return (x - mean) * (invstd * gamma) + beta;
}

// The backward pass of one channel. With xhat = (x - mean) * invstd and the sums (double)
// sum_dy = sum(dy) and sum_dy_xmu = sum(dy * (x - mean)) over the channel's M values:
//   dbeta = sum_dy, dgamma = invstd * sum_dy_xmu,
//   training:   dx = gamma * invstd * (dy - sum_dy / M - xhat * invstd * sum_dy_xmu / M)
//                  = a * (dy - b) - c * (x - mean)
//   evaluation: the statistics are constants, dx = gamma * invstd * dy (b = c = 0).
struct BatchNormGrad {
  double a, b, c;
};

PYREGNET_HD BatchNormGrad batchnorm_grad_coefficients(double gamma, double invstd, double sum_dy,
                                                      double sum_dy_xmu, double count, bool training) {
  const double a = gamma * invstd;
  if (!training) return {a, 0.0, 0.0};
  return {a, sum_dy / count, a * invstd * invstd * sum_dy_xmu / count};
}

template <class T>
PYREGNET_HD T batchnorm_input_grad(T dy, T x, T mean, T a, T b, T c) {
  return a * (dy - b) - c * (x - mean);
}

// Global average pooling: y = sum / HW (the sum in double), dx = dy / HW, both divided in double
// so that the two backends round alike.
template <class T>
PYREGNET_HD T average(double sum, int64_t count) { return T(sum / double(count)); }
template <class T>
PYREGNET_HD T average_grad(T dy, int64_t count) { return T(double(dy) / double(count)); }

}  // namespace pyregnet
