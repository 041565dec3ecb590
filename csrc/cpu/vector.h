// The CPU backend's vector registers: their width for the instruction set this file is compiled
// for, the lanes a type has in them, and a register transpose of a square of vectors. GCC's
// vector extensions (vector_size, __builtin_shuffle) rather than intrinsics, so that one spelling
// serves SSE2, AVX2 and AVX-512.
#pragma once
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace pyregnet::cpu {

// The widest vector register of the instruction set this file is compiled for, in bytes.
#if defined(__AVX512F__)
inline constexpr int64_t kVectorBytes = 64;
#elif defined(__AVX__)
inline constexpr int64_t kVectorBytes = 32;
#else
inline constexpr int64_t kVectorBytes = 16;
#endif

// Elements of T in a vector register.
template <class T>
constexpr int64_t lanes() { return kVectorBytes / int64_t(sizeof(T)); }

// Integers as wide as T: the lanes of masks and shuffle indices for vectors of T.
template <class T>
using LaneInt = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;

// Transposes the L x L matrix whose rows are the vectors v[0, L): v[l][i] becomes the old v[i][l].
// Rounds H = L/2, L/4, ..., 1: each 2 x 2 matrix of H x H blocks in rows i and i + H (i & H == 0)
// transposed, lanes [H, 2H) (mod 2H) of row i exchanged with lanes [0, H) of row i + H, by two
// two-vector shuffles (log2(L) * L shuffles in all). Call it as transpose<T, L / 2>(v,
// std::make_index_sequence<L>()).
template <class T, int64_t H, class Vec, int64_t L, size_t... k>
inline void transpose(Vec (&v)[L], std::index_sequence<k...> lane_numbers) {
  typedef LaneInt<T> Int;
  typedef Int Ints __attribute__((vector_size(sizeof(Vec))));
  // __builtin_shuffle(a, b, index): lane k is a[index[k]] for index[k] < L, else b[index[k] - L]
  const Ints low = {Int(k & H ? L + k - H : k)...}, high = {Int(k & H ? L + k : k + H)...};
  for (int64_t i = 0; i < L; ++i)
    if (!(i & H)) {
      const Vec a = v[i], b = v[i + H];
      v[i] = __builtin_shuffle(a, b, low);
      v[i + H] = __builtin_shuffle(a, b, high);
    }
  if constexpr (H > 1) transpose<T, H / 2>(v, lane_numbers);
}

}  // namespace pyregnet::cpu
