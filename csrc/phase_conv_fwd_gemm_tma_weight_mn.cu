// phaseconv CUDA forward engine: the TMA tiles (phase_conv_fwd_gemm_tma.cuh) with B from
// the forward's channels_last_3d weight, read in place (MN-major).
#include "phase_conv_fwd_gemm_tma.cuh"

#if defined(PHASECONV_SM90A)
namespace phaseconv {

template cudaError_t launch_gemm_tma_kind<__half, kBWeightMN>(
    const GemmArgs&, const GemmCfg&, const PhaseConvTensorMap&, const PhaseConvTensorMap&,
    cudaStream_t);
template cudaError_t launch_gemm_tma_kind<__nv_bfloat16, kBWeightMN>(
    const GemmArgs&, const GemmCfg&, const PhaseConvTensorMap&, const PhaseConvTensorMap&,
    cudaStream_t);

}  // namespace phaseconv
#endif
