// phaseconv CUDA backward: host launcher API of the weight gradient.
//
// Phase p computes y_p[n, o, j] = sum_{c, t} w_p[c, t, o] x[n, c, j + off_t] (j over the
// phase's outputs), so its weight gradient is a correlation reduced over batch and space:
//
//   grad_w_p[c, t, o] = sum_{n, j} x[n, c, j + off_t] * grad_y[n, o, r + s * j]
//
// Per (phase, tap) this is a GEMM: rows C_in/g, columns C_out/g, reduction over the phase's
// outputs and the batch.  Blocks own (phase, group, block of C_in/g, block of C_out/g, taps,
// split of the phase's outputs); each writes its partial sums to a workspace slice of its
// own, and a second kernel adds the slices in split order: a fixed reduction order, no
// atomics, so the result is bitwise reproducible.  The kernels work in the forward's packed
// layout (phase_conv_fwd.cuh: [groups][C_in/groups][taps_d][taps_h][taps_w][C_out/groups] per
// phase); the reduction writes packed element i straight to grad_w[grad_w_index[i]], the
// weight's own layout (the packed layout is a permutation of the weight: every tap belongs to
// exactly one phase, phase_conv_pack.cuh).
//
// This header includes only CUDA's own headers, so it builds without torch.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "phase_conv_exact.cuh"
#include "phase_conv_pack.cuh"

struct PhaseConvBwdWeightParams {
  const void* x;          // (N, C_in, D, H, W) contiguous
  const void* grad_y;     // (N, C_out, OD, OH, OW) contiguous
  void* grad_w;           // (C_in, C_out/groups, kD, kH, kW) as grad_w_view; every element written
  const int32_t* grad_w_index;       // packed element -> logical element of grad_w (device)
  PhaseConvWeightView grad_w_view;   // grad_w's sizes and strides
  void* workspace;        // phase_conv_bwd_weight_workspace() bytes, 16-byte aligned
  const int64_t* table;   // the forward's phase table (device)
  int64_t n, c_in, c_out, groups;
  int64_t in_d, in_h, in_w;
  int64_t out_d, out_h, out_w;
  int64_t stride_d, stride_h, stride_w;
  int64_t pdil_d, pdil_h, pdil_w;
  int64_t max_taps_d, max_taps_h, max_taps_w;
  int64_t packed_elems;   // elements of the packed weight
  int64_t kernel;         // 0: the launcher's rule (see below), 1: SIMT, 2: tensor cores
  // x and grad_y as the definition reads them: a non-finite gradient element is recomputed
  // from its real pairs (phase_conv_exact.cuh)
  PhaseConvExact exact;
};

// The rule: float32/float16/bfloat16 with C_in/groups and C_out/groups both >= 16 (and a
// phase's outputs over the batch below 2^31) run the tensor-core kernel; float64 and
// narrower layers the SIMT one, and layers whose input window does not fit shared memory
// (huge dilations) a naive kernel, one thread per weight element.  kernel = 2 on a layer the
// tensor cores cannot take is refused (cudaErrorInvalidValue), never silently rerouted.

// Bytes of workspace the launch needs (0 when nothing is to be computed).
size_t phase_conv_bwd_weight_workspace(const PhaseConvBwdWeightParams& params, int dtype_code);

// Launches the weight gradient on `stream`; dtype_code as in phase_conv_fwd.cuh.
cudaError_t phase_conv_bwd_weight(const PhaseConvBwdWeightParams& params, int dtype_code,
                                  cudaStream_t stream);

// Writes a one-line description of the kernel and tile the launch would use into buf.
void phase_conv_bwd_weight_describe(const PhaseConvBwdWeightParams& params, int dtype_code,
                                    char* buf, int len);
