// Gathering a batch on the CPU:
//   augment_batch  batch[b] = transform_b(images[index[offset + b]]), uint8 (N, H, W, C) ->
//                  float (B, C, H, W) in [0, 1], transforms from math/augment.h;
//   take           out[b] = values[index[offset + b]] (the batch's labels).
// As on the GPU, a position or an index out of range gives a zero image (and is counted for the
// caller to report) or the label -1.
#include "core/backend.h"
#include "cpu/fp_mode.h"
#include "math/augment.h"
#include "math/int_array.h"

namespace pyregnet::cpu {

template <class T>
int64_t augment_batch(const uint8_t* images, IntArray index, T* batch, const AugmentShape& s, double* into) {
  const uint64_t step = uint64_t(read_counter(s.step));
  const int64_t offset = read_counter(s.offset);
  int64_t bad_indices = 0;
  parallel([&] {
#pragma omp for schedule(static) reduction(+ : bad_indices)
    for (int64_t b = 0; b < s.B; ++b) {
      const AugmentDraw d = augment_draw(s.seed, step, uint64_t(b), s.max_shift, s.flip);
      const int64_t n = sample_at(index, s.n_index, offset + b, s.N);
      T* out = batch + b * s.C * s.H * s.W;
      if (n < 0) {
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
  });
  if (into == nullptr) return bad_indices;
  into[0] += double(bad_indices);
  return 0;
}

void take(IntArray values, int64_t n_values, IntArray index, int64_t n_index, Counter offset, int32_t* out,
          int64_t B) {
  const int64_t start = read_counter(offset);
  for (int64_t b = 0; b < B; ++b) out[b] = take_at(values, n_values, index, n_index, start + b);
}

template int64_t augment_batch<float>(const uint8_t*, IntArray, float*, const AugmentShape&, double*);
template int64_t augment_batch<double>(const uint8_t*, IntArray, double*, const AugmentShape&, double*);

}  // namespace pyregnet::cpu
