// phaseconv backward, depthwise kernels (phase_conv_bwd_depthwise.cu): the launchers of a
// planned tile (DwBwdCfg, phase_conv_plan.h), instantiated there for every dtype.  CUDA
// headers only.
#pragma once

#include <cuda_runtime.h>

#include "phase_conv_plan.h"

namespace phaseconv {

// The input gradient of a depthwise layer, params in grad-input mode (phase_conv_fwd.cuh);
// non-finite stores are noted in params.exact.flag for the fix-up.
template <typename T>
cudaError_t run_dw_grad_input(const PhaseConvFwdParams& params, const DwBwdCfg& c,
                              cudaStream_t stream);

// The weight gradient of a depthwise layer: c.splits workspace slices of the packed gradient
// (accumulator type), every element of each written; gw_reduce_kernel adds them.
template <typename T>
cudaError_t run_dw_grad_weight(const PhaseConvBwdWeightParams& params, const DwBwdCfg& c,
                               cudaStream_t stream);

}  // namespace phaseconv
