// The CPU backend's vector registers: their width for the instruction set this file is compiled
// for, the lanes a type has in them, and a register transpose of a square of vectors. GCC's
// vector extensions (vector_size, __builtin_shuffle) rather than intrinsics, so that one spelling
// serves SSE2, AVX2 and AVX-512.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(__AVX__)
#include <immintrin.h>
#endif

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

// Lanes [0, n) of a vector from p[0, n), the other lanes 0 (0 < n < the lanes; `live`: lane < n),
// reading nothing past p + n: the last of dy's rows ends where the caller's array does.
template <class Vec, class T, class Ints>
inline Vec load_head(const T* p, int64_t n, Ints live) {
#if defined(__AVX512F__)
  (void)live;
  if constexpr (sizeof(T) == 4) return Vec(_mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), p));
  else return Vec(_mm512_maskz_loadu_pd(__mmask8((1u << n) - 1), p));
#elif defined(__AVX__)
  (void)n;
  if constexpr (sizeof(T) == 4) return Vec(_mm256_maskload_ps(p, __m256i(live)));
  else return Vec(_mm256_maskload_pd(p, __m256i(live)));
#else
  (void)live;
  Vec v = {};
  std::memcpy(&v, p, size_t(n) * sizeof(T));
  return v;
#endif
}

// p[0, n) = lanes [0, n) of v (0 < n < the lanes; `live`: lane < n), writing nothing past p + n.
template <class Vec, class T, class Ints>
inline void store_head(T* p, Vec v, int64_t n, Ints live) {
#if defined(__AVX512F__)
  (void)live;
  if constexpr (sizeof(T) == 4) _mm512_mask_storeu_ps(p, __mmask16((1u << n) - 1), __m512(v));
  else _mm512_mask_storeu_pd(p, __mmask8((1u << n) - 1), __m512d(v));
#elif defined(__AVX__)
  (void)n;
  if constexpr (sizeof(T) == 4) _mm256_maskstore_ps(p, __m256i(live), __m256(v));
  else _mm256_maskstore_pd(p, __m256i(live), __m256d(v));
#else
  (void)live;
  std::memcpy(p, &v, size_t(n) * sizeof(T));
#endif
}

// The lanes l < n of a vector of T's integers, as load_head and store_head take them.
template <class T, class Ints>
inline Ints lanes_below(int64_t n) {
  Ints index;
  for (int64_t l = 0; l < int64_t(sizeof(Ints) / sizeof(T)); ++l) index[l] = LaneInt<T>(l);
  return index < LaneInt<T>(n);
}

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
