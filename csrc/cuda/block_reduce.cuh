// Deterministic block-wide sums and the per-channel sums of the bias gradients.
//
// Every sum here runs a fixed tree (each thread's strided share in index order, then warp
// shuffles, then one warp over the warp totals), so the same input gives the same bits on
// every run: no atomics, no dependence on block scheduling.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/check.cuh"

namespace pyregnet::cuda {
// Internal linkage: each .cu gets its own copy of the kernels (see gemm.cuh).
namespace {

template <class Acc>
__device__ __forceinline__ Acc warp_sum(Acc v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum of v over the block, valid in thread 0 only. blockDim.x must be a multiple of 32, and
// every thread of the block must call it (it synchronizes the block).
template <class Acc>
__device__ Acc block_sum(Acc v) {
  __shared__ Acc warp_totals[32];
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  v = warp_sum(v);
  __syncthreads();  // a previous call's reads of warp_totals are done before they are rewritten
  if (lane == 0) warp_totals[warp] = v;
  __syncthreads();
  if (warp == 0) v = warp_sum(lane < int(blockDim.x) / 32 ? warp_totals[lane] : Acc(0));
  return v;
}

// out[j] = sum over o < outer and i < inner of x[(o*J + j)*inner + i], one block per j.
// Conv bias gradient: x = dy (N, K, P*Q) -> (outer, J, inner) = (N, K, P*Q);
// dense: x = dy (N, out) -> (N, out, 1).
template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    channel_sum_kernel(const T* const x, T* const out, const int outer, const int J,
                       const int inner) {
  const int j = int(blockIdx.x);
  const int count = outer * inner;
  T s = T(0);
  for (int64_t e = threadIdx.x; e < count; e += blockDim.x) {
    const int o = int(e) / inner, i = int(e) % inner;
    s += x[(o * J + j) * inner + i];
  }
  s = block_sum(s);
  if (threadIdx.x == 0) out[j] = s;
}

// Writes all J sums (0 where outer * inner == 0).
template <class T>
void channel_sum(const T* x, T* out, int64_t outer, int64_t J, int64_t inner, cudaStream_t st,
                 const char* what) {
  if (J == 0) return;
  channel_sum_kernel<T><<<unsigned(J), kBlockThreads, 0, st>>>(x, out, int(outer), int(J), int(inner));
  check_launch(what);
}

}  // namespace
}  // namespace pyregnet::cuda
