// phaseconv: the weight gather (see phase_conv_pack.cuh).  CUDA headers only.
#include "phase_conv_pack.cuh"

#include <stdint.h>

namespace phaseconv_pack {
namespace {

// Moves raw elements (U of the element's size): no arithmetic on the values, so any dtype,
// NaN and Inf included, arrives bit for bit.
template <typename U>
__global__ void __launch_bounds__(256) gather_kernel(const U* __restrict__ w,
                                                     const PhaseConvWeightView view,
                                                     const int32_t* __restrict__ index,
                                                     U* __restrict__ out, int64_t n,
                                                     int* flag) {
  if (flag != nullptr && blockIdx.x == 0 && threadIdx.x == 0) *flag = 0;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int32_t k = index[i];
    out[i] = k < 0 ? U(0) : w[phaseconv_strided_offset(view, k)];
  }
}

template <typename U>
cudaError_t launch(const void* w, const PhaseConvWeightView& view, const int32_t* index,
                   void* out, int64_t n, int* flag, cudaStream_t stream) {
  int64_t blocks = (n + 255) / 256;
  if (blocks > 8192) blocks = 8192;  // grid-stride beyond: enough to fill any GPU
  gather_kernel<U><<<(unsigned)blocks, 256, 0, stream>>>(static_cast<const U*>(w), view, index,
                                                          static_cast<U*>(out), n, flag);
  return cudaGetLastError();
}

}  // namespace
}  // namespace phaseconv_pack

cudaError_t phase_conv_gather_weight(const void* w, const PhaseConvWeightView& view,
                                     const int32_t* index, void* out, int64_t n, int elem_size,
                                     int* flag, cudaStream_t stream) {
  using namespace phaseconv_pack;
  if (n == 0) return flag != nullptr ? cudaMemsetAsync(flag, 0, sizeof(int), stream)
                                     : cudaSuccess;
  switch (elem_size) {
    case 2: return launch<uint16_t>(w, view, index, out, n, flag, stream);
    case 4: return launch<uint32_t>(w, view, index, out, n, flag, stream);
    case 8: return launch<uint64_t>(w, view, index, out, n, flag, stream);
  }
  return cudaErrorInvalidValue;
}
