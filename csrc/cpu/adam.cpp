// The weight penalty applied by gradient, on the CPU, two ways (math/elementwise.h per element):
//   adam_update       fused penalty + Adam step over a flat parameter buffer, one pass: elements
//                     [0, n_penalized) are kernel weights and get the penalty gradient, the rest
//                     (biases, at the end of the buffer) do not; optionally the penalty value of
//                     the weights before the step, summed in the same pass;
//   penalty_gradient  the penalty gradient as its own pass (g += penalty_grad(w)), optionally
//                     with the value: the unfused and autodiff-style ways it is measured against.
#include <algorithm>

#include "core/backend.h"
#include "cpu/chunked_sum.h"
#include "cpu/fp_mode.h"
#include "math/int_array.h"

namespace pyregnet::cpu {

template <class T>
double adam_update(T* w, const T* g, T* m, T* v, int64_t n, int64_t n_penalized, const AdamStep& s,
                   bool with_penalty, double* into) {
  const T alpha = T(adam_alpha(s, read_counter(s.step)));
  if (!with_penalty) {
    parallel([&] {
#pragma omp for simd schedule(static)
      for (int64_t i = 0; i < n; ++i) adam_element(w[i], g[i], m[i], v[i], i < n_penalized, s, alpha);
    });
    return 0.0;
  }
  // Per chunk: the value of the weights before the step, then the step; the chunk is still in
  // cache for the second loop, so memory is read once.
  return deliver(chunked_sum(n, [&](int64_t begin, int64_t end) {
    const double value = lane_sum(begin, std::min(end, n_penalized),
                                  [&](int64_t i) { return penalty_value(w[i], s.l1, s.l2); });
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) adam_element(w[i], g[i], m[i], v[i], i < n_penalized, s, alpha);
    return value;
  }), into);
}

template <class T>
double penalty_gradient(const T* w, T* g, int64_t n_penalized, double l1, double l2, bool with_penalty,
                        double* into) {
  if (!with_penalty) {
    parallel([&] {
#pragma omp for simd schedule(static)
      for (int64_t i = 0; i < n_penalized; ++i) g[i] += penalty_grad(w[i], T(l1), T(l2));
    });
    return 0.0;
  }
  return deliver(chunked_sum(n_penalized, [&](int64_t begin, int64_t end) {
    const double value = lane_sum(begin, end, [&](int64_t i) { return penalty_value(w[i], l1, l2); });
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) g[i] += penalty_grad(w[i], T(l1), T(l2));
    return value;
  }), into);
}

template double adam_update<float>(float*, const float*, float*, float*, int64_t, int64_t, const AdamStep&, bool,
                                   double*);
template double adam_update<double>(double*, const double*, double*, double*, int64_t, int64_t, const AdamStep&,
                                    bool, double*);
template double penalty_gradient<float>(const float*, float*, int64_t, double, double, bool, double*);
template double penalty_gradient<double>(const double*, double*, int64_t, double, double, bool, double*);

}  // namespace pyregnet::cpu
