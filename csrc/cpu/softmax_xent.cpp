// Softmax cross-entropy on the CPU: per-row math from math/softmax_xent.h, summed over the
// batch in row order. Labels were range-checked by the bindings.
#include "core/backend.h"
#include "math/softmax_xent.h"

namespace pyregnet::cpu {

template <class T>
XentTotals softmax_cross_entropy(const T* logits, IntArray labels, T* dlogits, int64_t N, int64_t classes,
                                 double* into) {
  XentTotals totals{0.0, 0, 0};
  const T scale = T(1) / T(N);
  for (int64_t i = 0; i < N; ++i) {
    const XentRow row = xent_row(logits + i * classes, classes, int_at(labels, i),
                                 dlogits + i * classes, scale);
    totals.loss_sum += row.loss;
    totals.correct += row.correct;
  }
  if (into == nullptr) return totals;
  into[0] += totals.loss_sum;
  into[1] += double(totals.correct);
  return XentTotals{0.0, 0, 0};
}

template XentTotals softmax_cross_entropy<float>(const float*, IntArray, float*, int64_t, int64_t, double*);
template XentTotals softmax_cross_entropy<double>(const double*, IntArray, double*, int64_t, int64_t, double*);

}  // namespace pyregnet::cpu
