// phaseconv CUDA forward engine: the implicit GEMM's shared parts (the arguments, the loader,
// the row tables, the write-out, the warpgroup k step), included by its translation units:
// phase_conv_fwd_gemm_{float,half,bfloat16}.cu (phase_conv_fwd_gemm_tiles.cuh: the mma.sync and
// warpgroup cp.async tiles, the shared-A tile and run_gemm, a unit per dtype) and
// phase_conv_fwd_gemm_tma_*.cu (the TMA tiles of sm_90a builds, a unit per source of B), compiled
// in parallel.  CUDA headers only.
#pragma once

#include "phase_conv_fwd_common.cuh"
#include "phase_conv_tma.cuh"
#include "phase_conv_wgmma.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

namespace phaseconv {

// ---------------------------------------------------------------- implicit-GEMM kernel
// For wide layers (C_in/g a multiple of 8, channels-last input): every phase is an implicit
// GEMM, rows = the phase's output voxels over the batch (n, jd, jh, jw),
// columns = C_out/g, reduction = taps x C_in/g.  A block owns BM rows x BN columns of one
// phase and walks the reduction in k steps of (one tap, 32 channels): per step it copies
// the BM input rows (16-byte cp.async straight from the channels-last input, zero-filled
// outside it) and the 32 x BN weights into one of STAGES shared-memory buffers, so the copies
// of the next STAGES-1 steps overlap the mma.sync of this one.  Blocks are ordered
// phase-fastest: the phases of one row tile run together and their interleaved output
// writes merge in L2.  Each output is written once (no atomics, deterministic).
// WG (sm_90a builds): the same block with wgmma instead of mma.sync.  Two warpgroups each
// own 64 rows x BN and read A and B straight from the stages (64-channel k steps: A's rows
// are one 128-byte swizzled row each, B's 8 x 16-byte core matrices the loader's
// [group][column] runs); one batch of wgmma stays in flight while the next step is waited
// for, so a stage is refilled two steps after it was read (STAGES - 2 steps of copies ahead).
// float32 (T float): the mma.sync tiles on the same stages, a 16-byte group holding 4
// channels instead of 8.  ldmatrix's 8 x 16-byte matrices then hold 8 x 4 floats, which are
// the m16n8k8 TF32 fragments (A: rows x channels 0-3 and 4-7; B: columns x channels), so a
// pair of groups is one k8 step of 3xTF32 (phase_conv_mma.cuh: mma_3xtf32); FL flushes the
// accumulators every kFlushTerms terms.  One phase a block, A channels-last.
struct GemmArgs : FwdGeometry {  // x: the channels-last input (N, D, H, W, C_in)
  const void* wm;  // pack()'s tensor-core weight layout
  int num_phases, G, m_tiles, co_blocks;
  // input steps per output step: 1 for the forward's phases; the stride for the input
  // gradient, one stride-1 "phase" that reads grad_y at stride * j - padding + tap * dilation
  int in_sd, in_sh, in_sw;
  int y_even;  // out_w and the output's base are even: pairs of W phases store 4-byte words
  int y_cl;    // y is (N, D, H, W, C_out): a channel's stride 1, a W step's C_out
  int y_vec;   // y_cl with C_out, C_out/g and y's base 16-byte aligned: 16-byte stores
  int G_groups;  // the layer's groups (kinds 6, 7)
  int chunks, chunks_per_block;  // kinds 6, 7: (phase, column block) chunks, and per block
  int64_t total_blocks;
  // kind 8: a row tile is a box of (box_d, box_h, box_w) output voxels of one phase and sample,
  // box_nd x box_nh x box_nw boxes covering the largest phase; the weight layout's first row
  // (16-byte vector rows of C_out/g columns) of each group is (MOFS / (C_out/g * 8) + g *
  // taps * G); its boxes fetch b_fold columns (b_fold x 16 bytes) a line
  int box_d, box_h, box_w, box_nd, box_nh, box_nw, b_fold;
  // the TMA tiles reading a weight in place: kernel taps between a phase's consecutive taps
  // per axis (TmaTile)
  int kt_d, kt_h, kt_w;
};

// Where a TMA tile's B comes from: the packed tensor-core layout's rows, or the weight itself
// (C_in, C_out/g, kD, kH, kW) with adjacent output channels (a channels_last_3d weight), read
// in place: MN-major by the forward (its columns are the output channels), K-major by the
// input gradient (its reduction runs over them).
enum TmaB { kBPacked = 0, kBWeightMN = 1, kBWeightK = 2 };

// XOR swizzle of the 16-byte chunks of row `row` of a channels-last A stage (rows of BKG
// chunks), so that ldmatrix's 8 rows x 16 bytes hit distinct banks.
template <int BKG> __device__ __forceinline__ int a_swz(int row) {
  return BKG == 4 ? ((row >> 1) & 3) : (row & 7);
}

// Row m of a phase's implicit GEMM -> (n, jd, jh, jw); 32-bit division when it fits.
__device__ __forceinline__ int64_t decode_row(int64_t m, int cw, int ch, int cd, int& jd,
                                              int& jh, int& jw) {
  if (m <= 0x7fffffffLL) {
    uint32_t q = (uint32_t)m;
    jw = (int)(q % (uint32_t)cw); q /= (uint32_t)cw;
    jh = (int)(q % (uint32_t)ch); q /= (uint32_t)ch;
    jd = (int)(q % (uint32_t)cd);
    return (int64_t)(q / (uint32_t)cd);
  }
  int64_t q = m;
  jw = (int)(q % cw); q /= cw;
  jh = (int)(q % ch); q /= ch;
  jd = (int)(q % cd);
  return q / cd;
}

// The copies of one k step (tap (td, th, tw), channel chunk kc) of a phase into a stage, by
// NTHR threads: A's BM rows x BKG 16-byte channel groups (zero-filled outside the input and
// past C_in/g) and B's BKG groups x BN columns.  The state advances one step per load: no
// divisions in the main loop.  A step's copies cost a 64-bit add, a predicate and the cp.async
// each: the source of a thread's A rows and B columns is set once per tap (a row outside the
// input at that tap points at x itself, a valid address for the zero-filling copy), and a
// step only adds its channel offset.  A thread's rows are NTHR / BKG apart, a multiple of 8,
// so they share one swizzle and their stage addresses differ by constants.
template <typename T, int BM, int BN, int BKG, int NTHR, bool A_NCDHW>
struct GemmLoader {
  static constexpr int CPG = 16 / (int)sizeof(T);  // channels of a 16-byte group
  static constexpr int A_IT = BM * BKG / NTHR, B_IT = BKG * BN / NTHR;
  static constexpr int MG = BM / 8;  // A_NCDHW: 8-row groups (16-byte vectors along W) per k row
  static constexpr int A_ROWS = NTHR / BKG;  // rows between a thread's A copies
  static constexpr int B_GRPS = NTHR / BN;   // channel groups between its B copies
  static_assert(A_IT * NTHR == BM * BKG && B_IT * NTHR == BKG * BN, "loader split");
  static_assert(A_ROWS % 8 == 0 && NTHR % BN == 0, "constant offsets between a thread's copies");
  const GemmArgs& a;
  const T* x;
  const T* wtap;  // the packed weight of the tap, this block's group
  int tid, ac, G, nkc, nk, Tw, Th, offw;
  int kc = 0, tw = 0, th = 0, dd = 0, dh = 0, dw;
  int64_t dofs;   // x offset of the tap
  int64_t in_plane;
  // channels-last A: row tid / BKG + i * A_ROWS's (n, d, h, w, group's first channel) at this
  // tap (x where the tap falls outside the input); the thread's chunk ac is added per step
  const T* arow[A_IT];
  bool arow_ok[A_IT];
  // B: this thread's column (co_base + tid % BN) and first channel group (tid / BN)
  int bgrp;
  bool bcol_ok;
  int64_t boff;    // element offset of (group bgrp, that column) in a tap's weight
  int64_t bstep;   // elements between a k step's weights (BKG groups)
  const T* wstep;  // the weight of this k step

  __device__ __forceinline__ GemmLoader(const GemmArgs& args, const int64_t* e, int g, int cb0,
                                        int t, const int4* s_rc, const int64_t* s_ro)
      : a(args), x(static_cast<const T*>(args.x)) {
    tid = t;
    ac = tid % BKG;  // A: channel group ac of rows tid / BKG + i * A_ROWS
    G = a.G;
    const int Td = (int)ldg_i64(e + PT_TAPS_D);
    Th = (int)ldg_i64(e + PT_TAPS_H);
    Tw = (int)ldg_i64(e + PT_TAPS_W);
    const int taps = Td * Th * Tw;
    offw = (int)ldg_i64(e + PT_OFF_W);
    nkc = (G + BKG - 1) / BKG;
    nk = taps * nkc;
    dw = offw;
    dofs = A_NCDHW ? (int64_t)offw : (int64_t)offw * a.c_in;
    in_plane = (int64_t)a.in_d * a.in_h * a.in_w;
    wtap = static_cast<const T*>(a.wm) + ldg_i64(e + PT_MOFS) +
           (int64_t)g * taps * G * a.cout_g * CPG;
    bgrp = tid / BN;
    bcol_ok = cb0 + tid % BN < a.cout_g;
    boff = ((int64_t)bgrp * a.cout_g + cb0 + tid % BN) * CPG;
    bstep = (int64_t)BKG * a.cout_g * CPG;
    set_tap(s_rc, s_ro);
  }

  // The sources of the tap the walk has reached (dd, dh, dw, dofs, wtap set).
  __device__ __forceinline__ void set_tap(const int4* s_rc, const int64_t* s_ro) {
    wstep = wtap;
    if constexpr (!A_NCDHW) {
#pragma unroll
      for (int i = 0; i < A_IT; ++i) {
        const int row = tid / BKG + i * A_ROWS;
        const int4 rc = s_rc[row];
        arow_ok[i] = ((unsigned)(rc.x + dd) < (unsigned)a.in_d) &
                     ((unsigned)(rc.y + dh) < (unsigned)a.in_h) &
                     ((unsigned)(rc.z + dw) < (unsigned)a.in_w);
        arow[i] = arow_ok[i] ? x + s_ro[row] + dofs : x;
      }
    }
  }

  __device__ __forceinline__ void load(uint32_t sA, uint32_t sB, const int4* s_rc,
                                       const int64_t* s_ro, const int4* s_grc,
                                       const int64_t* s_gro) {
    const bool cvalid = kc * BKG + ac < G;
    if (A_NCDHW) {  // A^T tile [32 k][BM m], 16-byte chunks swizzled by k & 7
#pragma unroll
      for (int i = 0; i < A_IT; ++i) {
        const int v = tid + i * NTHR;
        const int kk = v / MG, mg = v % MG;
        const int4 rc = s_grc[mg];
        const bool ok = (kc * BKG * CPG + kk < a.cin_g) &
                        ((unsigned)(rc.x + dd) < (unsigned)a.in_d) &
                        ((unsigned)(rc.y + dh) < (unsigned)a.in_h) &
                        ((unsigned)(rc.z + dw) < (unsigned)a.in_w);
        const T* src = x + s_gro[mg] + dofs + (int64_t)(kc * BKG * CPG + kk) * in_plane;
        cp_async16_ca(sA + kk * (BM * 2) + ((mg ^ (kk & 7)) << 4),
                      ok ? (const void*)src : (const void*)x, ok);
      }
    } else {
      // past C_in/g the copy zero-fills and reads at the row's start, inside the input
      const int cofs = cvalid ? (kc * BKG + ac) * CPG : 0;
      const int row0 = tid / BKG;
      const uint32_t dst = sA + row0 * (BKG * 16) + ((ac ^ a_swz<BKG>(row0)) << 4);
#pragma unroll
      for (int i = 0; i < A_IT; ++i)
        cp_async16_ca(dst + i * (A_ROWS * BKG * 16), arow[i] + cofs, arow_ok[i] & cvalid);
    }
#pragma unroll
    for (int j = 0; j < B_IT; ++j) {
      const bool ok = bcol_ok & (kc * BKG + bgrp + j * B_GRPS < G);
      const T* src = wstep + boff + (int64_t)j * B_GRPS * a.cout_g * CPG;
      cp_async16_cg(sB + (tid + j * NTHR) * 16, ok ? (const void*)src : (const void*)wtap, ok);
    }
    wstep += bstep;
    if (++kc == nkc) {  // next tap
      kc = 0;
      wtap += (int64_t)G * a.cout_g * CPG;
      if (++tw == Tw) {
        tw = 0;
        if (++th == Th) {
          th = 0;
          dd += a.pdd;
        }
      }
      dh = th * a.pdh;
      dw = offw + tw * a.pdw;
      dofs = ((int64_t)dd * a.in_h + dh) * a.in_w + dw;
      if (!A_NCDHW) dofs *= a.c_in;
      set_tap(s_rc, s_ro);
    }
  }
};

// A block's tile: (unit, row tile, C_out block, group) from its index, phase-fastest, and the
// unit's first phase (table order is row-major over (rd, rh, rw): the W phases of one (rd, rh)
// are consecutive, residue 0 first, which has the most outputs).
struct GemmTile {
  int unit, mtile, cb, g;
  const int64_t* e0;  // the unit's first phase's table row
  int rd, rh, cd, ch, cw, offd, offh, co_base;
  int64_t Mp, m0;     // the phase's rows over the batch, the tile's first row

  // false: the tile lies past the phase's rows (uniform over the block)
  __device__ __forceinline__ bool decode(const GemmArgs& a, int64_t blk, int nw, int BM, int BN) {
    const int units = a.num_phases / nw;  // (rd, rh) pairs, or phases
    if (a.total_blocks <= 0xffffffffLL) {  // 32-bit decode: 64-bit division is slow
      uint32_t r = (uint32_t)blk;
      unit = (int)(r % (uint32_t)units); r /= (uint32_t)units;
      mtile = (int)(r % (uint32_t)a.m_tiles); r /= (uint32_t)a.m_tiles;
      cb = (int)(r % (uint32_t)a.co_blocks);
      g = (int)(r / (uint32_t)a.co_blocks);
    } else {
      int64_t r = blk;
      unit = (int)(r % units); r /= units;
      mtile = (int)(r % a.m_tiles); r /= a.m_tiles;
      cb = (int)(r % a.co_blocks);
      g = (int)(r / a.co_blocks);
    }
    e0 = a.table + (int64_t)unit * nw * PHASECONV_TABLE_STRIDE;
    rd = (int)ldg_i64(e0 + PT_RES_D);
    rh = (int)ldg_i64(e0 + PT_RES_H);
    cd = axis_count(a.out_d, rd, a.sd);
    ch = axis_count(a.out_h, rh, a.sh);
    cw = axis_count(a.out_w, (int)ldg_i64(e0 + PT_RES_W), a.sw);
    Mp = a.nbatch * cd * ch * cw;
    m0 = (int64_t)mtile * BM;
    offd = (int)ldg_i64(e0 + PT_OFF_D);
    offh = (int)ldg_i64(e0 + PT_OFF_H);
    co_base = cb * BN;
    return m0 < Mp;
  }
};

// The output element of phase (rd, rh, rw = 0) output (n, jd, jh, jw), group g's channel
// co_base (s_yo's entries; the W residue is added at the store); out_plane: D x H x W of y.
__device__ __forceinline__ int64_t gemm_y_offset(const GemmArgs& a, int64_t out_plane,
                                                 int64_t n, int jd, int jh, int jw, int rd,
                                                 int rh, int g, int co_base) {
  const int64_t pix = ((int64_t)(rd + a.sd * jd) * a.out_h + (rh + a.sh * jh)) * a.out_w +
                      (int64_t)a.sw * jw;
  return a.y_cl ? (n * out_plane + pix) * a.c_out + (int64_t)g * a.cout_g + co_base
                : (n * a.c_out + (int64_t)g * a.cout_g + co_base) * out_plane + pix;
}

// Row m of a tile of the unit (rd, rh): s_rc, s_ro and s_yo's entries (see gemm_cl_kernel).
template <bool A_NCDHW>
__device__ __forceinline__ void gemm_row(const GemmArgs& a, int64_t m, int64_t Mp, int cd, int ch,
                                         int cw, int rd, int rh, int offd, int offh, int g,
                                         int co_base, int4& rc, int64_t& ro, int64_t& yo) {
  rc = make_int4(-(1 << 30), 0, 0, 0);
  ro = 0;
  yo = -1;
  if (m >= Mp) return;
  const int64_t out_plane = (int64_t)a.out_d * a.out_h * a.out_w;
  int jd, jh, jw;
  const int64_t n = decode_row(m, cw, ch, cd, jd, jh, jw);
  rc = make_int4(a.in_sd * jd + offd, a.in_sh * jh + offh, a.in_sw * jw, jw);
  if (A_NCDHW)  // (n, group's first channel, d, h, w)
    ro = (((n * a.c_in + (int64_t)g * a.cin_g) * a.in_d + rc.x) * a.in_h + rc.y) * a.in_w + rc.z;
  else          // (n, d, h, w, group's first channel)
    ro = (((n * a.in_d + rc.x) * a.in_h + rc.y) * a.in_w + rc.z) * a.c_in + (int64_t)g * a.cin_g;
  yo = gemm_y_offset(a, out_plane, n, jd, jh, jw, rd, rh, g, co_base);
}

// The bias of a thread's accumulator columns (zero past C_out/g or without bias).
template <typename T, int NT>
__device__ __forceinline__ void gemm_bias(const GemmArgs& a, int g, int co_base, int wn, int lane,
                                          float (&bv)[NT][2]) {
  const T* __restrict__ bias = static_cast<const T*>(a.bias);
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int co = co_base + (wn * NT + j) * 8 + (lane & 3) * 2 + c;
      bv[j][c] = (bias != nullptr && co < a.cout_g)
                     ? to_acc<float>(ldg(bias + g * a.cout_g + co)) : 0.f;
    }
}

// The accumulators (+ bias) of a warp (wm_, wn) staged channels-last for 16-byte stores:
// output row r's slot r * nw + rw (nw W phases a row), [slot][8-channel chunk ^ (slot & CSWZ)],
// pairs of channels a thread (mma.sync / wgmma fragment layout).
template <typename T, int MT, int NT, int BN>
__device__ __forceinline__ void gemm_stage_cl(const float (&acc)[MT][NT][4],
                                              const float (&bv)[NT][2], T* s_c, int nw, int rw,
                                              int wm_, int wn, int lane) {
  constexpr int CH = BN / 8, CSWZ = CH < 8 ? CH - 1 : 7;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int rq = ((wm_ * MT + mt) * 16 + (lane >> 2) + half * 8) * nw + rw;
      T* cp = s_c + rq * BN + (lane & 3) * 2;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int chunk = (wn * NT + j) ^ (rq & CSWZ);
        const T pair[2] = {from_acc<T>(acc[mt][j][half * 2] + bv[j][0]),
                           from_acc<T>(acc[mt][j][half * 2 + 1] + bv[j][1])};
        *reinterpret_cast<uint32_t*>(cp + chunk * 8) = *reinterpret_cast<const uint32_t*>(pair);
      }
    }
}

// The accumulators of W phase rw of a tile (warp (wm_, wn), mma.sync / wgmma fragment layout:
// rows lane/4 and lane/4 + 8 of each m tile, columns 2*(lane%4) + {0, 1} of each n tile):
// WGROUP into s_c (channels-last output: [row * nw + rw][chunk ^ swizzle] pairs of channels;
// else [col][row * nw + rw]), written out by gemm_write_tile; else straight into y.
template <typename T, int MT, int NT, int WARPS_M, int BN, bool WGROUP>
__device__ __forceinline__ void gemm_store_acc(const GemmArgs& a, const float (&acc)[MT][NT][4],
                                               const float (&bv)[NT][2], T* s_c,
                                               const int4* s_rc, const int64_t* s_yo, int nw,
                                               int rw, int wm_, int wn, int lane, int co_base,
                                               bool& nonfinite) {
  constexpr int BM = WARPS_M * MT * 16;
  const int col0 = wn * NT * 8 + (lane & 3) * 2;
  if (WGROUP && a.y_cl) {
    gemm_stage_cl<T, MT, NT, BN>(acc, bv, s_c, nw, rw, wm_, wn, lane);
  } else if (WGROUP) {
    const int c_cs = BM * nw + 8;  // s_c channel stride (elements)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        T* cp = s_c + ((wm_ * MT + mt) * 16 + (lane >> 2) + half * 8) * nw + rw;
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int c = 0; c < 2; ++c)
            cp[(col0 + j * 8 + c) * c_cs] = from_acc<T>(acc[mt][j][half * 2 + c] + bv[j][c]);
      }
  } else {
    T* __restrict__ y = static_cast<T*>(a.y);
    const int64_t out_plane = (int64_t)a.out_d * a.out_h * a.out_w;
    const int64_t y_cs = a.y_cl ? 1 : out_plane;  // y's strides: one channel,
    const int64_t y_ws = a.y_cl ? a.c_out : 1;    // one W position
    const bool full_cols = co_base + BN <= a.cout_g;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int row = (wm_ * MT + mt) * 16 + (lane >> 2) + half * 8;
        const int64_t yo = s_yo[row];
        if (yo < 0 || a.sw * s_rc[row].w + rw >= a.out_w) continue;
        T* yp = y + yo + rw * y_ws + col0 * y_cs;
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
          for (int c = 0; c < 2; ++c)
            if (full_cols || co_base + col0 + j * 8 + c < a.cout_g) {
              const T out = from_acc<T>(acc[mt][j][half * 2 + c] + bv[j][c]);
              yp[(j * 8 + c) * y_cs] = out;
              nonfinite |= !finite_value(out);
            }
      }
    }
  }
}

// Writes a tile's grouped W phases from s_c to y (after a barrier over the NTHR threads):
// channels-last, a thread stores one 8-channel chunk of an output; else a warp stores 32 rows
// x nw values (pairs of W phases as 4-byte words).  rw0: the W residue of s_c's first phase
// (0 where the block runs all W phases).
template <typename T, int BM, int BN, int NTHR>
__device__ __forceinline__ void gemm_write_tile(const GemmArgs& a, const T* s_c, const int4* s_rc,
                                                const int64_t* s_yo, int nw, int rw0, int co_base,
                                                int tid, bool& nonfinite) {
  static_assert(NTHR >= BM && NTHR % BM == 0, "write-out: whole rows per thread");
  constexpr int CH = BN / 8, CSWZ = CH < 8 ? CH - 1 : 7;
  T* __restrict__ y = static_cast<T*>(a.y);
  const int64_t out_plane = (int64_t)a.out_d * a.out_h * a.out_w;
  const int cols = min(BN, a.cout_g - co_base);
  if (a.y_cl) {
    const int64_t y_ws = a.c_out;
    for (int f = tid; f < BM * nw * CH; f += NTHR) {
      const int chunk = f % CH, rq = f / CH, row = rq / nw, q = rq - row * nw + rw0;
      const int64_t yo = s_yo[row];
      if (chunk * 8 >= cols || yo < 0 || a.sw * s_rc[row].w + q >= a.out_w) continue;
      const T* src = s_c + rq * BN + (chunk ^ (rq & CSWZ)) * 8;
      T* dst = y + yo + q * y_ws + chunk * 8;
      if (a.y_vec && chunk * 8 + 8 <= cols) {
        const uint4 v = *reinterpret_cast<const uint4*>(src);
        *reinterpret_cast<uint4*>(dst) = v;
        nonfinite |= !all_finite<T>(v);
      } else {
        for (int c = 0; c < 8 && chunk * 8 + c < cols; ++c) {
          dst[c] = src[c];
          nonfinite |= !finite_value(src[c]);
        }
      }
    }
  } else {
    const int c_cs = BM * nw + 8;
    const int row = tid % BM;
    const int64_t yo = s_yo[row];
    if (yo < 0) return;
    const int ow = a.sw * s_rc[row].w + rw0;
    const bool pair = nw == 2 && ow + 2 <= a.out_w && a.y_even;
    constexpr int CSTEP = NTHR / BM;
    int col = tid / BM;
    const T* src = s_c + col * c_cs + row * nw;
    T* dst = y + yo + rw0 + (int64_t)col * out_plane;
    for (; col < cols; col += CSTEP, src += CSTEP * c_cs, dst += CSTEP * out_plane) {
      if (pair) {
        const uint32_t v2 = *reinterpret_cast<const uint32_t*>(src);
        *reinterpret_cast<uint32_t*>(dst) = v2;
        nonfinite |= !all_finite<T>(v2);
      } else {
        for (int q = 0; q < nw && ow + q < a.out_w; ++q) {
          dst[q] = src[q];
          nonfinite |= !finite_value(src[q]);
        }
      }
    }
  }
}

// Blocks a multiprocessor the launch bounds ask for: fewer for 3xTF32 (split operands, and
// flushed accumulators twice as many registers).
constexpr int gemm_min_blocks(int warps, int mt_nt, bool tf32) {
  return (warps >= 16 || (warps >= 8 && mt_nt >= 16)) ? 1
         : warps >= 8 ? (tf32 ? 1 : 2)
         : mt_nt >= 16 ? (tf32 ? 2 : 3)
         : (tf32 ? 3 : 4);
}

// A warp's B fragments of one k16 step from a [16-byte group][column] stage (groups 2 ks and
// 2 ks + 1; the warp's NT n tiles from column wn * NT * 8), two n tiles an ldmatrix.
template <int NT, int BN>
__device__ __forceinline__ void gemm_b_frags(uint32_t (&bf)[NT][2], uint32_t sB, int ks, int wn,
                                             int lane) {
  const int bro = lane & 7, bhalf = (lane >> 3) & 1, bj = lane >> 4;
#pragma unroll
  for (int j = 0; j < NT; j += 2) {
    uint32_t rr[4];
    const int row = (ks * 2 + bhalf) * BN + (wn * NT + j + bj) * 8 + bro;
    ldsm_x4(rr, sB + row * 16);
    bf[j][0] = rr[0]; bf[j][1] = rr[1]; bf[j + 1][0] = rr[2]; bf[j + 1][1] = rr[3];
  }
}

// One k step (BKG 16-byte groups) of a warpgroup's MR 64-row blocks x BN on wgmma, committed
// as one batch: A from rows of BKG * 16 bytes in the swizzle of that width (BKG 8: 128-byte,
// BKG 4: 64-byte; sA: the warpgroup's first row), B from a [group][column] stage (one B for
// all MR blocks), or from a weight read in place (TmaB): kBWeightMN, BKG * 8 rows of BN
// channels, MN-major: slabs of 64 columns in 128-byte rows, 128-byte swizzle (BN 32: one slab
// of 64-byte rows, 64-byte swizzle); kBWeightK, BN rows of BKG * 16 bytes in A's swizzle;
// `first` overwrites the accumulators instead of adding.
template <typename T, int BN, int BKG, int MR, int R, int BSRC = kBPacked>
__device__ __forceinline__ void wgmma_k_step_rows(float (&d)[MR][R], uint32_t sA, uint32_t sB,
                                                  bool first) {
  namespace wg = phaseconv_wgmma;
  static_assert(BKG == 4 || BKG == 8, "rows of 64 or 128 bytes");
  constexpr int ROW = BKG * 16;
  constexpr int SWIZZLE = BKG == 8 ? wg::kSwizzle128 : wg::kSwizzle64;
  constexpr int B_ROW = BN >= 64 ? 128 : 64, B_SLAB = BKG * 8 * B_ROW;  // (kBWeightMN)
  constexpr int B_SWIZZLE = BN >= 64 ? wg::kSwizzle128 : wg::kSwizzle64;
#pragma unroll
  for (int i = 0; i < MR; ++i) wg::fence_operand(d[i]);
  wg::fence();
#pragma unroll
  for (int ks = 0; ks < BKG / 2; ++ks) {
#pragma unroll
    for (int i = 0; i < MR; ++i) {
      const uint64_t da = wg::smem_desc(sA + i * 64 * ROW + ks * 32, 16, 8 * ROW, SWIZZLE);
      const uint64_t db =
          BSRC == kBWeightMN ? wg::smem_desc(sB + ks * 16 * B_ROW, B_SLAB, 8 * B_ROW, B_SWIZZLE)
          : BSRC == kBWeightK ? wg::smem_desc(sB + ks * 32, 16, 8 * ROW, SWIZZLE)
                              : wg::smem_desc(sB + ks * 2 * BN * 16, BN * 16, 128,
                                              wg::kSwizzleNone);
      wg::Wgmma<T, BN, 0, BSRC == kBWeightMN ? 1 : 0>::run(d[i], da, db, !first || ks != 0);
    }
  }
  wg::commit();
}

// The same for one 64-row block (the cp.async warpgroup tiles).
template <typename T, int BN, int BKG, int R>
__device__ __forceinline__ void wgmma_k_step(float (&d)[R], uint32_t sA, uint32_t sB,
                                             bool first) {
  wgmma_k_step_rows<T, BN, BKG, 1>(reinterpret_cast<float(&)[1][R]>(d), sA, sB, first);
}

#if defined(PHASECONV_SM90A)
// The TMA tiles of kind c.kind (8-11), B from where BSRC says (TmaB): defined in
// phase_conv_fwd_gemm_tma.cuh, instantiated for 16-bit T in phase_conv_fwd_gemm_tma_*.cu.
template <typename T, int BSRC>
cudaError_t launch_gemm_tma_kind(const GemmArgs& a, const GemmCfg& c,
                                 const PhaseConvTensorMap& amap, const PhaseConvTensorMap& bmap,
                                 cudaStream_t stream);
#endif

}  // namespace phaseconv
