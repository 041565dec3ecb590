// A parallel loop that also sums: chunked_sum(n, f) calls f(i) once for every i < n (f may
// update element i) and returns the sum of its results. The partial sums are per fixed-size
// chunk and added in chunk order, so the result does not depend on the number of threads:
// bitwise reproducible training on the CPU.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

namespace pyregnet::cpu {

constexpr int64_t kSumChunk = 1 << 14;

template <class F>
double chunked_sum(int64_t n, const F& f) {
  const int64_t chunks = (n + kSumChunk - 1) / kSumChunk;
  std::vector<double> partial(chunks, 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    double sum = 0.0;
    const int64_t end = std::min(n, (c + 1) * kSumChunk);
    for (int64_t i = c * kSumChunk; i < end; ++i) sum += f(i);
    partial[c] = sum;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace pyregnet::cpu
