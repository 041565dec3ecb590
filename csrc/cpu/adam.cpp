// The weight penalty applied by gradient, on the CPU, two ways (math/elementwise.h per element):
//   adam_update       fused penalty + Adam step over a flat parameter buffer, one pass: elements
//                     [0, n_penalized) are kernel weights and get the penalty gradient, the rest
//                     (biases, at the end of the buffer) do not; optionally the penalty value of
//                     the weights before the step, summed in the same pass;
//   penalty_gradient  the penalty gradient as its own pass (g += penalty_grad(w)), optionally
//                     with the value: the unfused and autodiff-style ways it is measured against.
#include "core/backend.h"
#include "cpu/chunked_sum.h"

namespace pyregnet::cpu {

template <class T>
double adam_update(T* w, const T* g, T* m, T* v, int64_t n, int64_t n_penalized, const AdamStep& s,
                   bool with_penalty) {
  if (!with_penalty) {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) adam_element(w[i], g[i], m[i], v[i], i < n_penalized, s);
    return 0.0;
  }
  return chunked_sum(n, [&](int64_t i) {
    const bool penalized = i < n_penalized;
    const double term = penalized ? penalty_value(w[i], s.l1, s.l2) : 0.0;
    adam_element(w[i], g[i], m[i], v[i], penalized, s);
    return term;
  });
}

template <class T>
double penalty_gradient(const T* w, T* g, int64_t n_penalized, double l1, double l2, bool with_penalty) {
  if (!with_penalty) {
#pragma omp parallel for simd schedule(static)
    for (int64_t i = 0; i < n_penalized; ++i) g[i] += penalty_grad(w[i], T(l1), T(l2));
    return 0.0;
  }
  return chunked_sum(n_penalized, [&](int64_t i) {
    g[i] += penalty_grad(w[i], T(l1), T(l2));
    return penalty_value(w[i], l1, l2);
  });
}

template double adam_update<float>(float*, const float*, float*, float*, int64_t, int64_t, const AdamStep&, bool);
template double adam_update<double>(double*, const double*, double*, double*, int64_t, int64_t, const AdamStep&, bool);
template double penalty_gradient<float>(const float*, float*, int64_t, double, double, bool);
template double penalty_gradient<double>(const double*, double*, int64_t, double, double, bool);

}  // namespace pyregnet::cpu
