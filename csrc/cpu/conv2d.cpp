// conv2d on the CPU: any stride, zero padding, PyTorch layouts, through im2col + packed GEMM.
// Shape letters: N, C, H, W (input), K (output channels), R, S (filter), P, Q (output H, W).
//   forward:   y[n] (K x PQ)   = w (K x CRS) . col(x[n]) (CRS x PQ) + b
//   backward:  dw^T (CRS x K)  = sum_n col(x[n]) (CRS x PQ) . dy[n]^T   (wide tiles: weight_grad_tile;
//                                narrow ones: col's GEMM panels packed from the image, pack_col_panels)
//              dx[n]           = col2im( w^T (CRS x K) . dy[n] (K x PQ) )
//              db[k]           = sum_n sum_pq dy[n, k]                (wide tiles: a row of ones in col)
// col is never built whole (it has C·R·S·P·Q elements, unbounded): each thread fills one tile
// of it at a time, in a scratch buffer of at most kScratchBytes, allocated before the parallel
// region. The tiles are cut so that every output element is still summed in the order of one
// untiled GEMM (see the tile functions), so tiling changes no bit of a result computed by GEMMs.
// weight_grad_tile reduces its lanes per tile: where P·Q needs column tiles, dw's bits depend on
// the tile width, which is a function of the shape and dtype alone, never of the thread count.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/backend.h"
#include "cpu/chunked_sum.h"
#include "cpu/fp_mode.h"
#include "cpu/gemm.h"
#include "cpu/vector.h"

namespace pyregnet::cpu {
namespace {

// Per thread: small enough to stay in a core's L2 next to the packed GEMM panels.
constexpr int64_t kScratchBytes = int64_t(1) << 20;
// Narrower column tiles than this would leave the micro-kernel's columns mostly empty.
constexpr int64_t kMinColumns = 64;
// The weight gradient of a tile this wide or wider is summed along its rows (weight_grad_tile),
// of a narrower one as a GEMM: each block's reduction of its lanes is a fixed cost, which a
// short row does not repay. On one Zen 3 core (batch 64): conv1's dw (900 columns) took 4.1 ms
// as GEMMs and 2.1 ms along the rows, in blocks of 4 channels x 3 rows (the form below is
// faster still); conv2's backward pass (169 columns) 8.3 ms with GEMMs and 15.7 ms along the
// rows (docs/results.md, CPU speed work). With the lanes summed L at a time (weight_grad_block),
// on the AVX-512 EPYC (two threads) ResNet-20's stage-2 backward pass (256 columns) took 2.60 ms
// along the rows against 3.07 as GEMMs, conv2's (169) 3.95 against 3.60: 256 there; the Zen 3's
// 512 is kept for AVX2, where 256 was not measured. The choice depends on the shape and the
// instruction set alone, not the threads.
constexpr int64_t kMinDotColumns = kVectorBytes == 64 ? 256 : 512;

// A tile of col: rows [row0, row0 + rows) of the CRS rows (c, r, s) and columns [col0, col0 + cols)
// of the PQ columns (p, q), stored row-major with leading dimension ld >= cols.
struct Tile {
  int64_t row0, rows, col0, cols, ld;
};

// ceil(a / d) for d > 0 and a of either sign (C++ division truncates toward zero).
inline int64_t ceil_div(int64_t a, int64_t d) { return a >= 0 ? (a + d - 1) / d : -(-a / d); }

// Valid output columns q with 0 <= q*stride + s - pad < W: [q_begin, q_end).
inline void valid_range(int64_t s, const ConvShape& sh, int64_t* begin, int64_t* end) {
  *begin = std::clamp<int64_t>(ceil_div(sh.pad - s, sh.stride), 0, sh.Q);
  *end = std::clamp<int64_t>(ceil_div(sh.W + sh.pad - s, sh.stride), 0, sh.Q);
}

// Row (c, r, s) of col, and its columns q whose input column q*stride + s - pad is inside x: [q0, q1).
struct ColRow {
  int64_t c, r, s, q0, q1;
};

// Calls segment(row, p, qa, qb, at) for each run of one output row p that the tile holds:
// columns (p, qa..qb) of `row` of col, stored at `at` (E is T or const T).
template <class E, class Segment>
void for_each_segment(const ConvShape& sh, const Tile& t, E* tile, Segment&& segment) {
  for (int64_t i = 0; i < t.rows; ++i) {
    const int64_t index = t.row0 + i;
    ColRow row{index / (sh.S * sh.R), index / sh.S % sh.R, index % sh.S, 0, 0};
    valid_range(row.s, sh, &row.q0, &row.q1);
    E* at = tile + i * t.ld;
    int64_t p = t.col0 / sh.Q, qa = t.col0 % sh.Q;
    for (int64_t left = t.cols; left > 0; ++p, qa = 0) {
      const int64_t qb = std::min(sh.Q, qa + left);
      segment(row, p, qa, qb, at);
      at += qb - qa, left -= qb - qa;
    }
  }
}

// dst[0, n) = src[0, n) for the short runs of im2col (13 floats for conv2): whole vectors, the
// last one overlapping the one before, rather than a call to memcpy per run. A run shorter than
// a vector takes the widest vector it fills (Bytes halved): with AVX-512's 16 floats conv2's
// 13-float runs were otherwise copied one float at a time.
template <class T, int64_t Bytes = kVectorBytes>
inline void copy_run(T* dst, const T* src, int64_t n) {
  constexpr int64_t L = Bytes / int64_t(sizeof(T));
  if constexpr (L == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
  } else {
    if (n < L) return copy_run<T, Bytes / 2>(dst, src, n);
    typedef T Vec __attribute__((vector_size(Bytes)));
    // the last vector loaded first, each vector a variable of its own: one vector reused for
    // all of them was kept on the stack, a store and a reload per copy (13% of conv1's backward
    // pass was im2col)
    Vec last;
    std::memcpy(&last, src + n - L, sizeof last);
    for (int64_t i = 0; i + L < n; i += L) {
      Vec v;
      std::memcpy(&v, src + i, sizeof v);
      std::memcpy(dst + i, &v, sizeof v);
    }
    std::memcpy(dst + n - L, &last, sizeof last);
  }
}

// out[0, n) += in[0, n) for col2im's short runs: whole vectors, then the rest in vectors of half
// the width, a quarter, ... (an addition must not overlap, unlike a copy). Each element still
// gets one addition: the same bits as the scalar loop, which GCC left scalar for runs shorter
// than a vector (conv2's 13 columns under AVX-512), reloading its pointers from the stack.
template <class T, int64_t Bytes = kVectorBytes>
inline void add_run(T* out, const T* in, int64_t n) {
  constexpr int64_t L = Bytes / int64_t(sizeof(T));
  if constexpr (L == 1) {
    for (int64_t i = 0; i < n; ++i) out[i] += in[i];
  } else {
    typedef T Vec __attribute__((vector_size(Bytes)));
    int64_t i = 0;
    for (; i + L <= n; i += L) {
      Vec a, b;
      std::memcpy(&a, out + i, sizeof a);
      std::memcpy(&b, in + i, sizeof b);
      a += b;
      std::memcpy(out + i, &a, sizeof a);
    }
    add_run<T, Bytes / 2>(out + i, in + i, n - i);
  }
}

// The tile of col(x): element ((c, r, s), (p, q)) is x[c, p*stride + r - pad, q*stride + s - pad],
// or 0 outside x.
template <class T>
void im2col(const T* x, const ConvShape& sh, const Tile& t, T* tile) {
  // Stride 1 and whole output rows (the CNN's convs): the same values as the general path below,
  // with each row's valid columns found once rather than per run. With copy_run it took conv2's
  // im2col (3,744 runs of 13 floats per image) from 1.62 to 1.10 ms per batch of 64, conv1's
  // from 0.38 to 0.28, on one Zen 3 core.
  if (sh.stride == 1 && t.col0 % sh.Q == 0 && t.cols % sh.Q == 0) {
    // The shape in locals: read through `sh` and `t`, which the stores into the tile might alias
    // as far as GCC could tell, the loop's bound was divided again on every output row (an idiv
    // per run: im2col was 17% of conv1's backward pass on one core).
    const int64_t Q = sh.Q, H = sh.H, W = sh.W, pad = sh.pad, p_begin = t.col0 / Q, p_end = (t.col0 + t.cols) / Q;
    for (int64_t i = 0; i < t.rows; ++i) {
      const int64_t index = t.row0 + i, c = index / (sh.S * sh.R), r = index / sh.S % sh.R, s = index % sh.S;
      int64_t q0, q1;
      valid_range(s, sh, &q0, &q1);
      T* out = tile + i * t.ld;
      const T* in = x + c * H * W + s - pad;
      for (int64_t p = p_begin; p < p_end; ++p, out += Q) {
        const int64_t h = p + r - pad;
        if (h < 0 || h >= H || q0 >= q1) {
          std::fill(out, out + Q, T(0));
          continue;
        }
        std::fill(out, out + q0, T(0));
        copy_run(out + q0, in + h * W + q0, q1 - q0);
        std::fill(out + q1, out + Q, T(0));
      }
    }
    return;
  }
  for_each_segment(sh, t, tile, [&](const ColRow& row, int64_t p, int64_t qa, int64_t qb, T* out) {
    const int64_t h = p * sh.stride + row.r - sh.pad;
    const int64_t q0 = std::clamp(row.q0, qa, qb), q1 = std::clamp(row.q1, qa, qb);
    if (h < 0 || h >= sh.H || q0 >= q1) {
      std::fill(out, out + (qb - qa), T(0));
      return;
    }
    const T* in = x + (row.c * sh.H + h) * sh.W + (q0 * sh.stride + row.s - sh.pad);
    std::fill(out, out + (q0 - qa), T(0));
    if (sh.stride == 1) {
      copy_run(out + (q0 - qa), in, q1 - q0);
    } else {
      for (int64_t q = q0; q < q1; ++q) out[q - qa] = in[(q - q0) * sh.stride];
    }
    std::fill(out + (q1 - qa), out + (qb - qa), T(0));
  });
}

// The adjoint of im2col on a tile: dx[c, p*stride + r - pad, q*stride + s - pad] += tile[(c, r, s), (p, q)].
// Within one row (r, s) distinct (p, q) reach distinct dx elements, so each dx element receives
// its additions in the order of the rows, whatever the stride.
template <class T>
void col2im_add(const T* tile, const ConvShape& sh, const Tile& t, T* dx) {
  if (sh.stride == 1 && t.col0 % sh.Q == 0 && t.cols % sh.Q == 0) {  // as in im2col; the same order
    for (int64_t i = 0; i < t.rows; ++i) {
      const int64_t index = t.row0 + i, c = index / (sh.S * sh.R), r = index / sh.S % sh.R, s = index % sh.S;
      int64_t q0, q1;
      valid_range(s, sh, &q0, &q1);
      const T* in = tile + i * t.ld;
      T* const plane = dx + c * sh.H * sh.W + s - sh.pad;
      for (int64_t p = t.col0 / sh.Q; p < (t.col0 + t.cols) / sh.Q; ++p, in += sh.Q) {
        const int64_t h = p + r - sh.pad;
        if (h < 0 || h >= sh.H) continue;
        if (q0 < q1) add_run(plane + h * sh.W + q0, in + q0, q1 - q0);
      }
    }
    return;
  }
  for_each_segment(sh, t, tile, [&](const ColRow& row, int64_t p, int64_t qa, int64_t qb, const T* in) {
    const int64_t h = p * sh.stride + row.r - sh.pad;
    if (h < 0 || h >= sh.H) return;
    const int64_t q0 = std::clamp(row.q0, qa, qb), q1 = std::clamp(row.q1, qa, qb);
    T* out = dx + (row.c * sh.H + h) * sh.W;
    const int64_t shift = row.s - sh.pad;
    if (sh.stride == 1) {  // contiguous: vectors, which a runtime stride prevents
      if (q0 < q1) add_run(out + q0 + shift, in + (q0 - qa), q1 - q0);
    } else {
      for (int64_t q = q0; q < q1; ++q) out[q * sh.stride + shift] += in[q - qa];
    }
  });
}

// One block of weight_grad_tile: KB output channels' rows of dy (ldy apart) against RB rows of
// the tile (ld apart, at aligned addresses: see backward_tile_size), the KB x RB sums each in L
// lanes of a vector register. Per step KB + RB loads feed KB x RB FMAs. With 3 x 4 that is 7
// loads for 12 FMAs, where blocks of one channel (7 rows: 8 loads for 7 FMAs) were bound by
// Zen 3's two vector loads per cycle. Two things the compiler must be kept from:
// - folding each load into every FMA that uses it (a memory operand per use: 16 loads for 12
//   FMAs, conv1's weight gradient 2.13 ms instead of 1.53): in_register pins the loaded vector;
// - inlining the block into conv2d_backward, where with the rest of that function's values live
//   it kept the row pointers, and even the pinned vectors, on the stack and reloaded them every
//   step (1.76 ms); compiled on its own, the vector registers and the pointers stay put.
// Two Zen 3 cores, batch 64: conv1's weight gradient 1.00 ms (99 GFLOP/s) against 1.47 with
// blocks of 7 rows x 1 channel inlined, ResNet-20's stage-1 conv's 3.3 ms against 5.0 (GCC's
// vector types rather than arrays of lanes, which the compiler kept reloading from memory).
template <int64_t KB, int64_t RB, class T>
__attribute__((noinline)) void weight_grad_block(const T* dy, int64_t ldy, const T* tile, int64_t ld,
                                                 int64_t cols, T* dw, int64_t ld_dw, bool add) {
  constexpr int64_t L = lanes<T>(), N = KB * RB;
  typedef T Vec __attribute__((vector_size(kVectorBytes)));
  typedef LaneInt<T> Int;
  typedef Int Ints __attribute__((vector_size(kVectorBytes)));
  const auto load = [](const T* p) { Vec v; std::memcpy(&v, p, sizeof v); return v; };
  const auto in_register = [](Vec v) { asm("" : "+x"(v)); return v; };   // an opaque change of v
  Vec acc[N] = {};   // the sum of (channel c, row b) in acc[c * RB + b]
  int64_t j = 0;
  for (; j + L <= cols; j += L) {
    Vec d[KB];
    for (int64_t c = 0; c < KB; ++c) d[c] = in_register(load(dy + c * ldy + j));
    for (int64_t b = 0; b < RB; ++b) {
      const Vec t = in_register(load(tile + b * ld + j));
      for (int64_t c = 0; c < KB; ++c) acc[c * RB + b] += d[c] * t;
    }
  }
  // The last cols - j < L columns: in the lanes they reach, the same FMA per vector as above
  // (GCC contracted the scalar loop this replaces to FMAs as well); the other lanes kept by a
  // select, since a multiply-add of zeros would turn a -0.0 lane (flush-to-zero leaves them)
  // into +0.0.
  if (j < cols) {
    const Ints live = lanes_below<T, Ints>(cols - j);
    Vec d[KB];
    for (int64_t c = 0; c < KB; ++c) d[c] = load_head<Vec>(dy + c * ldy + j, cols - j, live);
    for (int64_t b = 0; b < RB; ++b) {
      const Vec t = load_head<Vec>(tile + b * ld + j, cols - j, live);
      for (int64_t c = 0; c < KB; ++c) acc[c * RB + b] = live ? acc[c * RB + b] + d[c] * t : acc[c * RB + b];
    }
  }
  // Each sum's lanes added in order, ((acc[0] + acc[1]) + acc[2]) + ..., L sums at a time: with
  // a group of L accumulators transposed, vector l holds lane l of each, and one vector addition
  // advances all L sums by one lane (rows past the last accumulator are zeros, their sums unused).
  // Lane by lane from the stack, after the last columns one at a time, these steps added 40% to
  // the loop's time for conv1's 900 columns: on the AVX-512 EPYC (two threads) conv1's backward
  // pass took 0.41 ms instead of 0.54.
  T sums[N];
  for (int64_t g = 0; g < N; g += L) {
    Vec v[L] = {};
    for (int64_t i = 0; g + i < N && i < L; ++i) v[i] = acc[g + i];
    transpose<T, L / 2>(v, std::make_index_sequence<L>());
    Vec sum = v[0];
    for (int64_t l = 1; l < L; ++l) sum += v[l];
    for (int64_t i = 0; g + i < N && i < L; ++i) sums[g + i] = sum[i];
  }
  for (int64_t c = 0; c < KB; ++c)
    for (int64_t b = 0; b < RB; ++b) {
      T& out = dw[b * ld_dw + c];
      out = add ? out + sums[c * RB + b] : sums[c * RB + b];
    }
}

// weight_grad_block<kb, rb> for the last kb <= KB channels and rb <= RB rows (a block's shape is
// a template argument).
template <int64_t KB, int64_t RB, class T>
void weight_grad_edge(int64_t kb, int64_t rb, const T* dy, int64_t ldy, const T* tile, int64_t ld, int64_t cols,
                      T* dw, int64_t ld_dw, bool add) {
  if constexpr (KB > 1)
    if (kb < KB) return weight_grad_edge<KB - 1, RB>(kb, rb, dy, ldy, tile, ld, cols, dw, ld_dw, add);
  if constexpr (RB > 1)
    if (rb < RB) return weight_grad_edge<KB, RB - 1>(kb, rb, dy, ldy, tile, ld, cols, dw, ld_dw, add);
  weight_grad_block<KB, RB>(dy, ldy, tile, ld, cols, dw, ld_dw, add);
}

// dwt[t.row0 + i, k] (+)= sum over the tile's columns j of dy[k, t.col0 + j] * tile[i, j] (dwt:
// dw transposed, CRS x K, as conv2d_backward keeps its partial sums). The contraction runs along
// (p, q), contiguous in both dy and the tile, so nothing is packed or transposed: as a GEMM
// (dy . col^T) both operands had to be transposed into packed panels, which cost conv1 (27 rows
// of 900 columns, 32 channels) more than its arithmetic. Each sum is kept in L lanes (column j
// in lane j % L), the lanes added in order at the end: one fixed order whatever the block and
// the thread count. The rows' loop is the outer one, so a block's RB rows stay in L1 while the
// channels' dy rows stream past them.
// Blocks are KB channels x RB rows: as many sums as the vector registers hold beside the KB + 1
// operands. AVX2's 16 registers: 3 x 4 (on Zen 3 against 4 x 3, 2 x 5, 2 x 6 and 3 x 3). AVX-512's
// 32: 4 x 6, 10 loads per 24 FMAs instead of 7 per 12, and a block's lanes reduced 24 sums at a
// time: on the AVX-512 EPYC (two threads) conv1's backward pass took 0.34-0.36 ms instead of
// 0.37-0.38 (4 x 4: 0.35-0.37; 4 x 5, whose 27 rows end in a block of 2, no gain). The shape
// changes no bit: each sum runs over its columns in one order whatever the block around it.
template <class T>
void weight_grad_tile(const T* dyn, int64_t PQ, int64_t K, const T* tile, const Tile& t, T* dwt, bool add) {
  constexpr int64_t KB = kVectorBytes == 64 ? 4 : 3, RB = kVectorBytes == 64 ? 6 : 4;
  for (int64_t i = 0; i < t.rows; i += RB)
    for (int64_t k = 0; k < K; k += KB)
      weight_grad_edge<KB, RB>(std::min(KB, K - k), std::min(RB, t.rows - i), dyn + k * PQ + t.col0, PQ,
                               tile + i * t.ld, t.ld, t.cols, dwt + (t.row0 + i) * K + k, K, add);
}

template <class T>
constexpr int64_t scratch_elements() { return kScratchBytes / int64_t(sizeof(T)); }

// The implicit GEMM of a stride-1 conv. Row (c, r, s) of col at output row p is the run
// xp[c, p + r, s : s + Q] of the zero-padded image xp (Hp x Wp per channel): with the image padded
// once (C*Hp*Wp elements, against the C*R*S*P*Q of col), one GEMM per output row reads B where it
// lies, through a table of row offsets (MatrixView::row_offsets), and nothing is copied per (r, s).
// Each output element is summed over the same rows in the same order as through im2col, zeros
// included: the same bits. Two Zen 3 cores, batch 64: ResNet-20's stage-1 conv (16 -> 16
// channels, 32 x 32) 2.08 ms instead of 4.1, conv1 1.03 instead of 1.42 (docs/results.md).
struct PaddedImage {
  int64_t C, Hp, Wp, pad;
  int64_t elements() const { return C * Hp * Wp; }
};

// Elements of a padded image's buffer: the micro-kernel reads whole NR-column panels, so the last
// row's panel runs up to NR - 1 elements past the image (columns whose sums are never stored).
template <class T>
int64_t padded_buffer_size(const PaddedImage& im) { return im.elements() + GemmTiles<T>::NR; }

// How an implicit GEMM lays out its columns. `rows`: one GEMM per output row p, its Q columns
// written into the output in place. `wide`: one GEMM over the output rows laid end to end at the
// padded width, (P - 1) * Wp + Q columns, column p * Wp + q being output (p, q) (the S - 1
// columns between two rows are computed and dropped) into a scratch of M rows, copied out
// after. The micro-kernel computes whole NR-column panels, so a narrow output row wastes most
// of its last panel: on AVX-512 (NR = 32 floats) conv2's 13 columns used 13 of 32 per row, 169
// of 224 laid end to end. Both sum every element over the same rows in the same order.
struct ImplicitPlan {
  bool pays;        // worth it: at least 3/4 of the arithmetic is useful, and the buffers fit
  bool wide;        // the end-to-end layout (more useful arithmetic than one GEMM per row)
  int64_t cols;     // the wide layout's columns, (P - 1) * Wp + Q
  int64_t scratch;  // elements per thread: the padded image, then (wide) the M x cols output
};

// The useful share of the arithmetic is what the output needs of the columns the panels compute
// (times `outputs_used` where the padding is wider than the output needs, as for dx of a
// 'valid' conv: products with zeros that a GEMM over col would not do). Two Zen 3 cores, batch
// 64, one GEMM per row: conv2's forward pass (13 of 16 columns used: 0.81) took 3.07 ms instead
// of 3.45 through im2col; ResNet-20's stage-3 forward (8 of 16: 0.5) 3.43 instead of 2.90, and
// conv2's dx (0.94 x 169/225 = 0.70) was slower too. A function of the shape alone, so a conv's
// bits never depend on the machine's thread count.
template <class T>
ImplicitPlan implicit_plan(const PaddedImage& im, int64_t M, int64_t P, int64_t Q, double outputs_used) {
  constexpr int64_t NR = GemmTiles<T>::NR;
  const auto useful = [](int64_t used, int64_t computed) { return double(used) / double((computed + NR - 1) / NR * NR); };
  const int64_t cols = (P - 1) * im.Wp + Q;
  const double per_row = useful(Q, Q), end_to_end = useful(P * Q, cols);
  const bool wide = end_to_end > per_row;
  const int64_t scratch = padded_buffer_size<T>(im) + (wide ? M * cols : 0);
  return {scratch <= scratch_elements<T>() && std::max(per_row, end_to_end) * outputs_used >= 0.75, wide, cols,
          scratch};
}

// The interior of xp (whose border and tail stay zero from its allocation) = x (C x H x W).
template <class T>
void pad_image(const T* x, int64_t H, int64_t W, const PaddedImage& im, T* xp) {
  for (int64_t c = 0; c < im.C; ++c)
    for (int64_t h = 0; h < H; ++h) copy_run(xp + (c * im.Hp + h + im.pad) * im.Wp + im.pad, x + (c * H + h) * W, W);
}

// Offsets of the rows (c, r, s) of col in a padded image, at output row 0.
inline std::vector<int64_t> implicit_rows(const PaddedImage& im, int64_t R, int64_t S) {
  std::vector<int64_t> rows;
  rows.reserve(size_t(im.C * R * S));
  for (int64_t c = 0; c < im.C; ++c)
    for (int64_t r = 0; r < R; ++r)
      for (int64_t s = 0; s < S; ++s) rows.push_back((c * im.Hp + r) * im.Wp + s);
  return rows;
}

// dw's GEMM without an im2col tile. dw^T = col . dy^T packed col, the GEMM's A, into MR-row
// panels (pack_a_whole's layout): each value was written twice, once into the tile and once into
// a panel, and the panel's MR values per column were gathered from MR tile rows. Here col's rows
// are taken in the order (r, s, c) instead of (c, r, s), from the image laid out channels-last:
// row (r, s, c) at column (p, q) is xt[((p + r) * Wp + q + s) * C + c], so a panel's MR rows at one
// column are MR consecutive channels, one contiguous copy where C is a multiple of MR. Each dw
// element is still the same sum over (p, q) in the same order, only stored in another row of
// dw^T (conv2d_backward puts it back): the same bits. Two threads, AVX-512 EPYC, batch 64, the
// backward pass without dx (docs/results.md, CPU speed work): conv2 (288 rows, 169 columns) 1.91
// -> 1.27 ms, ResNet-20's stage-3 conv (576 rows, 64 columns) 1.91 -> 0.98 ms.

// The padded image channels-last: xt[(h * Wp + w) * C + c] = x[c, h - pad, w - pad]; the border
// is left as it is (zero from the buffer's allocation). L channels at a time where C allows: an
// L x L block (L channels' rows, up to L columns each) transposed in registers and stored as one
// vector per column; one element at a time (a stride-C store each) it took as long as packing
// col's panels from it.
template <class T>
void pad_image_channels_last(const T* x, int64_t H, int64_t W, const PaddedImage& im, T* xt) {
  constexpr int64_t L = lanes<T>();
  typedef T Vec __attribute__((vector_size(kVectorBytes)));
  typedef LaneInt<T> Int;
  typedef Int Ints __attribute__((vector_size(kVectorBytes)));
  const int64_t C = im.C, c_blocks = C / L * L;
  for (int64_t c = 0; c < c_blocks; c += L)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; w += L) {
        const int64_t n = std::min(L, W - w);   // columns in this block
        const Ints live = lanes_below<T, Ints>(n);
        Vec v[L];
        for (int64_t i = 0; i < L; ++i) {
          const T* const src = x + ((c + i) * H + h) * W + w;
          if (n == L) std::memcpy(&v[i], src, sizeof(Vec));
          else v[i] = load_head<Vec>(src, n, live);   // reads nothing past the row's end
        }
        transpose<T, L / 2>(v, std::make_index_sequence<L>());
        T* const dst = xt + ((h + im.pad) * im.Wp + im.pad + w) * C + c;
        for (int64_t j = 0; j < n; ++j) std::memcpy(dst + j * C, &v[j], sizeof(Vec));
      }
  for (int64_t c = c_blocks; c < C; ++c)
    for (int64_t h = 0; h < H; ++h) {
      const T* const src = x + (c * H + h) * W;
      T* const dst = xt + ((h + im.pad) * im.Wp + im.pad) * C + c;
      for (int64_t w = 0; w < W; ++w) dst[w * C] = src[w];
    }
}

// The adjoint of im2col for dcol^T laid out (p, q) x (r, s, c), ld apart, into a channels-last
// dxt[(h * W + w) * C + c]: for each (r, s) in order, every (p, q) adds the C channels of one
// input position as one contiguous run. Each dx element gets its additions in the order of
// (r, s), as col2im_add gives them per channel: the same bits.
template <class T>
void col2im_channels_last(const T* dcolt, int64_t ld, const ConvShape& sh, T* dxt) {
  const int64_t C = sh.C;
  for (int64_t r = 0; r < sh.R; ++r)
    for (int64_t s = 0; s < sh.S; ++s) {
      int64_t q0, q1;
      valid_range(s, sh, &q0, &q1);
      for (int64_t p = 0; p < sh.P; ++p) {
        const int64_t h = p * sh.stride + r - sh.pad;
        if (h < 0 || h >= sh.H) continue;
        const T* in = dcolt + (p * sh.Q + q0) * ld + (r * sh.S + s) * C;
        T* out = dxt + (h * sh.W + q0 * sh.stride + s - sh.pad) * C;
        for (int64_t q = q0; q < q1; ++q, in += ld, out += sh.stride * C) add_run(out, in, C);
      }
    }
}

// x[c * HW + i] = xt[i * C + c]: a channels-last image back to channels first, L x L blocks
// (L positions' runs of L channels) transposed in registers, the rest one element at a time.
template <class T>
void channels_first(const T* xt, int64_t C, int64_t HW, T* x) {
  constexpr int64_t L = lanes<T>();
  typedef T Vec __attribute__((vector_size(kVectorBytes)));
  const int64_t c_blocks = C / L * L, i_blocks = HW / L * L;
  for (int64_t c = 0; c < c_blocks; c += L)
    for (int64_t i = 0; i < i_blocks; i += L) {
      Vec v[L];
      for (int64_t j = 0; j < L; ++j) std::memcpy(&v[j], xt + (i + j) * C + c, sizeof(Vec));
      transpose<T, L / 2>(v, std::make_index_sequence<L>());
      for (int64_t j = 0; j < L; ++j) std::memcpy(x + (c + j) * HW + i, &v[j], sizeof(Vec));
    }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = c < c_blocks ? i_blocks : 0; i < HW; ++i) x[c * HW + i] = xt[i * C + c];
}

// Offsets in a channels-last padded image of col's rows in the order (r, s, c), at output (0, 0).
inline std::vector<int64_t> channels_last_rows(const PaddedImage& im, int64_t R, int64_t S) {
  std::vector<int64_t> rows;
  rows.reserve(size_t(R * S * im.C));
  for (int64_t r = 0; r < R; ++r)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t c = 0; c < im.C; ++c) rows.push_back((r * im.Wp + s) * im.C + c);
  return rows;
}

// pack_a_whole's panels of col (rows `rows` of a channels-last padded image xt, P x Q columns).
template <class T>
void pack_col_panels(const T* xt, const PaddedImage& im, const std::vector<int64_t>& rows, int64_t P, int64_t Q,
                     T* out) {
  constexpr int64_t MR = GemmTiles<T>::MR, KC = GemmTiles<T>::KC;
  const int64_t M = int64_t(rows.size()), PQ = P * Q, m_padded = (M + MR - 1) / MR * MR, C = im.C;
  for (int64_t k0 = 0; k0 < PQ; k0 += KC) {
    const int64_t kc = std::min(KC, PQ - k0);
    for (int64_t ip = 0; ip < M; ip += MR) {
      T* const panel = out + m_padded * k0 + ip * kc;
      // Calls copy(dst, src) for each column of the slice: dst its MR values in the panel, src
      // the image at its (p, q).
      const auto columns = [panel, xt, k0, kc, Q, C, Wp = im.Wp](auto copy) {
        T* dst = panel;
        for (int64_t p = k0 / Q, q = k0 % Q, left = kc; left > 0; ++p, q = 0) {
          const int64_t n = std::min(Q - q, left);
          const T* src = xt + (p * Wp + q) * C;
          for (int64_t j = 0; j < n; ++j, src += C, dst += MR) copy(dst, src);
          left -= n;
        }
      };
      if (ip + MR <= M && rows[ip + MR - 1] == rows[ip] + MR - 1) {
        // one copy of a constant size, which the compiler makes a single vector move (the loop
        // it replaces stayed scalar: dst might alias the image, as far as GCC could tell)
        columns([first = rows[ip]](T* dst, const T* src) { std::memcpy(dst, src + first, MR * sizeof(T)); });
      } else {  // rows past the matrix are zero, as pack_a makes them
        columns([&](T* dst, const T* src) {
          for (int64_t i = 0; i < MR; ++i) dst[i] = ip + i < M ? src[rows[ip + i]] : T(0);
        });
      }
    }
  }
}

// out (M x P x Q) = a (M x CRS, pack_a_whole's panels) . col(xp), laid out as `plan` says; xp
// starts a thread's plan.scratch elements, the wide layout's output after the padded image.
// `finish(out_m, m)` then runs on each of out's M planes
// (the bias and ReLU of the forward pass), in the wide layout right after the plane is copied
// out, while it is in cache.
template <class T, class Finish>
void implicit_gemm(const T* a_packed, int64_t M, const std::vector<int64_t>& rows, T* xp, const PaddedImage& im,
                   int64_t P, int64_t Q, const ImplicitPlan& plan, T* out, Finish&& finish) {
  const int64_t CRS = int64_t(rows.size());
  if (!plan.wide) {
    for (int64_t p = 0; p < P; ++p)
      gemm<T>(M, Q, CRS, {a_packed, CRS, false, false, true}, {xp + p * im.Wp, im.Wp, false, true, false, rows.data()},
              out + p * Q, P * Q, false, false);
    for (int64_t m = 0; m < M; ++m) finish(out + m * P * Q, m);
    return;
  }
  T* const wide = xp + padded_buffer_size<T>(im);
  gemm<T>(M, plan.cols, CRS, {a_packed, CRS, false, false, true}, {xp, im.Wp, false, true, false, rows.data()}, wide,
          plan.cols, false, false);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t p = 0; p < P; ++p) copy_run(out + (m * P + p) * Q, wide + m * plan.cols + p * im.Wp, Q);
    finish(out + m * P * Q, m);
  }
}

// Forward tiles. The GEMM sums over the rows of col (CRS) in slices of KC, adding each slice's
// product to y: a tile boundary at a multiple of KC only splits that sequence of additions
// between calls, so each y element sees the same additions in the same order. Columns are
// independent outputs and may be cut anywhere. Rows are stored a multiple of NR apart, so that
// a tile of at most KC rows is read by the GEMM in place (MatrixView::in_place) instead of
// being copied into packed panels: conv1's forward pass (27 rows) took 7% less time on one
// Zen 3 core; for conv2's 288 rows, read in two slices, it made no difference.
template <class T>
Tile forward_tile_size(const ConvShape& sh) {
  constexpr int64_t cap = scratch_elements<T>(), KC = GemmTiles<T>::KC, NR = GemmTiles<T>::NR;
  const int64_t CRS = sh.C * sh.R * sh.S, PQ = sh.P * sh.Q;
  const int64_t min_ld = (std::min(PQ, kMinColumns) + NR - 1) / NR * NR;
  const int64_t rows = CRS * min_ld <= cap ? CRS : std::max(KC, cap / min_ld / KC * KC);
  const int64_t cols = std::min(PQ, cap / rows / NR * NR);   // cap / rows >= min_ld >= NR
  return {0, rows, 0, cols, (cols + NR - 1) / NR * NR};
}

// Backward tiles. dw sums over the columns of col (PQ) in slices of KC, as above: a column
// tile narrower than PQ is a multiple of KC. col2im adds into each dx element once per row
// (r, s) of col, in row order: a tile narrower than PQ holds a single row, so that no later
// row's addition can come before an earlier row's.
// Rows are stored whole vectors apart (ld: PQ rounded up to the vector), in a vector-aligned
// buffer: weight_grad_tile's loads are then aligned, which took conv1's weight gradient from 54
// to 65 GFLOP/s on one Zen 3 core (unaligned rows straddle cache lines every other load).
template <class T>
Tile backward_tile_size(const ConvShape& sh) {
  constexpr int64_t cap = scratch_elements<T>(), KC = GemmTiles<T>::KC, L = lanes<T>();
  const int64_t CRS = sh.C * sh.R * sh.S, PQ = sh.P * sh.Q, ld = (PQ + L - 1) / L * L;
  if (ld <= cap) return {0, std::min(CRS, cap / ld), 0, PQ, ld};
  return {0, 1, 0, cap / KC * KC, cap / KC * KC};
}

// Calls body(tile) for every tile of size `size` covering col (CRS x PQ): rows in order, and
// within a row band the columns in order.
template <class Body>
void for_each_tile(const ConvShape& sh, const Tile& size, Body&& body) {
  const int64_t CRS = sh.C * sh.R * sh.S, PQ = sh.P * sh.Q;
  for (int64_t r0 = 0; r0 < CRS; r0 += size.rows)
    for (int64_t c0 = 0; c0 < PQ; c0 += size.cols)
      body(Tile{r0, std::min(size.rows, CRS - r0), c0, std::min(size.cols, PQ - c0), size.ld});
}

// A buffer of n elements; std::bad_alloc (MemoryError in Python) when n is beyond any allocation.
template <class T>
std::vector<T> buffer(int64_t n) {
  if (n < 0 || uint64_t(n) > std::vector<T>().max_size()) throw std::bad_alloc();
  return std::vector<T>(size_t(n));
}

// The first element of v at a vector boundary, v having lanes<T>() elements to spare.
template <class T>
T* vector_aligned(std::vector<T>& v) {
  const int64_t L = lanes<T>(), misaligned = int64_t(reinterpret_cast<uintptr_t>(v.data()) / sizeof(T) % L);
  return v.data() + (L - misaligned) % L;
}

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// An exception must not leave an OpenMP region (the process would terminate): each thread
// runs its work through run(), the first exception is kept, the others skip their work, and
// rethrow() raises it after the region (pybind11 turns std::bad_alloc into MemoryError).
class RegionErrors {
 public:
  template <class F>
  void run(F&& f) {
    bool failed;
#pragma omp atomic read
    failed = failed_;
    if (failed) return;
    try {
      f();
    } catch (...) {
#pragma omp critical(pyregnet_conv2d_errors)
      if (!error_) error_ = std::current_exception();
#pragma omp atomic write
      failed_ = true;
    }
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  bool failed_ = false;
  std::exception_ptr error_;
};

// Images per weight-gradient partial. Fixed (not per thread) so that dw is summed in the same
// order whatever the number of threads: bitwise reproducible training on the CPU.
constexpr int64_t kImagesPerPartial = 4;

}  // namespace

// y[k] = act(y[k] + b[k]) over one image's K planes of PQ.
template <class T>
void add_bias(T* yn, const T* b, int64_t K, int64_t PQ, bool relu_out) {
  for (int64_t k = 0; k < K; ++k)
    for (int64_t i = 0; i < PQ; ++i) {
      const T z = yn[k * PQ + i] + b[k];
      yn[k * PQ + i] = relu_out ? relu(z) : z;
    }
}

// The forward pass of a stride-1 conv as an implicit GEMM (see PaddedImage), y = act(. + b).
template <class T>
void forward_implicit(const T* x, const T* w, const T* b, T* y, const ConvShape& sh, const PaddedImage& im,
                      const ImplicitPlan& plan, bool relu_out) {
  const int64_t CRS = sh.C * sh.R * sh.S, PQ = sh.P * sh.Q;
  std::vector<T> scratch = buffer<T>(max_threads() * plan.scratch);   // zero: the padding stays so
  std::vector<T> w_packed = buffer<T>(packed_a_size<T>(sh.K, CRS));
  pack_a_whole<T>({w, CRS, false}, sh.K, CRS, w_packed.data());
  const std::vector<int64_t> rows = implicit_rows(im, sh.R, sh.S);
  RegionErrors errors;
  parallel([&] {
    T* const xp = scratch.data() + thread_id() * plan.scratch;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < sh.N; ++n) {
      errors.run([&] {
        pad_image(x + n * sh.C * sh.H * sh.W, sh.H, sh.W, im, xp);
        implicit_gemm(w_packed.data(), sh.K, rows, xp, im, sh.P, sh.Q, plan, y + n * sh.K * PQ,
                      [&](T* plane, int64_t k) { add_bias(plane, b + k, 1, PQ, relu_out); });
      });
    }
  });
  errors.rethrow();
}

template <class T>
void conv2d_forward(const T* x, const T* w, const T* b, T* y, const ConvShape& sh, bool relu_out) {
  const PaddedImage im{sh.C, sh.H + 2 * sh.pad, sh.W + 2 * sh.pad, sh.pad};
  const ImplicitPlan plan = implicit_plan<T>(im, sh.K, sh.P, sh.Q, 1.0);
  if (sh.stride == 1 && plan.pays) return forward_implicit(x, w, b, y, sh, im, plan, relu_out);
  const int64_t CRS = sh.C * sh.R * sh.S, PQ = sh.P * sh.Q;
  const Tile size = forward_tile_size<T>(sh);
  const int threads = max_threads();  // parallel()'s team has at most this many: thread_id() < threads
  std::vector<T> scratch = buffer<T>(threads * size.rows * size.ld + lanes<T>());
  T* const aligned = vector_aligned(scratch);   // size.rows * size.ld is a multiple of the lanes
  std::vector<T> w_packed = buffer<T>(packed_a_size<T>(sh.K, CRS));
  pack_a_whole<T>({w, CRS, false}, sh.K, CRS, w_packed.data());
  const int64_t m_rows = packed_a_size<T>(sh.K, 1);   // w_packed's elements per column of w
  RegionErrors errors;
  parallel([&] {
    T* const col = aligned + thread_id() * size.rows * size.ld;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < sh.N; ++n) {
      errors.run([&] {
        const T* xn = x + n * sh.C * sh.H * sh.W;
        T* yn = y + n * sh.K * PQ;
        for_each_tile(sh, size, [&](const Tile& t) {
          im2col(xn, sh, t, col);
          // a row band starts at a multiple of KC (forward_tile_size): its packed slices are w_packed's
          gemm<T>(sh.K, t.cols, t.rows, {w_packed.data() + m_rows * t.row0, CRS, false, false, true},
                  {col, t.ld, false, t.rows <= GemmTiles<T>::KC}, yn + t.col0, PQ, t.row0 > 0, false);
        });
        add_bias(yn, b, sh.K, PQ, relu_out);
      });
    }
  });
  errors.rethrow();
}

template <class T>
void conv2d_backward(const T* x, const T* w, const T* dy, T* dx, T* dw, T* db, const ConvShape& sh) {
  const int64_t CRS = sh.C * sh.R * sh.S, PQ = sh.P * sh.Q, CHW = sh.C * sh.H * sh.W;
  const int64_t n_partials = (sh.N + kImagesPerPartial - 1) / kImagesPerPartial;
  const Tile size = backward_tile_size<T>(sh);
  const int threads = max_threads();  // parallel()'s team has at most this many: thread_id() < threads
  // dx of a stride-1 conv is the stride-1 conv of dy, zero-padded by R-1-pad, with the filter
  // turned by 180 degrees and its channels swapped, wt[c, k, r, s] = w[k, c, R-1-r, S-1-s]: an
  // implicit GEMM of C rows, K*R*S deep. Through col2im it was a GEMM only K deep, whose C*R*S
  // rows were then scattered into dx: for ResNet-20's stage-1 conv (K = 16) 2.0 ms instead of
  // 6.6 on two Zen 3 cores. Each dx element is then one sum over (k, r, s) rather than a sum of
  // K-long sums added row by row: other bits than col2im's, the same to rounding.
  const PaddedImage dyim{sh.K, sh.P + 2 * (sh.R - 1 - sh.pad), sh.Q + 2 * (sh.S - 1 - sh.pad), sh.R - 1 - sh.pad};
  const ImplicitPlan dx_plan = implicit_plan<T>(dyim, sh.C, sh.H, sh.W, double(PQ) / double(sh.H * sh.W));
  const bool implicit_dx = dx != nullptr && sh.stride == 1 && sh.R == sh.S && sh.pad < sh.R && dx_plan.pays;
  const int64_t dy_image = implicit_dx ? dx_plan.scratch : 0;
  std::vector<T> dy_padded = buffer<T>(threads * dy_image);   // zero: the padding stays so
  std::vector<T> wt_turned = buffer<T>(implicit_dx ? packed_a_size<T>(sh.C, sh.K * sh.R * sh.S) : 0);
  std::vector<int64_t> dy_rows;
  if (implicit_dx) {
    std::vector<T> turned = buffer<T>(sh.C * sh.K * sh.R * sh.S);
    for (int64_t k = 0; k < sh.K; ++k)
      for (int64_t c = 0; c < sh.C; ++c)
        for (int64_t r = 0; r < sh.R; ++r)
          for (int64_t s = 0; s < sh.S; ++s)
            turned[((c * sh.K + k) * sh.R + r) * sh.S + s] =
                w[((k * sh.C + c) * sh.R + sh.R - 1 - r) * sh.S + sh.S - 1 - s];
    pack_a_whole<T>({turned.data(), sh.K * sh.R * sh.S, false}, sh.C, sh.K * sh.R * sh.S, wt_turned.data());
    dy_rows = implicit_rows(dyim, sh.R, sh.S);
  }
  T* const dx_col2im = implicit_dx ? nullptr : dx;
  // dw as one GEMM per image whose col panels are packed from the image itself (pack_col_panels),
  // with no im2col: where a tile holds all of col and dw goes through a GEMM (fewer columns than
  // kMinDotColumns). A col2im dx then uses the tile only for dcol = w^T . dy[n].
  const PaddedImage xim{sh.C, sh.H + 2 * sh.pad, sh.W + 2 * sh.pad, sh.pad};
  const bool dw_from_image = sh.stride == 1 && size.rows == CRS && size.cols == PQ && PQ < kMinDotColumns;
  // db from dw's own blocks: where weight_grad_tile sums dw over a tile holding all of col, the
  // tile gets a row of ones after col's CRS rows, whose weight gradient is db[k] = sum of
  // dy[n, k] * 1 (a product with one is exact, so each FMA is an addition), summed in the lanes
  // and partials that dw's are. One more row of FMAs instead of a pass of its own over dy: on the
  // AVX-512 EPYC (two threads) conv1's backward pass took 0.32 ms instead of 0.34-0.36 (docs/results.md,
  // CPU speed work). Elsewhere db's terms are the planes' sums in double (plane_sums).
  const bool db_in_tile = !dw_from_image && size.rows == CRS && size.cols == PQ && PQ >= kMinDotColumns;
  const int64_t dw_rows = CRS + (db_in_tile ? 1 : 0);   // rows of each dw^T partial
  const std::vector<int64_t> x_rows = dw_from_image ? channels_last_rows(xim, sh.R, sh.S) : std::vector<int64_t>();
  const int64_t x_image = dw_from_image ? xim.elements() : 0;
  std::vector<T> x_padded = buffer<T>(threads * x_image);   // zero: the padding stays so
  std::vector<T> dwt_partial = buffer<T>(n_partials * sh.K * dw_rows);   // each dw_rows x K: dw transposed
  std::vector<double> plane_sums = buffer<double>(db_in_tile ? 0 : sh.N * sh.K);  // db's terms, one per (n, k)
  // dx through dcol^T = dy[n]^T . w, (p, q) x (r, s, c), added into a channels-last dx[n] (one run
  // of C channels per input position and (r, s): col2im_channels_last), which is then transposed
  // back, where one tile holds all of col. w's rows, reordered (r, s, c), are the GEMM's B, read
  // in place; dcol^T takes the tile's scratch. Through col2im_add dcol's rows were added a run of
  // Q at a time (conv2: 3,744 runs of 13 floats per image, 14% of its backward pass on one core,
  // and a zero fill of dx[n] 3%), against 1,521 runs of 32 here; the GEMM's M, P*Q rather than
  // C*R*S, wastes less of its panels (169 of 176 rows against 169 of 192 columns).
  const int64_t w_ld = (CRS + GemmTiles<T>::NR - 1) / GemmTiles<T>::NR * GemmTiles<T>::NR;  // B's rows in place
  const bool dx_channels_last = dx_col2im != nullptr && size.rows == CRS && size.cols == PQ &&
                                PQ * w_ld <= scratch_elements<T>();
  std::vector<T> w_rsc = buffer<T>(dx_channels_last ? sh.K * w_ld : 0);   // zero past CRS
  std::vector<T> dx_channels = buffer<T>(dx_channels_last ? threads * CHW : 0);
  if (dx_channels_last)
    for (int64_t k = 0; k < sh.K; ++k)
      for (int64_t c = 0; c < sh.C; ++c)
        for (int64_t rs = 0; rs < sh.R * sh.S; ++rs) w_rsc[k * w_ld + rs * sh.C + c] = w[(k * sh.C + c) * sh.R * sh.S + rs];
  // w^T packed once when a tile holds every row of col (then each gemm multiplies all of it)
  const bool pack_wt = dx_col2im != nullptr && size.rows == CRS && !dx_channels_last;
  std::vector<T> wt_packed = buffer<T>(pack_wt ? packed_a_size<T>(CRS, sh.K) : 0);
  if (pack_wt) pack_a_whole<T>({w, CRS, true}, CRS, sh.K, wt_packed.data());
  // per thread: the im2col (or dcol) tile, also holding col's packed panels before dcol (a
  // multiple of the lanes, as the tile is)
  const int64_t col_elements =
      std::max({(size.rows + (db_in_tile ? 1 : 0)) * size.ld,
                dw_from_image ? (packed_a_size<T>(CRS, PQ) + lanes<T>() - 1) / lanes<T>() * lanes<T>() : 0,
                dx_channels_last ? PQ * w_ld : 0});
  std::vector<T> scratch = buffer<T>(threads * col_elements + lanes<T>());
  T* const aligned = vector_aligned(scratch);
  RegionErrors errors;
  parallel([&] {
    T* const col = aligned + thread_id() * col_elements;
#pragma omp for schedule(static)
    for (int64_t part = 0; part < n_partials; ++part) {
      errors.run([&] {
        T* dwt_part = dwt_partial.data() + part * sh.K * dw_rows;
        const int64_t n_first = part * kImagesPerPartial, n_end = std::min(sh.N, n_first + kImagesPerPartial);
        for (int64_t n = n_first; n < n_end; ++n) {
          const T* dyn = dy + n * sh.K * PQ;
          // Each plane in fixed lanes (lane_sum); the planes are added in order of n after the
          // region. One running sum kept this loop scalar, a chain of N*P*Q dependent additions
          // (1.8M for conv1, about 1 ms); summed here, dy[n] is read once more while in cache
          // rather than in a pass of its own over all of dy.
          if (!db_in_tile)
            for (int64_t k = 0; k < sh.K; ++k)
              plane_sums[n * sh.K + k] = lane_sum(0, PQ, [&](int64_t i) { return double(dyn[k * PQ + i]); });
          if (implicit_dx) {
            T* const dyp = dy_padded.data() + thread_id() * dy_image;
            pad_image(dyn, sh.P, sh.Q, dyim, dyp);
            implicit_gemm(wt_turned.data(), sh.C, dy_rows, dyp, dyim, sh.H, sh.W, dx_plan, dx + n * CHW,
                          [](T*, int64_t) {});
          }
          if (dw_from_image) {
            T* const xt = x_padded.data() + thread_id() * x_image;
            pad_image_channels_last(x + n * CHW, sh.H, sh.W, xim, xt);
            pack_col_panels(xt, xim, x_rows, sh.P, sh.Q, col);
            gemm<T>(CRS, sh.K, PQ, {col, CRS, false, false, true}, {dyn, PQ, true}, dwt_part, sh.K, n > n_first, false);
            if (dx_col2im == nullptr) continue;
          }
          if (dx_col2im != nullptr && !dx_channels_last) std::fill(dx + n * CHW, dx + (n + 1) * CHW, T(0));
          for_each_tile(sh, size, [&](const Tile& t) {
            if (!dw_from_image) {
              im2col(x + n * CHW, sh, t, col);
              const bool add = n > n_first || t.col0 > 0;
              // (the ones are written for every image: dcol^T below may take their place)
              if (db_in_tile) std::fill(col + CRS * size.ld, col + dw_rows * size.ld, T(1));
              if (t.cols >= kMinDotColumns)
                weight_grad_tile(dyn, PQ, sh.K, col, Tile{t.row0, t.rows + (db_in_tile ? 1 : 0), t.col0, t.cols, t.ld},
                                 dwt_part, add);
              else  // dw^T = col . dy^T: the tile, the larger operand, packed as A, whose packing reads rows
                gemm<T>(t.rows, sh.K, t.cols, {col, t.ld, false}, {dyn + t.col0, PQ, true}, dwt_part + t.row0 * sh.K,
                        sh.K, add, false);
            }
            if (dx_col2im == nullptr || dx_channels_last) return;  // none, done, or below
            // The tile now becomes dcol = w^T . dy[n] there, scattered back into dx[n].
            const MatrixView<T> wt = pack_wt ? MatrixView<T>{wt_packed.data(), CRS, true, false, true}
                                             : MatrixView<T>{w + t.row0, CRS, true};
            gemm<T>(t.rows, t.cols, sh.K, wt, {dyn + t.col0, PQ, false}, col, t.ld, false, false);
            col2im_add(col, sh, t, dx + n * CHW);
          });
          if (dx_channels_last) {
            T* const dxt = dx_channels.data() + thread_id() * CHW;
            std::fill(dxt, dxt + CHW, T(0));
            gemm<T>(PQ, CRS, sh.K, {dyn, PQ, true}, {w_rsc.data(), w_ld, false, true}, col, w_ld, false, false);
            col2im_channels_last(col, w_ld, sh, dxt);
            channels_first(dxt, sh.C, sh.H * sh.W, dx + n * CHW);
          }
        }
      });
    }
  });
  errors.rethrow();
  // Row `row` of the partials (dw^T) holds column dw_column[row] of dw: (c, r, s) in order, or
  // dw_from_image's (r, s, c).
  std::vector<int64_t> dw_column(size_t(CRS), 0);
  for (int64_t c = 0; c < sh.C; ++c)
    for (int64_t rs = 0; rs < sh.R * sh.S; ++rs)
      dw_column[size_t(dw_from_image ? rs * sh.C + c : c * sh.R * sh.S + rs)] = c * sh.R * sh.S + rs;
  // Each element 0 + the partials in order, summed contiguously (vectors), then put in place.
  std::vector<T> dwt = buffer<T>(dw_rows * sh.K);
  for (int64_t part = 0; part < n_partials; ++part) {
    const T* const partial = dwt_partial.data() + part * dw_rows * sh.K;
    for (int64_t i = 0; i < dw_rows * sh.K; ++i) dwt[i] += partial[i];
  }
  for (int64_t row = 0; row < CRS; ++row)
    for (int64_t k = 0; k < sh.K; ++k) dw[k * CRS + dw_column[row]] = dwt[row * sh.K + k];
  if (db_in_tile) {
    std::copy(dwt.begin() + CRS * sh.K, dwt.end(), db);
    return;
  }
  for (int64_t k = 0; k < sh.K; ++k) {
    double sum = 0.0;
    for (int64_t n = 0; n < sh.N; ++n) sum += plane_sums[n * sh.K + k];
    db[k] = T(sum);
  }
}

template void conv2d_forward<float>(const float*, const float*, const float*, float*, const ConvShape&, bool);
template void conv2d_forward<double>(const double*, const double*, const double*, double*, const ConvShape&, bool);
template void conv2d_backward<float>(const float*, const float*, const float*, float*, float*, float*, const ConvShape&);
template void conv2d_backward<double>(const double*, const double*, const double*, double*, double*, double*, const ConvShape&);

}  // namespace pyregnet::cpu
