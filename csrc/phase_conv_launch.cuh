// phaseconv: a kernel launch with the plan's dynamic shared memory, shared by every family's
// launcher.  CUDA headers only.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace phaseconv {

// Past 48 KB of shared memory a block (dynamic plus the kernel's own __shared__ arrays) a
// kernel must be opted in.  The kernels' own arrays stay under this reserve (the largest, the
// all-phase kernel's phase table, is 1 KB; each such array asserts it), so opting in from
// 48 KB less the reserve covers both parts without asking the driver for the static size at
// every launch.
constexpr size_t kStaticSmemReserve = 4 * 1024;

// kernel<<<grid, threads, smem, stream>>>(args...), opted in to `smem` bytes of dynamic shared
// memory first where the block may pass 48 KB; the first error.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), int64_t grid, int threads, size_t smem,
                          cudaStream_t stream, const Args&... args) {
  if (smem + kStaticSmemReserve > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (err != cudaSuccess) return err;
  }
  kernel<<<(unsigned)grid, threads, smem, stream>>>(args...);
  return cudaGetLastError();
}

}  // namespace phaseconv
