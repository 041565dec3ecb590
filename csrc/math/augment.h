// Data augmentation of one training image, written once for both backends: a counter-based
// random draw (so a batch's randomness depends only on the seed, the step and the position in
// the batch: reproducible, resumable, and the same on every backend and every replay), and the
// source pixel of each output pixel.
//
// Layouts: images uint8 (N, H, W, C) as CIFAR-10 ships; the batch float (B, C, H, W) in [0, 1].
#pragma once
#include "math/hd.h"

namespace pyregnet {

// SplitMix64's finalizer (Steele, Lea & Flood 2014): a bijective 64-bit mix whose outputs for
// consecutive inputs pass BigCrush; used as a hash of (seed, step, sample).
PYREGNET_HD uint64_t mix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct AugmentDraw {
  int dy, dx;  // shift in pixels, each uniform in [-max_shift, max_shift]
  bool flip;   // horizontal flip with probability 1/2
};

// The random transform of sample `i` of the batch of step `step`.
PYREGNET_HD AugmentDraw augment_draw(uint64_t seed, uint64_t step, uint64_t i, int max_shift, bool flip) {
  const uint64_t r = mix64(mix64(seed ^ mix64(step)) + i);
  const uint64_t span = uint64_t(2 * max_shift + 1);
  AugmentDraw d;
  d.dy = int((r & 0xFFFF) % span) - max_shift;
  d.dx = int(((r >> 16) & 0xFFFF) % span) - max_shift;
  d.flip = flip && ((r >> 63) != 0);
  return d;
}

PYREGNET_HD int64_t clamp_index(int64_t v, int64_t n) { return v < 0 ? 0 : (v >= n ? n - 1 : v); }

// Output pixel (h, w) of the transformed image is input pixel (source_row, source_col): the
// image is mirrored left-right (when flip), then its content moves by (dy, dx); pixels shifted in
// from outside repeat the nearest edge pixel (Keras ImageDataGenerator's default
// fill_mode="nearest"). dx is drawn symmetrically, so mirror-then-shift and shift-then-mirror
// are the same distribution of images.
PYREGNET_HD int64_t source_row(const AugmentDraw& d, int64_t h, int64_t H) { return clamp_index(h - d.dy, H); }
PYREGNET_HD int64_t source_col(const AugmentDraw& d, int64_t w, int64_t W) {
  const int64_t c = clamp_index(w - d.dx, W);
  return d.flip ? W - 1 - c : c;
}

// uint8 pixel to [0, 1].
template <class T>
PYREGNET_HD T pixel_to_unit(uint8_t v) { return T(v) / T(255); }

}  // namespace pyregnet
