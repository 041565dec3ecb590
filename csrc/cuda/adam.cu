// The weight penalty applied by gradient, on the GPU, two ways (math/elementwise.h per element):
//   adam_update       fused penalty + Adam step over a flat parameter buffer, one pass: the
//                     first n_penalized elements (the kernel weights) get the L1/L2 penalty
//                     gradient, the rest (the biases) do not; optionally the penalty value of
//                     the weights before the step, summed in the same pass;
//   penalty_gradient  the penalty gradient as its own pass (g += penalty_grad(w)), optionally
//                     with the value: the unfused and autodiff-style ways it is measured against.
//
// The update streams 7 arrays (reads w, g, m, v; writes w, m, v) and does ~20 flops per element:
// memory bound, so it moves 16 bytes per access (float4 / double2) when the four buffers are
// 16-byte aligned, with the n % width tail element by element. alpha_t depends on the step,
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

// Unit u of the pass: for u < n_vec the 16-byte vector u (elements u*width ...), beyond that
// the tail elements one by one. Returns the penalty terms of the unit's weights before the step.
template <class T>
struct AdamUnits {
  T *w, *m, *v;
  const T* g;
  int64_t n_vec;        // whole vectors, 0 when the buffers are not all 16-byte aligned
  int64_t n_penalized;
  AdamStep s;
  T alpha;              // set by prepared()

  __device__ AdamUnits prepared() const {
    AdamUnits f = *this;
    f.alpha = T(adam_alpha(s, read_counter(s.step)));
    return f;
  }

  __device__ double element(int64_t i) const {
    const bool penalized = i < n_penalized;
    const double term = penalized ? penalty_value(w[i], s.l1, s.l2) : 0.0;
    adam_element(w[i], g[i], m[i], v[i], penalized, s, alpha);
    return term;
  }

  __device__ double operator()(int64_t u) const {
    constexpr int width = kVecWidth<T>;
    if (u >= n_vec) return element(n_vec * width + (u - n_vec));
    using V = typename Vec16<T>::type;
    V wv = reinterpret_cast<const V*>(w)[u], mv = reinterpret_cast<const V*>(m)[u],
      vv = reinterpret_cast<const V*>(v)[u];
    const V gv = __ldg(reinterpret_cast<const V*>(g) + u);  // read once: through the read-only path
    double term = 0.0;
#pragma unroll
    for (int e = 0; e < width; ++e) {
      const bool penalized = u * width + e < n_penalized;
      if (penalized) term += penalty_value(lane(wv, e), s.l1, s.l2);
      adam_element(lane(wv, e), lane(gv, e), lane(mv, e), lane(vv, e), penalized, s, alpha);
    }
    reinterpret_cast<V*>(w)[u] = wv;
    reinterpret_cast<V*>(m)[u] = mv;
    reinterpret_cast<V*>(v)[u] = vv;
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

}  // namespace

template <class T>
double adam_update(T* w, const T* g, T* m, T* v, int64_t n, int64_t n_penalized, const AdamStep& s,
                   bool with_penalty, double* into, Stream st) {
  constexpr int width = kVecWidth<T>;
  const bool vectors = aligned16(w) && aligned16(g) && aligned16(m) && aligned16(v);
  const int64_t n_vec = vectors ? n / width : 0;
  const AdamUnits<T> units{w, m, v, g, n_vec, n_penalized, s, T(0)};
  const int64_t n_units = n_vec + (n - n_vec * width);
  if (with_penalty) return sum_over<double>(units, n_units, as_cuda_stream(st), "adam_update", into);
  for_each(units, n_units, as_cuda_stream(st), "adam_update");
  return 0.0;
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
template double penalty_gradient<float>(const float*, float*, int64_t, double, double, bool, double*, Stream);
template double penalty_gradient<double>(const double*, double*, int64_t, double, double, bool, double*,
                                         Stream);

}  // namespace pyregnet::cuda
