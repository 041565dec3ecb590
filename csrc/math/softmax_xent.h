// Softmax cross-entropy of one row of logits: the one definition both backends call.
#pragma once
#include "math/hd.h"
#include "math/int_array.h"

namespace pyregnet {

struct XentRow {
  double loss;   // logsumexp(z) - z[label]
  bool correct;  // argmax(z) == label, the first maximum winning ties (as numpy.argmax)
};

// One row: z (classes,) logits, dz (classes,) receives (softmax(z) - onehot(label)) * scale,
// scale = 1/N for the gradient of the batch mean. Stable: exponents are taken of z - max(z).
// The label must be in [0, classes): callers check it.
template <class T>
PYREGNET_HD XentRow xent_row(const T* z, int64_t classes, int64_t label, T* dz, T scale) {
  T zmax = z[0];
  int64_t argmax = 0;
  for (int64_t j = 1; j < classes; ++j) {
    if (z[j] > zmax) { zmax = z[j]; argmax = j; }
  }
  T sum = T(0);
  for (int64_t j = 0; j < classes; ++j) sum += hd_exp(z[j] - zmax);
  const T log_sum = hd_log(sum);  // logsumexp(z) - zmax
  for (int64_t j = 0; j < classes; ++j) {
    const T p = hd_exp(z[j] - zmax - log_sum);
    dz[j] = (p - (j == label ? T(1) : T(0))) * scale;
  }
  XentRow row;
  row.loss = double(log_sum) - double(z[label] - zmax);
  row.correct = (argmax == label);
  return row;
}

}  // namespace pyregnet
