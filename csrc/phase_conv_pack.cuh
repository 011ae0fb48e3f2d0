// phaseconv: weight layouts on the device.
//
// Every layout a kernel reads (the forward's packed and tensor-core layouts, the input
// gradient's sub-kernel blocks) is a permutation of the original (C_in, C_out/groups, kD,
// kH, kW) weight, plus zero padding in the tensor-core layout.  Each is made by ONE gather
// through an index map built once per layer geometry (phaseconv/engines/cuda.py):
//   out[i] = index[i] >= 0 ? w[index[i]] : 0
// where index[i] is a logical (C-order) element index of the weight, read through the
// weight's own strides.  The weight gradient is the matching scatter (phase_conv_bwd.cu
// writes element i of its packed result to grad_w[index[i]]).
//
// This header includes only CUDA's own headers, so it builds without torch.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "phase_conv_plan.h"

#ifdef __CUDACC__
// Storage offset of logical (C-order) element k.
__device__ __forceinline__ int64_t phaseconv_strided_offset(const PhaseConvWeightView& v,
                                                            int64_t k) {
  if (v.contiguous) return k;
  int64_t off = 0;
#pragma unroll
  for (int d = 4; d >= 0; --d) {
    const int64_t q = k % v.size[d];
    k /= v.size[d];
    off += q * v.stride[d];
  }
  return off;
}
#endif

// out[i] = index[i] >= 0 ? w[offset(index[i])] : 0 for i < n, elements of elem_size bytes
// (2, 4 or 8); *flag = 0 when flag is not null (the call's non-finite flag, which the kernels
// that read out may then set: phase_conv_exact.cuh).  Returns cudaSuccess or the launch error.
cudaError_t phase_conv_gather_weight(const void* w, const PhaseConvWeightView& view,
                                     const int32_t* index, void* out, int64_t n, int elem_size,
                                     int* flag, cudaStream_t stream);
