// Shapes of the op families, shared by the binding checks and both backends.
// Letters: N, C, H, W (input), K (output channels), R, S (filter), P, Q (output H, W).
#pragma once
#include <cstdint>

namespace pyregnet {

// Element type codes of the arrays that cross the boundary.
enum class DType : int { f32, f64, i8, i16, i32, i64, u8, u16, u32, u64, other };

struct ConvShape {
  int64_t N, C, H, W;  // input
  int64_t K, R, S;     // filter
  int64_t pad;         // zero padding on every side
  int64_t stride;      // the same in both directions
  int64_t P, Q;        // output: P = (H + 2*pad - R) / stride + 1 (floor), Q likewise
};

// 2x2 window, stride 2, floor: P = H / 2, Q = W / 2.
struct PoolShape {
  int64_t N, C, H, W, P, Q;
};

// Per-channel ops over an activation (N, C, H, W) seen as (N, C, HW): batch normalization and
// global average pooling.
struct ChannelShape {
  int64_t N, C, HW;
};

// Batch normalization's mode and constants. training: batch statistics, running ones updated;
// else the running statistics normalize.
struct BatchNormParams {
  bool training;
  double momentum, eps;
};

// The residual add of a ResNet block with the option-A shortcut: y (N, K, P, Q) = main +
// shortcut(x), x (N, C, H, W), C <= K, P = ceil(H / stride), Q = ceil(W / stride).
struct ShortcutShape {
  int64_t N, C, H, W, K, P, Q, stride;
};

// y (N, out) = x (N, in) . w (out, in)^T + b (out)
struct DenseShape {
  int64_t N, in, out;
};

// A step count or an offset that a kernel reads when it runs: from memory when `at` is set (an
// int64 in device memory for the CUDA backend), so that a captured CUDA graph sees the value of
// each replay; else the constant `value`. Read with read_counter() (math/int_array.h).
struct Counter {
  const int64_t* at;
  int64_t value;
};

// Gather + augment of a batch: images (N, H, W, C) uint8 -> batch (B, C, H, W) float; sample b
// of the batch is images[index[offset + b]], with index holding n_index entries.
struct AugmentShape {
  int64_t N, H, W, C, B;
  int max_shift;       // 0 = no shift
  bool flip;           // random horizontal flips
  uint64_t seed;
  Counter step;        // the draws are a hash of (seed, step, b)
  Counter offset;      // the batch's first position in index
  int64_t n_index;
};

// An array of any integer dtype (class labels, sample indices), read as int64 by int_at().
struct IntArray {
  const void* data;
  DType dtype;
};

}  // namespace pyregnet
