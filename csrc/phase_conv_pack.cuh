// phaseconv: weight layouts on the device.
//
// Every layout a kernel reads (the forward's packed and tensor-core layouts, the input
// gradient's sub-kernel blocks and its tensor-core layout) is a permutation of the original
// (C_in, C_out/groups, kD, kH, kW) weight, plus zero padding in the tensor-core layouts.
// Each is made by one launch.  The element-wise layouts are a gather through an index map
// built once per layer geometry (phaseconv/engines/cuda.py):
//   out[i] = index[i] >= 0 ? w[index[i]] : 0
// where index[i] is a logical (C-order) element index of the weight, read through the
// weight's own strides.  The weight gradient is the matching scatter (phase_conv_bwd.cu
// writes element i of its packed result to grad_w[index[i]]).  The tensor-core layouts put
// 16 or 32 bytes of channels innermost, where the weight has its taps; they are made a chunk
// of channels a thread, placed by a per-tap table (PhaseConvMmaPack) instead of an index map:
// the same bytes as a gather through their index maps, without the map's memory and reads.
//
// This header includes only CUDA's own headers, so it builds without torch.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "phase_conv_plan.h"

#ifdef __CUDACC__
// Storage offset of logical (C-order) element k, k < the view's elements.  The leading index
// is what is left of k after the four trailing ones (no fifth division), and a narrow view's
// indices are 32-bit divisions, a few instructions each (a 64-bit one tests its operands
// first and may call a subroutine).
__device__ __forceinline__ int64_t phaseconv_strided_offset(const PhaseConvWeightView& v,
                                                            int64_t k) {
  if (v.contiguous) return k;
  int64_t off = 0;
  if (v.narrow) {
    uint32_t r = (uint32_t)k;
#pragma unroll
    for (int d = 4; d >= 1; --d) {
      const uint32_t n = (uint32_t)v.size[d];
      off += (int64_t)(r % n) * v.stride[d];
      r /= n;
    }
    return off + (int64_t)r * v.stride[0];
  }
#pragma unroll
  for (int d = 4; d >= 1; --d) {
    off += (k % v.size[d]) * v.stride[d];
    k /= v.size[d];
  }
  return off + k * v.stride[0];
}

// Storage offset of kernel tap t (C order over kD, kH, kW) from its (input channel, output
// channel)'s tap 0.
__device__ __forceinline__ int64_t phaseconv_tap_offset(const PhaseConvWeightView& v,
                                                        uint32_t t) {
  const uint32_t kw_n = (uint32_t)v.size[4], kh_kw = (uint32_t)(v.size[3] * v.size[4]);
  const uint32_t kd = t / kh_kw, kr = t - kd * kh_kw;
  const uint32_t kh = kr / kw_n, kw = kr - kh * kw_n;
  return kd * v.stride[2] + kh * v.stride[3] + kw * v.stride[4];
}
#endif

// A tensor-core layout made without an index map.  Per kernel tap k (C order over kD, kH,
// kW), element c of channel group q, column col and group g lands at
//   base(k) + g * step(k) + (q * cols + col) * cg + c,
// base(k), step(k) = taps[2k], taps[2k + 1] where taps is given (the forward's layout, whose
// taps lie in phase blocks: engines/cuda.py, mma_taps), else k * run, ksize * run with
// run = ceil(chans / cg) * cols * cg (taps in C order).  It holds the weight element at
//   g * group_stride + (q * cg + c) * chan_stride + col * col_stride + (the tap's offset),
// or zero past chans.  The forward's layout runs its channel groups over the input channels
// (chans C_in/g, cols C_out/g); the input gradient's over the output channels (chans C_out/g,
// cols C_in/g, no taps table).
struct PhaseConvMmaPack {
  const int64_t* taps;  // (ksize, 2) on the device, or null: taps in C order
  int64_t ksize, chans, cols, groups;
  int cg;  // channels a group: 16 or 32 bytes of them
  int64_t chan_stride, col_stride, group_stride;  // in elements of the weight
};

// out[i] = index[i] >= 0 ? w[offset(index[i])] : 0 for i < n, elements of elem_size bytes
// (2, 4 or 8); *flag = 0 when flag is not null (the call's non-finite flag, which the kernels
// that read out may then set: phase_conv_exact.cuh).  Returns cudaSuccess or the launch error.
cudaError_t phase_conv_gather_weight(const void* w, const PhaseConvWeightView& view,
                                     const int32_t* index, void* out, int64_t n, int elem_size,
                                     int* flag, cudaStream_t stream);

// The tensor-core layout of w (its view gives the taps' sizes and strides) by the rule
// above, for 2-byte elements with cg 8 or 4-byte ones with cg 4 or 8; out holds
// groups * ksize * ceil(chans / cg) * cols * cg elements, 16-byte aligned.  *flag = 0 when
// flag is not null (as the gather).
cudaError_t phase_conv_pack_weight_mma(const void* w, const PhaseConvWeightView& view,
                                       const PhaseConvMmaPack& pack, void* out, int elem_size,
                                       int* flag, cudaStream_t stream);
