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
#include "phase_conv_plan.cuh"

// dtype codes for phase_conv_fwd
enum PhaseConvDtype {
  PHASECONV_FLOAT32 = 0,
  PHASECONV_FLOAT64 = 1,
  PHASECONV_FLOAT16 = 2,
  PHASECONV_BFLOAT16 = 3,
};

// One row of the device phase table (int64, PHASECONV_TABLE_STRIDE entries per phase;
// phases in row-major order over the residues (rd, rh, rw)).
enum PhaseTableField {
  PT_RES_D = 0, PT_RES_H = 1, PT_RES_W = 2,      // residues (first outputs) of the phase
  PT_TAPS_D = 3, PT_TAPS_H = 4, PT_TAPS_W = 5,   // taps per axis (0: bias-only phase)
  PT_OFF_D = 6, PT_OFF_H = 7, PT_OFF_W = 8,      // input offset of the first tap per axis
  PT_WOFS = 9,                                   // element offset of the phase in the packed weight
  PT_MOFS = 10,                                  // element offset of the phase in weight_mma
};
#define PHASECONV_TABLE_STRIDE 12

// Packed weight: for each phase p (table order), a block at element offset table[p].PT_WOFS,
// laid out [groups][C_in/groups][taps_d][taps_h][taps_w][C_out/groups] (C-contiguous), where
// the taps of each axis are in ascending input offset order.  Bias-only phases own no block.
//
// Tensor-core weight (weight_mma, optional; float32/float16/bfloat16 only): for each phase, a
// block at element offset table[p].PT_MOFS laid out [groups][taps][G][C_out/groups][CG]
// (CG = 16 bytes / element size = 4 or 8 channels; G = ceil((C_in/groups) / CG); channels
// past C_in/groups are zero), taps row-major over (taps_d, taps_h, taps_w) as above: every
// 16-byte row (tap, channel group, output channel) is one contiguous vector.
struct PhaseConvFwdParams {
  const void* x;          // (N, C_in, in_d, in_h, in_w), contiguous
  const void* weight;     // packed weight (see above), same dtype as x
  const void* bias;       // (C_out,) same dtype as x, or nullptr
  void* y;                // (N, C_out, out_d, out_h, out_w), contiguous; every element written
  const int64_t* table;   // device pointer, num_phases * PHASECONV_TABLE_STRIDE int64
  int64_t n, c_in, c_out, groups;
  int64_t in_d, in_h, in_w;
  int64_t out_d, out_h, out_w;
  int64_t stride_d, stride_h, stride_w;            // num_phases = product of strides
  int64_t pdil_d, pdil_h, pdil_w;                  // phase dilation d / gcd(s, d) per axis
  int64_t max_taps_d, max_taps_h, max_taps_w;      // max taps per axis over the phases
  int64_t total_taps;                              // sum over phases of taps_d*taps_h*taps_w
  const void* weight_mma;                          // see above, or nullptr
  int64_t union_lo_d, union_lo_h, union_lo_w;      // first input offset over all phases' taps
  int64_t union_ext_d, union_ext_h, union_ext_w;   // last minus first such offset, per axis
  // low 4 bits: 0 auto, 1 tiled (SIMT), 2 naive, 3 tensor cores, 4 per-phase tensor cores,
  // 5 implicit GEMM (16-bit, channels-last); | PHASECONV_FORCE_NCDHW: never channels-last;
  // | PHASECONV_DIRECT_STORES | PHASECONV_GEMM_NO_WGROUP | PHASECONV_GEMM_BK32
  // (benchmarks); bits 8-10
  // (benchmarks): the GEMM tile, kind + 1
  int force_path;
  int x_channels_last;  // 1: x is laid out (N, D, H, W, C_in) (see phase_conv_fwd_input_layout)
  // grad-input mode only (phase_conv_bwd_input; the forward refuses nsub != 0)
  const int64_t* sub_table = nullptr;  // device, nsub rows of PHASECONV_TABLE_STRIDE int64
  int nsub = 0;
  int64_t in_stride_d = 1, in_stride_h = 1, in_stride_w = 1;
  // the operands as the definition reads them: where a stored element is not finite, the
  // kernels recompute it from its real pairs (phase_conv_exact.cuh)
  PhaseConvExact exact;
};
#define PHASECONV_FORCE_NCDHW 16
#define PHASECONV_DIRECT_STORES 32  // force_path flag: no staged output in the all-phase kernel
#define PHASECONV_GEMM_NO_WGROUP 64  // force_path flag: implicit GEMM, one phase per block
#define PHASECONV_GEMM_BK32 128      // force_path flag: implicit GEMM, 32 channels a k step

// Plans the forward (phase_conv_plan.cuh): the kernel family, its tile and the layouts it
// reads.  Pointers in params are not read, except that weight_mma non-null says the
// tensor-core weight layout can be provided (float32/float16/bfloat16) and x_channels_last
// says x is offered channels-last; the plan then says which input layout the kernel reads
// (plan->x_channels_last) and which weight layout (plan->weight_mma).  False: no kernel
// takes these parameters.  dtype_code is a PhaseConvDtype.
bool phase_conv_fwd_plan(const PhaseConvFwdParams& params, int dtype_code,
                         PhaseConvFwdPlan* plan);

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
// The rule: the tensor-core kernel for float32/float16/bfloat16 with C_out/g and C_in/g >= 4
// when a tile fits shared memory, else the naive kernel (any dtype).  force: 0 the rule,
// 1 the tensor-core kernel (false where it does not apply), 2 the naive kernel.
bool phase_conv_bwd_input_plan(const PhaseConvFwdParams& params, int dtype_code, int force,
                               PhaseConvBwdInputPlan* plan);
cudaError_t phase_conv_bwd_input_run(const PhaseConvFwdParams& params,
                                     const PhaseConvBwdInputPlan& plan, int dtype_code,
                                     cudaStream_t stream);
