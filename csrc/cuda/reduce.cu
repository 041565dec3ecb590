// Whole-array reductions: the L1/L2 penalty value (to the host or added on the device) and the
// sparsity count.
//
// Both are sum_i f(w[i]) by sum_over (cuda/sum_over.cuh): bitwise reproducible.
#include "core/backend.h"
#include "cuda/check.cuh"
#include "cuda/sum_over.cuh"
#include "math/elementwise.h"

namespace pyregnet::cuda {
namespace {

// l1 * |w[i]| + l2 * w[i]^2 in double.
template <class T>
struct PenaltyTerm {
  const T* w;
  double l1, l2;
  __device__ double operator()(int64_t i) const { return penalty_value(w[i], l1, l2); }
};

// 1 when |w[i]| <= threshold, compared in double (a float threshold would round).
template <class T>
struct SmallWeight {
  const T* w;
  double threshold;
  __device__ long long operator()(int64_t i) const {
    return double(hd_abs(w[i])) <= threshold ? 1 : 0;
  }
};

}  // namespace

template <class T>
double penalty(const T* w, int64_t n, double l1, double l2, double* into, Stream st) {
  return sum_over<double>(PenaltyTerm<T>{w, l1, l2}, n, as_cuda_stream(st), "penalty", into);
}

template <class T>
int64_t sparsity_count(const T* w, int64_t n, double threshold, Stream st) {
  return sum_over<long long>(SmallWeight<T>{w, threshold}, n, as_cuda_stream(st), "sparsity_count");
}

template double penalty<float>(const float*, int64_t, double, double, double*, Stream);
template double penalty<double>(const double*, int64_t, double, double, double*, Stream);
template int64_t sparsity_count<float>(const float*, int64_t, double, Stream);
template int64_t sparsity_count<double>(const double*, int64_t, double, Stream);

}  // namespace pyregnet::cuda
