// ReLU forward and backward, elementwise over n values with relu / relu_grad of
// math/elementwise.h. The backward pass reads the forward output y, not the input.
#include "core/backend.h"
#include "cuda/check.cuh"
#include "math/elementwise.h"

namespace pyregnet::cuda {
namespace {

template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    relu_forward_kernel(const T* const x, T* const y, const int64_t n) {
  for (int64_t i = grid_start(); i < n; i += grid_stride()) y[i] = relu(x[i]);
}

template <class T>
__global__ void __launch_bounds__(kBlockThreads)
    relu_backward_kernel(const T* const y, const T* const dy, T* const dx, const int64_t n) {
  for (int64_t i = grid_start(); i < n; i += grid_stride()) dx[i] = relu_grad(y[i], dy[i]);
}

}  // namespace

template <class T>
void relu_forward(const T* x, T* y, int64_t n, Stream st) {
  if (n == 0) return;
  relu_forward_kernel<T><<<grid_blocks(n), kBlockThreads, 0, as_cuda_stream(st)>>>(x, y, n);
  check_launch("relu_forward");
}

template <class T>
void relu_backward(const T* y, const T* dy, T* dx, int64_t n, Stream st) {
  if (n == 0) return;
  relu_backward_kernel<T><<<grid_blocks(n), kBlockThreads, 0, as_cuda_stream(st)>>>(y, dy, dx, n);
  check_launch("relu_backward");
}

template void relu_forward<float>(const float*, float*, int64_t, Stream);
template void relu_forward<double>(const double*, double*, int64_t, Stream);
template void relu_backward<float>(const float*, const float*, float*, int64_t, Stream);
template void relu_backward<double>(const double*, const double*, double*, int64_t, Stream);

}  // namespace pyregnet::cuda
