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

// Gradient of l1*|w| + l2*w^2 (docs/design.md §1: eq. 1-3, no factor 1/2 on the L2 term).
template <class T>
PYREGNET_HD T penalty_grad(T w, T l1, T l2) { return l1 * sign0(w) + T(2) * l2 * w; }

// Value of the same penalty for one weight, in double: the sum runs over up to 1e8 weights.
template <class T>
PYREGNET_HD double penalty_value(T w, double l1, double l2) {
  const double x = double(w);
  return l1 * (x < 0 ? -x : x) + l2 * x * x;
}

// How the penalty enters an optimizer step. Coupled (proximal = false, the paper's and Keras'
// way): its (sub)gradient is added to the data gradient before the step. Proximal: the step
// sees the data gradient alone and each penalized weight z it produced is then replaced by
// the elastic-net proximal operator with step lr,
//   argmin_w (w - z)^2 / (2 lr) + l1 |w| + l2 w^2 = sign(z) max(|z| - lr l1, 0) / (1 + 2 lr l2),
// which sets weights exactly to zero under L1 and is decoupled weight decay under L2.
struct PenaltyRule {
  double l1, l2;
  bool proximal;
};

// The gradient the optimizer sees for one weight.
template <class T>
PYREGNET_HD T stepped_gradient(T g, T w, bool penalized, const PenaltyRule& p) {
  return penalized && !p.proximal ? g + penalty_grad(w, T(p.l1), T(p.l2)) : g;
}

// The weight after the proximal operator (or z itself when none applies). NaN stays NaN: a
// diverging run must still show up in the loss.
template <class T>
PYREGNET_HD T after_step(T z, bool penalized, const PenaltyRule& p, double lr) {
  if (!(penalized && p.proximal)) return z;
  const T shrunk = hd_abs(z) - T(lr * p.l1);
  return shrunk <= T(0) ? T(0) : sign0(z) * shrunk / T(1.0 + 2.0 * lr * p.l2);
}

// Hyper-parameters of one Adam step. `step` (t, 1 for the first update) may live in device
// memory (a Counter), so that a captured CUDA graph advances it on every replay.
struct AdamStep {
  double lr, beta1, beta2, eps;
  PenaltyRule penalty;
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

// One parameter's update: Adam with alpha = adam_alpha(s, t) on the gradient stepped_gradient
// gives. `penalized` says whether this weight is a kernel weight (penalized) or a bias (not).
template <class T>
PYREGNET_HD void adam_element(T& w, T g, T& m, T& v, bool penalized, const AdamStep& s, T alpha) {
  g = stepped_gradient(g, w, penalized, s.penalty);
  m = T(s.beta1) * m + T(1.0 - s.beta1) * g;
  v = T(s.beta2) * v + T(1.0 - s.beta2) * g * g;
  w = after_step(w - alpha * m / (hd_sqrt(v) + T(s.eps)), penalized, s.penalty, s.lr);
}

// Hyper-parameters of one step of SGD with momentum, PyTorch's form (no dampening, no Nesterov).
struct SgdStep {
  double lr, momentum;
  PenaltyRule penalty;
};

// buf = momentum buf + g', w -= lr buf, with g' from stepped_gradient. The first step, with
// buf = 0, gives buf = g' exactly, as PyTorch's buf = g.clone() does.
template <class T>
PYREGNET_HD void sgd_element(T& w, T g, T& buf, bool penalized, const SgdStep& s) {
  g = stepped_gradient(g, w, penalized, s.penalty);
  buf = T(s.momentum) * buf + g;
  w = after_step(w - T(s.lr) * buf, penalized, s.penalty, s.lr);
}

}  // namespace pyregnet
