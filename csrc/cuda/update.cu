// The optimizer updates with the weight penalty, on the GPU (math/elementwise.h per element):
//   adam_update       fused penalty + Adam step over a flat parameter buffer, one pass: the
//   sgd_update        first n_penalized elements (the kernel weights) get the L1/L2 penalty (as
//                     a gradient before the step, or as the proximal operator after it), the
//                     rest (the biases) do not; optionally the penalty value of the weights
//                     before the step, summed in the same pass;
//   penalty_gradient  the penalty gradient as its own pass (g += penalty_grad(w)), optionally
//                     with the value: the unfused and autodiff-style ways it is measured against.
//
// Adam streams 7 arrays (reads w, g, m, v; writes w, m, v; SGD 5) and does ~20 flops per
// element: memory bound, so it moves 16 bytes per access (float4 / double2) when the buffers
// are 16-byte aligned, with the n % width tail element by element. alpha_t depends on the step,
// which may live in device memory (a captured graph advances it), so each thread computes it
// once (prepared()) rather than once per element.
#include "core/backend.h"
#include "cuda/check.cuh"
#include "cuda/sum_over.cuh"
#include "math/elementwise.h"
#include "math/int_array.h"

namespace pyregnet::cuda {
namespace {

// 16 bytes of T.
template <class T> struct Vec16;
template <> struct Vec16<float> { using type = float4; };
template <> struct Vec16<double> { using type = double2; };
template <class T>
constexpr int kVecWidth = int(16 / sizeof(T));

// Element e of a 16-byte vector (the unrolled loops index it with constants).
__device__ __forceinline__ float& lane(float4& v, int e) { return (&v.x)[e]; }
__device__ __forceinline__ double& lane(double2& v, int e) { return (&v.x)[e]; }
__device__ __forceinline__ float lane(const float4& v, int e) { return (&v.x)[e]; }
__device__ __forceinline__ double lane(const double2& v, int e) { return (&v.x)[e]; }

// The per-element rules of the two optimizers: their state arrays (Adam m and v, SGD the
// momentum buffer) and the step, with what each thread prepares once.
template <class T>
struct AdamRule {
  static constexpr int kState = 2;
  AdamStep s;
  T alpha;              // set by prepared()
  __device__ AdamRule prepared() const { return {s, T(adam_alpha(s, read_counter(s.step)))}; }
  __device__ const PenaltyRule& penalty() const { return s.penalty; }
  __device__ void apply(T& w, T g, T (&state)[kState], bool penalized) const {
    adam_element(w, g, state[0], state[1], penalized, s, alpha);
  }
};

template <class T>
struct SgdRule {
  static constexpr int kState = 1;
  SgdStep s;
  __device__ SgdRule prepared() const { return *this; }
  __device__ const PenaltyRule& penalty() const { return s.penalty; }
  __device__ void apply(T& w, T g, T (&state)[kState], bool penalized) const {
    sgd_element(w, g, state[0], penalized, s);
  }
};

// Unit u of the pass: for u < n_vec the 16-byte vector u (elements u*width ...), beyond that
// the tail elements one by one. Returns the penalty terms of the unit's weights before the step.
template <class T, class Rule>
struct UpdateUnits {
  static constexpr int kState = Rule::kState;
  T* w;
  const T* g;
  T* state[kState];
  int64_t n_vec;        // whole vectors, 0 when the buffers are not all 16-byte aligned
  int64_t n_penalized;
  Rule rule;

  __device__ UpdateUnits prepared() const {
    UpdateUnits f = *this;
    f.rule = rule.prepared();
    return f;
  }

  __device__ double element(int64_t i) const {
    const bool penalized = i < n_penalized;
    const PenaltyRule& p = rule.penalty();
    const double term = penalized ? penalty_value(w[i], p.l1, p.l2) : 0.0;
    T st[kState];
#pragma unroll
    for (int k = 0; k < kState; ++k) st[k] = state[k][i];
    rule.apply(w[i], g[i], st, penalized);
#pragma unroll
    for (int k = 0; k < kState; ++k) state[k][i] = st[k];
    return term;
  }

  __device__ double operator()(int64_t u) const {
    constexpr int width = kVecWidth<T>;
    if (u >= n_vec) return element(n_vec * width + (u - n_vec));
    using V = typename Vec16<T>::type;
    V wv = reinterpret_cast<const V*>(w)[u], sv[kState];
#pragma unroll
    for (int k = 0; k < kState; ++k) sv[k] = reinterpret_cast<const V*>(state[k])[u];
    const V gv = __ldg(reinterpret_cast<const V*>(g) + u);  // read once: through the read-only path
    const PenaltyRule& p = rule.penalty();
    double term = 0.0;
#pragma unroll
    for (int e = 0; e < width; ++e) {
      const bool penalized = u * width + e < n_penalized;
      if (penalized) term += penalty_value(lane(wv, e), p.l1, p.l2);
      T st[kState];
#pragma unroll
      for (int k = 0; k < kState; ++k) st[k] = lane(sv[k], e);
      rule.apply(lane(wv, e), lane(gv, e), st, penalized);
#pragma unroll
      for (int k = 0; k < kState; ++k) lane(sv[k], e) = st[k];
    }
    reinterpret_cast<V*>(w)[u] = wv;
#pragma unroll
    for (int k = 0; k < kState; ++k) reinterpret_cast<V*>(state[k])[u] = sv[k];
    return term;
  }
};

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

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

// One pass of `rule` over the buffers (16-byte vectors when all are aligned), summing the
// penalty when asked.
template <class T, class Rule>
double update_pass(T* w, const T* g, T* const (&state)[Rule::kState], int64_t n, int64_t n_penalized,
                   const Rule& rule, bool with_penalty, double* into, cudaStream_t st, const char* what) {
  constexpr int width = kVecWidth<T>;
  bool vectors = aligned16(w) && aligned16(g);
  for (T* a : state) vectors = vectors && aligned16(a);
  const int64_t n_vec = vectors ? n / width : 0;
  UpdateUnits<T, Rule> units{w, g, {}, n_vec, n_penalized, rule};
  for (int k = 0; k < Rule::kState; ++k) units.state[k] = state[k];
  const int64_t n_units = n_vec + (n - n_vec * width);
  if (with_penalty) return sum_over<double>(units, n_units, st, what, into);
  for_each(units, n_units, st, what);
  return 0.0;
}

}  // namespace

template <class T>
double adam_update(T* w, const T* g, T* m, T* v, int64_t n, int64_t n_penalized, const AdamStep& s,
                   bool with_penalty, double* into, Stream st) {
  T* const state[2] = {m, v};
  return update_pass(w, g, state, n, n_penalized, AdamRule<T>{s, T(0)}, with_penalty, into, as_cuda_stream(st),
                     "adam_update");
}

template <class T>
double sgd_update(T* w, const T* g, T* buf, int64_t n, int64_t n_penalized, const SgdStep& s, bool with_penalty,
                  double* into, Stream st) {
  T* const state[1] = {buf};
  return update_pass(w, g, state, n, n_penalized, SgdRule<T>{s}, with_penalty, into, as_cuda_stream(st),
                     "sgd_update");
}

template <class T>
double penalty_gradient(const T* w, T* g, int64_t n_penalized, double l1, double l2, bool with_penalty,
                        double* into, Stream st) {
  const PenaltyGradientAt<T> add{w, g, l1, l2};
  if (with_penalty) return sum_over<double>(add, n_penalized, as_cuda_stream(st), "penalty_gradient", into);
  for_each(add, n_penalized, as_cuda_stream(st), "penalty_gradient");
  return 0.0;
}

template double adam_update<float>(float*, const float*, float*, float*, int64_t, int64_t, const AdamStep&,
                                   bool, double*, Stream);
template double adam_update<double>(double*, const double*, double*, double*, int64_t, int64_t,
                                    const AdamStep&, bool, double*, Stream);
template double sgd_update<float>(float*, const float*, float*, int64_t, int64_t, const SgdStep&, bool, double*,
                                  Stream);
template double sgd_update<double>(double*, const double*, double*, int64_t, int64_t, const SgdStep&, bool,
                                   double*, Stream);
template double penalty_gradient<float>(const float*, float*, int64_t, double, double, bool, double*, Stream);
template double penalty_gradient<double>(const double*, double*, int64_t, double, double, bool, double*,
                                         Stream);

}  // namespace pyregnet::cuda
