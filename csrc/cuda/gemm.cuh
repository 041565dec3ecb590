// The one tiled GEMM of the CUDA backend: conv2d runs on it as implicit GEMM, dense directly.
//
//   C(m, n) = sum_{k < Kdim} A(m, k) * B(k, n)      for m < M, n < N
//
// A and B are operand functors, `T operator()(int m, int k) const` and
// `T operator()(int k, int n) const`, that return one element: they do their own index mapping
// (implicit im2col, transposes) and return 0 inside zero padding. They are only called with
// m < M, n < N, k < Kdim. Each declares `static constexpr bool k_contiguous`: true when
// consecutive k are adjacent in memory, false when consecutive m (of A) or n (of B) are; the
// tile loader lets neighbouring threads read along that dimension so that loads coalesce.
// Every result goes through an epilogue functor `void operator()(int m, int n, T acc) const`
// (bias, output layout), called exactly once per (m, n).
//
// Split-K: when there are few output tiles and a long k (the conv weight gradient has
// M = K, N = C*R*S, Kdim = N*P*Q), gridDim.z cuts k into contiguous slices; each slice writes
// its partial tile to a workspace [splits][M][N] and a second kernel adds the slices in the
// fixed order z = 0, 1, 2, ... before the epilogue. There are no float atomics, so results are
// bitwise reproducible from run to run.
//
// Indices are int: the bindings guarantee every tensor has fewer than 2^31 elements, and
// gemm() checks that the extents leave room for a tile of slack.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/check.cuh"
#include "cuda/scratch.cuh"

namespace pyregnet::cuda {
// Internal linkage: every .cu that includes this gets its own copy of the kernels, so no device
// symbol is shared between translation units (the backend is built without -rdc).
namespace {

// Block tile BM x BN of C, stepping k by BK; each of the (BM/TM)*(BN/TN) = 256 threads holds a
// TM x TN micro-tile of accumulators in registers. The same tile suits float and double: the
// double kernel stays well under the 255-register limit (see the ptxas report).
template <class T>
struct GemmTile {
  static constexpr int BM = 64, BN = 64, BK = 16;
  static constexpr int TM = 4, TN = 4;
  static constexpr int kThreadsN = BN / TN;  // threads along n
  static constexpr int kThreadsM = BM / TM;  // threads along m
  static constexpr int kThreads = kThreadsM * kThreadsN;
  // Shared-memory rows are padded by 2 elements: a k-contiguous operand is stored by a warp as
  // 16 k-rows x 2 columns, and the padding moves those 32 stores to 32 different banks.
  static constexpr int kPad = 2;
};

// The part of one operand tile (BK x BX: k by m for A, k by n for B) that a thread stages
// through registers into shared memory. Element e of the tile belongs to thread e % kThreads,
// slot e / kThreads, so neighbouring threads hold neighbouring elements along the operand's
// contiguous dimension and their global loads coalesce.
template <int BX, int BK, int kThreads, bool k_contiguous>
struct TileLayout {
  static_assert((BX * BK) % kThreads == 0, "the tile must split evenly over the threads");
  static constexpr int kPerThread = BX * BK / kThreads;

  __device__ __forceinline__ static int k_of(int slot) {
    const int e = int(threadIdx.x) + slot * kThreads;
    return k_contiguous ? e % BK : e / BX;
  }
  __device__ __forceinline__ static int x_of(int slot) {
    const int e = int(threadIdx.x) + slot * kThreads;
    return k_contiguous ? e / BK : e % BX;
  }

  // Registers <- elements (x0 + x, k0 + k) read by get(x, k); 0 outside [0, x_end) x [0, k_end).
  template <class T, class Get>
  __device__ __forceinline__ static void load(const Get& get, int x0, int x_end, int k0, int k_end,
                                              T (&r)[kPerThread]) {
#pragma unroll
    for (int slot = 0; slot < kPerThread; ++slot) {
      const int x = x0 + x_of(slot), k = k0 + k_of(slot);
      r[slot] = (x < x_end && k < k_end) ? get(x, k) : T(0);
    }
  }

  template <class T, int kRow>
  __device__ __forceinline__ static void store(const T (&r)[kPerThread], T (*s)[kRow]) {
#pragma unroll
    for (int slot = 0; slot < kPerThread; ++slot) s[k_of(slot)][x_of(slot)] = r[slot];
  }
};

// One block per output tile (blockIdx.x, tiles along n varying fastest so that neighbouring
// blocks share A rows in L2) and k-slice (blockIdx.z). k_per_split: the length of a slice, a
// multiple of BK unless there is a single slice. partial: the split-K workspace, or nullptr to
// apply the epilogue here.
template <class T, class AOp, class BOp, class Epi>
__global__ void __launch_bounds__(GemmTile<T>::kThreads)
    gemm_kernel(const AOp a, const BOp b, const Epi epi, const int M, const int N, const int Kdim,
                const int k_per_split, T* const partial) {
  using Tile = GemmTile<T>;
  constexpr int BM = Tile::BM, BN = Tile::BN, BK = Tile::BK, TM = Tile::TM, TN = Tile::TN;
  using ALayout = TileLayout<BM, BK, Tile::kThreads, AOp::k_contiguous>;
  using BLayout = TileLayout<BN, BK, Tile::kThreads, BOp::k_contiguous>;

  __shared__ T As[BK][BM + Tile::kPad];
  __shared__ T Bs[BK][BN + Tile::kPad];

  const int tiles_n = (N + BN - 1) / BN;
  const int m0 = int(blockIdx.x) / tiles_n * BM;
  const int n0 = int(blockIdx.x) % tiles_n * BN;
  const int k_begin = int(blockIdx.z) * k_per_split;
  const int k_end = Kdim - k_begin > k_per_split ? k_begin + k_per_split : Kdim;

  // The micro-tile of this thread is rows ty + i*kThreadsM, columns tx + j*kThreadsN: strided
  // rather than contiguous, so a warp's shared-memory reads are broadcasts (A) or consecutive
  // words (B), free of bank conflicts, and its epilogue writes are consecutive in n.
  const int tx = int(threadIdx.x) % Tile::kThreadsN;
  const int ty = int(threadIdx.x) / Tile::kThreadsN;

  const auto a_at = [&](int m, int k) { return a(m, k); };
  const auto b_at = [&](int n, int k) { return b(k, n); };

  T acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = T(0);
  }

  T ra[ALayout::kPerThread], rb[BLayout::kPerThread];
  if (k_begin < k_end) {
    ALayout::load(a_at, m0, M, k_begin, k_end, ra);
    BLayout::load(b_at, n0, N, k_begin, k_end, rb);
  }
  for (int k0 = k_begin; k0 < k_end; k0 += BK) {
    ALayout::store(ra, As);
    BLayout::store(rb, Bs);
    __syncthreads();
    // Fetch the next tile into registers while this one is multiplied, hiding global latency.
    if (k_end - k0 > BK) {
      ALayout::load(a_at, m0, M, k0 + BK, k_end, ra);
      BLayout::load(b_at, n0, N, k0 + BK, k_end, rb);
    }
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      T av[TM], bv[TN];
#pragma unroll
      for (int i = 0; i < TM; ++i) av[i] = As[kk][ty + i * Tile::kThreadsM];
#pragma unroll
      for (int j = 0; j < TN; ++j) bv[j] = Bs[kk][tx + j * Tile::kThreadsN];
#pragma unroll
      for (int i = 0; i < TM; ++i) {
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += av[i] * bv[j];
      }
    }
    __syncthreads();  // all reads of this tile are done before the next store overwrites it
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int m = m0 + ty + i * Tile::kThreadsM;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int n = n0 + tx + j * Tile::kThreadsN;
      if (n >= N) continue;
      if (partial != nullptr) {
        partial[(int(blockIdx.z) * M + m) * N + n] = acc[i][j];
      } else {
        epi(m, n, acc[i][j]);
      }
    }
  }
}

// Second pass of split-K: C(m, n) = partial[0][m][n] + partial[1][m][n] + ..., in that order.
template <class T, class Epi>
__global__ void __launch_bounds__(kBlockThreads)
    split_k_sum_kernel(const T* const partial, const int splits, const int M, const int N,
                       const Epi epi) {
  const int MN = M * N;
  for (int64_t i = grid_start(); i < MN; i += grid_stride()) {
    const int e = int(i);
    T acc = partial[e];
    for (int z = 1; z < splits; ++z) acc += partial[z * MN + e];
    epi(e / N, e % N, acc);
  }
}

// Split-K policy. Splitting pays when the output tiles alone leave SMs idle: aim for
// kSplitTargetBlocks blocks (2 resident 256-thread blocks on each of an H200's 132 SMs), but
// give every slice at least kMinSplitK of k so that the workspace round trip (M*N per slice)
// stays small next to the slice's math (M*N*k). Both bounds also cap the number of slices.
constexpr int64_t kSplitTargetBlocks = 264;
constexpr int64_t kMinSplitK = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int64_t split_k_count(int64_t tiles, int64_t MN, int64_t Kdim) {
  const int64_t want = ceil_div(kSplitTargetBlocks, tiles);
  const int64_t by_k = Kdim / kMinSplitK;
  const int64_t by_workspace = INT_MAX / MN;  // workspace indices are int
  return std::max<int64_t>(1, std::min({want, by_k, by_workspace}));
}

// Enqueues C = A . B through `epi` on `st`. `what` names the op in error messages.
template <class T, class AOp, class BOp, class Epi>
void gemm(const AOp& a, const BOp& b, const Epi& epi, int64_t M, int64_t N, int64_t Kdim,
          cudaStream_t st, const char* what) {
  using Tile = GemmTile<T>;
  if (M == 0 || N == 0) return;
  // Tile origins and k steps may run one tile past an extent before the bounds checks.
  constexpr int64_t kMaxExtent = INT_MAX - std::max({Tile::BM, Tile::BN, Tile::BK});
  if (M > kMaxExtent || N > kMaxExtent || Kdim > kMaxExtent) {
    throw std::length_error(std::string("pyregnet: ") + what + ": GEMM extent too large");
  }

  const int64_t tiles = ceil_div(M, Tile::BM) * ceil_div(N, Tile::BN);
  const int64_t splits_wanted = split_k_count(tiles, M * N, Kdim);
  if (splits_wanted == 1) {
    gemm_kernel<T><<<unsigned(tiles), Tile::kThreads, 0, st>>>(a, b, epi, int(M), int(N), int(Kdim),
                                                               int(Kdim), static_cast<T*>(nullptr));
    check_launch(what);
    return;
  }
  // Slices are whole k-tiles; recount them so that none is empty.
  const int64_t k_per_split = ceil_div(ceil_div(Kdim, splits_wanted), Tile::BK) * Tile::BK;
  const int64_t splits = ceil_div(Kdim, k_per_split);
  Scratch<T> workspace(splits * M * N, st, what);
  gemm_kernel<T><<<dim3(unsigned(tiles), 1, unsigned(splits)), Tile::kThreads, 0, st>>>(
      a, b, epi, int(M), int(N), int(Kdim), int(k_per_split), workspace.get());
  check_launch(what);
  split_k_sum_kernel<T><<<grid_blocks(M * N), kBlockThreads, 0, st>>>(workspace.get(), int(splits),
                                                                       int(M), int(N), epi);
  check_launch(what);
}

}  // namespace
}  // namespace pyregnet::cuda
