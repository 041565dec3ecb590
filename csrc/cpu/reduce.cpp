// Reductions over a weight array on the CPU: the penalty value and the sparsity count.
#include <algorithm>
#include <vector>

#include "core/backend.h"

namespace pyregnet::cpu {

// Elements per partial sum. Fixed, so that the penalty is summed in one order whatever the
// number of threads (reproducible to the bit).
constexpr int64_t kChunk = 1 << 14;

template <class T>
double penalty(const T* w, int64_t n, double l1, double l2) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(chunks, 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    double sum = 0.0;
    const int64_t end = std::min(n, (c + 1) * kChunk);
    for (int64_t i = c * kChunk; i < end; ++i) sum += penalty_value(w[i], l1, l2);
    partial[c] = sum;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

template <class T>
int64_t sparsity_count(const T* w, int64_t n, double threshold) {
  int64_t count = 0;
#pragma omp parallel for reduction(+ : count) schedule(static)
  for (int64_t i = 0; i < n; ++i) count += (hd_abs(double(w[i])) <= threshold);
  return count;
}

template double penalty<float>(const float*, int64_t, double, double);
template double penalty<double>(const double*, int64_t, double, double);
template int64_t sparsity_count<float>(const float*, int64_t, double);
template int64_t sparsity_count<double>(const double*, int64_t, double);

}  // namespace pyregnet::cpu
