// phaseconv CUDA forward engine: the implicit GEMM (phase_conv_fwd_gemm_tiles.cuh) in float16.
#include "phase_conv_fwd_gemm_tiles.cuh"

namespace phaseconv {

template cudaError_t run_gemm_typed<__half>(const PhaseConvFwdParams&, const GemmCfg&,
                                              cudaStream_t);

}  // namespace phaseconv
