// Softmax cross-entropy of one row of logits: the one definition both backends call.
#pragma once
#include "math/hd.h"
#include "math/shapes.h"

namespace pyregnet {

// Label i of an integer array of any integer dtype, widened to int64.
PYREGNET_HD int64_t label_at(const Labels& labels, int64_t i) {
  switch (labels.dtype) {
    case DType::i8: return static_cast<const int8_t*>(labels.data)[i];
    case DType::i16: return static_cast<const int16_t*>(labels.data)[i];
    case DType::i32: return static_cast<const int32_t*>(labels.data)[i];
    case DType::i64: return static_cast<const int64_t*>(labels.data)[i];
    case DType::u8: return static_cast<const uint8_t*>(labels.data)[i];
    case DType::u16: return static_cast<const uint16_t*>(labels.data)[i];
    case DType::u32: return static_cast<const uint32_t*>(labels.data)[i];
    case DType::u64: {
      // Values past int64's range are out of range for any class count: map them to -1.
      const uint64_t u = static_cast<const uint64_t*>(labels.data)[i];
      return u > uint64_t(INT64_MAX) ? int64_t(-1) : int64_t(u);
    }
    default: return -1;
  }
}

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
