// dense (fully connected) on the CPU, PyTorch layout: x (N, in), w (out, in), b (out).
//   forward:  y  = x . w^T + b, then ReLU when asked (the epilogue saves a pass)
//   backward: dx = dy . w,  dw = dy^T . x,  db = sum over the batch of dy
#include "core/backend.h"
#include "cpu/fp_mode.h"
#include "cpu/gemm.h"

namespace pyregnet::cpu {

template <class T>
void dense_forward(const T* x, const T* w, const T* b, T* y, const DenseShape& s, bool relu_out) {
  gemm<T>(s.N, s.out, s.in, {x, s.in, false}, {w, s.in, true}, y, s.out, false, true);
  parallel([&] {
#pragma omp for schedule(static)
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t j = 0; j < s.out; ++j) {
        const T z = y[n * s.out + j] + b[j];
        y[n * s.out + j] = relu_out ? relu(z) : z;
      }
  });
}

template <class T>
void dense_backward(const T* x, const T* w, const T* dy, T* dx, T* dw, T* db, const DenseShape& s) {
  gemm<T>(s.N, s.in, s.out, {dy, s.out, false}, {w, s.in, false}, dx, s.in, false, true);
  gemm<T>(s.out, s.in, s.N, {dy, s.out, true}, {x, s.in, false}, dw, s.in, false, true);
  for (int64_t j = 0; j < s.out; ++j) db[j] = T(0);
  for (int64_t n = 0; n < s.N; ++n)  // batch order fixed: reproducible sums
    for (int64_t j = 0; j < s.out; ++j) db[j] += dy[n * s.out + j];
}

template void dense_forward<float>(const float*, const float*, const float*, float*, const DenseShape&, bool);
template void dense_forward<double>(const double*, const double*, const double*, double*, const DenseShape&, bool);
template void dense_backward<float>(const float*, const float*, const float*, float*, float*, float*, const DenseShape&);
template void dense_backward<double>(const double*, const double*, const double*, double*, double*, double*, const DenseShape&);

}  // namespace pyregnet::cpu
