// ReLU on the CPU, element math from math/elementwise.h.
#include "core/backend.h"
#include "cpu/fp_mode.h"

namespace pyregnet::cpu {

template <class T>
void relu_forward(const T* x, T* y, int64_t n) {
  parallel([&] {
#pragma omp for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) y[i] = relu(x[i]);
  });
}

template <class T>
void relu_backward(const T* y, const T* dy, T* dx, int64_t n) {
  parallel([&] {
#pragma omp for simd schedule(static)
    for (int64_t i = 0; i < n; ++i) dx[i] = relu_grad(y[i], dy[i]);
  });
}

template void relu_forward<float>(const float*, float*, int64_t);
template void relu_forward<double>(const double*, double*, int64_t);
template void relu_backward<float>(const float*, const float*, float*, int64_t);
template void relu_backward<double>(const double*, const double*, double*, int64_t);

}  // namespace pyregnet::cpu
