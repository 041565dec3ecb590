// The residual add with the option-A shortcut on the CPU (math/residual.h): one (n, k) plane of
// the output, or one (n, c) plane of x for the backward pass, per iteration. The index map is
// taken once per row (math/residual.h at q = 0 or w = 0), so that the identity shortcut's rows
// are plain vectorizable adds.
#include "core/backend.h"
#include "cpu/fp_mode.h"
#include "math/residual.h"

namespace pyregnet::cpu {

template <class T>
void residual_add_forward(const T* main, const T* x, T* y, const ShortcutShape& s, bool relu) {
  parallel([&] {
#pragma omp for schedule(static)
    for (int64_t nk = 0; nk < s.N * s.K; ++nk) {
      const int64_t n = nk / s.K, k = nk % s.K;
      for (int64_t p = 0; p < s.P; ++p) {
        const int64_t row = (nk * s.P + p) * s.Q, src = shortcut_source(s, n, k, p, 0);
        const T* m = main + row;
        T* out = y + row;
        if (src < 0) {
          for (int64_t q = 0; q < s.Q; ++q) out[q] = residual_sum(m[q], T(0), relu);
        } else if (s.stride == 1) {
          const T* xr = x + src;
#pragma omp simd
          for (int64_t q = 0; q < s.Q; ++q) out[q] = residual_sum(m[q], xr[q], relu);
        } else {
          const T* xr = x + src;
          for (int64_t q = 0; q < s.Q; ++q) out[q] = residual_sum(m[q], xr[q * s.stride], relu);
        }
      }
    }
  });
}

template <class T>
void residual_add_backward(const T* dy, const T* grad, T* out, const ShortcutShape& s) {
  parallel([&] {
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < s.N * s.C; ++nc) {
      const int64_t n = nc / s.C, c = nc % s.C;
      for (int64_t h = 0; h < s.H; ++h) {
        const int64_t row = (nc * s.H + h) * s.W, dst = shortcut_target(s, n, c, h, 0);
        const T* g = grad + row;
        T* o = out + row;
        if (s.stride == 1) {  // every element feeds the output
          const T* d = dy + dst;
#pragma omp simd
          for (int64_t w = 0; w < s.W; ++w) o[w] = g[w] + d[w];
          continue;
        }
        // grad + the shortcut's gradient, which is 0 where the subsampling skips a pixel: added,
        // not copied, as on the GPU, so that a subnormal grad is flushed alike (and -0 becomes +0),
        // and each element read before it is written (out may be grad itself).
        const T* d = dst < 0 ? nullptr : dy + dst;
        for (int64_t w = 0; w < s.W; ++w)
          o[w] = g[w] + ((d != nullptr && w % s.stride == 0) ? d[w / s.stride] : T(0));
      }
    }
  });
}

template void residual_add_forward<float>(const float*, const float*, float*, const ShortcutShape&, bool);
template void residual_add_forward<double>(const double*, const double*, double*, const ShortcutShape&, bool);
template void residual_add_backward<float>(const float*, const float*, float*, const ShortcutShape&);
template void residual_add_backward<double>(const double*, const double*, double*, const ShortcutShape&);

}  // namespace pyregnet::cpu
