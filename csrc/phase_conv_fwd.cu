// phaseconv CUDA forward engine: a plan's launch (phase_conv_plan.cpp chose the kernel family,
// its tile and its layouts), dispatched by dtype, for the forward and the grad-input mode.
// The families live in their own translation units (phase_conv_fwd_common.cuh lists them).  No atomics: each
// output is written once by the block that owns it; results are deterministic.
#include "phase_conv_bwd_depthwise.cuh"
#include "phase_conv_bwd_input_narrow.cuh"
#include "phase_conv_fwd_common.cuh"

#include <stdint.h>

namespace phaseconv {
namespace {

// After a kernel that notes non-finite stores: the fix-up (phase_conv_exact.cuh) over its
// output, (N, C_out, out...) contiguous.
template <typename T>
cudaError_t with_fixup(const PhaseConvFwdParams& p, cudaError_t launched, cudaStream_t stream) {
  if (launched != cudaSuccess) return launched;
  return phaseconv_exact::launch_fixup<T>(p.exact, p.y,
                                          p.n * p.c_out * p.out_d * p.out_h * p.out_w, stream);
}

template <typename T>
cudaError_t run_plan(const PhaseConvFwdParams& p, const PhaseConvFwdPlan& plan,
                     cudaStream_t stream) {
  if ((p.x_channels_last != 0) != (plan.x_channels_last != 0) ||
      (p.y_channels_last != 0) != (plan.y_channels_last != 0) ||
      (p.y_channels_last != 0) != (p.exact.out_channels_last != 0))
    return cudaErrorInvalidValue;
  switch (plan.family) {
    case PHASECONV_EMPTY: return cudaSuccess;
    case PHASECONV_GEMM: return with_fixup<T>(p, run_gemm_typed<T>(p, plan.gemm, stream), stream);
    case PHASECONV_ALLPHASE:
      return with_fixup<T>(p, run_allph_typed<T>(p, plan.allph, stream), stream);
    case PHASECONV_MMA: return with_fixup<T>(p, run_mma_typed<T>(p, plan.mma, stream), stream);
    case PHASECONV_TILED: return with_fixup<T>(p, run_tiled<T>(p, plan.tiled, stream), stream);
    case PHASECONV_NAIVE:  // sums only real pairs: exact as it is
      return run_naive<T>(p, plan.naive_grid, stream);
    case PHASECONV_DEPTHWISE:
      return with_fixup<T>(p, run_depthwise<T>(p, plan.depthwise, stream), stream);
  }
  return cudaErrorInvalidValue;
}

template <typename F>
cudaError_t by_dtype(int dtype_code, F&& f) {
  switch (dtype_code) {
    case PHASECONV_FLOAT32: return f(float());
    case PHASECONV_FLOAT64: return f(double());
    case PHASECONV_FLOAT16: return f(__half());
    case PHASECONV_BFLOAT16: return f(__nv_bfloat16());
  }
  return cudaErrorInvalidValue;
}

template <typename T>
cudaError_t run_bwd_input(const PhaseConvFwdParams& p, const PhaseConvBwdInputPlan& plan,
                          cudaStream_t stream) {
  // grad_x channels-last: the implicit GEMM's stores alone write it so
  if ((p.y_channels_last != 0 && plan.family != PHASECONV_GEMM) ||
      (p.y_channels_last != 0) != (p.exact.out_channels_last != 0))
    return cudaErrorInvalidValue;
  switch (plan.family) {
    case PHASECONV_EMPTY: return cudaSuccess;
    case PHASECONV_GEMM:  // one sub-problem of every tap (phase_conv_bwd_input_plan)
      return with_fixup<T>(p, run_gemm_typed<T>(p, plan.gemm, stream), stream);
    case PHASECONV_GI_NARROW:
      return with_fixup<T>(p, run_gi_narrow<T>(p, plan.narrow, stream), stream);
    case PHASECONV_MMA: return with_fixup<T>(p, run_mma_typed<T>(p, plan.mma, stream), stream);
    case PHASECONV_DEPTHWISE:
      return with_fixup<T>(p, run_dw_grad_input<T>(p, plan.depthwise, stream), stream);
    case PHASECONV_NAIVE:  // sums only real pairs: exact as it is
      return run_naive<T>(p, plan.naive_grid, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace
}  // namespace phaseconv

cudaError_t phase_conv_fwd_run(const PhaseConvFwdParams& params, const PhaseConvFwdPlan& plan,
                               int dtype_code, cudaStream_t stream) {
  using namespace phaseconv;
  if (params.nsub != 0) return cudaErrorInvalidValue;
  return by_dtype(dtype_code, [&](auto t) {
    return run_plan<decltype(t)>(params, plan, stream);
  });
}

cudaError_t phase_conv_bwd_input_run(const PhaseConvFwdParams& params,
                                     const PhaseConvBwdInputPlan& plan, int dtype_code,
                                     cudaStream_t stream) {
  using namespace phaseconv;
  if (params.nsub <= 0) return cudaErrorInvalidValue;
  return by_dtype(dtype_code, [&](auto t) {
    return run_bwd_input<decltype(t)>(params, plan, stream);
  });
}
