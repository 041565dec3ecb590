// Parallel passes that also sum, reproducibly. The range [0, n) is cut into fixed-size chunks;
// each chunk's sum is computed by one thread and the chunk sums are added in chunk order, so
// the result does not depend on the number of threads: bitwise reproducible training on the CPU.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/fp_mode.h"

namespace pyregnet::cpu {

constexpr int64_t kSumChunk = 1 << 14;
constexpr int kLanes = 16;

// chunked_sum(n, chunk): the sum over chunks of chunk(begin, end) -> double; `chunk` may also
// update the elements of its range.
template <class Chunk>
double chunked_sum(int64_t n, const Chunk& chunk) {
  const int64_t chunks = (n + kSumChunk - 1) / kSumChunk;
  std::vector<double> partial(chunks, 0.0);
  parallel([&] {
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) partial[c] = chunk(c * kSumChunk, std::min(n, (c + 1) * kSumChunk));
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

// sum of term(i) over [begin, end) in kLanes running sums (element i in lane (i - begin) %
// kLanes, the lanes added in order at the end): the compiler vectorizes the terms without
// reassociating any sum, so the order, and the bits, are fixed. A single running sum kept the
// loop scalar: the fused Adam update with its penalty value ran 6x slower than without.
template <class Term>
double lane_sum(int64_t begin, int64_t end, const Term& term) {
  double lanes[kLanes] = {};
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] += term(i + j);
  double sum = 0.0;
  for (; i < end; ++i) sum += term(i);
  for (int j = 0; j < kLanes; ++j) sum += lanes[j];
  return sum;
}

// The totals convention of core/backend.h: a sum goes back to the caller, or is added to *into.
inline double deliver(double sum, double* into) {
  if (into == nullptr) return sum;
  *into += sum;
  return 0.0;
}

}  // namespace pyregnet::cpu
