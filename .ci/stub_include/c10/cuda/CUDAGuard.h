// CI only: the declaration of c10::cuda::CUDAGuard as csrc/phase_conv.cpp uses it, for a
// syntax check of the binding against a CPU build of torch (which ships no c10/cuda headers).
#pragma once
#include <c10/core/Device.h>

namespace c10 {
namespace cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device device);
};
}  // namespace cuda
}  // namespace c10
