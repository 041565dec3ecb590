// Element math of activation, penalty and optimizer: the one definition both backends call.
#pragma once
#include "math/hd.h"
#include "math/shapes.h"

namespace pyregnet {

// ReLU. NaN passes through (NaN < 0 is false) so that a diverging run shows up in the loss.
template <class T>
PYREGNET_HD T relu(T x) { return x < T(0) ? T(0) : x; }

// Backward from the forward output y: the gradient flows where the unit was active.
template <class T>
PYREGNET_HD T relu_grad(T y, T dy) { return y > T(0) ? dy : T(0); }

// sign with sign(0) = 0, the subgradient of |w| that leaves exact zeros at zero.
template <class T>
PYREGNET_HD T sign0(T x) { return T((x > T(0)) - (x < T(0))); }

// Gradient of l1*|w| + l2*w^2 (DESIGN.md §1: eq. 1-3, no factor 1/2 on the L2 term).
template <class T>
PYREGNET_HD T penalty_grad(T w, T l1, T l2) { return l1 * sign0(w) + T(2) * l2 * w; }

// Value of the same penalty for one weight, in double: the sum runs over up to 1e8 weights.
template <class T>
PYREGNET_HD double penalty_value(T w, double l1, double l2) {
  const double x = double(w);
  return l1 * (x < 0 ? -x : x) + l2 * x * x;
}

// Hyper-parameters of one Adam step. `step` (t, 1 for the first update) may live in device
// memory (a Counter), so that a captured CUDA graph advances it on every replay.
struct AdamStep {
  double lr, beta1, beta2, eps, l1, l2;
  Counter step;
};

// b^e for e >= 0 by repeated squaring: IEEE multiplications only, so host and device give the
// same bits (std::pow and CUDA's pow may differ in the last place).
PYREGNET_HD double power(double b, int64_t e) {
  double result = 1.0;
  for (; e > 0; e >>= 1, b *= b)
    if (e & 1) result *= b;
  return result;
}

// alpha_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t), Kingma & Ba's efficient form, in double,
// once per step (host) or once per thread (device) rather than once per element.
PYREGNET_HD double adam_alpha(const AdamStep& s, int64_t t) {
  return s.lr * sqrt(1.0 - power(s.beta2, t)) / (1.0 - power(s.beta1, t));
}

// One parameter's fused update: penalty gradient added to the data gradient (coupled, as
// Keras' kernel_regularizer does), then Adam with alpha = adam_alpha(s, t). `penalized` says
// whether this weight is a kernel weight (penalized) or a bias (not).
template <class T>
PYREGNET_HD void adam_element(T& w, T g, T& m, T& v, bool penalized, const AdamStep& s, T alpha) {
  if (penalized) g += penalty_grad(w, T(s.l1), T(s.l2));
  m = T(s.beta1) * m + T(1.0 - s.beta1) * g;
  v = T(s.beta2) * v + T(1.0 - s.beta2) * g * g;
  w -= alpha * m / (hd_sqrt(v) + T(s.eps));
}

}  // namespace pyregnet
