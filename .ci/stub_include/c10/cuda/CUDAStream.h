// CI only: the declarations of c10::cuda's current stream as csrc/phase_conv.cpp uses them,
// for a syntax check of the binding against a CPU build of torch.
#pragma once
#include <c10/core/Device.h>
#include <cuda_runtime_api.h>

namespace c10 {
namespace cuda {
struct CUDAStream {
  cudaStream_t stream() const;
};
CUDAStream getCurrentCUDAStream(c10::DeviceIndex device_index = -1);
}  // namespace cuda
}  // namespace c10
