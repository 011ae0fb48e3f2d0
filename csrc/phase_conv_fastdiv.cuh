// phaseconv: division by a launch constant, as a multiply-high, an add and a shift; the host
// fills the divisor's constants.  CUDA headers only.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace phaseconv {

// n / d as a multiply-high, an add and a shift (three instructions instead of a ~20-instruction
// signed division): with s = ceil(log2 d) and mul = floor(2^32 (2^s - d) / d) + 1,
// n / d = (umulhi(n, mul) + n) >> s for every 0 <= n < 2^31 and 1 <= d <= 2^31 (the error of
// the rounded-up reciprocal, under d / 2^(32+s) per unit of n, never reaches the next
// integer; notebooks/01_phase_decomposition, section 6, checks it).  The host fills it.
struct FastDiv {
  uint32_t d, mul, shr;
};
inline FastDiv make_fastdiv(int64_t d) {
  FastDiv f;
  f.d = (uint32_t)d;
  f.shr = 0;
  while (((uint64_t)1 << f.shr) < (uint64_t)d) ++f.shr;
  f.mul = (uint32_t)(((((uint64_t)1 << f.shr) - (uint64_t)d) << 32) / (uint64_t)d + 1);
  return f;
}
__device__ __forceinline__ int fast_div(int n, const FastDiv& f) {
  return (int)((__umulhi((uint32_t)n, f.mul) + (uint32_t)n) >> f.shr);
}

}  // namespace phaseconv
