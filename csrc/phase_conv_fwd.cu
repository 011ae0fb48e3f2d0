// phaseconv CUDA forward engine: the plan (which kernel family, which tile, which layouts)
// and the dispatch by dtype, for the forward and the grad-input mode.  The families live in
// their own translation units (phase_conv_fwd_common.cuh lists them).  No atomics: each
// output is written once by the block that owns it; results are deterministic.
#include "phase_conv_fwd_common.cuh"

#include <stdint.h>
#include <stdio.h>

namespace phaseconv {
namespace {

bool want_mma(const PhaseConvFwdParams& p, int dtype_code) {
  if (dtype_code == PHASECONV_FLOAT64) return false;
  const int force = p.force_path & 15;
  if (force == 3 || force == 4 || force == 5) return true;
  if (force != 0) return false;
  const int64_t cin_g = p.c_in / p.groups, cout_g = p.c_out / p.groups;
  // float32 runs 3xTF32; past kFlushTerms reduction terms its accumulators are flushed
  // (flush_acc: as accurate as FFMA at any length; unflushed, 1.4e-5 relative at 2048 terms).
  // Those FLUSH variants beat the SIMT kernel only on wide tiles (H100: C_out 32,
  // K 512: 666 vs 452 us; C_out 64-256, K 512-2048: 0.70-0.95x the SIMT time): narrower layers
  // stay on FFMA.
  if (needs_flush(p, dtype_code) && cout_g < 64) return false;
  return cin_g >= 4 && cout_g >= 4;
}

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
  if ((p.x_channels_last != 0) != (plan.x_channels_last != 0)) return cudaErrorInvalidValue;
  switch (plan.family) {
    case PHASECONV_EMPTY: return cudaSuccess;
    case PHASECONV_GEMM: return with_fixup<T>(p, run_gemm_typed<T>(p, plan.gemm, stream), stream);
    case PHASECONV_ALLPHASE:
      return with_fixup<T>(p, run_allph_typed<T>(p, plan.allph, stream), stream);
    case PHASECONV_MMA: return with_fixup<T>(p, run_mma_typed<T>(p, plan.mma, stream), stream);
    case PHASECONV_TILED: return with_fixup<T>(p, run_tiled<T>(p, plan.tiled, stream), stream);
    case PHASECONV_NAIVE:  // sums only real pairs: exact as it is
      return run_naive<T>(p, stream);
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

// The input layout the plan reads (see phase_conv_fwd_plan): channels-last where only the
// channels-last kernels take the layer, or where x already is channels-last and the
// all-phase kernel takes it so.
bool plan_reads_channels_last(const PhaseConvFwdParams& p, int dtype_code, const DevInfo& dev) {
  if (!want_mma(p, dtype_code)) return false;
  GemmCfg gc;
  AllCfg ac;
  const bool offered = p.x_channels_last != 0;
  if (!offered && choose_gemm(p, dtype_code, dev, false, &gc)) return false;  // reads NCDHW
  if (!cl_possible(p, dtype_code)) return false;
  if (choose_gemm(p, dtype_code, dev, true, &gc)) return true;  // needs channels-last
  // the all-phase kernel reads either layout: channels-last only when x already is (a copy
  // measured as costly as the 16-byte staging saves, on the founding example)
  return offered && (p.force_path & 15) != 4 && choose_allph(p, dtype_code, dev, true, &ac);
}

bool plan_fwd(const PhaseConvFwdParams& params, int dtype_code, PhaseConvFwdPlan* out) {
  DevInfo dev;
  if (dev_info(&dev) != cudaSuccess) return false;
  PhaseConvFwdParams p = params;
  p.x_channels_last = plan_reads_channels_last(params, dtype_code, dev) ? 1 : 0;
  const bool cl = p.x_channels_last != 0;
  out->x_channels_last = p.x_channels_last;
  out->weight_mma = 0;
  const char* layout = cl ? "channels-last input" : "contiguous input";
  char* buf = out->text;
  const int len = (int)sizeof(out->text);
  if (p.n * p.c_out * p.out_d * p.out_h * p.out_w == 0) {
    out->family = PHASECONV_EMPTY;
    snprintf(buf, len, "none (empty output)");
    return true;
  }
  if (want_mma(p, dtype_code)) {
    GemmCfg& gc = out->gemm;
    if (choose_gemm(p, dtype_code, dev, cl, &gc)) {
      out->family = PHASECONV_GEMM;
      out->weight_mma = 1;
      snprintf(buf, len,
               "implicit-gemm kind=%d BM=%d BN=%d BK=%d threads=%d stages=%d m_tiles=%d "
               "smem=%zu grid=%lld %s (%s)", gc.kind, gc.BM, gc.BN, gc.bkg * 8, gc.threads,
               gc.wgroup ? kGemmGroupStages : kGemmStages, gc.m_tiles, gc.smem,
               (long long)gc.grid, gc.wgroup ? "w-phases-grouped" : "one-phase", layout);
      return true;
    }
    AllCfg& ac = out->allph;
    if ((p.force_path & 15) != 4 && choose_allph(p, dtype_code, dev, cl, &ac)) {
      out->family = PHASECONV_ALLPHASE;
      out->weight_mma = 1;
      snprintf(buf, len,
               "mma-allphase kind=%d BM=%d BN=%d threads=%d tile(d,h,w)=(%d,%d,%d) "
               "halo=(%d,%d,%d) G=%d smem=%zu grid=%lld per_cta=%lld %s (%s)",
               ac.kind, ac.BM, ac.BN, ac.threads, ac.TD, ac.TH, ac.TW, ac.hd, ac.hh, ac.hw, ac.G,
               ac.smem, (long long)ac.grid, (long long)ac.per_cta,
               ac.stage_out ? "staged-output" : "direct-stores", layout);
      return true;
    }
    MmaCfg& mc = out->mma;
    if (!cl && choose_mma(p, dtype_code, dev, &mc)) {
      out->family = PHASECONV_MMA;
      snprintf(buf, len,
               "mma kind=%d BM=%d BN=%d threads=%d tile(d,h,w)=(%d,%d,%d) ng=%d smem=%zu",
               mc.kind, mc.BM, mc.BN, mc.threads, mc.TD, mc.TH, mc.TW, mc.ng, mc.smem);
      return true;
    }
  }
  if (cl) return false;  // plan_reads_channels_last said so only where a kernel takes it
  TileCfg& c = out->tiled;
  if ((p.force_path & 15) != 2 && choose_tiled(p, dtype_code, dev, &c)) {
    out->family = PHASECONV_TILED;
    snprintf(buf, len,
             "tiled LW=%d NY=%d NZ=%d WC=%d MD=%d MH=%d M=%d CO_T=%d threads=%d "
             "tile(d,h,w)=(%d,%d,%d) co_blk=%d ci_chunk=%d smem=%zu",
             c.LW, c.NY, c.NZ, c.WC, c.MD, c.MH, c.M, c.CO_T, c.threads, c.NZ * c.MD,
             c.NY * c.MH, c.LW, c.WC * c.CO_T, c.ci_chunk, c.smem);
    return true;
  }
  out->family = PHASECONV_NAIVE;
  snprintf(buf, len, "naive");
  return true;
}

}  // namespace
}  // namespace phaseconv

bool phase_conv_fwd_plan(const PhaseConvFwdParams& params, int dtype_code,
                         PhaseConvFwdPlan* plan) {
  using namespace phaseconv;
  if (params.nsub != 0) return false;  // grad-input mode: phase_conv_bwd_input_plan
  if (dtype_code < PHASECONV_FLOAT32 || dtype_code > PHASECONV_BFLOAT16) return false;
  return plan_fwd(params, dtype_code, plan);
}

cudaError_t phase_conv_fwd_run(const PhaseConvFwdParams& params, const PhaseConvFwdPlan& plan,
                               int dtype_code, cudaStream_t stream) {
  using namespace phaseconv;
  if (params.nsub != 0) return cudaErrorInvalidValue;
  return by_dtype(dtype_code, [&](auto t) {
    return run_plan<decltype(t)>(params, plan, stream);
  });
}

namespace phaseconv {
namespace {
// The grad-input rule (phase_conv_fwd.cuh): the tensor-core kernel where it applies
// (float32/float16/bfloat16, C_in/g and C_out/g >= 4, a tile that fits), else the naive
// kernel.  force: 0 the rule, 1 the tensor-core kernel (false where it does not apply),
// 2 the naive kernel.
bool plan_bwd_input(const PhaseConvFwdParams& params, int dtype_code, int force,
                    PhaseConvBwdInputPlan* out) {
  if (params.nsub <= 0 || params.stride_d != 1 || params.stride_h != 1 || params.stride_w != 1)
    return false;
  if (dtype_code < PHASECONV_FLOAT32 || dtype_code > PHASECONV_BFLOAT16) return false;
  DevInfo dev;
  if (dev_info(&dev) != cudaSuccess) return false;
  if (params.n * params.c_out * params.out_d * params.out_h * params.out_w == 0) {
    out->family = PHASECONV_EMPTY;
    snprintf(out->text, sizeof(out->text), "none (empty input gradient)");
    return true;
  }
  const bool mma_ok = dtype_code != PHASECONV_FLOAT64 && params.c_in / params.groups >= 4 &&
                      params.c_out / params.groups >= 4 && force != 2;
  MmaCfg& mc = out->mma;
  if (mma_ok && choose_mma(params, dtype_code, dev, &mc)) {
    out->family = PHASECONV_MMA;
    snprintf(out->text, sizeof(out->text),
             "mma grad-input kind=%d BM=%d BN=%d threads=%d tile(d,h,w)=(%d,%d,%d) ng=%d "
             "smem=%zu phases=%d", mc.kind, mc.BM, mc.BN, mc.threads, mc.TD, mc.TH, mc.TW,
             mc.ng, mc.smem, params.nsub);
    return true;
  }
  if (force == 1) return false;
  out->family = PHASECONV_NAIVE;
  snprintf(out->text, sizeof(out->text), "naive grad-input (one thread per input voxel, "
           "phases=%d)", params.nsub);
  return true;
}

template <typename T>
cudaError_t run_bwd_input(const PhaseConvFwdParams& p, const PhaseConvBwdInputPlan& plan,
                          cudaStream_t stream) {
  switch (plan.family) {
    case PHASECONV_EMPTY: return cudaSuccess;
    case PHASECONV_MMA: return with_fixup<T>(p, run_mma_typed<T>(p, plan.mma, stream), stream);
    case PHASECONV_NAIVE:  // sums only real pairs: exact as it is
      return run_naive<T>(p, stream);
  }
  return cudaErrorInvalidValue;
}
}  // namespace
}  // namespace phaseconv

bool phase_conv_bwd_input_plan(const PhaseConvFwdParams& params, int dtype_code, int force,
                               PhaseConvBwdInputPlan* plan) {
  return phaseconv::plan_bwd_input(params, dtype_code, force, plan);
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
