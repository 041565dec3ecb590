// Global average pooling on the CPU: x (N, C, H, W) -> y (N, C), the mean of each (n, c) plane
// of HW = H * W values, summed in double by one thread (the same bits for any thread count).
// Element math: math/batchnorm.h.
#include "core/backend.h"
#include "cpu/chunked_sum.h"
#include "cpu/fp_mode.h"
#include "math/batchnorm.h"

namespace pyregnet::cpu {

template <class T>
void global_avgpool_forward(const T* x, T* y, const ChannelShape& s) {
  parallel([&] {
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < s.N * s.C; ++nc) {
      const T* xp = x + nc * s.HW;
      y[nc] = average<T>(lane_sum(0, s.HW, [&](int64_t i) { return double(xp[i]); }), s.HW);
    }
  });
}

template <class T>
void global_avgpool_backward(const T* dy, T* dx, const ChannelShape& s) {
  parallel([&] {
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < s.N * s.C; ++nc) {
      const T g = average_grad(dy[nc], s.HW);
      T* dxp = dx + nc * s.HW;
      for (int64_t i = 0; i < s.HW; ++i) dxp[i] = g;
    }
  });
}

template void global_avgpool_forward<float>(const float*, float*, const ChannelShape&);
template void global_avgpool_forward<double>(const double*, double*, const ChannelShape&);
template void global_avgpool_backward<float>(const float*, float*, const ChannelShape&);
template void global_avgpool_backward<double>(const double*, double*, const ChannelShape&);

}  // namespace pyregnet::cpu
