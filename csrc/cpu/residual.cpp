// The residual add with the option-A shortcut on the CPU (math/residual.h): one (n, k) plane of
// the output, or one (n, c) plane of x for the backward pass, per iteration.
#include "core/backend.h"
#include "cpu/fp_mode.h"
#include "math/residual.h"

namespace pyregnet::cpu {

template <class T>
void residual_add_forward(const T* main, const T* x, T* y, const ShortcutShape& s, bool relu) {
  parallel([&] {
#pragma omp for schedule(static)
    for (int64_t nk = 0; nk < s.N * s.K; ++nk) {
      const int64_t n = nk / s.K, k = nk % s.K, plane = nk * s.P * s.Q;
      for (int64_t p = 0; p < s.P; ++p)
        for (int64_t q = 0; q < s.Q; ++q) {
          const int64_t src = shortcut_source(s, n, k, p, q), e = plane + p * s.Q + q;
          y[e] = residual_sum(main[e], src < 0 ? T(0) : x[src], relu);
        }
    }
  });
}

template <class T>
void residual_add_backward(const T* dy, const T* grad, T* out, const ShortcutShape& s) {
  parallel([&] {
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < s.N * s.C; ++nc) {
      const int64_t n = nc / s.C, c = nc % s.C, plane = nc * s.H * s.W;
      for (int64_t h = 0; h < s.H; ++h)
        for (int64_t w = 0; w < s.W; ++w) {
          const int64_t dst = shortcut_target(s, n, c, h, w), e = plane + h * s.W + w;
          out[e] = grad[e] + (dst < 0 ? T(0) : dy[dst]);
        }
    }
  });
}

template void residual_add_forward<float>(const float*, const float*, float*, const ShortcutShape&, bool);
template void residual_add_forward<double>(const double*, const double*, double*, const ShortcutShape&, bool);
template void residual_add_backward<float>(const float*, const float*, float*, const ShortcutShape&);
template void residual_add_backward<double>(const double*, const double*, double*, const ShortcutShape&);

}  // namespace pyregnet::cpu
