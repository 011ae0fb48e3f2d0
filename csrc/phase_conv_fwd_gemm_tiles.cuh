// phaseconv CUDA forward engine: the implicit GEMM's mma.sync and cp.async warpgroup tiles,
// the shared-A tile, and run_gemm, the launch of a planned tile of any kind (the TMA tiles:
// phase_conv_fwd_gemm_tma.cuh), which phase_conv_fwd_gemm_{float,half,bfloat16}.cu
// instantiate, one dtype a unit.  Shared parts: phase_conv_fwd_gemm.cuh.  CUDA headers only.
#pragma once

#include "phase_conv_fwd_gemm.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <numeric>
#include <type_traits>

namespace phaseconv {

template <typename T, int MT, int NT, int WARPS_M, int WARPS_N, int STAGES, bool WGROUP,
          bool A_NCDHW, int BKG, bool WG, bool FL = false>
__global__ void __launch_bounds__(WARPS_M * WARPS_N * 32,
                                  gemm_min_blocks(WARPS_M * WARPS_N, MT * NT,
                                                  std::is_same<T, float>::value))
gemm_cl_kernel(const GemmArgs a) {
  phaseconv_exact::let_dependents_start();
  bool nonfinite = false;  // a stored element is Inf or NaN
  constexpr int NTHR = WARPS_M * WARPS_N * 32;
  constexpr int BM = WARPS_M * MT * 16, BN = WARPS_N * NT * 8;
  // BKG: 16-byte channel groups per k step (4: 32 channels, 8: 64)
  static_assert(BKG == 4 || BKG == 8, "k step of 32 or 64 channels");
  constexpr int A_STAGE = BM * BKG * 16, B_STAGE = BKG * BN * 16;
  static_assert(NT % 2 == 0, "B fragments are loaded two n tiles at a time");
  static_assert(NTHR >= BM && NTHR % BM == 0, "write-out: whole rows per thread");
  static_assert(!WG || (MT == 1 && (WARPS_M == 8 || WARPS_M == 16) && WARPS_N == 1 &&
                        BKG == 8 && !A_NCDHW && STAGES >= 3),
                "warpgroup tile: 2 or 4 warpgroups of 64 rows, 64-channel k steps");
  // The 4-warpgroup tile stages its output in the drained pipeline's shared memory, one
  // phase a block: beside the stages, the grouped W phases' output would not fit.
  constexpr bool C_IN_STAGES = WG && WARPS_M == 16;
  static_assert(!C_IN_STAGES || WGROUP, "the staged output's stores");
  constexpr bool TF32 = std::is_same<T, float>::value;
  static_assert(!TF32 || (!WG && !WGROUP && !A_NCDHW),
                "float32: mma.sync tiles, one phase a block, channels-last A");
  static_assert(!FL || TF32, "flushed accumulators are 3xTF32's");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // WG: stages 1024-byte aligned (the 128-byte swizzle atom; the plan adds the slack)
  const uint32_t s_base = (uint32_t)__cvta_generic_to_shared(smem_raw);
  const uint32_t sa = WG ? (s_base + 1023u) & ~1023u : s_base;
  unsigned char* smem = smem_raw + (sa - s_base);
  const uint32_t sb = sa + STAGES * A_STAGE;
  // per row of the tile: input coordinates (d, h of its first tap; w at in_sw * jw; d far
  // negative past the last row) and jw, the element offset of (n, d, h, w, group's first
  // channel) in x and the element offset in y of its output at W residue 0, channel co_base
  // (-1: past the end)
  int4* s_rc = reinterpret_cast<int4*>(smem + STAGES * (A_STAGE + B_STAGE));
  int64_t* s_ro = reinterpret_cast<int64_t*>(s_rc + BM);
  int64_t* s_yo = s_ro + BM;
  // A_NCDHW: s_rc and s_ro of each 8-row group (row 8 * i), packed: conflict-free reads
  constexpr int MG = BM / 8;
  int4* s_grc = reinterpret_cast<int4*>(s_yo + BM);
  int64_t* s_gro = reinterpret_cast<int64_t*>(s_grc + MG);
  // WGROUP: the output tile of all W phases, [BN][BM * sw + 8] (see GemmArgs)
  T* s_c = C_IN_STAGES ? reinterpret_cast<T*>(smem) : reinterpret_cast<T*>(s_gro + MG);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm_ = warp % WARPS_M, wn = warp / WARPS_M;
  const int nw = WGROUP && !C_IN_STAGES ? a.sw : 1;  // W phases per block

  for (int64_t blk = blockIdx.x; blk < a.total_blocks; blk += gridDim.x) {
    GemmTile t;
    if (!t.decode(a, blk, nw, BM, BN)) continue;  // uniform over the block
    const int64_t* e0 = t.e0;
    const int g = t.g, co_base = t.co_base;

    for (int row = tid; row < BM; row += NTHR) {
      int4 rc;
      int64_t ro, yo;
      gemm_row<A_NCDHW>(a, t.m0 + row, t.Mp, t.cd, t.ch, t.cw, t.rd, t.rh, t.offd, t.offh, g,
                        co_base, rc, ro, yo);
      s_rc[row] = rc;
      s_ro[row] = ro;
      s_yo[row] = yo;
      if (A_NCDHW && row % 8 == 0) {
        s_grc[row / 8] = rc;
        s_gro[row / 8] = ro;
      }
    }
    __syncthreads();

    for (int q = 0; q < nw; ++q) {  // the W phases of the unit, one after the other
      const int64_t* e = e0 + (int64_t)q * PHASECONV_TABLE_STRIDE;
      const int rw = (int)ldg_i64(e + PT_RES_W);
      GemmLoader<T, BM, BN, BKG, NTHR, A_NCDHW> ld(a, e, g, co_base, tid, s_rc, s_ro);
      const int nk = ld.nk;
      auto load_stage = [&](int stage) {
        ld.load(sa + stage * A_STAGE, sb + stage * B_STAGE, s_rc, s_ro, s_grc, s_gro);
      };

      float acc[MT][NT][4];
      if constexpr (WG) {
        namespace wg = phaseconv_wgmma;
        constexpr int AHEAD = STAGES - 2;  // stages of copies in flight past the one read
        float(&d)[NT * 4] = reinterpret_cast<float(&)[NT * 4]>(acc);
#pragma unroll
        for (int s = 0; s < AHEAD; ++s) {
          if (s < nk) load_stage(s);
          cp_async_commit();
        }
        const uint32_t a_rows = (uint32_t)(warp >> 2) * 64 * 128;  // the warpgroup's 64 rows
        for (int k = 0; k < nk; ++k) {
          cp_async_wait<AHEAD - 1>();
          wg::fence_proxy_async();  // this thread's copies, visible to wgmma (async proxy)
          // step k has landed for every thread; every warpgroup's batch k-2 is complete, so
          // its stage takes step k + AHEAD
          __syncthreads();
          const int kn = k + AHEAD;
          if (kn < nk) load_stage(kn % STAGES);
          cp_async_commit();
          const int stage = k % STAGES;
          wgmma_k_step<T, BN, BKG>(d, sa + stage * A_STAGE + a_rows, sb + stage * B_STAGE,
                                   k == 0);
          wg::wait<1>();  // batch k stays in flight while step k + 1 is waited for
          wg::fence_operand(d);
        }
        wg::wait<0>();
        wg::fence_operand(d);
        if (nk == 0) zero_acc(acc);
      } else {
      zero_acc(acc);
      float tot[MT][NT][4];  // FL: the flushed sums (phase_conv_mma.cuh: flush_acc)
      if constexpr (FL) zero_acc(tot);
      int since = 0;  // FL: k8 steps since the last flush

#pragma unroll
      for (int s = 0; s < STAGES - 1; ++s) {
        if (s < nk) load_stage(s);
        cp_async_commit();
      }
      for (int k = 0; k < nk; ++k) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();  // step k has landed for every thread; step k-1's buffer is free
        const int kn = k + STAGES - 1;
        if (kn < nk) load_stage(kn % STAGES);
        cp_async_commit();
        const int stage = k % STAGES;
        const uint32_t sA = sa + stage * A_STAGE, sB = sb + stage * B_STAGE;
#pragma unroll
        for (int ks = 0; ks < BKG / 2; ++ks) {
          uint32_t af[MT][4];
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            if (A_NCDHW) {  // matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15), ...
              const int mi = lane >> 3;
              const int kk = ks * 16 + (mi >> 1) * 8 + (lane & 7);
              const int mg = (wm_ * MT + mt) * 2 + (mi & 1);
              ldsm_x4_trans(af[mt], sA + kk * (BM * 2) + ((mg ^ (kk & 7)) << 4));
            } else {
              const int row = (wm_ * MT + mt) * 16 + (lane & 15);
              const int kg = ks * 2 + (lane >> 4);
              ldsm_x4(af[mt], sA + row * (BKG * 16) + ((kg ^ a_swz<BKG>(row)) << 4));
            }
          }
          uint32_t bf[NT][2];
          gemm_b_frags<NT, BN>(bf, sB, ks, wn, lane);
          if constexpr (TF32) {  // 8 channels: one k8 step of 3xTF32
            mma_3xtf32_tiles(acc, af, bf);
            step_flush<FL>(tot, acc, since, kFlushTerms / 8);
          } else {
            mma_tiles<T>(acc, af, bf);
          }
        }
      }
      if constexpr (FL) merge_acc(acc, tot);
      }  // mma.sync
      cp_async_wait<0>();
      __syncthreads();  // every warp is past the last stage (the next W phase refills them)

      // the bias read after the main loop: not held in registers across it
      float bv[NT][2];
      gemm_bias<T, NT>(a, g, co_base, wn, lane, bv);
      // WGROUP: s_c's slot q (the unit's phases are residues 0 .. nw-1, or the one phase of
      // C_IN_STAGES); else the output's W residue
      gemm_store_acc<T, MT, NT, WARPS_M, BN, WGROUP>(a, acc, bv, s_c, s_rc, s_yo, nw,
                                                     WGROUP ? q : rw, wm_, wn, lane, co_base,
                                                     nonfinite);
    }
    if (WGROUP) {
      __syncthreads();
      const int rw0 = C_IN_STAGES ? (int)ldg_i64(e0 + PT_RES_W) : 0;
      gemm_write_tile<T, BM, BN, NTHR>(a, s_c, s_rc, s_yo, nw, rw0, co_base, tid, nonfinite);
    }
    __syncthreads();  // the next tile rewrites the row tables (and s_c)
  }
  if (nonfinite) *a.ex.flag = 1;  // the fix-up recomputes those (phase_conv_exact.cuh)
}


// ---------------------------------------------------------------- shared-A tile (kinds 6, 7)
// k == s layers with no padding (phase_conv_plan.cpp: phases_share_a): every phase reads input
// voxel m for its row m at one tap, so the layer is one GEMM whose columns are (phase, output
// channel) and whose stores are pixel-shuffled.  A block copies its BM rows' A for the whole
// reduction (C_in/g channels) once, then walks `chunks_per_block` (phase, 64-column) chunks of
// the weight in 64-channel k steps; each chunk's outputs are staged in shared memory and
// stored as 16-byte runs of channels.  A is kept in 64-channel slabs of 128-byte rows in the
// 128-byte swizzle (chunk c of row r at r * 128 + ((c ^ (r & 7)) << 4)), which both ldmatrix
// and the wgmma descriptor read.  WG (kind 7, sm_90a): two warpgroups of 64 rows issue wgmma
// on the slabs and the weight stages, one batch in flight while the next step is waited for;
// else (kind 6) 4 x 2 warps of 32 x 32 on mma.sync.  Row table s_yo: the output element of
// row m at phase (0, 0, 0), group g's first channel (-1 past the rows).
constexpr int kShBM = 128, kShBN = 64, kShThreads = 256;

template <typename T, bool WG>
__global__ void __launch_bounds__(kShThreads, 2) gemm_shared_a_kernel(const GemmArgs a) {
  phaseconv_exact::let_dependents_start();
  constexpr int WARPS_M = WG ? 8 : 4, MT = WG ? 1 : 2, NT = WG ? 8 : 4;
  constexpr int CPG = 8, BKG = 8, STAGES = kGemmSharedStages;
  // steps of copies in flight past the one read (wgmma: a stage is refilled two steps after
  // it was read, its batch then complete)
  constexpr int AHEAD = WG ? STAGES - 2 : STAGES - 1;
  constexpr uint32_t B_STAGE = BKG * kShBN * 16, A_SLAB = kShBM * 128;
  static_assert(WARPS_M * MT * 16 == kShBM && (kShThreads / 32 / WARPS_M) * NT * 8 == kShBN,
                "tile");
  static_assert(kShBM * 8 % kShThreads == 0, "a slab's copies: whole rounds of the block");
  bool nonfinite = false;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int KG = a.G;         // 16-byte channel groups of the reduction (a multiple of 8)
  const int KS = KG / BKG;    // k steps (A slabs) a chunk
  // WG: the slabs 1024-byte aligned (the swizzle atom; the plan adds the slack)
  const uint32_t s_base = (uint32_t)__cvta_generic_to_shared(smem_raw);
  const uint32_t sa = WG ? (s_base + 1023u) & ~1023u : s_base;
  const uint32_t sb = sa + (uint32_t)KS * A_SLAB;
  const uint32_t sc = sb + STAGES * B_STAGE;
  T* s_c = reinterpret_cast<T*>(smem_raw + (sc - s_base));
  int64_t* s_yo = reinterpret_cast<int64_t*>(s_c + kShBM * kShBN);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm_ = warp % WARPS_M, wn = warp / WARPS_M;
  const T* __restrict__ x = static_cast<const T*>(a.x);
  const T* __restrict__ wm = static_cast<const T*>(a.wm);
  T* __restrict__ y = static_cast<T*>(a.y);
  const int64_t rows = a.nbatch * a.in_d * a.in_h * a.in_w;
  const int splits = (a.chunks + a.chunks_per_block - 1) / a.chunks_per_block;

  for (int64_t blk = blockIdx.x; blk < a.total_blocks; blk += gridDim.x) {
    const int64_t tile = blk / splits;
    const int split = (int)(blk - tile * splits);
    const int g = (int)(tile % a.G_groups);
    const int64_t m0 = (tile / a.G_groups) * kShBM;
    const int c0 = split * a.chunks_per_block;
    const int steps = min(a.chunks_per_block, a.chunks - c0) * KS;

    for (int r = tid; r < kShBM; r += kShThreads) {
      const int64_t m = m0 + r;
      int64_t yo = -1;
      if (m < rows) {
        int jd, jh, jw;
        const int64_t n = decode_row(m, a.in_w, a.in_h, a.in_d, jd, jh, jw);
        yo = (((n * a.out_d + (int64_t)a.sd * jd) * a.out_h + (int64_t)a.sh * jh) * a.out_w +
              (int64_t)a.sw * jw) * a.c_out + (int64_t)g * a.cout_g;
      }
      s_yo[r] = yo;
    }
    // A: the rows' whole reduction, slab by slab (a slab's 8 chunks of a row to 8 threads)
    for (int ks = 0; ks < KS; ++ks) {
#pragma unroll
      for (int it = 0; it < kShBM * 8 / kShThreads; ++it) {
        const int v = tid + it * kShThreads, r = v >> 3, c8 = v & 7;
        const bool ok = m0 + r < rows;
        const T* src = x + (m0 + r) * a.c_in + (int64_t)g * a.cin_g + (ks * 8 + c8) * CPG;
        cp_async16_ca(sa + (uint32_t)ks * A_SLAB + (uint32_t)r * 128 +
                          ((uint32_t)(c8 ^ (r & 7)) << 4),
                      ok ? (const void*)src : a.x, ok);
      }
    }
    // the weight's steps in order, step s of chunk s / KS at k step s % KS: (group, column)
    // at (group * BN + column) * 16 of its stage.  A cursor walks them (no division a step):
    // the next step's k step, its chunk's column block and phase, and the chunk's weight.
    const int phase0 = c0 / a.co_blocks, cb0 = c0 - phase0 * a.co_blocks;
    int ld_s = 0, ld_ks = 0, ld_phase = phase0, ld_cb = cb0;
    const int64_t w_group = (int64_t)g * KG * a.cout_g * CPG;  // group g's rows of a phase
    const int64_t w_step = (int64_t)BKG * a.cout_g * CPG;      // one k step's rows
    const T* ld_w =
        wm + ldg_i64(a.table + (int64_t)ld_phase * PHASECONV_TABLE_STRIDE + PT_MOFS) + w_group;
    auto load_next = [&]() {
      const int co0 = ld_cb * kShBN;
      const T* wb = ld_w + ld_ks * w_step;
      const uint32_t dst = sb + (uint32_t)(ld_s % STAGES) * B_STAGE;
#pragma unroll
      for (int it = 0; it < BKG * kShBN / kShThreads; ++it) {
        const int v = tid + it * kShThreads;
        const int kg = v / kShBN, col = v % kShBN;
        const bool ok = co0 + col < a.cout_g;
        const T* src = wb + ((int64_t)kg * a.cout_g + co0 + col) * CPG;
        cp_async16_cg(dst + (uint32_t)v * 16, ok ? (const void*)src : a.wm, ok);
      }
      ++ld_s;
      if (++ld_ks == KS) {  // the next chunk: the next column block, or the next phase
        ld_ks = 0;
        if (++ld_cb == a.co_blocks) {
          ld_cb = 0;
          ++ld_phase;
          if (ld_s < steps)
            ld_w = wm + ldg_i64(a.table + (int64_t)ld_phase * PHASECONV_TABLE_STRIDE +
                                PT_MOFS) + w_group;
        }
      }
    };
#pragma unroll
    for (int s = 0; s < AHEAD; ++s) {
      if (s < steps) load_next();
      cp_async_commit();  // A joins step 0's group
    }

    float acc[MT][NT][4];
    const int nchunks = steps / KS;
    int ep_phase = phase0, ep_cb = cb0;  // the chunk whose outputs are stored next
    for (int i = 0, s = 0; i < nchunks; ++i) {
      if constexpr (!WG) zero_acc(acc);  // (wgmma: the chunk's first batch overwrites)
      for (int ks = 0; ks < KS; ++ks, ++s) {
        cp_async_wait<AHEAD - 1>();
        if constexpr (WG) phaseconv_wgmma::fence_proxy_async();  // the copies, visible to wgmma
        // step s (and A) landed for every thread; every warp is past the stage step s + AHEAD
        // takes (mma.sync: read at step s - 1; wgmma: by batch s - 2, complete) and the last
        // chunk's staged stores
        __syncthreads();
        if (s + AHEAD < steps) load_next();  // step s + AHEAD
        cp_async_commit();
        const uint32_t sB = sb + (uint32_t)(s % STAGES) * B_STAGE;
        if constexpr (WG) {
          float(&d)[NT * 4] = reinterpret_cast<float(&)[NT * 4]>(acc);
          wgmma_k_step<T, kShBN, BKG>(
              d, sa + (uint32_t)ks * A_SLAB + (uint32_t)(warp >> 2) * 64 * 128, sB, ks == 0);
          phaseconv_wgmma::wait<1>();  // batch s stays in flight while step s + 1 is waited for
          phaseconv_wgmma::fence_operand(d);
        } else {
#pragma unroll
          for (int kk = 0; kk < BKG / 2; ++kk) {
            uint32_t af[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
              const int row = (wm_ * MT + mt) * 16 + (lane & 15);
              const int c = kk * 2 + (lane >> 4);
              ldsm_x4(af[mt], sa + (uint32_t)ks * A_SLAB + (uint32_t)row * 128 +
                                  ((uint32_t)(c ^ (row & 7)) << 4));
            }
            uint32_t bf[NT][2];
            gemm_b_frags<NT, kShBN>(bf, sB, kk, wn, lane);
            mma_tiles<T>(acc, af, bf);
          }
        }
      }
      if constexpr (WG) {
        float(&d)[NT * 4] = reinterpret_cast<float(&)[NT * 4]>(acc);
        phaseconv_wgmma::wait<0>();  // the chunk's sums, read below
        phaseconv_wgmma::fence_operand(d);
      }
      // the chunk's outputs, staged [row][8-channel chunk ^ (row & 7)]
      const int phase = ep_phase, co0 = ep_cb * kShBN;
      if (++ep_cb == a.co_blocks) {  // the next chunk's
        ep_cb = 0;
        ++ep_phase;
      }
      float bv[NT][2];
      gemm_bias<T, NT>(a, g, co0, wn, lane, bv);
      gemm_stage_cl<T, MT, NT, kShBN>(acc, bv, s_c, 1, 0, wm_, wn, lane);
      __syncthreads();
      const int64_t* e = a.table + (int64_t)phase * PHASECONV_TABLE_STRIDE;
      const int64_t phase_ofs =
          ((ldg_i64(e + PT_RES_D) * a.out_h + ldg_i64(e + PT_RES_H)) * a.out_w +
           ldg_i64(e + PT_RES_W)) * a.c_out + co0;
      const int cols = min(kShBN, a.cout_g - co0);
#pragma unroll
      for (int it = 0; it < kShBM * (kShBN / 8) / kShThreads; ++it) {
        const int f = tid + it * kShThreads;
        const int r = f >> 3, j = f & 7;
        const int64_t yo = s_yo[r];
        if (yo < 0 || j * 8 >= cols) continue;
        const uint4 v = *reinterpret_cast<const uint4*>(s_c + r * kShBN + (j ^ (r & 7)) * 8);
        *reinterpret_cast<uint4*>(y + yo + phase_ofs + j * 8) = v;
        nonfinite |= !all_finite<T>(v);
      }
    }
    cp_async_wait<0>();
    __syncthreads();  // the next tile rewrites A, the stages and the row table
  }
  if (nonfinite) *a.ex.flag = 1;  // the fix-up recomputes those (phase_conv_exact.cuh)
}

// ---------------------------------------------------------------- implicit-GEMM host side

template <typename T, int MT, int NT, int WM, int WN, int BKG, bool WG = false>
cudaError_t launch_gemm_t(const GemmArgs& a, const GemmCfg& c, cudaStream_t stream) {
  constexpr int kind = WG ? (WM == 16 ? 5 : 4) : 0;  // the stage count's key
  constexpr int GS = gemm_pipeline_stages(kind, true), S1 = gemm_pipeline_stages(kind, false);
  void (*kern)(const GemmArgs) = nullptr;
  if constexpr (std::is_same<T, float>::value) {  // 3xTF32: see gemm_cl_kernel
    if (WG || c.a_ncdhw || c.wgroup || !c.tf32) return cudaErrorInvalidConfiguration;
    if constexpr (!WG)
      kern = c.flush ? gemm_cl_kernel<T, MT, NT, WM, WN, S1, false, false, BKG, false, true>
                     : gemm_cl_kernel<T, MT, NT, WM, WN, S1, false, false, BKG, false, false>;
  } else if constexpr (WG && WM == 16) {  // one phase a block, its output staged in the stages
    if (c.a_ncdhw || c.wgroup) return cudaErrorInvalidConfiguration;
    kern = gemm_cl_kernel<T, MT, NT, WM, WN, S1, true, false, BKG, true>;
  } else if constexpr (WG) {  // channels-last A only
    if (c.a_ncdhw) return cudaErrorInvalidConfiguration;
    kern = c.wgroup ? gemm_cl_kernel<T, MT, NT, WM, WN, GS, true, false, BKG, true>
                    : gemm_cl_kernel<T, MT, NT, WM, WN, S1, false, false, BKG, true>;
  } else {
    kern = c.wgroup ? (c.a_ncdhw ? gemm_cl_kernel<T, MT, NT, WM, WN, GS, true, true, BKG, false>
                                 : gemm_cl_kernel<T, MT, NT, WM, WN, GS, true, false, BKG, false>)
                    : (c.a_ncdhw ? gemm_cl_kernel<T, MT, NT, WM, WN, S1, false, true, BKG, false>
                                 : gemm_cl_kernel<T, MT, NT, WM, WN, S1, false, false, BKG, false>);
  }
  if (c.total_blocks == 0) return cudaSuccess;
  return launch_kernel(kern, c.grid, WM * WN * 32, c.smem, stream, a);
}


template <typename T>
cudaError_t run_gemm(const PhaseConvFwdParams& p, const GemmCfg& c, cudaStream_t stream) {
  if ((p.x_channels_last != 0) == c.a_ncdhw) return cudaErrorInvalidValue;
  if (p.weight_cl != nullptr && (c.kind < 8 || c.kind > 11)) return cudaErrorInvalidValue;
  GemmArgs a;
  set_geometry(a, p);
  a.wm = p.weight_mma;
  a.num_phases = (int)(p.stride_d * p.stride_h * p.stride_w);
  a.G = a.cin_g / (16 / (int)sizeof(T));  // 16-byte channel groups (C_in/g a multiple of 8)
  a.m_tiles = c.m_tiles; a.co_blocks = c.co_blocks;
  a.y_even = (p.out_w % 2 == 0 && reinterpret_cast<uintptr_t>(p.y) % 4 == 0) ? 1 : 0;
  a.y_cl = p.y_channels_last;
  a.y_vec = (a.y_cl && p.c_out % 8 == 0 && a.cout_g % 8 == 0 &&
             reinterpret_cast<uintptr_t>(p.y) % 16 == 0) ? 1 : 0;
  a.in_sd = (int)p.in_stride_d; a.in_sh = (int)p.in_stride_h; a.in_sw = (int)p.in_stride_w;
  a.total_blocks = c.total_blocks;
  a.G_groups = (int)p.groups;
  a.chunks = c.chunks; a.chunks_per_block = c.chunks_per_block;
  a.box_d = c.box_d; a.box_h = c.box_h; a.box_w = c.box_w;
  a.box_nd = c.box_nd; a.box_nh = c.box_nh; a.box_nw = c.box_nw;
  if (c.kind >= 8 && c.kind <= 11) {  // the TMA tiles: 16-bit, channels-last A, C_in/g % 32 == 0
#if defined(PHASECONV_SM90A)
    if constexpr (std::is_same<T, float>::value) {
      return cudaErrorInvalidConfiguration;
    } else {
      const int mr = gemm_tma_rows(c.kind) / 128;
      if (c.a_ncdhw || (c.bkg != 8 && c.bkg != 4) || a.G % c.bkg != 0 || c.BM != 128 * mr ||
          c.box_d * c.box_h * c.box_w != c.BM)
        return cudaErrorInvalidConfiguration;
      if (c.total_blocks == 0) return cudaSuccess;
      PhaseConvTensorMap amap, bmap;
      // (the input gradient reads grad_y at stride x grad_x's voxel: the box steps so); a
      // k step's channels fill one swizzled row: 64 (128 bytes) or 32 (64 bytes)
      cudaError_t err = phase_conv_tma_encode_box(&amap, p.x, p.n, p.in_d, p.in_h, p.in_w,
                                                  p.c_in, 8 * c.bkg, c.box_w, c.box_h, c.box_d,
                                                  a.in_sw, a.in_sh, a.in_sd, 16 * c.bkg);
      if (err != cudaSuccess) return err;
      if (p.weight_cl != nullptr) {
        // the weight (C_in, C_out/g, kD, kH, kW) in place (phase_conv_fwd_weight_in_place,
        // phase_conv_bwd_input_weight_in_place) at one kernel tap a k step: the forward's
        // BKG * 8 input channels x BN output channels (boxes of 64 columns, or 32), the input
        // gradient's BN input channels x BKG * 8 output channels (its k step)
        const bool gi = p.nsub != 0;
        if (!gi && c.BN != 32 && c.BN % 64 != 0) return cudaErrorInvalidConfiguration;
        const int64_t c_in = gi ? p.c_out : p.c_in, cout_g = gi ? a.cin_g : a.cout_g;
        // (C_in, kD, kH, kW): a dimension of one element any 16 bytes (never stepped)
        const int64_t kernel[3] = {p.exact.k[0], p.exact.k[1], p.exact.k[2]};
        const int64_t sizes[4] = {c_in, kernel[0], kernel[1], kernel[2]};
        const int64_t dims[4] = {0, 2, 3, 4};
        int64_t strides[4];
        for (int i = 0; i < 4; ++i) strides[i] = sizes[i] > 1 ? p.exact.bs[dims[i]] : 8;
        err = phase_conv_tma_encode_weight_cl(&bmap, p.weight_cl, c_in, cout_g, kernel, strides,
                                              gi ? 8 * c.bkg : c.BN >= 64 ? 64 : 32,
                                              gi ? c.BN : 8 * c.bkg);
        if (err != cudaSuccess) return err;
        if (gi) {  // the kernel's taps in order
          a.kt_d = a.kt_h = a.kt_w = -1;
          return launch_gemm_tma_kind<T, kBWeightK>(a, c, amap, bmap, stream);
        }
        a.kt_d = (int)(p.stride_d / std::gcd(p.stride_d, p.exact.d[0]));
        a.kt_h = (int)(p.stride_h / std::gcd(p.stride_h, p.exact.d[1]));
        a.kt_w = (int)(p.stride_w / std::gcd(p.stride_w, p.exact.d[2]));
        return launch_gemm_tma_kind<T, kBWeightMN>(a, c, amap, bmap, stream);
      }
      // the layout's rows: groups x every phase's taps x G, of C_out/g 16-byte vectors,
      // fetched as lines of up to 32 columns (512 bytes), not one 16-byte line a column
      a.b_fold = 32;
      while (a.cout_g % a.b_fold != 0 || c.BN % a.b_fold != 0) a.b_fold /= 2;
      err = phase_conv_tma_encode_rows(&bmap, p.weight_mma, p.groups * p.total_taps * a.G,
                                       a.cout_g, c.BN, c.bkg, a.b_fold);
      if (err != cudaSuccess) return err;
      return launch_gemm_tma_kind<T, kBPacked>(a, c, amap, bmap, stream);
    }
#else
    return cudaErrorInvalidConfiguration;
#endif
  }
  if (c.kind == 6 || c.kind == 7) {  // the shared-A tile: 16-bit, channels-last A and y
    if constexpr (std::is_same<T, float>::value) {
      return cudaErrorInvalidConfiguration;
    } else {
      if (c.a_ncdhw || !a.y_vec || a.G % 8 != 0) return cudaErrorInvalidConfiguration;
      if (c.total_blocks == 0) return cudaSuccess;
      if (c.kind == 6)
        return launch_kernel(gemm_shared_a_kernel<T, false>, c.grid, kShThreads, c.smem,
                             stream, a);
#if defined(PHASECONV_SM90A)
      return launch_kernel(gemm_shared_a_kernel<T, true>, c.grid, kShThreads, c.smem, stream,
                           a);
#else
      return cudaErrorInvalidConfiguration;
#endif
    }
  }
  switch (c.kind * 2 + (c.bkg == 8 ? 1 : 0)) {
    case 0: return launch_gemm_t<T, 2, 4, 4, 1, 4>(a, c, stream);
    case 2: return launch_gemm_t<T, 4, 4, 2, 2, 4>(a, c, stream);
    case 4: return launch_gemm_t<T, 4, 4, 2, 4, 4>(a, c, stream);
    case 5: return launch_gemm_t<T, 4, 4, 2, 4, 8>(a, c, stream);
    case 6: return launch_gemm_t<T, 2, 4, 4, 2, 4>(a, c, stream);
    case 7: return launch_gemm_t<T, 2, 4, 4, 2, 8>(a, c, stream);
#if defined(PHASECONV_SM90A)
    case 9:  // the warpgroup kernel, 64-channel k steps
      switch (c.BN) {
        case 32: return launch_gemm_t<T, 1, 4, 8, 1, 8, true>(a, c, stream);
        case 64: return launch_gemm_t<T, 1, 8, 8, 1, 8, true>(a, c, stream);
        case 128: return launch_gemm_t<T, 1, 16, 8, 1, 8, true>(a, c, stream);
      }
      break;
    case 11:  // four warpgroups: 256 rows, BN >= 64 (every thread copies B)
      switch (c.BN) {
        case 64: return launch_gemm_t<T, 1, 8, 16, 1, 8, true>(a, c, stream);
        case 128: return launch_gemm_t<T, 1, 16, 16, 1, 8, true>(a, c, stream);
      }
      break;
#endif
  }
  return cudaErrorInvalidConfiguration;
}

template <typename T>
cudaError_t run_gemm_typed(const PhaseConvFwdParams& p, const GemmCfg& c, cudaStream_t stream) {
  return run_gemm<T>(p, c, stream);
}

}  // namespace phaseconv
