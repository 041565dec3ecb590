// The optimizer updates with the weight penalty, on the CPU (math/elementwise.h per element):
//   adam_update       fused penalty + Adam step over a flat parameter buffer, one pass: elements
//   sgd_update        [0, n_penalized) are kernel weights and get the penalty (as a gradient
//                     before the step, or as the proximal operator after it), the rest (biases,
//                     at the end of the buffer) do not; optionally the penalty value of the
//                     weights before the step, summed in the same pass;
//   penalty_gradient  the penalty gradient as its own pass (g += penalty_grad(w)), optionally
//                     with the value: the unfused and autodiff-style ways it is measured against.
#include <algorithm>
#include <type_traits>

#include "core/backend.h"
#include "cpu/chunked_sum.h"
#include "cpu/fp_mode.h"
#include "math/int_array.h"

namespace pyregnet::cpu {
namespace {

// The loops below call element(i, penalized, proximal) with both flags as constants
// (std::true_type / false_type): the penalized indices (below n_penalized) in a loop of their
// own, and the penalty step's kind chosen once per call. As run-time values they left GCC with
// more branches than it if-converts in Adam's step ("control flow in loop"), and the update ran
// one element at a time: on the AVX-512 EPYC 1.09 ms for the CNN's 315,722 parameters, 20% of
// its memory roofline. Each element's arithmetic is the same either way.
template <class Element>
void penalized_then_not(int64_t begin, int64_t end, int64_t n_penalized, const Element& element) {
  const int64_t split = std::clamp(n_penalized, begin, end);
#pragma omp simd
  for (int64_t i = begin; i < split; ++i) element(i, std::true_type{});
#pragma omp simd
  for (int64_t i = split; i < end; ++i) element(i, std::false_type{});
}

template <class T, class Element, class Proximal>
double update_pass(T* w, int64_t n, int64_t n_penalized, const PenaltyRule& p, bool with_penalty, double* into,
                   const Element& element, Proximal proximal) {
  const auto at = [&](int64_t i, auto penalized) { element(i, penalized, proximal); };
  if (!with_penalty) {
    parallel([&] {
#pragma omp for simd schedule(static)
      for (int64_t i = 0; i < n_penalized; ++i) at(i, std::true_type{});
#pragma omp for simd schedule(static)
      for (int64_t i = n_penalized; i < n; ++i) at(i, std::false_type{});
    });
    return 0.0;
  }
  return deliver(chunked_sum(n, [&](int64_t begin, int64_t end) {
    const double value = lane_sum(begin, std::min(end, n_penalized),
                                  [&](int64_t i) { return penalty_value(w[i], p.l1, p.l2); });
    penalized_then_not(begin, end, n_penalized, at);
    return value;
  }), into);
}

// One pass of element(i, penalized, proximal) over [0, n); with_penalty: also the penalty value
// of w[:n_penalized] before the step, per chunk first (the chunk is still in cache for the
// update, so memory is read once).
template <class T, class Element>
double update_pass(T* w, int64_t n, int64_t n_penalized, const PenaltyRule& p, bool with_penalty, double* into,
                   const Element& element) {
  return p.proximal ? update_pass(w, n, n_penalized, p, with_penalty, into, element, std::true_type{})
                    : update_pass(w, n, n_penalized, p, with_penalty, into, element, std::false_type{});
}

// s with its penalty's step kind a constant (update_pass).
template <class Step, class Proximal>
Step with_step_kind(const Step& s, Proximal proximal) {
  Step t = s;
  t.penalty.proximal = proximal;
  return t;
}

}  // namespace

template <class T>
double adam_update(T* w, const T* g, T* m, T* v, int64_t n, int64_t n_penalized, const AdamStep& s,
                   bool with_penalty, double* into) {
  const T alpha = T(adam_alpha(s, read_counter(s.step)));
  return update_pass(w, n, n_penalized, s.penalty, with_penalty, into, [&](int64_t i, auto penalized, auto proximal) {
    adam_element(w[i], g[i], m[i], v[i], penalized, with_step_kind(s, proximal), alpha);
  });
}

template <class T>
double sgd_update(T* w, const T* g, T* buf, int64_t n, int64_t n_penalized, const SgdStep& s, bool with_penalty,
                  double* into) {
  return update_pass(w, n, n_penalized, s.penalty, with_penalty, into, [&](int64_t i, auto penalized, auto proximal) {
    sgd_element(w[i], g[i], buf[i], penalized, with_step_kind(s, proximal));
  });
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
template double sgd_update<float>(float*, const float*, float*, int64_t, int64_t, const SgdStep&, bool, double*);
template double sgd_update<double>(double*, const double*, double*, int64_t, int64_t, const SgdStep&, bool,
                                   double*);
template double penalty_gradient<float>(const float*, float*, int64_t, double, double, bool, double*);
template double penalty_gradient<double>(const double*, double*, int64_t, double, double, bool, double*);

}  // namespace pyregnet::cpu
