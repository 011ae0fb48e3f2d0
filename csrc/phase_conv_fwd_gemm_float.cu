// phaseconv CUDA forward engine: the implicit GEMM (phase_conv_fwd_gemm_tiles.cuh) in float32
// (3xTF32 on the mma.sync tiles), and float64's refusal (the plan never picks it).
#include "phase_conv_fwd_gemm_tiles.cuh"

namespace phaseconv {

template cudaError_t run_gemm_typed<float>(const PhaseConvFwdParams&, const GemmCfg&, cudaStream_t);
template <>
cudaError_t run_gemm_typed<double>(const PhaseConvFwdParams&, const GemmCfg&, cudaStream_t) {
  return cudaErrorInvalidValue;
}

}  // namespace phaseconv
