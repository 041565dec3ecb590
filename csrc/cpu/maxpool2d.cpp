// 2x2, stride-2, floor max-pooling on the CPU. Shape letters: N, C, H, W (input), P, Q (output).
// The backward pass reads each window's argmax stored by the forward pass, or recomputes it from
// x with the same rule (math/maxpool.h): dy lands on exactly the element the forward pass picked.
#include <algorithm>

#include "core/backend.h"
#include "cpu/fp_mode.h"
#include "math/maxpool.h"

namespace pyregnet::cpu {

template <class T>
void maxpool2d_forward(const T* x, T* y, uint8_t* argmax, const PoolShape& s) {
  parallel([&] {
#pragma omp for schedule(static)
    for (int64_t plane = 0; plane < s.N * s.C; ++plane) {
      const T* xp = x + plane * s.H * s.W;
      T* yp = y + plane * s.P * s.Q;
      for (int64_t p = 0; p < s.P; ++p)
        for (int64_t q = 0; q < s.Q; ++q) {
          const T* corner = xp + 2 * p * s.W + 2 * q;
          const int which = window_argmax(corner, s.W);
          yp[p * s.Q + q] = corner[window_offset(which, s.W)];
          if (argmax != nullptr) argmax[plane * s.P * s.Q + p * s.Q + q] = uint8_t(which);
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
