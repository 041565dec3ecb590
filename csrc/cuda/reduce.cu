// Whole-array reductions returned to the host: the L1/L2 penalty value and the sparsity count.
//
// Both are sum_i f(w[i]) by the same two-pass scheme: a grid whose size depends only on n
// writes one partial sum per block (each thread's grid-stride share in index order, then
// block_sum's fixed tree), and a single block adds the partials in a fixed order. The result
// is therefore bitwise reproducible.
#include "core/backend.h"
#include "cuda/block_reduce.cuh"
#include "cuda/check.cuh"
#include "cuda/scratch.cuh"
#include "math/elementwise.h"

namespace pyregnet::cuda {
namespace {

// The second pass sums the partials with one block of kFinalThreads threads, one partial each
// at most: the first pass never has more blocks than that.
constexpr int kFinalThreads = 1024;

template <class Acc, class F>
__global__ void __launch_bounds__(kBlockThreads)
    partial_sums_kernel(const F f, const int64_t n, Acc* const partial) {
  Acc s = Acc(0);
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
double penalty(const T* w, int64_t n, double l1, double l2, Stream st) {
  return sum_over<double>(PenaltyTerm<T>{w, l1, l2}, n, as_cuda_stream(st), "penalty");
}

template <class T>
int64_t sparsity_count(const T* w, int64_t n, double threshold, Stream st) {
  return sum_over<long long>(SmallWeight<T>{w, threshold}, n, as_cuda_stream(st), "sparsity_count");
}

template double penalty<float>(const float*, int64_t, double, double, Stream);
template double penalty<double>(const double*, int64_t, double, double, Stream);
template int64_t sparsity_count<float>(const float*, int64_t, double, Stream);
template int64_t sparsity_count<double>(const double*, int64_t, double, Stream);

}  // namespace pyregnet::cuda
