// Global average pooling on the GPU: x (N, C, H, W) -> y (N, C). One warp per (n, c) plane: each
// lane sums its strided share of the HW values in double, in index order, then warp_sum's fixed
// tree (deterministic, no atomics). The backward pass writes dx = dy / HW, one thread per
// element. Element math: math/batchnorm.h. The bindings keep x under 2^31 elements.
#include "core/backend.h"
#include "cuda/block_reduce.cuh"
#include "cuda/check.cuh"
#include "cuda/divmod.cuh"
#include "cuda/sum_over.cuh"
#include "math/batchnorm.h"

namespace pyregnet::cuda {
namespace {

constexpr int kWarpsPerBlock = kBlockThreads / 32;

template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    global_avgpool_forward_kernel(const T* const x, T* const y, const int planes, const int HW) {
  const int lane = int(threadIdx.x) % 32;
  const int64_t first = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  // Whole warps step together, so every lane of a warp reaches warp_sum's shuffles. int64 loop
  // counters: no overflow near 2^31.
  for (int64_t plane = first; plane < planes; plane += int64_t(gridDim.x) * kWarpsPerBlock) {
    const T* xp = x + plane * HW;
    double s = 0.0;
    for (int64_t i = lane; i < HW; i += 32) s += double(xp[i]);
    s = warp_sum(s);
    if (lane == 0) y[plane] = average<T>(s, HW);
  }
}

template <class T>
struct AverageGrad {
  const T* dy;
  T* dx;
  int HW;
  DivMod by_HW;
  __device__ void operator()(int64_t i) const { dx[i] = average_grad(dy[by_HW.div(int(i))], HW); }
};

}  // namespace

template <class T>
void global_avgpool_forward(const T* x, T* y, const ChannelShape& s, Stream st) {
  const int64_t planes = s.N * s.C;
  if (planes == 0) return;
  global_avgpool_forward_kernel<T><<<grid_blocks(planes, kWarpsPerBlock), kBlockThreads, 0, as_cuda_stream(st)>>>(
      x, y, int(planes), int(s.HW));
  check_launch("global_avgpool_forward");
}

template <class T>
void global_avgpool_backward(const T* dy, T* dx, const ChannelShape& s, Stream st) {
  for_each(AverageGrad<T>{dy, dx, int(s.HW), DivMod(int(s.HW))}, s.N * s.C * s.HW, as_cuda_stream(st),
           "global_avgpool_backward");
}

template void global_avgpool_forward<float>(const float*, float*, const ChannelShape&, Stream);
template void global_avgpool_forward<double>(const double*, double*, const ChannelShape&, Stream);
template void global_avgpool_backward<float>(const float*, float*, const ChannelShape&, Stream);
template void global_avgpool_backward<double>(const double*, double*, const ChannelShape&, Stream);

}  // namespace pyregnet::cuda
