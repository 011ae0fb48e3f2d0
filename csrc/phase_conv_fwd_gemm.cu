#include "phase_conv_fwd_common.cuh"
#include "phase_conv_tma.cuh"
#include "phase_conv_wgmma.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <numeric>
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

template <typename T, int MT, int NT, int WARPS_M, int WARPS_N, int STAGES, bool WGROUP,
          bool A_NCDHW, int BKG, bool WG, bool FL = false>
__global__ void __launch_bounds__(WARPS_M * WARPS_N * 32,
                                  gemm_min_blocks(WARPS_M * WARPS_N, MT * NT,
                                                  std::is_same<T, float>::value))
gemm_cl_kernel(const GemmArgs a) {
  phaseconv_exact::let_fixup_start();
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
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
              for (int j = 0; j < NT; ++j)
                MmaOp<T>::run(acc[mt][j], af[mt], bf[j][0], bf[j][1]);
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


// ---------------------------------------------------------------- TMA tiles (kinds 8-11, sm_90a)
#if defined(PHASECONV_SM90A)
// The TMA kernels' dynamic shared memory from its first 1024-byte boundary: the stages'
// alignment (the swizzle's atoms; the plan adds the slack).
__device__ __forceinline__ unsigned char* tma_stages_base(unsigned char* smem_raw) {
  const uint32_t s_base = phaseconv_tma::smem_addr(smem_raw);
  return smem_raw + (((s_base + 1023u) & ~1023u) - s_base);
}

// A tile of the TMA kernels: (phase, box, sample, C_out block, group) from its index, phase
// fastest, and its phase's taps; false where the box lies past its phase (a smaller
// residue's).  nk: its k steps of BKG 16-byte groups.  kd0, kh0, kw0 (B read in place): the
// kernel tap of the phase's first tap per axis, its later taps a.kt_* apart (kernel tap
// kd0 - td kt_d): the forward's phase reads input offset off = (r + pad - k0 dil) / s at its
// first tap and steps back by s / gcd(s, dil) along the kernel; the input gradient's one
// sub-problem takes the kernel's taps in order (k0 0, kt -1).
struct TmaTile {
  const int64_t* e;  // the phase's table row
  int n, g, co_base, rd, rh, rw, cd, ch, cw, jd0, jh0, jw0, Td, Th, Tw, offd, offh, offw, nk;
  int kd0, kh0, kw0;
};

template <int BN, int BKG, int BSRC = kBPacked>
__device__ __forceinline__ bool tma_tile(const GemmArgs& a, uint32_t r, TmaTile& t) {
  const int phase = (int)(r % (uint32_t)a.num_phases); r /= (uint32_t)a.num_phases;
  const int bw = (int)(r % (uint32_t)a.box_nw); r /= (uint32_t)a.box_nw;
  const int bh = (int)(r % (uint32_t)a.box_nh); r /= (uint32_t)a.box_nh;
  const int bd = (int)(r % (uint32_t)a.box_nd); r /= (uint32_t)a.box_nd;
  t.n = (int)(r % (uint32_t)a.nbatch); r /= (uint32_t)a.nbatch;
  t.co_base = (int)(r % (uint32_t)a.co_blocks) * BN;
  t.g = (int)(r / (uint32_t)a.co_blocks);
  t.e = a.table + (int64_t)phase * PHASECONV_TABLE_STRIDE;
  t.rd = (int)ldg_i64(t.e + PT_RES_D); t.rh = (int)ldg_i64(t.e + PT_RES_H);
  t.rw = (int)ldg_i64(t.e + PT_RES_W);
  t.cd = axis_count(a.out_d, t.rd, a.sd); t.ch = axis_count(a.out_h, t.rh, a.sh);
  t.cw = axis_count(a.out_w, t.rw, a.sw);
  t.jd0 = bd * a.box_d; t.jh0 = bh * a.box_h; t.jw0 = bw * a.box_w;
  if (t.jd0 >= t.cd || t.jh0 >= t.ch || t.jw0 >= t.cw) return false;
  t.Td = (int)ldg_i64(t.e + PT_TAPS_D); t.Th = (int)ldg_i64(t.e + PT_TAPS_H);
  t.Tw = (int)ldg_i64(t.e + PT_TAPS_W);
  t.offd = (int)ldg_i64(t.e + PT_OFF_D); t.offh = (int)ldg_i64(t.e + PT_OFF_H);
  t.offw = (int)ldg_i64(t.e + PT_OFF_W);
  t.nk = t.Td * t.Th * t.Tw * (a.G / BKG);
  if constexpr (BSRC == kBWeightMN) {
    t.kd0 = (int)((t.rd + a.ex.p[0] - (int64_t)t.offd * a.sd) / a.ex.d[0]);
    t.kh0 = (int)((t.rh + a.ex.p[1] - (int64_t)t.offh * a.sh) / a.ex.d[1]);
    t.kw0 = (int)((t.rw + a.ex.p[2] - (int64_t)t.offw * a.sw) / a.ex.d[2]);
  } else {
    t.kd0 = t.kh0 = t.kw0 = 0;
  }
  return true;
}

// The producer's copies of tile t's k steps (one thread issues them), ring step `it` on: stage
// it % STAGES, filled for the (it / STAGES)-th time once its previous use is released.  B
// from the packed layout's rows, or from the weight in place at the tap's kernel position
// (TmaB): the forward's BKG * 8 input channels of BN output channels, one box a 64-column
// slab; the input gradient's BN input channels (its columns) of BKG * 8 output channels.  The
// ring step after the tile.
template <int STAGES, int A_STAGE, int B_STAGE, int BKG, int BN = 0, int BSRC = kBPacked>
__device__ __forceinline__ uint32_t tma_copy_tile(const GemmArgs& a, const TmaTile& t,
                                                  const PhaseConvTensorMap& amap,
                                                  const PhaseConvTensorMap& bmap,
                                                  unsigned char* smem, uint64_t* full,
                                                  uint64_t* empty, uint32_t it) {
  namespace tma = phaseconv_tma;
  const int brow0 = (int)(ldg_i64(t.e + PT_MOFS) / ((int64_t)a.cout_g * 8)) +
                    t.g * t.Td * t.Th * t.Tw * a.G;
  const int nkc = a.G / BKG;
  int kc = 0, td = 0, th = 0, tw = 0, tap = 0;
  for (int k = 0; k < t.nk; ++k, ++it) {
    const uint32_t s = it % STAGES, use = it / STAGES;
    if (use > 0) tma::bar_wait(&empty[s], (use - 1) & 1u);
    tma::bar_arrive_expect(&full[s], A_STAGE + B_STAGE);
    tma::load_box(smem + s * A_STAGE, amap, &full[s], t.g * a.cin_g + kc * BKG * 8,
                  a.in_sw * t.jw0 + t.offw + tw * a.pdw, a.in_sh * t.jh0 + t.offh + th * a.pdh,
                  a.in_sd * t.jd0 + t.offd + td * a.pdd, t.n);
    unsigned char* sb = smem + STAGES * A_STAGE + s * B_STAGE;
    const int kd = t.kd0 - td * a.kt_d, kh = t.kh0 - th * a.kt_h, kw = t.kw0 - tw * a.kt_w;
    if constexpr (BSRC == kBWeightMN) {
      static_assert(BN == 32 || BN % 64 == 0, "B slabs of 64 columns, or one of 32");
      const int ci = t.g * a.cin_g + kc * BKG * 8;
#pragma unroll
      for (int j = 0; j < (BN >= 64 ? BN / 64 : 1); ++j)
        tma::load_box(sb + j * BKG * 8 * 128, bmap, &full[s], t.co_base + 64 * j, kw, kh, kd,
                      ci);
    } else if constexpr (BSRC == kBWeightK) {
      tma::load_box(sb, bmap, &full[s], kc * BKG * 8, kw, kh, kd, t.g * a.cout_g + t.co_base);
    } else {
      tma::load_rows(sb, bmap, &full[s], 0, t.co_base / a.b_fold, brow0 + tap * a.G + kc * BKG);
    }
    if (++kc == nkc) {
      kc = 0;
      ++tap;
      if (++tw == t.Tw) {
        tw = 0;
        if (++th == t.Th) {
          th = 0;
          ++td;
        }
      }
    }
  }
  return it;
}

// Row `row` of tile t's box: its W position and its output's offset (-1 past the phase).
__device__ __forceinline__ void tma_row(const GemmArgs& a, const TmaTile& t, int row,
                                        int4* s_rc, int64_t* s_yo) {
  const int hw = a.box_h * a.box_w;
  const int jd = t.jd0 + row / hw, jh = t.jh0 + (row % hw) / a.box_w, jw = t.jw0 + row % a.box_w;
  int64_t yo = -1;
  if (jd < t.cd && jh < t.ch && jw < t.cw)
    yo = gemm_y_offset(a, (int64_t)a.out_d * a.out_h * a.out_w, t.n, jd, jh, jw, t.rd, t.rh,
                       t.g, t.co_base);
  s_rc[row] = make_int4(0, 0, 0, jw);
  s_yo[row] = yo;
}

// A consumer warpgroup's k steps of one tile (nk of them, ring step `it` on) into its MR
// 64-row blocks (sa_rows: its first row in a stage), one wgmma batch in flight while the next
// stage is waited for; `leader` (one thread of the warpgroup) releases each stage once the
// batch reading it is complete, the last one too where `release_last` (a ring that outlives
// the tile).  The accumulators are zero where the tile has no k step.  The ring step after
// the tile.
template <typename T, int BN, int BKG, int MR, int STAGES, int A_STAGE, int B_STAGE,
          int BSRC = kBPacked>
__device__ __forceinline__ uint32_t tma_consume_tile(float (&d)[MR][BN / 2], int nk,
                                                     uint32_t sa_rows, uint32_t sb,
                                                     uint64_t* full, uint64_t* empty,
                                                     uint32_t it, bool leader,
                                                     bool release_last) {
  namespace wg = phaseconv_wgmma;
  namespace tma = phaseconv_tma;
  for (int k = 0; k < nk; ++k, ++it) {
    const uint32_t s = it % STAGES;
    tma::bar_wait(&full[s], (it / STAGES) & 1u);
    wgmma_k_step_rows<T, BN, BKG, MR, BN / 2, BSRC>(d, sa_rows + s * A_STAGE, sb + s * B_STAGE,
                                                   k == 0);
    wg::wait<1>();  // batch k stays in flight; batch k - 1 is complete
#pragma unroll
    for (int i = 0; i < MR; ++i) wg::fence_operand(d[i]);
    if (k > 0 && leader) tma::bar_arrive(&empty[(it - 1) % STAGES]);
  }
  wg::wait<0>();
#pragma unroll
  for (int i = 0; i < MR; ++i) {
    wg::fence_operand(d[i]);
    if (nk == 0) {
#pragma unroll
      for (int j = 0; j < BN / 2; ++j) d[i][j] = 0.f;
    }
  }
  if (release_last && nk > 0 && leader) tma::bar_arrive(&empty[(it - 1) % STAGES]);
  return it;
}

// A warpgroup's MR 64-row blocks of a tile (wm0: its first 16-row warp index) with bias:
// staged channels-last in s_c, or stored straight from the accumulators ((N, C, D, H, W)).
template <typename T, int BN, int MR>
__device__ __forceinline__ void tma_epilogue(const GemmArgs& a, const TmaTile& t,
                                             float (&d)[MR][BN / 2], T* s_c, const int4* s_rc,
                                             const int64_t* s_yo, int wm0, int warp, int lane,
                                             bool& nonfinite) {
  constexpr int NT = BN / 8;
  float bv[NT][2];
  gemm_bias<T, NT>(a, t.g, t.co_base, 0, lane, bv);
#pragma unroll
  for (int i = 0; i < MR; ++i) {
    // the warp's 16 rows of 64-row block i, as a 16-row "warp" index
    const int wm_ = wm0 + i * 4 + (warp & 3);
    float(&acc)[1][NT][4] = reinterpret_cast<float(&)[1][NT][4]>(d[i]);
    if (a.y_cl)
      gemm_stage_cl<T, 1, NT, BN>(acc, bv, s_c, 1, 0, wm_, 0, lane);
    else
      gemm_store_acc<T, 1, NT, 4 * MR, BN, false>(a, acc, bv, s_c, s_rc, s_yo, 1, t.rw, wm_, 0,
                                                  lane, t.co_base, nonfinite);
  }
}

// The warpgroup tile with its operands copied by the TMA unit (phase_conv_tma.cuh).  A block's
// BM = 128 MR rows (MR 64-row wgmma blocks a consumer warpgroup: kind 8 MR 1, kind 9 MR 2, B
// read by twice the rows) are a box of (box_d x box_h x box_w) output voxels of one phase and
// one sample, so at tap (td, th, tw) and channel chunk kc its A operand is one box of the
// channels-last input at the corner (in_sw jw0 + offw + tw pdw, in_sh jh0 + offh + th pdh,
// in_sd jd0 + offd + td pdd), every in_s-th voxel (the forward's 1; the input gradient reads
// grad_y at the layer's stride), zero-filled by the hardware outside the input (the
// padding), landing as 128-byte swizzled rows (the layout the A descriptor reads); its B
// operand is one box {8, BN, 8} of the weight layout, landing as [group][column][8] (zero
// past C_out/g).  One producer warp issues both
// copies of a stage on its `full` barrier (bytes expected) and waits for the stage's `empty`
// barrier, which each consumer warpgroup arrives on once its wgmma batch reading the stage
// is complete.  No per-element address arithmetic, no cp.async, no proxy fence.  One phase a
// block; the output is staged in the drained stages for 16-byte channels-last stores, or
// stored from the accumulators ((N, C, D, H, W) results).  k steps of BKG 16-byte groups:
// 64 channels (128-byte rows, C_in/g a multiple of 64) or 32 (BKG 4: 64-byte rows in the
// 64-byte swizzle, for C_in/g an odd multiple of 32).
// two consumer warpgroups and a producer warp (9 warps allocate registers as 12: at most 168
// a thread, which 256 rows at BN 128 pass by 56 bytes of spills, none in the k loop)
constexpr int kTmaThreads = kGemmTmaThreads;

template <typename T, int BN, int MR, int BKG, int BSRC>
__global__ void __launch_bounds__(kTmaThreads, gemm_tma_min_blocks(BN))
gemm_tma_kernel(const GemmArgs a, const __grid_constant__ PhaseConvTensorMap amap,
                const __grid_constant__ PhaseConvTensorMap bmap) {
  phaseconv_exact::let_fixup_start();
  namespace tma = phaseconv_tma;
  constexpr int BM = 128 * MR, STAGES = gemm_tma_stages(BN, BKG);
  constexpr int A_STAGE = BM * BKG * 16, B_STAGE = BKG * BN * 16;
  static_assert(BM * BN * (int)sizeof(T) <= STAGES * (A_STAGE + B_STAGE), "output tile");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = tma_stages_base(smem_raw);
  const uint32_t sa = tma::smem_addr(smem), sb = sa + STAGES * A_STAGE;
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + STAGES * (A_STAGE + B_STAGE));
  uint64_t* empty = full + STAGES;
  int4* s_rc = reinterpret_cast<int4*>(empty + STAGES);  // .w: the row's jw
  int64_t* s_yo = reinterpret_cast<int64_t*>(s_rc + BM);  // gemm_row's y offset, -1: none
  T* s_c = reinterpret_cast<T*>(smem);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  TmaTile t;
  // past this phase: uniform, no barrier yet
  if (!tma_tile<BN, BKG, BSRC>(a, blockIdx.x, t)) return;
  for (int row = tid; row < BM && warp < 8; row += 256) tma_row(a, t, row, s_rc, s_yo);
  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      tma::bar_init(&full[s], 1);
      tma::bar_init(&empty[s], 2);  // one arrival a consumer warpgroup
    }
  }
  __syncthreads();

  float d[MR][BN / 2];
  if (warp == 8) {  // the producer warp: one thread issues every copy
    if (lane == 0)
      tma_copy_tile<STAGES, A_STAGE, B_STAGE, BKG, BN, BSRC>(a, t, amap, bmap, smem, full, empty,
                                                             0);
  } else {  // two consumer warpgroups, 64 MR rows each
    const uint32_t a_rows = (uint32_t)(warp >> 2) * MR * 64 * BKG * 16;
    tma_consume_tile<T, BN, BKG, MR, STAGES, A_STAGE, B_STAGE, BSRC>(
        d, t.nk, sa + a_rows, sb, full, empty, 0, (tid & 127) == 0, false);
  }
  __syncthreads();  // every copy landed and was read: the stages hold the output tile now

  bool nonfinite = false;
  if (warp < 8)
    tma_epilogue<T, BN, MR>(a, t, d, s_c, s_rc, s_yo, (warp >> 2) * MR * 4, warp, lane,
                            nonfinite);
  if (a.y_cl) {
    __syncthreads();
    if (warp < 8)
      gemm_write_tile<T, BM, BN, 256>(a, s_c, s_rc, s_yo, 1, t.rw, t.co_base, tid, nonfinite);
  }
  if (nonfinite) *a.ex.flag = 1;  // the fix-up recomputes those (phase_conv_exact.cuh)
}

// The producer warpgroup of the persistent TMA tiles (kinds 10, 11): it gives registers back
// for the consumers (setmaxnreg), and one thread copies the k steps of the block's tiles,
// blockIdx.x, + gridDim.x, ..., through the ring in that order.
template <int BN, int BKG, int STAGES, int A_STAGE, int B_STAGE, int BSRC>
__device__ __forceinline__ void tma_produce_tiles(const GemmArgs& a,
                                                  const PhaseConvTensorMap& amap,
                                                  const PhaseConvTensorMap& bmap,
                                                  unsigned char* smem, uint64_t* full,
                                                  uint64_t* empty, int tid) {
  phaseconv_tma::warpgroup_registers_dec<40>();
  if (tid != 0) return;
  uint32_t it = 0;  // the ring's step, across tiles
  for (uint32_t i = blockIdx.x; i < (uint32_t)a.total_blocks; i += gridDim.x) {
    TmaTile t;
    if (tma_tile<BN, BKG, BSRC>(a, i, t))
      it = tma_copy_tile<STAGES, A_STAGE, B_STAGE, BKG, BN, BSRC>(a, t, amap, bmap, smem, full,
                                                                  empty, it);
  }
}

// The ping-pong TMA tile (kind 10): persistent blocks (one a multiprocessor) of a producer
// warpgroup and two consumer warpgroups.  A block walks tiles blockIdx.x, + gridDim.x, ...
// (kind 8's 128-row tiles); the producer copies their k steps in that order through one
// ring of stages, and the consumers take the tiles alternately, each a whole tile (two 64-row
// wgmma blocks) with its output staged in a buffer of its own.  Their k steps take turns
// (each consumer waits on its `turn` barrier, which the other arrives on once it has issued
// its tile's last k step), so one consumer's write-out overlaps the other's k steps, and a
// consumer never waits on a stage more than one use ahead of the copies (the ring's parity
// could not tell the uses apart).  The producer warpgroup hands registers to the consumers
// (setmaxnreg: 40 and 232 a thread), whose 128 x 128 accumulators need 128.
template <typename T, int BN, int BKG, int BSRC>
__global__ void __launch_bounds__(kGemmPingpongThreads, 1)
gemm_tma_pingpong_kernel(const GemmArgs a, const __grid_constant__ PhaseConvTensorMap amap,
                         const __grid_constant__ PhaseConvTensorMap bmap) {
  phaseconv_exact::let_fixup_start();
  namespace tma = phaseconv_tma;
  constexpr int BM = 128, MR = 2, STAGES = gemm_pingpong_stages(BN, BKG);
  constexpr int A_STAGE = BM * BKG * 16, B_STAGE = BKG * BN * 16;
  constexpr int RING = STAGES * (A_STAGE + B_STAGE), OUT = BM * BN * (int)sizeof(T);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = tma_stages_base(smem_raw);
  const uint32_t sa = tma::smem_addr(smem), sb = sa + STAGES * A_STAGE;
  // the ring, each consumer's output, the barriers, each consumer's row tables
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + RING + 2 * OUT);
  uint64_t* empty = full + STAGES;
  uint64_t* turn = empty + STAGES;  // turn[c]: consumer c may run its next tile's k steps
  int4* rc_tables = reinterpret_cast<int4*>(turn + 2);
  int64_t* yo_tables = reinterpret_cast<int64_t*>(rc_tables + 2 * BM);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const uint32_t tiles = (uint32_t)a.total_blocks;
  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      tma::bar_init(&full[s], 1);
      tma::bar_init(&empty[s], 1);  // the one consumer of the stage's tile
    }
    tma::bar_init(&turn[0], 1);
    tma::bar_init(&turn[1], 1);
  }
  __syncthreads();

  if (warp < 4) {  // the producer warpgroup
    tma_produce_tiles<BN, BKG, STAGES, A_STAGE, B_STAGE, BSRC>(a, amap, bmap, smem, full, empty,
                                                               tid);
    return;  // (no barrier over the whole block follows)
  }
  tma::warpgroup_registers_inc<232>();
  const int c = (warp >> 2) - 1, ct = tid & 127;  // consumer c, its thread ct
  T* s_c = reinterpret_cast<T*>(smem + RING + c * OUT);
  int4* s_rc = rc_tables + c * BM;
  int64_t* s_yo = yo_tables + c * BM;
  bool nonfinite = false;  // a stored element is Inf or NaN
  uint32_t it = 0, turns = 0;  // the ring's step; this consumer's waits on its turn
  int valid = 0;               // the block's tiles inside their phase so far
  for (uint32_t i = blockIdx.x; i < tiles; i += gridDim.x) {
    TmaTile t;
    if (!tma_tile<BN, BKG>(a, i, t)) continue;  // (the kernel taps: the producer's)
    if ((valid++ & 1) != c) {  // the other consumer's tile: its k steps pass this one by
      it += t.nk;
      continue;
    }
    // (the previous tile's write-out is done with the tables: the barrier ending it)
    tma_row(a, t, ct, s_rc, s_yo);
    if (valid > 1) tma::bar_wait(&turn[c], turns++ & 1u);  // the other's k steps issued
    float d[MR][BN / 2];
    it = tma_consume_tile<T, BN, BKG, MR, STAGES, A_STAGE, B_STAGE, BSRC>(d, t.nk, sa, sb, full,
                                                                          empty, it, ct == 0,
                                                                          true);
    if (ct == 0) tma::bar_arrive(&turn[c ^ 1]);
    tma::named_sync(1 + c, 128);  // the row tables written
    tma_epilogue<T, BN, MR>(a, t, d, s_c, s_rc, s_yo, 0, warp, lane, nonfinite);
    if (a.y_cl) {
      tma::named_sync(1 + c, 128);
      gemm_write_tile<T, BM, BN, 128>(a, s_c, s_rc, s_yo, 1, t.rw, t.co_base, ct, nonfinite);
    }
    tma::named_sync(1 + c, 128);  // s_c and the row tables are free for the next tile
  }
  if (nonfinite) *a.ex.flag = 1;  // the fix-up recomputes those (phase_conv_exact.cuh)
}

// The persistent 256-row TMA tile (kind 11): kind 9's tiles (256 rows, BN 128, 64-channel k
// steps, each consumer warpgroup 128 of the rows) walked by persistent blocks, one a
// multiprocessor, with one ring of stages across tiles, so the producer copies the next
// tile's operands while the consumers write this one's output (staged apart).  The producer
// warpgroup hands registers to the consumers as in the ping-pong tile, so their 128 x 128
// accumulators do not spill.
template <typename T, int BSRC>
__global__ void __launch_bounds__(kGemmPingpongThreads, 1)
gemm_tma_persistent_kernel(const GemmArgs a, const __grid_constant__ PhaseConvTensorMap amap,
                           const __grid_constant__ PhaseConvTensorMap bmap) {
  phaseconv_exact::let_fixup_start();
  namespace tma = phaseconv_tma;
  constexpr int BM = 256, BN = 128, BKG = 8, MR = 2, STAGES = kGemmTmaPersistentStages;
  constexpr int A_STAGE = BM * BKG * 16, B_STAGE = BKG * BN * 16;
  constexpr int RING = STAGES * (A_STAGE + B_STAGE), OUT = BM * BN * (int)sizeof(T);
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* smem = tma_stages_base(smem_raw);
  const uint32_t sa = tma::smem_addr(smem), sb = sa + STAGES * A_STAGE;
  // the ring, the output, the barriers, the row tables
  T* s_c = reinterpret_cast<T*>(smem + RING);
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + RING + OUT);
  uint64_t* empty = full + STAGES;
  int4* s_rc = reinterpret_cast<int4*>(empty + STAGES);
  int64_t* s_yo = reinterpret_cast<int64_t*>(s_rc + BM);

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const uint32_t tiles = (uint32_t)a.total_blocks;
  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      tma::bar_init(&full[s], 1);
      tma::bar_init(&empty[s], 2);  // one arrival a consumer warpgroup
    }
  }
  __syncthreads();

  if (warp < 4) {  // the producer warpgroup
    tma_produce_tiles<BN, BKG, STAGES, A_STAGE, B_STAGE, BSRC>(a, amap, bmap, smem, full, empty,
                                                               tid);
    return;  // (no barrier over the whole block follows)
  }
  tma::warpgroup_registers_inc<232>();
  const int c = (warp >> 2) - 1, ct = tid - 128;  // consumer warpgroup c, consumer thread ct
  bool nonfinite = false;  // a stored element is Inf or NaN
  uint32_t it = 0;
  for (uint32_t i = blockIdx.x; i < tiles; i += gridDim.x) {
    TmaTile t;
    if (!tma_tile<BN, BKG>(a, i, t)) continue;  // (the kernel taps: the producer's)
    // (the previous tile's write-out is done with the tables: the barrier ending it)
    tma_row(a, t, ct, s_rc, s_yo);
    float d[MR][BN / 2];
    it = tma_consume_tile<T, BN, BKG, MR, STAGES, A_STAGE, B_STAGE, BSRC>(
        d, t.nk, sa + (uint32_t)c * MR * 64 * BKG * 16, sb, full, empty, it, (ct & 127) == 0,
        true);
    tma::named_sync(1, 256);  // the row tables written
    tma_epilogue<T, BN, MR>(a, t, d, s_c, s_rc, s_yo, c * MR * 4, warp, lane, nonfinite);
    if (a.y_cl) {
      tma::named_sync(1, 256);
      gemm_write_tile<T, BM, BN, 256>(a, s_c, s_rc, s_yo, 1, t.rw, t.co_base, ct, nonfinite);
    }
    tma::named_sync(1, 256);  // s_c and the row tables are free for the next tile
  }
  if (nonfinite) *a.ex.flag = 1;  // the fix-up recomputes those (phase_conv_exact.cuh)
}
#endif  // PHASECONV_SM90A


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
  phaseconv_exact::let_fixup_start();
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
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
              for (int j = 0; j < NT; ++j) MmaOp<T>::run(acc[mt][j], af[mt], bf[j][0], bf[j][1]);
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

#if defined(PHASECONV_SM90A)
// The 128-row TMA tiles by their columns, k steps of BKG 16-byte groups: kind 8, or its
// ping-pong form (kind 10); B from where BSRC says (TmaB).
template <typename T, int BKG, bool PINGPONG, int BSRC>
cudaError_t launch_gemm_tma(const GemmArgs& a, const GemmCfg& c,
                            const PhaseConvTensorMap& amap, const PhaseConvTensorMap& bmap,
                            cudaStream_t stream) {
  const int threads = PINGPONG ? kGemmPingpongThreads : kTmaThreads;
  switch (c.BN) {
    case 32: return launch_kernel(PINGPONG ? gemm_tma_pingpong_kernel<T, 32, BKG, BSRC>
                                           : gemm_tma_kernel<T, 32, 1, BKG, BSRC>,
                                  c.grid, threads, c.smem, stream, a, amap, bmap);
    case 64: return launch_kernel(PINGPONG ? gemm_tma_pingpong_kernel<T, 64, BKG, BSRC>
                                           : gemm_tma_kernel<T, 64, 1, BKG, BSRC>,
                                  c.grid, threads, c.smem, stream, a, amap, bmap);
    case 128: return launch_kernel(PINGPONG ? gemm_tma_pingpong_kernel<T, 128, BKG, BSRC>
                                            : gemm_tma_kernel<T, 128, 1, BKG, BSRC>,
                                   c.grid, threads, c.smem, stream, a, amap, bmap);
  }
  return cudaErrorInvalidConfiguration;
}

// The TMA tiles of kind c.kind (8-11), B from where BSRC says (TmaB; the input gradient's
// weight in place: the 128-row kinds, which its rule takes).
template <typename T, int BSRC>
cudaError_t launch_gemm_tma_kind(const GemmArgs& a, const GemmCfg& c,
                                 const PhaseConvTensorMap& amap, const PhaseConvTensorMap& bmap,
                                 cudaStream_t stream) {
  if (gemm_tma_rows(c.kind) == 256) {  // BN 128, 64-channel k steps only (where B is widest)
    if constexpr (BSRC == kBWeightK) {
      return cudaErrorInvalidConfiguration;
    } else {
      if (c.BN != 128 || c.bkg != 8) return cudaErrorInvalidConfiguration;
      return c.kind == 9 ? launch_kernel(gemm_tma_kernel<T, 128, 2, 8, BSRC>, c.grid,
                                         kTmaThreads, c.smem, stream, a, amap, bmap)
                         : launch_kernel(gemm_tma_persistent_kernel<T, BSRC>, c.grid,
                                         kGemmPingpongThreads, c.smem, stream, a, amap, bmap);
    }
  }
  if (c.kind == 10)
    return c.bkg == 4 ? launch_gemm_tma<T, 4, true, BSRC>(a, c, amap, bmap, stream)
                      : launch_gemm_tma<T, 8, true, BSRC>(a, c, amap, bmap, stream);
  return c.bkg == 4 ? launch_gemm_tma<T, 4, false, BSRC>(a, c, amap, bmap, stream)
                    : launch_gemm_tma<T, 8, false, BSRC>(a, c, amap, bmap, stream);
}
#endif

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
template <>
cudaError_t run_gemm_typed<double>(const PhaseConvFwdParams&, const GemmCfg&, cudaStream_t) {
  return cudaErrorInvalidValue;
}
template cudaError_t run_gemm_typed<float>(const PhaseConvFwdParams&, const GemmCfg&, cudaStream_t);
template cudaError_t run_gemm_typed<__half>(const PhaseConvFwdParams&, const GemmCfg&, cudaStream_t);
template cudaError_t run_gemm_typed<__nv_bfloat16>(const PhaseConvFwdParams&, const GemmCfg&, cudaStream_t);

}  // namespace phaseconv
