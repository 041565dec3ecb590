// Reductions over a weight array on the CPU: the penalty value and the sparsity count.
#include "core/backend.h"
#include "cpu/chunked_sum.h"

namespace pyregnet::cpu {

template <class T>
double penalty(const T* w, int64_t n, double l1, double l2, double* into) {
  return deliver(chunked_sum(n, [&](int64_t begin, int64_t end) {
    return lane_sum(begin, end, [&](int64_t i) { return penalty_value(w[i], l1, l2); });
  }), into);
}

template <class T>
int64_t sparsity_count(const T* w, int64_t n, double threshold) {
  int64_t count = 0;
  parallel([&] {
#pragma omp for reduction(+ : count) schedule(static)
    for (int64_t i = 0; i < n; ++i) count += (hd_abs(double(w[i])) <= threshold);
  });
  return count;
}

template double penalty<float>(const float*, int64_t, double, double, double*);
template double penalty<double>(const double*, int64_t, double, double, double*);
template int64_t sparsity_count<float>(const float*, int64_t, double);
template int64_t sparsity_count<double>(const double*, int64_t, double);

}  // namespace pyregnet::cpu
