// 2x2, stride-2, floor max-pooling on the CPU. Shape letters: N, C, H, W (input), P, Q (output).
// The backward pass reads each window's argmax stored by the forward pass, or recomputes it from
// x with the same rule (math/maxpool.h): dy lands on exactly the element the forward pass picked.
// The forward pass applies that rule pairwise (pool_row), which picks the same element.
#include <algorithm>
#include <cstring>
#include <type_traits>

#if defined(__AVX2__) && defined(__BMI2__)
#include <immintrin.h>
#endif

#include "core/backend.h"
#include "cpu/fp_mode.h"
#include "cpu/vector.h"
#include "math/maxpool.h"

namespace pyregnet::cpu {

namespace {

// One output row in two passes (math/maxpool.h, right_wins): the better of each horizontal pair
// of the upper input row goes to y (and its offset 0/1 to argmax), then the better of each pair
// of the lower row (offset 2/3) replaces it where it wins. The portable form, for double, for
// the last outputs of a row and for builds without AVX2.
template <class T, bool kArgmax>
void pool_row_portable(const T* __restrict upper, const T* __restrict lower, T* __restrict y,
                       uint8_t* __restrict argmax, int64_t Q) {
  for (int64_t q = 0; q < Q; ++q) {
    const bool right = right_wins(upper[2 * q], upper[2 * q + 1]);
    y[q] = right ? upper[2 * q + 1] : upper[2 * q];
    if (kArgmax) argmax[q] = right ? 1 : 0;
  }
  for (int64_t q = 0; q < Q; ++q) {
    const bool right = right_wins(lower[2 * q], lower[2 * q + 1]);
    const T candidate = right ? lower[2 * q + 1] : lower[2 * q];
    const bool below = right_wins(y[q], candidate);
    y[q] = below ? candidate : y[q];
    if (kArgmax) argmax[q] = below ? (right ? 3 : 2) : argmax[q];
  }
}

#if defined(__AVX2__) && defined(__BMI2__)
// Windows in blocks of the vector width for float, by the same rule as compares and blends. GCC
// vectorizes pool_row_portable too, but badly: with its stride-2 loads and byte stores pool1's
// forward pass (64 x 32 x 30 x 30) took 4.2 ms of a training step on a Zen 3 core pair, in
// blocks of eight 0.4-0.6 ms, its memory roofline (docs/results.md, CPU speed work). A row goes in blocks, the last one overlapping the one
// before: it recomputes a few outputs from the same inputs, so it writes the same values. Rows
// shorter than eight (pool2's Q is 6) take blocks of four.
struct Lanes8 {
  using V = __m256;
  static constexpr int64_t kWidth = 8;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V in_order(V v) {  // the shuffles work per 128-bit half: put the halves' pairs in order
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), _MM_SHUFFLE(3, 1, 2, 0)));
  }
  static V evens(V a, V b) { return in_order(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))); }
  static V odds(V a, V b) { return in_order(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))); }
  static V right_wins(V left, V right) {  // !(right <= left) && !isnan(left), lane by lane
    return _mm256_and_ps(_mm256_cmp_ps(right, left, _CMP_NLE_UQ), _mm256_cmp_ps(left, left, _CMP_ORD_Q));
  }
  static V blend(V a, V b, V take_b) { return _mm256_blendv_ps(a, b, take_b); }
  static int mask_bits(V m) { return _mm256_movemask_ps(m); }
};
struct Lanes4 {
  using V = __m128;
  static constexpr int64_t kWidth = 4;
  static V load(const float* p) { return _mm_loadu_ps(p); }
  static void store(float* p, V v) { _mm_storeu_ps(p, v); }
  static V evens(V a, V b) { return _mm_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)); }
  static V odds(V a, V b) { return _mm_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)); }
  static V right_wins(V left, V right) {
    return _mm_and_ps(_mm_cmp_ps(right, left, _CMP_NLE_UQ), _mm_cmp_ps(left, left, _CMP_ORD_Q));
  }
  static V blend(V a, V b, V take_b) { return _mm_blendv_ps(a, b, take_b); }
  static int mask_bits(V m) { return _mm_movemask_ps(m); }
};

// Byte i = 1 where lane i of the mask is set.
template <class L>
uint64_t lane_bytes(typename L::V mask) {
  return _pdep_u64(uint64_t(L::mask_bits(mask)), 0x0101010101010101ull);
}

// The better of the kWidth horizontal pairs in in[0 .. 2 kWidth), and where the right one won.
template <class L>
typename L::V better_of_pairs(const float* in, typename L::V* right) {
  const typename L::V a = L::load(in), b = L::load(in + L::kWidth);
  const typename L::V left_values = L::evens(a, b), right_values = L::odds(a, b);
  *right = L::right_wins(left_values, right_values);
  return L::blend(left_values, right_values, *right);
}

template <class L, bool kArgmax>
void pool_block(const float* upper, const float* lower, float* y, uint8_t* argmax) {
  typename L::V right_up, right_low;
  const typename L::V up = better_of_pairs<L>(upper, &right_up), low = better_of_pairs<L>(lower, &right_low);
  const typename L::V below = L::right_wins(up, low);
  L::store(y, L::blend(up, low, below));
  if (kArgmax) {  // per byte: below ? 2 + right_low : right_up
    constexpr uint64_t ones = 0x0101010101010101ull >> (8 * (8 - L::kWidth));
    const uint64_t b = lane_bytes<L>(below);
    const uint64_t code = (b << 1) | (b & lane_bytes<L>(right_low)) | (lane_bytes<L>(right_up) & (b ^ ones));
    std::memcpy(argmax, &code, L::kWidth);  // little-endian: byte i to argmax[i]
  }
}

// A row in blocks of L::kWidth (false: too short). A block at `at` reads upper[2 at .. 2 at +
// 2 kWidth): at most upper[2Q - 1] <= upper[W - 1], never past the row.
template <class L, bool kArgmax>
bool pool_row_blocks(const float* upper, const float* lower, float* y, uint8_t* argmax, int64_t Q) {
  if (Q < L::kWidth) return false;
  for (int64_t q = 0;; q += L::kWidth) {
    const int64_t at = std::min(q, Q - L::kWidth);
    pool_block<L, kArgmax>(upper + 2 * at, lower + 2 * at, y + at, kArgmax ? argmax + at : nullptr);
    if (at == Q - L::kWidth) return true;
  }
}
#endif

template <class T, bool kArgmax>
void pool_row(const T* upper, const T* lower, T* y, uint8_t* argmax, int64_t Q) {
#if defined(__AVX2__) && defined(__BMI2__)
  if constexpr (std::is_same_v<T, float>) {
    if (pool_row_blocks<Lanes8, kArgmax>(upper, lower, y, argmax, Q)) return;
    if (pool_row_blocks<Lanes4, kArgmax>(upper, lower, y, argmax, Q)) return;
  }
#endif
  pool_row_portable<T, kArgmax>(upper, lower, y, argmax, Q);
}

}  // namespace

template <class T>
void maxpool2d_forward(const T* x, T* y, uint8_t* argmax, const PoolShape& s) {
  parallel([&] {
#pragma omp for schedule(static)
    for (int64_t plane = 0; plane < s.N * s.C; ++plane) {
      const T* xp = x + plane * s.H * s.W;
      for (int64_t p = 0; p < s.P; ++p) {
        const int64_t out = (plane * s.P + p) * s.Q;
        const T* upper = xp + 2 * p * s.W;
        if (argmax != nullptr)
          pool_row<T, true>(upper, upper + s.W, y + out, argmax + out, s.Q);
        else
          pool_row<T, false>(upper, upper + s.W, y + out, nullptr, s.Q);
      }
    }
  });
}

namespace {

// One window row of the backward pass with the argmax stored: each element of the two input rows
// written once, the window's gradient g where the argmax points and 0 elsewhere, rather than the
// plane zero-filled and then scattered into (every element written twice, the second time one
// at a time). kRelu: g passes only where the pool's output y > 0 (relu_grad). L windows at a
// time in vectors, the two columns of each row interleaved by shuffles: left to GCC, the
// stride-2 stores became AVX-512 scatters, 6x slower than the scalar scatter. A row shorter
// than the vector takes vectors half as wide (pool2's 6 windows: 4 floats).
template <class T, bool kRelu, int kBytes = 32>
void unpool_row(const uint8_t* __restrict argmax, const T* __restrict dy, const T* __restrict y, T* __restrict upper,
                T* __restrict lower, int64_t Q) {
  constexpr int L = kBytes / int(sizeof(T));
  typedef T Vec __attribute__((vector_size(kBytes)));
  typedef LaneInt<T> Int;
  typedef Int Ints __attribute__((vector_size(kBytes)));
  typedef uint8_t Bytes __attribute__((vector_size(L)));
  const auto interleave = [](Vec a, Vec b, T* out) {   // out[2i] = a[i], out[2i + 1] = b[i]
    Ints low, high;
    for (int i = 0; i < L; ++i) {
      low[i] = Int(i % 2 ? L + i / 2 : i / 2);
      high[i] = Int(i % 2 ? L + (L + i) / 2 : (L + i) / 2);
    }
    const Vec first = __builtin_shuffle(a, b, low), second = __builtin_shuffle(a, b, high);
    std::memcpy(out, &first, sizeof first);
    std::memcpy(out + L, &second, sizeof second);
  };
  const auto block = [&](int64_t q) {
    Vec g, m;
    Bytes a;
    std::memcpy(&g, dy + q, sizeof g);
    std::memcpy(&a, argmax + q, sizeof a);
    const Vec zero = {};
    if constexpr (kRelu) {
      std::memcpy(&m, y + q, sizeof m);
      g = m > zero ? g : zero;
    }
    const Ints which = __builtin_convertvector(a, Ints) & Int(3);
    interleave(which == 0 ? g : zero, which == 1 ? g : zero, upper + 2 * q);
    interleave(which == 2 ? g : zero, which == 3 ? g : zero, lower + 2 * q);
  };
  if (Q >= L) {  // in blocks, the last one overlapping the one before (the same values again)
    for (int64_t q = 0;; q += L) {
      block(std::min(q, Q - L));
      if (q >= Q - L) return;
    }
  }
  if constexpr (kBytes > 16) return unpool_row<T, kRelu, kBytes / 2>(argmax, dy, y, upper, lower, Q);
  for (int64_t q = 0; q < Q; ++q) {  // a short row: zeros, then g where the argmax points (no branch
    const T g = window_grad(dy, kRelu ? y : nullptr, q);   // on it: it is as good as random)
    const int which = argmax[q] & 3;   // & 3 as window_choice: a corrupt byte stays in the window
    upper[2 * q] = upper[2 * q + 1] = lower[2 * q] = lower[2 * q + 1] = T(0);
    (which < 2 ? upper : lower)[2 * q + (which & 1)] = g;
  }
}

}  // namespace

template <class T>
void maxpool2d_backward(const T* x, const uint8_t* argmax, const T* dy, const T* relu_y, T* dx, const PoolShape& s) {
  parallel([&] {
#pragma omp for schedule(static)
    for (int64_t plane = 0; plane < s.N * s.C; ++plane) {
      const T* xp = x + plane * s.H * s.W;
      T* dxp = dx + plane * s.H * s.W;
      if (argmax != nullptr) {
        for (int64_t p = 0; p < s.P; ++p) {
          const int64_t out = (plane * s.P + p) * s.Q;
          T* const upper = dxp + 2 * p * s.W;
          if (relu_y != nullptr) unpool_row<T, true>(argmax + out, dy + out, relu_y + out, upper, upper + s.W, s.Q);
          else unpool_row<T, false>(argmax + out, dy + out, nullptr, upper, upper + s.W, s.Q);
          if (s.W > 2 * s.Q) upper[2 * s.Q] = upper[s.W + 2 * s.Q] = T(0);   // the column the floor drops
        }
        std::fill(dxp + 2 * s.P * s.W, dxp + s.H * s.W, T(0));               // the row the floor drops
        continue;
      }
      std::fill(dxp, dxp + s.H * s.W, T(0));
      for (int64_t p = 0; p < s.P; ++p)
        for (int64_t q = 0; q < s.Q; ++q) {
          const int64_t corner = 2 * p * s.W + 2 * q, out = plane * s.P * s.Q + p * s.Q + q;
          const int which = window_choice(argmax, out, xp + corner, s.W);
          dxp[corner + window_offset(which, s.W)] = window_grad(dy, relu_y, out);
        }
    }
  });
}

template void maxpool2d_forward<float>(const float*, float*, uint8_t*, const PoolShape&);
template void maxpool2d_forward<double>(const double*, double*, uint8_t*, const PoolShape&);
template void maxpool2d_backward<float>(const float*, const uint8_t*, const float*, const float*, float*,
                                        const PoolShape&);
template void maxpool2d_backward<double>(const double*, const uint8_t*, const double*, const double*, double*,
                                         const PoolShape&);

}  // namespace pyregnet::cpu
