// 2x2, stride-2, floor max-pooling on the CPU. Shape letters: N, C, H, W (input), P, Q (output).
// The backward pass reads each window's argmax stored by the forward pass, or recomputes it from
// x with the same rule (math/maxpool.h): dy lands on exactly the element the forward pass picked.
// The forward pass applies that rule pairwise (pool_row), which picks the same element.
#include <algorithm>

#include "core/backend.h"
#include "cpu/fp_mode.h"
#include "math/maxpool.h"

namespace pyregnet::cpu {

namespace {

// One output row in two vectorizable passes (math/maxpool.h, right_wins): the better of each
// horizontal pair of the upper input row goes to y (and its offset 0/1 to argmax), then the
// better of each pair of the lower row (offset 2/3) replaces it where it wins. A single loop
// over the four window elements does not vectorize with GCC 12 (it cannot group the four
// interleaved loads); these two loops do (AVX2 with -march=native, SSE2 without).
template <class T, bool kArgmax>
void pool_row(const T* __restrict upper, const T* __restrict lower, T* __restrict y, uint8_t* __restrict argmax,
              int64_t Q) {
  for (int64_t q = 0; q < Q; ++q) {
    const bool right = right_wins(upper[2 * q], upper[2 * q + 1]);
    y[q] = right ? upper[2 * q + 1] : upper[2 * q];
    if (kArgmax) argmax[q] = right ? 1 : 0;
  }
  for (int64_t q = 0; q < Q; ++q) {
    const bool right = right_wins(lower[2 * q], lower[2 * q + 1]);
    const T candidate = right ? lower[2 * q + 1] : lower[2 * q];
    const bool below = right_wins(y[q], candidate);
    y[q] = below ? candidate : y[q];
    if (kArgmax) argmax[q] = below ? (right ? 3 : 2) : argmax[q];
  }
}

}  // namespace

template <class T>
void maxpool2d_forward(const T* x, T* y, uint8_t* argmax, const PoolShape& s) {
  parallel([&] {
#pragma omp for schedule(static)
    for (int64_t plane = 0; plane < s.N * s.C; ++plane) {
      const T* xp = x + plane * s.H * s.W;
      for (int64_t p = 0; p < s.P; ++p) {
        const int64_t out = (plane * s.P + p) * s.Q;
        const T* upper = xp + 2 * p * s.W;
        if (argmax != nullptr)
          pool_row<T, true>(upper, upper + s.W, y + out, argmax + out, s.Q);
        else
          pool_row<T, false>(upper, upper + s.W, y + out, nullptr, s.Q);
      }
    }
  });
}

template <class T>
void maxpool2d_backward(const T* x, const uint8_t* argmax, const T* dy, T* dx, const PoolShape& s) {
  parallel([&] {
#pragma omp for schedule(static)
    for (int64_t plane = 0; plane < s.N * s.C; ++plane) {
      const T* xp = x + plane * s.H * s.W;
      const T* dyp = dy + plane * s.P * s.Q;
      T* dxp = dx + plane * s.H * s.W;
      std::fill(dxp, dxp + s.H * s.W, T(0));
      for (int64_t p = 0; p < s.P; ++p)
        for (int64_t q = 0; q < s.Q; ++q) {
          const int64_t corner = 2 * p * s.W + 2 * q;
          const int which = window_choice(argmax, plane * s.P * s.Q + p * s.Q + q, xp + corner, s.W);
          dxp[corner + window_offset(which, s.W)] = dyp[p * s.Q + q];
        }
    }
  });
}

template void maxpool2d_forward<float>(const float*, float*, uint8_t*, const PoolShape&);
template void maxpool2d_forward<double>(const double*, double*, uint8_t*, const PoolShape&);
template void maxpool2d_backward<float>(const float*, const uint8_t*, const float*, float*, const PoolShape&);
template void maxpool2d_backward<double>(const double*, const uint8_t*, const double*, double*, const PoolShape&);

}  // namespace pyregnet::cpu
