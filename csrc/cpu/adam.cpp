// The fused penalty + Adam update on the CPU: one pass over w, g, m, v (math/elementwise.h).
// Elements [0, n_penalized) are kernel weights and get the penalty gradient; the rest (biases,
// at the end of the flat parameter buffer) do not.
#include "core/backend.h"

namespace pyregnet::cpu {

template <class T>
void adam_update(T* w, const T* g, T* m, T* v, int64_t n, int64_t n_penalized, const AdamStep& s) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < n; ++i) adam_element(w[i], g[i], m[i], v[i], i < n_penalized, s);
}

template void adam_update<float>(float*, const float*, float*, float*, int64_t, int64_t, const AdamStep&);
template void adam_update<double>(double*, const double*, double*, double*, int64_t, int64_t, const AdamStep&);

}  // namespace pyregnet::cpu
