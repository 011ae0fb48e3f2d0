// A C entry point to the kernel plan (csrc/phase_conv_plan.cpp) for tests/plan/test_plan.py, which
// builds the two files alone with the host compiler and calls them through ctypes: the plan
// the CUDA engine launches, computed on a machine without a GPU from recorded device
// properties.  Arrays are flat int64 (see tests/plan_harness.py for their order).
#include <stdio.h>

#include "phase_conv_plan.h"

namespace {

phaseconv::DevInfo device(const int64_t* d) {
  phaseconv::DevInfo dev;
  dev.sms = (int)d[0];
  dev.smem_optin = (size_t)d[1];
  dev.smem_sm = (size_t)d[2];
  dev.wgmma = (int)d[3];
  return dev;
}

void copy_text(const char* text, char* out, int len) {
  snprintf(out, (size_t)len, "%s", text);
}

}  // namespace

// g: n, c_in, c_out, groups, in[3], out[3], stride[3], phase_dilation[3], max_taps[3],
// total_taps, union_box[6], tensor-core layout available, x offered channels-last, y wanted
// channels-last.  force: PhaseConvForce's seven fields.
static bool plan_forward(const int64_t* g, int dtype, const int64_t* force, const int64_t* dev,
                         PhaseConvFwdPlan* plan) {
  PhaseConvFwdParams p{};
  p.n = g[0]; p.c_in = g[1]; p.c_out = g[2]; p.groups = g[3];
  p.in_d = g[4]; p.in_h = g[5]; p.in_w = g[6];
  p.out_d = g[7]; p.out_h = g[8]; p.out_w = g[9];
  p.stride_d = g[10]; p.stride_h = g[11]; p.stride_w = g[12];
  p.pdil_d = g[13]; p.pdil_h = g[14]; p.pdil_w = g[15];
  p.max_taps_d = g[16]; p.max_taps_h = g[17]; p.max_taps_w = g[18];
  p.total_taps = g[19];
  p.union_lo_d = g[20]; p.union_lo_h = g[21]; p.union_lo_w = g[22];
  p.union_ext_d = g[23]; p.union_ext_h = g[24]; p.union_ext_w = g[25];
  p.weight_mma = g[26] ? reinterpret_cast<const void*>(16) : nullptr;
  p.x_channels_last = (int)g[27];
  p.y_channels_last = (int)g[28];
  PhaseConvForce f;
  f.family = (int)force[0]; f.input_layout = (int)force[1]; f.gemm_tile = (int)force[2];
  f.gemm_one_phase = (int)force[3]; f.gemm_k32 = (int)force[4];
  f.direct_stores = (int)force[5]; f.allph_tile = (int)force[6];
  return phase_conv_fwd_plan(p, dtype, f, device(dev), plan);
}

// The forward's plan (g, force: plan_forward's).  out: family, x_channels_last, weight_mma.
extern "C" int phaseconv_plan_forward(const int64_t* g, int dtype, const int64_t* force,
                                      const int64_t* dev, int64_t* out, char* text, int len) {
  PhaseConvFwdPlan plan;
  const bool ok = plan_forward(g, dtype, force, dev, &plan);
  out[0] = plan.family; out[1] = plan.x_channels_last; out[2] = plan.weight_mma;
  copy_text(plan.text, text, len);
  return ok ? 1 : 0;
}

// Whether the forward's plan reads a weight of sizes w[0..4] and element strides w[5..9]
// (elem_size bytes an element) at address `base` in place; -1 where no plan is made.
extern "C" int phaseconv_plan_forward_weight_in_place(const int64_t* g, int dtype,
                                                      const int64_t* force, const int64_t* dev,
                                                      const int64_t* w, int elem_size,
                                                      int64_t base) {
  PhaseConvFwdPlan plan;
  if (!plan_forward(g, dtype, force, dev, &plan)) return -1;
  return phase_conv_fwd_weight_in_place(plan, w, w + 5, elem_size, (uintptr_t)base) ? 1 : 0;
}

// The layer's kernel, padding and dilation (g[0..8]) with its stride, as the exact geometry.
static void set_layer(PhaseConvExact& e, const int64_t* g, const int64_t* stride) {
  for (int a = 0; a < 3; ++a) {
    e.k[a] = g[a]; e.p[a] = g[3 + a]; e.d[a] = g[6 + a]; e.s[a] = stride[a];
  }
}

// g (grad-input mode): n, c_in (grad_y's channels), c_out (x's), groups, in[3] (grad_y's
// sizes), out[3] (x's), phase_dilation[3], max_taps[3], total_taps, nsub, in_stride[3],
// kernel[3], padding[3], dilation[3].  out: family, grad_y read channels-last.
extern "C" int phaseconv_plan_grad_input(const int64_t* g, int dtype, int force,
                                         const int64_t* dev, int64_t* out, char* text,
                                         int len) {
  PhaseConvFwdParams p{};
  p.n = g[0]; p.c_in = g[1]; p.c_out = g[2]; p.groups = g[3];
  p.in_d = g[4]; p.in_h = g[5]; p.in_w = g[6];
  p.out_d = g[7]; p.out_h = g[8]; p.out_w = g[9];
  p.stride_d = p.stride_h = p.stride_w = 1;
  p.pdil_d = g[10]; p.pdil_h = g[11]; p.pdil_w = g[12];
  p.max_taps_d = g[13]; p.max_taps_h = g[14]; p.max_taps_w = g[15];
  p.total_taps = g[16];
  p.nsub = (int)g[17];
  p.in_stride_d = g[18]; p.in_stride_h = g[19]; p.in_stride_w = g[20];
  set_layer(p.exact, g + 21, g + 18);
  PhaseConvBwdInputPlan plan;
  const bool ok = phase_conv_bwd_input_plan(p, dtype, force, device(dev), &plan);
  out[0] = plan.family;
  out[1] = plan.grad_y_channels_last;
  copy_text(plan.text, text, len);
  return ok ? 1 : 0;
}

// g: n, c_in, c_out, groups, in[3], out[3], stride[3], phase_dilation[3], max_taps[3],
// packed elements, kernel[3], padding[3], dilation[3].  out: family, grid, workspace bytes,
// splits, operands read channels-last.
extern "C" int phaseconv_plan_grad_weight(const int64_t* g, int dtype, int force,
                                          const int64_t* dev, int64_t* out, char* text,
                                          int len) {
  PhaseConvBwdWeightParams p{};
  p.n = g[0]; p.c_in = g[1]; p.c_out = g[2]; p.groups = g[3];
  p.in_d = g[4]; p.in_h = g[5]; p.in_w = g[6];
  p.out_d = g[7]; p.out_h = g[8]; p.out_w = g[9];
  p.stride_d = g[10]; p.stride_h = g[11]; p.stride_w = g[12];
  p.pdil_d = g[13]; p.pdil_h = g[14]; p.pdil_w = g[15];
  p.max_taps_d = g[16]; p.max_taps_h = g[17]; p.max_taps_w = g[18];
  p.packed_elems = g[19];
  set_layer(p.exact, g + 20, g + 10);
  PhaseConvBwdWeightPlan plan;
  const bool ok = phase_conv_bwd_weight_plan(p, dtype, force, device(dev), &plan);
  out[0] = plan.family;
  out[1] = plan.grid;
  out[2] = (int64_t)plan.ws_bytes;
  out[3] = plan.family == PHASECONV_GW_MMA || plan.family == PHASECONV_GW_MMA_CL ||
                   plan.family == PHASECONV_GW_WGMMA || plan.family == PHASECONV_GW_WGMMA_TMA
               ? plan.gm.splits
           : plan.family == PHASECONV_GW_SIMT ? plan.gw.splits
           : plan.family == PHASECONV_GW_MMA_NARROW ? plan.narrow.splits
           : plan.family == PHASECONV_GW_DEPTHWISE ? plan.depthwise.splits : 0;
  out[4] = plan.operands_channels_last;
  copy_text(plan.text, text, len);
  return ok ? 1 : 0;
}
