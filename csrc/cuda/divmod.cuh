// Integer division by a divisor fixed at launch time.
#pragma once
#include <cstdint>

namespace pyregnet::cuda {

// n / d and n % d as a multiply-high and a shift (Granlund & Montgomery, "Division by
// invariant integers using multiplication", 1994), exact for every n in [0, 2^31). The
// implicit-GEMM operands split each element's flat index into shape coordinates; a plain `/`
// by a runtime value is a ~20-instruction sequence on the GPU, this is 2-3.
//
// With l = ceil(log2(d)) and p = 31 + l, mul = ceil(2^p / d) fits in 32 bits and
// floor(n * mul / 2^p) = floor(n / d) for n < 2^31 (the rounding error of mul adds less than
// n / 2^p < 1/d to the exact quotient).
class DivMod {
 public:
  // Host side. A divisor below 2 divides as 1 (an empty extent is never divided by).
  explicit DivMod(int divisor) : d_(divisor) {
    if (divisor < 2) return;  // mul_ == 0 selects the identity
    int l = 0;
    while ((int64_t(1) << l) < divisor) ++l;
    mul_ = unsigned(((uint64_t(1) << (31 + l)) + uint64_t(divisor) - 1) / uint64_t(divisor));
    shift_ = unsigned(l - 1);
  }

  __device__ __forceinline__ int div(int n) const {
    return mul_ == 0 ? n : int(__umulhi(unsigned(n), mul_) >> shift_);
  }
  // q = n / d, r = n % d.
  __device__ __forceinline__ void divmod(int n, int& q, int& r) const {
    q = div(n);
    r = n - q * d_;
  }

 private:
  int d_;
  unsigned mul_ = 0;
  unsigned shift_ = 0;
};

}  // namespace pyregnet::cuda
