// phaseconv: the kernel plan (phase_conv_plan.h), in plain C++: no CUDA or torch header, so
// that it builds and is tested without a GPU (tests/plan/test_plan.py feeds it recorded device
// properties).  Each family's tile search models its kernel's cost (thread instructions,
// staging, stores, occupancy and wave quantisation) and keeps the cheapest tile that fits.
#include "phase_conv_plan.h"

#include <algorithm>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

namespace phaseconv {
namespace {

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int round4(int64_t v) { return (int)((v + 3) / 4 * 4); }

// A tile's modelled cost scaled for latency hiding (fewer than 1024 resident threads per SM
// hide less) and wave quantisation (the last partial wave of `blocks` costs a full one,
// counted up to 1.5x), with `res` blocks of `threads` resident per SM.
double occupancy_and_waves(double cost, double blocks, int64_t res, int threads,
                           const DevInfo& dev) {
  const double occ = (double)res * threads / 1024.0;
  cost /= (occ >= 1.0 ? 1.0 : 0.4 + 0.6 * occ);
  const double waves = blocks / ((double)dev.sms * res);
  const double full = waves < 1.0 ? 1.0 : (double)(int64_t)(waves + 0.999999);
  if (waves > 0) cost *= full / waves > 1.5 ? 1.5 : full / waves;
  return cost;
}

bool is_tensor_core_family(int family) {
  return family == PHASECONV_GEMM || family == PHASECONV_ALLPHASE || family == PHASECONV_MMA ||
         family == PHASECONV_TENSOR_CORES;
}

// Whether the rule, or the kernel forced, lets `family` run.
bool may(const PhaseConvForce& force, int family) {
  if (force.family == PHASECONV_TENSOR_CORES)
    return family == PHASECONV_ALLPHASE || family == PHASECONV_MMA;
  return force.family == 0 || force.family == family;
}

// ---------------------------------------------------------------- SIMT tiles (fwd_tiled.cu)
int co_tile_for(int cout_g, int dtype_code) {
  if (dtype_code == PHASECONV_FLOAT64) return cout_g == 1 ? 1 : 8;
  if (cout_g == 1) return 1;
  if (cout_g == 2) return 2;
  if (cout_g <= 4) return 4;
  return 8;
}

// Picks the tile configuration with the lowest modelled cost; false when none fits.
bool choose_tiled(const PhaseConvFwdParams& p, int dtype_code, const DevInfo& dev,
                  TileCfg* best) {
  const int esize = dtype_code == PHASECONV_FLOAT64 ? 8 : 4;
  const int64_t cin_g = p.c_in / p.groups, cout_g = p.c_out / p.groups;
  const int co_t = co_tile_for((int)cout_g, dtype_code);
  const int64_t num_phases = p.stride_d * p.stride_h * p.stride_w;
  const int64_t cd = cdiv(p.out_d, p.stride_d), ch = cdiv(p.out_h, p.stride_h),
                cw = cdiv(p.out_w, p.stride_w);
  const int64_t mtd = p.max_taps_d > 0 ? p.max_taps_d : 1;
  const int64_t mth = p.max_taps_h > 0 ? p.max_taps_h : 1;
  const int64_t mtw = p.max_taps_w > 0 ? p.max_taps_w : 1;
  const int64_t taps_max = mtd * mth * mtw;
  const double avg_taps =
      num_phases > 0 ? (double)p.total_taps / (double)num_phases : 0.0;
  const int Ms_full[2] = {4, 8};
  const int Ms_dbl[1] = {4};
  const int* Ms = dtype_code == PHASECONV_FLOAT64 ? Ms_dbl : Ms_full;
  const int nM = dtype_code == PHASECONV_FLOAT64 ? 1 : 2;
  const size_t budget = dev.smem_optin < (size_t)100 * 1024 ? dev.smem_optin : (size_t)100 * 1024;
  bool found = false;
  const int64_t max_wc = cdiv(cout_g, co_t);
  for (int LW = 8; LW <= 32; LW *= 2) {
    for (int mi = 0; mi < nM; ++mi) {
      const int M = Ms[mi];
      for (int MD = 1; MD <= M; MD *= 2) {
        const int MH = M / MD;
        for (int threads = 128; threads <= 256; threads *= 2) {
          for (int WC = 1; WC <= 32 && WC <= max_wc; WC *= 2) {
            for (int NY = 1; NY <= 32; NY *= 2) {
              if (LW * NY < 32) continue;  // a warp stays in one D plane
              const int denom = LW * NY * WC;
              if (threads % denom != 0) continue;
              const int NZ = threads / denom;
              TileCfg c;
              c.LW = LW; c.NY = NY; c.NZ = NZ; c.WC = WC; c.MD = MD; c.MH = MH; c.M = M;
              c.CO_T = co_t; c.threads = threads;
              const int64_t TW = LW, TH = (int64_t)NY * MH, TD = (int64_t)NZ * MD;
              const int64_t co_blk = (int64_t)WC * co_t;
              // avoid tiles far larger than the phase along an axis
              if (TH > 2 * ch + 8 || TD > 2 * cd + 8) continue;
              const int64_t hw = TW + (mtw - 1) * p.pdil_w;
              const int64_t hh = TH + (mth - 1) * p.pdil_h;
              const int64_t hd = TD + (mtd - 1) * p.pdil_d;
              int64_t pitch = hw;
              if (LW < 32) {
                while (pitch % (2 * LW) != LW) ++pitch;
              }
              const int64_t plane = hd * hh * pitch;
              const int64_t per_ci = plane + taps_max * co_blk;
              if (per_ci * esize > (int64_t)budget) continue;
              int64_t ci_chunk = (int64_t)budget / (per_ci * esize);
              // prefer about 48 KB so that several blocks share a multiprocessor
              const int64_t soft = (int64_t)(48 * 1024) / (per_ci * esize);
              if (soft >= 1 && soft < ci_chunk) ci_chunk = soft;
              if (ci_chunk > cin_g) ci_chunk = cin_g;
              if (ci_chunk > 64) ci_chunk = 64;
              if (ci_chunk < 1) ci_chunk = 1;
              const int64_t s_w_elems = cdiv(ci_chunk * taps_max * co_blk, 4) * 4;
              const size_t smem = (size_t)(s_w_elems + ci_chunk * plane) * esize;
              if (smem > dev.smem_optin) continue;
              if (plane * ci_chunk >= ((int64_t)1 << 30)) continue;
              // cost model (thread instructions)
              const int64_t tiles = cdiv(cw, TW) * cdiv(ch, TH) * cdiv(cd, TD);
              const int64_t co_blocks = cdiv(cout_g, co_blk);
              const double blocks =
                  (double)num_phases * tiles * p.n * co_blocks * p.groups;
              const double per_tap = (double)M * co_t + 2.0 * M + (co_t >= 4 ? co_t / 4 : 1) + 2.0;
              const double compute = blocks * threads * (double)cin_g * avg_taps * per_tap;
              const double stage =
                  blocks * (double)cin_g *
                      ((double)hd * hh * cdiv(hw, 32) * 32 * 5.0 + avg_taps * co_blk * 6.0) +
                  blocks * (double)cdiv(cin_g, ci_chunk) * threads * 30.0;
              const double store = blocks * threads * (double)M * co_t * 4.0 + blocks * 2000.0;
              double cost = compute + stage + store;
              const int regs = 128;  // __launch_bounds__(256, 2): ptxas uses up to 128
              int64_t res = 2048 / threads;
              const int64_t by_smem = (int64_t)(dev.smem_sm / (smem + 1024));
              const int64_t by_regs = 65536 / ((int64_t)threads * (regs > 255 ? 255 : regs));
              if (by_smem < res) res = by_smem;
              if (by_regs < res) res = by_regs;
              if (res < 1) continue;
              cost = occupancy_and_waves(cost, blocks, res, threads, dev);
              c.ci_chunk = (int)ci_chunk; c.pitch = (int)pitch; c.hh_max = (int)hh;
              c.hd_max = (int)hd; c.plane = (int)plane; c.s_w_elems = (int)s_w_elems;
              c.smem = smem; c.cost = cost;
              if (!found || cost < best->cost) {
                *best = c;
                found = true;
              }
            }
          }
        }
      }
    }
  }
  return found;
}

// ---------------------------------------------------------------- per-phase mma (fwd_mma.cu)
bool choose_mma(const PhaseConvFwdParams& p, int dtype_code, const DevInfo& dev, MmaCfg* best) {
  const int CG = dtype_code == PHASECONV_FLOAT32 ? 4 : 8;
  const int64_t cin_g = p.c_in / p.groups, cout_g = p.c_out / p.groups;
  const int64_t num_phases = p.stride_d * p.stride_h * p.stride_w;
  const int64_t cd = cdiv(p.out_d, p.stride_d), ch = cdiv(p.out_h, p.stride_h),
                cw = cdiv(p.out_w, p.stride_w);
  const int64_t mtd = p.max_taps_d > 0 ? p.max_taps_d : 1;
  const int64_t mth = p.max_taps_h > 0 ? p.max_taps_h : 1;
  const int64_t mtw = p.max_taps_w > 0 ? p.max_taps_w : 1;
  const int64_t taps_max = mtd * mth * mtw;
  const double avg_taps = num_phases > 0 ? (double)p.total_taps / (double)num_phases : 0.0;
  const int kinds_bm[4] = {256, 256, 128, 128};
  const int kinds_bn[4] = {8, 16, 64, 128};
  const int kinds_thr[4] = {128, 128, 128, 256};
  const size_t soft = 48 * 1024;
  bool found = false;
  for (int kind = 0; kind < 4; ++kind) {
    const int BM = kinds_bm[kind], BN = kinds_bn[kind];
    if (kind > 0 && kinds_bn[kind - 1] >= cout_g) continue;  // a narrower tile covers it
    const int64_t co_blocks = cdiv(cout_g, BN);
    for (int TW = 8; TW <= 32; TW *= 2) {
      for (int TH = 1; TW * TH <= BM; TH *= 2) {
        const int TD = BM / (TW * TH);
        if (TD * TH * TW != BM) continue;
        if (TH > 2 * ch + 8 || TD > 2 * cd + 8 || TW > 2 * cw + 8) continue;
        const int64_t hd = TD + (mtd - 1) * p.pdil_d, hh = TH + (mth - 1) * p.pdil_h,
                      hw = TW + (mtw - 1) * p.pdil_w;
        const int64_t npos = hd * hh * hw;
        int64_t ng = cdiv(cin_g, CG);
        size_t smem = 0;
        int64_t xb = 0, wb = 0;
        for (;;) {
          const int64_t rowstride = ng * 16 + ((ng & 1) ? 0 : 16);
          xb = npos * rowstride;
          wb = (taps_max * ng + 1) * BN * 16;
          const int64_t hb = (taps_max * ng + 2) * 4;
          smem = (size_t)(xb + wb + hb);
          if (smem <= soft || ng == 1) break;
          ng = (ng + 1) / 2;
        }
        if (smem > dev.smem_optin || xb >= ((int64_t)1 << 30)) continue;
        const int64_t tiles = cdiv(cw, TW) * cdiv(ch, TH) * cdiv(cd, TD);
        const double blocks = (double)num_phases * tiles * p.n * co_blocks * p.groups;
        const double kpad = (double)cdiv(cin_g, CG) * CG;
        const double compute = blocks * BM * (double)BN * avg_taps * kpad / 64.0;
        const double stage = blocks * ((double)npos * kpad * 2.0 + taps_max * kpad * BN * 0.5);
        const double store = blocks * BM * (double)BN * 1.0;
        double cost = compute + stage + store;
        int64_t res = 2048 / kinds_thr[kind];
        const int64_t by_smem = (int64_t)(dev.smem_sm / (smem + 1024));
        if (by_smem < res) res = by_smem;
        if (res < 1) continue;
        cost = occupancy_and_waves(cost, blocks, res, kinds_thr[kind], dev);
        if (!found || cost < best->cost) {
          MmaCfg c;
          c.kind = kind; c.BM = BM; c.BN = BN; c.threads = kinds_thr[kind];
          c.TD = TD; c.TH = TH; c.TW = TW; c.ng = (int)ng;
          c.x_bytes = (int)xb; c.w_bytes = (int)wb; c.smem = smem; c.cost = cost;
          *best = c;
          found = true;
        }
      }
    }
  }
  return found;
}

// ---------------------------------------------------------------- all-phase (fwd_allphase.cu)
// cl: the input is channels-last; 16-bit dtypes then double-buffer the halo (cp.async).
// The all-phase kernel stores a channels-last result itself only where a block's stores cover
// whole positions: one group of 16 or more output channels.  With groups, or fewer channels,
// neighbouring positions' channels belong to other blocks, and copying its contiguous result
// once is faster.
bool allph_stores_channels_last(const PhaseConvFwdParams& p) {
  return p.y_channels_last != 0 && p.groups == 1 && p.c_out >= 16;
}

bool choose_allph(const PhaseConvFwdParams& p, int dtype_code, const PhaseConvForce& force,
                  const DevInfo& dev, bool cl, AllCfg* best) {
  if (p.weight_mma == nullptr || dtype_code == PHASECONV_FLOAT64) return false;
  const int64_t num_phases = p.stride_d * p.stride_h * p.stride_w;
  if (num_phases < 1 || num_phases > kAllphMaxPhases) return false;
  const int CG = dtype_code == PHASECONV_FLOAT32 ? 4 : 8;
  const int64_t cin_g = p.c_in / p.groups, cout_g = p.c_out / p.groups;
  const int64_t G = cdiv(cin_g, CG);
  const int64_t rowstride = G * 16 + ((G & 1) ? 0 : 16);
  const int64_t hbound = p.total_taps * G + num_phases;  // >= sum over phases of even(taps*G)
  const int64_t cd = cdiv(p.out_d, p.stride_d), ch = cdiv(p.out_h, p.stride_h),
                cw = cdiv(p.out_w, p.stride_w);
  const double avg_taps = (double)p.total_taps / (double)num_phases;
  // kinds (the kernel's tiles): 0 BN 8 on 4 warps, 1 BN 16, 2 BN 64, 3 BN 128 (8 warps), 4 BN 8
  // on 8 warps (two m tiles a warp instead of four: twice the warps on the same shared memory)
  const int kinds_bm[5] = {256, 256, 128, 128, 256};
  const int kinds_bn[5] = {8, 16, 64, 128, 8};
  const int kinds_thr[5] = {128, 128, 128, 256, 256};
  const int kinds_prev_bn[5] = {0, 8, 16, 64, 0};  // a narrower tile that already covers C_out/g
  // static s_pi takes 1 KB; past ~120 KB a block runs alone on its SM and the per-phase
  // kernel (which chunks C_in/g) measured faster (k2-128, H100)
  size_t cap = dev.smem_optin > 2048 ? dev.smem_optin - 2048 : 0;
  if (cap > 120 * 1024) cap = 120 * 1024;
  bool found = false;
  // a 16-bit channels-last input is staged by cp.async into two halo buffers (the next tile's
  // copies overlap this one's mma); where no tile fits with two, one buffer, filled at each
  // tile and waited for, still reads the input in place (no copy of it to NCDHW).  float32
  // stages its halo twice, split into its tf32 big and small parts; where no tile fits so,
  // once, unsplit, the parts taken at each fragment load
  const int passes = cl || CG == 4 ? 2 : 1;
  // a channels-last result stored directly is neither paired along W nor staged (both write
  // (N, C_out, D, H, W) rows)
  const bool y_cl = allph_stores_channels_last(p);
  for (int single = 0; single < passes && !found; ++single)
  for (int kind = 0; kind < 5; ++kind) {
    const int BM = kinds_bm[kind], BN = kinds_bn[kind];
    if (force.allph_tile >= 0 ? kind != force.allph_tile : kinds_prev_bn[kind] >= cout_g)
      continue;
    if (single && CG == 4 && BN > 16) continue;  // the kernel splits late on narrow tiles only
    const int64_t co_blocks = cdiv(cout_g, BN);
    const int64_t wb = hbound * BN * 16;
    const int64_t hb = (hbound * 4 + 15) / 16 * 16;
    for (int TW = 8; TW <= 32; TW *= 2) {
      for (int TH = 1; TW * TH <= BM; TH *= 2) {
        const int TD = BM / (TW * TH);
        if (TD * TH * TW != BM) continue;
        if (TH > 2 * ch + 8 || TD > 2 * cd + 8 || TW > 2 * cw + 8) continue;
        const int64_t hd = TD + p.union_ext_d, hh = TH + p.union_ext_h, hw = TW + p.union_ext_w;
        const int64_t npos = hd * hh * hw;
        // fp32 stages the halo twice, already split into its tf32 big and small parts, so the
        // inner loop does no conversions (each A fragment meets only NT n-tiles); 16-bit
        // dtypes with a channels-last input keep two halo buffers (the next tile's in flight);
        // either keeps one unless `single`
        const int64_t xbuf = npos * rowstride;
        const int64_t xb = xbuf * ((CG == 4 || cl) && !single ? 2 : 1);
        if (xb >= ((int64_t)1 << 30) || wb >= ((int64_t)1 << 30)) continue;
        size_t smem = (size_t)(xb + wb + hb);
        if (smem > cap) continue;
        // staged output slab (16-bit, BN <= 16) when it fits
        const int64_t box_cs = (int64_t)TD * TH * p.stride_h * TW * p.stride_w + 8;
        const int64_t box_bytes = (BN * box_cs * 2 + 15) / 16 * 16;
        // paired W stores: the kernel's per-row offsets within a tile's output are ints
        const bool pair_w = kind == 4 && !y_cl && p.stride_w == 2 && p.out_w % 2 == 0 &&
                            p.stride_d * TD * p.out_h * p.out_w < ((int64_t)1 << 31);
        const bool stage_out = CG == 8 && BN <= 16 && kind != 4 && !y_cl &&
                               !force.direct_stores && smem + box_bytes <= cap &&
                               box_cs < ((int64_t)1 << 24);
        if (stage_out) smem += (size_t)box_bytes;
        const int64_t tiles = cdiv(cw, TW) * cdiv(ch, TH) * cdiv(cd, TD);
        const double blocks = (double)tiles * p.n * co_blocks * p.groups;
        const double kpad = (double)G * CG;
        const double compute = blocks * num_phases * BM * (double)BN * avg_taps * kpad / 64.0;
        const double stage = blocks * ((double)npos * kpad * 2.0);
        const double store =
            blocks * num_phases * BM * (double)BN * (stage_out || pair_w ? 0.3 : 1.0);
        double cost = compute + stage + store;
        int64_t res = 2048 / kinds_thr[kind];
        const int64_t by_smem = (int64_t)(dev.smem_sm / (smem + 1024 + 1024));
        if (by_smem < res) res = by_smem;
        const bool fl = phase_conv_needs_flush(p, dtype_code);
        const int64_t reg_cap = kind == 0   ? (CG == 4 ? (fl ? 3 : 4) : 5)
                                : kind == 4 ? (CG == 4 ? 2 : 3)
                                : kind == 3 ? 1
                                            : (fl ? 2 : 3);
        if (res > reg_cap) res = reg_cap;  // __launch_bounds__ of the kernel (AllMinBlocks)
        if (res < 1) continue;
        cost = occupancy_and_waves(cost, blocks, res, kinds_thr[kind], dev);
        if (!found || cost < best->cost) {
          AllCfg c;
          c.kind = kind; c.BM = BM; c.BN = BN; c.threads = kinds_thr[kind];
          c.TD = TD; c.TH = TH; c.TW = TW; c.G = (int)G;
          c.hd = (int)hd; c.hh = (int)hh; c.hw = (int)hw;
          c.x_bytes = (int)xb; c.w_bytes = (int)wb; c.x_buf = (int)xbuf;
          c.stage_out = stage_out ? 1 : 0;
          c.pair_w = pair_w ? 1 : 0;
          c.x_single = single;
          c.box_off = (int)(xb + wb + hb); c.box_cs = (int)box_cs;
          c.smem = smem; c.cost = cost;
          c.total_blocks = (int64_t)tiles * p.n * co_blocks * p.groups;
          // each CTA takes per_cta consecutive tiles (same group: the weights stay staged).
          // Rounds of tiles per slot = per * waves(ceil(total / per) CTAs): take the fewest.
          // On a tie, with >= 4 CTAs per SM the smallest per (the others overlap each CTA's
          // prologue; founding bf16: 112 us at per 1), else the largest (fewer weight
          // restagings; founding fp32, 2 CTAs/SM: 246 us at per 7, 275 at per 1).
          const int64_t islots = (int64_t)dev.sms * res;
          int64_t per = 1, best_rounds = -1;
          for (int64_t q = 1; q <= cdiv(c.total_blocks, islots); ++q) {
            const int64_t rounds = q * cdiv(cdiv(c.total_blocks, q), islots);
            if (best_rounds < 0 || rounds < best_rounds || (rounds == best_rounds && res < 4)) {
              best_rounds = rounds;
              per = q;
            }
          }
          c.per_cta = per;
          c.grid = cdiv(c.total_blocks, per);
          if (c.grid > 0x7fffffffLL) {
            c.per_cta = cdiv(c.total_blocks, 0x7fffffffLL);
            c.grid = cdiv(c.total_blocks, c.per_cta);
          }
          *best = c;
          found = true;
        }
      }
    }
  }
  return found;
}

// ---------------------------------------------------------------- implicit GEMM (fwd_gemm.cu)
bool gemm_tile(const PhaseConvFwdParams& p, const PhaseConvForce& force, const DevInfo& dev,
               double wgmma_min_k, GemmCfg* c);

// Whether a tile issues wgmma (sm_90a): the warpgroup tiles and the shared-A one of kind 7.
bool gemm_wgmma(const GemmCfg& c) {
  return c.kind == 4 || c.kind == 5 || c.kind >= 7;
}

// Channels of one of the GEMM's 16-byte groups, and what its description adds for float32.
int gemm_group_channels(const GemmCfg& c) { return c.tf32 ? 4 : 8; }
// What a TMA tile's description adds for its persistent forms.
const char* gemm_tma_form(const GemmCfg& c) {
  return c.kind == 11 ? " persistent" : c.kind == 10 ? " ping-pong" : "";
}
// A planned tile's pipeline depth (the TMA tiles' by their columns).
int gemm_cfg_stages(const GemmCfg& c) {
  return c.kind == 11   ? kGemmTmaPersistentStages
         : c.kind == 10 ? gemm_pingpong_stages(c.BN, c.bkg)
         : c.kind >= 8 ? gemm_tma_stages(c.BN, c.bkg)
                       : gemm_pipeline_stages(c.kind, c.wgroup);
}
const char* gemm_precision(const GemmCfg& c) {
  return c.tf32 ? (c.flush ? " 3xTF32 flushed" : " 3xTF32") : "";
}

// Whether a channels-last copy of x can feed the 16-byte staging (CG channels per vector).
bool cl_possible(const PhaseConvFwdParams& p, int dtype_code, const PhaseConvForce& force) {
  if (dtype_code == PHASECONV_FLOAT64 || p.weight_mma == nullptr) return false;
  if (force.input_layout == PHASECONV_LAYOUT_CONTIGUOUS) return false;
  const int64_t cg = dtype_code == PHASECONV_FLOAT32 ? 4 : 8;
  return (p.c_in / p.groups) % cg == 0;
}

// float32 layers the rule gives the implicit GEMM (3xTF32, x copied channels-last where it is
// not): C_in/g a multiple of 8 and >= 32, C_out/g >= 16.  H200, copy included, against the
// per-phase 3xTF32 kernel: 128->64 32^3 k2 338 vs 491 us, 512->256 16^3 k2 230 vs 518,
// 256->128 8^3 k4 702 vs 1205, 128->64 8x32x32 k(3,4,4) 300 vs 456; H100, against the
// per-phase and SIMT kernels: 2 x 64->64 16^3 k3 s2 90 vs 140 and 190 us, 2 x 64->32 32^3
// 269 vs 757 and 472, 2 x 128->32 12^3 62 vs 178 and 283, 2 x 64->16 24^3 120 vs 157 and
// 340, 2 x 32->16 32^3 152 vs 156 and 284.  With fewer output channels its 32-column tile
// runs mostly empty (2 x 64->8 24^3: 116 vs the per-phase kernel's 110).
bool gemm_takes_float32(int64_t cin_g, int64_t cout_g) {
  return cin_g % 8 == 0 && cin_g >= 32 && cout_g >= 16;
}

// cl: the input is channels-last.  A contiguous input serves only when every phase reads W
// at one offset, a multiple of 8, and the phases' rows come in whole 16-byte vectors along W
// (k == s, no padding: the "pure GEMM" layers), so no layout copy is needed.  float32 runs
// 3xTF32 on the mma.sync tiles from a channels-last input (a contiguous one copied), by the
// rule where gemm_takes_float32, other layers only when it is named.
bool choose_gemm(const PhaseConvFwdParams& p, int dtype_code, const PhaseConvForce& force,
                 const DevInfo& dev, bool cl, GemmCfg* c) {
  const bool tf32 = dtype_code == PHASECONV_FLOAT32;
  if (dtype_code != PHASECONV_FLOAT16 && dtype_code != PHASECONV_BFLOAT16 && !tf32) return false;
  if (tf32 && (!cl || (force.family != PHASECONV_GEMM &&
                       !(force.family == 0 &&
                         gemm_takes_float32(p.c_in / p.groups, p.c_out / p.groups)))))
    return false;
  if (p.weight_mma == nullptr || (p.c_in / p.groups) % 8 != 0) return false;
  if (cl && !cl_possible(p, dtype_code, force)) return false;
  if (!cl && !(p.in_w % 8 == 0 && p.out_w % p.stride_w == 0 && (p.out_w / p.stride_w) % 8 == 0 &&
               p.max_taps_w <= 1 && p.union_ext_w == 0 && p.union_lo_w % 8 == 0 &&
               reinterpret_cast<uintptr_t>(p.x) % 16 == 0))
    return false;
  c->a_ncdhw = !cl;
  c->tf32 = tf32;
  c->flush = tf32 && phase_conv_needs_flush(p, dtype_code);
  return gemm_tile(p, force, dev, 512, c);
}

// The input gradient on the implicit GEMM: one stride-1 "phase" whose rows are grad_x's
// voxels, reduction over every tap x C_out/g, grad_y read channels-last at stride * j -
// padding + tap * dilation (a plain strided convolution: no tap meets an inserted zero).
// float32 (3xTF32, see choose_gemm) where the layer's C_out/g >= 16 and C_in/g >= 64 (here
// p.c_in and p.c_out).  H200, float32, against the
// per-phase 3xTF32 kernel: sweep shape 3 319 vs 583 us, 4 218 vs 448, 5 695 vs 1364, 6 285
// vs 464; 2 x 64->32 32^3 k3 s2 231 vs 364, 2 x 128->32 12^3 92 vs 167, 2 x 64->16 24^3 71
// vs 99.  Narrower layers only when named.
bool choose_gi_gemm(const PhaseConvFwdParams& p, int dtype_code, int force, int tile,
                    const DevInfo& dev, GemmCfg* c) {
  const bool tf32 = dtype_code == PHASECONV_FLOAT32;
  const int64_t gy_g = p.c_in / p.groups, gx_g = p.c_out / p.groups;
  const bool tf32_rule = gy_g >= 16 && gx_g >= 64;
  if (dtype_code != PHASECONV_FLOAT16 && dtype_code != PHASECONV_BFLOAT16 &&
      !(tf32 && (force == PHASECONV_GEMM || (force == 0 && tf32_rule))))
    return false;
  if ((p.c_in / p.groups) % 8 != 0) return false;  // grad_y's channels: 16-byte vectors
  PhaseConvForce f;
  f.family = force == PHASECONV_GEMM ? PHASECONV_GEMM : 0;
  f.gemm_tile = tile;
  c->a_ncdhw = false;
  c->tf32 = tf32;
  c->flush = tf32 && phase_conv_needs_flush(p, dtype_code);
  // the warpgroup tile from 1024 reduction terms (H200, bf16: 128->64 32^3 k2, K 512: 212 vs
  // 191 us a backward; 256->128 8^3 k4, K 8192: 393 vs 427)
  return gemm_tile(p, f, dev, 1024, c);
}

// k == s with no padding, dilation 1 and no output padding: every phase has one tap at input
// offset 0 and as many rows as the input has voxels, so all phases read the same A (row m is
// input voxel m).
bool phases_share_a(const PhaseConvFwdParams& p) {
  return p.nsub == 0 && p.max_taps_d == 1 && p.max_taps_h == 1 && p.max_taps_w == 1 &&
         p.total_taps == p.stride_d * p.stride_h * p.stride_w && p.union_lo_d == 0 &&
         p.union_lo_h == 0 && p.union_lo_w == 0 && p.union_ext_d == 0 && p.union_ext_h == 0 &&
         p.union_ext_w == 0 && p.out_d == p.in_d * p.stride_d &&
         p.out_h == p.in_h * p.stride_h && p.out_w == p.in_w * p.stride_w;
}

// The shared-A tile where it takes the layer (kind 6 on mma.sync, kind 7 on wgmma: an sm_90a
// build on sm_90): 16-bit, channels-last input and output, whole 64-channel k steps and
// 8-channel output chunks, A of the whole reduction (BM x C_in/g) resident beside
// kGemmSharedStages weight k steps (64 channels x BN) and the output staging (wgmma: the slabs
// 1024-byte aligned).  Column splits (chunks a block) keep about two blocks per multiprocessor
// busy.
bool gemm_shared_a_tile(const PhaseConvFwdParams& p, const DevInfo& dev, bool wgmma,
                        GemmCfg* c) {
  const int64_t cin_g = p.c_in / p.groups, cout_g = p.c_out / p.groups;
  if (c->a_ncdhw || c->tf32 || !p.y_channels_last || !phases_share_a(p) || cin_g % 64 != 0 ||
      cout_g % 8 != 0 || p.c_out % 8 != 0 || (wgmma && !dev.wgmma))
    return false;
  c->kind = wgmma ? 7 : 6; c->BM = 128; c->BN = 64; c->threads = 256; c->bkg = 8;
  c->wgroup = false;
  c->smem = (size_t)c->BM * cin_g * 2 + (size_t)kGemmSharedStages * 64 * c->BN * 2 +
            (size_t)c->BM * c->BN * 2 + (size_t)c->BM * 8 + (wgmma ? 1024 : 0);
  if (c->smem > dev.smem_optin) return false;
  const int64_t rows = p.n * p.in_d * p.in_h * p.in_w;
  const int64_t m_tiles = cdiv(rows, c->BM);
  if (m_tiles >= ((int64_t)1 << 31)) return false;
  c->m_tiles = (int)m_tiles;
  c->co_blocks = (int)cdiv(cout_g, c->BN);
  c->chunks = (int)(p.stride_d * p.stride_h * p.stride_w) * c->co_blocks;
  const int64_t row_blocks = m_tiles * p.groups;
  int64_t splits = std::min<int64_t>(c->chunks, std::max<int64_t>(1, cdiv(2 * dev.sms,
                                                                         row_blocks)));
  c->chunks_per_block = (int)cdiv(c->chunks, splits);
  splits = cdiv(c->chunks, c->chunks_per_block);
  c->total_blocks = row_blocks * splits;
  c->grid = c->total_blocks > 0x7fffffffLL ? 0x7fffffffLL : c->total_blocks;
  return true;
}

// Blocks of the shared-A tile a multiprocessor holds by shared memory (1 KB reserved a
// block), at most its launch bounds' 2.
int64_t shared_a_blocks_per_sm(const GemmCfg& c, const DevInfo& dev) {
  return std::min<int64_t>(2, (int64_t)(dev.smem_sm / (c.smem + 1024)));
}

// The TMA tiles' box of `rows` phase outputs (box[] = d, h, w, powers of two, W from w_max
// down to w_min): the fewest padded outputs over a phase of extents cd x ch x cw (the
// largest; ties: the longest W run), each side times its step (the box's traversal stride)
// at most 256, the TMA unit's limit.  The padded outputs, or -1 where no box fits.
int64_t tma_phase_box(int64_t cd, int64_t ch, int64_t cw, int rows, int w_max, int w_min,
                      int64_t step_d, int64_t step_h, int64_t step_w, int (&box)[3]) {
  int64_t best = -1;
  for (int tw = w_max; tw >= w_min; tw /= 2)
    for (int th = 1; tw * th <= rows; th *= 2) {
      const int td = rows / (tw * th);
      if (tw * step_w > 256 || th * step_h > 256 || td * step_d > 256) continue;
      const int64_t padded = cdiv(cd, td) * td * cdiv(ch, th) * th * cdiv(cw, tw) * tw;
      if (best < 0 || padded < best) {
        best = padded;
        box[0] = td; box[1] = th; box[2] = tw;
      }
    }
  return best;
}

// The TMA tiles (kinds 8 and 9; gemm_tile says where the rule takes them): where the
// warpgroup kernels run, a channels-last 16-bit input (the input gradient's grad_y, read at
// strides up to 8) with C_in/g a multiple of 32, in k steps of 64 channels where C_in/g is a
// multiple of 64, else of 32 (kind 8 only); kind 9 (256 rows) for C_out/g > 64.
// Its BM rows (128, 256) are the box of output voxels (box_d x box_h x box_w = BM) that covers
// the largest phase with the fewest padded rows (ties: the longest W run).
bool gemm_tma_tile(const PhaseConvFwdParams& p, const PhaseConvForce& force, const DevInfo& dev,
                   int kind, GemmCfg* c) {
  const int64_t cin_g = p.c_in / p.groups, cout_g = p.c_out / p.groups;
  const int bkg = cin_g % 64 == 0 ? 8 : 4;
  if (!dev.wgmma || c->a_ncdhw || c->tf32 || cin_g % 32 != 0 || force.gemm_k32 ||
      p.in_d > 0x7fffffff || p.in_h > 0x7fffffff || p.in_w > 0x7fffffff ||
      p.in_stride_d > 8 || p.in_stride_h > 8 || p.in_stride_w > 8 ||
      (gemm_tma_rows(kind) == 256 && (cout_g <= 64 || bkg != 8)))
    return false;
  const int bm = gemm_tma_rows(kind);
  const int64_t cd = cdiv(p.out_d, p.stride_d), ch = cdiv(p.out_h, p.stride_h),
                cw = cdiv(p.out_w, p.stride_w);
  // (the input gradient's box steps at the layer's stride over grad_y)
  int box[3];
  if (tma_phase_box(cd, ch, cw, bm, 128, 4, p.in_stride_d, p.in_stride_h, p.in_stride_w,
                    box) < 0)
    return false;
  c->box_d = box[0]; c->box_h = box[1]; c->box_w = box[2];
  c->box_nd = (int)cdiv(cd, c->box_d);
  c->box_nh = (int)cdiv(ch, c->box_h);
  c->box_nw = (int)cdiv(cw, c->box_w);
  c->kind = kind; c->BM = bm;
  c->BN = cout_g <= 32 ? 32 : cout_g <= 64 ? 64 : 128;
  const bool persistent = kind == 10 || kind == 11;
  c->threads = persistent ? kGemmPingpongThreads : kGemmTmaThreads;
  c->wgroup = false;
  c->bkg = bkg;
  // 1 KB of alignment slack, the stages, their full and empty barriers, the row tables; the
  // persistent tiles stage their output apart, the ping-pong tile's two consumers each their
  // own (with their own row tables)
  const int stages = gemm_cfg_stages(*c);
  const size_t consumers = kind == 10 ? 2 : 1;
  c->smem = 1024 + (size_t)stages * (size_t)bkg * 16 * (bm + c->BN) + (size_t)stages * 16 +
            consumers * (size_t)bm * 24 +
            (persistent ? consumers * (size_t)bm * c->BN * 2 : 0);
  if (c->smem > dev.smem_optin) return false;
  const int64_t boxes = (int64_t)c->box_nd * c->box_nh * c->box_nw * p.n;
  if (boxes >= ((int64_t)1 << 31)) return false;
  c->m_tiles = (int)boxes;
  c->co_blocks = (int)cdiv(cout_g, c->BN);
  c->total_blocks = p.stride_d * p.stride_h * p.stride_w * boxes * c->co_blocks * p.groups;
  if (c->total_blocks > 0x7fffffffLL) return false;  // one block each (32-bit decode)
  // the persistent tiles: one block a multiprocessor (their shared memory)
  c->grid = persistent ? std::min<int64_t>(c->total_blocks, dev.sms) : c->total_blocks;
  return true;
}

// The implicit GEMM's tile, shared memory and grid for parameters whose layouts the caller
// checked (c->a_ncdhw set); false for narrow layers unless forced, or where it does not fit.
bool gemm_tile(const PhaseConvFwdParams& p, const PhaseConvForce& force, const DevInfo& dev,
               double wgmma_min_k, GemmCfg* c) {
  const int64_t cin_g = p.c_in / p.groups, cout_g = p.c_out / p.groups;
  // wide layers only: narrow ones (C_out/g < 32) waste most of a BN >= 32 tile, and the
  // all-phase kernel's shared halo serves them better.  float32's callers apply its own rule
  // (gemm_takes_float32, choose_gi_gemm): its all-phase halo, staged twice, fits few channels
  if (force.family != PHASECONV_GEMM &&
      !(force.family == 0 && (c->tf32 || (cin_g >= 16 && cout_g >= 32))))
    return false;
  // tile: the narrowest BN that covers C_out/g; for BN 64 with a long reduction (>= 512 per
  // phase) the 8-warp tile with 64-channel k steps (measured on an H100: 8x32x32
  // k(3,4,4) 128->64 bf16 67.9 vs 78.6 us; 32^3 k2 128->64, K = 128: 83.7 vs 80.0 us)
  const double k_per_phase = (double)cin_g * (double)p.total_taps /
                             (double)(p.stride_d * p.stride_h * p.stride_w);
  // (float32 keeps the 4-warp BN 64 tile: 300 vs 337 us on 128->64 8x32x32 k(3,4,4), H200)
  // the mma.sync tiles' columns and threads (kinds 0-3)
  const int bn[4] = {32, 64, 128, 64}, thr[4] = {128, 128, 256, 256};
  int kind = cout_g <= 32 ? 0
             : cout_g <= 64 ? (k_per_phase >= 512 && cin_g >= 64 && !c->tf32 ? 3 : 1)
                            : 2;
  // float32's input gradient (one stride-1 phase): the next narrower tile (BN 128 -> 64 ->
  // 32) while the wider one's blocks would fill fewer than half the multiprocessors.  H200,
  // 2 x 128->32 12^3 k3 s2 (grad_x 128 channels, 27 row tiles): BN 32 51.1 us, BN 64 67.5,
  // BN 128 92.2.  (Sweep shapes 4-6, 128 blocks of BN 128, keep it: not measured narrower.)
  if (c->tf32 && p.nsub > 0 && force.gemm_tile < 0) {
    const int64_t row_tiles = cdiv(p.n * p.out_d * p.out_h * p.out_w, 128);
    while (kind > 0 && 2 * row_tiles * cdiv(cout_g, bn[kind]) * p.groups < dev.sms) --kind;
  }
  // sm_90a: the warpgroup tile where its 64-channel k steps hold whole channel groups (no
  // zero-filled multiply-adds) and A is channels-last; the rule takes it for reductions of
  // >= wgmma_min_k per phase (the forward's 512, measured on an H200, bf16 channels-last:
  // 512->256 16^3 k2, K 512: 60.0 vs 71.4 us; 256->128 8^3 k4, K 2048: 143 vs 190; 128->64
  // 32^3 k2, K 128: 134 vs 104)
  // (a named 32-channel k step is the mma.sync tiles' alone)
  const bool wg_fits = dev.wgmma && !c->a_ncdhw && !c->tf32 && cin_g % 64 == 0 &&
                       !force.gemm_k32;
  if (wg_fits && k_per_phase >= wgmma_min_k) kind = 4;
  // the forward's four-warpgroup tile (256 rows, one phase a block, its output staged in the
  // drained stages) where the result is channels-last, or C_out/g fits one 64-column tile.
  // H100, bf16, µs, against the two-warpgroup tile: channels-last results 512->256 16^3 k2
  // 44.3 vs 47.9, 16 x 256->128 8^3 k4 101.3 vs 109.3, 2 x 128->64 8x32x32 k(3,4,4) 55.9
  // vs 66.1; (N, C, D, H, W) results 128->64 62.5 vs 69.6, but 512->256 56.9 vs 51.1 (its
  // 128 columns: the grouped W phases' whole-row stores win there)
  if (kind == 4 && p.nsub == 0 && cout_g > 32 && (p.y_channels_last || cout_g <= 64)) kind = 5;
  // the shared-A tile where the phases read one A (k == s layers, channels-last in and out)
  // and it fits, up to 256 channels a group; on wgmma where the warpgroup kernels run and it
  // keeps as many blocks a multiprocessor as mma.sync (its slabs' 1 KB alignment can cost
  // one: H100, bf16 channels-last, wgmma / mma.sync: 2 x 128->64 32^3 72.0 / 74.0 us,
  // 2 x 64->32 32^3 53.4 / 54.6; 2 x 256->128 16^3, one block a multiprocessor against two,
  // 42.6 / 35.9)
  if (force.gemm_tile < 0 && !force.gemm_one_phase && !force.gemm_k32 && cin_g <= 256 &&
      gemm_shared_a_tile(p, dev, false, c)) {
    GemmCfg wg = *c;
    if (dev.wgmma && gemm_shared_a_tile(p, dev, true, &wg) &&
        shared_a_blocks_per_sm(wg, dev) >= shared_a_blocks_per_sm(*c, dev))
      *c = wg;
    return true;
  }
  // sm_90a: the TMA tiles in the forward where the warpgroup tiles would run, or where the
  // result is channels-last, 256 rows (kind 9) for C_out/g > 64; in the input gradient (see
  // below).  H100, bf16, µs, against the rule before them (channels-last result /
  // (N, C, D, H, W) result, cuDNN in brackets):
  // 16 x 256->128 8^3 k4 72.2 vs 101.0 (67.1) / 91.1 vs 115.3 (98.2); 2 x 128->64 8x32x32
  // k(3,4,4) 47.5 vs 55.8 (52.4) / 55.3 vs 61.9 (69.1); 512->256 16^3 k2 36.5 vs 44.6 (24.4)
  // / 52.9 vs 51.4 (55.5); 2 x 64->32 32^3 k3 s2 84.0 vs 94.0 (57.9), its (N, C, D, H, W)
  // result 106.1 vs 101.4 on the mma.sync tile it keeps.  The input gradient: 128 rows from
  // 512 terms (H100, bf16, grad_y NCDHW / channels-last, against its tile before: shape 3
  // 110.0 vs 121.3 / 62.8 vs 76.3 µs, shape 4 47.5 vs 62.6 / 31.5 vs 43.5, shape 5 90.5 vs
  // 121.5 / 69.3 vs 97.1, shape 6 43.9 vs 60.4 / 35.7 vs 52.0; 256 rows ran 1.0-1.4x slower).
  // An (N, C, D, H, W) result from 256 terms a phase with C_out/g >= 32 too (H100, bf16,
  // against the mma.sync tile: 2 x 128->32 12^3 k3 s2, K 432, 24.1 vs 31.5 µs, cuDNN 27.3;
  // 2 x 64->32 32^3 k3 s2, K 216, 98.7 vs 100.3; 2 x 64->16 24^3, C_out 16, 45.2 vs 39.9);
  // with C_out/g 32 from 128 terms, where the 32-column tile's three blocks a multiprocessor
  // made it 84.0 against 98.0 µs on that 64->32 layer
  const bool gi_tma = p.nsub > 0 && k_per_phase >= 512;
  const bool fwd_tma = p.nsub == 0 && (kind >= 4 || p.y_channels_last ||
                                       (cout_g >= 32 && k_per_phase >= 256) ||
                                       (cout_g == 32 && k_per_phase >= 128));
  // The input gradient's reduction over C_out/g an odd multiple of 32 (no 64-channel k step):
  // the TMA tile in 32-channel k steps, from 512 terms too.  H100, bf16, grad_y channels-last,
  // against the mma.sync tile 1 (cuDNN in brackets): 2 x 64->32 32^3 k3 s2, K 864, 38.2 vs
  // 76.0 µs (29.7); 2 x 128->32 12^3, 19.6 vs 27.7 (12.2); 2 x 96->96 16^3, 31.8 vs 46.7
  // (28.2).  The forward takes them for a channels-last result from 96 channels a group
  // (2 x 96->96 16^3 k3 s2: 44.4 vs 68.6 µs (58.0); 2 x 96->128 16^3 k4 s2: 52.7 vs 84.1
  // (43.5)); at 32 a group (one k step a tap) they lost (2 x 32->64 32^3: 98.3 vs 94.0).
  // (gemm_tma_tile checks what the TMA tiles need: sm_90a, a channels-last 16-bit A, C_in/g
  // a multiple of 32.)
  const bool tma_rule = cin_g % 64 == 0
                            ? gi_tma || fwd_tma
                            : gi_tma || (fwd_tma && p.y_channels_last && cin_g >= 96);
  if (force.gemm_tile < 0 && !force.gemm_one_phase && tma_rule) {
    // the TMA tile of a kind, planned from the rule's starting point into *out where it fits
    // (*out untouched where it does not)
    const auto tile_of_kind = [&](int tile, GemmCfg* out) {
      GemmCfg t = *c;
      if (!gemm_tma_tile(p, force, dev, tile, &t)) return false;
      *out = t;
      return true;
    };
    GemmCfg tma;
    // (256 rows take 64-channel k steps only)
    const bool rows256 = cout_g > 64 && p.nsub == 0 && cin_g % 64 == 0;
    // an (N, C, D, H, W) result from 256 rows: the persistent tile (kind 11), whose output
    // stages apart from the ring (H100, bf16, against kind 9 from a channels-last input:
    // 512->256 16^3 k2 44.1 vs 47.6 us, 16 x 256->128 8^3 k4 83.4 vs 85.7, 2 x 128->128 16^3
    // k3 s2 43.7 vs 52.4); kind 9 where it does not fit
    const int first = !rows256 ? 8 : p.y_channels_last ? 9 : 11;
    const bool fits = tile_of_kind(first, &tma) || (first == 11 && tile_of_kind(9, &tma));
    // 256-row tiles that fill less than one wave of the multiprocessors: 128 rows, twice the
    // blocks (H100, bf16, kind 8 against the 256-row rule, channels-last / NCDHW input and
    // result: 4 x 192->96 8^3 k3 s2, 64 blocks of 256 rows, 22.0-26.3 vs 30.5-36.5 us, cuDNN
    // 23.2-40.7; 2 x 256->128 4^3 k4 s2, 16 blocks, 31.8-35.9 vs 42.5-46.3, cuDNN 27.9-35.6;
    // sweep shapes 4 and 5, 256 blocks, keep 256 rows)
    if (fits && tma.BM == 256 && tma.total_blocks < dev.sms) tile_of_kind(8, &tma);
    // the input gradient's 128-column tile in 64-channel k steps over two waves of tiles or
    // more: the same tiles ping-ponged between two consumer warpgroups (kind 10), which hide
    // each other's epilogue (H100, bf16, grad_y channels-last, sweep shape 3: 2 x 128->64
    // 32^3 k2, 512 tiles: 45.2 vs 54.5 us; H200 38.8 vs 46.6; under two waves it lost: sweep
    // shapes 4-6, grad_y NCDHW, 51.9 / 90.7 / 45.8 vs 46.0 / 85.8 / 41.8); kind 8 where kind
    // 10 does not fit
    if (fits && p.nsub > 0 && tma.BN == 128 && tma.bkg == 8 &&
        tma.total_blocks >= 2 * (int64_t)dev.sms)
      tile_of_kind(10, &tma);
    if (fits) {
      *c = tma;
      return true;
    }
  }
  if (force.gemm_tile >= 0) kind = force.gemm_tile;  // benchmarks: a tile
  if (kind >= 8 && kind <= 11) return gemm_tma_tile(p, force, dev, kind, c);
  if (kind == 6 || kind == 7)
    return !force.gemm_one_phase && !force.gemm_k32 && gemm_shared_a_tile(p, dev, kind == 7, c);
  const bool wg = kind >= 4;
  if (kind > 5 || (wg && !wg_fits) || (kind == 5 && cout_g <= 32)) return false;
  c->kind = kind; c->BM = kind == 5 ? 256 : 128;
  c->BN = wg ? (cout_g <= 32 ? 32 : cout_g <= 64 ? 64 : 128) : bn[kind];
  c->threads = wg ? c->BM * 2 : thr[kind];
  // group the W phases (stores of whole output rows) unless told not to (benchmarks); the
  // 4-warpgroup tile and float32 run one phase a block
  c->wgroup = p.stride_w >= 2 && p.stride_w <= kGemmMaxGroup && kind != 5 && !c->tf32 &&
              !force.gemm_one_phase;
  // the 8-warp tiles take 8 channel groups a k step (half the barriers) when C_in/g allows
  c->bkg = wg || (kind >= 2 && cin_g >= 8 * gemm_group_channels(*c) && !force.gemm_k32) ? 8 : 4;
  const int stages = gemm_pipeline_stages(kind, false);
  const int group_stages = gemm_pipeline_stages(kind, true);
  // row tables; the warpgroup tiles align their stages to 1024 bytes (the swizzle atom)
  const size_t tables = (size_t)c->BM * 32 + (size_t)(c->BM / 8) * 24 + (wg ? 1024 : 0);
  const size_t stage = (size_t)c->bkg * 16 * (c->BM + c->BN);
  if (c->wgroup) {
    c->smem = (size_t)group_stages * stage + tables +
              (size_t)c->BN * (c->BM * p.stride_w + 8) * 2;
    if (c->smem > dev.smem_optin) c->wgroup = false;
  }
  if (!c->wgroup) c->smem = (size_t)stages * stage + tables;
  if (c->smem > dev.smem_optin) return false;
  const int64_t rows = p.n * cdiv(p.out_d, p.stride_d) * cdiv(p.out_h, p.stride_h) *
                       cdiv(p.out_w, p.stride_w);  // the largest phase (residue 0)
  const int64_t m_tiles = cdiv(rows, c->BM);
  if (m_tiles >= ((int64_t)1 << 31)) return false;
  c->m_tiles = (int)m_tiles;
  c->co_blocks = (int)cdiv(cout_g, c->BN);
  c->total_blocks = p.stride_d * p.stride_h * (c->wgroup ? 1 : p.stride_w) * m_tiles *
                    c->co_blocks * p.groups;
  c->grid = c->total_blocks > 0x7fffffffLL ? 0x7fffffffLL : c->total_blocks;
  return true;
}

// ---------------------------------------------------------------- the forward's rule
bool want_tensor_cores(const PhaseConvFwdParams& p, int dtype_code, const PhaseConvForce& force) {
  if (dtype_code == PHASECONV_FLOAT64) return false;
  if (force.family != 0) return is_tensor_core_family(force.family);
  const int64_t cin_g = p.c_in / p.groups, cout_g = p.c_out / p.groups;
  // float32 runs 3xTF32; past kFlushTerms reduction terms its accumulators are flushed
  // (flush_acc: as accurate as FFMA at any length; unflushed, 1.4e-5 relative at 2048 terms).
  // Flushed layers with 16-63 output channels a group that the implicit GEMM does not take
  // stay on FFMA: the per-phase kernel's flushed tiles lost to the SIMT kernel there (H100,
  // 2 x 64->32 32^3 k3 s2: 757 vs 472 us), and won with fewer (2 x 64->8 24^3: 110 vs 304).
  if (phase_conv_needs_flush(p, dtype_code) && cout_g >= 16 && cout_g < 64 &&
      !(gemm_takes_float32(cin_g, cout_g) && cl_possible(p, dtype_code, force)))
    return false;
  // fewer than 4 output channels a group (an 8-column tile, zero-padded) where C_in/g fills
  // whole 16-byte channel groups (H100, 2 x 32->2 48^3 k3 s2, MONAI UNet's last
  // up-convolution, against the SIMT kernel): bf16 on the all-phase kernel 69.8 against
  // 621 us, float32 on the per-phase kernel 327 against 718 (and 2 x 64->2 24^3, 109 against
  // 289; 2 x 16->2 48^3 on the all-phase kernel, 79 against 334)
  const bool narrow_out = cout_g < 4 && cin_g % 8 == 0;
  return cin_g >= 4 && (cout_g >= 4 || narrow_out);
}

// The input layout the plan reads (see phase_conv_fwd_plan): channels-last where only the
// channels-last kernels take the layer, or where x already is channels-last and the
// all-phase kernel takes it so.
bool plan_reads_channels_last(const PhaseConvFwdParams& p, int dtype_code,
                              const PhaseConvForce& force, const DevInfo& dev) {
  if (!want_tensor_cores(p, dtype_code, force)) return false;
  GemmCfg gc, cl_gc;
  AllCfg ac;
  const bool offered = p.x_channels_last != 0;
  const bool cl_ok = cl_possible(p, dtype_code, force);
  const bool gemm_cl = cl_ok && may(force, PHASECONV_GEMM) &&
                       choose_gemm(p, dtype_code, force, dev, true, &cl_gc);
  // a k == s layer's contiguous input is read in place, unless a channels-last copy feeds the
  // warpgroup tile (H200, bf16, 512->256 16^3 k2: 54.0 us with the copy against 61.2 in place)
  // or the shared-A one (kinds 6, 7)
  if (!offered && may(force, PHASECONV_GEMM) &&
      choose_gemm(p, dtype_code, force, dev, false, &gc) && !(gemm_cl && cl_gc.kind >= 4))
    return false;  // reads NCDHW
  if (!cl_ok) return false;
  if (gemm_cl) return true;  // needs channels-last
  // the all-phase kernel reads either layout: channels-last only when x already is (a copy
  // measured as costly as the 16-byte staging saves, on the founding example)
  return offered && may(force, PHASECONV_ALLPHASE) &&
         choose_allph(p, dtype_code, force, dev, true, &ac);
}

const char* family_name(int family) {
  switch (family) {
    case PHASECONV_GEMM: return "implicit-gemm";
    case PHASECONV_ALLPHASE: return "mma-allphase";
    case PHASECONV_MMA: return "mma";
    case PHASECONV_TILED: return "tiled";
    case PHASECONV_NAIVE: return "naive";
    case PHASECONV_GW_MMA: return "tensor-core gemm";
    case PHASECONV_GW_MMA_CL: return "channels-last tensor-core gemm";
    case PHASECONV_GW_WGMMA: return "warpgroup tensor-core gemm";
    case PHASECONV_GW_WGMMA_TMA: return "warpgroup tensor-core gemm on TMA boxes";
    case PHASECONV_GW_MMA_NARROW: return "narrow tensor-core window";
    case PHASECONV_GI_NARROW: return "narrow tensor-core window";
    case PHASECONV_GW_SIMT: return "simt";
    case PHASECONV_GW_NAIVE: return "naive";
    case PHASECONV_TENSOR_CORES: return "tensor-core (all-phase or per-phase)";
    case PHASECONV_DEPTHWISE: return "depthwise";
    case PHASECONV_GW_DEPTHWISE: return "depthwise";
  }
  return "?";
}

// The naive kernel's blocks of 256 threads: a grid-stride loop over `outputs`, at most 32
// blocks per multiprocessor.
int64_t naive_grid(int64_t outputs, const DevInfo& dev) {
  const int64_t blocks = cdiv(outputs, 256), cap = (int64_t)dev.sms * 32;
  return blocks < cap ? blocks : cap;
}

// The depthwise kernel's tiles: up to 128 output columns (whole W phases), rows in row groups
// of kDwRows for about kDwTileOutputs outputs per D position, split evenly over the height,
// and runs of up to kDwMaxRun D positions (shorter while the grid would not fill every
// multiprocessor with 8 blocks, or the slab would not fit; where one D position's slab does not
// fit, fewer row groups).  False where the slab of one row group does not fit kDwMaxSmem or a
// grid dimension would not fit (the tiled kernel takes the layer then).
bool choose_depthwise(const PhaseConvFwdParams& p, int dtype_code, const DevInfo& dev,
                      DepthwiseCfg* c) {
  const int64_t sd = p.stride_d, sh = p.stride_h, sw = p.stride_w;
  c->planes = p.n * p.c_out;
  const int64_t tile_w = sw * std::max<int64_t>(1, std::min(cdiv(p.out_w, sw), 128 / sw));
  const int64_t w_eff = std::min(tile_w, p.out_w);
  const int64_t groups_total = cdiv(cdiv(p.out_h, sh), kDwRows);
  const int64_t g_most = std::max<int64_t>(1, kDwTileOutputs / (w_eff * sh * kDwRows));
  int64_t row_groups = cdiv(groups_total, cdiv(groups_total, g_most));
  int64_t h_tiles = 0, rows = 0, pitch = 0;
  const int64_t w_tiles = cdiv(p.out_w, tile_w);
  const int64_t cols = tile_w / sw + p.union_ext_w;
  const int64_t taps_hw = std::max(p.max_taps_h, p.max_taps_w);
  const int64_t fixed = p.pdil_h != 1 ? 0 : taps_hw <= 2 ? 2 : taps_hw <= 4 ? 4 : 0;
  const int64_t taps_stride = fixed > 0 ? p.max_taps_d * fixed * fixed
                                        : p.max_taps_d * p.max_taps_h * p.max_taps_w;
  const size_t acc = dtype_code == PHASECONV_FLOAT64 ? 8 : 4;
  const int64_t nph = sh * sw, per_phase_d = cdiv(p.out_d, sd);
  auto smem_of = [&](int64_t run) {  // the register window reads up to `fixed` words past
    const int64_t slices = run + (p.max_taps_d - 1) * p.pdil_d;
    return 16.0 * nph + (double)acc * (nph * taps_stride + slices * cols * pitch + fixed);
  };
  auto blocks_of = [&](int64_t run) {
    return (double)c->planes * h_tiles * w_tiles * sd * cdiv(per_phase_d, run);
  };
  int64_t run = 1;
  for (;;) {
    h_tiles = cdiv(groups_total, row_groups);
    rows = kDwRows * row_groups + p.union_ext_h;
    pitch = rows | 1;
    run = std::min<int64_t>(kDwMaxRun, per_phase_d);
    while (run > 1 && (smem_of(run) > kDwMaxSmem || blocks_of(run) < 8.0 * dev.sms)) run /= 2;
    if (smem_of(run) <= kDwMaxSmem || row_groups == 1) break;
    row_groups = cdiv(row_groups, 2);
  }
  const int64_t d_chunks = cdiv(per_phase_d, run);
  if (c->planes > 0x7fffffffLL || h_tiles * w_tiles > 65535 || sd * d_chunks > 65535 ||
      smem_of(run) > kDwMaxSmem)
    return false;
  c->h_tiles = (int)h_tiles;
  c->w_tiles = (int)w_tiles;
  c->tile_h = (int)(sh * kDwRows * row_groups);
  c->tile_w = (int)tile_w;
  c->row_groups = (int)row_groups;
  c->d_run = (int)run;
  c->d_chunks = (int)d_chunks;
  c->rows = (int)rows;
  c->cols = (int)cols;
  c->pitch = (int)pitch;
  c->fixed_taps = (int)fixed;
  c->taps_stride = (int)taps_stride;
  c->smem = (size_t)smem_of(run);
  return true;
}

// Why a forced depthwise kernel (forward or backward) cannot take a layer.
constexpr const char* kNotDepthwise =
    "the layer is not depthwise (C_in/groups and C_out/groups must be 1)";
static_assert(kDwBwdMaxTaps == 512 && kDwMaxSmem == 48 * 1024, "kNoDepthwiseBackwardTile");
constexpr const char* kNoDepthwiseBackwardTile =
    "its taps number over 512, no tile's grad_y box fits 48 KB of shared memory or its grid "
    "does not fit";

bool refuse(char* buf, int len, int family, const char* why) {
  snprintf(buf, len, "refused: the %s kernel was forced and %s", family_name(family), why);
  return false;
}

bool plan_fwd(const PhaseConvFwdParams& params, int dtype_code, const PhaseConvForce& force,
              const DevInfo& dev, PhaseConvFwdPlan* out) {
  PhaseConvFwdParams p = params;
  p.x_channels_last = plan_reads_channels_last(params, dtype_code, force, dev) ? 1 : 0;
  const bool cl = p.x_channels_last != 0;
  out->x_channels_last = p.x_channels_last;
  out->weight_mma = 0;
  out->naive_grid = 0;
  const char* layout = !cl ? "contiguous input"
                       : params.x_channels_last ? "channels-last input"
                                                : "channels-last input, copied";
  char* buf = out->text;
  const int len = (int)sizeof(out->text);
  const int64_t outputs = p.n * p.c_out * p.out_d * p.out_h * p.out_w;
  if (outputs == 0) {
    out->family = PHASECONV_EMPTY;
    snprintf(buf, len, "none (empty output)");
    return true;
  }
  if (want_tensor_cores(p, dtype_code, force)) {
    GemmCfg& gc = out->gemm;
    if (may(force, PHASECONV_GEMM) && choose_gemm(p, dtype_code, force, dev, cl, &gc)) {
      out->family = PHASECONV_GEMM;
      out->weight_mma = 1;
      snprintf(buf, len,
               "implicit-gemm kind=%d BM=%d BN=%d BK=%d threads=%d stages=%d m_tiles=%d "
               "smem=%zu grid=%lld %s%s%s%s (%s)", gc.kind, gc.BM, gc.BN,
               gc.bkg * gemm_group_channels(gc), gc.threads,
               gemm_cfg_stages(gc),
               gc.m_tiles, gc.smem, (long long)gc.grid,
               gc.kind >= 8 ? "one-phase tma-box" : gc.kind >= 6 ? "phases-share-a"
               : gc.wgroup ? "w-phases-grouped" : "one-phase",
               gemm_tma_form(gc), gemm_wgmma(gc) ? " wgmma-sm90a" : "",
               gemm_precision(gc), layout);
      return true;
    }
    AllCfg& ac = out->allph;
    if (may(force, PHASECONV_ALLPHASE) && choose_allph(p, dtype_code, force, dev, cl, &ac)) {
      out->family = PHASECONV_ALLPHASE;
      out->weight_mma = 1;
      snprintf(buf, len,
               "mma-allphase kind=%d BM=%d BN=%d threads=%d tile(d,h,w)=(%d,%d,%d) "
               "halo=(%d,%d,%d) G=%d smem=%zu grid=%lld per_cta=%lld %s%s (%s)",
               ac.kind, ac.BM, ac.BN, ac.threads, ac.TD, ac.TH, ac.TW, ac.hd, ac.hh, ac.hw, ac.G,
               ac.smem, (long long)ac.grid, (long long)ac.per_cta,
               ac.stage_out ? "staged-output" : ac.pair_w ? "paired-w-stores" : "direct-stores",
               !ac.x_single ? "" : dtype_code == PHASECONV_FLOAT32 ? " halo-split-at-load"
                                                                   : " one-halo-buffer",
               layout);
      return true;
    }
    MmaCfg& mc = out->mma;
    if (may(force, PHASECONV_MMA) && !cl && choose_mma(p, dtype_code, dev, &mc)) {
      out->family = PHASECONV_MMA;
      snprintf(buf, len,
               "mma kind=%d BM=%d BN=%d threads=%d tile(d,h,w)=(%d,%d,%d) ng=%d smem=%zu",
               mc.kind, mc.BM, mc.BN, mc.threads, mc.TD, mc.TH, mc.TW, mc.ng, mc.smem);
      return true;
    }
  }
  // depthwise layers stream: a block per plane tile, each output its phase's taps
  const bool depthwise = p.c_in == p.groups && p.c_out == p.groups;
  if (force.family == PHASECONV_DEPTHWISE && !depthwise)
    return refuse(buf, len, force.family, kNotDepthwise);
  if (force.family != 0 && force.family != PHASECONV_TILED && force.family != PHASECONV_NAIVE &&
      force.family != PHASECONV_DEPTHWISE)
    return refuse(buf, len, force.family, dtype_code == PHASECONV_FLOAT64
                  ? "float64 has no tensor-core kernel" : "no tile of it takes this layer");
  if (cl) return false;  // plan_reads_channels_last said so only where a kernel takes it
  DepthwiseCfg& dc = out->depthwise;
  if (depthwise && may(force, PHASECONV_DEPTHWISE) && choose_depthwise(p, dtype_code, dev, &dc)) {
    out->family = PHASECONV_DEPTHWISE;
    snprintf(buf, len, "depthwise (rows of a shared-memory slab) tile(d,h,w)=(%d,%d,%d) "
             "taps<=%d smem=%zu grid=(%lld, %d, %lld)", dc.d_run, dc.tile_h, dc.tile_w,
             dc.fixed_taps, dc.smem,
             (long long)dc.planes, dc.h_tiles * dc.w_tiles, (long long)(p.stride_d * dc.d_chunks));
    return true;
  }
  if (force.family == PHASECONV_DEPTHWISE)
    return refuse(buf, len, force.family, "a tile's input slab needs more than 48 KB of "
                  "shared memory or its grid does not fit");
  TileCfg& c = out->tiled;
  if (may(force, PHASECONV_TILED) && choose_tiled(p, dtype_code, dev, &c)) {
    out->family = PHASECONV_TILED;
    snprintf(buf, len,
             "tiled LW=%d NY=%d NZ=%d WC=%d MD=%d MH=%d M=%d CO_T=%d threads=%d "
             "tile(d,h,w)=(%d,%d,%d) co_blk=%d ci_chunk=%d smem=%zu",
             c.LW, c.NY, c.NZ, c.WC, c.MD, c.MH, c.M, c.CO_T, c.threads, c.NZ * c.MD,
             c.NY * c.MH, c.LW, c.WC * c.CO_T, c.ci_chunk, c.smem);
    return true;
  }
  if (force.family == PHASECONV_TILED)
    return refuse(buf, len, force.family, "no tile of it fits shared memory");
  out->family = PHASECONV_NAIVE;
  out->naive_grid = naive_grid(outputs, dev);
  snprintf(buf, len, "naive");
  return true;
}

// ---------------------------------------------------------------- the depthwise backward
// Its tile (DwBwdCfg): input positions x_sz (per axis) read grad_y at
// stride * i + k * dilation - padding, so a tile of t positions reads a box of
// stride * (t - 1) + (k - 1) * dilation + 1 along each axis (along W at most
// kDwBwdThreads / 2: a thread stages one column).  Up to 32 whole columns (fewer
// where the box would not fit), rows in groups of kDwBwdRows, D slices: of the tiles whose
// shared memory (tap list, box, and for the weight gradient the tile's inputs) fits
// kDwMaxSmem, with up to two items per thread, the most busy threads per round of items, the
// fewest box words per position among those.  False where no tile fits or the taps number
// over kDwBwdMaxTaps (the layer then takes another kernel).
bool choose_dw_bwd(const int64_t x_sz[3], const PhaseConvExact& ex, int64_t taps,
                   size_t acc, bool weight_grad, DwBwdCfg* c) {
  if (taps < 1 || taps > kDwBwdMaxTaps) return false;
  int64_t span[3];
  for (int a = 0; a < 3; ++a) {
    if (x_sz[a] < 1 || ex.k[a] < 1) return false;
    span[a] = (ex.k[a] - 1) * ex.d[a] + 1;
  }
  const int64_t s_d = ex.s[0], s_h = ex.s[1], s_w = ex.s[2];
  const int64_t tap_bytes = (taps * (weight_grad ? 8 : (acc == 8 ? 16 : 8)) + 15) / 16 * 16;
  const int64_t h_most = std::min<int64_t>(cdiv(x_sz[1], kDwBwdRows) * kDwBwdRows, 32);
  const int64_t d_most = std::min<int64_t>(x_sz[0], 16);
  bool found = false;
  double best_items = 0, best_ratio = 0;
  for (int64_t tw = std::min<int64_t>(x_sz[2], 32); tw >= 1 && !found; tw /= 2) {
    for (int64_t th = kDwBwdRows; th <= h_most; th += kDwBwdRows) {
      for (int64_t td = 1; td <= d_most; ++td) {
        const int64_t items = td * (th / kDwBwdRows) * tw;
        if (items > 2 * kDwBwdThreads) break;
        const int64_t bd = s_d * (td - 1) + span[0], bh = s_h * (th - 1) + span[1];
        const int64_t bw = s_w * (tw - 1) + span[2];
        const int64_t cols = cdiv(bw, s_w), box = bd * s_w * cols * (bh | 1);
        const double smem = (double)tap_bytes +
                            (double)acc * (box + (weight_grad ? td * tw * (th | 1) : 0));
        if (smem > kDwMaxSmem || bw > kDwBwdThreads / 2) break;
        // busy threads per round of items
        const double fill = (double)items / (double)cdiv(items, kDwBwdThreads);
        const double ratio = (double)box / (double)(td * th * tw);
        if (!found || fill > best_items || (fill == best_items && ratio < best_ratio)) {
          found = true;
          best_items = fill;
          best_ratio = ratio;
          c->tile_d = (int)td; c->tile_h = (int)th; c->tile_w = (int)tw;
          c->box_d = (int)bd; c->box_h = (int)bh; c->box_w = (int)bw;
          c->box_cols = (int)cols; c->ncols = (int)(s_w * cols);
          c->hpitch = (int)(bh | 1); c->xpitch = (int)(th | 1);
          c->smem = (size_t)smem;
        }
      }
    }
  }
  if (!found) return false;
  c->d_tiles = (int)cdiv(x_sz[0], c->tile_d);
  c->h_tiles = (int)cdiv(x_sz[1], c->tile_h);
  c->w_tiles = (int)cdiv(x_sz[2], c->tile_w);
  c->taps = (int)taps;
  c->tap_bytes = (int)tap_bytes;
  c->tap_chunks = c->splits = 1;
  return true;
}

int print_dw_bwd(char* buf, int len, const char* what, const DwBwdCfg& c) {
  return snprintf(buf, len, "depthwise %s (a grad_y box in shared memory) tile(d,h,w)=(%d,%d,%d) "
                  "box=(%d,%d,%d) taps=%d smem=%zu", what, c.tile_d, c.tile_h, c.tile_w,
                  c.box_d, c.box_h, c.box_w, c.taps, c.smem);
}

// Shared memory a block may take so that `blocks` of them fit a multiprocessor (the narrow
// kernels' launch bounds ask for two), each with the 1 KB the driver reserves; for two, also
// at most 110 KB (the narrow weight gradient's first cap, under which its tiles were timed).
size_t smem_for_blocks(const DevInfo& dev, int blocks) {
  const size_t per_sm = dev.smem_sm / blocks - 1024;
  return blocks == 1 ? std::min(dev.smem_optin, per_sm)
                     : std::min<size_t>({dev.smem_optin, per_sm, (size_t)110 * 1024});
}

// Narrow input-gradient tile (gi_narrow_kernel): float32/float16/bfloat16, grad_y's channels per
// group 16, 8 or fewer (one or two octets, the last zero-padded: the whole group's in one
// window), grad_x's a multiple of 8 (one or two octets a block).  The tile of gi_narrow_outputs
// grad_x positions (tile_w 8, 16 or 32: an m16 tile's rows, two runs of 8 along W) of least
// estimated cost: per tile, its staged rows (a 16-byte copy, ~20 instructions a thread) against
// its mma steps (an mma with its ldmatrix, ~8 instructions a warp; 3xTF32 with its shared loads
// and splits, ~32), over the tiles that cover grad_x.  False where no tile's window fits.
bool plan_gi_narrow(const PhaseConvFwdParams& p, int dtype_code, const DevInfo& dev,
                    GiNarrowCfg* c) {
  if (dtype_code != PHASECONV_FLOAT32 && dtype_code != PHASECONV_FLOAT16 &&
      dtype_code != PHASECONV_BFLOAT16)
    return false;
  const int elem = dtype_code == PHASECONV_FLOAT32 ? 4 : 2;
  const int64_t outputs = gi_narrow_outputs(elem), rb = 8 * elem;  // an octet row's bytes
  // grad-input mode: c_in, in_* are grad_y's; c_out, out_* grad_x's
  const int64_t gy_g = p.c_in / p.groups, gx_g = p.c_out / p.groups;
  // grad_y: one or two octets, or fewer than 8 channels (one zero-padded octet)
  if ((gy_g % 8 != 0 && gy_g > 8) || gx_g % 8 != 0 || gy_g > 16 || gx_g == 0) return false;
  const PhaseConvExact& e = p.exact;
  const int64_t taps = e.k[0] * e.k[1] * e.k[2];
  if (taps == 0) return false;
  c->nco = (int)cdiv(gy_g, 8);
  c->nci = gx_g >= 16 ? 2 : 1;
  c->n_cib = (int)cdiv(gx_g / 8, c->nci);
  c->pairs = (int)(cdiv(taps * c->nco, 2) * 2);
  const int64_t x_sz[3] = {p.out_d, p.out_h, p.out_w};
  const size_t wt = (size_t)(c->pairs * c->nci * 8 * rb) + (size_t)c->pairs * 4;
  // warp instructions a tile: 16-bit, an mma a k step of two pairs; float32, one pair
  const double mma_cost = elem == 4 ? 32 * c->pairs : 8 * (c->pairs / 2);
  const double mmas = (double)(outputs / 16) * c->nci * mma_cost;
  double best = 0;
  bool found = false;
  auto search = [&](size_t cap) {
    for (int64_t tw = 8; tw <= 32; tw *= 2) {
      for (int64_t th = 1; tw * th <= outputs; th *= 2) {
        const int64_t td = outputs / (tw * th);
        const int64_t wd = e.s[0] * (td - 1) + (e.k[0] - 1) * e.d[0] + 1,
                      wh = e.s[1] * (th - 1) + (e.k[1] - 1) * e.d[1] + 1,
                      ww = e.s[2] * (tw - 1) + (e.k[2] - 1) * e.d[2] + 1;
        const int64_t ws = cdiv(ww, e.s[2]), npos = wd * wh * ws * e.s[2];
        const size_t smem = (size_t)(npos * c->nco * rb) + wt;
        if (smem > cap) continue;
        const double tiles = (double)cdiv(x_sz[0], td) * cdiv(x_sz[1], th) * cdiv(x_sz[2], tw);
        const double cost = tiles * ((double)npos * c->nco * (elem / 2) * 20 + mmas * 32);
        if (!found || cost < best) {
          found = true;
          best = cost;
          c->tile_d = (int)td; c->tile_h = (int)th; c->tile_w = (int)tw;
          c->win_d = (int)wd; c->win_h = (int)wh; c->win_ws = (int)ws;
          c->win_w = (int)(ws * e.s[2]);
          c->smem = smem;
        }
      }
    }
  };
  // two blocks a multiprocessor (its launch bounds); where no tile fits that, one
  search(smem_for_blocks(dev, 2));
  if (!found) search(smem_for_blocks(dev, 1));
  if (!found) return false;
  c->tiles_d = (int)cdiv(x_sz[0], c->tile_d);
  c->tiles_h = (int)cdiv(x_sz[1], c->tile_h);
  c->tiles_w = (int)cdiv(x_sz[2], c->tile_w);
  c->grid = p.n * p.groups * c->n_cib * c->tiles_d * c->tiles_h * c->tiles_w;
  return c->grid < ((int64_t)1 << 31);
}

// ---------------------------------------------------------------- the input gradient's rule
// tile: the implicit GEMM's kind where it is named (force PHASECONV_GEMM), else -1.
bool plan_bwd_input(const PhaseConvFwdParams& params, int dtype_code, int force, int tile,
                    const DevInfo& dev, PhaseConvBwdInputPlan* out) {
  char* buf = out->text;
  const int len = (int)sizeof(out->text);
  if (tile >= 0 && force != PHASECONV_GEMM)
    return refuse(buf, len, force, "a tile is named for the implicit GEMM alone");
  out->naive_grid = 0;
  out->grad_y_channels_last = 0;
  const int64_t outputs = params.n * params.c_out * params.out_d * params.out_h * params.out_w;
  if (outputs == 0) {
    out->family = PHASECONV_EMPTY;
    snprintf(buf, len, "none (empty input gradient)");
    return true;
  }
  const bool depthwise = params.c_in == params.groups && params.c_out == params.groups;
  DwBwdCfg& dc = out->depthwise;
  if (force == PHASECONV_DEPTHWISE && !depthwise)
    return refuse(buf, len, force, kNotDepthwise);
  const int64_t x_sz[3] = {params.out_d, params.out_h, params.out_w};  // grad_x
  const size_t acc = dtype_code == PHASECONV_FLOAT64 ? 8 : 4;
  if (depthwise && (force == 0 || force == PHASECONV_DEPTHWISE) &&
      choose_dw_bwd(x_sz, params.exact, params.total_taps, acc, false, &dc)) {
    const int64_t tiles = (int64_t)dc.d_tiles * dc.h_tiles * dc.w_tiles;
    dc.grid = params.n * params.c_out * tiles;
    if (dc.grid < ((int64_t)1 << 31)) {
      out->family = PHASECONV_DEPTHWISE;
      print_dw_bwd(buf, len, "grad-input", dc);
      return true;
    }
  }
  if (force == PHASECONV_DEPTHWISE)
    return refuse(buf, len, force, kNoDepthwiseBackwardTile);
  GemmCfg& gc = out->gemm;
  if ((force == 0 || force == PHASECONV_GEMM) &&
      choose_gi_gemm(params, dtype_code, force, tile, dev, &gc)) {
    out->family = PHASECONV_GEMM;
    out->grad_y_channels_last = 1;
    snprintf(buf, len,
             "implicit-gemm grad-input kind=%d BM=%d BN=%d BK=%d threads=%d stages=%d "
             "m_tiles=%d smem=%zu%s%s%s%s, grad_y channels-last", gc.kind, gc.BM, gc.BN,
             gc.bkg * gemm_group_channels(gc), gc.threads,
             gemm_cfg_stages(gc),
             gc.m_tiles, gc.smem, gc.kind >= 8 ? " tma-box" : "", gemm_tma_form(gc),
             gemm_wgmma(gc) ? " wgmma-sm90a" : "", gemm_precision(gc));
    return true;
  }
  if (force == PHASECONV_GEMM && tile >= 0)
    return refuse(buf, len, force, "the named tile cannot take the layer (or does not fit "
                  "shared memory)");
  if (force == PHASECONV_GEMM)
    return refuse(buf, len, force, "it takes float32/float16/bfloat16 with C_out/groups a "
                  "multiple of 8 and a tile that fits shared memory");
  GiNarrowCfg& nc = out->narrow;
  const int64_t gy_g = params.c_in / params.groups, gx_g = params.c_out / params.groups;
  // float32 with 16 grad_y channels a group stays off it by the rule (H100, 2 x 64->16 24^3
  // k3 s2: 146 us against the per-phase kernel's 98; the implicit GEMM above takes that layer)
  const bool narrow_rule = !(dtype_code == PHASECONV_FLOAT32 && gy_g > 8);
  if (((force == 0 && narrow_rule) || force == PHASECONV_GI_NARROW) &&
      plan_gi_narrow(params, dtype_code, dev, &nc)) {
    out->family = PHASECONV_GI_NARROW;
    out->grad_y_channels_last = 1;
    snprintf(buf, len,
             "tensor-core window grad-input %s, grad_y channels-last, %dx%d "
             "channel tile, %d tap pair(s), tile(d,h,w)=(%d,%d,%d), window=(%d,%d,%d), "
             "%lld blocks, smem=%zu",
             dtype_code == PHASECONV_FLOAT32 ? "3xTF32" : "fp32-accumulate", nc.nci * 8,
             nc.nco * 8, nc.pairs, nc.tile_d, nc.tile_h,
             nc.tile_w, nc.win_d, nc.win_h, nc.win_w, (long long)nc.grid, nc.smem);
    return true;
  }
  if (force == PHASECONV_GI_NARROW)
    return refuse(buf, len, force, "it takes float32/float16/bfloat16 with C_out/groups 16, "
                  "8 or fewer, C_in/groups a multiple of 8 and a grad_y window that fits shared "
                  "memory");
  // the per-phase tensor-core kernel by the rule where both sides have 4 channels a group or
  // more (a 16-byte channel group then at least half used), and for 16-bit layers with fewer
  // grad_y channels a group (zero-padded) where grad_x's fill whole channel groups and the
  // narrow kernel's window does not fit (H100, bf16, 2 x 32->2 48^3 k3 s2: 180 us against the
  // naive kernel's 296; the narrow kernel 70); any other layer when it is named
  const bool narrow_gy = dtype_code != PHASECONV_FLOAT32 && gy_g < 4 && gx_g % 8 == 0;
  const bool mma_ok = dtype_code != PHASECONV_FLOAT64 && force != PHASECONV_NAIVE &&
                      (force == PHASECONV_MMA || (gy_g >= 4 && gx_g >= 4) || narrow_gy);
  MmaCfg& mc = out->mma;
  if (mma_ok && choose_mma(params, dtype_code, dev, &mc)) {
    out->family = PHASECONV_MMA;
    snprintf(buf, len,
             "mma grad-input kind=%d BM=%d BN=%d threads=%d tile(d,h,w)=(%d,%d,%d) ng=%d "
             "smem=%zu phases=%d", mc.kind, mc.BM, mc.BN, mc.threads, mc.TD, mc.TH, mc.TW,
             mc.ng, mc.smem, params.nsub);
    return true;
  }
  if (force == PHASECONV_MMA)
    return refuse(buf, len, force, "it takes float32/float16/bfloat16 and a tile that fits "
                  "shared memory");
  out->family = PHASECONV_NAIVE;
  out->naive_grid = naive_grid(outputs, dev);
  snprintf(buf, len, "naive grad-input (one thread per input voxel, phases=%d)", params.nsub);
  return true;
}

// ---------------------------------------------------------------- the weight gradient's rule
// The tensor-core GEMMs' longest reduction: the largest phase's (residue 0) outputs over the
// batch.
int64_t gm_reduction_length(const PhaseConvBwdWeightParams& p) {
  return p.n * cdiv(p.out_d, p.stride_d) * cdiv(p.out_h, p.stride_h) * cdiv(p.out_w, p.stride_w);
}

// Their grid before splits (gw_mma_kernel, gw_cl_kernel, gw_wgmma_kernel): a block per phase,
// tap (up to the most a phase has), group and bm x bn channel tile; 0 where no phase has taps.
int64_t gm_grid(const PhaseConvBwdWeightParams& p, int bm, int bn, GmCfg* a) {
  a->max_taps = (int)(p.max_taps_d * p.max_taps_h * p.max_taps_w);
  if (a->max_taps == 0 || p.packed_elems == 0) return 0;
  a->n_cib = (int)cdiv(p.c_in / p.groups, bm);
  a->n_cob = (int)cdiv(p.c_out / p.groups, bn);
  return p.stride_d * p.stride_h * p.stride_w * a->max_taps * p.groups * a->n_cib * a->n_cob;
}

bool mma_possible(const PhaseConvBwdWeightParams& p, int dtype_code) {
  if (dtype_code == PHASECONV_FLOAT64) return false;
  const int64_t cin_g = p.c_in / p.groups, cout_g = p.c_out / p.groups;
  return cin_g >= 16 && cout_g >= 16 && gm_reduction_length(p) < ((int64_t)1 << 31) - 64;
}

// SIMT tile: false where the input window does not fit shared memory.
bool plan_gw(const PhaseConvBwdWeightParams& p, int dtype_code, const DevInfo& dev,
             PhaseConvBwdWeightPlan* out) {
  const size_t acc_size = dtype_code == PHASECONV_FLOAT64 ? 8 : 4;
  GwCfg& a = out->gw;
  const int64_t cin_g = p.c_in / p.groups, cout_g = p.c_out / p.groups;
  const int64_t max_taps = p.max_taps_d * p.max_taps_h * p.max_taps_w;
  if (max_taps == 0 || p.packed_elems == 0) return false;
  // block tile: up to 32 x 32 channels (4-channel register tiles), taps to fill the threads
  // (64 x 64 measured slower: one block per SM); one or two channels per group (depthwise
  // layers): 1 x 1 register tiles, where 4 x 4 would multiply 15 padding pairs of 16
  a.reg = cin_g <= 2 && cout_g <= 2 ? 1 : 4;
  a.ci_b = a.reg == 1 ? (int)cin_g : cin_g >= 32 ? 32 : round4(cin_g);
  a.co_b = a.reg == 1 ? (int)cout_g : cout_g >= 32 ? 32 : round4(cout_g);
  const int64_t per_tap = (int64_t)(a.ci_b / a.reg) * (a.co_b / a.reg);
  int64_t tc = kGwThreads / per_tap;
  if (tc < 1) tc = 1;
  if (tc > max_taps) tc = max_taps;
  a.tc = (int)tc;
  a.n_tch = (int)cdiv(max_taps, a.tc);
  a.n_cib = (int)cdiv(cin_g, a.ci_b);
  a.n_cob = (int)cdiv(cout_g, a.co_b);
  // the tile's window: TW covers a phase's W count (the largest and smallest phases may
  // differ by one), TH = tpos / TW; the largest tile that fits ~160 KB of shared memory
  const size_t smem_cap = dev.smem_optin < (size_t)160 * 1024 ? dev.smem_optin : 160 * 1024;
  const int64_t wd = 1 + (p.max_taps_d - 1) * p.pdil_d;
  const int64_t cw_hi = cdiv(p.out_w, p.stride_w), cw_lo = p.out_w / p.stride_w;
  bool fits = false;
  for (int lg_tpos = 7; lg_tpos >= 0 && !fits; --lg_tpos) {
    int64_t win = 0;
    for (int k = 0; k < 2; ++k) {
      const int64_t cwk = k == 0 ? cw_hi : cw_lo;
      int lg = 0;
      while (((int64_t)1 << lg) < cwk && lg < 5 && lg < lg_tpos) ++lg;
      const int64_t tw = (int64_t)1 << lg, th = ((int64_t)1 << lg_tpos) >> lg;
      const int64_t w = wd * (th + (p.max_taps_h - 1) * p.pdil_h) *
                        (tw + (p.max_taps_w - 1) * p.pdil_w);
      if (w > win) win = w;
    }
    const int64_t xs = a.ci_b, gs = a.co_b;
    if (win * xs < kGwThreads * 16) win = cdiv(kGwThreads * 16, xs);  // reduction buffer
    const size_t smem = (size_t)(win * xs + (gs << lg_tpos)) * acc_size;
    if (smem <= smem_cap && win < (1 << 24)) {
      a.lg_tpos = lg_tpos;
      a.win_max = (int)win;
      out->smem = smem;
      fits = true;
    }
  }
  if (!fits) return false;
  const int64_t base = p.stride_d * p.stride_h * p.stride_w * p.groups * a.n_cib * a.n_cob * a.n_tch;
  // splits of the reduction: enough blocks for ~4 per multiprocessor
  const int64_t tiles = p.n * cdiv(p.out_d, p.stride_d) *
                        cdiv(cdiv(p.out_h, p.stride_h) * cdiv(p.out_w, p.stride_w),
                             (int64_t)1 << a.lg_tpos);  // about the tiles of a phase
  int64_t splits = cdiv(4 * (int64_t)dev.sms, base);
  if (splits > tiles) splits = tiles;
  if (splits < 1) splits = 1;
  if (splits > 64) splits = 64;
  a.splits = (int)splits;
  out->grid = base * splits;
  out->ws_bytes = (size_t)splits * (size_t)p.packed_elems * acc_size;
  return out->grid < ((int64_t)1 << 31);
}

// Narrow tensor-core tile (gw_narrow_kernel): octets; taps per block, all of a phase where
// its m16n8 tiles fit the warps (gw_narrow_items each: one staged window serves every tap);
// and the output tile (D x H x W) of least estimated cost over the phases' output counts: per
// tile, its k steps times the m16n8 tiles (an mma, its ldmatrix and adds, ~8 instructions a
// warp) against its staged rows (a copy, ~20 instructions a thread).  False where no tile's
// window fits.
bool plan_gw_narrow(const PhaseConvBwdWeightParams& p, int dtype_code, const DevInfo& dev,
                    PhaseConvBwdWeightPlan* out) {
  GwNarrowCfg& c = out->narrow;
  // octets: C_out/g below 8 fills one, zero-padded
  const int64_t cin_o = p.c_in / p.groups / 8, cout_o = cdiv(p.c_out / p.groups, 8);
  const int64_t max_taps = p.max_taps_d * p.max_taps_h * p.max_taps_w;
  if (max_taps == 0 || p.packed_elems == 0 || cin_o == 0 || cout_o == 0) return false;
  const int warps = kGwNarrowThreads / 32;
  const int elem = dtype_code == PHASECONV_FLOAT32 ? 4 : 2;
  const int64_t items_per_warp = gw_narrow_items(elem);
  c.nci = cin_o >= 2 ? 2 : 1;
  c.nco = c.nci == 1 && cout_o >= 2 ? 2 : 1;
  // m16n8 tiles a block: ceil(taps / 2) x nco with one input octet, taps x nco with two
  const int64_t tc_max = (c.nci == 1 ? 2 : 1) * warps * items_per_warp / c.nco;
  c.n_tch = (int)cdiv(max_taps, tc_max);
  c.tc = (int)cdiv(max_taps, c.n_tch);
  c.n_cib = (int)cdiv(cin_o, c.nci);
  c.n_cob = (int)cdiv(cout_o, c.nco);
  const double items = (double)cdiv(c.tc * c.nci, 2) * c.nco;
  const int64_t hi[3] = {cdiv(p.out_d, p.stride_d), cdiv(p.out_h, p.stride_h),
                         cdiv(p.out_w, p.stride_w)};
  const int64_t lo[3] = {p.out_d / p.stride_d, p.out_h / p.stride_h, p.out_w / p.stride_w};
  const size_t smem_cap = smem_for_blocks(dev, 2);  // two blocks a multiprocessor
  const size_t sums = (size_t)warps * items_per_warp * 128 * 4;  // the warps' sums
  const int64_t max_q = gw_narrow_max_q(elem);
  // per m16n8 tile and 16-output k step, warp instructions: an mma with its ldmatrix (16-bit),
  // or two k halves of 3xTF32 with four shared loads and splits each (float)
  const double mma_cost = elem == 4 ? 32 : 8;
  double best = 0;
  bool found = false;
  // per axis only the least size of each tile count (a larger one costs more, covers no more)
  auto next = [](int64_t size, int64_t count) {  // the next smaller such size, 0 past 1
    return size <= 1 ? 0 : cdiv(count, cdiv(count, size - 1));
  };
  for (int64_t tw = std::min(hi[2], max_q); tw >= 1; tw = next(tw, hi[2])) {
    for (int64_t th = std::min(hi[1], max_q / tw); th >= 1; th = next(th, hi[1])) {
      for (int64_t td = std::min(hi[0], max_q / (tw * th)); td >= 1; td = next(td, hi[0])) {
        const int64_t ksteps = cdiv(td * th * tw, 16), qp = ksteps * 16;
        const int64_t win = (td + (p.max_taps_d - 1) * p.pdil_d) *
                            (th + (p.max_taps_h - 1) * p.pdil_h) *
                            (tw + (p.max_taps_w - 1) * p.pdil_w);
        const size_t buf = (size_t)(c.nci * win + c.nco * qp) * 8 * elem;
        const size_t smem = (size_t)qp * 4 + sums + 2 * buf;
        if (smem > smem_cap) continue;
        double cost = 0;
        for (const int64_t* k : {hi, lo}) {
          if (k[0] == 0 || k[1] == 0 || k[2] == 0) continue;
          const int64_t tiles = cdiv(k[0], td) * cdiv(k[1], th) * cdiv(k[2], tw);
          cost += (double)tiles * ((double)ksteps * items * mma_cost * 32 +
                                   (double)(c.nci * win + c.nco * qp) * (elem / 2) * 20);
        }
        if (!found || cost < best) {
          found = true;
          best = cost;
          c.tile_d = (int)td; c.tile_h = (int)th; c.tile_w = (int)tw;
          c.ksteps = (int)ksteps;
          c.win_max = (int)win;
          c.smem = smem;
        }
      }
    }
  }
  if (!found) return false;
  const int64_t base = p.stride_d * p.stride_h * p.stride_w * p.groups * c.n_cib * c.n_cob *
                       c.n_tch;
  // splits of the outputs: up to two waves of two blocks a multiprocessor (ncu put a
  // partial third wave at up to a third of the time), each split at least two tiles
  const int64_t tiles = p.n * cdiv(hi[0], c.tile_d) * cdiv(hi[1], c.tile_h) *
                        cdiv(hi[2], c.tile_w);
  int64_t splits = 4 * (int64_t)dev.sms / base;
  splits = std::max<int64_t>(1, std::min<int64_t>({splits, tiles / 2, 64}));
  c.splits = (int)splits;
  c.grid = base * splits;
  out->grid = c.grid;
  out->smem = c.smem;
  out->ws_bytes = (size_t)splits * (size_t)p.packed_elems * sizeof(float);
  return c.grid < ((int64_t)1 << 31);
}

// Tensor-core tile of the contiguous kernel: 64 x 64 channels.  Measured on an H100: 128 x 64
// tied in fp32 and lost in bf16 (shape 3: 217 vs 175 us); 64 x 32 for C_out/g <= 32 lost too
// (shape 2: 699 vs 536 us fp32, 400 vs 333 bf16).  The channels-last kernel
// (channels_last): 64 x 32 where C_out/g <= 32, else 64 x 64.
bool plan_gm(const PhaseConvBwdWeightParams& p, int dtype_code, bool channels_last,
             const DevInfo& dev, PhaseConvBwdWeightPlan* out) {
  GmCfg& a = out->gm;
  a.wn = channels_last && p.c_out / p.groups <= 32 ? 1 : kGmWN;
  const int64_t base = gm_grid(p, kGmWM * 32, a.wn * 32, &a);
  if (base == 0) return false;
  const int64_t chunks = cdiv(gm_reduction_length(p), kGmBK);
  // splits of the reduction: about kGmBlocksPerSm blocks per multiprocessor, each split at
  // least 16 chunks (512 terms) long
  int64_t splits = cdiv(kGmBlocksPerSm * (int64_t)dev.sms, base);
  if (splits > chunks / 16) splits = chunks / 16;
  if (splits > 64) splits = 64;
  if (splits < 1) splits = 1;
  a.splits = (int)splits;
  out->grid = base * splits;
  const int elem = dtype_code == PHASECONV_FLOAT32 ? 4 : 2;
  out->smem = channels_last
                  ? (size_t)kGwClStages * kGmBK * (kGmWM + a.wn) * 32 * 2  // [k][channel] stages
                  : (size_t)2 * (kGmWM + kGmWN) * 32 * (kGmBK * elem + 16);  // two stages of rows
  out->ws_bytes = (size_t)splits * (size_t)p.packed_elems * sizeof(float);
  return out->grid < ((int64_t)1 << 31);
}

// The warpgroup tile (gw_wgmma_kernel): 64 input channels a warpgroup; 128 x 128 (two
// warpgroups) where C_in/g and C_out/g are both >= 128, else 64 x 64 or 64 x 32.  Splits: the
// fewest within 3% of the least modelled time, a split's time taken as the waves of resident
// blocks the grid needs over the splits (each split at least 4 chunks long, all of them at
// most kGwWgWsElems of workspace).
bool plan_gm_wgmma(const PhaseConvBwdWeightParams& p, const DevInfo& dev,
                   PhaseConvBwdWeightPlan* out) {
  GmCfg& a = out->gm;
  const int64_t cin_g = p.c_in / p.groups, cout_g = p.c_out / p.groups;
  // two warpgroups only for a 128 x 128 tile: 128 x 64 (one block a multiprocessor, 156
  // registers) ran 9% slower than 64 x 64 (three) on a 128 -> 64 k2 s2 layer (H100)
  a.wgs = cin_g >= 128 && cout_g >= 128 ? 2 : 1;
  a.wn = a.wgs == 2 ? 4 : cout_g >= 64 ? 2 : 1;  // the loader's split: C_out tile <= C_in tile
  const int64_t base = gm_grid(p, 64 * a.wgs, 32 * a.wn, &a);
  if (base == 0) return false;
  const int64_t chunks = cdiv(gm_reduction_length(p), kGwWgBK);
  const size_t stage = (size_t)kGwWgBK * (64 * a.wgs + 32 * a.wn) * 2;
  out->smem = (size_t)kGwWgStages * stage + 1024;  // + the slack of the 1024-byte alignment
  // blocks a multiprocessor holds: shared memory, and registers (ptxas, sm_90a: 212 a thread
  // for two warpgroups, 144 and 121 for one)
  const int64_t per_sm = std::min<int64_t>((int64_t)(dev.smem_sm / (out->smem + 1024)),
                                           a.wgs == 2 ? 1 : a.wn == 2 ? 3 : 4);
  if (per_sm < 1) return false;
  // the blocks that find a tap: taps of every phase, not the grid's max_taps each
  const int64_t taps = p.packed_elems / (p.c_in * cout_g);
  const int64_t work = taps * p.groups * a.n_cib * a.n_cob, resident = per_sm * dev.sms;
  // the reduction reads every split back (latency-bound, ~0.7 TB/s): at most 8 MB of them
  // (2x128->64 8x32x32 k(3,4,4) s(1,2,2), H100: 33 splits, 52 MB, 142 us; 4 splits 89 us)
  const int64_t most = std::max<int64_t>(
      1, std::min<int64_t>({64, chunks / 4, kGwWgWsElems / p.packed_elems}));
  auto cost = [&](int64_t s) { return (double)cdiv(work * s, resident) / (double)s; };
  double best = cost(1);
  for (int64_t s = 2; s <= most; ++s) best = std::min(best, cost(s));
  int64_t splits = 1;
  while (cost(splits) > 1.03 * best) ++splits;
  a.splits = (int)splits;
  out->grid = base * splits;
  out->ws_bytes = (size_t)splits * (size_t)p.packed_elems * sizeof(float);
  return out->grid < ((int64_t)1 << 31);
}

// The TMA weight gradient's box of kGwWgBK phase outputs (gw_tma_kernel), grad_y's box
// stepping at the stride.  False where no box fits.
bool gm_tma_box(const PhaseConvBwdWeightParams& p, GmCfg* a) {
  int box[3];
  const int64_t best = tma_phase_box(cdiv(p.out_d, p.stride_d), cdiv(p.out_h, p.stride_h),
                                     cdiv(p.out_w, p.stride_w), kGwWgBK, kGwWgBK, 1,
                                     p.stride_d, p.stride_h, p.stride_w, box);
  if (best < 0) return false;
  a->box_d = box[0]; a->box_h = box[1]; a->box_w = box[2];
  // (the kernel's chunk indices: boxes of the batch, 32-bit)
  return p.n * (best / kGwWgBK) < ((int64_t)1 << 31);
}

// The reduction rows gw_tma_kernel multiplies, over every (phase, tap) pair: each phase's
// outputs times its taps, the outputs rounded up to whole boxes where `boxed` (without: the
// useful rows).  Both factor by axis: a phase's taps and extent are products of its axes'.
int64_t gm_tma_rows(const PhaseConvBwdWeightParams& p, const GmCfg& a, bool boxed) {
  const int64_t out[3] = {p.out_d, p.out_h, p.out_w},
                stride[3] = {p.stride_d, p.stride_h, p.stride_w},
                box[3] = {a.box_d, a.box_h, a.box_w};
  int64_t rows = 1;
  for (int ax = 0; ax < 3; ++ax) {
    const int64_t s = stride[ax];
    int64_t sum = 0;
    for (int64_t r = 0; r < std::min(s, out[ax]); ++r) {
      int64_t taps = 0;  // taps k with (r + p - k d) = 0 (mod s)
      for (int64_t k = 0; k < p.exact.k[ax]; ++k)
        taps += ((r + p.exact.p[ax] - k * p.exact.d[ax]) % s + s) % s == 0;
      const int64_t count = cdiv(out[ax] - r, s);
      sum += taps * (boxed ? cdiv(count, box[ax]) * box[ax] : count);
    }
    rows *= sum;
  }
  return rows;
}

bool plan_bwd_weight(const PhaseConvBwdWeightParams& p, int dtype_code, int force,
                     const DevInfo& dev, PhaseConvBwdWeightPlan* out) {
  char* buf = out->text;
  const int len = (int)sizeof(out->text);
  out->grid = 0;
  out->smem = out->ws_bytes = 0;
  out->operands_channels_last = 0;
  if (p.packed_elems == 0) {
    out->family = PHASECONV_EMPTY;
    snprintf(buf, len, "none (no phase has taps)");
    return true;
  }
  const bool depthwise = p.c_in == p.groups && p.c_out == p.groups;
  if (force == PHASECONV_GW_DEPTHWISE && !depthwise)
    return refuse(buf, len, force, kNotDepthwise);
  DwBwdCfg& dc = out->depthwise;
  const int64_t x_sz[3] = {p.in_d, p.in_h, p.in_w};
  const size_t acc = dtype_code == PHASECONV_FLOAT64 ? 8 : 4;
  if (depthwise && (force == 0 || force == PHASECONV_GW_DEPTHWISE) &&
      choose_dw_bwd(x_sz, p.exact, p.packed_elems / p.c_in, acc, true, &dc)) {
    // splits of a channel's tiles over the batch: one wave of kDwBwdGwBlocks blocks per
    // multiprocessor
    const int64_t per_channel = p.n * dc.d_tiles * dc.h_tiles * dc.w_tiles;
    dc.tap_chunks = (int)cdiv(dc.taps, kDwBwdWarpTaps * (kDwBwdThreads / 32));
    const int64_t base = p.c_in * dc.tap_chunks;
    int64_t splits = kDwBwdGwBlocks * (int64_t)dev.sms / base;
    splits = std::max<int64_t>(1, std::min<int64_t>({splits, per_channel, 64}));
    dc.splits = (int)splits;
    dc.grid = base * splits;
    if (dc.grid < ((int64_t)1 << 31)) {
      out->family = PHASECONV_GW_DEPTHWISE;
      out->grid = dc.grid;
      out->smem = dc.smem;
      out->ws_bytes = (size_t)splits * (size_t)p.packed_elems * acc;
      const int n = print_dw_bwd(buf, len, "weight-gradient", dc);
      if (n > 0 && n < len) snprintf(buf + n, len - n, " %d split(s)", dc.splits);
      return true;
    }
  }
  if (force == PHASECONV_GW_DEPTHWISE)
    return refuse(buf, len, force, kNoDepthwiseBackwardTile);
  // The narrow tensor-core kernel (operands channels-last, as below) takes float32/float16/
  // bfloat16 with C_in/g whole octets and C_out/g whole octets or fewer than 8 (one
  // zero-padded octet); by the rule where one side has 8 channels or fewer (H100, bf16, 2 x
  // 32->2 48^3 k3 s2, MONAI UNet's last up-convolution: the SIMT kernel's 4 x 4 register
  // tiles, half of them padding, took 1129 us), named on wider layers
  const int64_t cin_g = p.c_in / p.groups, cout_g = p.c_out / p.groups;
  const bool narrow_able = dtype_code != PHASECONV_FLOAT64 && cin_g % 8 == 0 &&
                           (cout_g % 8 == 0 || cout_g < 8);
  const bool narrow_ok =
      narrow_able && (force == PHASECONV_GW_MMA_NARROW || std::min(cin_g, cout_g) < 16);
  if (force == PHASECONV_GW_MMA_NARROW && !narrow_able)
    return refuse(buf, len, force, "it takes float32/float16/bfloat16 with C_in/groups a "
                  "multiple of 8 and C_out/groups a multiple of 8 or below 8");
  if (narrow_ok && (force == 0 || force == PHASECONV_GW_MMA_NARROW) &&
      plan_gw_narrow(p, dtype_code, dev, out)) {
    const GwNarrowCfg& c = out->narrow;
    out->family = PHASECONV_GW_MMA_NARROW;
    out->operands_channels_last = 1;
    snprintf(buf, len, "tensor-core window %s, channels-last operands, %dx%d channel tile%s, "
             "%d tap(s) per block, tile(d,h,w)=(%d,%d,%d), %d split(s), %lld blocks, smem=%zu",
             dtype_code == PHASECONV_FLOAT32 ? "3xTF32" : "fp32-accumulate", c.nci * 8,
             c.nco * 8, cout_g < 8 ? " (output channels zero-padded)" : "", c.tc, c.tile_d,
             c.tile_h, c.tile_w, c.splits, (long long)out->grid, c.smem);
    return true;
  }
  if (force == PHASECONV_GW_MMA_NARROW)
    return refuse(buf, len, force, "its input window does not fit shared memory");
  const bool tensor_cores = mma_possible(p, dtype_code);
  const bool cl_ok = tensor_cores && dtype_code != PHASECONV_FLOAT32 &&
                     (p.c_in / p.groups) % 8 == 0 && (p.c_out / p.groups) % 8 == 0;
  const bool wg_ok = cl_ok && dev.wgmma && p.c_in / p.groups >= 64 && p.c_out / p.groups >= 32;
  if (force == PHASECONV_GW_WGMMA && !wg_ok)
    return refuse(buf, len, force, "it takes float16/bfloat16 with C_in/groups >= 64 and "
                  "C_out/groups >= 32, both multiples of 8, on an sm_90a build");
  // its TMA form: a chunk of the reduction is a box of 64 phase outputs, both operands copied
  // as boxes (grad_y's at the stride, at most 8).  By the rule where the boxes pad the
  // reduction's rows, every (phase, tap) pair counted, by 5% or less: executed MACs within
  // 1.05x the useful ones (H100, bf16, µs, against the warpgroup kernel, grad_y NCDHW /
  // channels-last: 512->256 16^3 k2 54.7 / 37.8 vs 61.0 / 43.4, 16x256->128 8^3 k4 115.8 /
  // 96.5 vs 136.8 / 117.3, 128->64 32^3 k2 (channels-last) 58.9 vs 86.0)
  const bool tma_able = wg_ok && p.stride_d <= 8 && p.stride_h <= 8 && p.stride_w <= 8;
  if (force == PHASECONV_GW_WGMMA_TMA && !tma_able)
    return refuse(buf, len, force, "it takes float16/bfloat16 with C_in/groups >= 64 and "
                  "C_out/groups >= 32, both multiples of 8, strides up to 8, on an sm_90a "
                  "build");
  if (tma_able && (force == 0 || force == PHASECONV_GW_WGMMA_TMA)) {
    PhaseConvBwdWeightPlan t = *out;
    const bool fits = plan_gm_wgmma(p, dev, &t) && gm_tma_box(p, &t.gm);
    if (fits && (force != 0 || 20 * gm_tma_rows(p, t.gm, true) <=
                                   21 * gm_tma_rows(p, t.gm, false))) {
      *out = t;
      out->smem += 2 * kGwWgStages * 8;  // the stages' full and empty barriers
      out->family = PHASECONV_GW_WGMMA_TMA;
      out->operands_channels_last = 1;
      // a tile's splits in one cluster (at most the portable 8 blocks), which adds them and
      // stores the gradient; only where the grid is at most a block a multiprocessor: a
      // cluster's blocks must be resident together, and a grid of several a multiprocessor
      // ran slower, likely in a second wave (H100, bf16 channels-last backward, µs, cluster /
      // workspace: 512->256 16^3 k2, 128 blocks, 54.8 / 61.5; 2 x 128->64 8x32x32 k(3,4,4)
      // s(1,2,2), 384 blocks of 4 splits, 103.7 / 77.0).  A lone split stores its own sums at
      // any grid (a cluster of one block places like a plain launch)
      if (out->gm.splits == 1 ||
          (out->gm.splits <= kGwClusterMax && out->grid <= dev.sms)) {
        out->gm.cluster = out->gm.splits;
        out->ws_bytes = 0;
      }
      snprintf(buf, len, "tensor-core gemm fp32-accumulate, channels-last operands, %dx%d "
               "channel tile, wgmma-sm90a tma-box (%d,%d,%d), %d stages, %d split(s)%s, %lld "
               "blocks, smem=%zu", 64 * out->gm.wgs, 32 * out->gm.wn, out->gm.box_d,
               out->gm.box_h, out->gm.box_w, kGwWgStages, out->gm.splits,
               out->gm.cluster > 1    ? " added in a cluster"
               : out->gm.cluster == 1 ? " stored by the kernel"
                                      : "",
               (long long)out->grid,
               out->smem);
      return true;
    }
    if (force != 0) return refuse(buf, len, force, "its grid is too large");
  }
  // by the rule elsewhere (bf16, copies and reduction included, the mma.sync tile's in
  // brackets; H200: 2x64->32 32^3 k3 s2 110 (154) us, 1x512->256 16^3 k2 s2 73 (110),
  // 16x256->128 8^3 k4 s2 149 (266); H100: 2x128->64 32^3 k2 s2 127 (142), 2x128->64
  // 8x32x32 k(3,4,4) s(1,2,2) 89 (118))
  if (wg_ok && (force == 0 || force == PHASECONV_GW_WGMMA)) {
    if (!plan_gm_wgmma(p, dev, out))
      return refuse(buf, len, PHASECONV_GW_WGMMA, "its grid is too large");
    out->family = PHASECONV_GW_WGMMA;
    out->operands_channels_last = 1;
    snprintf(buf, len, "tensor-core gemm fp32-accumulate, channels-last operands, %dx%d "
             "channel tile, wgmma-sm90a, %d stages, %d split(s), %lld blocks, smem=%zu",
             64 * out->gm.wgs, 32 * out->gm.wn, kGwWgStages, out->gm.splits,
             (long long)out->grid, out->smem);
    return true;
  }
  if (force == PHASECONV_GW_MMA_CL && !cl_ok)
    return refuse(buf, len, force, "it takes float16/bfloat16 with C_in/groups and "
                  "C_out/groups multiples of 8 and >= 16");
  // by the rule wherever it can: it pays its copies (H200, bf16, copies and reduction
  // included: 2x64->32 32^3 k3 s2 211 vs 296 us, 1x512->256 16^3 k2 s2 126 vs 178 us)
  if (cl_ok && (force == 0 || force == PHASECONV_GW_MMA_CL)) {
    if (!plan_gm(p, dtype_code, true, dev, out))
      return refuse(buf, len, PHASECONV_GW_MMA_CL, "its grid is too large");
    out->family = PHASECONV_GW_MMA_CL;
    out->operands_channels_last = 1;
    snprintf(buf, len, "tensor-core gemm fp32-accumulate, channels-last operands, %dx%d "
             "channel tile, %d stages, %d split(s), %lld blocks", kGmWM * 32,
             out->gm.wn * 32, kGwClStages, out->gm.splits, (long long)out->grid);
    return true;
  }
  if (force == PHASECONV_GW_MMA && !tensor_cores)
    return refuse(buf, len, force, "it takes float32/float16/bfloat16 with C_in/groups and "
                  "C_out/groups >= 16");
  if (tensor_cores && (force == 0 || force == PHASECONV_GW_MMA)) {
    if (!plan_gm(p, dtype_code, false, dev, out))
      return refuse(buf, len, PHASECONV_GW_MMA, "its grid is too large");
    out->family = PHASECONV_GW_MMA;
    snprintf(buf, len, "tensor-core gemm %s, %dx%d channel tile, %d split(s), %lld blocks",
             dtype_code == PHASECONV_FLOAT32 ? "3xTF32" : "fp32-accumulate",
             kGmWM * 32, kGmWN * 32, out->gm.splits, (long long)out->grid);
    return true;
  }
  if (force != PHASECONV_GW_NAIVE && plan_gw(p, dtype_code, dev, out)) {
    out->family = PHASECONV_GW_SIMT;
    snprintf(buf, len, "simt %dx%d channel tile, %d tap(s) per block, %d split(s), %lld blocks",
             out->gw.ci_b, out->gw.co_b, out->gw.tc, out->gw.splits, (long long)out->grid);
    return true;
  }
  if (force == PHASECONV_GW_SIMT)
    return refuse(buf, len, force, "its input window does not fit shared memory");
  out->family = PHASECONV_GW_NAIVE;
  out->grid = cdiv(p.packed_elems, 256) < 65535 ? cdiv(p.packed_elems, 256) : 65535;
  out->smem = out->ws_bytes = 0;
  snprintf(buf, len, "naive (one thread per weight element%s)",
           force == PHASECONV_GW_NAIVE ? "" : ": the input window does not fit shared memory");
  return true;
}

}  // namespace
}  // namespace phaseconv

bool phase_conv_fwd_plan(const PhaseConvFwdParams& params, int dtype_code,
                         const PhaseConvForce& force, const phaseconv::DevInfo& dev,
                         PhaseConvFwdPlan* plan) {
  plan->text[0] = 0;
  if (params.nsub != 0) return false;  // grad-input mode: phase_conv_bwd_input_plan
  if (dtype_code < PHASECONV_FLOAT32 || dtype_code > PHASECONV_BFLOAT16) return false;
  plan->y_channels_last = 0;
  if (!phaseconv::plan_fwd(params, dtype_code, force, dev, plan)) return false;
  if ((params.y_channels_last && plan->family == PHASECONV_GEMM) ||
      (plan->family == PHASECONV_ALLPHASE && phaseconv::allph_stores_channels_last(params))) {
    plan->y_channels_last = 1;
    const size_t n = strlen(plan->text);
    snprintf(plan->text + n, sizeof(plan->text) - n, ", channels-last output");
  }
  return true;
}

namespace {
// A TMA tile's map of the weight itself: 16-bit, output channels adjacent, the other strides
// whole 16 bytes (dimensions longer than 1), the base 16-byte aligned.
bool tma_weight_in_place(int family, const phaseconv::GemmCfg& gemm, const int64_t* sizes,
                         const int64_t* strides, int elem_size, uintptr_t base) {
  if (family != PHASECONV_GEMM || gemm.kind < 8 || gemm.kind > 11 || elem_size != 2 ||
      base % 16 != 0)
    return false;
  if (sizes[1] > 1 && strides[1] != 1) return false;
  for (int d = 0; d < 5; ++d)
    if (d != 1 && sizes[d] > 1 && (strides[d] <= 0 || (strides[d] * elem_size) % 16 != 0))
      return false;
  return true;
}
}  // namespace

bool phase_conv_fwd_weight_in_place(const PhaseConvFwdPlan& plan, const int64_t* sizes,
                                    const int64_t* strides, int elem_size, uintptr_t base) {
  return tma_weight_in_place(plan.family, plan.gemm, sizes, strides, elem_size, base);
}

bool phase_conv_bwd_input_weight_in_place(const PhaseConvBwdInputPlan& plan,
                                          const int64_t* sizes, const int64_t* strides,
                                          int elem_size, uintptr_t base) {
  // (the 128-row kinds: the input gradient's rule takes no other)
  return plan.grad_y_channels_last && phaseconv::gemm_tma_rows(plan.gemm.kind) == 128 &&
         tma_weight_in_place(plan.family, plan.gemm, sizes, strides, elem_size, base);
}

bool phase_conv_bwd_input_plan(const PhaseConvFwdParams& params, int dtype_code, int force,
                               const phaseconv::DevInfo& dev, PhaseConvBwdInputPlan* plan) {
  plan->text[0] = 0;
  if (params.nsub <= 0 || params.stride_d != 1 || params.stride_h != 1 || params.stride_w != 1)
    return false;
  if (dtype_code < PHASECONV_FLOAT32 || dtype_code > PHASECONV_BFLOAT16) return false;
  const int family = force & ((1 << PHASECONV_GI_TILE_SHIFT) - 1);
  const int tile = (force >> PHASECONV_GI_TILE_SHIFT) - 1;
  return phaseconv::plan_bwd_input(params, dtype_code, family, tile, dev, plan);
}

bool phase_conv_bwd_weight_plan(const PhaseConvBwdWeightParams& params, int dtype_code,
                                int force, const phaseconv::DevInfo& dev,
                                PhaseConvBwdWeightPlan* plan) {
  plan->text[0] = 0;
  if (dtype_code < PHASECONV_FLOAT32 || dtype_code > PHASECONV_BFLOAT16) return false;
  return phaseconv::plan_bwd_weight(params, dtype_code, force, dev, plan);
}
