// The residual add with the option-A shortcut on the GPU (math/residual.h), one thread per
// element of the output (forward) or of x (backward, which thus writes all of `out` and may run
// in place on `grad`). The bindings keep every array under 2^31 elements.
#include "core/backend.h"
#include "cuda/check.cuh"
#include "cuda/divmod.cuh"
#include "cuda/sum_over.cuh"
#include "math/residual.h"

namespace pyregnet::cuda {
namespace {

// Splits a flat NCHW-like index into (n, channel, row, column) of extents (*, D1, D2, D3).
struct Coordinates {
  DivMod by_D3, by_D2, by_D1;
  __device__ __forceinline__ void split(int e, int& n, int& d1, int& d2, int& d3) const {
    int rows, planes;
    by_D3.divmod(e, rows, d3);
    by_D2.divmod(rows, planes, d2);
    by_D1.divmod(planes, n, d1);
  }
};

template <class T>
struct ResidualForward {
  const T *main, *x;
  T* y;
  ShortcutShape s;
  Coordinates at;  // of y: (N, K, P, Q)
  bool relu;
  __device__ void operator()(int64_t i) const {
    int n, k, p, q;
    at.split(int(i), n, k, p, q);
    const int64_t src = shortcut_source(s, n, k, p, q);
    y[i] = residual_sum(main[i], src < 0 ? T(0) : x[src], relu);
  }
};

template <class T>
struct ResidualBackward {
  const T *dy, *grad;
  T* out;
  ShortcutShape s;
  Coordinates at;  // of x: (N, C, H, W)
  __device__ void operator()(int64_t i) const {
    int n, c, h, w;
    at.split(int(i), n, c, h, w);
    const int64_t dst = shortcut_target(s, n, c, h, w);
    out[i] = grad[i] + (dst < 0 ? T(0) : dy[dst]);
  }
};

}  // namespace

template <class T>
void residual_add_forward(const T* main, const T* x, T* y, const ShortcutShape& s, bool relu, Stream st) {
  const Coordinates at{DivMod(int(s.Q)), DivMod(int(s.P)), DivMod(int(s.K))};
  for_each(ResidualForward<T>{main, x, y, s, at, relu}, s.N * s.K * s.P * s.Q, as_cuda_stream(st),
           "residual_add_forward");
}

template <class T>
void residual_add_backward(const T* dy, const T* grad, T* out, const ShortcutShape& s, Stream st) {
  const Coordinates at{DivMod(int(s.W)), DivMod(int(s.H)), DivMod(int(s.C))};
  for_each(ResidualBackward<T>{dy, grad, out, s, at}, s.N * s.C * s.H * s.W, as_cuda_stream(st),
           "residual_add_backward");
}

template void residual_add_forward<float>(const float*, const float*, float*, const ShortcutShape&, bool, Stream);
template void residual_add_forward<double>(const double*, const double*, double*, const ShortcutShape&, bool, Stream);
template void residual_add_backward<float>(const float*, const float*, float*, const ShortcutShape&, Stream);
template void residual_add_backward<double>(const double*, const double*, double*, const ShortcutShape&, Stream);

}  // namespace pyregnet::cuda
