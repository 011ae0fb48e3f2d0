// phaseconv backward, the input gradient of narrow layers on tensor cores
// (phase_conv_bwd_input_narrow.cu): the launcher of a planned tile (GiNarrowCfg,
// phase_conv_plan.h), instantiated there for every dtype (float64 refuses: the plan picks it
// for float32, float16 and bfloat16 only).  CUDA headers only.
#pragma once

#include <cuda_runtime.h>

#include "phase_conv_plan.h"

namespace phaseconv {

// Grad-input mode parameters (phase_conv_bwd_input_plan): params.x is grad_y channels-last
// (16-byte aligned; element-aligned where C_out/g < 8), params.weight_mma the weight laid out
// [groups][kD][kH][kW][ceil(C_out/g / 8)][C_in/g][8] (zero past C_out/g), params.y grad_x
// (N, C_in, D, H, W) contiguous, every element written.
template <typename T>
cudaError_t run_gi_narrow(const PhaseConvFwdParams& params, const GiNarrowCfg& c,
                          cudaStream_t stream);

}  // namespace phaseconv
