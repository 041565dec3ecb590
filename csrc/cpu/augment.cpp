// Gather + augment of a training batch on the CPU: batch[b] = transform_b(images[index[b]]),
// uint8 (N, H, W, C) -> float (B, C, H, W) in [0, 1]. Transforms from math/augment.h. As on the
// GPU, an index outside [0, N) gives a zero image and is counted for the caller to report.
#include "core/backend.h"
#include "math/augment.h"
#include "math/int_array.h"

namespace pyregnet::cpu {

template <class T>
int64_t augment_batch(const uint8_t* images, IntArray index, T* batch, const AugmentShape& s) {
  int64_t bad_indices = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad_indices)
  for (int64_t b = 0; b < s.B; ++b) {
    const AugmentDraw d = augment_draw(s.seed, s.step, uint64_t(b), s.max_shift, s.flip);
    const int64_t n = int_at(index, b);
    T* out = batch + b * s.C * s.H * s.W;
    if (n < 0 || n >= s.N) {
      for (int64_t e = 0; e < s.C * s.H * s.W; ++e) out[e] = T(0);
      ++bad_indices;
      continue;
    }
    const uint8_t* image = images + n * s.H * s.W * s.C;
    for (int64_t h = 0; h < s.H; ++h) {
      const uint8_t* row = image + source_row(d, h, s.H) * s.W * s.C;
      for (int64_t w = 0; w < s.W; ++w) {
        const uint8_t* px = row + source_col(d, w, s.W) * s.C;
        for (int64_t c = 0; c < s.C; ++c) out[(c * s.H + h) * s.W + w] = pixel_to_unit<T>(px[c]);
      }
    }
  }
  return bad_indices;
}

template int64_t augment_batch<float>(const uint8_t*, IntArray, float*, const AugmentShape&);
template int64_t augment_batch<double>(const uint8_t*, IntArray, double*, const AugmentShape&);

}  // namespace pyregnet::cpu
