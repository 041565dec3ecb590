// The residual add of a ResNet basic block with He et al.'s (2016) option-A shortcut, the one
// definition both backends call:
//   shortcut(x)[n, k, p, q] = x[n, k, p * stride, q * stride] for k < C, 0 for C <= k < K
// (subsample, then zero channels appended after x's, as fb.resnet.torch's shortcutType 'A'
// concatenates them); stride 1 and K = C is the identity shortcut.
//
// Fused with the add (y = main + shortcut(x), optionally ReLU'd) rather than a separate shortcut
// op: the shortcut tensor is never written and read back (a full pass over the block's output
// saved), the identity and the projection-free downsampling blocks are one op, and the backward
// pass adds the shortcut's gradient to the residual branch's dx in the same pass.
#pragma once
#include "math/elementwise.h"
#include "math/shapes.h"

namespace pyregnet {

// Offset in x of shortcut(x)[n, k, p, q]; -1 for a zero channel.
PYREGNET_HD int64_t shortcut_source(const ShortcutShape& s, int64_t n, int64_t k, int64_t p, int64_t q) {
  return k < s.C ? ((n * s.C + k) * s.H + p * s.stride) * s.W + q * s.stride : -1;
}

// Offset in y of the output that x[n, c, h, w] feeds; -1 where the subsampling skips it.
PYREGNET_HD int64_t shortcut_target(const ShortcutShape& s, int64_t n, int64_t c, int64_t h, int64_t w) {
  if (h % s.stride != 0 || w % s.stride != 0) return -1;
  return ((n * s.K + c) * s.P + h / s.stride) * s.Q + w / s.stride;
}

template <class T>
PYREGNET_HD T residual_sum(T main, T shortcut, bool with_relu) {
  const T v = main + shortcut;
  return with_relu ? relu(v) : v;
}

}  // namespace pyregnet
