// The 2x2, stride-2 max-pool window: the one definition both backends call.
#pragma once
#include "math/elementwise.h"
#include "math/hd.h"

namespace pyregnet {

// Offset (0..3, row-major: (0,0), (0,1), (1,0), (1,1)) of the maximum of the 2x2 window whose
// top-left element is at `top_left` in a row of width W. The first maximum wins ties, and a NaN
// wins over numbers, so the forward value propagates NaN and the backward pass routes the
// gradient to exactly the element the forward pass chose.
//
// right_wins(left, right): whether `right`, later in the window's order, replaces `left`: never
// when left is NaN, else when right is larger or NaN (!(right <= left) is true for a NaN right).
// The rule is associative (the first NaN, else the first maximum, of any grouping of the window
// in order), so the CPU backend may combine the two pairs of each row and then the rows, which
// vectorizes, and pick the same element as the sequential window_argmax below.
template <class T>
PYREGNET_HD bool right_wins(T left, T right) {
  return !(right <= left) && !hd_isnan(left);
}

template <class T>
PYREGNET_HD void keep_if_larger(T value, int which, T& best_value, int& best) {
  if (right_wins(best_value, value)) {
    best_value = value;
    best = which;
  }
}

// Scalars, not an array indexed by `best`: a dynamically indexed array lives in local memory
// on the GPU (ptxas reported a stack frame for it).
template <class T>
PYREGNET_HD int window_argmax(const T* top_left, int64_t W) {
  T best_value = top_left[0];
  int best = 0;
  keep_if_larger(top_left[1], 1, best_value, best);
  keep_if_larger(top_left[W], 2, best_value, best);
  keep_if_larger(top_left[W + 1], 3, best_value, best);
  return best;
}

PYREGNET_HD int64_t window_offset(int which, int64_t W) { return (which >> 1) * W + (which & 1); }

// The window's maximum for the backward pass: the one the forward pass stored (stored[out], when
// `stored` is set; & 3 keeps a corrupt byte inside the window), else recomputed from x by the
// same rule.
template <class T>
PYREGNET_HD int window_choice(const uint8_t* stored, int64_t out, const T* top_left, int64_t W) {
  return stored != nullptr ? int(stored[out] & 3) : window_argmax(top_left, W);
}

// The gradient the maximum of window `out` receives: dy[out], or, with relu_y (the pool's output,
// where the pooled x is a ReLU's output), ReLU's backward fused: at the maximum x equals relu_y.
template <class T>
PYREGNET_HD T window_grad(const T* dy, const T* relu_y, int64_t out) {
  return relu_y == nullptr ? dy[out] : relu_grad(relu_y[out], dy[out]);
}

}  // namespace pyregnet
