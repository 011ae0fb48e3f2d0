// phaseconv CUDA forward engine: host launcher API.
//
// conv_transpose3d computed phase by phase.  Along one axis, phase r owns the outputs
// o = r + s*j (j < count); its taps t read input j + off0 + t*pdil (pdil = d / gcd(s, d)).
// A 3-D phase is the product of one phase per axis: a dense stride-1 correlation.
//
// This header includes only CUDA's own headers, so it builds without torch.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "phase_conv_exact.cuh"
#include "phase_conv_plan.h"

// Launches a planned forward on `stream` (params with the plan's layouts and every pointer
// set).  Returns cudaSuccess or the first CUDA error.
cudaError_t phase_conv_fwd_run(const PhaseConvFwdParams& params, const PhaseConvFwdPlan& plan,
                               int dtype_code, cudaStream_t stream);

// Copies x (n, c, p) contiguous into y laid out (n, p, c) (2- or 4-byte elements).
cudaError_t phase_conv_to_channels_last(const void* x, void* y, int64_t n, int64_t c, int64_t p,
                                        int elem_size, cudaStream_t stream);

// ---- grad-input mode: the input gradient of a transposed convolution in one launch.
// grad_x[n, c, i] = sum over phases q, taps t of q, output channels o of the group:
//   w_q[o, t, c] * grad_y[n, o, r_q + s * (i + off_q + t * pdil)]   (zero outside grad_y)
// run by the per-phase tensor-core kernel, or the naive kernel, as ONE stride-1 "phase"
// whose tiles sum nsub sub-problems (no zero-insertion, no per-phase buffers or adds).
// Parameters as for the forward, read as: x = grad_y (N, C_out, OD, OH, OW) contiguous,
// c_in = C_out, c_out = C_in, in_* = grad_y's sizes, out_* = grad_x's sizes, y = grad_x,
// stride 1, in_stride_* = the transposed convolution's stride, weight = the sub-problems'
// packed blocks (layout as the forward's packed weight with C_in and C_out swapped),
// sub_table rows: residues r_q (PT_RES_*), taps, offsets off_q (PT_OFF_*) and the block's
// offset (PT_WOFS); table unused, max_taps / total_taps over the sub-problems.
//
cudaError_t phase_conv_bwd_input_run(const PhaseConvFwdParams& params,
                                     const PhaseConvBwdInputPlan& plan, int dtype_code,
                                     cudaStream_t stream);
