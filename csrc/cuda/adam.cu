// Fused penalty + Adam step over a flat parameter buffer, one launch: adam_element of
// math/elementwise.h per element. The first n_penalized elements (the kernel weights) get the
// L1/L2 penalty gradient, the rest (the biases) don't.
#include "core/backend.h"
#include "cuda/check.cuh"
#include "math/elementwise.h"

namespace pyregnet::cuda {
namespace {

// Scalar loads and stores: four streams of n values, memory bound. A later optimization is
// 16-byte vector accesses (float4 / double2) over the aligned bulk with a scalar tail.
template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    adam_kernel(T* const w, const T* const g, T* const m, T* const v, const int64_t n,
                const int64_t n_penalized, const AdamStep s) {
  // Not unrolled: the float sqrt and division have out-of-line slow paths, and an unrolled body
  // keeps enough values live across those calls to spill registers.
#pragma unroll 1
  for (int64_t i = grid_start(); i < n; i += grid_stride()) {
    adam_element(w[i], g[i], m[i], v[i], i < n_penalized, s);
  }
}

}  // namespace

template <class T>
void adam_update(T* w, const T* g, T* m, T* v, int64_t n, int64_t n_penalized, const AdamStep& s,
                 Stream st) {
  if (n == 0) return;
  adam_kernel<T><<<grid_blocks(n), kBlockThreads, 0, as_cuda_stream(st)>>>(w, g, m, v, n,
                                                                           n_penalized, s);
  check_launch("adam_update");
}

template void adam_update<float>(float*, const float*, float*, float*, int64_t, int64_t,
                                 const AdamStep&, Stream);
template void adam_update<double>(double*, const double*, double*, double*, int64_t, int64_t,
                                  const AdamStep&, Stream);

}  // namespace pyregnet::cuda
