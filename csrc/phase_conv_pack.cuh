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

// The tensor-core layout made without its index map: per kernel tap k (C order over kD, kH,
// kW), channel c of channel group q, column co and group g lands at
//   taps[2k] + g * taps[2k + 1] + (q * cout_g + co) * cg + c
// (engines/cuda.py: mma_taps), holding the weight's (g * cin_g + q * cg + c, co, k), or zero
// past cin_g.  The same bytes as the gather through index_mma, with the weight read in runs.
struct PhaseConvMmaPack {
  const int64_t* taps;  // (ksize, 2) on the device: position of (g 0, q 0, co 0), group step
  int64_t ksize, cin_g, cout_g, groups;
};

// out[i] = index[i] >= 0 ? w[offset(index[i])] : 0 for i < n, elements of elem_size bytes
// (2, 4 or 8); *flag = 0 when flag is not null (the call's non-finite flag, which the kernels
// that read out may then set: phase_conv_exact.cuh).  Returns cudaSuccess or the launch error.
cudaError_t phase_conv_gather_weight(const void* w, const PhaseConvWeightView& view,
                                     const int32_t* index, void* out, int64_t n, int elem_size,
                                     int* flag, cudaStream_t stream);

// The tensor-core layout of w (its view: any strides) by the rule above, for 4-byte (cg 4)
// or 2-byte (cg 8) elements; out holds groups * ksize * ceil(cin_g / cg) * cout_g * cg
// elements, 16-byte aligned.  *flag = 0 when flag is not null (as the gather).
cudaError_t phase_conv_pack_weight_mma(const void* w, const PhaseConvWeightView& view,
                                       const PhaseConvMmaPack& pack, void* out, int elem_size,
                                       int* flag, cudaStream_t stream);
