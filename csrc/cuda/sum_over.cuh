// Grid-stride loops over n elements, shared by the CUDA backend's elementwise passes:
//   for_each(f, n):  f(i) for every i < n, one launch, nothing returned;
//   sum_over(f, n, into):  the sum of f(i), f's side effects included, so that a pass that
//                    updates elements can also return a reduction of them (the fused penalty +
//                    Adam update returns the penalty value from its single pass): copied to the
//                    host (synchronizing), or with `into` added to *into on the device (no
//                    synchronization: a captured graph accumulates there).
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

// A functor may define prepared(): the functor each thread then calls, built once per thread
// rather than once per element (Adam's alpha_t from a step count in device memory).
template <class F>
__device__ __forceinline__ const F& prepared(const F& f, long) { return f; }
template <class F>
__device__ __forceinline__ auto prepared(const F& f, int) -> decltype(f.prepared()) { return f.prepared(); }

template <class F>
__global__ void __launch_bounds__(kBlockThreads) for_each_kernel(const F f, const int64_t n) {
  const auto g = prepared(f, 0);
  // Not unrolled: the float sqrt and division of the Adam step have out-of-line slow paths, and
  // an unrolled body keeps enough values live across those calls to spill registers.
#pragma unroll 1
  for (int64_t i = grid_start(); i < n; i += grid_stride()) g(i);
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
  const auto g = prepared(f, 0);
  Acc s = Acc(0);
#pragma unroll 1
  for (int64_t i = grid_start(); i < n; i += grid_stride()) s += g(i);
  s = block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// *total = the sum (add = false) or *total += the sum (add = true): one thread, in stream order,
// so accumulating over the steps of an epoch is as reproducible as the sum itself.
template <class Acc>
__global__ void __launch_bounds__(kFinalThreads)
    final_sum_kernel(const Acc* const partial, const int count, Acc* const total, const bool add) {
  const Acc s = block_sum(int(threadIdx.x) < count ? partial[threadIdx.x] : Acc(0));
  if (threadIdx.x == 0) *total = add ? *total + s : s;
}

// sum_{i < n} f(i): copied to the host (synchronizes the stream), or added to *into on the
// device when `into` is set (then returns 0).
template <class Acc, class F>
Acc sum_over(const F& f, int64_t n, cudaStream_t st, const char* what, Acc* into = nullptr) {
  if (n == 0) return Acc(0);
  const unsigned blocks = std::min(grid_blocks(n), unsigned(kFinalThreads));
  Scratch<Acc> partial(blocks, st, what);
  partial_sums_kernel<Acc><<<blocks, kBlockThreads, 0, st>>>(f, n, partial.get());
  check_launch(what);
  if (into != nullptr) {
    final_sum_kernel<Acc><<<1, kFinalThreads, 0, st>>>(partial.get(), int(blocks), into, true);
    check_launch(what);
    return Acc(0);
  }
  Scratch<Acc> total(1, st, what);
  final_sum_kernel<Acc><<<1, kFinalThreads, 0, st>>>(partial.get(), int(blocks), total.get(), false);
  check_launch(what);
  Acc host;
  PYREGNET_CUDA_CHECK(cudaMemcpyAsync(&host, total.get(), sizeof(Acc), cudaMemcpyDeviceToHost, st),
                      what);
  PYREGNET_CUDA_CHECK(cudaStreamSynchronize(st), what);
  return host;
}

}  // namespace
}  // namespace pyregnet::cuda
