// phaseconv CUDA backward: host launcher API of the weight gradient, and the launch
// geometry its kernels read.
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
#include "phase_conv_plan.h"

namespace phaseconv {

// What the weight-gradient kernels read of a launch (filled by set_geometry).
struct BwdGeometry {
  const void* x;
  const void* gy;
  void* ws;
  const int64_t* table;
  int64_t nbatch;
  int c_in, c_out, cin_g, cout_g;
  int in_d, in_h, in_w, out_d, out_h, out_w;
  int sd, sh, sw, pdd, pdh, pdw;
  int num_phases, groups;
  int64_t packed_elems;          // one workspace slice
};

// BwdGeometry from the launcher's parameters.
inline void set_geometry(BwdGeometry& a, const PhaseConvBwdWeightParams& p) {
  a.x = p.x; a.gy = p.grad_y; a.ws = p.workspace; a.table = p.table;
  a.nbatch = p.n;
  a.c_in = (int)p.c_in; a.c_out = (int)p.c_out; a.groups = (int)p.groups;
  a.cin_g = (int)(p.c_in / p.groups); a.cout_g = (int)(p.c_out / p.groups);
  a.in_d = (int)p.in_d; a.in_h = (int)p.in_h; a.in_w = (int)p.in_w;
  a.out_d = (int)p.out_d; a.out_h = (int)p.out_h; a.out_w = (int)p.out_w;
  a.sd = (int)p.stride_d; a.sh = (int)p.stride_h; a.sw = (int)p.stride_w;
  a.pdd = (int)p.pdil_d; a.pdh = (int)p.pdil_h; a.pdw = (int)p.pdil_w;
  a.num_phases = (int)(p.stride_d * p.stride_h * p.stride_w);
  a.packed_elems = p.packed_elems;
}

}  // namespace phaseconv

// Launches a planned weight gradient (phase_conv_bwd_weight_plan, phase_conv_plan.h) on
// `stream`, with params.workspace holding plan.ws_bytes; dtype_code is a PhaseConvDtype.
cudaError_t phase_conv_bwd_weight(const PhaseConvBwdWeightParams& params,
                                  const PhaseConvBwdWeightPlan& plan, int dtype_code,
                                  cudaStream_t stream);
