// Subnormal floats on the CPU. x86 arithmetic on subnormal operands or results takes a slow
// microcode path (dense_forward ran 70x slower with subnormal weights), while NVIDIA GPUs run
// float32 subnormals at full speed; and L2 under Adam drives dead weights through the subnormal
// range. So, when built with PYREGNET_FLUSH_DENORMALS, a float32 op runs with flush-to-zero (FTZ:
// subnormal results become 0) and denormals-are-zero (DAZ: subnormal operands count as 0), as the
// CUDA backend does with -ftz=true; float64 ops keep the caller's mode (IEEE by default), as
// -ftz leaves the GPU's float64 arithmetic IEEE. The mode is per thread (MXCSR), and an OpenMP
// worker thread keeps its own from region to region (it copies its creator's only when the
// runtime creates it), so the mode is set in two places:
//   OpMode    on the calling thread for the whole op (the bindings' dispatch), then restored;
//   parallel  every parallel region of the backend, which gives each thread of the team the
//             caller's FTZ/DAZ bits for the region and restores the thread's own afterwards.
// NumPy code outside the ops thus keeps IEEE behaviour, and so does any other OpenMP user.
#pragma once
#include <cstdint>

#if defined(__SSE2__) || defined(_M_X64)
#include <xmmintrin.h>
#define PYREGNET_HAS_MXCSR 1
#endif

namespace pyregnet::cpu {

#if defined(PYREGNET_HAS_MXCSR) && defined(PYREGNET_FLUSH_DENORMALS)
inline constexpr bool kFlushDenormals = true;
#else
inline constexpr bool kFlushDenormals = false;
#endif

#ifdef PYREGNET_HAS_MXCSR
inline constexpr uint32_t kFlushBits = 0x8040;  // MXCSR bit 15 FTZ | bit 6 DAZ
inline uint32_t read_fp_control() { return _mm_getcsr(); }
inline void write_fp_control(uint32_t value) { _mm_setcsr(value); }
#else
inline constexpr uint32_t kFlushBits = 0;  // no flush control here: ops stay IEEE
inline uint32_t read_fp_control() { return 0; }
inline void write_fp_control(uint32_t) {}
#endif

// This thread's FTZ/DAZ bits.
inline uint32_t denormal_mode() { return read_fp_control() & kFlushBits; }

// Sets this thread's FTZ/DAZ bits to `mode` for the scope's lifetime, then puts the thread's
// previous bits back (the rest of the register, exception flags included, is left as it is).
class DenormalModeScope {
 public:
  explicit DenormalModeScope(uint32_t mode) : saved_(denormal_mode()), changed_(saved_ != mode) {
    if (changed_) write_fp_control((read_fp_control() & ~kFlushBits) | mode);
  }
  ~DenormalModeScope() {
    if (changed_) write_fp_control((read_fp_control() & ~kFlushBits) | saved_);
  }
  DenormalModeScope(const DenormalModeScope&) = delete;
  DenormalModeScope& operator=(const DenormalModeScope&) = delete;

 private:
  uint32_t saved_;
  bool changed_;
};

namespace detail {
// This thread's mode from before the op it is running (-1: not inside an op, see OpMode).
inline thread_local int64_t mode_outside_op = -1;
}  // namespace detail

// The mode of one op, set on the calling thread: flushing for float32 in a flushing build, the
// caller's own mode otherwise.
class OpMode {
 public:
  explicit OpMode(bool float32)
      : outer_(detail::mode_outside_op), before_(denormal_mode()),
        scope_(kFlushDenormals && float32 ? kFlushBits : before_) {
    detail::mode_outside_op = before_;
  }
  ~OpMode() { detail::mode_outside_op = outer_; }
  OpMode(const OpMode&) = delete;
  OpMode& operator=(const OpMode&) = delete;

 private:
  int64_t outer_;
  uint32_t before_;
  DenormalModeScope scope_;
};

// The one way the CPU backend opens an OpenMP parallel region: body() runs on every thread of
// the team in the calling thread's FTZ/DAZ mode. Worksharing loops go inside body (orphaned
// `#pragma omp for`, which binds to this region). `enabled` is the region's if clause.
// The runtime may create the team's threads when the region opens, and a new thread starts with
// a copy of its creator's MXCSR: the region is opened in the caller's mode from before the op,
// so that the op's mode outlives the op on no thread.
template <class Body>
void parallel(const Body& body, bool enabled = true) {
  const uint32_t mode = denormal_mode();
  const int64_t outside = detail::mode_outside_op;
  const DenormalModeScope spawn(outside < 0 ? mode : uint32_t(outside));
#pragma omp parallel if (enabled)
  {
    const DenormalModeScope scope(mode);
    body();
  }
}

}  // namespace pyregnet::cpu
