// phaseconv backward, the weight gradient of narrow layers on tensor cores
// (phase_conv_bwd_narrow.cu): the launcher of a planned tile (GwNarrowCfg, phase_conv_plan.h),
// instantiated there for every dtype (float64 refuses: the plan picks it for float32, float16
// and bfloat16 only).  CUDA headers only.
#pragma once

#include <cuda_runtime.h>

#include "phase_conv_plan.h"

namespace phaseconv {

// x and grad_y channels-last (16-byte aligned), C_in/g a multiple of 8, C_out/g one or below
// 8 (grad_y then element-aligned, loaded by element and zero-padded to an octet): c.splits
// workspace slices of the packed gradient (float), every element of each written; the
// reduction of phase_conv_bwd.cu adds them in split order.
template <typename T>
cudaError_t run_gw_narrow(const PhaseConvBwdWeightParams& params, const GwNarrowCfg& c,
                          cudaStream_t stream);

}  // namespace phaseconv
