// Grid-stride loops over n elements, shared by the CUDA backend's elementwise passes:
//   for_each(f, n):  f(i) for every i < n, one launch, nothing returned;
//   sum_over(f, n):  the sum of f(i) copied to the host, f's side effects included, so that a pass
//                    that updates elements can also return a reduction of them (the fused
//                    penalty + Adam update returns the penalty value from its single pass).
// sum_over is a two-pass scheme: a grid whose size depends only on n writes one partial sum per
// block (each thread's grid-stride share in index order, then block_sum's fixed tree), and a
// single block adds the partials in a fixed order. The result is bitwise reproducible.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/block_reduce.cuh"
#include "cuda/check.cuh"
#include "cuda/scratch.cuh"

namespace pyregnet::cuda {
// Internal linkage: each .cu gets its own copy of the kernels (see gemm.cuh).
namespace {

template <class F>
__global__ void __launch_bounds__(kBlockThreads) for_each_kernel(const F f, const int64_t n) {
  // Not unrolled: the float sqrt and division of the Adam step have out-of-line slow paths, and
  // an unrolled body keeps enough values live across those calls to spill registers.
#pragma unroll 1
  for (int64_t i = grid_start(); i < n; i += grid_stride()) f(i);
}

template <class F>
void for_each(const F& f, int64_t n, cudaStream_t st, const char* what) {
  if (n == 0) return;
  for_each_kernel<<<grid_blocks(n), kBlockThreads, 0, st>>>(f, n);
  check_launch(what);
}

// The second pass sums the partials with one block of kFinalThreads threads, one partial each
// at most: the first pass never has more blocks than that.
constexpr int kFinalThreads = 1024;

template <class Acc, class F>
__global__ void __launch_bounds__(kBlockThreads)
    partial_sums_kernel(const F f, const int64_t n, Acc* const partial) {
  Acc s = Acc(0);
#pragma unroll 1
  for (int64_t i = grid_start(); i < n; i += grid_stride()) s += f(i);
  s = block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

template <class Acc>
__global__ void __launch_bounds__(kFinalThreads)
    final_sum_kernel(const Acc* const partial, const int count, Acc* const total) {
  const Acc s = block_sum(int(threadIdx.x) < count ? partial[threadIdx.x] : Acc(0));
  if (threadIdx.x == 0) *total = s;
}

// sum_{i < n} f(i), copied to the host (synchronizes the stream).
template <class Acc, class F>
Acc sum_over(const F& f, int64_t n, cudaStream_t st, const char* what) {
  if (n == 0) return Acc(0);
  const unsigned blocks = std::min(grid_blocks(n), unsigned(kFinalThreads));
  Scratch<Acc> partial(blocks, st, what);
  Scratch<Acc> total(1, st, what);
  partial_sums_kernel<Acc><<<blocks, kBlockThreads, 0, st>>>(f, n, partial.get());
  check_launch(what);
  final_sum_kernel<Acc><<<1, kFinalThreads, 0, st>>>(partial.get(), int(blocks), total.get());
  check_launch(what);
  Acc host;
  PYREGNET_CUDA_CHECK(cudaMemcpyAsync(&host, total.get(), sizeof(Acc), cudaMemcpyDeviceToHost, st),
                      what);
  PYREGNET_CUDA_CHECK(cudaStreamSynchronize(st), what);
  return host;
}

}  // namespace
}  // namespace pyregnet::cuda
