// The 2x2, stride-2 max-pool window: the one definition both backends call.
#pragma once
#include "math/hd.h"

namespace pyregnet {

// Offset (0..3, row-major: (0,0), (0,1), (1,0), (1,1)) of the maximum of the 2x2 window whose
// top-left element is at `top_left` in a row of width W. The first maximum wins ties, and a NaN
// wins over numbers, so the forward value propagates NaN and the backward pass routes the
// gradient to exactly the element the forward pass chose.
template <class T>
PYREGNET_HD int window_argmax(const T* top_left, int64_t W) {
  const T v[4] = {top_left[0], top_left[1], top_left[W], top_left[W + 1]};
  int best = 0;
  for (int i = 1; i < 4; ++i) {
    if (!hd_isnan(v[best]) && (v[i] > v[best] || hd_isnan(v[i]))) best = i;
  }
  return best;
}

PYREGNET_HD int64_t window_offset(int which, int64_t W) { return (which >> 1) * W + (which & 1); }

}  // namespace pyregnet
