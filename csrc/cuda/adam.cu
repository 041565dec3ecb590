// The weight penalty applied by gradient, on the GPU, two ways (math/elementwise.h per element):
//   adam_update       fused penalty + Adam step over a flat parameter buffer, one pass: the
//                     first n_penalized elements (the kernel weights) get the L1/L2 penalty
//                     gradient, the rest (the biases) do not; optionally the penalty value of
//                     the weights before the step, summed in the same pass;
//   penalty_gradient  the penalty gradient as its own pass (g += penalty_grad(w)), optionally
//                     with the value: the unfused and autodiff-style ways it is measured against.
#include "core/backend.h"
#include "cuda/check.cuh"
#include "cuda/sum_over.cuh"
#include "math/elementwise.h"

namespace pyregnet::cuda {
namespace {

// Updates element i; returns its penalty term before the update (0 for biases).
// Scalar loads and stores, four streams of n values: memory bound. A later optimization is
// 16-byte vector accesses (float4 / double2) over the aligned bulk with a scalar tail.
template <class T>
struct AdamStepAt {
  T *w, *m, *v;
  const T* g;
  int64_t n_penalized;
  AdamStep s;
  __device__ double operator()(int64_t i) const {
    const bool penalized = i < n_penalized;
    const double term = penalized ? penalty_value(w[i], s.l1, s.l2) : 0.0;
    adam_element(w[i], g[i], m[i], v[i], penalized, s);
    return term;
  }
};

// g[i] += penalty gradient at w[i]; returns the penalty term.
template <class T>
struct PenaltyGradientAt {
  const T* w;
  T* g;
  double l1, l2;
  __device__ double operator()(int64_t i) const {
    g[i] += penalty_grad(w[i], T(l1), T(l2));
    return penalty_value(w[i], l1, l2);
  }
};

}  // namespace

template <class T>
double adam_update(T* w, const T* g, T* m, T* v, int64_t n, int64_t n_penalized, const AdamStep& s,
                   bool with_penalty, Stream st) {
  const AdamStepAt<T> step{w, m, v, g, n_penalized, s};
  if (with_penalty) return sum_over<double>(step, n, as_cuda_stream(st), "adam_update");
  for_each(step, n, as_cuda_stream(st), "adam_update");
  return 0.0;
}

template <class T>
double penalty_gradient(const T* w, T* g, int64_t n_penalized, double l1, double l2, bool with_penalty,
                        Stream st) {
  const PenaltyGradientAt<T> add{w, g, l1, l2};
  if (with_penalty) return sum_over<double>(add, n_penalized, as_cuda_stream(st), "penalty_gradient");
  for_each(add, n_penalized, as_cuda_stream(st), "penalty_gradient");
  return 0.0;
}

template double adam_update<float>(float*, const float*, float*, float*, int64_t, int64_t, const AdamStep&,
                                   bool, Stream);
template double adam_update<double>(double*, const double*, double*, double*, int64_t, int64_t,
                                    const AdamStep&, bool, Stream);
template double penalty_gradient<float>(const float*, float*, int64_t, double, double, bool, Stream);
template double penalty_gradient<double>(const double*, double*, int64_t, double, double, bool, Stream);

}  // namespace pyregnet::cuda
