// Dense (fully connected) layer on the tiled GEMM of gemm.cuh.
//
// Shape letters: N batch, in input features, out output features; x is N x in, w is out x in
// (row-major, as PyTorch), b is out, y and dy are N x out.
//
//   forward  y  = x . w^T + b     GEMM M = N,   N = out, Kdim = in
//   dx       dx = dy . w          GEMM M = N,   N = in,  Kdim = out
//   dw       dw = dy^T . x        GEMM M = out, N = in,  Kdim = N (split-K for a large batch)
//   db       db = column sums of dy
//
// dx, dw and db are overwritten.
#include "core/backend.h"
#include "cuda/block_reduce.cuh"
#include "cuda/check.cuh"
#include "cuda/gemm.cuh"

namespace pyregnet::cuda {
namespace {

// Operand views of a row-major matrix p with rows of length ld.

// A(m, k) = p[m, k]
template <class T>
struct RowMajorA {
  static constexpr bool k_contiguous = true;
  const T* p;
  int ld;
  __device__ T operator()(int m, int k) const { return p[m * ld + k]; }
};

// A(m, k) = p[k, m]
template <class T>
struct TransposedA {
  static constexpr bool k_contiguous = false;
  const T* p;
  int ld;
  __device__ T operator()(int m, int k) const { return p[k * ld + m]; }
};

// B(k, n) = p[k, n]
template <class T>
struct RowMajorB {
  static constexpr bool k_contiguous = false;
  const T* p;
  int ld;
  __device__ T operator()(int k, int n) const { return p[k * ld + n]; }
};

// B(k, n) = p[n, k]
template <class T>
struct TransposedB {
  static constexpr bool k_contiguous = true;
  const T* p;
  int ld;
  __device__ T operator()(int k, int n) const { return p[n * ld + k]; }
};

// out[m, n] = acc + bias[n], then the ReLU when fused (one pass over out saved)
template <class T>
struct BiasedStore {
  T* out;
  const T* bias;
  int ld;
  bool relu_out;
  __device__ void operator()(int m, int n, T acc) const {
    const T z = acc + bias[n];
    out[m * ld + n] = relu_out ? relu(z) : z;
  }
};

// out[m, n] = acc
template <class T>
struct Store {
  T* out;
  int ld;
  __device__ void operator()(int m, int n, T acc) const { out[m * ld + n] = acc; }
};

}  // namespace

template <class T>
void dense_forward(const T* x, const T* w, const T* b, T* y, const DenseShape& s, bool relu_out, Stream st) {
  const int in = int(s.in), out = int(s.out);
  gemm<T>(RowMajorA<T>{x, in}, TransposedB<T>{w, in}, BiasedStore<T>{y, b, out, relu_out}, s.N, s.out, s.in,
          as_cuda_stream(st), "dense_forward");
}

template <class T>
void dense_backward(const T* x, const T* w, const T* dy, T* dx, T* dw, T* db, const DenseShape& s,
                    Stream st) {
  const int in = int(s.in), out = int(s.out);
  const cudaStream_t stream = as_cuda_stream(st);
  gemm<T>(RowMajorA<T>{dy, out}, RowMajorB<T>{w, in}, Store<T>{dx, in}, s.N, s.in, s.out, stream,
          "dense_backward (dx)");
  gemm<T>(TransposedA<T>{dy, out}, RowMajorB<T>{x, in}, Store<T>{dw, in}, s.out, s.in, s.N, stream,
          "dense_backward (dw)");
  channel_sum(dy, db, s.N, s.out, int64_t(1), stream, "dense_backward (db)");
}

template void dense_forward<float>(const float*, const float*, const float*, float*,
                                   const DenseShape&, bool, Stream);
template void dense_forward<double>(const double*, const double*, const double*, double*,
                                    const DenseShape&, bool, Stream);
template void dense_backward<float>(const float*, const float*, const float*, float*, float*,
                                    float*, const DenseShape&, Stream);
template void dense_backward<double>(const double*, const double*, const double*, double*,
                                     double*, double*, const DenseShape&, Stream);

}  // namespace pyregnet::cuda
