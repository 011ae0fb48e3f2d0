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

// The opt-in to `smem` bytes of dynamic shared memory where the block may pass 48 KB.
template <typename... Params>
cudaError_t allow_shared_memory(void (*kernel)(Params...), size_t smem) {
  if (smem + kStaticSmemReserve <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
}

// kernel<<<grid, threads, smem, stream>>>(args...), opted in to `smem` bytes of dynamic shared
// memory first where the block may pass 48 KB; the first error.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), int64_t grid, int threads, size_t smem,
                          cudaStream_t stream, const Args&... args) {
  const cudaError_t err = allow_shared_memory(kernel, smem);
  if (err != cudaSuccess) return err;
  kernel<<<(unsigned)grid, threads, smem, stream>>>(args...);
  return cudaGetLastError();
}

#if CUDART_VERSION >= 12000
// The same launch with one launch attribute (cudaLaunchKernelEx: CUDA 12 and newer).
template <typename... Params, typename... Args>
cudaError_t launch_kernel_with(cudaLaunchAttribute attribute, void (*kernel)(Params...),
                               int64_t grid, int threads, size_t smem, cudaStream_t stream,
                               const Args&... args) {
  const cudaError_t err = allow_shared_memory(kernel, smem);
  if (err != cudaSuccess) return err;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3((unsigned)grid);
  config.blockDim = dim3(threads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, args...);
}
#endif

}  // namespace phaseconv
