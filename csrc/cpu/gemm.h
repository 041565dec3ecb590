// CPU matrix product for conv (through im2col) and dense: C = op(A) . op(B) (+ C).
// BLIS-style: panels of op(A) and op(B) are packed into contiguous buffers (so transposes and
// strides cost one O(MK + KN) pass, not a strided inner loop), and an MR x NR micro-kernel keeps
// its accumulators in vector registers over a KC-long slice of k. Every element of C is summed
// by one thread in one fixed k order, so results do not depend on the number of threads.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/fp_mode.h"
#include "cpu/vector.h"

namespace pyregnet::cpu {

// The micro-kernel keeps MR x NR accumulators in registers: MR rows of two vectors each, 12 of
// the 16 AVX2 (or 32 AVX-512) vector registers, leaving room for the two B vectors and the A
// broadcast. A wider tile than the register file spills every accumulator on every k: with
// 6 x 32 floats on AVX2 (sized for AVX-512) a Zen 3 core ran conv2's forward GEMM at 41 GFLOP/s,
// with 6 x 16 at 66 (docs/results.md, CPU speed work). With AVX-512's 32 registers, 8 rows (16
// accumulators) divide the layers' 16, 32 and 64 channels, where 6 leaves a latency-bound panel
// of 2 or 4 rows: on an AVX-512 EPYC (2 threads) conv1's forward pass went from 0.391 to 0.359 ms,
// conv2's from 1.616 to 1.505. Tile sizes change no sum's order.
template <class T>
struct GemmTiles {
  static constexpr int64_t MR = kVectorBytes == 64 ? 8 : 6;     // rows of C per micro-kernel
  static constexpr int64_t NR = 2 * kVectorBytes / sizeof(T);   // columns: two vectors
  static constexpr int64_t KC = 256;                // k slice kept in cache while packed
  static constexpr int64_t NC = 3072;               // columns of B packed at once
};

// Row-major matrix view with an optional transpose: at(i, k) = data[i*ld + k], or
// data[k*ld + i] when transposed. `in_place` (B only, not transposed): the micro-kernels read B
// where it is instead of from packed panels; the caller guarantees every row readable up to N
// rounded up to NR (ld >= that; the columns past N are read but their sums are never stored).
// For a short K the copy into panels is a large share of the time: conv1's forward pass (K =
// 27) took 5% less without it (docs/results.md, CPU speed work).
// `packed` (A only): data holds pack_a_whole's panels of op(A), shared by many calls.
// `row_offsets` (B in place only): row k starts at data + row_offsets[k] instead of data + k*ld:
// the rows of an implicit im2col matrix, read where they lie in the image (conv2d.cpp).
template <class T>
struct MatrixView {
  const T* data;
  int64_t ld;
  bool transposed;
  bool in_place = false;
  bool packed = false;
  const int64_t* row_offsets = nullptr;
  T at(int64_t i, int64_t k) const { return transposed ? data[k * ld + i] : data[i * ld + k]; }
};

namespace detail {

// Packs rows [i0, i0 + rows) x k-slice [k0, k0 + kc) of op(A) as MR-row panels: panel p holds
// kc groups of MR consecutive rows; rows past the matrix are zero.
template <class T>
void pack_a(const MatrixView<T>& a, int64_t i0, int64_t rows, int64_t k0, int64_t kc, T* out) {
  constexpr int64_t MR = GemmTiles<T>::MR;
  for (int64_t ip = 0; ip < rows; ip += MR) {
    T* panel = out + ip * kc;
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t i = 0; i < MR; ++i)
        panel[k * MR + i] = (ip + i < rows) ? a.at(i0 + ip + i, k0 + k) : T(0);
  }
}

// One NR-column panel of a transposed op(B), kc x width (width <= NR, the other columns zero):
// column j of the panel is the row src + j * ld of the stored matrix, k along it. Read a vector
// of L k's from each of L rows at a time and turned by a register transpose into L vectors that
// each hold L columns of one k. Element by element, each load from another row (the dense
// layer's forward pass packs w^T, 128 rows of 2304), packing took as long as the arithmetic.
template <class T>
void pack_b_transposed_panel(const T* src, int64_t ld, int64_t kc, int64_t width, T* panel) {
  constexpr int64_t NR = GemmTiles<T>::NR, L = lanes<T>();
  typedef T Vec __attribute__((vector_size(kVectorBytes)));
  int64_t k = 0;
  for (; k + L <= kc; k += L)
    for (int64_t j0 = 0; j0 < NR; j0 += L) {
      Vec v[L];
      for (int64_t i = 0; i < L; ++i) {
        if (j0 + i < width) std::memcpy(&v[i], src + (j0 + i) * ld + k, sizeof(Vec));
        else v[i] = Vec{};
      }
      transpose<T, L / 2>(v, std::make_index_sequence<L>());
      for (int64_t i = 0; i < L; ++i) std::memcpy(panel + (k + i) * NR + j0, &v[i], sizeof(Vec));
    }
  for (; k < kc; ++k)
    for (int64_t j = 0; j < NR; ++j) panel[k * NR + j] = j < width ? src[j * ld + k] : T(0);
}

// Packs k-slice [k0, k0 + kc) x columns [j0, j0 + cols) of op(B) as NR-column panels.
template <class T>
void pack_b(const MatrixView<T>& b, int64_t k0, int64_t kc, int64_t j0, int64_t cols, T* out) {
  constexpr int64_t NR = GemmTiles<T>::NR;
  for (int64_t jp = 0; jp < cols; jp += NR) {
    T* panel = out + jp * kc;
    const int64_t width = std::min(NR, cols - jp);
    if (b.transposed) {
      pack_b_transposed_panel(b.data + (j0 + jp) * b.ld + k0, b.ld, kc, width, panel);
      continue;
    }
    for (int64_t k = 0; k < kc; ++k) {
      T* dst = panel + k * NR;
      const T* src = b.data + (k0 + k) * b.ld + j0 + jp;
      for (int64_t j = 0; j < width; ++j) dst[j] = src[j];
      for (int64_t j = width; j < NR; ++j) dst[j] = T(0);
    }
  }
}

// acc = the first ROWS rows of Ap (an MR x kc panel) . B (kc x NR panel, row k at b_row(k));
// C[:ROWS, :cols] = acc, or += acc when `add`. ROWS < MR for the last panel of an M that is no
// multiple of MR: conv1's 32 channels are 5 panels of 6 and one of 2, computed as 2 rather than 6
// rows (with MR = 6, AVX2). Two Zen 3 cores: ResNet-20's stem and stage-1 forward passes 5-8%
// faster, the stem's backward (dx: 3 rows) 17%, conv1's forward 2% (within noise). The
// accumulators are zeroed by loops the compiler must not turn into a call to memset (which it did
// for `= {}`: a call per micro-kernel, 6.5% of conv1's forward pass at K = 27 on one Zen 3 core;
// without it conv1's forward pass took 2-4% less on two).
template <class T, int64_t ROWS, class BRow>
__attribute__((optimize("no-tree-loop-distribute-patterns")))
void micro_tile(int64_t kc, const T* ap, BRow b_row, T* c, int64_t ldc, int64_t cols, bool add) {
  constexpr int64_t MR = GemmTiles<T>::MR, NR = GemmTiles<T>::NR;
  T acc[ROWS][NR];
  for (int64_t i = 0; i < ROWS; ++i)
#pragma omp simd
    for (int64_t j = 0; j < NR; ++j) acc[i][j] = T(0);
  for (int64_t k = 0; k < kc; ++k) {
    const T* a = ap + k * MR;
    const T* b = b_row(k);
    for (int64_t i = 0; i < ROWS; ++i)
#pragma omp simd
      for (int64_t j = 0; j < NR; ++j) acc[i][j] += a[i] * b[j];
  }
  if (cols == NR) {  // every column: constant bounds, so whole vectors are stored
    for (int64_t i = 0; i < ROWS; ++i) {
      T* row = c + i * ldc;
      if (add) {
#pragma omp simd
        for (int64_t j = 0; j < NR; ++j) row[j] += acc[i][j];
      } else {
#pragma omp simd
        for (int64_t j = 0; j < NR; ++j) row[j] = acc[i][j];
      }
    }
    return;
  }
  // A panel narrower than NR (conv1's output rows: 30 of 32 columns, every tile): whole vectors
  // while they fit, then one under a mask. As a loop to `cols`, GCC stored the last columns one
  // at a time from the accumulators spilled to the stack: 30% of the micro-kernel's time in
  // conv1's forward pass, whose k is only 27 deep (docs/results.md, CPU speed work).
  constexpr int64_t L = lanes<T>();
  typedef T Vec __attribute__((vector_size(kVectorBytes)));
  typedef LaneInt<T> Ints __attribute__((vector_size(kVectorBytes)));
  const int64_t whole = cols / L * L;
  const Ints live = lanes_below<T, Ints>(cols - whole);
  for (int64_t i = 0; i < ROWS; ++i) {
    T* row = c + i * ldc;
    Vec a;
    for (int64_t j = 0; j < whole; j += L) {
      std::memcpy(&a, &acc[i][j], sizeof a);
      if (add) {
        Vec old;
        std::memcpy(&old, row + j, sizeof old);
        a = old + a;
      }
      std::memcpy(row + j, &a, sizeof a);
    }
    if (whole == cols) continue;
    std::memcpy(&a, &acc[i][whole], sizeof a);
    if (add) a = load_head<Vec>(row + whole, cols - whole, live) + a;
    store_head(row + whole, a, cols - whole, live);
  }
}

// micro_tile for 1 <= rows <= R (its row count is a template argument).
template <class T, int64_t R, class BRow>
void micro_kernel(int64_t kc, const T* ap, BRow b_row, T* c, int64_t ldc, int64_t rows, int64_t cols, bool add) {
  if constexpr (R > 1)
    if (rows < R) return micro_kernel<T, R - 1>(kc, ap, b_row, c, ldc, rows, cols, add);
  micro_tile<T, R>(kc, ap, b_row, c, ldc, cols, add);
}

// The calling thread's packing buffer `which` (0: A, 1: B) with room for n elements, kept from
// call to call and grown, never shrunk. Convolutions call gemm once per image: a buffer
// allocated per call (a std::vector zero-fills it, and B's was sized for KC rows even when K is
// 27) cost conv1's forward pass more than its arithmetic. The packers overwrite every element a
// call reads, so the contents left by an earlier call never matter. gemm is not re-entered on a
// thread while its buffers are in use (it calls nothing that calls it).
template <class T, int which>
T* pack_buffer(int64_t n) {
  thread_local std::vector<T> buffer;
  if (int64_t(buffer.size()) < n) buffer.resize(n);
  return buffer.data();
}

}  // namespace detail

// C (M x N, row-major, leading dimension ldc) = op(A) (M x K) . op(B) (K x N), plus the old C
// when `accumulate`. `threaded` spreads the packing and the tiles of C over the OpenMP threads;
// callers that already run in a parallel loop pass false.
template <class T>
void gemm(int64_t M, int64_t N, int64_t K, MatrixView<T> a, MatrixView<T> b, T* c, int64_t ldc,
          bool accumulate, bool threaded) {
  using Tiles = GemmTiles<T>;
  constexpr int64_t MR = Tiles::MR, NR = Tiles::NR, KC = Tiles::KC, NC = Tiles::NC;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i) std::fill(c + i * ldc, c + i * ldc + N, T(0));
    return;
  }
  const int64_t m_panels = (M + MR - 1) / MR, kc_max = std::min(K, KC);
  const bool direct = b.in_place && !b.transposed;
  T* ap = a.packed ? nullptr : detail::pack_buffer<T, 0>(m_panels * MR * kc_max);
  T* bp = direct ? nullptr : detail::pack_buffer<T, 1>(((std::min(N, NC) + NR - 1) / NR) * NR * kc_max);
  // Every slice: its panels packed (A's, then B's), then the micro-kernel over every tile. With a
  // team (`Team`), both loops are shared out, each ending in the team's barrier: the packing
  // before any tile reads it, the tiles before the next slice's packing overwrites it. Packing
  // by the calling thread alone, before a region per slice, left the other threads waiting: the
  // dense layer's forward pass (w^T, 2304 x 128, packed in 9 slices) took 0.31 ms on two
  // threads against 0.22 on one (docs/results.md, CPU speed work). Without a team the loops run
  // as plain loops: a conv calls gemm inside its own parallel region, per image, where an orphaned
  // `omp for` would bind to the conv's team, and an inactive nested region still costs the
  // OpenMP runtime about a microsecond per call (it doubled conv1's forward pass when it took one
  // GEMM per output row, 30 per image).
  const auto slices = [&](auto team) {
    constexpr bool Team = decltype(team)::value;
    for (int64_t j0 = 0; j0 < N; j0 += NC) {
      const int64_t cols = std::min(NC, N - j0);
      const int64_t n_panels = (cols + NR - 1) / NR;
      for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kc = std::min(KC, K - k0);
        const bool add = accumulate || k0 > 0;
        const T* const a_slice = a.packed ? a.data + m_panels * MR * k0 : ap;
        const int64_t a_packs = a.packed ? 0 : m_panels, packs = a_packs + (direct ? 0 : n_panels);
        const auto pack = [&](int64_t p) {
          if (p < a_packs) {
            detail::pack_a(a, p * MR, std::min(MR, M - p * MR), k0, kc, ap + p * MR * kc);
          } else {
            const int64_t jp = p - a_packs;
            detail::pack_b(b, k0, kc, j0 + jp * NR, std::min(NR, cols - jp * NR), bp + jp * NR * kc);
          }
        };
        // The micro-kernel over every tile, its B rows found by b_row(jp)(k).
        const auto tiles = [&](auto b_row) {
          const auto tile = [&](int64_t jp, int64_t ip) {
            detail::micro_kernel<T, MR>(kc, a_slice + ip * MR * kc, b_row(jp), c + ip * MR * ldc + j0 + jp * NR, ldc,
                                        std::min(MR, M - ip * MR), std::min(NR, cols - jp * NR), add);
          };
          if constexpr (Team) {
#pragma omp for schedule(static)
            for (int64_t p = 0; p < packs; ++p) pack(p);
#pragma omp for collapse(2) schedule(static)
            for (int64_t jp = 0; jp < n_panels; ++jp)
              for (int64_t ip = 0; ip < m_panels; ++ip) tile(jp, ip);
          } else {
            for (int64_t p = 0; p < packs; ++p) pack(p);
            for (int64_t jp = 0; jp < n_panels; ++jp)
              for (int64_t ip = 0; ip < m_panels; ++ip) tile(jp, ip);
          }
        };
        if (!direct) {
          tiles([&](int64_t jp) { return [p = bp + jp * NR * kc](int64_t k) { return p + k * Tiles::NR; }; });
        } else if (b.row_offsets == nullptr) {
          tiles([&](int64_t jp) {
            return [p = b.data + k0 * b.ld + j0 + jp * NR, ld = b.ld](int64_t k) { return p + k * ld; };
          });
        } else {
          tiles([&](int64_t jp) {
            return [p = b.data + j0 + jp * NR, rows = b.row_offsets + k0](int64_t k) { return p + rows[k]; };
          });
        }
      }
    }
  };
  if (threaded && m_panels * ((N + NR - 1) / NR) > 1) parallel([&] { slices(std::true_type()); });
  else slices(std::false_type());
}

// op(A) (M x K) packed once for gemm calls that share it (MatrixView::packed): pack_a's panels
// of each KC slice in turn, packed_a_size(M, K) elements. A conv multiplies the same weights
// with every image: packing them per call took conv2 0.3 ms per batch of 64 on one core.
template <class T>
int64_t packed_a_size(int64_t M, int64_t K) {
  return (M + GemmTiles<T>::MR - 1) / GemmTiles<T>::MR * GemmTiles<T>::MR * K;
}

template <class T>
void pack_a_whole(const MatrixView<T>& a, int64_t M, int64_t K, T* out) {
  constexpr int64_t MR = GemmTiles<T>::MR, KC = GemmTiles<T>::KC;
  for (int64_t k0 = 0; k0 < K; k0 += KC)
    detail::pack_a(a, 0, M, k0, std::min(KC, K - k0), out + (M + MR - 1) / MR * MR * k0);
}

}  // namespace pyregnet::cpu
